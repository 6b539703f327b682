//! Fast, branch-free bin lookup over sorted edges.
//!
//! Each value goes to one of `2m + 2` slots for `m` edges: slot `2j` holds values strictly
//! between `e[j-1]` and `e[j]`, slot `2j + 1` values equal to `e[j]`, slot `2m` values above
//! every edge and slot `2m + 1` NaN. Knowing what lies *at* an edge and what lies *between*
//! edges gives the exact CDF just below and at every edge, which is what bounds the KS
//! error tightly (and makes it exact when either side has no mass between edges).
//!
//! A plain binary search costs ~log2(m) dependent, badly predicted branches per value.
//! Instead a grid of cells is laid over the edges' range; each cell stores how many edges
//! lie in lower cells, and every cell holds at most `K` edges. The slot of `x` is then
//! `2 start[c] + sum over i < K of [x > e[start + i]] + [x >= e[start + i]]` — `2K`
//! comparisons and no branch. This is exact because the cell function is monotone: edges
//! in lower cells are below `x`, edges in higher cells above it (so they add nothing), and
//! the edge array is padded with NaN, which compares false with everything. The kernel
//! does not test for NaN: a NaN value lands in one fixed slot (`nan_slot`) and callers
//! that count NaN anyway (the moments pass does) move that many counts to the NaN slot.
//!
//! The grid is linear in `x`; or linear in the order-preserving integer view of the float
//! (logarithmic spacing, for one heavy tail); or "symlog": linear near a centre and
//! logarithmic on both sides of it, for tails heavy on both sides (Cauchy, Student t).
//! Cells holding more than `K` edges (a heavy tail, a tight cluster beside huge outliers)
//! are flagged and searched by bisection instead; that branch is well predicted as long
//! as those cells carry little of the mass. The grid kind, its size and `K` are chosen at
//! build time by an estimate of the cost per value under the reference distribution
//! itself (the edges are its quantiles, so a cell's share of the edges is its share of
//! the mass), counting the cache footprint of the cell table too (16-bit entries while
//! the edges allow it).
//!
//! Two lookups are built: the cheapest per value once its table sits in cache, for long
//! batches, and one of at most 2048 cells (a 4 KiB table) for short batches, which find
//! the table cold (a window report updates a thousand sketches with a thousand values
//! each): there, bytes read cost more than a second edge compared per value.

const MIN_CELLS_LOG2: u32 = 6;
/// The fast lookup's grid has at least 2^this cells.
const FAST_MIN_CELLS_LOG2: u32 = 10;
const MAX_CELLS_LOG2: u32 = 16;
/// Widest branch-free kernel; edges are padded with this many NaN.
const MAX_K: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Grid {
    /// cell = (x - lo) * scale
    Linear { lo: f64, scale: f64, last: usize },
    /// cell = (key(x) - lo) >> shift
    Key { lo: i64, shift: u32, last: usize },
    /// cell = (symlog(x) - lo) >> shift, where symlog(x) = ±(bits(|x - c| + s) - bits(s))
    /// with the sign of x - c: linear within about s of the centre c, logarithmic
    /// beyond, for tails heavy on both sides (bits of a positive float grow with it).
    Symlog {
        c: f64,
        s: f64,
        bits_s: i64,
        lo: i64,
        shift: u32,
        last: usize,
    },
}

#[inline(always)]
fn symlog(x: f64, c: f64, s: f64, bits_s: i64) -> i64 {
    let d = x - c;
    let k = (d.abs() + s).to_bits() as i64 - bits_s;
    if d < 0.0 {
        -k
    } else {
        k
    }
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
            Grid::Linear { lo, scale, last } => {
                // clamp in the float domain (NaN and negatives to 0) so the conversion is
                // one instruction; written as compares so they lower to maxsd / minsd
                let t = (x - lo) * scale;
                let t = if t > 0.0 { t } else { 0.0 };
                let lastf = last as f64;
                let t = if t < lastf { t } else { lastf };
                // SAFETY: t is in [0, last] and last < 2^31.
                unsafe { t.to_int_unchecked::<i32>() as usize }
            }
            Grid::Key { lo, shift, last } => {
                let k = key(x);
                // k - lo fits u64 whenever k >= lo
                let d = if k < lo { 0 } else { k.wrapping_sub(lo) as u64 };
                ((d >> shift) as usize).min(last)
            }
            Grid::Symlog {
                c,
                s,
                bits_s,
                lo,
                shift,
                last,
            } => {
                let k = symlog(x, c, s, bits_s);
                let d = if k < lo { 0 } else { k.wrapping_sub(lo) as u64 };
                ((d >> shift) as usize).min(last)
            }
        }
    }

    fn cells(&self) -> usize {
        match *self {
            Grid::Linear { last, .. } | Grid::Key { last, .. } | Grid::Symlog { last, .. } => {
                last + 1
            }
        }
    }

    /// Per-value cost of the cell function beyond the linear grid's, in the units of the
    /// cost model (one edge compared).
    fn extra_cost(&self) -> f64 {
        match self {
            Grid::Linear { .. } | Grid::Key { .. } => 0.0,
            Grid::Symlog { .. } => 0.5,
        }
    }
}

