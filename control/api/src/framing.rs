//! Finding JSON values in a byte stream. Clients may send requests back to back, with or
//! without whitespace between them; a value may arrive in several reads.

use serde_json::Value;

/// What the start of a buffer holds.
#[derive(Debug)]
pub enum Frame {
    /// A complete value, and how many bytes it (and the whitespace before it) took.
    Value(Value, usize),
    /// Only whitespace, or the beginning of a value: read more.
    Incomplete,
    /// Not JSON. The stream cannot be resynchronised after this.
    Invalid(String),
}

/// Reads the first JSON value from `buf`.
pub fn next_value(buf: &[u8]) -> Frame {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<Value>();
    match it.next() {
        None => Frame::Incomplete,
        Some(Ok(v)) => Frame::Value(v, it.byte_offset()),
        Some(Err(e)) if e.is_eof() => Frame::Incomplete,
        Some(Err(e)) => Frame::Invalid(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn splits_back_to_back_values() {
        let buf = br#" {"a":1}{"b":[2]}
 {"c""#;
        let Frame::Value(v, n) = next_value(buf) else {
            panic!("first value")
        };
        assert_eq!(v, json!({"a": 1}));
        assert_eq!(n, 8);
        let Frame::Value(v, m) = next_value(&buf[n..]) else {
            panic!("second value")
        };
        assert_eq!(v, json!({"b": [2]}));
        assert!(matches!(next_value(&buf[n + m..]), Frame::Incomplete));
        assert!(matches!(next_value(b"   \n"), Frame::Incomplete));
        assert!(matches!(next_value(b""), Frame::Incomplete));
    }

    #[test]
    fn reports_garbage() {
        assert!(matches!(next_value(b"{\"a\" 1}"), Frame::Invalid(_)));
        assert!(matches!(next_value(b"hello"), Frame::Invalid(_)));
        assert!(matches!(next_value(b"}"), Frame::Invalid(_)));
    }
}
