"""Exceptions raised by stream, under the project-wide DriftlineError."""

from drift_core.errors import DriftlineError


class StreamError(DriftlineError):
    """Root of the errors raised by stream."""