/// Entries of the cell table: the number of edges below the cell, with a flag bit for
/// cells searched by bisection.
trait Start: Copy + Send + Sync + std::fmt::Debug + 'static {
    const DENSE: Self;
    const MAX_EDGES: usize;
    fn new(below: usize, dense: bool) -> Self;
    fn is_dense(self) -> bool;
    fn below(self) -> usize;
}

macro_rules! impl_start {
    ($t:ty) => {
        impl Start for $t {
            const DENSE: $t = 1 << (<$t>::BITS - 1);
            const MAX_EDGES: usize = (1 << (<$t>::BITS - 1)) - 1;
            #[inline(always)]
            fn new(below: usize, dense: bool) -> Self {
                below as $t | if dense { Self::DENSE } else { 0 }
            }
            #[inline(always)]
            fn is_dense(self) -> bool {
                self & Self::DENSE != 0
            }
            #[inline(always)]
            fn below(self) -> usize {
                (self & !Self::DENSE) as usize
            }
        }
    };
}

impl_start!(u16);
impl_start!(u32);

#[derive(Debug, Clone)]
enum Table {
    Narrow(Vec<u16>),
    Wide(Vec<u32>),
}

/// A slot count the kernel increments; callers keep every count below its maximum.
pub trait Tally: Copy + Send + Sync + 'static {
    fn bump(&mut self);
    fn add(&mut self, n: u64);
    fn sub(&mut self, n: u64);
}

macro_rules! impl_tally {
    ($t:ty) => {
        impl Tally for $t {
            #[inline(always)]
            fn bump(&mut self) {
                *self += 1;
            }
            #[inline(always)]
            fn add(&mut self, n: u64) {
                *self += n as $t;
            }
            #[inline(always)]
            fn sub(&mut self, n: u64) {
                *self -= n as $t;
            }
        }
    };
}

impl_tally!(u16);
impl_tally!(u32);

/// One way to look up slots: a grid, its cell table and the kernel width.
#[derive(Debug, Clone)]
struct Lookup {
    grid: Grid,
    /// Entry c: edges in cells below c (| DENSE); one more entry holds m.
    table: Table,
    /// Kernel width: every cell not flagged DENSE holds at most k edges.
    k: usize,
    any_dense: bool,
    /// Where the branch-free kernel puts a NaN.
    nan_slot: usize,
}

#[derive(Debug, Clone)]
pub struct BinIndex {
    /// The m edges followed by MAX_K NaN paddings.
    edges: Vec<f64>,
    m: usize,
    /// For long batches: the cheapest lookup per value once its table is in cache.
    fast: Lookup,
    /// For short batches, which find the table cold: at most 2048 cells.
    small: Lookup,
}

/// Batches shorter than this use the small lookup.
const SMALL_BATCH: usize = 1 << 13;
/// The small lookup's grid has at most 2^this cells (a 4 KiB table of 16-bit entries).
const SMALL_CELLS_LOG2: u32 = 11;

/// A lookup chosen for one batch: counts values into slots.
pub struct Counter<'a> {
    index: &'a BinIndex,
    lookup: &'a Lookup,
}

