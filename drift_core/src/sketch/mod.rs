//! Reference profiles and the mergeable window sketches that are compared with them.

pub mod binning;
pub mod categorical;
pub mod numeric;
pub mod quantile;

/// Identity of a reference profile: window sketches carry it so that a sketch is never
/// compared with, or merged into, a sketch of another reference.
pub type Fingerprint = u64;

/// Starts loading the cache line that holds `x` (a hint, as `Prefetch`).
#[inline(always)]
pub(crate) fn prefetch_line<T>(x: &T) {
    prefetch_address(x as *const T as usize);
}

#[inline(always)]
fn prefetch_address(address: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(address as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// Cache lines to load ahead of use, issued a few at a time between pieces of other work.
/// Batch calls queue the next item's data while they work on the current one, so that a
/// reference or sketch that has gone cold is read as a stream instead of one cache miss
/// per lookup; issuing hundreds of prefetches at once would hold up the loads of the
/// current item instead. A prefetch is a hint: it has no effect on results.
#[derive(Debug, Default)]
pub(crate) struct Prefetch {
    /// Byte ranges [start, end) still to load, as addresses.
    ranges: Vec<(usize, usize)>,
    lines: usize,
}

impl Prefetch {
    pub(crate) fn add<T>(&mut self, data: &[T]) {
        let start = data.as_ptr() as usize;
        let end = start + std::mem::size_of_val(data);
        self.lines += (end - start).div_ceil(64);
        self.ranges.push((start, end));
    }

    pub(crate) fn lines(&self) -> usize {
        self.lines
    }

    /// Issues up to `lines` prefetches.
    pub(crate) fn issue(&mut self, mut lines: usize) {
        while lines > 0 {
            let Some((start, end)) = self.ranges.last_mut() else {
                return;
            };
            while lines > 0 && *start < *end {
                prefetch_address(*start);
                *start += 64;
                lines -= 1;
                self.lines = self.lines.saturating_sub(1);
            }
            if *start >= *end {
                self.ranges.pop();
            }
        }
    }
}
