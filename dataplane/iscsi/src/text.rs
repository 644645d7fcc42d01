//! Text keys (RFC 7143 §6.1): `key=value` pairs, each followed by one NUL, in the data segment
//! of Login and Text PDUs, plus the value encodings (numbers, booleans, binary in hex or
//! base64) and the reassembly of text that spans several PDUs (C bit).
//!
//! Parsing is strict about what could be abused (lengths, names, UTF-8) and lenient about
//! what is harmless (empty entries between NULs are skipped).

use thiserror::Error;

/// Longest key name (RFC 7143 §6.1).
pub const MAX_KEY_LEN: usize = 63;

/// Reserved response values.
pub const NOT_UNDERSTOOD: &str = "NotUnderstood";
pub const IRRELEVANT: &str = "Irrelevant";
pub const REJECT: &str = "Reject";

/// Size limits applied while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextLimits {
    pub max_key_len: usize,
    /// Longest encoded value: large binary values (CHAP) need more than the 255 bytes of
    /// ordinary text values.
    pub max_value_len: usize,
    /// Longest whole text (a negotiation sequence reassembled over several PDUs).
    pub max_total_len: usize,
    /// Most pairs in one text.
    pub max_pairs: usize,
}

impl Default for TextLimits {
    fn default() -> Self {
        TextLimits {
            max_key_len: MAX_KEY_LEN,
            max_value_len: 8192,
            max_total_len: 64 * 1024,
            max_pairs: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TextError {
    #[error("text of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("more than {max} key=value pairs")]
    TooManyPairs { max: usize },
    #[error("entry at offset {offset} has no '='")]
    MissingEquals { offset: usize },
    #[error("last entry is not NUL-terminated")]
    Unterminated,
    #[error("key name at offset {offset} is invalid (empty, too long, bad characters, or not starting with a capital letter)")]
    BadKeyName { offset: usize },
    #[error("value of {key} is {len} bytes, longer than {max}")]
    ValueTooLong { key: String, len: usize, max: usize },
    #[error("entry at offset {offset} is not UTF-8")]
    NotUtf8 { offset: usize },
}

/// An ordered list of `key=value` pairs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextList {
    pairs: Vec<(String, String)>,
}

fn valid_key(k: &[u8], max: usize) -> bool {
    !k.is_empty()
        && k.len() <= max
        && k[0].is_ascii_uppercase()
        && k.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'@' | b'_'))
}

impl TextList {
    pub fn new() -> Self {
        TextList { pairs: Vec::new() }
    }

