//! Parsing of the quantities users type: sizes (`4k`, `1G`, `128KiB`), durations (`10s`,
//! `500ms`, `1m`), percentages (`70`, `70%`); and their human formatting.

use std::time::Duration;

/// A byte size with an optional binary unit: `4096`, `4k`, `4K`, `4KiB`, `4kb`, `1M`, `1G`,
/// `2T`. Every unit is a power of 1024, as in fio.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!(
            "invalid size '{s}': expected a number with an optional unit (4k, 1M, 1G)"
        ));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size '{s}': number too large"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "invalid size '{s}': unknown unit '{unit}' (use k, M, G or T)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("invalid size '{s}': larger than 2^64 bytes"))
}

/// A non-zero size (for I/O sizes and device sizes).
pub fn parse_nonzero_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err(format!("invalid size '{s}': must not be zero")),
        n => Ok(n),
    }
}

/// A duration: `10s`, `1.5s`, `500ms`, `250us`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = |why: &str| format!("invalid duration '{s}': {why}");
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() || num == "." {
        return Err(bad(
            "expected a number with an optional unit (10s, 500ms, 1m)",
        ));
    }
    let v: f64 = num.parse().map_err(|_| bad("not a number"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        u => return Err(bad(&format!("unknown unit '{u}' (use us, ms, s, m or h)"))),
    };
    // A year is more than any benchmark needs and keeps tick arithmetic far from overflow.
    if !secs.is_finite() || secs > 365.0 * 86400.0 {
        return Err(bad("too long"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| bad("out of range"))
}

/// A positive duration (for `--time`).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("invalid duration '{s}': must be more than zero"));
    }
    Ok(d)
}

/// A percentage 0..=100, with or without `%`.
pub fn parse_percent(s: &str) -> Result<u8, String> {
    let t = s.trim();
    let t = t.strip_suffix('%').unwrap_or(t).trim();
    match t.parse::<u8>() {
        Ok(v) if v <= 100 => Ok(v),
        _ => Err(format!(
            "invalid percentage '{s}': expected a whole number from 0 to 100"
        )),
    }
}

/// `4 KiB`, `1 GiB`, `512 B`, `1.50 MiB`.
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut v = n;
    while unit < UNITS.len() - 1 && v >= 1024 && v.is_multiple_of(1024) {
        v /= 1024;
        unit += 1;
    }
    if v < 1024 || unit == UNITS.len() - 1 {
        return format!("{v} {}", UNITS[unit]);
    }
    // Not an exact multiple: show two decimals in the largest fitting unit.
    let mut f = n as f64;
    let mut unit = 0;
    while unit < UNITS.len() - 1 && f >= 1024.0 {
        f /= 1024.0;
        unit += 1;
    }
    format!("{f:.2} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("4kb"), Ok(4096));
        assert_eq!(parse_size("128k"), Ok(128 << 10));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size(" 8 "), Ok(8));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512b"), Ok(512));
        for bad in [
            "",
            "k",
            "-4k",
            "4x",
            "1.5G",
            "4 kk",
            "0x10",
            "99999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "'{bad}' should be rejected");
        }
        assert!(
            parse_size("16777216T").is_err(),
            "2^64 bytes overflows and is rejected"
        );
        assert!(parse_nonzero_size("0").is_err());
        assert!(parse_nonzero_size("0k").is_err());
        assert_eq!(parse_nonzero_size("1k"), Ok(1024));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "-1s", "10x", "1e3", ".", "1..2s", "100000000h"] {
            assert!(parse_duration(bad).is_err(), "'{bad}' should be rejected");
        }
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(parse_positive_duration("1s"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn percentages() {
        assert_eq!(parse_percent("70"), Ok(70));
        assert_eq!(parse_percent("70%"), Ok(70));
        assert_eq!(parse_percent("0"), Ok(0));
        assert_eq!(parse_percent("100"), Ok(100));
        for bad in ["101", "-1", "", "%", "50.5", "abc", "1000"] {
            assert!(parse_percent(bad).is_err(), "'{bad}' should be rejected");
        }
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(1536 << 10), "1.50 MiB");
    }
}
