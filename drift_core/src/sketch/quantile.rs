//! A reference-free quantile sketch (DDSketch, Masson et al., VLDB 2019).
//!
//! Values are counted in logarithmic buckets `(gamma^(k-1), gamma^k]` with
//! `gamma = (1 + alpha) / (1 - alpha)`; each bucket answers with `2 gamma^k / (gamma + 1)`,
//! which is within relative error `alpha` of every value in it. So `quantile(q)` is within
//! `alpha * |x|` of `x`, the exact value at rank `floor(q * (n - 1))` (NumPy's
//! `method="lower"`), as long as no bucket was collapsed: with `max_bins` buckets per sign
//! and the default alpha = 0.01 that takes a dynamic range above 10^17. Merging is exact.

use crate::codec::{Kind, Reader, Writer};
use crate::error::{invalid, DriftError, Result};

pub const DEFAULT_ALPHA: f64 = 0.01;
pub const DEFAULT_MAX_BINS: u32 = 2048;
/// Magnitudes below this are counted in the zero bucket.
const MIN_INDEXABLE: f64 = 1e-300;

#[derive(Debug, Clone, PartialEq, Default)]
struct Store {
    offset: i32,
    counts: Vec<u64>,
}

impl Store {
    #[inline]
    fn add(&mut self, key: i32, n: u64, max_bins: usize) {
        if self.counts.is_empty() {
            self.offset = key;
            self.counts.push(0);
        } else if key < self.offset {
            let grow = (self.offset - key) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = key;
        } else if key >= self.offset + self.counts.len() as i32 {
            self.counts.resize((key - self.offset) as usize + 1, 0);
        }
        self.counts[(key - self.offset) as usize] += n;
        if self.counts.len() > max_bins {
            self.collapse(max_bins);
        }
    }

    /// Folds the lowest keys into one so that at most `max_bins` remain.
    fn collapse(&mut self, max_bins: usize) {
        let extra = self.counts.len() - max_bins;
        let folded: u64 = self.counts[..=extra].iter().sum();
        self.counts.drain(..extra);
        self.counts[0] = folded;
        self.offset += extra as i32;
    }

