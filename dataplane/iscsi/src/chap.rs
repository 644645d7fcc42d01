//! CHAP (RFC 1994) as iSCSI uses it (RFC 7143 §12.1.3): algorithm 5 (MD5) only,
//! response = MD5(identifier || secret || challenge).
//!
//! Policy: secrets shorter than [`MIN_SECRET_LEN`] (12 bytes, the 96 bits RFC 7143 asks
//! for) are refused on both sides, so a weak secret is found when it is configured
//! or first used, not when someone brute-forces it. A challenge equal to one we issued
//! (a reflection attack) is refused, and so is a challenge shorter than 16 bytes or
//! longer than 1024.

use crate::text::{hex_value, parse_binary, parse_number};
use md5::{Digest, Md5};
use rand::RngCore;
use thiserror::Error;

/// CHAP_A value of MD5.
pub const CHAP_ALGORITHM_MD5: u8 = 5;
/// Shortest secret we accept (RFC 7143 §12.1.3: at least 96 bits).
pub const MIN_SECRET_LEN: usize = 12;
/// Longest secret we accept.
pub const MAX_SECRET_LEN: usize = 255;
/// Length of the challenges we issue.
pub const CHALLENGE_LEN: usize = 16;
/// Challenge lengths we accept from a peer.
pub const MIN_PEER_CHALLENGE_LEN: usize = 16;
pub const MAX_PEER_CHALLENGE_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChapError {
    #[error("CHAP_A offers no supported algorithm (we support 5, MD5)")]
    NoSupportedAlgorithm,
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{key} value is malformed")]
    Malformed { key: &'static str },
    #[error("secret is {len} bytes; at least {min} and at most {max} are required")]
    SecretLength { len: usize, min: usize, max: usize },
    #[error("challenge of {0} bytes is outside 16..=1024")]
    ChallengeLength(usize),
    #[error("the peer returned our own challenge (reflection)")]
    ReflectedChallenge,
    #[error("no secret is configured for CHAP name {0:?}")]
    UnknownName(String),
    #[error("CHAP response does not match")]
    ResponseMismatch,
    #[error("mutual CHAP is required but not available")]
    MutualUnavailable,
    #[error("CHAP name {got:?} is not the expected {expected:?}")]
    UnexpectedName { got: String, expected: String },
}

/// Checks a secret against the length policy.
pub fn check_secret(secret: &[u8]) -> Result<(), ChapError> {
    if secret.len() < MIN_SECRET_LEN || secret.len() > MAX_SECRET_LEN {
        return Err(ChapError::SecretLength {
            len: secret.len(),
            min: MIN_SECRET_LEN,
            max: MAX_SECRET_LEN,
        });
    }
    Ok(())
}

/// MD5(identifier || secret || challenge).
pub fn chap_response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Comparison whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A challenge we issue: identifier and random bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapChallenge {
    pub id: u8,
    pub challenge: Vec<u8>,
}

impl ChapChallenge {
    pub fn generate() -> Self {
        let mut rng = rand::thread_rng();
        let mut challenge = vec![0u8; CHALLENGE_LEN];
        rng.fill_bytes(&mut challenge);
        let mut id = [0u8; 1];
        rng.fill_bytes(&mut id);
        ChapChallenge {
            id: id[0],
            challenge,
        }
    }

    pub fn id_value(&self) -> String {
        self.id.to_string()
    }

    pub fn challenge_value(&self) -> String {
        hex_value(&self.challenge)
    }

    /// Verifies a peer's CHAP_R for this challenge with `secret`.
    pub fn verify(&self, secret: &[u8], response: &[u8]) -> Result<(), ChapError> {
        let expected = chap_response(self.id, secret, &self.challenge);
        if constant_time_eq(&expected, response) {
            Ok(())
        } else {
            Err(ChapError::ResponseMismatch)
        }
    }
}

/// Parses CHAP_A (a list of algorithm numbers) and says whether MD5 is in it.
pub fn offers_md5(chap_a: &str) -> bool {
    chap_a
        .split(',')
        .any(|v| parse_number(v) == Ok(u64::from(CHAP_ALGORITHM_MD5)))
}

/// Parses CHAP_I (0..=255, decimal or hex).
pub fn parse_identifier(v: &str) -> Result<u8, ChapError> {
    parse_number(v)
        .ok()
        .and_then(|n| u8::try_from(n).ok())
        .ok_or(ChapError::Malformed { key: "CHAP_I" })
}

/// Parses a peer's CHAP_C and applies the length limits.
pub fn parse_challenge(v: &str) -> Result<Vec<u8>, ChapError> {
    let c = parse_binary(v).map_err(|_| ChapError::Malformed { key: "CHAP_C" })?;
    if !(MIN_PEER_CHALLENGE_LEN..=MAX_PEER_CHALLENGE_LEN).contains(&c.len()) {
        return Err(ChapError::ChallengeLength(c.len()));
    }
    Ok(c)
}

/// Parses CHAP_R.
pub fn parse_response(v: &str) -> Result<Vec<u8>, ChapError> {
    parse_binary(v).map_err(|_| ChapError::Malformed { key: "CHAP_R" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_response_known_value() {
        // MD5 of the 1 + 12 + 16 bytes, computed independently:
        // printf '\x01secretsecret' + 16 x 0x00 | md5sum
        let r = chap_response(1, b"secretsecret", &[0u8; 16]);
        let mut h = Md5::new();
        let mut all = vec![1u8];
        all.extend_from_slice(b"secretsecret");
        all.extend_from_slice(&[0u8; 16]);
        h.update(&all);
        let direct: [u8; 16] = h.finalize().into();
        assert_eq!(r, direct);
        // RFC 1321 test vector, to pin the MD5 implementation itself.
        let abc: [u8; 16] = Md5::digest(b"abc").into();
        assert_eq!(hex_value(&abc), "0x900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn verify_and_mismatch() {
        let c = ChapChallenge::generate();
        assert_eq!(c.challenge.len(), 16);
        let good = chap_response(c.id, b"twelve-bytes", &c.challenge);
        assert_eq!(c.verify(b"twelve-bytes", &good), Ok(()));
        assert_eq!(
            c.verify(b"twelve-bytez", &good),
            Err(ChapError::ResponseMismatch)
        );
        assert_eq!(
            c.verify(b"twelve-bytes", &good[..15]),
            Err(ChapError::ResponseMismatch)
        );
        // Two challenges are not the same (randomness).
        assert_ne!(ChapChallenge::generate().challenge, c.challenge);
    }

    #[test]
    fn value_parsing_and_policy() {
        assert!(offers_md5("5"));
        assert!(offers_md5("7,5"));
        assert!(!offers_md5("6,7"));
        assert_eq!(parse_identifier("255"), Ok(255));
        assert!(parse_identifier("256").is_err());
        assert_eq!(parse_challenge(&hex_value(&[7u8; 16])), Ok(vec![7u8; 16]));
        assert_eq!(
            parse_challenge("0bAAAAAAAAAAAAAAAAAAAAAA=="),
            Ok(vec![0u8; 16])
        );
        assert_eq!(
            parse_challenge("0x0102"),
            Err(ChapError::ChallengeLength(2))
        );
        assert!(parse_challenge("nothex").is_err());
        assert!(check_secret(b"short").is_err());
        assert!(check_secret(b"exactly12byt").is_ok());
        assert!(check_secret(&[b'a'; 256]).is_err());
    }
}
