//! The one error type of the pure core. The binding layer maps each variant to a Python
//! exception class (see `drift_core/errors.py`).

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DriftError {
    /// The caller passed values or parameters the core cannot use.
    #[error("{0}")]
    InvalidInput(String),
    /// A sketch and a reference (or two sketches) that do not belong together.
    #[error("{0}")]
    Mismatch(String),
    /// Bytes that are not a valid serialised profile or sketch of this format version.
    #[error("{0}")]
    Decode(String),
}

pub type Result<T> = std::result::Result<T, DriftError>;

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(DriftError::InvalidInput(msg.into()))
}

pub(crate) fn decode_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(DriftError::Decode(msg.into()))
}