    fn merge(&mut self, o: &Store, max_bins: usize) {
        for (i, c) in o.counts.iter().enumerate() {
            if *c > 0 {
                self.add(o.offset + i as i32, *c, max_bins);
            }
        }
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuantileSketch {
    alpha: f64,
    max_bins: u32,
    ln_gamma: f64,
    pos: Store,
    neg: Store,
    zero: u64,
    count: u64,
    missing: u64,
    infinite: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl QuantileSketch {
    pub fn new(alpha: f64, max_bins: u32) -> Result<Self> {
        if !(1e-6..=0.5).contains(&alpha) {
            return invalid(format!(
                "relative_accuracy must be between 1e-6 and 0.5, got {alpha}"
            ));
        }
        if max_bins == 0 {
            return invalid("max_bins must be at least 1");
        }
        Ok(QuantileSketch {
            alpha,
            max_bins,
            ln_gamma: ((1.0 + alpha) / (1.0 - alpha)).ln(),
            pos: Store::default(),
            neg: Store::default(),
            zero: 0,
            count: 0,
            missing: 0,
            infinite: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        })
    }

    #[inline]
    fn key(&self, magnitude: f64) -> i32 {
        (magnitude.ln() / self.ln_gamma).ceil() as i32
    }

    fn value(&self, key: i32) -> f64 {
        let gamma = self.ln_gamma.exp();
        2.0 * (key as f64 * self.ln_gamma).exp() / (gamma + 1.0)
    }

    /// NaN counts as missing; ±inf are counted apart and left out of the quantiles.
    pub fn update(&mut self, values: &[f64]) {
        let max_bins = self.max_bins as usize;
        for &x in values {
            if x.is_nan() {
                self.missing += 1;
                continue;
            }
            if x.is_infinite() {
                self.infinite += 1;
                continue;
            }
            self.count += 1;
            self.sum += x;
            self.min = self.min.min(x);
            self.max = self.max.max(x);
            if x > MIN_INDEXABLE {
                let k = self.key(x);
                self.pos.add(k, 1, max_bins);
            } else if x < -MIN_INDEXABLE {
                let k = self.key(-x);
                self.neg.add(k, 1, max_bins);
            } else {
                self.zero += 1;
            }
        }
    }

    pub fn merge(&mut self, o: &QuantileSketch) -> Result<()> {
        if o.alpha != self.alpha || o.max_bins != self.max_bins {
            return Err(DriftError::Mismatch(format!(
                "cannot merge quantile sketches with different parameters \
                 (relative_accuracy {} / {}, max_bins {} / {})",
                self.alpha, o.alpha, self.max_bins, o.max_bins
            )));
        }
        let max_bins = self.max_bins as usize;
        self.pos.merge(&o.pos, max_bins);
        self.neg.merge(&o.neg, max_bins);
        self.zero += o.zero;
        self.count += o.count;
        self.missing += o.missing;
        self.infinite += o.infinite;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        Ok(())
    }

    /// The value at rank floor(q * (count - 1)), within the relative accuracy; NaN if empty.
    pub fn quantile(&self, q: f64) -> Result<f64> {
        if !(0.0..=1.0).contains(&q) {
            return invalid(format!("quantile must be in [0, 1], got {q}"));
        }
        if self.count == 0 {
            return Ok(f64::NAN);
        }
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        // negative values, largest magnitude first
        for (i, c) in self.neg.counts.iter().enumerate().rev() {
            seen += c;
            if seen > rank {
                let v = -self.value(self.neg.offset + i as i32);
                return Ok(v.clamp(self.min, self.max));
            }
        }
        seen += self.zero;
        if seen > rank {
            return Ok(0.0f64.clamp(self.min, self.max));
        }
        for (i, c) in self.pos.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                let v = self.value(self.pos.offset + i as i32);
                return Ok(v.clamp(self.min, self.max));
            }
        }
        Ok(self.max)
    }

    pub fn alpha(&self) -> f64 {
        self.alpha
    }
    pub fn max_bins(&self) -> u32 {
        self.max_bins
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn missing(&self) -> u64 {
        self.missing
    }
    pub fn infinite(&self) -> u64 {
        self.infinite
    }
    pub fn sum(&self) -> f64 {
        self.sum
    }
    pub fn min(&self) -> f64 {
        self.min
    }
    pub fn max(&self) -> f64 {
        self.max
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::QuantileSketch);
        w.f64(self.alpha);
        w.u32(self.max_bins);
        for s in [&self.pos, &self.neg] {
            w.i32(s.offset);
            w.varints(&s.counts);
        }
        w.varint(self.zero);
        w.varint(self.count);
        w.varint(self.missing);
        w.varint(self.infinite);
        w.f64(self.sum);
        w.f64(self.min);
        w.f64(self.max);
        w.finish()
    }

    pub fn from_bytes(data: &[u8]) -> Result<Self> {
        let mut r = Reader::open(data, Kind::QuantileSketch)?;
        let alpha = r.f64()?;
        let max_bins = r.u32()?;
        let mut s = match QuantileSketch::new(alpha, max_bins) {
            Ok(s) => s,
            Err(e) => return r.malformed(e),
        };
        for store in [&mut s.pos, &mut s.neg] {
            store.offset = r.i32()?;
            store.counts = r.varints()?;
        }
        s.zero = r.varint()?;
        s.count = r.varint()?;
        s.missing = r.varint()?;
        s.infinite = r.varint()?;
        s.sum = r.f64()?;
        s.min = r.f64()?;
        s.max = r.f64()?;
        // Stored keys must be keys some value can have at this accuracy: update and merge
        // compute key differences in i32 and grow a store to span them, so a key out of
        // that range would overflow or ask for gigabytes.
        let (lowest, highest) = (s.key(MIN_INDEXABLE) as i64, s.key(f64::MAX) as i64);
        let fits = |st: &Store| {
            st.counts.len() <= max_bins as usize
                && (st.counts.is_empty()
                    || (st.offset as i64 >= lowest
                        && st.offset as i64 + st.counts.len() as i64 - 1 <= highest))
        };
        let total = s
            .pos
            .total()
            .checked_add(s.neg.total())
            .and_then(|t| t.checked_add(s.zero));
        if !fits(&s.pos) || !fits(&s.neg) || total != Some(s.count) {
            return r.malformed("bucket counts do not add up to the count");
        }
        // quantiles are clamped to [min, max]: finite and ordered unless nothing was counted
        let extremes = if s.count == 0 {
            s.min == f64::INFINITY && s.max == f64::NEG_INFINITY
        } else {
            s.min.is_finite() && s.max.is_finite() && s.min <= s.max
        };
        if !extremes {
            return r.malformed("min and max do not fit the count");
        }
        r.finish()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    #[test]
    fn relative_error_on_lognormal() {
        let mut rng = Rng::new(3);
        let mut v: Vec<f64> = (0..20_000).map(|_| (rng.normal() * 2.0).exp()).collect();
        let mut s = QuantileSketch::new(0.01, 2048).unwrap();
        s.update(&v);
        v.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.5, 0.95, 0.99, 1.0] {
            let exact = v[(q * (v.len() - 1) as f64).floor() as usize];
            let got = s.quantile(q).unwrap();
            assert!((got - exact).abs() <= 0.01 * exact * (1.0 + 1e-9), "q={q}");
        }
    }

    #[test]
    fn decoding_refuses_extremes_and_keys_no_value_has() {
        let mut s = QuantileSketch::new(0.01, 64).unwrap();
        s.update(&[1.0, 2.0, 3.0]);
        let good = s.clone();
        let reencode = |s: &QuantileSketch| QuantileSketch::from_bytes(&s.to_bytes());
        for (min, max) in [
            (f64::NAN, 3.0),
            (1.0, f64::NAN),
            (4.0, 3.0),
            (f64::NEG_INFINITY, 3.0),
        ] {
            let mut bad = good.clone();
            (bad.min, bad.max) = (min, max);
            assert!(reencode(&bad).is_err(), "min {min} max {max}");
        }
        let mut bad = QuantileSketch::new(0.01, 64).unwrap();
        bad.min = 0.0;
        assert!(reencode(&bad).is_err(), "an empty sketch with a min");
        for offset in [i32::MIN, i32::MAX - 2, 40_000, -40_000] {
            let mut bad = good.clone();
            bad.pos.offset = offset;
            assert!(reencode(&bad).is_err(), "offset {offset}");
        }
        let back = reencode(&good).unwrap();
        assert_eq!(back, good);
        let extreme = {
            let mut e = QuantileSketch::new(0.01, 1 << 20).unwrap();
            e.update(&[1.0001e-300, f64::MAX, -f64::MAX, -1.0001e-300]);
            e
        };
        assert_eq!(reencode(&extreme).unwrap(), extreme);
    }

    #[test]
    fn collapse_keeps_count() {
        let mut s = QuantileSketch::new(0.01, 8).unwrap();
        s.update(&[1.0, 10.0, 100.0, 1000.0, -5.0, 0.0]);
        assert_eq!(s.count(), 6);
        let back = QuantileSketch::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(back, s);
        assert_eq!(s.quantile(1.0).unwrap(), 1000.0);
    }
}