    /// Parses a complete text (all PDUs of a C-bit sequence joined).
    pub fn parse(data: &[u8], limits: &TextLimits) -> Result<TextList, TextError> {
        if data.len() > limits.max_total_len {
            return Err(TextError::TooLong {
                len: data.len(),
                max: limits.max_total_len,
            });
        }
        let mut list = TextList::new();
        let mut offset = 0;
        while offset < data.len() {
            let rest = &data[offset..];
            let Some(nul) = rest.iter().position(|&b| b == 0) else {
                return Err(TextError::Unterminated);
            };
            let entry = &rest[..nul];
            if !entry.is_empty() {
                let Some(eq) = entry.iter().position(|&b| b == b'=') else {
                    return Err(TextError::MissingEquals { offset });
                };
                let (k, v) = (&entry[..eq], &entry[eq + 1..]);
                if !valid_key(k, limits.max_key_len) {
                    return Err(TextError::BadKeyName { offset });
                }
                let key = std::str::from_utf8(k).map_err(|_| TextError::NotUtf8 { offset })?;
                if v.len() > limits.max_value_len {
                    return Err(TextError::ValueTooLong {
                        key: key.to_string(),
                        len: v.len(),
                        max: limits.max_value_len,
                    });
                }
                let value = std::str::from_utf8(v).map_err(|_| TextError::NotUtf8 { offset })?;
                if list.pairs.len() >= limits.max_pairs {
                    return Err(TextError::TooManyPairs {
                        max: limits.max_pairs,
                    });
                }
                list.pairs.push((key.to_string(), value.to_string()));
            }
            offset += nul + 1;
        }
        Ok(list)
    }

    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.pairs.push((key.into(), value.into()));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter().filter(move |(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn extend(&mut self, other: TextList) {
        self.pairs.extend(other.pairs);
    }

    /// Appends the wire form (`key=value\0` per pair) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        for (k, v) in &self.pairs {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// Joins the data segments of a Login or Text sequence sent with the C bit, up to a cap.
#[derive(Debug, Clone)]
pub struct TextReassembly {
    buf: Vec<u8>,
    cap: usize,
}

impl TextReassembly {
    pub fn new(cap: usize) -> Self {
        TextReassembly {
            buf: Vec::new(),
            cap,
        }
    }

    /// Adds one PDU's data. Returns the whole text once a PDU without the C bit arrives.
    pub fn push(&mut self, data: &[u8], continue_: bool) -> Result<Option<Vec<u8>>, TextError> {
        let len = self.buf.len() + data.len();
        if len > self.cap {
            self.buf.clear();
            return Err(TextError::TooLong { len, max: self.cap });
        }
        self.buf.extend_from_slice(data);
        if continue_ {
            Ok(None)
        } else {
            Ok(Some(std::mem::take(&mut self.buf)))
        }
    }

    /// True while a C-bit sequence is incomplete.
    pub fn in_progress(&self) -> bool {
        !self.buf.is_empty()
    }

    pub fn reset(&mut self) {
        self.buf.clear();
    }
}

/// Splits an encoded text into data segments of at most `max` bytes (at least 1); the bool
/// says whether the C bit must be set (more follows).
pub fn split_text(data: &[u8], max: usize) -> impl Iterator<Item = (&[u8], bool)> {
    let max = max.max(1);
    let n = data.len().div_ceil(max).max(1);
    (0..n).map(move |i| {
        let start = (i * max).min(data.len());
        let end = ((i + 1) * max).min(data.len());
        (&data[start..end], i + 1 < n)
    })
}

/// Value errors, named by what was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ValueError {
    #[error("not a number")]
    NotNumber,
    #[error("not Yes or No")]
    NotBoolean,
    #[error("not a hex (0x) or base64 (0b) binary value")]
    NotBinary,
}

/// A numerical value: decimal, or hex with `0x`/`0X` (RFC 7143 §6.1), below 2^64.
pub fn parse_number(v: &str) -> Result<u64, ValueError> {
    let r = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || !h.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(ValueError::NotNumber);
        }
        u64::from_str_radix(h, 16)
    } else {
        if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
            return Err(ValueError::NotNumber);
        }
        v.parse::<u64>()
    };
    r.map_err(|_| ValueError::NotNumber)
}

pub fn parse_bool(v: &str) -> Result<bool, ValueError> {
    match v {
        "Yes" => Ok(true),
        "No" => Ok(false),
        _ => Err(ValueError::NotBoolean),
    }
}

pub fn bool_str(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

/// A binary value: `0x` hex (an odd digit count means a leading zero nibble) or `0b` base64.
pub fn parse_binary(v: &str) -> Result<Vec<u8>, ValueError> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        let h = h.as_bytes();
        if h.is_empty() {
            return Err(ValueError::NotBinary);
        }
        let mut out = Vec::with_capacity(h.len().div_ceil(2));
        let nib = |c: u8| -> Result<u8, ValueError> {
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                b'A'..=b'F' => Ok(c - b'A' + 10),
                _ => Err(ValueError::NotBinary),
            }
        };
        let mut i = 0;
        if h.len() % 2 == 1 {
            out.push(nib(h[0])?);
            i = 1;
        }
        // What is left has an even number of digits.
        while i < h.len() {
            out.push(nib(h[i])? << 4 | nib(h[i + 1])?);
            i += 2;
        }
        Ok(out)
    } else if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        base64_decode(b.as_bytes()).ok_or(ValueError::NotBinary)
    } else {
        Err(ValueError::NotBinary)
    }
}

