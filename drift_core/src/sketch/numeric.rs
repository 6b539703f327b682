//! Numeric reference profiles and window sketches.
//!
//! A reference holds high-resolution quantile edges of the reference data with the exact
//! reference count at or below each edge, so the window's and the reference's empirical
//! CDFs are known exactly at every edge. The KS statistic evaluated at the edges is then
//! a lower bound of the exact two-sample statistic and falls short of it by at most the
//! largest reference share strictly inside one bin (`ks_bound`): about 1/bins for
//! continuous data, and 0 for data with at most `bins` distinct values (every distinct
//! value becomes an edge). PSI bins are reference deciles (by default) and are always a
//! subset of the KS edges, so one pass over the window fills both.

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
    /// Reference count per bin (len edges + 1).
    counts: Vec<u64>,
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
    /// Accumulates `values`, skipping NaN; vectorises over four lanes.
    fn add(&mut self, values: &[f64]) {
        let (mut mn, mut mx) = ([self.min; 4], [self.max; 4]);
        let (mut s, mut s2) = ([0.0f64; 4], [0.0f64; 4]);
        let mut inf = 0u64;
        let chunks = values.chunks_exact(4);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..4 {
                let x = c[l];
                mn[l] = mn[l].min(x); // min/max ignore NaN
                mx[l] = mx[l].max(x);
                let f = if x.is_finite() { x } else { 0.0 };
                s[l] += f;
                s2[l] += f * f;
                inf += x.is_infinite() as u64;
            }
        }
        for &x in rest {
            mn[0] = mn[0].min(x);
            mx[0] = mx[0].max(x);
            let f = if x.is_finite() { x } else { 0.0 };
            s[0] += f;
            s2[0] += f * f;
            inf += x.is_infinite() as u64;
        }
        self.min = mn.iter().fold(self.min, |a, b| a.min(*b));
        self.max = mx.iter().fold(self.max, |a, b| a.max(*b));
        self.sum += (s[0] + s[1]) + (s[2] + s[3]);
        self.sum_sq += (s2[0] + s2[1]) + (s2[2] + s2[3]);
        self.infinite += inf;
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

/// The value at rank floor(k * n / parts) of the sorted data, for k = 1..parts-1.
fn quantile_edges(sorted: &[f64], parts: usize) -> impl Iterator<Item = f64> + '_ {
    let n = sorted.len();
    (1..parts).map(move |k| sorted[((k as u128 * n as u128) / parts as u128) as usize])
}

