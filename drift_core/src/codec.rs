//! The binary envelope shared by every profile and sketch.
//!
//! ```text
//! magic    4 bytes  "DLFT"
//! version  u16 LE   FORMAT_VERSION
//! kind     u8       what the payload is (see `Kind`)
//! reserved u8       0
//! length   u32 LE   payload length in bytes
//! payload  ...      kind-specific, little-endian, counts as LEB128 varints
//! crc32    u32 LE   CRC-32 (IEEE) of every byte before it
//! ```
//! Decoding checks every field and every length against the bytes that remain before it
//! allocates, so hostile input gives a `DriftError::Decode`, never a panic or a huge
//! allocation.

use crate::error::{decode_err, DriftError, Result};

pub const MAGIC: &[u8; 4] = b"DLFT";
pub const FORMAT_VERSION: u16 = 1;
const HEADER_LEN: usize = 12;
const TRAILER_LEN: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    NumericReference = 1,
    CategoricalReference = 2,
    NumericSketch = 3,
    CategoricalSketch = 4,
    QuantileSketch = 5,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::NumericReference => "numeric reference",
            Kind::CategoricalReference => "categorical reference",
            Kind::NumericSketch => "numeric sketch",
            Kind::CategoricalSketch => "categorical sketch",
            Kind::QuantileSketch => "quantile sketch",
        }
    }

    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::NumericReference,
            2 => Kind::CategoricalReference,
            3 => Kind::NumericSketch,
            4 => Kind::CategoricalSketch,
            5 => Kind::QuantileSketch,
            _ => return None,
        })
    }
}

/// Builds one envelope; the payload is written through the `Writer` methods.
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new(kind: Kind) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        buf.push(kind as u8);
        buf.push(0);
        buf.extend_from_slice(&0u32.to_le_bytes());
        Writer { buf }
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
    pub fn f64s(&mut self, vs: &[f64]) {
        self.varint(vs.len() as u64);
        for v in vs {
            self.f64(*v);
        }
    }
    pub fn varints(&mut self, vs: &[u64]) {
        self.varints_from(vs.iter().copied());
    }
    /// Same bytes as `varints`, from any counts (u32 counts widen losslessly).
    pub fn varints_from(&mut self, vs: impl ExactSizeIterator<Item = u64>) {
        self.varint(vs.len() as u64);
        for v in vs {
            self.varint(v);
        }
    }
    pub fn str(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.buf.extend_from_slice(s.as_bytes());
    }

    pub fn finish(mut self) -> Vec<u8> {
        let payload_len = (self.buf.len() - HEADER_LEN) as u32;
        self.buf[8..12].copy_from_slice(&payload_len.to_le_bytes());
        let crc = crc32fast::hash(&self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// Reads one envelope's payload with bounds checks on every read.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    kind: Kind,
}

/// Reads the kind of an envelope after validating magic, version, length and checksum.
pub fn peek_kind(data: &[u8]) -> Result<Kind> {
    Ok(open_any(data)?.kind)
}

fn open_any(data: &[u8]) -> Result<Reader<'_>> {
    if data.len() < HEADER_LEN + TRAILER_LEN {
        return decode_err(format!(
            "truncated: {} bytes is shorter than the {}-byte envelope of a driftline profile or sketch",
            data.len(),
            HEADER_LEN + TRAILER_LEN
        ));
    }
    if &data[0..4] != MAGIC {
        return decode_err("not a driftline profile or sketch (bad magic bytes)");
    }
    let version = u16::from_le_bytes([data[4], data[5]]);
    if version != FORMAT_VERSION {
        return decode_err(format!(
            "format version {version} is not supported: this build reads version {FORMAT_VERSION}; \
             rebuild the profile or sketch with this version of driftline"
        ));
    }
    let payload_len = u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize;
    let expected = HEADER_LEN + payload_len + TRAILER_LEN;
    if data.len() != expected {
        return decode_err(format!(
            "truncated or padded: header announces {expected} bytes, got {}",
            data.len()
        ));
    }
    let body = &data[..HEADER_LEN + payload_len];
    let stored = u32::from_le_bytes(data[expected - 4..].try_into().expect("4 bytes"));
    if crc32fast::hash(body) != stored {
        return decode_err("checksum mismatch: the bytes are corrupted");
    }
    let kind = Kind::from_u8(data[6])
        .ok_or_else(|| DriftError::Decode(format!("unknown payload kind {}", data[6])))?;
    Ok(Reader {
        data: body,
        pos: HEADER_LEN,
        kind,
    })
}