/// `0x` followed by lower-case hex digits.
pub fn hex_value(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() & 3 != 0 {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let quads = s.len() / 4;
    for (qi, q) in s.chunks_exact(4).enumerate() {
        let last = qi + 1 == quads;
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = n << 6 | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode_roundtrip() {
        let wire = b"InitiatorName=iqn.1993-08.org.debian:01:abc\0SessionType=Normal\0MaxBurstLength=262144\0";
        let list = TextList::parse(wire, &TextLimits::default()).unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list.get("SessionType"), Some("Normal"));
        assert_eq!(list.get("MaxBurstLength"), Some("262144"));
        assert_eq!(list.encode(), wire.to_vec());
    }

    #[test]
    fn values_may_contain_equals_and_be_empty() {
        let list = TextList::parse(b"TargetAlias=\0X-foo=a=b\0", &TextLimits::default()).unwrap();
        assert_eq!(list.get("TargetAlias"), Some(""));
        assert_eq!(list.get("X-foo"), Some("a=b"));
    }

    #[test]
    fn malformed_texts_are_typed_errors() {
        let l = TextLimits::default();
        assert_eq!(
            TextList::parse(b"A=1\0B=2", &l),
            Err(TextError::Unterminated)
        );
        assert_eq!(
            TextList::parse(b"A=1\0Bogus\0", &l),
            Err(TextError::MissingEquals { offset: 4 })
        );
        assert_eq!(
            TextList::parse(b"=1\0", &l),
            Err(TextError::BadKeyName { offset: 0 })
        );
        assert_eq!(
            TextList::parse(b"lower=1\0", &l),
            Err(TextError::BadKeyName { offset: 0 })
        );
        assert_eq!(
            TextList::parse(b"Bad Key=1\0", &l),
            Err(TextError::BadKeyName { offset: 0 })
        );
        let long_key = format!("K{}=1\0", "k".repeat(63));
        assert!(matches!(
            TextList::parse(long_key.as_bytes(), &l),
            Err(TextError::BadKeyName { .. })
        ));
        let ok_key = format!("K{}=1\0", "k".repeat(62));
        assert!(TextList::parse(ok_key.as_bytes(), &l).is_ok());
        assert_eq!(
            TextList::parse(b"A=\xff\0", &l),
            Err(TextError::NotUtf8 { offset: 0 })
        );
        let small = TextLimits {
            max_value_len: 4,
            max_total_len: 32,
            max_pairs: 2,
            ..l
        };
        assert!(matches!(
            TextList::parse(b"A=12345\0", &small),
            Err(TextError::ValueTooLong { len: 5, .. })
        ));
        assert!(matches!(
            TextList::parse(&[b'A'; 40], &small),
            Err(TextError::TooLong { len: 40, max: 32 })
        ));
        assert_eq!(
            TextList::parse(b"A=1\0B=2\0C=3\0", &small),
            Err(TextError::TooManyPairs { max: 2 })
        );
        // Stray NULs are tolerated.
        assert_eq!(TextList::parse(b"\0A=1\0\0", &l).unwrap().len(), 1);
    }

    #[test]
    fn reassembly_across_pdus_with_cap() {
        let wire = b"TargetName=iqn.2024-01.io.gyre:disk1\0TargetAddress=10.0.0.1:3260,1\0";
        let mut r = TextReassembly::new(1024);
        let mut whole = None;
        for (chunk, more) in split_text(wire, 10) {
            assert!(chunk.len() <= 10);
            whole = r.push(chunk, more).unwrap();
            assert_eq!(whole.is_none(), more);
        }
        assert_eq!(whole.unwrap(), wire.to_vec());
        assert!(!r.in_progress());
        let mut r = TextReassembly::new(16);
        assert_eq!(r.push(&[b'a'; 10], true), Ok(None));
        assert_eq!(
            r.push(&[b'a'; 10], true),
            Err(TextError::TooLong { len: 20, max: 16 })
        );
        assert_eq!(
            split_text(b"", 8).collect::<Vec<_>>(),
            vec![(&b""[..], false)]
        );
    }

    #[test]
    fn numbers_booleans_binary() {
        assert_eq!(parse_number("8192"), Ok(8192));
        assert_eq!(parse_number("0x2000"), Ok(8192));
        assert_eq!(parse_number("0X20"), Ok(32));
        assert_eq!(parse_number("18446744073709551615"), Ok(u64::MAX));
        for bad in ["", "-1", "+5", "12a", "0x", "18446744073709551616", " 1"] {
            assert_eq!(parse_number(bad), Err(ValueError::NotNumber), "{bad:?}");
        }
        assert_eq!(parse_bool("Yes"), Ok(true));
        assert_eq!(parse_bool("No"), Ok(false));
        assert_eq!(parse_bool("yes"), Err(ValueError::NotBoolean));
        assert_eq!(parse_binary("0x0aFF"), Ok(vec![0x0a, 0xff]));
        assert_eq!(parse_binary("0xabc"), Ok(vec![0x0a, 0xbc]));
        assert_eq!(parse_binary("0bAQID"), Ok(vec![1, 2, 3]));
        assert_eq!(parse_binary("0BAQI="), Ok(vec![1, 2]));
        assert_eq!(parse_binary("0bAQ=="), Ok(vec![1]));
        for bad in ["0x", "0xzz", "abc", "0bAQ", "0bA===", "0bAQ==AQID", "0b"] {
            assert_eq!(parse_binary(bad), Err(ValueError::NotBinary), "{bad:?}");
        }
        assert_eq!(hex_value(&[0x00, 0xab, 0x10]), "0x00ab10");
    }
}
