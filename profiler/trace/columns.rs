//! Column codecs: every record field is stored as a column of LEB128 varints, each value
//! optionally predicted from the previous row or from another field of the same row, so that
//! timestamps become small gaps and durations. zstd then squeezes the repetitive columns.

use super::error::DecodeError;

/// How a column's values are predicted before varint coding (written into the file header so
/// the format describes itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// The value itself.
    Raw,
    /// Zigzag difference from the same field of the previous row.
    Delta,
    /// Zigzag difference from another (earlier) field of the same row, e.g. end − start.
    From(&'static str),
    /// Zigzag difference from another (earlier) field of the previous row, e.g. start − prev end.
    Prev(&'static str),
    /// XOR with the same field of the previous row (floating-point bit patterns).
    Xor,
    /// An interval start stored as the gap from the previous row's end, interleaved with the
    /// named end field's duration (end − start): kernels on a stream run back to back, so both
    /// numbers are small. The end field is then `Paired` and stores nothing of its own.
    GapFrom(&'static str),
    /// Stored inside another column (see `GapFrom`).
    Paired,
}

impl Encoding {
    /// The name written into the file header's schema.
    pub fn describe(&self) -> String {
        match self {
            Encoding::Raw => "raw".into(),
            Encoding::Delta => "delta".into(),
            Encoding::From(f) => format!("from:{f}"),
            Encoding::Prev(f) => format!("prev:{f}"),
            Encoding::Xor => "xor".into(),
            Encoding::GapFrom(f) => format!("gap_from:{f}"),
            Encoding::Paired => "paired".into(),
        }
    }

    /// Whether the column has bytes of its own in a section.
    pub fn is_stored(&self) -> bool {
        !matches!(self, Encoding::Paired)
    }
}

/// One column of a record kind's schema.
#[derive(Clone, Copy, Debug)]
pub struct ColumnDesc {
    /// The field's name.
    pub name: &'static str,
    /// The field's Rust type, as written (`u64`, `i32`, `f64`…).
    pub ty: &'static str,
    /// How the column is stored.
    pub encoding: Encoding,
}

/// A field type that can be carried in a column: widened to u64 losslessly and narrowed back
/// with a check, so a corrupt value is an error and not a silent truncation.
pub trait Column: Copy {
    /// The value widened to u64 (signed values sign-extended to 64 bits, f64 as its bits).
    fn to_u64(self) -> u64;
    /// The value back from u64, or None if it does not fit the type.
    fn from_u64(v: u64) -> Option<Self>;
}

macro_rules! unsigned_column {
    ($($t:ty),*) => {$(
        impl Column for $t {
            #[inline(always)]
            fn to_u64(self) -> u64 { self as u64 }
            #[inline(always)]
            fn from_u64(v: u64) -> Option<Self> { <$t>::try_from(v).ok() }
        }
    )*};
}
unsigned_column!(u8, u16, u32, u64);

impl Column for i32 {
    #[inline(always)]
    fn to_u64(self) -> u64 {
        self as i64 as u64
    }
    #[inline(always)]
    fn from_u64(v: u64) -> Option<Self> {
        i32::try_from(v as i64).ok()
    }
}

impl Column for i64 {
    #[inline(always)]
    fn to_u64(self) -> u64 {
        self as u64
    }
    #[inline(always)]
    fn from_u64(v: u64) -> Option<Self> {
        Some(v as i64)
    }
}

impl Column for f64 {
    #[inline(always)]
    fn to_u64(self) -> u64 {
        self.to_bits()
    }
    #[inline(always)]
    fn from_u64(v: u64) -> Option<Self> {
        Some(f64::from_bits(v))
    }
}

/// Zigzag encoding: small negative and positive numbers both become small unsigned ones.
#[inline(always)]
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// The inverse of [`zigzag`].
#[inline(always)]
pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Predicted value → stored value.
#[inline(always)]
pub fn encode_value(enc_is_xor: bool, enc_is_raw: bool, value: u64, base: u64) -> u64 {
    if enc_is_raw {
        value
    } else if enc_is_xor {
        value ^ base
    } else {
        zigzag(value.wrapping_sub(base) as i64)
    }
}

/// Stored value → field value (inverse of [`encode_value`]).
#[inline(always)]
pub fn decode_value(enc_is_xor: bool, enc_is_raw: bool, stored: u64, base: u64) -> u64 {
    if enc_is_raw {
        stored
    } else if enc_is_xor {
        stored ^ base
    } else {
        base.wrapping_add(unzigzag(stored) as u64)
    }
}

/// Appends `v` as a LEB128 varint (7 bits a byte, low bits first).
#[inline(always)]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    if v < 0x80 {
        out.push(v as u8);
        return;
    }
    // Multi-byte values are written into reserved space and the length set once: a `push` per
    // byte (a capacity check and a length store each) was a fifth of the column encoding's
    // instructions (callgrind, `tools/bench trace`). The bytes are the same.
    out.reserve(10);
    let len = out.len();
    let mut n = 0usize;
    // SAFETY: a u64 takes at most 10 LEB128 bytes and 10 are reserved past `len`; every byte up
    // to `len + n` is written before the length covers it.
    unsafe {
        let p = out.as_mut_ptr().add(len);
        while v >= 0x80 {
            p.add(n).write((v as u8) | 0x80);
            v >>= 7;
            n += 1;
        }
        p.add(n).write(v as u8);
        out.set_len(len + n + 1);
    }
}

