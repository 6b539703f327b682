//! Numeric reference profiles and window sketches.
//!
//! A reference holds high-resolution quantile edges of the reference data and, for every
//! edge, the exact reference count strictly between it and the previous edge and the
//! count equal to it (see `binning`). A window sketch counts the same slots. Both
//! empirical CDFs are thus known exactly at and just below every edge, and the KS
//! statistic evaluated there falls short of the exact two-sample statistic by at most
//! `max_j min(p_j, q_j)`, p_j and q_j being the reference and window shares strictly
//! inside bin j. That bound is at most the reference's `ks_bound` (about 1/bins for
//! continuous data) and is 0 when either side has nothing between edges — always the case
//! for data with at most `bins` distinct values, each of which becomes an edge. PSI bins
//! are reference deciles (by default) and a subset of the edges, so one pass fills both.
//!
//! Window sketches count in 16 bits while they hold at most 65,535 values, then in 32 and
//! beyond 2^32 - 1 values in 64 bits, so no count is ever clipped; the wire format writes
//! every width as the same varints. A reference keeps the zeroed count buffers of dropped
//! sketches for the next window's sketches (see `SlotPool`).

use std::sync::{Arc, Mutex};

use crate::codec::{Kind, Reader, Writer};
use crate::error::{invalid, DriftError, Result};
use crate::sketch::binning::{BinIndex, Counter, Tally};
use crate::sketch::{prefetch_line, Fingerprint, Prefetch};

pub const DEFAULT_BINS: usize = 1024;
pub const DEFAULT_PSI_BINS: usize = 10;
const MAX_BINS: usize = 1 << 16;
const CHUNK: usize = 2048;

#[derive(Debug, Clone)]
pub struct NumericReference {
    bins: u32,
    psi_bins: u32,
    /// Reference count per slot: between edges / at edge, 2m + 1 slots (no NaN slot).
    slots: Vec<u64>,
    /// Reference count per bin (e[j-1], e[j]], m + 1 bins.
    counts: Vec<u64>,
    /// Cumulative counts for the comparison walk (see `Cumulative`).
    cumulative: Cumulative,
    psi_edges: Vec<f64>,
    /// Position of each PSI edge among the edges.
    psi_index: Vec<u32>,
    psi_counts: Vec<u64>,
    n: u64,
    missing: u64,
    moments: Moments,
    ks_bound: f64,
    fingerprint: Fingerprint,
    index: BinIndex,
    pool: Arc<SlotPool>,
}

/// Reference counts strictly below each edge (m entries) and up to each edge included,
/// after a leading 0 (m + 1 entries), in the narrowest of 16, 32 and 64 bits that holds
/// the reference's size: fewer bytes for every comparison to read.
#[derive(Debug, Clone)]
pub enum Cumulative {
    Small { below: Vec<u16>, upto: Vec<u16> },
    Narrow { below: Vec<u32>, upto: Vec<u32> },
    Wide { below: Vec<u64>, upto: Vec<u64> },
}

/// Zeroed count buffers of dropped sketches, handed to new ones. A window's sketches are
/// created and dropped together; without the pool each window would take fresh memory
/// from the allocator, a page fault per 4 KiB, every time.
pub struct SlotPool {
    len: usize,
    small: Mutex<Vec<Box<[u16]>>>,
    narrow: Mutex<Vec<Box<[u32]>>>,
}

/// Buffers of each width a pool keeps at most (per reference, at the default resolution:
/// 8 x 4 KiB and 8 x 8 KiB).
const POOL_CAP: usize = 8;

impl SlotPool {
    fn new(len: usize) -> Self {
        SlotPool {
            len,
            small: Mutex::new(Vec::new()),
            narrow: Mutex::new(Vec::new()),
        }
    }

    /// A zeroed buffer of `len` counts.
    fn take<T: Pooled>(&self) -> Box<[T]> {
        let reused = T::list(self).lock().ok().and_then(|mut f| f.pop());
        reused.unwrap_or_else(|| vec![T::default(); self.len].into_boxed_slice())
    }

    fn give<T: Pooled>(&self, mut buf: Box<[T]>) {
        if buf.len() != self.len {
            return;
        }
        if let Ok(mut free) = T::list(self).lock() {
            if free.len() < POOL_CAP {
                buf.fill(T::default());
                free.push(buf);
            }
        }
    }
}

/// Count widths the pool keeps.
trait Pooled: Copy + Default {
    fn list(pool: &SlotPool) -> &Mutex<Vec<Box<[Self]>>>;
}

impl Pooled for u16 {
    fn list(pool: &SlotPool) -> &Mutex<Vec<Box<[u16]>>> {
        &pool.small
    }
}

impl Pooled for u32 {
    fn list(pool: &SlotPool) -> &Mutex<Vec<Box<[u32]>>> {
        &pool.narrow
    }
}

