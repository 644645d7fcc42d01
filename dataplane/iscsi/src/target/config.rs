//! What an operator configures: portal groups, initiator groups, targets with their LUN maps
//! and CHAP settings. Plain data, validated here so the control path and the daemon share the
//! same rules.

use std::net::{IpAddr, SocketAddr};

use crate::chap;

use super::IscsiTargetError;

/// A portal group: the addresses a target is reachable through, under one tag
/// (TargetPortalGroupTag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalGroupConfig {
    pub tag: u16,
    pub portals: Vec<SocketAddr>,
}

/// An IP network (`addr/prefix`) an initiator may connect from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Network {
    /// Parses `ANY`, an address, or `address/prefix`.
    pub fn parse(s: &str) -> Result<Network, IscsiTargetError> {
        let bad = || IscsiTargetError::InvalidConfig(format!("'{s}' is not a network"));
        if s.eq_ignore_ascii_case("any") {
            return Ok(Network {
                addr: IpAddr::from([0u8; 4]),
                prefix: 0,
            });
        }
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Network { addr, prefix })
    }

    /// True when `ip` lies in this network (prefix 0 matches every address of both families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.prefix == 0 {
            return true;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX << (32 - u32::from(self.prefix));
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX << (128 - u32::from(self.prefix));
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix == 0 {
            return f.write_str("ANY");
        }
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Who may log in: initiator names (`ANY` for everyone) from networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiatorGroupConfig {
    pub tag: u16,
    pub initiators: Vec<String>,
    pub networks: Vec<Network>,
}

impl InitiatorGroupConfig {
    pub fn allows(&self, initiator: &str, ip: IpAddr) -> bool {
        let named = self
            .initiators
            .iter()
            .any(|n| n.eq_ignore_ascii_case("any") || n.eq_ignore_ascii_case(initiator));
        named && self.networks.iter().any(|n| n.contains(ip))
    }
}

/// Authentication of a target or of discovery sessions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthConfig {
    /// CHAP required (otherwise AuthMethod=None).
    pub require_chap: bool,
    /// Mutual CHAP required (implies CHAP).
    pub mutual_chap: bool,
    /// The name and secret the initiator proves.
    pub user: String,
    pub secret: String,
    /// The name and secret the target answers a mutual challenge with.
    pub mutual_user: String,
    pub mutual_secret: String,
}

impl AuthConfig {
    pub fn validate(&self) -> Result<(), IscsiTargetError> {
        let bad = |m: &str| Err(IscsiTargetError::InvalidConfig(m.to_string()));
        if self.mutual_chap && !self.require_chap {
            return bad("mutual CHAP requires CHAP");
        }
        if self.require_chap {
            if self.user.is_empty() {
                return bad("CHAP needs a user name");
            }
            if chap::check_secret(self.secret.as_bytes()).is_err() {
                return bad("CHAP secret must be 12 to 255 bytes");
            }
        }
        if self.mutual_chap {
            if self.mutual_user.is_empty() {
                return bad("mutual CHAP needs a target user name");
            }
            if chap::check_secret(self.mutual_secret.as_bytes()).is_err() {
                return bad("mutual CHAP secret must be 12 to 255 bytes");
            }
            if self.mutual_secret == self.secret {
                return bad("mutual CHAP secret must differ from the initiator's secret");
            }
        }
        Ok(())
    }
}

/// One LUN of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunMapping {
    pub lun: u16,
    pub bdev: String,
}

/// Login redirection (RFC 7143 §11.13.5, status class 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// `host:port[,tpgt]`.
    pub address: String,
    pub permanent: bool,
}

/// A target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    pub name: String,
    pub alias: Option<String>,
    pub luns: Vec<LunMapping>,
    pub portal_groups: Vec<u16>,
    pub initiator_groups: Vec<u16>,
    pub auth: AuthConfig,
    pub redirect: Option<Redirect>,
}

impl TargetConfig {
    pub fn new(name: &str) -> Self {
        TargetConfig {
            name: name.to_string(),
            alias: None,
            luns: Vec::new(),
            portal_groups: Vec::new(),
            initiator_groups: Vec::new(),
            auth: AuthConfig::default(),
            redirect: None,
        }
    }
}

