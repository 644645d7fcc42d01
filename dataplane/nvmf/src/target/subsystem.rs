//! Subsystems and their namespaces, allowed hosts, listeners and ANA states.
//!
//! All of this is control-path state behind a mutex. The I/O path never takes it: a queue pair
//! keeps its own table of the namespaces it can reach (with a bdev channel each) and rebuilds
//! it only when the subsystem's generation number moves (one atomic load per poll).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use gyre_bdev::BdevDesc;

use crate::config::{AnaState, ListenAddress, NamespaceConfig, SubsystemConfig};
use crate::target::controller::Controller;
use crate::NvmfError;

/// What a subsystem is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubsystemKind {
    /// Serves namespaces.
    Nvme,
    /// The discovery subsystem: serves only the discovery log.
    Discovery,
}

/// A namespace: a bdev exported under an NSID.
pub struct Namespace {
    pub nsid: u32,
    pub bdev_name: String,
    pub desc: BdevDesc,
    pub uuid: [u8; 16],
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub ana_group: u32,
}

impl Namespace {
    pub fn config(&self) -> NamespaceConfig {
        NamespaceConfig {
            bdev: self.bdev_name.clone(),
            nsid: self.nsid,
            ana_group: self.ana_group,
            uuid: Some(self.uuid),
            nguid: Some(self.nguid),
            eui64: Some(self.eui64),
        }
    }
}

/// One listener of a subsystem and the ANA state of each group through it.
#[derive(Debug, Clone, Default)]
pub struct ListenerAna {
    /// Groups not named here are optimized.
    pub states: BTreeMap<u32, AnaState>,
}

impl ListenerAna {
    pub fn state(&self, group: u32) -> AnaState {
        self.states
            .get(&group)
            .copied()
            .unwrap_or(AnaState::Optimized)
    }
}

pub(crate) struct SubsystemState {
    pub allow_any_host: bool,
    pub hosts: BTreeSet<String>,
    pub namespaces: BTreeMap<u32, Arc<Namespace>>,
    pub listeners: BTreeMap<ListenAddress, ListenerAna>,
    pub controllers: HashMap<u16, Arc<Controller>>,
}

/// An NVM subsystem (or the discovery subsystem).
pub struct Subsystem {
    pub nqn: String,
    pub kind: SubsystemKind,
    pub serial_number: String,
    pub model_number: String,
    pub max_namespaces: u32,
    /// Moves whenever namespaces or ANA states change; queue pairs then refresh their tables.
    generation: AtomicU64,
    /// ANA change count for the ANA log page.
    ana_change_count: AtomicU64,
    state: Mutex<SubsystemState>,
}