fn check_bins(name: &str, v: usize, min: usize) -> Result<()> {
    if v < min || v > MAX_BINS {
        return invalid(format!("{name} must be between {min} and {MAX_BINS}, got {v}"));
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
        // counts per bin (e[j-1], e[j]] from the exact rank of each edge
        let mut counts = Vec::with_capacity(edges.len() + 1);
        let mut below = 0usize;
        let mut ks_bound = 0usize;
        for &e in &edges {
            let le = sorted.partition_point(|x| *x <= e);
            let lt = sorted.partition_point(|x| *x < e);
            ks_bound = ks_bound.max(lt - below); // share strictly inside this bin
            counts.push((le - below) as u64);
            below = le;
        }
        counts.push((sorted.len() - below) as u64);
        ks_bound = ks_bound.max(sorted.len() - below);
        let mut moments = Moments::default();
        moments.add(&sorted);
        Self::assemble(
            bins as u32,
            psi_bins as u32,
            edges,
            counts,
            psi_edges,
            sorted.len() as u64,
            missing,
            moments,
            ks_bound as f64 / sorted.len() as f64,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        bins: u32,
        psi_bins: u32,
        edges: Vec<f64>,
        counts: Vec<u64>,
        psi_edges: Vec<f64>,
        n: u64,
        missing: u64,
        moments: Moments,
        ks_bound: f64,
    ) -> Result<Self> {
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
        w.varints(&counts);
        let fingerprint = xxhash_rust::xxh3::xxh3_64(&w.finish());
        let index = BinIndex::new(&edges);
        Ok(NumericReference {
            bins,
            psi_bins,
            edges,
            counts,
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
    pub fn counts(&self) -> &[u64] {
        &self.counts
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
        w.varints(&self.counts);
        w.f64s(&self.psi_edges);
        w.varint(self.n);
        w.varint(self.missing);
        self.moments.write(&mut w);
        w.f64(self.ks_bound);
        w.finish()
    }

    pub fn from_bytes(data: &[u8]) -> Result<Self> {
        let mut r = Reader::open(data, Kind::NumericReference)?;
        let bins = r.u32()?;
        let psi_bins = r.u32()?;
        let edges = r.f64s()?;
        let counts = r.varints()?;
        let psi_edges = r.f64s()?;
        let n = r.varint()?;
        let missing = r.varint()?;
        let moments = Moments::read(&mut r)?;
        let ks_bound = r.f64()?;
        if !strictly_increasing(&edges) || !strictly_increasing(&psi_edges) {
            return r.malformed("edges are not strictly increasing");
        }
        if counts.len() != edges.len() + 1 || counts.iter().sum::<u64>() != n || n == 0 {
            return r.malformed("bin counts do not match the edges and the count");
        }
        if !psi_edges.iter().all(|p| edges.binary_search_by(|e| e.total_cmp(p)).is_ok()) {
            return r.malformed("PSI edges are not a subset of the edges");
        }
        if !(0.0..=1.0).contains(&ks_bound) {
            return r.malformed("ks_bound outside [0, 1]");
        }
        r.finish()?;
        Self::assemble(
            bins, psi_bins, edges, counts, psi_edges, n, missing, moments, ks_bound,
        )
    }
}

fn strictly_increasing(v: &[f64]) -> bool {
    v.iter().all(|x| !x.is_nan()) && v.windows(2).all(|w| w[0] < w[1])
}

/// Counts of one window's values in the bins of one reference, plus moments.
#[derive(Debug, Clone, PartialEq)]
pub struct NumericSketch {
    fingerprint: Fingerprint,
    counts: Vec<u64>,
    missing: u64,
    moments: Moments,
}

impl NumericSketch {
    pub fn new(reference: &NumericReference) -> Self {
        NumericSketch {
            fingerprint: reference.fingerprint,
            counts: vec![0; reference.counts.len()],
            missing: 0,
            moments: Moments::default(),
        }
    }

    fn check(&self, reference: &NumericReference) -> Result<()> {
        if self.fingerprint != reference.fingerprint || self.counts.len() != reference.counts.len()
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
        for chunk in values.chunks(CHUNK) {
            self.missing += reference.index.count_into(chunk, &mut self.counts);
            self.moments.add(chunk);
        }
        Ok(())
    }

    pub fn merge(&mut self, other: &NumericSketch) -> Result<()> {
        if other.fingerprint != self.fingerprint || other.counts.len() != self.counts.len() {
            return Err(DriftError::Mismatch(format!(
                "cannot merge sketches of different references ({:016x} and {:016x})",
                self.fingerprint, other.fingerprint
            )));
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.missing += other.missing;
        self.moments.merge(&other.moments);
        Ok(())
    }

    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
    /// Non-missing values seen.
    pub fn n(&self) -> u64 {
        self.counts.iter().sum()
    }
    pub fn missing(&self) -> u64 {
        self.missing
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
        w.varints(&self.counts);
        w.varint(self.missing);
        self.moments.write(&mut w);
        w.finish()
    }

    pub fn from_bytes(data: &[u8], reference: &NumericReference) -> Result<Self> {
        let mut r = Reader::open(data, Kind::NumericSketch)?;
        let fingerprint = r.u64()?;
        let counts = r.varints()?;
        let missing = r.varint()?;
        let moments = Moments::read(&mut r)?;
        r.finish()?;
        let s = NumericSketch {
            fingerprint,
            counts,
            missing,
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
        assert_eq!(s.counts(), r.counts());
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
