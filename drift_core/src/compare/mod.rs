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
use crate::sketch::numeric::{NumericReference, NumericSketch};

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

/// Figures that need a walk over the bins, computed in one pass.
struct BinWalk {
    ks: f64,
    ks_bound: f64,
    wasserstein: f64,
    psi: f64,
}

/// One pass over the bins of a reference and a window sketch:
/// - KS from the exact CDFs of both sides at and just below every edge, with the bound on
///   how far it can fall short of the exact statistic: the largest, over bins, of
///   min(reference share, window share) strictly inside the bin;
/// - Wasserstein-1 from the CDFs at the edges, trapezoidal within bins, the outer bins
///   running to the smaller minimum and the larger maximum of the two sides (NaN when
///   either side holds ±inf);
/// - PSI on the reference's PSI bins, which are unions of bins.
fn walk_bins(r: &NumericReference, s: &NumericSketch, n: u64) -> BinWalk {
    let (cdf, ws, edges, psi_of_bin) = (r.cdf(), s.slots(), r.edges(), r.psi_of_bin());
    let m = edges.len();
    assert!(cdf.len() == 2 * m + 1 && ws.len() == 2 * m + 1 && psi_of_bin.len() == m + 1);
    let iw = 1.0 / n as f64;
    // Two light loops rather than one heavy one: each keeps its accumulators in
    // registers. Counts fit i64, whose conversion to f64 is one instruction (u64's is
    // not); maxima are plain compares, which lower to maxsd.
    let (mut cw, mut d, mut bound) = (0i64, 0.0f64, 0.0f64);
    let mut prev_r = 0.0f64;
    let mut inside = |fr: f64, w: u64, cw: &mut i64, prev_r: f64| -> f64 {
        let ref_inside = fr - prev_r;
        let win_inside = w as i64 as f64 * iw;
        let both = if ref_inside < win_inside {
            ref_inside
        } else {
            win_inside
        };
        bound = if both > bound { both } else { bound };
        *cw += w as i64;
        (fr - *cw as f64 * iw).abs()
    };
    for (pr, pw) in cdf[..2 * m]
        .chunks_exact(2)
        .zip(ws[..2 * m].chunks_exact(2))
    {
        let below = inside(pr[0], pw[0], &mut cw, prev_r);
        cw += pw[1] as i64;
        let at = (pr[1] - cw as f64 * iw).abs();
        let most = if below > at { below } else { at };
        d = if most > d { most } else { d };
        prev_r = pr[1];
    }
    let last = inside(cdf[2 * m], ws[2 * m], &mut cw, prev_r);
    d = if last > d { last } else { d };
    // Wasserstein-1 and PSI from the CDFs at the edges
    let lo = r.moments().min.min(s.moments().min);
    let hi = r.moments().max.max(s.moments().max);
    let mut window_psi = vec![0u64; r.psi_counts().len()];
    let (mut psi_bin, mut psi_acc) = (0usize, 0u64);
    let (mut cw, mut w1, mut prev_x, mut prev_d) = (0i64, 0.0f64, lo, 0.0f64);
    for (j, (&e, pair_w)) in edges.iter().zip(ws.chunks_exact(2)).enumerate() {
        let in_bin = pair_w[0] + pair_w[1];
        cw += in_bin as i64;
        let here = (cdf[2 * j + 1] - cw as f64 * iw).abs();
        let width = e - prev_x;
        w1 += if width > 0.0 { width } else { 0.0 } * (prev_d + here);
        (prev_x, prev_d) = (e, here);
        let p = psi_of_bin[j] as usize;
        if p != psi_bin {
            window_psi[psi_bin] += psi_acc;
            (psi_bin, psi_acc) = (p, 0);
        }
        psi_acc += in_bin;
    }
    let tail = hi - prev_x;
    w1 = 0.5 * (w1 + if tail > 0.0 { tail } else { 0.0 } * prev_d);
    if psi_of_bin[m] as usize != psi_bin {
        window_psi[psi_bin] += psi_acc;
        (psi_bin, psi_acc) = (psi_of_bin[m] as usize, 0);
    }
    window_psi[psi_bin] += psi_acc + ws[2 * m];
    if r.moments().infinite > 0 || s.moments().infinite > 0 {
        w1 = f64::NAN;
    }
    BinWalk {
        ks: d,
        ks_bound: bound,
        wasserstein: w1,
        psi: psi(r.psi_counts(), &window_psi),
    }
}

pub fn compare_numeric(r: &NumericReference, s: &NumericSketch) -> Result<NumericComparison> {
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
    let walk = walk_bins(r, s, n);
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

    #[test]
    fn chi2_degenerate() {
        assert_eq!(chi2_homogeneity(&[5, 0], &[7, 0]), (0.0, 0, 1.0));
    }
}
