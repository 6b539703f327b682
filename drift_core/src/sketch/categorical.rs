//! Categorical reference profiles and window sketches.
//!
//! The reference tracks its `max_categories` most frequent categories (ties broken by
//! name) and folds the rest into an "other" bucket, remembering the other categories by
//! their 64-bit XXH3 hash (up to `MAX_OTHER_HASHES`) so a window can tell "rare but known"
//! from "never seen in the reference". A window sketch is `max_categories + 2` counters
//! whatever the window's cardinality: tracked categories, other-known, unseen.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use xxhash_rust::xxh3::xxh3_64;

use crate::codec::{Kind, Reader, Writer};
use crate::error::{invalid, DriftError, Result};
use crate::sketch::Fingerprint;

pub const DEFAULT_MAX_CATEGORIES: usize = 100;
pub const MAX_CATEGORIES: usize = 1 << 16;
/// Hashes of untracked reference categories kept for unseen-category detection (512 KiB).
pub const MAX_OTHER_HASHES: usize = 1 << 16;

/// The keys are already XXH3 hashes: hash them again for nothing.
#[derive(Default)]
struct IdentityHasher(u64);
impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}
type HashIndex = HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>;

#[derive(Debug, Clone)]
pub struct CategoricalReference {
    categories: Vec<String>,
    /// Reference count per tracked category, then the "other" count.
    counts: Vec<u64>,
    other_hashes: Vec<u64>,
    other_truncated: bool,
    n: u64,
    missing: u64,
    fingerprint: Fingerprint,
    index: HashIndex,
}

impl CategoricalReference {
    /// Builds a profile from category values; `None` counts as missing.
    pub fn build<'a>(
        values: impl IntoIterator<Item = Option<&'a str>>,
        max_categories: usize,
    ) -> Result<Self> {
        if max_categories == 0 || max_categories > MAX_CATEGORIES {
            return invalid(format!(
                "max_categories must be between 1 and {MAX_CATEGORIES}, got {max_categories}"
            ));
        }
        let mut freq: HashMap<&str, u64> = HashMap::new();
        let (mut seen, mut missing) = (0u64, 0u64);
        for v in values {
            seen += 1;
            match v {
                Some(s) => *freq.entry(s).or_default() += 1,
                None => missing += 1,
            }
        }
        if seen == 0 {
            return invalid("cannot build a categorical reference from an empty array");
        }
        if freq.is_empty() {
            return invalid(format!(
                "cannot build a categorical reference: all {seen} values are missing"
            ));
        }
        let mut ranked: Vec<(&str, u64)> = freq.into_iter().collect();
        ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let k = ranked.len().min(max_categories);
        let categories: Vec<String> = ranked[..k].iter().map(|(s, _)| s.to_string()).collect();
        let mut counts: Vec<u64> = ranked[..k].iter().map(|(_, c)| *c).collect();
        counts.push(ranked[k..].iter().map(|(_, c)| c).sum());
        let mut other_hashes: Vec<u64> = ranked[k..]
            .iter()
            .take(MAX_OTHER_HASHES)
            .map(|(s, _)| xxh3_64(s.as_bytes()))
            .collect();
        let other_truncated = ranked.len() - k > MAX_OTHER_HASHES;
        other_hashes.sort_unstable();
        other_hashes.dedup();
        Self::assemble(
            categories,
            counts,
            other_hashes,
            other_truncated,
            seen - missing,
            missing,
        )
    }

    fn assemble(
        categories: Vec<String>,
        counts: Vec<u64>,
        other_hashes: Vec<u64>,
        other_truncated: bool,
        n: u64,
        missing: u64,
    ) -> Result<Self> {
        let mut index = HashIndex::default();
        for (i, c) in categories.iter().enumerate() {
            if index.insert(xxh3_64(c.as_bytes()), i as u32).is_some() {
                return Err(DriftError::Decode(format!(
                    "malformed categorical reference: category {c:?} appears twice"
                )));
            }
        }
        let mut w = Writer::new(Kind::CategoricalReference);
        for c in &categories {
            w.str(c);
        }
        w.varints(&counts);
        w.varints(&other_hashes);
        let fingerprint = xxh3_64(&w.finish());
        Ok(CategoricalReference {
            categories,
            counts,
            other_hashes,
            other_truncated,
            n,
            missing,
            fingerprint,
            index,
        })
    }

    pub fn categories(&self) -> &[String] {
        &self.categories
    }
    /// Tracked counts followed by the "other" count.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
    pub fn n(&self) -> u64 {
        self.n
    }
    pub fn missing(&self) -> u64 {
        self.missing
    }
    pub fn other_truncated(&self) -> bool {
        self.other_truncated
    }
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Bucket of one category: tracked index, K = other known, K + 1 = unseen.
    #[inline]
    pub fn bucket(&self, s: &str) -> usize {
        let h = xxh3_64(s.as_bytes());
        match self.index.get(&h) {
            Some(i) => *i as usize,
            None if self.other_hashes.binary_search(&h).is_ok() => self.categories.len(),
            None => self.categories.len() + 1,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::CategoricalReference);
        w.varint(self.categories.len() as u64);
        for c in &self.categories {
            w.str(c);
        }
        w.varints(&self.counts);
        w.varints(&self.other_hashes);
        w.u8(self.other_truncated as u8);
        w.varint(self.n);
        w.varint(self.missing);
        w.finish()
    }

    pub fn from_bytes(data: &[u8]) -> Result<Self> {
        let mut r = Reader::open(data, Kind::CategoricalReference)?;
        let k = r.len(1)?;
        let categories = (0..k).map(|_| r.str()).collect::<Result<Vec<_>>>()?;
        let counts = r.varints()?;
        let other_hashes = r.varints()?;
        let other_truncated = match r.u8()? {
            0 => false,
            1 => true,
            _ => return r.malformed("bad flag byte"),
        };
        let n = r.varint()?;
        let missing = r.varint()?;
        if k == 0 || counts.len() != k + 1 || counts.iter().sum::<u64>() != n {
            return r.malformed("counts do not match the categories and the count");
        }
        if !other_hashes.windows(2).all(|w| w[0] < w[1]) {
            return r.malformed("other-category hashes are not sorted");
        }
        r.finish()?;
        Self::assemble(
            categories,
            counts,
            other_hashes,
            other_truncated,
            n,
            missing,
        )
    }
}