/// A bounds-checked cursor over a section's bytes. `base_offset` is where the section starts
/// in the decompressed chunk, so errors can name the byte.
pub struct Cursor<'a> {
    /// The bytes read.
    pub buf: &'a [u8],
    /// Read position in `buf`.
    pub pos: usize,
    /// Offset of `buf` within the enclosing buffer, added to error offsets.
    pub base: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buf`, whose offsets are relative to `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0, base: 0 }
    }

    /// A cursor at the start of `buf`, which starts at `base` in the enclosing buffer.
    pub fn with_base(buf: &'a [u8], base: usize) -> Self {
        Cursor { buf, pos: 0, base }
    }

    /// Current position in the enclosing buffer.
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Reads a LEB128 varint (at most 10 bytes).
    #[inline(always)]
    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        // Fast paths: one byte (most columns), then two and three (timestamp gaps, durations).
        if let Some(b) = self.buf.get(self.pos..self.pos + 3) {
            let (b0, b1, b2) = (b[0] as u64, b[1] as u64, b[2] as u64);
            if b0 < 0x80 {
                self.pos += 1;
                return Ok(b0);
            }
            if b1 < 0x80 {
                self.pos += 2;
                return Ok((b0 & 0x7f) | (b1 << 7));
            }
            if b2 < 0x80 {
                self.pos += 3;
                return Ok((b0 & 0x7f) | ((b1 & 0x7f) << 7) | (b2 << 14));
            }
        }
        self.varint_long()
    }

    /// Multi-byte values: up to 8 bytes from one unaligned load, else byte by byte.
    #[inline(never)]
    fn varint_long(&mut self) -> Result<u64, DecodeError> {
        if let Some(chunk) = self.buf.get(self.pos..self.pos + 8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
            let stops = !word & 0x8080_8080_8080_8080;
            if stops != 0 {
                let len = (stops.trailing_zeros() / 8 + 1) as usize;
                // Gather the 7-bit groups of the first `len` bytes.
                let keep = if len == 8 { u64::MAX } else { (1u64 << (8 * len)) - 1 };
                let w = word & keep & 0x7f7f_7f7f_7f7f_7f7f;
                let mut v = 0u64;
                for i in 0..len {
                    v |= ((w >> (8 * i)) & 0x7f) << (7 * i);
                }
                self.pos += len;
                return Ok(v);
            }
        }
        let mut v: u64 = 0;
        let mut shift = 0u32;
        loop {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(DecodeError::new(self.offset(), "varint runs past the end of its section"));
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(DecodeError::new(self.offset() - 1, "varint overflows 64 bits"));
            }
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(DecodeError::new(self.offset() - 1, "varint longer than 10 bytes"));
            }
        }
    }

    /// Reads the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| DecodeError::new(self.offset(), "length runs past the end of its section"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Reads a little-endian u16.
    pub fn u16_le(&mut self) -> Result<u16, DecodeError> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// Reads a little-endian u32.
    pub fn u32_le(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a little-endian u64.
    pub fn u64_le(&mut self) -> Result<u64, DecodeError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips_edges() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX - 1, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut c = Cursor::new(&out);
            assert_eq!(c.varint().unwrap(), v);
            assert_eq!(c.remaining(), 0);
        }
    }

    #[test]
    fn varint_bytes_equal_the_byte_by_byte_encoding() {
        // The reserved-space writer must give the format's bytes exactly, appended after what
        // the buffer already holds, for every length from 1 to 10 bytes.
        let reference = |out: &mut Vec<u8>, mut v: u64| {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        };
        let (mut fast, mut slow) = (vec![0xaau8; 3], vec![0xaau8; 3]);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = x >> (i % 64);
            put_varint(&mut fast, v);
            reference(&mut slow, v);
        }
        for v in [0u64, 127, 128, 16383, 16384, u64::MAX] {
            put_varint(&mut fast, v);
            reference(&mut slow, v);
        }
        assert_eq!(fast.len(), slow.len());
        assert!(fast == slow);
    }

    #[test]
    fn varint_rejects_overlong_and_truncated() {
        let overlong = [0xffu8; 11];
        assert!(Cursor::new(&overlong).varint().is_err());
        let truncated = [0x80u8, 0x80];
        let err = Cursor::new(&truncated).varint().unwrap_err();
        assert_eq!(err.offset, 2);
    }

    #[test]
    fn zigzag_and_predictions_invert() {
        for (v, b) in [(5u64, 3u64), (3, 5), (0, u64::MAX), (u64::MAX, 0), (1 << 40, (1 << 40) + 7)] {
            for (xor, raw) in [(false, false), (true, false), (false, true)] {
                let s = encode_value(xor, raw, v, b);
                assert_eq!(decode_value(xor, raw, s, b), v);
            }
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
        assert_eq!(unzigzag(zigzag(i64::MIN)), i64::MIN);
    }

    #[test]
    fn narrowing_is_checked() {
        assert_eq!(<u32 as Column>::from_u64(1 << 33), None);
        assert_eq!(<i32 as Column>::from_u64((-1i32).to_u64()), Some(-1));
        assert_eq!(<i32 as Column>::from_u64(1 << 40), None);
    }
}
