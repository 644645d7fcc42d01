//! The target's object model: what a subsystem, a namespace, a listener and an allowed host
//! are. The JSON-RPC methods and the saved configuration carry exactly these.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// The well-known NQN of the discovery subsystem.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Default NVMe/TCP port.
pub const DEFAULT_PORT: u16 = 4420;

/// A subsystem to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsystemConfig {
    pub nqn: String,
    /// Up to 20 ASCII characters; generated from the NQN when empty.
    pub serial_number: String,
    /// Up to 40 ASCII characters.
    pub model_number: String,
    /// Any host may connect (else only `hosts`).
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    /// Highest NSID the subsystem accepts.
    pub max_namespaces: u32,
}

impl SubsystemConfig {
    pub fn new(nqn: &str) -> Self {
        Self {
            nqn: nqn.to_string(),
            serial_number: String::new(),
            model_number: "Gyre NVMe-oF controller".to_string(),
            allow_any_host: false,
            hosts: Vec::new(),
            max_namespaces: 32,
        }
    }
}

/// A namespace to add to a subsystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceConfig {
    pub bdev: String,
    /// 0 picks the lowest free NSID.
    pub nsid: u32,
    /// ANA group (1-based); 0 means "the NSID's own group".
    pub ana_group: u32,
    /// Identifiers; derived from the bdev's UUID when absent.
    pub uuid: Option<[u8; 16]>,
    pub nguid: Option<[u8; 16]>,
    pub eui64: Option<[u8; 8]>,
}

impl NamespaceConfig {
    pub fn new(bdev: &str) -> Self {
        Self {
            bdev: bdev.to_string(),
            nsid: 0,
            ana_group: 0,
            uuid: None,
            nguid: None,
            eui64: None,
        }
    }
}

/// Where a listener listens. TCP is the only transport for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenAddress(pub SocketAddr);

impl ListenAddress {
    pub fn new(ip: IpAddr, port: u16) -> Self {
        Self(SocketAddr::new(ip, port))
    }

    pub fn is_ipv6(&self) -> bool {
        self.0.is_ipv6()
    }

    /// TRADDR as the discovery log carries it (no brackets for IPv6).
    pub fn traddr(&self) -> String {
        self.0.ip().to_string()
    }

    /// TRSVCID as the discovery log carries it.
    pub fn trsvcid(&self) -> String {
        self.0.port().to_string()
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tcp:{}", self.0)
    }
}

impl FromStr for ListenAddress {
    type Err = String;

    /// `127.0.0.1:4420`, `[::1]:4420`, or an address alone for the default port.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.strip_prefix("tcp:").unwrap_or(s);
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Self(sa));
        }
        let bare = s.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>()
            .map(|ip| Self::new(ip, DEFAULT_PORT))
            .map_err(|_| format!("'{s}' is not an address like 127.0.0.1:4420 or [::1]:4420"))
    }
}

/// Asymmetric namespace access state of an ANA group as seen through one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnaState {
    Optimized,
    NonOptimized,
    Inaccessible,
    PersistentLoss,
    Change,
}

impl AnaState {
    /// The value in the ANA log page.
    pub fn code(self) -> u8 {
        match self {
            AnaState::Optimized => 0x1,
            AnaState::NonOptimized => 0x2,
            AnaState::Inaccessible => 0x3,
            AnaState::PersistentLoss => 0x4,
            AnaState::Change => 0xF,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AnaState::Optimized => "optimized",
            AnaState::NonOptimized => "non_optimized",
            AnaState::Inaccessible => "inaccessible",
            AnaState::PersistentLoss => "persistent_loss",
            AnaState::Change => "change",
        }
    }

    /// Whether I/O may be served in this state.
    pub fn serves_io(self) -> bool {
        matches!(self, AnaState::Optimized | AnaState::NonOptimized)
    }
}

impl FromStr for AnaState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "optimized" => AnaState::Optimized,
            "non_optimized" | "non-optimized" => AnaState::NonOptimized,
            "inaccessible" => AnaState::Inaccessible,
            "persistent_loss" | "persistent-loss" => AnaState::PersistentLoss,
            "change" => AnaState::Change,
            _ => {
                return Err(format!(
                    "'{s}' is not an ANA state (optimized, non_optimized, inaccessible, persistent_loss, change)"
                ))
            }
        })
    }
}

/// Checks an NQN against the NVMe rules: at most 223 bytes, `nqn.yyyy-mm.reverse.domain:...`
/// or the UUID form, printable ASCII/UTF-8 without NUL.
pub fn validate_nqn(nqn: &str) -> Result<(), String> {
    if nqn.is_empty() || nqn.len() > 223 {
        return Err(format!("NQN '{nqn}' must be 1 to 223 bytes long"));
    }
    if nqn.contains('\0') {
        return Err("NQN contains a NUL byte".to_string());
    }
    if nqn == DISCOVERY_NQN {
        return Ok(());
    }
    if let Some(rest) = nqn.strip_prefix("nqn.2014-08.org.nvmexpress:uuid:") {
        return if rest.len() == 36 {
            Ok(())
        } else {
            Err(format!(
                "NQN '{nqn}': the UUID form needs a 36-character UUID"
            ))
        };
    }
    let Some(rest) = nqn.strip_prefix("nqn.") else {
        return Err(format!("NQN '{nqn}' must start with 'nqn.'"));
    };
    let date = rest.get(..7).unwrap_or("");
    let date_ok = date.len() == 7
        && date.as_bytes()[4] == b'-'
        && date[..4].bytes().all(|b| b.is_ascii_digit())
        && date[5..].bytes().all(|b| b.is_ascii_digit());
    if !date_ok || rest.as_bytes().get(7) != Some(&b'.') || rest.len() <= 8 {
        return Err(format!(
            "NQN '{nqn}' must look like nqn.yyyy-mm.reverse.domain[:name]"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nqn_rules() {
        assert!(validate_nqn("nqn.2016-06.io.gyre:vol1").is_ok());
        assert!(validate_nqn(DISCOVERY_NQN).is_ok());
        assert!(validate_nqn(
            "nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427"
        )
        .is_ok());
        assert!(validate_nqn("iqn.2016-06.io.gyre:vol1").is_err());
        assert!(validate_nqn("nqn.16-06.io.gyre").is_err());
        assert!(validate_nqn("nqn.2016-06").is_err());
        assert!(validate_nqn(&format!("nqn.2016-06.io.gyre:{}", "x".repeat(220))).is_err());
    }

    #[test]
    fn listen_address_forms() {
        let a: ListenAddress = "127.0.0.1:4421".parse().unwrap();
        assert_eq!(a.trsvcid(), "4421");
        let b: ListenAddress = "[::1]:4420".parse().unwrap();
        assert!(b.is_ipv6());
        assert_eq!(b.traddr(), "::1");
        let c: ListenAddress = "127.0.0.1".parse().unwrap();
        assert_eq!(c.0.port(), DEFAULT_PORT);
        assert!("localhost:x".parse::<ListenAddress>().is_err());
    }

    #[test]
    fn ana_state_names_round_trip() {
        for s in [
            AnaState::Optimized,
            AnaState::NonOptimized,
            AnaState::Inaccessible,
            AnaState::PersistentLoss,
            AnaState::Change,
        ] {
            assert_eq!(s.name().parse::<AnaState>().unwrap(), s);
        }
    }
}
