//! driftline's core: reference profiles, mergeable window sketches and the statistics
//! that compare them. The pure layers (`sketch`, `compare`) take slices and return
//! `Result<_, DriftError>`; only `py` touches Python.

pub mod codec;
pub mod compare;
pub mod error;
pub mod events;
pub mod sketch;

#[cfg(feature = "python")]
mod py;

#[cfg(test)]
pub(crate) mod testutil;

pub use error::{DriftError, Result};
