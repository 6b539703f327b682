//! Fast bin lookup over sorted edges.
//!
//! Bins are `(-inf, e0], (e0, e1], ..., (e[m-1], +inf)`: the bin of `x` is the number of
//! edges strictly below `x`. A plain binary search costs ~log2(m) dependent, badly
//! predicted branches per value. Instead a grid of cells is laid over the edges' range;
//! each cell stores how many edges lie below it, so a value is located by one
//! multiply-and-truncate (or, for heavy tails, an order-preserving integer view of the
//! float, which spaces cells logarithmically) plus a short scan over the few edges inside
//! its cell. Correctness rests only on the cell function being monotone: an edge in a
//! lower cell is below `x`, an edge in a higher cell is above it. The grid (linear or
//! logarithmic) is chosen at build time by the expected scan length under the reference
//! distribution itself, since the edges are its quantiles.

const CELLS: usize = 4096;
/// Cells holding more edges than this are searched by bisection instead of a scan.
const SCAN_MAX: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Grid {
    /// cell = (x - lo) * scale
    Linear { lo: f64, scale: f64 },
    /// cell = (key(x) - lo) >> shift, key being the order-preserving integer of the float
    Key { lo: i64, shift: u32 },
}

#[derive(Debug, Clone)]
pub struct BinIndex {
    /// The edges followed by one `+inf` sentinel that stops every scan.
    edges: Vec<f64>,
    grid: Grid,
    /// `starts[c]` = number of edges whose cell is below `c`; `starts[CELLS]` = m.
    starts: Vec<u32>,
}

#[inline(always)]
fn key(x: f64) -> i64 {
    let b = x.to_bits() as i64;
    b ^ (((b >> 63) as u64) >> 1) as i64
}

impl Grid {
    #[inline(always)]
    fn cell(&self, x: f64) -> usize {
        match *self {
            // `as usize` saturates: negatives and NaN give 0, +inf gives usize::MAX.
            Grid::Linear { lo, scale } => (((x - lo) * scale) as usize).min(CELLS - 1),
            Grid::Key { lo, shift } => {
                let d = key(x).saturating_sub(lo).max(0) as u64;
                ((d >> shift) as usize).min(CELLS - 1)
            }
        }
    }
}

impl BinIndex {
    /// `edges` must be sorted, strictly increasing and free of NaN (-0.0 is read as 0.0).
    pub fn new(edges: &[f64]) -> Self {
        let finite: Vec<f64> = edges.iter().copied().filter(|e| e.is_finite()).collect();
        let candidates: Vec<Grid> = match (finite.first(), finite.last()) {
            (Some(&lo), Some(&hi)) if hi > lo => {
                let mut out = Vec::with_capacity(2);
                let scale = CELLS as f64 / (hi - lo);
                if scale.is_finite() && scale > 0.0 {
                    out.push(Grid::Linear { lo, scale });
                }
                let (klo, khi) = (key(lo), key(hi));
                let span = khi.saturating_sub(klo) as u64;
                let shift = 64 - (span / CELLS as u64).leading_zeros();
                out.push(Grid::Key { lo: klo, shift });
                out
            }
            _ => vec![Grid::Linear { lo: 0.0, scale: 0.0 }],
        };
        // Expected scan length when values follow the reference: the edges are its
        // quantiles, so each edge stands for an equal share and a cell holding k edges
        // is hit with probability ~k/m and costs ~k/2 comparisons.
        let best = candidates
            .into_iter()
            .map(|g| {
                let idx = Self::with_grid(edges, g);
                let cost: u64 = idx
                    .starts
                    .windows(2)
                    .map(|w| {
                        let k = (w[1] - w[0]) as u64;
                        k * k.min(SCAN_MAX as u64 + 4)
                    })
                    .sum();
                (cost, idx)
            })
            .min_by_key(|(cost, _)| *cost)
            .expect("at least one grid");
        best.1
    }

