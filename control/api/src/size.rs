//! Sizes as users write them: a number of bytes (`4096`, `"4096"`) or a number with a binary
//! unit (`"512K"`, `"512M"`, `"1G"`, `"2T"`; `KiB`/`KB`/`k` and so on are accepted too, all
//! meaning powers of 1024). Serialized as a plain number of bytes.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const EXPECTED: &str = "a size like \"1G\" or a number of bytes";

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Size(pub u64);

impl Size {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {EXPECTED}, got \"{0}\"")]
pub struct SizeError(pub String);

impl FromStr for Size {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SizeError(s.to_string());
        let t = s.trim();
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        if num.is_empty() {
            return Err(bad());
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            "p" | "pb" | "pib" => 50,
            _ => return Err(bad()),
        };
        n.checked_mul(1u64 << shift).map(Size).ok_or_else(bad)
    }
}

impl fmt::Display for Size {
    /// The largest binary unit that divides the size exactly (`1G`, `1536M`, `4097`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u32, &str); 5] = [(50, "P"), (40, "T"), (30, "G"), (20, "M"), (10, "K")];
        for (shift, unit) in UNITS {
            let m = 1u64 << shift;
            if self.0 >= m && self.0 & (m - 1) == 0 {
                return write!(f, "{}{}", self.0 / m, unit);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = Size;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
        Ok(Size(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
        u64::try_from(v)
            .map(Size)
            .map_err(|_| E::custom(format!("expected {EXPECTED}, got {v}")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Size, E> {
        Err(E::custom(format!("expected {EXPECTED}, got {v}")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
        v.parse().map_err(|e: SizeError| E::custom(e))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_units() {
        assert_eq!("4096".parse::<Size>(), Ok(Size(4096)));
        assert_eq!("512M".parse::<Size>(), Ok(Size(512 << 20)));
        assert_eq!("1G".parse::<Size>(), Ok(Size(1 << 30)));
        assert_eq!("1g".parse::<Size>(), Ok(Size(1 << 30)));
        assert_eq!("1GiB".parse::<Size>(), Ok(Size(1 << 30)));
        assert_eq!("4k".parse::<Size>(), Ok(Size(4096)));
        assert_eq!(" 2 T ".parse::<Size>(), Ok(Size(2 << 40)));
        assert_eq!("0".parse::<Size>(), Ok(Size(0)));
    }

    #[test]
    fn rejects_nonsense() {
        for s in [
            "",
            "G",
            "1Q",
            "-1",
            "1.5G",
            "1G1",
            "99999999999999999999",
            "16384P",
        ] {
            assert!(s.parse::<Size>().is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn deserializes_strings_and_numbers() {
        assert_eq!(
            serde_json::from_value::<Size>(json!("1G")).unwrap(),
            Size(1 << 30)
        );
        assert_eq!(
            serde_json::from_value::<Size>(json!(512)).unwrap(),
            Size(512)
        );
        let e = serde_json::from_value::<Size>(json!(true))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected a size like \"1G\" or a number of bytes"),
            "{e}"
        );
        let e = serde_json::from_value::<Size>(json!("1Q"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "expected a size like \"1G\" or a number of bytes, got \"1Q\""
        );
        assert!(serde_json::from_value::<Size>(json!(-5)).is_err());
        assert!(serde_json::from_value::<Size>(json!(1.5)).is_err());
        assert_eq!(
            serde_json::to_value(Size(1 << 30)).unwrap(),
            json!(1073741824)
        );
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        assert_eq!(Size(1 << 30).to_string(), "1G");
        assert_eq!(Size(1536 << 20).to_string(), "1536M");
        assert_eq!(Size(4097).to_string(), "4097");
        assert_eq!(Size(0).to_string(), "0");
    }
}
