//! Reference-versus-window comparisons.
//!
//! Every figure is computed from the reference profile and one window sketch; none needs
//! the raw data. Conventions (documented in `drift_core/_drift_core.pyi`):
//! - PSI: `sum((a - e) ln(a / e))` over bins, shares floored at `PSI_EPSILON`.
//! - Jensen–Shannon distance: base 2, so in [0, 1].
//! - A window without non-missing values gives NaN for every distribution figure.

pub mod ks;
pub mod special;

use crate::error::Result;
use crate::sketch::categorical::{CategoricalReference, CategoricalSketch};
use crate::sketch::numeric::{Cumulative, NumericReference, NumericSketch, SlotCounts};
use crate::sketch::Prefetch;

/// Floor applied to bin shares in PSI so that empty bins give a finite figure.
pub const PSI_EPSILON: f64 = 1e-4;

/// Figures of one numeric feature for one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumericComparison {
    pub n: u64,
    pub missing: u64,
    pub missing_share: f64,
    pub reference_missing_share: f64,
    pub missing_pvalue: f64,
    pub ks: f64,
    pub ks_pvalue: f64,
    /// How far `ks` can fall short of the exact two-sample statistic (see `sketch::numeric`).
    pub ks_bound: f64,
    pub psi: f64,
    pub wasserstein: f64,
    pub wasserstein_norm: f64,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub reference_mean: f64,
    pub reference_std: f64,
}

/// Figures of one categorical feature for one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CategoricalComparison {
    pub n: u64,
    pub missing: u64,
    pub missing_share: f64,
    pub reference_missing_share: f64,
    pub missing_pvalue: f64,
    pub chi2: f64,
    pub chi2_dof: u64,
    pub chi2_pvalue: f64,
    pub js: f64,
    pub psi: f64,
    pub unseen_share: f64,
}

