//! Discovery: what subsystems a discovery controller offers this host, and where.
//!
//! The log is read in pieces — the header, then the entries a page at a time by offset — and
//! the header is read again at the end: if the generation counter moved, the log changed while
//! we read and the whole read starts over (a bounded number of times).

use std::net::SocketAddr;

use gyre_nvme::log::{DiscoveryLogEntry, DiscoveryLogHeader, LogPageId};
use gyre_nvme::Nqn;

use super::controller::Controller;
use super::error::HostError;
use super::options::HostOptions;

/// Entries read per Get Log Page when paging.
pub const DEFAULT_ENTRIES_PER_PAGE: u32 = 16;
/// Reads of the whole log before giving up on a log that keeps changing.
const MAX_GENERATION_RETRIES: usize = 8;
/// Entries accepted at most (1024 bytes each: 4 MiB of log).
const MAX_ENTRIES: u64 = 4096;

/// One discovery log entry, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryEntry {
    /// Transport type (3 = TCP).
    pub trtype: u8,
    /// Address family (1 = IPv4, 2 = IPv6).
    pub adrfam: u8,
    /// Subsystem type (2 = NVM subsystem, 3 = current discovery subsystem, 1 = referral).
    pub subtype: u8,
    pub treq: u8,
    pub portid: u16,
    pub cntlid: u16,
    pub asqsz: u16,
    pub eflags: u16,
    pub subnqn: String,
    /// Transport address (an IP address for TCP).
    pub traddr: String,
    /// Transport service ID (the TCP port).
    pub trsvcid: String,
    /// TCP security type (TSAS byte 0).
    pub sectype: u8,
}

impl DiscoveryEntry {
    fn from_wire(e: &DiscoveryLogEntry) -> Result<Self, HostError> {
        let subnqn = e.subnqn().map_err(|err| HostError::InvalidResponse {
            command: "Get Log Page (discovery)",
            reason: format!("entry SUBNQN: {err}"),
        })?;
        Ok(DiscoveryEntry {
            trtype: e.trtype,
            adrfam: e.adrfam,
            subtype: e.subtype,
            treq: e.treq,
            portid: e.portid,
            cntlid: e.cntlid,
            asqsz: e.asqsz,
            eflags: e.eflags,
            subnqn: subnqn.as_str().to_string(),
            traddr: e.traddr_str().to_string(),
            trsvcid: e.trsvcid_str().to_string(),
            sectype: e.tsas[0],
        })
    }

    /// The TCP socket address this entry names, when it is an IP transport address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let port: u16 = self.trsvcid.trim().parse().ok()?;
        let ip: std::net::IpAddr = self.traddr.trim().parse().ok()?;
        Some(SocketAddr::new(ip, port))
    }
}

/// A consistent read of a discovery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryLog {
    pub genctr: u64,
    pub entries: Vec<DiscoveryEntry>,
}

/// Connects to the discovery controller at `addr`, reads its log and disconnects.
pub fn discover(addr: SocketAddr, opts: &HostOptions) -> Result<DiscoveryLog, HostError> {
    discover_paged(addr, opts, DEFAULT_ENTRIES_PER_PAGE)
}

/// [`discover`] reading `entries_per_page` entries per Get Log Page.
pub fn discover_paged(
    addr: SocketAddr,
    opts: &HostOptions,
    entries_per_page: u32,
) -> Result<DiscoveryLog, HostError> {
    let mut ctrl = Controller::connect(addr, Nqn::DISCOVERY, opts)?;
    let log = read_discovery_log(&mut ctrl, entries_per_page);
    let _ = ctrl.disconnect();
    log
}

/// Reads the discovery log through an open discovery controller.
pub fn read_discovery_log(
    ctrl: &mut Controller,
    entries_per_page: u32,
) -> Result<DiscoveryLog, HostError> {
    let per_page = entries_per_page.clamp(1, 64);
    for _ in 0..MAX_GENERATION_RETRIES {
        let header = read_header(ctrl)?;
        if header.recfmt != 0 {
            return Err(HostError::InvalidResponse {
                command: "Get Log Page (discovery)",
                reason: format!("unknown record format {}", header.recfmt),
            });
        }
        if header.numrec > MAX_ENTRIES {
            return Err(HostError::InvalidResponse {
                command: "Get Log Page (discovery)",
                reason: format!("{} records is more than this host reads", header.numrec),
            });
        }
        let mut entries = Vec::with_capacity(header.numrec as usize);
        let mut index = 0u64;
        while index < header.numrec {
            let count = (header.numrec - index).min(u64::from(per_page)) as u32;
            let offset = DiscoveryLogHeader::SIZE as u64 + index * DiscoveryLogEntry::SIZE as u64;
            let len = count * DiscoveryLogEntry::SIZE as u32;
            let page = ctrl.get_log_page(LogPageId::DISCOVERY, 0, offset, len)?;
            for raw in page.chunks_exact(DiscoveryLogEntry::SIZE) {
                let e = DiscoveryLogEntry::decode(raw)
                    .map_err(|e| HostError::decode("Get Log Page (discovery)", e))?;
                entries.push(DiscoveryEntry::from_wire(&e)?);
            }
            index += u64::from(count);
        }
        let again = read_header(ctrl)?;
        if again.genctr == header.genctr && again.numrec == header.numrec {
            return Ok(DiscoveryLog {
                genctr: header.genctr,
                entries,
            });
        }
        tracing::debug!(
            before = header.genctr,
            after = again.genctr,
            "nvmf host: discovery log changed while reading; reading it again"
        );
    }
    Err(HostError::InvalidResponse {
        command: "Get Log Page (discovery)",
        reason: "the log kept changing while it was read".into(),
    })
}

fn read_header(ctrl: &mut Controller) -> Result<DiscoveryLogHeader, HostError> {
    let raw = ctrl.get_log_page(LogPageId::DISCOVERY, 0, 0, DiscoveryLogHeader::SIZE as u32)?;
    DiscoveryLogHeader::decode(&raw).map_err(|e| HostError::decode("Get Log Page (discovery)", e))
}