impl<'a> Reader<'a> {
    /// Validates the envelope and checks that it holds `expected`.
    pub fn open(data: &'a [u8], expected: Kind) -> Result<Self> {
        let r = open_any(data)?;
        if r.kind != expected {
            return decode_err(format!(
                "expected a {}, got a {}",
                expected.name(),
                r.kind.name()
            ));
        }
        Ok(r)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.data.len() - self.pos < n {
            return decode_err(format!(
                "malformed {}: payload ends early at byte {}",
                self.kind.name(),
                self.pos
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    pub fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    pub fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    pub fn varint(&mut self) -> Result<u64> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let part = (b & 0x7f) as u64;
            if shift == 63 && part > 1 {
                return self.malformed("varint overflows 64 bits");
            }
            out |= part << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        self.malformed("varint longer than 10 bytes")
    }
    /// A length prefix, checked against the bytes that remain (each item takes at least
    /// `min_item_bytes`), so a corrupted length cannot trigger a huge allocation.
    pub fn len(&mut self, min_item_bytes: usize) -> Result<usize> {
        let n = self.varint()?;
        if n > (self.remaining() / min_item_bytes.max(1)) as u64 {
            return self.malformed(format!("length {n} exceeds the remaining payload"));
        }
        Ok(n as usize)
    }
    pub fn f64s(&mut self) -> Result<Vec<f64>> {
        let n = self.len(8)?;
        (0..n).map(|_| self.f64()).collect()
    }
    pub fn varints(&mut self) -> Result<Vec<u64>> {
        let n = self.len(1)?;
        (0..n).map(|_| self.varint()).collect()
    }
    pub fn str(&mut self) -> Result<String> {
        let n = self.len(1)?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec())
            .or_else(|_| self.malformed("category name is not valid UTF-8"))
    }
    pub fn malformed<T>(&self, what: impl std::fmt::Display) -> Result<T> {
        decode_err(format!("malformed {}: {what}", self.kind.name()))
    }
    /// Every payload byte must have been consumed.
    pub fn finish(self) -> Result<()> {
        if self.remaining() != 0 {
            return self.malformed(format!("{} unexpected trailing bytes", self.remaining()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Kind::QuantileSketch);
        w.varint(300);
        w.f64(1.5);
        w.str("héllo");
        w.varints(&[0, 1, u64::MAX]);
        w.finish()
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let mut r = Reader::open(&bytes, Kind::QuantileSketch).unwrap();
        assert_eq!(r.varint().unwrap(), 300);
        assert_eq!(r.f64().unwrap(), 1.5);
        assert_eq!(r.str().unwrap(), "héllo");
        assert_eq!(r.varints().unwrap(), vec![0, 1, u64::MAX]);
        r.finish().unwrap();
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            assert!(Reader::open(&bytes[..cut], Kind::QuantileSketch).is_err());
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    Reader::open(&b, Kind::QuantileSketch).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn wrong_kind_and_version() {
        let bytes = sample();
        let e = Reader::open(&bytes, Kind::NumericSketch).err().unwrap();
        assert!(e.to_string().contains("expected a numeric sketch"));
        let mut b = bytes.clone();
        b[4] = 9;
        let n = b.len();
        let crc = crc32fast::hash(&b[..n - 4]);
        b[n - 4..].copy_from_slice(&crc.to_le_bytes());
        let e = Reader::open(&b, Kind::QuantileSketch).err().unwrap();
        assert!(e.to_string().contains("format version 9"));
    }
}