impl BinIndex {
    /// `edges` must be sorted, strictly increasing and free of NaN, with no -0.0.
    pub fn new(edges: &[f64]) -> Self {
        let finite: Vec<f64> = edges.iter().copied().filter(|e| e.is_finite()).collect();
        let mut grids = Vec::new();
        if let (Some(&lo), Some(&hi)) = (finite.first(), finite.last()) {
            if hi > lo {
                for log2 in MIN_CELLS_LOG2..=MAX_CELLS_LOG2 {
                    let cells = 1usize << log2;
                    let scale = cells as f64 / (hi - lo);
                    if scale.is_finite() {
                        grids.push(Grid::Linear {
                            lo,
                            scale,
                            last: cells - 1,
                        });
                    }
                    let span = (key(hi) as i128 - key(lo) as i128) as u64;
                    let shift = 64 - (span >> log2).leading_zeros();
                    grids.push(Grid::Key {
                        lo: key(lo),
                        shift,
                        last: cells - 1,
                    });
                    // centred on the median edge, linear over a fraction of the
                    // interquartile range
                    let q = finite.len();
                    let (c, iqr) = (finite[q / 2], finite[3 * q / 4] - finite[q / 4]);
                    for fraction in [1.0, 0.25, 1.0 / 16.0, 1.0 / 64.0] {
                        let s = iqr * fraction;
                        if !(s > 0.0 && s.is_finite()) {
                            continue;
                        }
                        let bits_s = s.to_bits() as i64;
                        let (ylo, yhi) = (symlog(lo, c, s, bits_s), symlog(hi, c, s, bits_s));
                        let span = (yhi as i128 - ylo as i128) as u64;
                        grids.push(Grid::Symlog {
                            c,
                            s,
                            bits_s,
                            lo: ylo,
                            shift: 64 - (span >> log2).leading_zeros(),
                            last: cells - 1,
                        });
                    }
                }
            }
        }
        if grids.is_empty() {
            grids.push(Grid::Linear {
                lo: 0.0,
                scale: 0.0,
                last: 0,
            });
        }
        let m = edges.len().max(1) as f64;
        let entry_bytes = if edges.len() <= u16::MAX_EDGES { 2 } else { 4 };
        // (cost per value, grid, K) of the best candidate so far
        let mut fast: Option<(f64, Grid, usize)> = None;
        let mut small: Option<(f64, Grid, usize)> = None;
        for g in grids {
            let per_cell = Self::cell_counts(edges, g);
            // tables beyond 16 KiB compete with the counts and edges for L1
            let table_kib = per_cell.len() * entry_bytes / 1024;
            let table_cost = match table_kib {
                0..=16 => 0.0,
                17..=32 => 0.5,
                33..=64 => 1.5,
                _ => 2.0,
            };
            for k in [1usize, 2, 4, MAX_K] {
                let dense: usize = per_cell
                    .iter()
                    .filter(|c| **c as usize > k)
                    .map(|c| *c as usize)
                    .sum();
                // any bisected cell costs every value a test, and those in it a bisection
                // (a handful of steps plus a likely misprediction)
                let check = if dense > 0 { 0.5 } else { 0.0 };
                let cost = k as f64 + g.extra_cost() + check + 40.0 * dense as f64 / m;
                if g.cells() >= 1 << FAST_MIN_CELLS_LOG2
                    && fast.as_ref().is_none_or(|b| cost + table_cost < b.0)
                {
                    fast = Some((cost + table_cost, g, k));
                }
                if g.cells() <= 1 << SMALL_CELLS_LOG2 && small.as_ref().is_none_or(|b| cost < b.0) {
                    small = Some((cost, g, k));
                }
            }
        }
        let (_, grid, k) = fast.or(small).expect("at least one grid");
        let fast = Self::lookup(edges, grid, k);
        let small = match small {
            Some((_, grid, k)) => Self::lookup(edges, grid, k),
            None => fast.clone(),
        };
        let mut padded = Vec::with_capacity(edges.len() + MAX_K);
        padded.extend_from_slice(edges);
        padded.extend(std::iter::repeat_n(f64::NAN, MAX_K));
        let mut idx = BinIndex {
            edges: padded,
            m: edges.len(),
            fast,
            small,
        };
        idx.fast.nan_slot = idx.counter_with(&idx.fast).slot(f64::NAN, false);
        idx.small.nan_slot = idx.counter_with(&idx.small).slot(f64::NAN, false);
        idx
    }

    fn cell_counts(edges: &[f64], grid: Grid) -> Vec<u32> {
        let mut per_cell = vec![0u32; grid.cells()];
        for &e in edges {
            per_cell[grid.cell(e)] += 1;
        }
        per_cell
    }

    fn build_table<S: Start>(per_cell: &[u32], k: usize) -> Vec<S> {
        let mut table = Vec::with_capacity(per_cell.len() + 1);
        let mut below = 0usize;
        for &c in per_cell {
            table.push(S::new(below, c as usize > k));
            below += c as usize;
        }
        table.push(S::new(below, false));
        table
    }