/// PSI between expected (reference) and actual (window) counts over the same bins.
pub fn psi(expected: &[u64], actual: &[u64]) -> f64 {
    let (te, ta) = (sum(expected), sum(actual));
    if te == 0.0 || ta == 0.0 {
        return f64::NAN;
    }
    expected
        .iter()
        .zip(actual)
        .map(|(e, a)| {
            let e = (*e as f64 / te).max(PSI_EPSILON);
            let a = (*a as f64 / ta).max(PSI_EPSILON);
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// Jensen–Shannon distance (base 2) between the distributions of two count vectors.
pub fn js_distance(p: &[u64], q: &[u64]) -> f64 {
    let (tp, tq) = (sum(p), sum(q));
    if tp == 0.0 || tq == 0.0 {
        return f64::NAN;
    }
    let mut div = 0.0;
    for (a, b) in p.iter().zip(q) {
        let (a, b) = (*a as f64 / tp, *b as f64 / tq);
        let m = 0.5 * (a + b);
        if a > 0.0 {
            div += 0.5 * a * (a / m).log2();
        }
        if b > 0.0 {
            div += 0.5 * b * (b / m).log2();
        }
    }
    div.max(0.0).sqrt()
}

/// Chi-square test of homogeneity on the 2 x k table of two count vectors (columns that
/// are empty in both are dropped). Returns (statistic, degrees of freedom, p-value).
pub fn chi2_homogeneity(a: &[u64], b: &[u64]) -> (f64, u64, f64) {
    let (ta, tb) = (sum(a), sum(b));
    if ta == 0.0 || tb == 0.0 {
        return (f64::NAN, 0, f64::NAN);
    }
    let total = ta + tb;
    let mut stat = 0.0;
    let mut cols = 0u64;
    for (x, y) in a.iter().zip(b) {
        let col = (*x + *y) as f64;
        if col == 0.0 {
            continue;
        }
        cols += 1;
        let (ex, ey) = (ta * col / total, tb * col / total);
        stat += (*x as f64 - ex).powi(2) / ex + (*y as f64 - ey).powi(2) / ey;
    }
    let dof = cols.saturating_sub(1);
    if dof == 0 {
        return (0.0, 0, 1.0);
    }
    (stat, dof, special::chi2_sf(stat, dof as f64))
}

/// Two-sided two-proportion z-test (pooled): are `k1/n1` and `k2/n2` different?
pub fn two_proportion_pvalue(k1: u64, n1: u64, k2: u64, n2: u64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return f64::NAN;
    }
    let (p1, p2) = (k1 as f64 / n1 as f64, k2 as f64 / n2 as f64);
    let p = (k1 + k2) as f64 / (n1 + n2) as f64;
    let var = p * (1.0 - p) * (1.0 / n1 as f64 + 1.0 / n2 as f64);
    if var <= 0.0 {
        return 1.0;
    }
    special::normal_two_sided((p1 - p2) / var.sqrt())
}

fn sum(v: &[u64]) -> f64 {
    v.iter().sum::<u64>() as f64
}

fn share(k: u64, n: u64) -> f64 {
    if n == 0 {
        f64::NAN
    } else {
        k as f64 / n as f64
    }
}

/// Figures that need a walk over the bins.
struct BinWalk {
    ks: f64,
    ks_bound: f64,
    wasserstein: f64,
    psi: f64,
}

/// A count as a float (exact below 2^53).
trait Count: Copy + Default + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> {
    fn f(self) -> f64;
    fn u64(self) -> u64;
}

impl Count for u16 {
    #[inline(always)]
    fn f(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn u64(self) -> u64 {
        self as u64
    }
}

impl Count for u32 {
    #[inline(always)]
    fn f(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn u64(self) -> u64 {
        self as u64
    }
}

impl Count for u64 {
    #[inline(always)]
    fn f(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn u64(self) -> u64 {
        self
    }
}

/// The walk over the bins of a reference and a window sketch, for reference size `nr` and
/// window size `nw` (non-missing values):
/// - KS from the exact CDFs of both sides at and just below every edge, with the bound on
///   how far it can fall short of the exact statistic: the largest, over bins, of
///   min(reference share, window share) strictly inside the bin;
/// - Wasserstein-1 from the CDFs at the edges, trapezoidal within bins, the outer bins
///   running to the smaller minimum and the larger maximum of the two sides (NaN when
///   either side holds ±inf);
/// - PSI on the reference's PSI bins, which are unions of bins.
///
/// CDF differences are taken on counts, `|C_ref nw - C_win nr|` (exact integers in
/// floating point up to 2^53), and divided by `nr nw` once at the end. A first pass sums
/// the window's counts up; the second has no dependency from one edge to the next and
/// runs in vector lanes. `pf` holds the next pair's data, issued during the first pass.
fn walk_bins(r: &NumericReference, s: &NumericSketch, nw: u64, pf: &mut Prefetch) -> BinWalk {
    fn with_window<R: Count>(
        r: &NumericReference,
        s: &NumericSketch,
        below: &[R],
        upto: &[R],
        nw: u64,
        pf: &mut Prefetch,
    ) -> BinWalk {
        match s.slot_counts() {
            SlotCounts::Small(ws) => walk(r, s, below, upto, ws, nw, pf),
            SlotCounts::Narrow(ws) => walk(r, s, below, upto, ws, nw, pf),
            SlotCounts::Wide(ws) => walk(r, s, below, upto, ws, nw, pf),
        }
    }
    match r.cumulative() {
        Cumulative::Small { below, upto } => with_window(r, s, below, upto, nw, pf),
        Cumulative::Narrow { below, upto } => with_window(r, s, below, upto, nw, pf),
        Cumulative::Wide { below, upto } => with_window(r, s, below, upto, nw, pf),
    }
}

/// One walk's inputs: cumulative reference counts below and up to each edge, the
/// window's counts per slot and its size.
struct Walk<'a, R, W> {
    r: &'a NumericReference,
    s: &'a NumericSketch,
    rb: &'a [R],
    ru: &'a [R],
    ws: &'a [W],
    nw: u64,
}

fn walk<R: Count, W: Count>(
    r: &NumericReference,
    s: &NumericSketch,
    rb: &[R],
    ru: &[R],
    ws: &[W],
    nw: u64,
    pf: &mut Prefetch,
) -> BinWalk {
    let w = Walk {
        r,
        s,
        rb,
        ru,
        ws,
        nw,
    };
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F.
            return unsafe { w.run_avx512(pf) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2.
            return unsafe { w.run_avx2(pf) };
        }
    }
    w.run::<4>(pf)
}

impl<R: Count, W: Count> Walk<'_, R, W> {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(&self, pf: &mut Prefetch) -> BinWalk {
        self.run::<8>(pf)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, pf: &mut Prefetch) -> BinWalk {
        self.run::<4>(pf)
    }

    /// The walk, with `L` lanes for the per-edge part.
    #[inline(always)]
    fn run<const L: usize>(&self, pf: &mut Prefetch) -> BinWalk {
        let Walk {
            r,
            s,
            rb,
            ru,
            ws,
            nw,
        } = *self;
        let (e, m) = (r.edges(), r.edges().len());
        assert!(rb.len() == m && ru.len() == m + 1 && ws.len() == 2 * m + 1);
        // window counts up to each edge (after a leading 0): the running sum of each bin's
        // count; then below each edge: up to the previous edge plus inside the bin
        const PART: usize = 128;
        let per_part = pf.lines().div_ceil(m.div_ceil(PART).max(1)) + 1;
        let mut wu = Vec::with_capacity(m + 1);
        wu.push(W::default());
        for part in ws[..2 * m].chunks(2 * PART) {
            pf.issue(per_part);
            wu.extend(part.chunks_exact(2).map(|p| p[0] + p[1]));
        }
        running_sums(&mut wu[1..]);
        let wb: Vec<W> = wu[..m]
            .iter()
            .zip(ws.chunks_exact(2))
            .map(|(u, p)| *u + p[0])
            .collect();
        let (nr, nwf) = (r.n() as f64, nw as f64);
        let one = Terms { nr, nw: nwf };
        // edges 1 ..= m - 2 weigh e[j+1] - e[j-1] in the trapezoid sum; the outer ones run
        // to the smaller minimum and the larger maximum of the two sides
        let inner = m.saturating_sub(2);
        let (mut d, mut bound, mut w1) = if inner > 0 {
            Lanes {
                rb: &rb[1..m - 1],
                rp: &ru[1..m - 1],
                ru: &ru[2..m],
                wb: &wb[1..m - 1],
                wp: &wu[1..m - 1],
                wu: &wu[2..m],
                left: &e[..m - 2],
                right: &e[2..],
                t: one,
            }
            .lanes::<L>()
        } else {
            (0.0, 0.0, 0.0)
        };
        if m > 0 {
            let lo = r.moments().min.min(s.moments().min);
            let hi = r.moments().max.max(s.moments().max);
            let mut outer = |j: usize, width: f64| {
                let (dj, bj, wj) =
                    one.edge(rb[j], ru[j], ru[j + 1], wb[j], wu[j], wu[j + 1], width);
                d = d.max(dj);
                bound = bound.max(bj);
                w1 += wj;
            };
            let (left_tail, right_tail) = ((e[0] - lo).max(0.0), (hi - e[m - 1]).max(0.0));
            if m == 1 {
                outer(0, left_tail + right_tail);
            } else {
                outer(0, left_tail + (e[1] - e[0]));
                outer(m - 1, (e[m - 1] - e[m - 2]) + right_tail);
            }
        }
        // the slot above every edge: both CDFs reach 1 there
        let last = ((r.n() - ru[m].u64()) as f64 * nwf).min((nw - wu[m].u64()) as f64 * nr);
        bound = bound.max(last);
        let scale = nr * nwf;
        d /= scale;
        bound /= scale;
        w1 = 0.5 * w1 / scale;
        if r.moments().infinite > 0 || s.moments().infinite > 0 {
            w1 = f64::NAN;
        }
        // PSI bin p ends at PSI edge p, so its window count is a difference of `wu`; the
        // last one holds what lies above the last PSI edge
        let mut window_psi = Vec::with_capacity(r.psi_counts().len());
        let mut done = 0u64;
        for &k in r.psi_index() {
            let upto = wu[k as usize + 1].u64();
            window_psi.push(upto - done);
            done = upto;
        }
        window_psi.push(nw - done);
        BinWalk {
            ks: d,
            ks_bound: bound,
            wasserstein: w1,
            psi: psi(r.psi_counts(), &window_psi),
        }
    }
}

/// Replaces each element by the sum of it and those before it: four running sums over
/// the quarters side by side (one chain of additions would take a cycle per element),
/// then each quarter offset by the totals before it.
#[inline(always)]
fn running_sums<W: Count>(v: &mut [W]) {
    let q = v.len() / 4;
    let (a, rest) = v.split_at_mut(q);
    let (b, rest) = rest.split_at_mut(q);
    let (c, d) = rest.split_at_mut(q);
    let (mut sa, mut sb, mut sc, mut sd) = (W::default(), W::default(), W::default(), W::default());
    for (((a, b), c), d) in a
        .iter_mut()
        .zip(b.iter_mut())
        .zip(c.iter_mut())
        .zip(d.iter_mut())
    {
        sa = sa + *a;
        *a = sa;
        sb = sb + *b;
        *b = sb;
        sc = sc + *c;
        *c = sc;
        sd = sd + *d;
        *d = sd;
    }
    for x in &mut d[q..] {
        sd = sd + *x;
        *x = sd;
    }
    let ob = sa;
    b.iter_mut().for_each(|x| *x = *x + ob);
    let oc = ob + sb;
    c.iter_mut().for_each(|x| *x = *x + oc);
    let od = oc + sc;
    d.iter_mut().for_each(|x| *x = *x + od);
}

/// The terms of one edge, scaled by nr nw.
#[derive(Clone, Copy)]
struct Terms {
    nr: f64,
    nw: f64,
}

impl Terms {
    /// From the cumulative counts below the edge, up to the previous edge and up to this
    /// edge (reference, then window) and the edge's trapezoid width: (CDF distance,
    /// min of the shares inside the bin, Wasserstein term).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn edge<R: Count, W: Count>(
        self,
        rb: R,
        rp: R,
        ru: R,
        wb: W,
        wp: W,
        wu: W,
        width: f64,
    ) -> (f64, f64, f64) {
        let (nr, nw) = (self.nr, self.nw);
        let below = (rb.f() * nw - wb.f() * nr).abs();
        let upto = (ru.f() * nw - wu.f() * nr).abs();
        // maxima and minima as compares, so that they lower to vector instructions
        let most = if below > upto { below } else { upto };
        let (ri, wi) = ((rb - rp).f() * nw, (wb - wp).f() * nr);
        let inside = if ri < wi { ri } else { wi };
        (most, inside, upto * width)
    }
}

