//! The discovery log: what a host may reach.
//!
//! Each host sees one entry per (subsystem it is allowed on, listener of that subsystem), plus
//! one "current discovery subsystem" entry per listening address, under a generation counter
//! that moves on every change so hosts can tell a page read across changes.

use gyre_nvme::log::{sectype, subtype, treq, DiscoveryLogEntry, DiscoveryLogWriter, LogWindow};
use gyre_nvme::Nqn;

use crate::config::{ListenAddress, DISCOVERY_NQN};
use crate::target::TargetShared;

/// The entries `hostnqn` may see, in a stable order.
pub fn entries(target: &TargetShared, hostnqn: &str) -> Vec<DiscoveryLogEntry> {
    let mut out = Vec::new();
    let mut addrs: Vec<ListenAddress> = Vec::new();
    let asqsz = target.options.max_admin_queue_depth;
    for sub in target.subsystems_snapshot() {
        let listeners = sub.listeners();
        addrs.extend(listeners.iter().map(|(a, _)| *a));
        if !sub.host_allowed(hostnqn) {
            continue;
        }
        let Ok(nqn) = Nqn::new(&sub.nqn) else {
            continue;
        };
        for (addr, _) in listeners {
            out.push(entry(target, subtype::NVME, &nqn, &addr, asqsz));
        }
    }
    addrs.sort();
    addrs.dedup();
    if let Ok(nqn) = Nqn::new(DISCOVERY_NQN) {
        for addr in addrs {
            out.push(entry(
                target,
                subtype::CURRENT_DISCOVERY,
                &nqn,
                &addr,
                asqsz,
            ));
        }
    }
    out
}

fn entry(
    target: &TargetShared,
    kind: u8,
    nqn: &Nqn,
    addr: &ListenAddress,
    asqsz: u16,
) -> DiscoveryLogEntry {
    let mut e = DiscoveryLogEntry::tcp(
        kind,
        nqn,
        &addr.traddr(),
        &addr.trsvcid(),
        addr.is_ipv6(),
        target.port_id(addr),
        asqsz,
        sectype::NONE,
    );
    // We honour "disable SQ flow control" in Connect.
    e.treq = treq::SECURE_CHANNEL_NOT_REQUIRED | treq::DISABLE_SQ_FLOW_CONTROL;
    e
}

/// Writes the page (header and entries) into a window of it.
pub fn write_log_page(target: &TargetShared, hostnqn: &str, w: &mut LogWindow<'_>) {
    let genctr = target.genctr.load(std::sync::atomic::Ordering::Acquire);
    let list = entries(target, hostnqn);
    DiscoveryLogWriter::header(w, genctr, list.len() as u64);
    for e in &list {
        DiscoveryLogWriter::entry(w, e);
    }
}