impl std::fmt::Debug for SlotPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let small = self.small.lock().map(|v| v.len()).unwrap_or(0);
        let narrow = self.narrow.lock().map(|v| v.len()).unwrap_or(0);
        write!(
            f,
            "SlotPool {{ len: {}, free: {small} + {narrow} }}",
            self.len
        )
    }
}

/// Count, extremes and sums over the non-missing values (sums over the finite ones).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub sum_sq: f64,
    pub infinite: u64,
}

impl Default for Moments {
    fn default() -> Self {
        Moments {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            sum_sq: 0.0,
            infinite: 0,
        }
    }
}

impl Moments {
    /// Accumulates `values` (skipping NaN) and returns how many were NaN.
    fn add(&mut self, values: &[f64]) -> u64 {
        let sc = scan(values);
        self.min = if sc.min < self.min { sc.min } else { self.min };
        self.max = if sc.max > self.max { sc.max } else { self.max };
        self.sum += sc.sum;
        self.sum_sq += sc.sum_sq;
        self.infinite += sc.infinite;
        sc.nan
    }

    fn merge(&mut self, o: &Moments) {
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.sum += o.sum;
        self.sum_sq += o.sum_sq;
        self.infinite += o.infinite;
    }

    /// Mean and population standard deviation of the finite values among `n`.
    pub fn mean_std(&self, n: u64) -> (f64, f64) {
        let k = n.saturating_sub(self.infinite);
        if k == 0 {
            return (f64::NAN, f64::NAN);
        }
        let mean = self.sum / k as f64;
        let var = (self.sum_sq / k as f64 - mean * mean).max(0.0);
        (mean, var.sqrt())
    }

    fn write(&self, w: &mut Writer) {
        w.f64(self.min);
        w.f64(self.max);
        w.f64(self.sum);
        w.f64(self.sum_sq);
        w.varint(self.infinite);
    }

    fn read(r: &mut Reader) -> Result<Self> {
        Ok(Moments {
            min: r.f64()?,
            max: r.f64()?,
            sum: r.f64()?,
            sum_sq: r.f64()?,
            infinite: r.varint()?,
        })
    }
}

/// One pass over a chunk: extremes, sums of the finite values, counts of ±inf and NaN.
struct Scan {
    min: f64,
    max: f64,
    sum: f64,
    sum_sq: f64,
    infinite: u64,
    nan: u64,
}