impl Subsystem {
    pub(crate) fn new(kind: SubsystemKind, cfg: &SubsystemConfig) -> Self {
        let serial = if cfg.serial_number.is_empty() {
            derive_serial(&cfg.nqn)
        } else {
            cfg.serial_number.clone()
        };
        Self {
            nqn: cfg.nqn.clone(),
            kind,
            serial_number: serial,
            model_number: cfg.model_number.clone(),
            max_namespaces: cfg.max_namespaces,
            generation: AtomicU64::new(1),
            ana_change_count: AtomicU64::new(0),
            state: Mutex::new(SubsystemState {
                allow_any_host: cfg.allow_any_host,
                hosts: cfg.hosts.iter().cloned().collect(),
                namespaces: BTreeMap::new(),
                listeners: BTreeMap::new(),
                controllers: HashMap::new(),
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SubsystemState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn bump_generation(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn ana_change_count(&self) -> u64 {
        self.ana_change_count.load(Ordering::Acquire)
    }

    pub(crate) fn bump_ana_change_count(&self) {
        self.ana_change_count.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether `hostnqn` may connect.
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        let st = self.lock();
        st.allow_any_host || st.hosts.contains(hostnqn)
    }

    /// Whether the subsystem is reachable through `addr`.
    pub fn has_listener(&self, addr: &ListenAddress) -> bool {
        self.kind == SubsystemKind::Discovery || self.lock().listeners.contains_key(addr)
    }

    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        self.lock().namespaces.get(&nsid).cloned()
    }

    /// Active NSIDs in increasing order.
    pub fn nsids(&self) -> Vec<u32> {
        self.lock().namespaces.keys().copied().collect()
    }

    pub fn ana_state(&self, addr: &ListenAddress, group: u32) -> AnaState {
        self.lock()
            .listeners
            .get(addr)
            .map(|l| l.state(group))
            .unwrap_or(AnaState::Inaccessible)
    }

    /// The ANA groups in use (each namespace's group), ascending.
    pub fn ana_groups(&self) -> Vec<u32> {
        let st = self.lock();
        let groups: BTreeSet<u32> = st.namespaces.values().map(|n| n.ana_group).collect();
        groups.into_iter().collect()
    }

    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        self.lock().controllers.values().cloned().collect()
    }

    pub(crate) fn add_controller(&self, ctrl: Arc<Controller>) {
        self.lock().controllers.insert(ctrl.cntlid, ctrl);
    }

    pub(crate) fn remove_controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        self.lock().controllers.remove(&cntlid)
    }

    pub fn controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        self.lock().controllers.get(&cntlid).cloned()
    }

    /// The configuration that recreates this subsystem (without namespaces and listeners).
    pub fn config(&self) -> SubsystemConfig {
        let st = self.lock();
        SubsystemConfig {
            nqn: self.nqn.clone(),
            serial_number: self.serial_number.clone(),
            model_number: self.model_number.clone(),
            allow_any_host: st.allow_any_host,
            hosts: st.hosts.iter().cloned().collect(),
            max_namespaces: self.max_namespaces,
        }
    }

    /// Listeners and their ANA states.
    pub fn listeners(&self) -> Vec<(ListenAddress, ListenerAna)> {
        self.lock()
            .listeners
            .iter()
            .map(|(a, l)| (*a, l.clone()))
            .collect()
    }

    /// Namespaces in NSID order.
    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        self.lock().namespaces.values().cloned().collect()
    }

    pub(crate) fn insert_namespace(&self, ns: Namespace) -> Result<u32, NvmfError> {
        let mut st = self.lock();
        let nsid = ns.nsid;
        if st.namespaces.contains_key(&nsid) {
            return Err(NvmfError::NsidInUse {
                nqn: self.nqn.clone(),
                nsid,
            });
        }
        st.namespaces.insert(nsid, Arc::new(ns));
        Ok(nsid)
    }

    /// The lowest unused NSID, if any is left.
    pub(crate) fn free_nsid(&self) -> Option<u32> {
        let st = self.lock();
        (1..=self.max_namespaces).find(|n| !st.namespaces.contains_key(n))
    }
}

/// A stable 20-character serial from the NQN (FNV-1a, hex), for subsystems created without one.
fn derive_serial(nqn: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in nqn.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("GY{h:016x}")
}

/// Namespace identifiers derived from a bdev UUID when the configuration names none.
pub(crate) fn derive_ids(uuid: [u8; 16]) -> ([u8; 16], [u8; 8]) {
    // NGUID: the UUID bytes; EUI-64: an IEEE-style value from the UUID's first bytes with the
    // locally-administered bit set so it never collides with a real OUI.
    let mut eui = [0u8; 8];
    eui.copy_from_slice(&uuid[8..16]);
    eui[0] = (eui[0] | 0x02) & 0xFE;
    (uuid, eui)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_is_stable_and_fits() {
        let a = derive_serial("nqn.2016-06.io.gyre:a");
        assert_eq!(a, derive_serial("nqn.2016-06.io.gyre:a"));
        assert_ne!(a, derive_serial("nqn.2016-06.io.gyre:b"));
        assert_eq!(a.len(), 18);
    }

    #[test]
    fn derived_eui_is_local_unicast() {
        let (nguid, eui) = derive_ids([0xFF; 16]);
        assert_eq!(nguid, [0xFF; 16]);
        assert_eq!(eui[0] & 0x03, 0x02);
    }
}
