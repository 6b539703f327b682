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

use crate::codec::{Kind, Reader, Writer};
use crate::error::{invalid, DriftError, Result};
use crate::sketch::binning::BinIndex;
use crate::sketch::Fingerprint;

pub const DEFAULT_BINS: usize = 1024;
pub const DEFAULT_PSI_BINS: usize = 10;
const MAX_BINS: usize = 1 << 16;
const CHUNK: usize = 2048;

#[derive(Debug, Clone)]
pub struct NumericReference {
    bins: u32,
    psi_bins: u32,
    /// Sorted, distinct edges (may include ±inf when the reference holds them).
    edges: Vec<f64>,
    /// Reference count per slot: between edges / at edge, 2m + 1 slots (no NaN slot).
    slots: Vec<u64>,
    /// Reference count per bin (e[j-1], e[j]], m + 1 bins.
    counts: Vec<u64>,
    /// Reference CDF after each slot (2m + 1 entries; the last is 1).
    cdf: Vec<f64>,
    /// For each bin, the PSI bin it belongs to.
    psi_of_bin: Vec<u32>,
    psi_edges: Vec<f64>,
    psi_counts: Vec<u64>,
    n: u64,
    missing: u64,
    moments: Moments,
    ks_bound: f64,
    fingerprint: Fingerprint,
    index: BinIndex,
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
        let counts: Vec<u64> = slots.chunks(2).map(|c| c.iter().sum()).collect();
        let ks_bound = slots.iter().step_by(2).copied().max().unwrap_or(0) as f64 / n as f64;
        let mut below = 0u64;
        let cdf: Vec<f64> = slots
            .iter()
            .map(|c| {
                below += c;
                below as f64 / n as f64
            })
            .collect();
        let mut psi_of_bin = Vec::with_capacity(counts.len());
        let mut p = 0u32;
        for j in 0..counts.len() {
            // bin j = (e[j-1], e[j]]: its PSI bin is the number of PSI edges <= e[j-1]
            if j > 0 {
                while (p as usize) < psi_edges.len() && psi_edges[p as usize] <= edges[j - 1] {
                    p += 1;
                }
            }
            psi_of_bin.push(p);
        }
        let mut psi_counts = vec![0u64; psi_edges.len() + 1];
        for (j, c) in counts.iter().enumerate() {
            psi_counts[psi_of_bin[j] as usize] += c;
        }
        let mut w = Writer::new(Kind::NumericReference);
        w.f64s(&edges);
        w.varints(&slots);
        let fingerprint = xxhash_rust::xxh3::xxh3_64(&w.finish());
        let index = BinIndex::new(&edges);
        Ok(NumericReference {
            bins,
            psi_bins,
            edges,
            slots,
            counts,
            cdf,
            psi_of_bin,
            psi_edges,
            psi_counts,
            n,
            missing,
            moments,
            ks_bound,
            fingerprint,
            index,
        })
    }

    pub fn edges(&self) -> &[f64] {
        &self.edges
    }
    /// Reference count per bin (e[j-1], e[j]].
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
    /// Reference CDF after each slot.
    pub fn cdf(&self) -> &[f64] {
        &self.cdf
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
    pub fn psi_of_bin(&self) -> &[u32] {
        &self.psi_of_bin
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

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::NumericReference);
        w.u32(self.bins);
        w.u32(self.psi_bins);
        w.f64s(&self.edges);
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
#[derive(Debug, Clone, PartialEq)]
pub struct NumericSketch {
    fingerprint: Fingerprint,
    /// 2m + 2 slots; the last one counts NaN (missing).
    slots: Vec<u64>,
    moments: Moments,
}

impl NumericSketch {
    pub fn new(reference: &NumericReference) -> Self {
        NumericSketch {
            fingerprint: reference.fingerprint,
            slots: vec![0; reference.slots.len() + 1],
            moments: Moments::default(),
        }
    }

    fn check(&self, reference: &NumericReference) -> Result<()> {
        if self.fingerprint != reference.fingerprint
            || self.slots.len() != reference.slots.len() + 1
        {
            return Err(DriftError::Mismatch(format!(
                "this sketch was made for reference {:016x}, not for reference {:016x}",
                self.fingerprint, reference.fingerprint
            )));
        }
        Ok(())
    }

    /// Adds a batch of values (NaN = missing, ±inf land in the outer bins).
    pub fn update(&mut self, reference: &NumericReference, values: &[f64]) -> Result<()> {
        self.check(reference)?;
        let index = &reference.index;
        for chunk in values.chunks(CHUNK) {
            index.count_raw(chunk, &mut self.slots);
            let nan = self.moments.add(chunk);
            index.move_nan(&mut self.slots, nan);
        }
        Ok(())
    }

    pub fn merge(&mut self, other: &NumericSketch) -> Result<()> {
        if other.fingerprint != self.fingerprint || other.slots.len() != self.slots.len() {
            return Err(DriftError::Mismatch(format!(
                "cannot merge sketches of different references ({:016x} and {:016x})",
                self.fingerprint, other.fingerprint
            )));
        }
        for (a, b) in self.slots.iter_mut().zip(&other.slots) {
            *a += b;
        }
        self.moments.merge(&other.moments);
        Ok(())
    }

    /// Count per slot, without the NaN slot (2m + 1, aligned with the reference's slots).
    pub fn slots(&self) -> &[u64] {
        &self.slots[..self.slots.len() - 1]
    }
    /// Count per bin (e[j-1], e[j]].
    pub fn counts(&self) -> Vec<u64> {
        self.slots().chunks(2).map(|c| c.iter().sum()).collect()
    }
    /// Non-missing values seen.
    pub fn n(&self) -> u64 {
        self.slots().iter().sum()
    }
    pub fn missing(&self) -> u64 {
        self.slots[self.slots.len() - 1]
    }
    pub fn moments(&self) -> &Moments {
        &self.moments
    }
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::NumericSketch);
        w.u64(self.fingerprint);
        w.varints(&self.slots);
        self.moments.write(&mut w);
        w.finish()
    }

    pub fn from_bytes(data: &[u8], reference: &NumericReference) -> Result<Self> {
        let mut r = Reader::open(data, Kind::NumericSketch)?;
        let fingerprint = r.u64()?;
        let slots = r.varints()?;
        let moments = Moments::read(&mut r)?;
        if slots
            .iter()
            .try_fold(0u64, |a, b| a.checked_add(*b))
            .is_none()
        {
            return r.malformed("counts overflow");
        }
        r.finish()?;
        let s = NumericSketch {
            fingerprint,
            slots,
            moments,
        };
        s.check(reference)?;
        Ok(s)
    }
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
