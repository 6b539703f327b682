"""Exceptions raised by drift_core, all under the project-wide :class:`DriftlineError`.

The classes are created by the Rust extension (so Rust errors map to them directly) and
re-exported here, the one place other packages import them from.
"""

from drift_core._drift_core import (
    DecodeError,
    DriftCoreError,
    DriftlineError,
    InvalidInputError,
    ReferenceMismatchError,
)

__all__ = [
    "DecodeError",
    "DriftCoreError",
    "DriftlineError",
    "InvalidInputError",
    "ReferenceMismatchError",
]
