"""Exceptions raised by serving_hooks, under the project-wide DriftlineError."""

from drift_core.errors import DriftlineError


class ServingHooksError(DriftlineError):
    """Root of the errors raised by serving_hooks."""
