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

#[cfg(test)]
mod tests {
    //! Against a scripted discovery controller whose log changes between the host's reads.

    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Duration;

    use gyre_nvme::log::{subtype, DiscoveryLogEntry, DiscoveryLogHeader};
    use gyre_nvme::Nqn;

    use super::*;

    /// The log page: header (generation, record count) and `n` NVMe/TCP entries.
    fn page(genctr: u64, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; DiscoveryLogHeader::SIZE + n * DiscoveryLogEntry::SIZE];
        let mut h = [0u8; 1024];
        DiscoveryLogHeader {
            genctr,
            numrec: n as u64,
            recfmt: 0,
        }
        .encode(&mut h);
        out[..1024].copy_from_slice(&h);
        for i in 0..n {
            let nqn = Nqn::new(&format!("nqn.2016-06.io.example:g{genctr}-{i}")).unwrap();
            let e = DiscoveryLogEntry::tcp(
                subtype::NVME,
                &nqn,
                &format!("10.0.0.{i}"),
                "4420",
                false,
                1,
                32,
                0,
            );
            let mut b = [0u8; 1024];
            e.encode(&mut b);
            let at = 1024 * (i + 1);
            out[at..at + 1024].copy_from_slice(&b);
        }
        out
    }

    fn le32(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// Serves one host connection: Connect, properties, Identify, Keep Alive, and Get Log
    /// Page of a discovery log that moves to generation 2 (4 entries) at the host's second
    /// header read. Returns the (offset, length) of every log read.
    fn serve(l: TcpListener) -> Vec<(u64, u32)> {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut ic = [0u8; 128];
        s.read_exact(&mut ic).unwrap();
        let mut r = [0u8; 128];
        r[0] = 0x01;
        r[2] = 128;
        r[4] = 128;
        r[12..16].copy_from_slice(&131072u32.to_le_bytes());
        s.write_all(&r).unwrap();
        let mut reads = Vec::new();
        let mut header_reads = 0;
        let mut log = page(1, 3);
        loop {
            let mut ch = [0u8; 8];
            if s.read_exact(&mut ch).is_err() {
                return reads;
            }
            let plen = le32(&ch, 4) as usize;
            let mut rest = vec![0u8; plen - 8];
            s.read_exact(&mut rest).unwrap();
            assert_eq!(ch[0], 0x04, "command capsules only");
            let sqe = &rest[..64];
            let cid = u16::from_le_bytes([sqe[2], sqe[3]]);
            let (cdw10, cdw11, cdw12, cdw13) =
                (le32(sqe, 40), le32(sqe, 44), le32(sqe, 48), le32(sqe, 52));
            let mut dw0: u64 = 0;
            match (sqe[0], sqe[4]) {
                (0x7F, 0x01) => dw0 = 1, // Connect: controller 1
                (0x7F, 0x04) => {
                    dw0 = match cdw11 {
                        0x00 => 31 | (1 << 24) | (1 << 37), // CAP: MQES 31, TO 1, CSS NVM
                        0x08 => 0x0001_0400,                // VS 1.4
                        0x1C => 0x1 | (2 << 2),             // CSTS: RDY, SHST complete
                        _ => 0,
                    }
                }
                (0x7F, 0x00) | (0x18, _) => {}
                (0x06, _) => send_data(&mut s, cid, &[0u8; 4096]),
                (0x02, _) => {
                    let numd = (cdw10 >> 16) | ((cdw11 & 0xFFFF) << 16);
                    let len = (numd + 1) * 4;
                    let lpo = u64::from(cdw12) | (u64::from(cdw13) << 32);
                    assert_eq!(cdw10 & 0xFF, 0x70, "discovery log");
                    if lpo == 0 {
                        header_reads += 1;
                        if header_reads == 2 {
                            log = page(2, 4);
                        }
                    }
                    reads.push((lpo, len));
                    let mut data = vec![0u8; len as usize];
                    let from = (lpo as usize).min(log.len());
                    let to = (lpo as usize + len as usize).min(log.len());
                    data[..to - from].copy_from_slice(&log[from..to]);
                    send_data(&mut s, cid, &data);
                }
                other => panic!("unexpected command {other:?}"),
            }
            let mut resp = [0u8; 24];
            resp[0] = 0x05;
            resp[2] = 24;
            resp[4] = 24;
            resp[8..16].copy_from_slice(&dw0.to_le_bytes());
            resp[20..22].copy_from_slice(&cid.to_le_bytes());
            s.write_all(&resp).unwrap();
        }
    }

    fn send_data(s: &mut std::net::TcpStream, cid: u16, data: &[u8]) {
        let mut h = [0u8; 24];
        h[0] = 0x07;
        h[1] = 0x04;
        h[2] = 24;
        h[3] = 24;
        h[4..8].copy_from_slice(&((24 + data.len()) as u32).to_le_bytes());
        h[8..10].copy_from_slice(&cid.to_le_bytes());
        h[16..20].copy_from_slice(&(data.len() as u32).to_le_bytes());
        s.write_all(&h).unwrap();
        s.write_all(data).unwrap();
    }

    #[test]
    fn a_log_that_changes_while_read_is_read_again_page_by_page() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let target = std::thread::spawn(move || serve(l));
        let log = discover_paged(addr, &HostOptions::default(), 2).expect("discovery");
        let reads = target.join().unwrap();
        assert_eq!(log.genctr, 2);
        let names: Vec<&str> = log.entries.iter().map(|e| e.subnqn.as_str()).collect();
        assert_eq!(
            names,
            [
                "nqn.2016-06.io.example:g2-0",
                "nqn.2016-06.io.example:g2-1",
                "nqn.2016-06.io.example:g2-2",
                "nqn.2016-06.io.example:g2-3"
            ]
        );
        assert_eq!(log.entries[3].traddr, "10.0.0.3");
        assert_eq!(
            log.entries[3].socket_addr(),
            Some("10.0.0.3:4420".parse().unwrap())
        );
        // Generation 1: header, entries 0-1, entry 2, header (now generation 2: start over);
        // then header, entries 0-1, entries 2-3, header.
        assert_eq!(
            reads,
            vec![
                (0, 1024),
                (1024, 2048),
                (3072, 1024),
                (0, 1024),
                (0, 1024),
                (1024, 2048),
                (3072, 2048),
                (0, 1024),
            ]
        );
    }
}