/// Lane-parallel so that it vectorises; `L` lanes of independent accumulators.
#[inline(always)]
fn scan_lanes<const L: usize>(values: &[f64]) -> Scan {
    let (mut mn, mut mx) = ([f64::INFINITY; L], [f64::NEG_INFINITY; L]);
    let (mut s, mut s2) = ([0.0f64; L], [0.0f64; L]);
    let (mut inf, mut nan) = ([0u64; L], [0u64; L]);
    let chunks = values.chunks_exact(L);
    let rest = chunks.remainder();
    let mut step = |l: usize, x: f64| {
        // compares written so that NaN never wins and they lower to min/max instructions
        mn[l] = if x < mn[l] { x } else { mn[l] };
        mx[l] = if x > mx[l] { x } else { mx[l] };
        let a = x.abs();
        let f = if a < f64::INFINITY { x } else { 0.0 };
        s[l] += f;
        s2[l] += f * f;
        inf[l] += (a == f64::INFINITY) as u64;
        nan[l] += x.is_nan() as u64;
    };
    for c in chunks {
        for (l, x) in c.iter().enumerate() {
            step(l, *x);
        }
    }
    for x in rest {
        step(0, *x);
    }
    Scan {
        min: mn.iter().fold(f64::INFINITY, |a, b| a.min(*b)),
        max: mx.iter().fold(f64::NEG_INFINITY, |a, b| a.max(*b)),
        sum: s.iter().sum(),
        sum_sq: s2.iter().sum(),
        infinite: inf.iter().sum(),
        nan: nan.iter().sum(),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn scan_avx512(values: &[f64]) -> Scan {
    scan_lanes::<16>(values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_avx2(values: &[f64]) -> Scan {
    scan_lanes::<8>(values)
}

/// `scan_lanes` compiled for the widest vector unit this CPU has (checked at run time).
fn scan(values: &[f64]) -> Scan {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F.
            return unsafe { scan_avx512(values) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2.
            return unsafe { scan_avx2(values) };
        }
    }
    scan_lanes::<4>(values)
}

/// The value at rank floor(k * n / parts) of the sorted data, for k = 1..parts-1.
fn quantile_edges(sorted: &[f64], parts: usize) -> impl Iterator<Item = f64> + '_ {
    let n = sorted.len();
    (1..parts).map(move |k| sorted[((k as u128 * n as u128) / parts as u128) as usize])
}

fn check_bins(name: &str, v: usize, min: usize) -> Result<()> {
    if v < min || v > MAX_BINS {
        return invalid(format!(
            "{name} must be between {min} and {MAX_BINS}, got {v}"
        ));
    }
    Ok(())
}

impl NumericReference {
    /// Builds a profile from reference values; NaN counts as missing.
    pub fn build(values: &[f64], bins: usize, psi_bins: usize) -> Result<Self> {
        check_bins("bins", bins, 2)?;
        check_bins("psi_bins", psi_bins, 2)?;
        if psi_bins > bins {
            return invalid(format!(
                "psi_bins ({psi_bins}) must not exceed bins ({bins})"
            ));
        }
        if values.is_empty() {
            return invalid("cannot build a numeric reference from an empty array");
        }
        let mut sorted: Vec<f64> = values
            .iter()
            .filter(|x| !x.is_nan())
            .map(|x| x + 0.0)
            .collect();
        let missing = (values.len() - sorted.len()) as u64;
        if sorted.is_empty() {
            return invalid(format!(
                "cannot build a numeric reference: all {} values are missing (NaN)",
                values.len()
            ));
        }
        sorted.sort_unstable_by(f64::total_cmp);
        let mut distinct = sorted.clone();
        distinct.dedup();
        let mut psi_edges: Vec<f64> = quantile_edges(&sorted, psi_bins).collect();
        psi_edges.dedup();
        let edges = if distinct.len() <= bins {
            distinct
        } else {
            let mut e: Vec<f64> = quantile_edges(&sorted, bins).collect();
            e.extend_from_slice(&psi_edges);
            e.sort_unstable_by(f64::total_cmp);
            e.dedup();
            e
        };
        // slots from the exact rank of each edge: strictly inside the bin, then at the edge
        let mut slots = Vec::with_capacity(2 * edges.len() + 1);
        let mut below = 0usize;
        for &e in &edges {
            let lt = sorted.partition_point(|x| *x < e);
            let le = sorted.partition_point(|x| *x <= e);
            slots.push((lt - below) as u64);
            slots.push((le - lt) as u64);
            below = le;
        }
        slots.push((sorted.len() - below) as u64);
        let mut moments = Moments::default();
        moments.add(&sorted);
        Self::assemble(
            bins as u32,
            psi_bins as u32,
            edges,
            slots,
            psi_edges,
            missing,
            moments,
        )
    }

    fn assemble(
        bins: u32,
        psi_bins: u32,
        edges: Vec<f64>,
        slots: Vec<u64>,
        psi_edges: Vec<f64>,
        missing: u64,
        moments: Moments,
    ) -> Result<Self> {
        let n: u64 = slots.iter().sum();
        let m = edges.len();
        let counts: Vec<u64> = slots.chunks(2).map(|c| c.iter().sum()).collect();
        let ks_bound = slots.iter().step_by(2).copied().max().unwrap_or(0) as f64 / n as f64;
        let (mut below, mut upto) = (Vec::with_capacity(m), Vec::with_capacity(m + 1));
        let mut cum = 0u64;
        upto.push(0);
        for pair in slots[..2 * m].chunks_exact(2) {
            below.push(cum + pair[0]);
            cum += pair[0] + pair[1];
            upto.push(cum);
        }
        // PSI bin p is (psi_edges[p-1], psi_edges[p]]: whole bins, as the PSI edges are edges
        let psi_index: Vec<u32> = psi_edges
            .iter()
            .map(|p| edges.partition_point(|e| e < p) as u32)
            .collect();
        let mut psi_counts = Vec::with_capacity(psi_edges.len() + 1);
        let mut done = 0u64;
        for &k in &psi_index {
            psi_counts.push(upto[k as usize + 1] - done);
            done = upto[k as usize + 1];
        }
        psi_counts.push(n - done);
        let cumulative = if n <= u16::MAX as u64 {
            Cumulative::Small {
                below: below.iter().map(|&c| c as u16).collect(),
                upto: upto.iter().map(|&c| c as u16).collect(),
            }
        } else if n <= u32::MAX as u64 {
            Cumulative::Narrow {
                below: below.iter().map(|&c| c as u32).collect(),
                upto: upto.iter().map(|&c| c as u32).collect(),
            }
        } else {
            Cumulative::Wide { below, upto }
        };
        let mut w = Writer::new(Kind::NumericReference);
        w.f64s(&edges);
        w.varints(&slots);
        let fingerprint = xxhash_rust::xxh3::xxh3_64(&w.finish());
        // the index keeps the edges (sorted, distinct, ±inf when the reference holds them)
        let index = BinIndex::new(&edges);
        let pool = Arc::new(SlotPool::new(slots.len() + 1));
        Ok(NumericReference {
            bins,
            psi_bins,
            slots,
            counts,
            cumulative,
            psi_edges,
            psi_index,
            psi_counts,
            n,
            missing,
            moments,
            ks_bound,
            fingerprint,
            index,
            pool,
        })
    }

    pub fn edges(&self) -> &[f64] {
        self.index.edges()
    }
    /// Reference count per bin (e[j-1], e[j]].
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
    /// Cumulative reference counts below and up to each edge.
    pub fn cumulative(&self) -> &Cumulative {
        &self.cumulative
    }
    /// Reference count per slot (2m + 1: inside bin j, at edge j, ..., above every edge).
    pub fn slots(&self) -> &[u64] {
        &self.slots
    }
    pub fn psi_edges(&self) -> &[f64] {
        &self.psi_edges
    }
    pub fn psi_counts(&self) -> &[u64] {
        &self.psi_counts
    }
    /// Position of each PSI edge among the edges.
    pub fn psi_index(&self) -> &[u32] {
        &self.psi_index
    }
    pub fn n(&self) -> u64 {
        self.n
    }
    pub fn missing(&self) -> u64 {
        self.missing
    }
    pub fn moments(&self) -> &Moments {
        &self.moments
    }
    pub fn ks_bound(&self) -> f64 {
        self.ks_bound
    }
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
    pub fn bins(&self) -> u32 {
        self.bins
    }
    pub fn psi_bins(&self) -> u32 {
        self.psi_bins
    }
    pub fn index(&self) -> &BinIndex {
        &self.index
    }

    /// Queues what a comparison with this reference reads for prefetching.
    pub(crate) fn prefetch_compare(&self, pf: &mut Prefetch) {
        match &self.cumulative {
            Cumulative::Small { below, upto } => {
                pf.add(below);
                pf.add(upto);
            }
            Cumulative::Narrow { below, upto } => {
                pf.add(below);
                pf.add(upto);
            }
            Cumulative::Wide { below, upto } => {
                pf.add(below);
                pf.add(upto);
            }
        }
        pf.add(self.edges());
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::NumericReference);
        w.u32(self.bins);
        w.u32(self.psi_bins);
        w.f64s(self.edges());
        w.varints(&self.slots);
        w.f64s(&self.psi_edges);
        w.varint(self.missing);
        self.moments.write(&mut w);
        w.finish()
    }

    pub fn from_bytes(data: &[u8]) -> Result<Self> {
        let mut r = Reader::open(data, Kind::NumericReference)?;
        let bins = r.u32()?;
        let psi_bins = r.u32()?;
        let edges = r.f64s()?;
        let slots = r.varints()?;
        let psi_edges = r.f64s()?;
        let missing = r.varint()?;
        let moments = Moments::read(&mut r)?;
        if !strictly_increasing(&edges) || !strictly_increasing(&psi_edges) {
            return r.malformed("edges are not strictly increasing");
        }
        let total = slots.iter().try_fold(0u64, |a, b| a.checked_add(*b));
        if slots.len() != 2 * edges.len() + 1 || !matches!(total, Some(t) if t > 0) {
            return r.malformed("slot counts do not match the edges");
        }
        if !psi_edges
            .iter()
            .all(|p| edges.binary_search_by(|e| e.total_cmp(p)).is_ok())
        {
            return r.malformed("PSI edges are not a subset of the edges");
        }
        if edges.iter().any(|e| e.to_bits() == (-0.0f64).to_bits()) {
            return r.malformed("negative zero edge");
        }
        r.finish()?;
        Self::assemble(bins, psi_bins, edges, slots, psi_edges, missing, moments)
    }
}

fn strictly_increasing(v: &[f64]) -> bool {
    v.iter().all(|x| !x.is_nan()) && v.windows(2).all(|w| w[0] < w[1])
}

/// Counts of one window's values in the slots of one reference, plus moments.
#[derive(Debug, Clone)]
pub struct NumericSketch {
    fingerprint: Fingerprint,
    /// 2m + 2 slots; the last one counts NaN (missing).
    counts: Counts,
    /// Values counted, NaN included.
    total: u64,
    moments: Moments,
    pool: Arc<SlotPool>,
}

/// Counts in the narrowest width that holds `total` (so that none can overflow): 16 bits
/// up to 65,535 values, 32 bits up to 2^32 - 1, 64 bits beyond. Small windows are the
/// common case, and half the bytes are half the memory traffic of a window report.
#[derive(Debug, Clone)]
enum Counts {
    Small(Box<[u16]>),
    Narrow(Box<[u32]>),
    Wide(Box<[u64]>),
}

/// A sketch's counts per slot, without the NaN slot (2m + 1, aligned with the reference's).
pub enum SlotCounts<'a> {
    Small(&'a [u16]),
    Narrow(&'a [u32]),
    Wide(&'a [u64]),
}

/// A wide sketch counts at most this many values in 32 bits before adding them to its
/// 64-bit counts.
const WIDE_FLUSH: usize = 1 << 31;

impl NumericSketch {
    pub fn new(reference: &NumericReference) -> Self {
        NumericSketch {
            fingerprint: reference.fingerprint,
            counts: Counts::Small(reference.pool.take()),
            total: 0,
            moments: Moments::default(),
            pool: reference.pool.clone(),
        }
    }

    fn len(&self) -> usize {
        match &self.counts {
            Counts::Small(c) => c.len(),
            Counts::Narrow(c) => c.len(),
            Counts::Wide(c) => c.len(),
        }
    }

    fn check(&self, reference: &NumericReference) -> Result<()> {
        check_fits(self.fingerprint, self.len(), reference)
    }

    /// Widens the counts, if needed, to hold `total` values.
    fn make_room(&mut self, total: u64) {
        let counts = match &self.counts {
            Counts::Small(c) if total > u16::MAX as u64 => {
                if total > u32::MAX as u64 {
                    Counts::Wide(c.iter().map(|&v| v as u64).collect())
                } else {
                    let mut wider: Box<[u32]> = self.pool.take();
                    for (w, v) in wider.iter_mut().zip(c.iter()) {
                        *w = *v as u32;
                    }
                    Counts::Narrow(wider)
                }
            }
            Counts::Narrow(c) if total > u32::MAX as u64 => {
                Counts::Wide(c.iter().map(|&v| v as u64).collect())
            }
            _ => return,
        };
        match std::mem::replace(&mut self.counts, counts) {
            Counts::Small(buf) => self.pool.give(buf),
            Counts::Narrow(buf) => self.pool.give(buf),
            Counts::Wide(_) => {}
        }
    }

    /// Adds a batch of values (NaN = missing, ±inf land in the outer bins).
    pub fn update(&mut self, reference: &NumericReference, values: &[f64]) -> Result<()> {
        self.update_with(reference, values, &mut Prefetch::default())
    }

    /// `update`, issuing the prefetches queued in `pf` as it goes.
    fn update_with(
        &mut self,
        reference: &NumericReference,
        values: &[f64],
        pf: &mut Prefetch,
    ) -> Result<()> {
        self.check(reference)?;
        self.make_room(self.total + values.len() as u64);
        let mut batch = Batch {
            counter: reference.index.counter(values.len()),
            moments: &mut self.moments,
            pf,
        };
        match &mut self.counts {
            Counts::Small(slots) => batch.count(values, slots),
            Counts::Narrow(slots) => batch.count(values, slots),
            Counts::Wide(slots) => {
                let mut part_counts: Box<[u32]> = self.pool.take();
                for part in values.chunks(WIDE_FLUSH) {
                    batch.count(part, &mut part_counts);
                    for (w, p) in slots.iter_mut().zip(part_counts.iter_mut()) {
                        *w += *p as u64;
                        *p = 0;
                    }
                }
                self.pool.give(part_counts);
            }
        }
        self.total += values.len() as u64;
        Ok(())
    }

    pub fn merge(&mut self, other: &NumericSketch) -> Result<()> {
        if other.fingerprint != self.fingerprint || other.len() != self.len() {
            return Err(DriftError::Mismatch(format!(
                "cannot merge sketches of different references ({:016x} and {:016x})",
                self.fingerprint, other.fingerprint
            )));
        }
        let Some(total) = self.total.checked_add(other.total) else {
            return invalid("merging these sketches would overflow their 64-bit counts");
        };
        // at least as wide as `other` (which is as narrow as its own total allows)
        let other_needs = match other.counts {
            Counts::Small(_) => 0,
            Counts::Narrow(_) => u16::MAX as u64 + 1,
            Counts::Wide(_) => u32::MAX as u64 + 1,
        };
        self.make_room(total.max(other_needs));
        match (&mut self.counts, &other.counts) {
            (Counts::Small(a), Counts::Small(b)) => add_into(a, b),
            (Counts::Narrow(a), Counts::Small(b)) => add_into(a, b),
            (Counts::Narrow(a), Counts::Narrow(b)) => add_into(a, b),
            (Counts::Wide(a), Counts::Small(b)) => add_into(a, b),
            (Counts::Wide(a), Counts::Narrow(b)) => add_into(a, b),
            (Counts::Wide(a), Counts::Wide(b)) => add_into(a, b),
            _ => unreachable!("widened to `other`'s width above"),
        }
        self.total = total;
        self.moments.merge(&other.moments);
        Ok(())
    }

    /// Count per slot, without the NaN slot.
    pub fn slot_counts(&self) -> SlotCounts<'_> {
        match &self.counts {
            Counts::Small(c) => SlotCounts::Small(&c[..c.len() - 1]),
            Counts::Narrow(c) => SlotCounts::Narrow(&c[..c.len() - 1]),
            Counts::Wide(c) => SlotCounts::Wide(&c[..c.len() - 1]),
        }
    }
    /// Count of slot `i` (the NaN slot last).
    fn count(&self, i: usize) -> u64 {
        match &self.counts {
            Counts::Small(c) => c[i] as u64,
            Counts::Narrow(c) => c[i] as u64,
            Counts::Wide(c) => c[i],
        }
    }
    /// Every count, the NaN slot last.
    fn all_counts(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        (0..self.len()).map(|i| self.count(i))
    }
    /// Count per slot, without the NaN slot (2m + 1, aligned with the reference's slots).
    pub fn slots(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.all_counts().collect();
        v.pop();
        v
    }
    /// Count per bin (e[j-1], e[j]].
    pub fn counts(&self) -> Vec<u64> {
        self.slots().chunks(2).map(|c| c.iter().sum()).collect()
    }
    /// Non-missing values seen.
    pub fn n(&self) -> u64 {
        self.total - self.missing()
    }
    pub fn missing(&self) -> u64 {
        self.count(self.len() - 1)
    }
    pub fn moments(&self) -> &Moments {
        &self.moments
    }
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Queues the counts for prefetching.
    pub(crate) fn prefetch(&self, pf: &mut Prefetch) {
        match &self.counts {
            Counts::Small(c) => pf.add(c),
            Counts::Narrow(c) => pf.add(c),
            Counts::Wide(c) => pf.add(c),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::NumericSketch);
        w.u64(self.fingerprint);
        w.varints_from(self.all_counts());
        self.moments.write(&mut w);
        w.finish()
    }

    pub fn from_bytes(data: &[u8], reference: &NumericReference) -> Result<Self> {
        let mut r = Reader::open(data, Kind::NumericSketch)?;
        let fingerprint = r.u64()?;
        let slots = r.varints()?;
        let moments = Moments::read(&mut r)?;
        let Some(total) = slots.iter().try_fold(0u64, |a, b| a.checked_add(*b)) else {
            return r.malformed("counts overflow");
        };
        r.finish()?;
        check_fits(fingerprint, slots.len(), reference)?;
        let mut sketch = NumericSketch::new(reference);
        sketch.make_room(total);
        match &mut sketch.counts {
            Counts::Small(c) => c.iter_mut().zip(&slots).for_each(|(c, s)| *c = *s as u16),
            Counts::Narrow(c) => c.iter_mut().zip(&slots).for_each(|(c, s)| *c = *s as u32),
            Counts::Wide(c) => c.copy_from_slice(&slots),
        }
        sketch.total = total;
        sketch.moments = moments;
        Ok(sketch)
    }
}

/// What one `update` call counts with.
struct Batch<'a> {
    counter: Counter<'a>,
    moments: &'a mut Moments,
    pf: &'a mut Prefetch,
}

impl Batch<'_> {
    /// Counts `values` into `slots` and adds them to the moments, a chunk at a time.
    /// With prefetches queued, counts in pieces and issues some after each piece.
    fn count<C: Tally>(&mut self, values: &[f64], slots: &mut [C]) {
        const PIECE: usize = 128;
        let (piece, per_piece) = match self.pf.lines() {
            0 => (CHUNK, 0),
            lines => (PIECE, lines.div_ceil(values.len().div_ceil(PIECE).max(1))),
        };
        for chunk in values.chunks(CHUNK) {
            for part in chunk.chunks(piece) {
                self.pf.issue(per_piece);
                self.counter.count_raw(part, slots);
            }
            let nan = self.moments.add(chunk);
            self.counter.move_nan(slots, nan);
        }
    }
}