/// The inner edges of the walk, which depend on nothing but their own inputs and so run
/// in vector lanes. All slices have the same length.
struct Lanes<'a, R, W> {
    rb: &'a [R],
    rp: &'a [R],
    ru: &'a [R],
    wb: &'a [W],
    wp: &'a [W],
    wu: &'a [W],
    left: &'a [f64],
    right: &'a [f64],
    t: Terms,
}

impl<R: Count, W: Count> Lanes<'_, R, W> {
    /// (max CDF distance, max of min(inside shares), sum of trapezoid terms), all scaled
    /// by nr nw.
    #[inline(always)]
    fn lanes<const L: usize>(&self) -> (f64, f64, f64) {
        let n = self.rb.len();
        let (mut dm, mut bd, mut w1) = ([0.0f64; L], [0.0f64; L], [0.0f64; L]);
        let mut step = |l: usize, j: usize| {
            // SAFETY: j < n, the length of every slice.
            let (most, inside, w) = unsafe {
                self.t.edge(
                    *self.rb.get_unchecked(j),
                    *self.rp.get_unchecked(j),
                    *self.ru.get_unchecked(j),
                    *self.wb.get_unchecked(j),
                    *self.wp.get_unchecked(j),
                    *self.wu.get_unchecked(j),
                    self.right.get_unchecked(j) - self.left.get_unchecked(j),
                )
            };
            dm[l] = if most > dm[l] { most } else { dm[l] };
            bd[l] = if inside > bd[l] { inside } else { bd[l] };
            w1[l] += w;
        };
        assert!([self.rp.len(), self.ru.len(), self.wb.len(), self.wp.len()]
            .iter()
            .chain(&[self.wu.len(), self.left.len(), self.right.len()])
            .all(|&len| len == n));
        let full = n - n % L;
        for base in (0..full).step_by(L) {
            for l in 0..L {
                step(l, base + l);
            }
        }
        for j in full..n {
            step(0, j);
        }
        let max = |v: [f64; L]| v.iter().fold(0.0f64, |a, b| a.max(*b));
        (max(dm), max(bd), w1.iter().sum())
    }
}