    fn lookup(edges: &[f64], grid: Grid, k: usize) -> Lookup {
        let per_cell = Self::cell_counts(edges, grid);
        let any_dense = per_cell.iter().any(|c| *c as usize > k);
        let table = if edges.len() <= u16::MAX_EDGES {
            Table::Narrow(Self::build_table(&per_cell, k))
        } else {
            Table::Wide(Self::build_table(&per_cell, k))
        };
        Lookup {
            grid,
            table,
            k,
            any_dense,
            nan_slot: 0,
        }
    }

    fn counter_with<'a>(&'a self, lookup: &'a Lookup) -> Counter<'a> {
        Counter {
            index: self,
            lookup,
        }
    }

    /// The lookup for a batch of `n` values.
    pub fn counter(&self, n: usize) -> Counter<'_> {
        self.counter_with(if n < SMALL_BATCH {
            &self.small
        } else {
            &self.fast
        })
    }

    /// The edges, sorted and distinct.
    pub fn edges(&self) -> &[f64] {
        &self.edges[..self.m]
    }

    /// Number of slots: 2 per edge, one above all edges, one for NaN.
    pub fn n_slots(&self) -> usize {
        2 * self.m + 2
    }

    /// Slot of one value (see the module documentation).
    pub fn slot(&self, x: f64) -> usize {
        self.counter_with(&self.fast).slot(x, true)
    }

    /// Adds the slot counts of `values` to `counts` (len `n_slots()`), NaN included.
    pub fn count_into<C: Tally>(&self, values: &[f64], counts: &mut [C]) {
        let counter = self.counter(values.len());
        counter.count_raw(values, counts);
        let nan = values.iter().filter(|x| x.is_nan()).count() as u64;
        counter.move_nan(counts, nan);
    }

    /// Starts loading what a batch of `n` values will read (edges and cell table) into
    /// the cache, for a batch that finds them cold.
    pub(crate) fn prefetch(&self, n: usize, pf: &mut crate::sketch::Prefetch) {
        pf.add(&self.edges[..self.m]);
        match &self.counter(n).lookup.table {
            Table::Narrow(t) => pf.add(t),
            Table::Wide(t) => pf.add(t),
        }
    }

    /// The lookup chosen at build time, for benchmarks and debugging.
    pub fn describe(&self) -> String {
        let one = |lk: &Lookup| {
            let kind = match lk.grid {
                Grid::Linear { .. } => "linear",
                Grid::Key { .. } => "log",
                Grid::Symlog { .. } => "symlog",
            };
            let cells = lk.grid.cells();
            let (bytes, dense) = match &lk.table {
                Table::Narrow(t) => (2 * t.len(), t.iter().filter(|s| s.is_dense()).count()),
                Table::Wide(t) => (4 * t.len(), t.iter().filter(|s| s.is_dense()).count()),
            };
            format!(
                "{kind} grid of {cells} cells ({bytes} B), K = {}, {dense} dense cells",
                lk.k
            )
        };
        format!("fast: {}; small: {}", one(&self.fast), one(&self.small))
    }

    #[cfg(test)]
    fn kernel(&self) -> (usize, usize) {
        let dense = match &self.fast.table {
            Table::Narrow(t) => t.iter().filter(|s| s.is_dense()).count(),
            Table::Wide(t) => t.iter().filter(|s| s.is_dense()).count(),
        };
        (self.fast.k, dense)
    }
}