fn check_fits(fingerprint: Fingerprint, len: usize, reference: &NumericReference) -> Result<()> {
    if fingerprint != reference.fingerprint || len != reference.slots.len() + 1 {
        return Err(DriftError::Mismatch(format!(
            "this sketch was made for reference {fingerprint:016x}, not for reference {:016x}",
            reference.fingerprint
        )));
    }
    Ok(())
}

fn add_into<A: Copy + std::ops::AddAssign + From<B>, B: Copy>(a: &mut [A], b: &[B]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += A::from(*y);
    }
}

impl Drop for NumericSketch {
    fn drop(&mut self) {
        match &mut self.counts {
            Counts::Small(buf) => self.pool.give(std::mem::take(buf)),
            Counts::Narrow(buf) => self.pool.give(std::mem::take(buf)),
            Counts::Wide(_) => {}
        }
    }
}

impl PartialEq for NumericSketch {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
            && self.total == other.total
            && self.moments == other.moments
            && self.all_counts().eq(other.all_counts())
    }
}

/// Updates sketch j with `columns[j]`, loading the next sketch's and reference's data
/// while it counts the current one (a window report updates many cold sketches).
pub fn update_many(
    targets: &mut [(&mut NumericSketch, &NumericReference)],
    columns: &[&[f64]],
) -> Result<()> {
    assert_eq!(targets.len(), columns.len());
    let mut pf = Prefetch::default();
    for j in 0..targets.len() {
        if let Some((next, next_ref)) = targets.get(j + 1) {
            next_ref.index.prefetch(columns[j + 1].len(), &mut pf);
            next.prefetch(&mut pf);
        }
        let (sketch, reference) = &mut targets[j];
        sketch.update_with(reference, columns[j], &mut pf)?;
        pf.issue(usize::MAX);
    }
    Ok(())
}

