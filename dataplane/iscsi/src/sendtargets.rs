//! SendTargets (RFC 7143 §13.3, appendix C): the text response of a discovery session,
//! `TargetName=` followed by one `TargetAddress=host:port,tpgt` per portal (IPv6 addresses in
//! brackets), and its parsing on the initiator side.
//!
//! The target decides which targets an initiator may see; this module only formats and
//! parses.

use crate::text::{TextList, IRRELEVANT, NOT_UNDERSTOOD, REJECT};
use std::net::IpAddr;
use thiserror::Error;

/// The default iSCSI port.
pub const DEFAULT_PORT: u16 = 3260;

/// A portal: where a target can be reached, and its portal group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portal {
    /// An IP address or a DNS name.
    pub host: String,
    pub port: u16,
    pub portal_group_tag: Option<u16>,
}

impl Portal {
    pub fn new(ip: IpAddr, port: u16, portal_group_tag: u16) -> Self {
        Portal {
            host: ip.to_string(),
            port,
            portal_group_tag: Some(portal_group_tag),
        }
    }

    /// The TargetAddress value: `host:port[,tpgt]`, IPv6 literals in brackets.
    pub fn to_value(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.portal_group_tag {
            Some(t) => format!("{host}:{},{t}", self.port),
            None => format!("{host}:{}", self.port),
        }
    }

    /// Parses a TargetAddress value (port defaults to 3260, the tag is optional).
    pub fn parse(v: &str) -> Result<Portal, SendTargetsError> {
        let bad = || SendTargetsError::BadAddress(v.to_string());
        let (addr, tag) = match v.rsplit_once(',') {
            Some((a, t)) => (a, Some(t.parse::<u16>().map_err(|_| bad())?)),
            None => (v, None),
        };
        let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after {
                "" => DEFAULT_PORT,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(bad)?,
            };
            (h, port)
        } else {
            match addr.split_once(':') {
                Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
                None => (addr, DEFAULT_PORT),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Portal {
            host: host.to_string(),
            port,
            portal_group_tag: tag,
        })
    }
}

/// A target as SendTargets reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredTarget {
    pub name: String,
    pub portals: Vec<Portal>,
}

/// What a SendTargets request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendTargetsQuery {
    /// `SendTargets=All` (discovery sessions only).
    All,
    /// `SendTargets=<iSCSI name>`: that target only.
    Target(String),
    /// `SendTargets=` (empty): the session's own target (normal sessions).
    SessionTarget,
}

impl SendTargetsQuery {
    pub fn parse(v: &str) -> SendTargetsQuery {
        match v {
            "All" => SendTargetsQuery::All,
            "" => SendTargetsQuery::SessionTarget,
            name => SendTargetsQuery::Target(name.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SendTargetsError {
    #[error("TargetAddress {0:?} is malformed")]
    BadAddress(String),
    #[error("TargetAddress before any TargetName")]
    AddressWithoutName,
    #[error("the target answered SendTargets with {0}")]
    Refused(String),
}

/// Builds the text response for `targets` (already filtered for the initiator and query).
pub fn build_response(targets: &[DiscoveredTarget]) -> TextList {
    let mut out = TextList::new();
    for t in targets {
        out.push("TargetName", t.name.clone());
        for p in &t.portals {
            out.push("TargetAddress", p.to_value());
        }
    }
    out
}

/// Parses a SendTargets text response. Keys other than TargetName/TargetAddress (e.g.
/// TargetAlias) are skipped.
pub fn parse_response(list: &TextList) -> Result<Vec<DiscoveredTarget>, SendTargetsError> {
    let mut out: Vec<DiscoveredTarget> = Vec::new();
    for (k, v) in list.iter() {
        match k {
            "SendTargets" if matches!(v, REJECT | IRRELEVANT | NOT_UNDERSTOOD) => {
                return Err(SendTargetsError::Refused(v.to_string()))
            }
            "TargetName" => out.push(DiscoveredTarget {
                name: v.to_string(),
                portals: Vec::new(),
            }),
            "TargetAddress" => {
                let portal = Portal::parse(v)?;
                out.last_mut()
                    .ok_or(SendTargetsError::AddressWithoutName)?
                    .portals
                    .push(portal);
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::TextLimits;

    #[test]
    fn builds_exact_text() {
        let targets = vec![
            DiscoveredTarget {
                name: "iqn.2024-01.io.gyre:disk1".into(),
                portals: vec![
                    Portal::new("10.0.0.1".parse().unwrap(), 3260, 1),
                    Portal::new("fd00::1".parse().unwrap(), 3261, 2),
                ],
            },
            DiscoveredTarget {
                name: "iqn.2024-01.io.gyre:disk2".into(),
                portals: vec![Portal::new("127.0.0.1".parse().unwrap(), 3260, 1)],
            },
        ];
        let text = build_response(&targets).encode();
        assert_eq!(
            text,
            b"TargetName=iqn.2024-01.io.gyre:disk1\0\
              TargetAddress=10.0.0.1:3260,1\0\
              TargetAddress=[fd00::1]:3261,2\0\
              TargetName=iqn.2024-01.io.gyre:disk2\0\
              TargetAddress=127.0.0.1:3260,1\0"
                .to_vec()
        );
        let parsed =
            parse_response(&TextList::parse(&text, &TextLimits::default()).unwrap()).unwrap();
        assert_eq!(parsed, targets);
    }

    #[test]
    fn parses_variants_and_errors() {
        assert_eq!(
            Portal::parse("storage.example.com").unwrap(),
            Portal {
                host: "storage.example.com".into(),
                port: 3260,
                portal_group_tag: None
            }
        );
        assert_eq!(Portal::parse("[::1],5").unwrap().port, 3260);
        assert_eq!(Portal::parse("[::1],5").unwrap().portal_group_tag, Some(5));
        for bad in [
            "", ":3260", "[::1", "[::1]x", "h:port", "h:3260,x", "h:70000",
        ] {
            assert!(Portal::parse(bad).is_err(), "{bad:?}");
        }
        let mut l = TextList::new();
        l.push("TargetAddress", "10.0.0.1:3260,1");
        assert_eq!(
            parse_response(&l),
            Err(SendTargetsError::AddressWithoutName)
        );
        let mut l = TextList::new();
        l.push("SendTargets", "Reject");
        assert!(matches!(
            parse_response(&l),
            Err(SendTargetsError::Refused(_))
        ));
        assert_eq!(SendTargetsQuery::parse("All"), SendTargetsQuery::All);
        assert_eq!(SendTargetsQuery::parse(""), SendTargetsQuery::SessionTarget);
    }
}
