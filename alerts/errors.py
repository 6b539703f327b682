"""Exceptions raised by alerts, under the project-wide DriftlineError."""

from drift_core.errors import DriftlineError


class AlertsError(DriftlineError):
    """Root of the errors raised by alerts."""