    fn with_grid(edges: &[f64], grid: Grid) -> Self {
        let mut starts = vec![0u32; CELLS + 1];
        for &e in edges {
            starts[grid.cell(e) + 1] += 1;
        }
        for c in 0..CELLS {
            starts[c + 1] += starts[c];
        }
        let mut padded = Vec::with_capacity(edges.len() + 1);
        padded.extend_from_slice(edges);
        padded.push(f64::INFINITY);
        BinIndex {
            edges: padded,
            grid,
            starts,
        }
    }

    /// Number of bins (edges + 1).
    pub fn n_bins(&self) -> usize {
        self.edges.len()
    }

    #[inline(always)]
    pub fn locate(&self, x: f64) -> usize {
        let x = x + 0.0; // -0.0 -> 0.0, so float order and key order agree
        let c = self.grid.cell(x);
        // SAFETY: c < CELLS and starts has CELLS + 1 entries; starts[c + 1] <= m < edges.len().
        let (mut j, end) = unsafe {
            (
                *self.starts.get_unchecked(c) as usize,
                *self.starts.get_unchecked(c + 1) as usize,
            )
        };
        if end - j > SCAN_MAX {
            return j + self.edges[j..end].partition_point(|e| *e < x);
        }
        // SAFETY: the scan stops at the latest at the +inf sentinel edges[m] (x is not NaN):
        // edges in higher cells are > x by monotonicity of `cell`.
        unsafe {
            while *self.edges.get_unchecked(j) < x {
                j += 1;
            }
        }
        j
    }

    /// Adds the bin counts of the non-NaN values to `counts` (len `n_bins()`), returns the
    /// number of NaN values seen.
    pub fn count_into(&self, values: &[f64], counts: &mut [u64]) -> u64 {
        assert_eq!(counts.len(), self.n_bins());
        let mut nan = 0u64;
        for &x in values {
            if x.is_nan() {
                nan += 1;
                continue;
            }
            let j = self.locate(x);
            // SAFETY: locate returns a value in 0..=m and counts has m + 1 entries.
            unsafe { *counts.get_unchecked_mut(j) += 1 };
        }
        nan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    fn reference_bin(edges: &[f64], x: f64) -> usize {
        edges.iter().filter(|e| **e < x).count()
    }

    fn check(edges: &[f64], probes: &[f64]) {
        let idx = BinIndex::new(edges);
        for &x in probes {
            assert_eq!(idx.locate(x), reference_bin(edges, x), "x={x} edges={edges:?}");
        }
    }

    #[test]
    fn matches_linear_count_on_many_shapes() {
        let mut rng = Rng::new(7);
        let specials = [
            f64::NEG_INFINITY,
            f64::INFINITY,
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            -1e300,
            1e300,
        ];
        let shapes: Vec<Vec<f64>> = vec![
            (0..1000).map(|_| rng.normal()).collect(),
            (0..1000).map(|_| rng.cauchy()).collect(),
            (0..1000).map(|_| rng.normal().exp() * 1e-200).collect(),
            (0..1000)
                .map(|i| if i % 100 == 0 { 1e12 } else { rng.normal() })
                .collect(),
            vec![1.0],
            vec![f64::NEG_INFINITY, 0.0, f64::INFINITY],
        ];
        for mut edges in shapes {
            edges.sort_by(f64::total_cmp);
            edges.dedup();
            let mut probes: Vec<f64> = edges.clone();
            probes.extend(edges.iter().map(|e| e * (1.0 + 1e-12)));
            probes.extend((0..2000).map(|_| rng.cauchy() * 10.0));
            probes.extend(specials);
            check(&edges, &probes);
        }
    }

    #[test]
    fn empty_edges_put_everything_in_one_bin() {
        check(&[], &[f64::NEG_INFINITY, 0.0, 1.0, f64::INFINITY]);
    }
}