/// Checks an iSCSI name (RFC 7143 §4.2.7): `iqn.yyyy-mm.reversed.domain[:...]`, `eui.` +
/// 16 hex digits or `naa.` + 16 or 32 hex digits; at most 223 bytes.
pub fn validate_iscsi_name(name: &str) -> Result<(), IscsiTargetError> {
    let bad = |why: &str| Err(IscsiTargetError::InvalidConfig(format!("'{name}': {why}")));
    if name.is_empty() || name.len() > 223 {
        return bad("an iSCSI name has 1 to 223 bytes");
    }
    let lower = name.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("iqn.") {
        let b = rest.as_bytes();
        let date_ok = b.len() > 8
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..7].iter().all(u8::is_ascii_digit)
            && b[7] == b'.';
        if !date_ok {
            return bad("iqn names start with iqn.yyyy-mm.");
        }
        if !rest
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-:_".contains(&c))
        {
            return bad("iqn names use letters, digits, '.', '-', ':' and '_'");
        }
        return Ok(());
    }
    let hex = |s: &str, lens: &[usize]| {
        lens.contains(&s.len()) && s.bytes().all(|c| c.is_ascii_hexdigit())
    };
    if let Some(rest) = lower.strip_prefix("eui.") {
        return if hex(rest, &[16]) {
            Ok(())
        } else {
            bad("eui. names carry 16 hex digits")
        };
    }
    if let Some(rest) = lower.strip_prefix("naa.") {
        return if hex(rest, &[16, 32]) {
            Ok(())
        } else {
            bad("naa. names carry 16 or 32 hex digits")
        };
    }
    bad("an iSCSI name starts with iqn., eui. or naa.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_by_prefix() {
        let n = Network::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        let any = Network::parse("ANY").unwrap();
        assert!(any.contains("::1".parse().unwrap()));
        assert_eq!(any.to_string(), "ANY");
        let host = Network::parse("127.0.0.1").unwrap();
        assert_eq!(host.prefix, 32);
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
        let v6 = Network::parse("fd00::/8").unwrap();
        assert!(v6.contains("fdab::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("nonsense").is_err());
    }

    #[test]
    fn initiator_groups_need_name_and_network() {
        let g = InitiatorGroupConfig {
            tag: 1,
            initiators: vec!["iqn.2024-01.test:a".into()],
            networks: vec![Network::parse("127.0.0.0/8").unwrap()],
        };
        assert!(g.allows("IQN.2024-01.test:A", "127.0.0.1".parse().unwrap()));
        assert!(!g.allows("iqn.2024-01.test:b", "127.0.0.1".parse().unwrap()));
        assert!(!g.allows("iqn.2024-01.test:a", "10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn iscsi_names() {
        assert!(validate_iscsi_name("iqn.2016-06.io.gyre:malloc0").is_ok());
        assert!(validate_iscsi_name("eui.02004567A425678D").is_ok());
        assert!(validate_iscsi_name("naa.52004567BA64678D").is_ok());
        assert!(validate_iscsi_name("iqn.16-06.io.gyre").is_err());
        assert!(validate_iscsi_name("iqn.2016-06.io gyre").is_err());
        assert!(validate_iscsi_name("eui.1234").is_err());
        assert!(validate_iscsi_name("target0").is_err());
    }

    #[test]
    fn auth_rules() {
        let mut a = AuthConfig {
            require_chap: true,
            user: "u".into(),
            secret: "short".into(),
            ..AuthConfig::default()
        };
        assert!(a.validate().is_err());
        a.secret = "twelve-bytes-ok".into();
        assert!(a.validate().is_ok());
        a.mutual_chap = true;
        a.mutual_user = "t".into();
        a.mutual_secret = a.secret.clone();
        assert!(a.validate().is_err(), "same secret both ways");
        a.mutual_secret = "another-secret-1".into();
        assert!(a.validate().is_ok());
    }
}
