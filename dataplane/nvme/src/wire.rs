//! Little-endian field access at fixed offsets. Callers check buffer lengths first (decoders
//! take `&[u8; N]` or check `len()`), so the offsets here are always in range.

#[inline]
pub(crate) fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

#[inline]
pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

#[inline]
pub(crate) fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

#[inline]
pub(crate) fn get_u128(b: &[u8], off: usize) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    u128::from_le_bytes(a)
}

#[inline]
pub(crate) fn get_array<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[off..off + N]);
    a
}

#[inline]
pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

#[inline]
pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

#[inline]
pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

#[inline]
pub(crate) fn put_u128(b: &mut [u8], off: usize, v: u128) {
    b[off..off + 16].copy_from_slice(&v.to_le_bytes());
}

#[inline]
pub(crate) fn put_bytes(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

/// Checks that `buf` holds at least `needed` bytes.
#[inline]
pub(crate) fn need(buf: &[u8], needed: usize) -> Result<(), crate::DecodeError> {
    if buf.len() < needed {
        Err(crate::DecodeError::Truncated {
            needed,
            got: buf.len(),
        })
    } else {
        Ok(())
    }
}

/// Checks that an output buffer holds at least `needed` bytes.
#[inline]
pub(crate) fn need_out(buf: &[u8], needed: usize) -> Result<(), crate::DecodeError> {
    if buf.len() < needed {
        Err(crate::DecodeError::BufferTooSmall {
            needed,
            got: buf.len(),
        })
    } else {
        Ok(())
    }
}

/// A fixed-width ASCII field padded with spaces (serial number, model number, firmware
/// revision). Longer input is cut at the field width.
pub fn ascii_padded<const N: usize>(s: &str) -> [u8; N] {
    let mut a = [b' '; N];
    let n = s.len().min(N);
    a[..n].copy_from_slice(&s.as_bytes()[..n]);
    a
}

/// The text of a space-padded ASCII field without its padding (lossy for non-ASCII bytes:
/// they end the text).
pub fn ascii_trimmed(field: &[u8]) -> &str {
    let end = field
        .iter()
        .position(|&c| !(0x20..0x7f).contains(&c))
        .unwrap_or(field.len());
    let s = &field[..end];
    let s = std::str::from_utf8(s).unwrap_or("");
    s.trim_end_matches(' ')
}