pub fn compare_numeric(r: &NumericReference, s: &NumericSketch) -> Result<NumericComparison> {
    compare_numeric_with(r, s, &mut Prefetch::default())
}

fn compare_numeric_with(
    r: &NumericReference,
    s: &NumericSketch,
    pf: &mut Prefetch,
) -> Result<NumericComparison> {
    if s.fingerprint() != r.fingerprint() {
        return Err(crate::error::DriftError::Mismatch(format!(
            "this sketch was made for reference {:016x}, not for reference {:016x}",
            s.fingerprint(),
            r.fingerprint()
        )));
    }
    let n = s.n();
    let missing = s.missing();
    let (mean, std) = s.moments().mean_std(n);
    let (reference_mean, reference_std) = r.moments().mean_std(r.n());
    let base = NumericComparison {
        n,
        missing,
        missing_share: share(missing, n + missing),
        reference_missing_share: share(r.missing(), r.n() + r.missing()),
        missing_pvalue: two_proportion_pvalue(
            missing,
            n + missing,
            r.missing(),
            r.n() + r.missing(),
        ),
        ks: f64::NAN,
        ks_pvalue: f64::NAN,
        ks_bound: r.ks_bound(),
        psi: f64::NAN,
        wasserstein: f64::NAN,
        wasserstein_norm: f64::NAN,
        mean,
        std,
        min: f64::NAN,
        max: f64::NAN,
        reference_mean,
        reference_std,
    };
    if n == 0 {
        return Ok(base);
    }
    let walk = walk_bins(r, s, n, pf);
    Ok(NumericComparison {
        ks: walk.ks,
        ks_bound: walk.ks_bound,
        ks_pvalue: ks::ks_2samp_pvalue(walk.ks, r.n(), n),
        psi: walk.psi,
        wasserstein: walk.wasserstein,
        wasserstein_norm: if reference_std > 0.0 {
            walk.wasserstein / reference_std
        } else {
            f64::NAN
        },
        min: s.moments().min,
        max: s.moments().max,
        ..base
    })
}

