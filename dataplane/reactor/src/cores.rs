//! Core lists as users write them: `0-1`, `1,3`, `0x3`, `2`.

use std::fmt;
use std::str::FromStr;

/// Upper bound on a core number we accept; guards against `0-4000000000` exhausting memory.
const MAX_CORE: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreListError {
    #[error("empty core list")]
    Empty,
    #[error("invalid core list item '{0}': expected N, N-M or a hex mask 0x..")]
    Invalid(String),
    #[error("core {0} appears twice in the core list")]
    Duplicate(usize),
    #[error("core {0} is out of range (max {MAX_CORE})")]
    OutOfRange(usize),
}

/// An ordered list of distinct CPU core numbers; reactor `i` runs on `cores()[i]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreList(Vec<usize>);

impl CoreList {
    pub fn new(cores: Vec<usize>) -> Result<Self, CoreListError> {
        if cores.is_empty() {
            return Err(CoreListError::Empty);
        }
        let mut seen = std::collections::BTreeSet::new();
        for &c in &cores {
            if c > MAX_CORE {
                return Err(CoreListError::OutOfRange(c));
            }
            if !seen.insert(c) {
                return Err(CoreListError::Duplicate(c));
            }
        }
        Ok(CoreList(cores))
    }

    /// The first `n` cores the process may run on.
    pub fn first_available(n: usize) -> Result<Self, CoreListError> {
        let ids = core_affinity::get_core_ids().unwrap_or_default();
        let cores: Vec<usize> = ids.into_iter().map(|c| c.id).take(n).collect();
        Self::new(cores)
    }

    pub fn cores(&self) -> &[usize] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for CoreList {
    type Err = CoreListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(CoreListError::Empty);
        }
        if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            return parse_mask(hex);
        }
        let mut cores = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            let bad = || CoreListError::Invalid(item.to_string());
            match item.split_once('-') {
                Some((a, b)) => {
                    let a: usize = a.trim().parse().map_err(|_| bad())?;
                    let b: usize = b.trim().parse().map_err(|_| bad())?;
                    if a > b {
                        return Err(bad());
                    }
                    if b > MAX_CORE {
                        return Err(CoreListError::OutOfRange(b));
                    }
                    cores.extend(a..=b);
                }
                None => cores.push(item.parse().map_err(|_| bad())?),
            }
        }
        CoreList::new(cores)
    }
}

fn parse_mask(hex: &str) -> Result<CoreList, CoreListError> {
    let bad = || CoreListError::Invalid(format!("0x{hex}"));
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut cores = Vec::new();
    // Walk nibbles from the least significant end so masks of any width work.
    for (nibble_index, ch) in hex.chars().rev().enumerate() {
        let v = ch.to_digit(16).ok_or_else(bad)?;
        for bit in 0..4 {
            if v & (1 << bit) != 0 {
                let core = nibble_index * 4 + bit;
                if core > MAX_CORE {
                    return Err(CoreListError::OutOfRange(core));
                }
                cores.push(core);
            }
        }
    }
    CoreList::new(cores)
}

impl fmt::Display for CoreList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|c| c.to_string()).collect();
        write!(f, "{}", parts.join(","))
    }
}

/// The core the calling thread is running on right now.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_lists_and_masks() {
        assert_eq!("0-1".parse::<CoreList>().unwrap().cores(), &[0, 1]);
        assert_eq!("1,3".parse::<CoreList>().unwrap().cores(), &[1, 3]);
        assert_eq!("0x3".parse::<CoreList>().unwrap().cores(), &[0, 1]);
        assert_eq!("0xA".parse::<CoreList>().unwrap().cores(), &[1, 3]);
        assert_eq!("0x100".parse::<CoreList>().unwrap().cores(), &[8]);
        assert_eq!("2".parse::<CoreList>().unwrap().cores(), &[2]);
        assert_eq!("0-2,5".parse::<CoreList>().unwrap().cores(), &[0, 1, 2, 5]);
    }

    #[test]
    fn rejects_bad_lists() {
        assert_eq!("".parse::<CoreList>(), Err(CoreListError::Empty));
        assert_eq!("0x0".parse::<CoreList>(), Err(CoreListError::Empty));
        assert!(matches!(
            "a".parse::<CoreList>(),
            Err(CoreListError::Invalid(_))
        ));
        assert!(matches!(
            "3-1".parse::<CoreList>(),
            Err(CoreListError::Invalid(_))
        ));
        assert!(matches!(
            "0xZ".parse::<CoreList>(),
            Err(CoreListError::Invalid(_))
        ));
        assert_eq!("1,1".parse::<CoreList>(), Err(CoreListError::Duplicate(1)));
        assert_eq!(
            "0-999999999".parse::<CoreList>(),
            Err(CoreListError::OutOfRange(999999999))
        );
    }
}