/// Counts of one window's categories in the buckets of one reference.
#[derive(Debug, Clone, PartialEq)]
pub struct CategoricalSketch {
    fingerprint: Fingerprint,
    /// tracked..., other known, unseen
    counts: Vec<u64>,
    missing: u64,
}

impl CategoricalSketch {
    pub fn new(reference: &CategoricalReference) -> Self {
        CategoricalSketch {
            fingerprint: reference.fingerprint,
            counts: vec![0; reference.categories.len() + 2],
            missing: 0,
        }
    }

    fn check(&self, reference: &CategoricalReference) -> Result<()> {
        if self.fingerprint != reference.fingerprint
            || self.counts.len() != reference.categories.len() + 2
        {
            return Err(DriftError::Mismatch(format!(
                "this sketch was made for reference {:016x}, not for reference {:016x}",
                self.fingerprint, reference.fingerprint
            )));
        }
        Ok(())
    }

    pub fn update<'a>(
        &mut self,
        reference: &CategoricalReference,
        values: impl IntoIterator<Item = Option<&'a str>>,
    ) -> Result<()> {
        self.check(reference)?;
        for v in values {
            match v {
                Some(s) => self.counts[reference.bucket(s)] += 1,
                None => self.missing += 1,
            }
        }
        Ok(())
    }

    /// Adds one category `count` times (used by bindings that decode values themselves).
    pub fn add(&mut self, reference: &CategoricalReference, value: Option<&str>, count: u64) {
        match value {
            Some(s) => self.counts[reference.bucket(s)] += count,
            None => self.missing += count,
        }
    }

    pub fn merge(&mut self, other: &CategoricalSketch) -> Result<()> {
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
        Ok(())
    }

    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
    pub fn n(&self) -> u64 {
        self.counts.iter().sum()
    }
    pub fn missing(&self) -> u64 {
        self.missing
    }
    pub fn unseen(&self) -> u64 {
        *self.counts.last().expect("non-empty")
    }
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::CategoricalSketch);
        w.u64(self.fingerprint);
        w.varints(&self.counts);
        w.varint(self.missing);
        w.finish()
    }

    pub fn from_bytes(data: &[u8], reference: &CategoricalReference) -> Result<Self> {
        let mut r = Reader::open(data, Kind::CategoricalSketch)?;
        let fingerprint = r.u64()?;
        let counts = r.varints()?;
        let missing = r.varint()?;
        r.finish()?;
        let s = CategoricalSketch {
            fingerprint,
            counts,
            missing,
        };
        s.check(reference)?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Vec<Option<&'static str>> {
        let mut v = vec![Some("a"); 50];
        v.extend(vec![Some("b"); 30]);
        v.extend(vec![Some("c"); 15]);
        v.extend(vec![Some("d"); 5]);
        v.extend(vec![None; 10]);
        v
    }

    #[test]
    fn tracks_top_categories_and_other() {
        let r = CategoricalReference::build(data(), 2).unwrap();
        assert_eq!(r.categories(), &["a", "b"]);
        assert_eq!(r.counts(), &[50, 30, 20]);
        assert_eq!((r.n(), r.missing()), (100, 10));
        let mut s = CategoricalSketch::new(&r);
        s.update(&r, [Some("a"), Some("c"), Some("zzz"), None, Some("zzz")])
            .unwrap();
        assert_eq!(s.counts(), &[1, 0, 1, 2]);
        assert_eq!(s.missing(), 1);
    }

    #[test]
    fn round_trip() {
        let r = CategoricalReference::build(data(), 3).unwrap();
        let r2 = CategoricalReference::from_bytes(&r.to_bytes()).unwrap();
        assert_eq!(r2.fingerprint(), r.fingerprint());
        assert_eq!(r2.bucket("d"), 3);
        assert_eq!(r2.bucket("nope"), 4);
    }
}