/// `update_many` with the columns of a row-major matrix of `targets.len()` columns. It
/// gathers a block of columns at a time, which reads each row's cache lines once, and
/// loads the next block's part of each row while it gathers the current one.
pub fn update_many_rows(
    targets: &mut [(&mut NumericSketch, &NumericReference)],
    data: &[f64],
) -> Result<()> {
    const BLOCK: usize = 16;
    let cols = targets.len();
    if cols == 0 {
        return Ok(());
    }
    assert_eq!(data.len() % cols, 0, "a whole number of rows");
    let rows = data.len() / cols;
    if rows == 0 {
        return Ok(());
    }
    let mut scratch = vec![0.0; rows * BLOCK.min(cols)];
    for (j0, block) in (0..).step_by(BLOCK).zip(targets.chunks_mut(BLOCK)) {
        let width = block.len();
        // one f64 in eight starts a cache line (or nearly)
        let next = (j0 + width..cols).step_by(8).take(BLOCK / 8);
        for (i, row) in data.chunks_exact(cols).enumerate() {
            for j in next.clone() {
                prefetch_line(&row[j]);
            }
            for (k, v) in row[j0..j0 + width].iter().enumerate() {
                scratch[k * rows + i] = *v;
            }
        }
        let columns: Vec<&[f64]> = scratch.chunks_exact(rows).take(width).collect();
        update_many(block, &columns)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    #[test]
    fn discrete_data_gets_exact_edges() {
        let v: Vec<f64> = (0..1000).map(|i| (i % 7) as f64).collect();
        let r = NumericReference::build(&v, 1024, 10).unwrap();
        assert_eq!(r.edges(), &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(r.ks_bound(), 0.0);
        assert_eq!(r.counts()[0], 143);
        assert_eq!(&r.slots()[..3], &[0, 143, 0]);
        assert_eq!(*r.counts().last().unwrap(), 0);
    }

    #[test]
    fn ties_collapse_psi_edges() {
        let mut v = vec![0.0; 700];
        v.extend(vec![1.0; 300]);
        let r = NumericReference::build(&v, 16, 10).unwrap();
        assert_eq!(r.psi_edges(), &[0.0, 1.0]);
        assert_eq!(r.psi_counts(), &[700, 300, 0]);
    }

    #[test]
    fn sketch_counts_match_reference_on_same_data() {
        let mut rng = Rng::new(1);
        let v: Vec<f64> = (0..50_000).map(|_| rng.normal()).collect();
        let r = NumericReference::build(&v, 1024, 10).unwrap();
        let mut s = NumericSketch::new(&r);
        s.update(&r, &v).unwrap();
        assert_eq!(s.slots(), r.slots());

        assert!(r.ks_bound() <= 1.0 / 1024.0 + 1e-12);
    }

    #[test]
    fn counts_widen_without_loss() {
        let mut rng = Rng::new(3);
        let v: Vec<f64> = (0..70_000).map(|_| rng.normal()).collect();
        let r = NumericReference::build(&v[..5000], 64, 10).unwrap();
        let (mut a, mut b, mut whole) = (
            NumericSketch::new(&r),
            NumericSketch::new(&r),
            NumericSketch::new(&r),
        );
        a.update(&r, &v[..60_000]).unwrap();
        b.update(&r, &v[60_000..]).unwrap();
        whole.update(&r, &v).unwrap();
        assert!(matches!(a.slot_counts(), SlotCounts::Small(_)));
        assert!(matches!(whole.slot_counts(), SlotCounts::Narrow(_)));
        a.merge(&b).unwrap();
        assert!(matches!(a.slot_counts(), SlotCounts::Narrow(_)));
        assert_eq!(a.slots(), whole.slots());
        assert_eq!((a.n(), a.missing()), (whole.n(), whole.missing()));
        // beyond 2^32 - 1 values: 64-bit counts (from bytes rather than counted)
        let mut big: Vec<u64> = whole.all_counts().collect();
        big[3] += 5_000_000_000;
        let mut w = Writer::new(Kind::NumericSketch);
        w.u64(r.fingerprint());
        w.varints(&big);
        whole.moments.write(&mut w);
        let wide = NumericSketch::from_bytes(&w.finish(), &r).unwrap();
        assert!(matches!(wide.slot_counts(), SlotCounts::Wide(_)));
        assert_eq!(wide.n(), whole.n() + 5_000_000_000);
        assert_eq!(
            NumericSketch::from_bytes(&wide.to_bytes(), &r).unwrap(),
            wide
        );
        let mut merged = whole.clone();
        merged.merge(&wide).unwrap();
        assert!(matches!(merged.slot_counts(), SlotCounts::Wide(_)));
        assert_eq!(merged.n(), 2 * whole.n() + 5_000_000_000);
        merged.update(&r, &v[..10]).unwrap();
        assert_eq!(merged.n(), 2 * whole.n() + 5_000_000_010);
        let got = crate::compare::compare_numeric(&r, &merged).unwrap();
        assert!(got.ks > 0.4 && got.ks < 1.0, "{got:?}");
    }

    #[test]
    fn references_beyond_u32_compare_like_their_shape() {
        let mut rng = Rng::new(4);
        let v: Vec<f64> = (0..5000).map(|_| rng.normal()).collect();
        let x: Vec<f64> = (0..3000).map(|_| rng.normal() + 0.1).collect();
        let r = NumericReference::build(&v, 256, 10).unwrap();
        // the same shape with every count times 2^22: more than 2^32 values
        let scaled: Vec<u64> = r.slots().iter().map(|c| c << 22).collect();
        let big = NumericReference::assemble(
            256,
            10,
            r.edges().to_vec(),
            scaled,
            r.psi_edges().to_vec(),
            0,
            *r.moments(),
        )
        .unwrap();
        assert!(matches!(big.cumulative(), Cumulative::Wide { .. }));
        let (mut s, mut sb) = (NumericSketch::new(&r), NumericSketch::new(&big));
        s.update(&r, &x).unwrap();
        sb.update(&big, &x).unwrap();
        let (a, b) = (
            crate::compare::compare_numeric(&r, &s).unwrap(),
            crate::compare::compare_numeric(&big, &sb).unwrap(),
        );
        assert!((a.ks - b.ks).abs() < 1e-12, "{a:?} {b:?}");
        assert!((a.ks_bound - b.ks_bound).abs() < 1e-12);
        assert!((a.psi - b.psi).abs() < 1e-9);
        assert!((a.wasserstein - b.wasserstein).abs() < 1e-9);
    }

    #[test]
    fn batch_updates_equal_single_ones_and_pooled_buffers_start_at_zero() {
        let mut rng = Rng::new(5);
        let refs: Vec<NumericReference> = (0..37)
            .map(|j| {
                let v: Vec<f64> = (0..3000).map(|_| rng.normal() * (1 + j) as f64).collect();
                NumericReference::build(&v, 256, 10).unwrap()
            })
            .collect();
        let (rows, cols) = (1500, refs.len());
        let mut data: Vec<f64> = (0..rows * cols).map(|_| rng.cauchy()).collect();
        data[7 * cols + 3] = f64::NAN;
        for round in 0..3 {
            // rounds 1 and 2 take the buffers the previous round's sketches gave back
            let mut by_rows: Vec<NumericSketch> = refs.iter().map(NumericSketch::new).collect();
            let mut by_columns: Vec<NumericSketch> = refs.iter().map(NumericSketch::new).collect();
            let columns: Vec<Vec<f64>> = (0..cols)
                .map(|j| data.iter().skip(j).step_by(cols).copied().collect())
                .collect();
            let mut targets: Vec<_> = by_rows.iter_mut().zip(&refs).collect();
            update_many_rows(&mut targets, &data).unwrap();
            let slices: Vec<&[f64]> = columns.iter().map(|c| &c[..]).collect();
            let mut targets: Vec<_> = by_columns.iter_mut().zip(&refs).collect();
            update_many(&mut targets, &slices).unwrap();
            for j in 0..cols {
                let mut single = NumericSketch::new(&refs[j]);
                single.update(&refs[j], &columns[j]).unwrap();
                assert_eq!(by_rows[j], single, "round {round}, column {j}");
                assert_eq!(by_columns[j], single, "round {round}, column {j}");
                assert_eq!(single.n() + single.missing(), rows as u64);
            }
        }
    }

    #[test]
    fn bytes_round_trip_and_mismatch() {
        let mut rng = Rng::new(2);
        let v: Vec<f64> = (0..5000).map(|_| rng.normal()).collect();
        let r = NumericReference::build(&v, 256, 10).unwrap();
        let r2 = NumericReference::from_bytes(&r.to_bytes()).unwrap();
        assert_eq!(r2.fingerprint(), r.fingerprint());
        let mut s = NumericSketch::new(&r);
        s.update(&r, &v[..100]).unwrap();
        let back = NumericSketch::from_bytes(&s.to_bytes(), &r2).unwrap();
        assert_eq!(back, s);
        let other = NumericReference::build(&v[..100], 256, 10).unwrap();
        assert!(matches!(
            NumericSketch::from_bytes(&s.to_bytes(), &other),
            Err(DriftError::Mismatch(_))
        ));
    }

    #[test]
    fn empty_and_all_missing_are_errors() {
        assert!(NumericReference::build(&[], 1024, 10).is_err());
        assert!(NumericReference::build(&[f64::NAN; 3], 1024, 10).is_err());
        assert!(NumericReference::build(&[1.0], 1, 10).is_err());
    }
}