/// One (reference, window sketch) pair of a window report.
#[derive(Debug, Clone, Copy)]
pub enum Pair<'a> {
    Numeric(&'a NumericReference, &'a NumericSketch),
    Categorical(&'a CategoricalReference, &'a CategoricalSketch),
}

/// The figures of one pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Comparison {
    Numeric(NumericComparison),
    Categorical(CategoricalComparison),
}

impl Pair<'_> {
    pub fn compare(&self) -> Result<Comparison> {
        self.compare_with(&mut Prefetch::default())
    }

    fn compare_with(&self, pf: &mut Prefetch) -> Result<Comparison> {
        Ok(match *self {
            Pair::Numeric(r, s) => Comparison::Numeric(compare_numeric_with(r, s, pf)?),
            Pair::Categorical(r, s) => Comparison::Categorical(compare_categorical(r, s)?),
        })
    }
}

/// Compares every pair, loading the next pair's data while it works on the current one:
/// in a window report every reference and sketch is cold by the time it is compared.
pub fn compare_many(pairs: &[Pair<'_>]) -> Vec<Result<Comparison>> {
    let mut out = Vec::with_capacity(pairs.len());
    let mut pf = Prefetch::default();
    for (i, pair) in pairs.iter().enumerate() {
        if let Some(Pair::Numeric(r, s)) = pairs.get(i + 1) {
            if r.fingerprint() == s.fingerprint() {
                r.prefetch_compare(&mut pf);
                s.prefetch(&mut pf);
            }
        }
        out.push(pair.compare_with(&mut pf));
        pf.issue(usize::MAX);
    }
    out
}

pub fn compare_categorical(
    r: &CategoricalReference,
    s: &CategoricalSketch,
) -> Result<CategoricalComparison> {
    if s.fingerprint() != r.fingerprint() {
        return Err(crate::error::DriftError::Mismatch(format!(
            "this sketch was made for reference {:016x}, not for reference {:016x}",
            s.fingerprint(),
            r.fingerprint()
        )));
    }
    let n = s.n();
    let missing = s.missing();
    // window buckets folded onto the reference's: tracked..., other (known or unseen)
    let k = r.categories().len();
    let mut window = s.counts()[..=k].to_vec();
    window[k] += s.unseen();
    let (chi2, chi2_dof, chi2_pvalue) = chi2_homogeneity(r.counts(), &window);
    Ok(CategoricalComparison {
        n,
        missing,
        missing_share: share(missing, n + missing),
        reference_missing_share: share(r.missing(), r.n() + r.missing()),
        missing_pvalue: two_proportion_pvalue(
            missing,
            n + missing,
            r.missing(),
            r.n() + r.missing(),
        ),
        chi2,
        chi2_dof,
        chi2_pvalue,
        js: js_distance(r.counts(), &window),
        psi: psi(r.counts(), &window),
        unseen_share: share(s.unseen(), n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    #[test]
    fn psi_is_zero_on_equal_shares() {
        assert_eq!(psi(&[10, 20, 30], &[1, 2, 3]), 0.0);
        assert!(psi(&[10, 0], &[0, 10]) > 5.0);
    }

    #[test]
    fn js_bounds() {
        assert_eq!(js_distance(&[1, 1], &[2, 2]), 0.0);
        assert!((js_distance(&[1, 0], &[0, 1]) - 1.0).abs() < 1e-12);
    }

    /// The figures of the walk straight from their definitions: CDFs as shares after
    /// every slot, the trapezoid edge by edge, PSI counts bin by bin.
    fn by_definition(r: &NumericReference, s: &NumericSketch) -> (f64, f64, f64, f64) {
        let (rs, ws, e) = (r.slots(), s.slots(), r.edges());
        let (nr, nw, m) = (r.n() as f64, s.n() as f64, e.len());
        let (mut cr, mut cw, mut ks, mut bound) = (0u64, 0u64, 0.0f64, 0.0f64);
        for i in 0..=2 * m {
            if i % 2 == 0 {
                bound = bound.max((rs[i] as f64 / nr).min(ws[i] as f64 / nw));
            }
            cr += rs[i];
            cw += ws[i];
            ks = ks.max((cr as f64 / nr - cw as f64 / nw).abs());
        }
        let lo = r.moments().min.min(s.moments().min);
        let hi = r.moments().max.max(s.moments().max);
        let (mut cr, mut cw, mut w1, mut prev_x, mut prev_d) = (0u64, 0u64, 0.0, lo, 0.0);
        for j in 0..m {
            cr += rs[2 * j] + rs[2 * j + 1];
            cw += ws[2 * j] + ws[2 * j + 1];
            let here = (cr as f64 / nr - cw as f64 / nw).abs();
            w1 += (e[j] - prev_x).max(0.0) * (prev_d + here);
            (prev_x, prev_d) = (e[j], here);
        }
        w1 = 0.5 * (w1 + (hi - prev_x).max(0.0) * prev_d);
        if r.moments().infinite > 0 || s.moments().infinite > 0 {
            w1 = f64::NAN;
        }
        let pe = r.psi_edges();
        let (mut reference_psi, mut window_psi) =
            (vec![0u64; pe.len() + 1], vec![0u64; pe.len() + 1]);
        for j in 0..=m {
            // bin j = (e[j-1], e[j]] lies in PSI bin "number of PSI edges <= e[j-1]"
            let p = if j == 0 {
                0
            } else {
                pe.iter().filter(|p| **p <= e[j - 1]).count()
            };
            let at = |c: &[u64]| if j < m { c[2 * j + 1] } else { 0 };
            reference_psi[p] += rs[2 * j] + at(rs);
            window_psi[p] += ws[2 * j] + at(&ws);
        }
        assert_eq!(r.psi_counts(), reference_psi);
        (ks, bound, w1, psi(r.psi_counts(), &window_psi))
    }

    #[test]
    fn walk_matches_the_definitions() {
        let mut rng = Rng::new(11);
        let normal = |rng: &mut Rng, n: usize, shift: f64| -> Vec<f64> {
            (0..n).map(|_| rng.normal() + shift).collect()
        };
        let mut cases: Vec<(Vec<f64>, Vec<f64>, usize)> = vec![
            (
                normal(&mut rng, 5000, 0.0),
                normal(&mut rng, 700, 0.3),
                1024,
            ),
            (
                normal(&mut rng, 70_000, 0.0),
                normal(&mut rng, 80_000, 0.1),
                1024,
            ),
            (normal(&mut rng, 3000, 0.0), normal(&mut rng, 50, 2.0), 16),
            // discrete: every distinct value an edge
            (
                (0..4000).map(|i| (i % 9) as f64).collect(),
                (0..900).map(|i| (i % 11) as f64 - 1.0).collect(),
                1024,
            ),
            // one edge, two edges, three edges
            (vec![2.0; 100], vec![1.0, 2.0, 2.0, 3.0], 1024),
            (vec![1.0, 2.0, 2.0], vec![0.0, 1.5, 2.0, 9.0], 1024),
            (vec![1.0, 2.0, 3.0], vec![2.5, 2.0, -4.0], 1024),
            // heavy tails and infinities
            (
                (0..20_000).map(|_| rng.cauchy()).collect(),
                (0..3000).map(|_| rng.cauchy() * 2.0).collect(),
                1024,
            ),
            (
                normal(&mut rng, 2000, 0.0),
                vec![f64::INFINITY, 0.5, f64::NEG_INFINITY, f64::NAN],
                64,
            ),
        ];
        // windows of every width between 2^16 and 2^32 values
        cases.push((
            normal(&mut rng, 2000, 0.0),
            normal(&mut rng, 66_000, 0.05),
            64,
        ));
        for (k, (reference, window, bins)) in cases.iter().enumerate() {
            let r = NumericReference::build(reference, *bins, 10).unwrap();
            let mut s = NumericSketch::new(&r);
            s.update(&r, window).unwrap();
            let got = compare_numeric(&r, &s).unwrap();
            let (ks, bound, w1, psi) = by_definition(&r, &s);
            assert!((got.ks - ks).abs() <= 1e-14, "case {k}: {} vs {ks}", got.ks);
            assert!((got.ks_bound - bound).abs() <= 1e-14, "case {k}");
            assert!(
                (got.wasserstein - w1).abs() <= 1e-12 * w1.abs()
                    || (got.wasserstein.is_nan() && w1.is_nan()),
                "case {k}: {} vs {w1}",
                got.wasserstein
            );
            assert_eq!(got.psi, psi, "case {k}");
            assert_eq!(got.ks_pvalue, ks::ks_2samp_pvalue(got.ks, r.n(), s.n()));
        }
    }

    #[test]
    fn chi2_degenerate() {
        assert_eq!(chi2_homogeneity(&[5, 0], &[7, 0]), (0.0, 0, 1.0));
    }
}