impl Counter<'_> {
    /// Slot of one value; NaN goes to `nan_slot` unless `nan` asks for the NaN slot.
    fn slot(&self, x: f64, nan: bool) -> usize {
        if nan && x.is_nan() {
            return 2 * self.index.m + 1;
        }
        match &self.lookup.table {
            Table::Narrow(t) => self.raw_slot::<u16, MAX_K, true>(t, x),
            Table::Wide(t) => self.raw_slot::<u32, MAX_K, true>(t, x),
        }
    }

    /// The kernel: exact for every non-NaN `x`; NaN goes to `nan_slot`.
    #[inline(always)]
    fn raw_slot<S: Start, const K: usize, const CHECK_DENSE: bool>(
        &self,
        table: &[S],
        x: f64,
    ) -> usize {
        self.slot_in_cell::<S, K, CHECK_DENSE>(table, x, self.lookup.grid.cell(x))
    }

    #[inline(always)]
    fn slot_in_cell<S: Start, const K: usize, const CHECK_DENSE: bool>(
        &self,
        table: &[S],
        x: f64,
        c: usize,
    ) -> usize {
        // SAFETY: c <= last < table.len() - 1
        let entry = unsafe { *table.get_unchecked(c) };
        if CHECK_DENSE && entry.is_dense() {
            return self.slot_dense(table, x, c);
        }
        let s = entry.below();
        let mut slot = 2 * s;
        let edges = &self.index.edges;
        for i in 0..K {
            // SAFETY: s <= m and edges has m + MAX_K >= s + K entries.
            let e = unsafe { *edges.get_unchecked(s + i) };
            slot += (x > e) as usize + (x >= e) as usize;
        }
        slot
    }

    #[cold]
    #[inline(never)]
    fn slot_dense<S: Start>(&self, table: &[S], x: f64, c: usize) -> usize {
        let (edges, m) = (&self.index.edges, self.index.m);
        if x.is_nan() {
            return 2 * m + 1;
        }
        let (s, end) = (table[c].below(), table[c + 1].below());
        let j = s + edges[s..end].partition_point(|e| *e < x);
        2 * j + (j < m && edges[j] == x) as usize
    }

    /// Adds the slot counts of `values` to `counts` (len `n_slots()`), except that NaN
    /// values are left in `nan_slot` until `move_nan` is called with their number.
    pub fn count_raw<C: Tally>(&self, values: &[f64], counts: &mut [C]) {
        assert_eq!(counts.len(), self.index.n_slots());
        match &self.lookup.table {
            Table::Narrow(t) => self.count_dispatch(t, values, counts),
            Table::Wide(t) => self.count_dispatch(t, values, counts),
        }
    }

    fn count_dispatch<S: Start, C: Tally>(&self, t: &[S], values: &[f64], counts: &mut [C]) {
        match (self.lookup.k, self.lookup.any_dense) {
            (0 | 1, false) => self.count_k::<S, C, 1, false>(t, values, counts),
            (0 | 1, true) => self.count_k::<S, C, 1, true>(t, values, counts),
            (2, false) => self.count_k::<S, C, 2, false>(t, values, counts),
            (2, true) => self.count_k::<S, C, 2, true>(t, values, counts),
            (3 | 4, false) => self.count_k::<S, C, 4, false>(t, values, counts),
            (3 | 4, true) => self.count_k::<S, C, 4, true>(t, values, counts),
            (_, false) => self.count_k::<S, C, MAX_K, false>(t, values, counts),
            (_, true) => self.count_k::<S, C, MAX_K, true>(t, values, counts),
        }
    }

    #[inline(always)]
    fn count_k<S: Start, C: Tally, const K: usize, const CHECK_DENSE: bool>(
        &self,
        table: &[S],
        values: &[f64],
        counts: &mut [C],
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F.
                return unsafe {
                    self.count_blocks_avx512::<S, C, K, CHECK_DENSE>(table, values, counts)
                };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2.
                return unsafe {
                    self.count_blocks_avx2::<S, C, K, CHECK_DENSE>(table, values, counts)
                };
            }
        }
        self.count_blocks::<S, C, K, CHECK_DENSE>(table, values, counts)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn count_blocks_avx512<S: Start, C: Tally, const K: usize, const CHECK_DENSE: bool>(
        &self,
        table: &[S],
        values: &[f64],
        counts: &mut [C],
    ) {
        self.count_blocks::<S, C, K, CHECK_DENSE>(table, values, counts)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn count_blocks_avx2<S: Start, C: Tally, const K: usize, const CHECK_DENSE: bool>(
        &self,
        table: &[S],
        values: &[f64],
        counts: &mut [C],
    ) {
        self.count_blocks::<S, C, K, CHECK_DENSE>(table, values, counts)
    }

    /// Cells of a block of values first (a loop the compiler vectorises), then the
    /// per-value table lookups, edge comparisons and increments.
    #[inline(always)]
    fn count_blocks<S: Start, C: Tally, const K: usize, const CHECK_DENSE: bool>(
        &self,
        table: &[S],
        values: &[f64],
        counts: &mut [C],
    ) {
        const B: usize = 16;
        let blocks = values.chunks_exact(B);
        let rest = blocks.remainder();
        let mut cells = [0usize; B];
        let grid = self.lookup.grid;
        for block in blocks {
            match grid {
                Grid::Linear { .. } => {
                    for (c, x) in cells.iter_mut().zip(block) {
                        *c = grid.cell(*x);
                    }
                }
                Grid::Key { .. } => {
                    for (c, x) in cells.iter_mut().zip(block) {
                        *c = grid.cell(*x);
                    }
                }
                Grid::Symlog { .. } => {
                    for (c, x) in cells.iter_mut().zip(block) {
                        *c = grid.cell(*x);
                    }
                }
            }
            for (&c, &x) in cells.iter().zip(block) {
                let s = self.slot_in_cell::<S, K, CHECK_DENSE>(table, x, c);
                // SAFETY: slots are at most 2m + 1 < counts.len().
                unsafe { counts.get_unchecked_mut(s).bump() };
            }
        }
        for &x in rest {
            let s = self.raw_slot::<S, K, CHECK_DENSE>(table, x);
            // SAFETY: as above.
            unsafe { counts.get_unchecked_mut(s).bump() };
        }
    }

    /// Moves `nan` counts from where the kernel put them to the NaN slot.
    pub fn move_nan<C: Tally>(&self, counts: &mut [C], nan: u64) {
        counts[self.lookup.nan_slot].sub(nan);
        counts[2 * self.index.m + 1].add(nan);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    fn reference_slot(edges: &[f64], x: f64) -> usize {
        if x.is_nan() {
            return 2 * edges.len() + 1;
        }
        let below = edges.iter().filter(|e| **e < x).count();
        2 * below + edges.contains(&x) as usize
    }

    fn check(edges: &[f64], probes: &[f64]) -> (usize, usize) {
        let idx = BinIndex::new(edges);
        let mut expected = vec![0u32; idx.n_slots()];
        for &x in probes {
            assert_eq!(idx.slot(x), reference_slot(edges, x), "x={x}");
            expected[reference_slot(edges, x)] += 1;
        }
        let nan = probes.iter().filter(|x| x.is_nan()).count() as u64;
        for lookup in [&idx.fast, &idx.small] {
            let counter = idx.counter_with(lookup);
            let mut counts = vec![0u32; idx.n_slots()];
            counter.count_raw(probes, &mut counts);
            counter.move_nan(&mut counts, nan);
            assert_eq!(counts, expected);
        }
        let mut counts = vec![0u32; idx.n_slots()];
        idx.count_into(probes, &mut counts);
        assert_eq!(counts, expected);
        let mut small = vec![0u16; idx.n_slots()];
        idx.count_into(probes, &mut small);
        assert!(small.iter().zip(&expected).all(|(a, b)| *a as u32 == *b));
        idx.kernel()
    }

    #[test]
    fn matches_linear_count_on_many_shapes() {
        let mut rng = Rng::new(7);
        let specials = [
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NAN,
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
            // a tight cluster beside huge outliers: the bisection fallback
            (0..1000)
                .map(|i| {
                    if i % 100 == 0 {
                        1e12 * i as f64
                    } else {
                        rng.normal() * 1e-9
                    }
                })
                .collect(),
            vec![1.0],
            vec![f64::NEG_INFINITY, 0.0, f64::INFINITY],
            (0..50).map(|i| i as f64).collect(),
            // heavy tails on both sides of a centre far from 0
            (0..1000).map(|_| 1e6 + rng.cauchy() * 1e-3).collect(),
        ];
        let mut widths = vec![];
        for mut edges in shapes {
            edges.sort_by(f64::total_cmp);
            edges.dedup();
            let mut probes: Vec<f64> = edges.clone();
            probes.extend(edges.iter().map(|e| e * (1.0 + 1e-12)));
            probes.extend((0..3000).map(|_| rng.cauchy() * 10.0));
            probes.extend((0..3000).map(|_| rng.normal()));
            probes.extend(specials);
            widths.push(check(&edges, &probes));
        }
        // normal data: a narrow kernel
        assert!(widths[0].0 <= 2, "{widths:?}");
        // Cauchy data: as narrow, on a symlog grid
        assert!(widths[1].0 <= 2, "{widths:?}");
        // cluster beside outliers: some cells need the bisection
        assert!(widths[3].1 > 0, "{widths:?}");
    }

    #[test]
    fn wide_table_for_many_edges() {
        let mut rng = Rng::new(9);
        let mut edges: Vec<f64> = (0..40_000).map(|_| rng.normal()).collect();
        edges.sort_by(f64::total_cmp);
        edges.dedup();
        let idx = BinIndex::new(&edges);
        assert!(matches!(idx.fast.table, Table::Wide(_)));
        let probes: Vec<f64> = (0..2000).map(|_| rng.normal()).collect();
        check(&edges, &probes);
    }

    #[test]
    fn empty_edges_put_everything_in_one_slot() {
        check(&[], &[f64::NEG_INFINITY, 0.0, 1.0, f64::INFINITY, f64::NAN]);
    }
}
