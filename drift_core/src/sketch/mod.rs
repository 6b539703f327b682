//! Reference profiles and the mergeable window sketches that are compared with them.

pub mod binning;
pub mod categorical;
pub mod numeric;
pub mod quantile;

/// Identity of a reference profile: window sketches carry it so that a sketch is never
/// compared with, or merged into, a sketch of another reference.
pub type Fingerprint = u64;
