//! The NVMe-oF target: subsystems, namespaces, listeners and hosts (control path), and the
//! per-reactor TCP poll groups that serve connections (I/O path, in [`crate::tcp`]).
//!
//! Control operations run on the caller's thread and change shared state under mutexes; they
//! reach reactors only by message (new listeners, connections to drop) or through generation
//! numbers the reactors read once per poll (namespace and ANA changes).

pub(crate) mod admin;
pub mod controller;
pub(crate) mod discovery;
pub mod subsystem;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use gyre_bdev::BdevRegistry;
use gyre_net::TcpListener;
use gyre_reactor::{MessageSender, ReactorHandle};

use crate::config::{
    validate_nqn, AnaState, ListenAddress, NamespaceConfig, SubsystemConfig, DISCOVERY_NQN,
};
use crate::tcp::group::{self, GroupMsg};
use crate::NvmfError;
pub use controller::Controller;
pub use subsystem::{ListenerAna, Namespace, Subsystem, SubsystemKind};

/// A controller as [`NvmfTarget::controllers`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerInfo {
    pub nqn: String,
    pub cntlid: u16,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    pub listener: ListenAddress,
    pub kato_ms: u32,
    /// I/O queues connected.
    pub io_queues: usize,
    /// CSTS.RDY: the host enabled the controller.
    pub ready: bool,
}

/// What [`NvmfTarget::transport_stats`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    pub connections_accepted: u64,
    /// Connections terminated for a protocol violation (C2HTermReq sent).
    pub fatal_errors: u64,
    pub data_digest_errors: u64,
}

/// Limits the TCP transport advertises and enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportOptions {
    /// Most entries an I/O submission queue may have (CAP.MQES + 1).
    pub max_queue_depth: u16,
    /// Entries of the admin queue we allow.
    pub max_admin_queue_depth: u16,
    /// Bytes of data a command capsule may carry (IOCCSZ is 64 bytes more, in 16-byte units).
    pub in_capsule_data_size: u32,
    /// Largest transfer of one command (MDTS, a power of two times 4 KiB).
    pub max_io_size: u32,
    /// Most data bytes in one H2CData PDU (MAXH2CDATA).
    pub max_h2c_data: u32,
    /// I/O queues a controller may have.
    pub max_io_queues: u16,
    /// Use C2HData's SUCCESS flag to skip the response capsule when the host allows it.
    pub c2h_success: bool,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            max_queue_depth: 128,
            max_admin_queue_depth: 32,
            in_capsule_data_size: 8192,
            max_io_size: 128 * 1024,
            max_h2c_data: 128 * 1024,
            max_io_queues: 127,
            c2h_success: true,
        }
    }
}

/// A poll group as seen from outside its reactor.
pub(crate) struct GroupRef {
    pub sender: MessageSender<GroupMsg>,
    pub connections: Arc<AtomicUsize>,
}

/// A listening socket and who uses it.
struct ListenerEntry {
    port_id: u16,
    /// Subsystems (other than discovery) that listen here.
    users: usize,
}

/// State shared by the control path and every poll group.
pub(crate) struct TargetShared {
    pub registry: BdevRegistry,
    pub options: TransportOptions,
    pub subsystems: RwLock<BTreeMap<String, Arc<Subsystem>>>,
    pub discovery: Arc<Subsystem>,
    listeners: Mutex<BTreeMap<ListenAddress, ListenerEntry>>,
    /// Discovery log generation counter.
    pub genctr: AtomicU64,
    pub groups: Vec<GroupRef>,
    next_cntlid: AtomicU16,
    next_port_id: AtomicU16,
    pub next_connection_id: AtomicU64,
    /// Connections ended with a C2HTermReq (fatal transport errors).
    pub fatal_errors: AtomicU64,
    /// PDUs whose data digest did not match (their commands fail, the connection lives).
    pub data_digest_errors: AtomicU64,
}

impl TargetShared {
    pub fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        if nqn == DISCOVERY_NQN {
            return Some(self.discovery.clone());
        }
        read(&self.subsystems).get(nqn).cloned()
    }

    pub fn subsystems_snapshot(&self) -> Vec<Arc<Subsystem>> {
        read(&self.subsystems).values().cloned().collect()
    }

    pub fn port_id(&self, addr: &ListenAddress) -> u16 {
        lock(&self.listeners)
            .get(addr)
            .map(|l| l.port_id)
            .unwrap_or(0)
    }

    /// A controller ID unused in `subsystem` (1..=0xFFEF; the rest are reserved).
    pub fn allocate_cntlid(&self, subsystem: &Subsystem) -> Option<u16> {
        for _ in 0..0xFFEF {
            let id = self.next_cntlid.fetch_add(1, Ordering::Relaxed) % 0xFFEF + 1;
            if subsystem.controller(id).is_none() {
                return Some(id);
            }
        }
        None
    }

    /// Tells every discovery controller the log changed.
    pub fn discovery_changed(&self) {
        self.genctr.fetch_add(1, Ordering::AcqRel);
        for ctrl in self.discovery.controllers() {
            ctrl.notice_discovery_change();
        }
    }

    /// The group with the fewest connections.
    pub fn least_loaded_group(&self) -> usize {
        self.groups
            .iter()
            .enumerate()
            .min_by_key(|(_, g)| g.connections.load(Ordering::Relaxed))
            .map(|(i, _)| i)
            .unwrap_or(0)
    }
}

/// The NVMe-oF target. Cheap to clone; all clones are the same target.
#[derive(Clone)]
pub struct NvmfTarget {
    shared: Arc<TargetShared>,
}

const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

impl NvmfTarget {
    /// Starts a TCP poll group on each reactor. Listeners come with subsystems.
    pub fn start(
        reactors: &[ReactorHandle],
        registry: BdevRegistry,
        options: TransportOptions,
    ) -> Result<Self, NvmfError> {
        if reactors.is_empty() {
            return Err(NvmfError::NoReactors);
        }
        let mut discovery_cfg = SubsystemConfig::new(DISCOVERY_NQN);
        discovery_cfg.allow_any_host = true;
        discovery_cfg.model_number = "Gyre discovery controller".to_string();
        discovery_cfg.max_namespaces = 0;
        let discovery = Arc::new(Subsystem::new(SubsystemKind::Discovery, &discovery_cfg));

        // Each group needs the shared state and the shared state lists the groups: build the
        // groups first around a slot filled right after.
        let slot: Arc<std::sync::OnceLock<std::sync::Weak<TargetShared>>> = Arc::default();
        let mut groups = Vec::with_capacity(reactors.len());
        for (index, handle) in reactors.iter().enumerate() {
            let connections = Arc::new(AtomicUsize::new(0));
            let sender = group::start(
                handle,
                index,
                slot.clone(),
                connections.clone(),
                CONTROL_TIMEOUT,
            )
            .map_err(|e| NvmfError::Reactor(e.to_string()))?;
            groups.push(GroupRef {
                sender,
                connections,
            });
        }
        let shared = Arc::new(TargetShared {
            registry,
            options,
            subsystems: RwLock::new(BTreeMap::new()),
            discovery,
            listeners: Mutex::new(BTreeMap::new()),
            genctr: AtomicU64::new(1),
            groups,
            next_cntlid: AtomicU16::new(0),
            next_port_id: AtomicU16::new(1),
            next_connection_id: AtomicU64::new(1),
            fatal_errors: AtomicU64::new(0),
            data_digest_errors: AtomicU64::new(0),
        });
        let _ = slot.set(Arc::downgrade(&shared));
        Ok(Self { shared })
    }

    pub fn options(&self) -> TransportOptions {
        self.shared.options
    }

    pub fn create_subsystem(&self, cfg: SubsystemConfig) -> Result<Arc<Subsystem>, NvmfError> {
        validate_nqn(&cfg.nqn).map_err(NvmfError::InvalidConfig)?;
        if cfg.nqn == DISCOVERY_NQN {
            return Err(NvmfError::InvalidConfig(
                "the discovery subsystem always exists and cannot be created".to_string(),
            ));
        }
        if !cfg.serial_number.is_ascii() || cfg.serial_number.len() > 20 {
            return Err(NvmfError::InvalidConfig(format!(
                "serial number '{}' must be at most 20 ASCII characters",
                cfg.serial_number
            )));
        }
        if !cfg.model_number.is_ascii() || cfg.model_number.len() > 40 {
            return Err(NvmfError::InvalidConfig(format!(
                "model number '{}' must be at most 40 ASCII characters",
                cfg.model_number
            )));
        }
        if cfg.max_namespaces == 0 || cfg.max_namespaces > 1024 {
            return Err(NvmfError::InvalidConfig(
                "max_namespaces must be 1 to 1024".to_string(),
            ));
        }
        for h in &cfg.hosts {
            validate_nqn(h).map_err(NvmfError::InvalidConfig)?;
        }
        let mut subs = write(&self.shared.subsystems);
        if subs.contains_key(&cfg.nqn) {
            return Err(NvmfError::SubsystemExists(cfg.nqn));
        }
        let sub = Arc::new(Subsystem::new(SubsystemKind::Nvme, &cfg));
        subs.insert(cfg.nqn.clone(), sub.clone());
        drop(subs);
        tracing::info!(nqn = %cfg.nqn, "nvmf: subsystem created");
        self.shared.discovery_changed();
        Ok(sub)
    }

    /// Deletes a subsystem: its controllers are torn down, its listeners dropped, its
    /// namespaces closed.
    pub fn delete_subsystem(&self, nqn: &str) -> Result<(), NvmfError> {
        let sub = write(&self.shared.subsystems)
            .remove(nqn)
            .ok_or_else(|| NvmfError::SubsystemNotFound(nqn.to_string()))?;
        for ctrl in sub.controllers() {
            ctrl.fail("subsystem deleted");
            sub.remove_controller(ctrl.cntlid);
        }
        let addrs: Vec<ListenAddress> = sub.listeners().into_iter().map(|(a, _)| a).collect();
        for a in addrs {
            self.release_listener(&a);
        }
        sub.lock().namespaces.clear();
        sub.bump_generation();
        tracing::info!(nqn, "nvmf: subsystem deleted");
        self.shared.discovery_changed();
        Ok(())
    }

    pub fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        self.shared.subsystem(nqn)
    }

    /// NVM subsystems in NQN order (the discovery subsystem is not listed).
    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        read(&self.shared.subsystems).values().cloned().collect()
    }

    fn nvm_subsystem(&self, nqn: &str) -> Result<Arc<Subsystem>, NvmfError> {
        read(&self.shared.subsystems)
            .get(nqn)
            .cloned()
            .ok_or_else(|| NvmfError::SubsystemNotFound(nqn.to_string()))
    }

    /// Exports a bdev as a namespace; returns its NSID. Connected hosts get a namespace
    /// attribute changed event.
    pub fn add_namespace(&self, nqn: &str, cfg: NamespaceConfig) -> Result<u32, NvmfError> {
        let sub = self.nvm_subsystem(nqn)?;
        let nsid = if cfg.nsid == 0 {
            sub.free_nsid()
                .ok_or_else(|| NvmfError::NoFreeNsid(nqn.to_string()))?
        } else if cfg.nsid > sub.max_namespaces || cfg.nsid == u32::MAX {
            return Err(NvmfError::InvalidConfig(format!(
                "NSID {} is outside 1..={} of subsystem '{nqn}'",
                cfg.nsid, sub.max_namespaces
            )));
        } else {
            cfg.nsid
        };
        let holder = format!("nvmf subsystem '{nqn}' nsid {nsid}");
        let desc = self
            .shared
            .registry
            .open(&cfg.bdev, true, &holder, None)
            .map_err(NvmfError::Bdev)?;
        let (nguid, eui64) = subsystem::derive_ids(*desc.info().uuid().as_bytes());
        let ana_group = if cfg.ana_group == 0 {
            nsid
        } else {
            cfg.ana_group
        };
        let ns = Namespace {
            nsid,
            bdev_name: cfg.bdev.clone(),
            uuid: cfg.uuid.unwrap_or(*desc.info().uuid().as_bytes()),
            nguid: cfg.nguid.unwrap_or(nguid),
            eui64: cfg.eui64.unwrap_or(eui64),
            ana_group,
            desc,
        };
        sub.insert_namespace(ns)?;
        sub.bump_generation();
        for ctrl in sub.controllers() {
            ctrl.notice_namespace_change(nsid);
        }
        tracing::info!(nqn, nsid, bdev = %cfg.bdev, "nvmf: namespace added");
        Ok(nsid)
    }

    pub fn remove_namespace(&self, nqn: &str, nsid: u32) -> Result<(), NvmfError> {
        let sub = self.nvm_subsystem(nqn)?;
        let removed = sub.lock().namespaces.remove(&nsid);
        if removed.is_none() {
            return Err(NvmfError::NamespaceNotFound {
                nqn: nqn.to_string(),
                nsid,
            });
        }
        sub.bump_generation();
        for ctrl in sub.controllers() {
            ctrl.notice_namespace_change(nsid);
        }
        tracing::info!(nqn, nsid, "nvmf: namespace removed");
        Ok(())
    }

    /// Makes a subsystem reachable at `addr`, binding it if no one listens there yet.
    /// Returns the bound address (port 0 picks a free port).
    pub fn add_listener(&self, nqn: &str, addr: ListenAddress) -> Result<ListenAddress, NvmfError> {
        let sub = self.nvm_subsystem(nqn)?;
        let addr = self.acquire_listener(addr)?;
        let fresh = sub
            .lock()
            .listeners
            .insert(addr, ListenerAna::default())
            .is_none();
        if !fresh {
            self.release_listener(&addr);
            return Err(NvmfError::ListenerExists {
                nqn: nqn.to_string(),
                addr: addr.to_string(),
            });
        }
        tracing::info!(nqn, %addr, "nvmf: listener added");
        self.shared.discovery_changed();
        Ok(addr)
    }

    pub fn remove_listener(&self, nqn: &str, addr: &ListenAddress) -> Result<(), NvmfError> {
        let sub = self.nvm_subsystem(nqn)?;
        if sub.lock().listeners.remove(addr).is_none() {
            return Err(NvmfError::ListenerNotFound {
                nqn: nqn.to_string(),
                addr: addr.to_string(),
            });
        }
        // Controllers that came in through this listener lose their path.
        for ctrl in sub.controllers() {
            if ctrl.listener == *addr {
                ctrl.fail("listener removed");
            }
        }
        self.release_listener(addr);
        sub.bump_generation();
        tracing::info!(nqn, %addr, "nvmf: listener removed");
        self.shared.discovery_changed();
        Ok(())
    }

    pub fn add_host(&self, nqn: &str, host: &str) -> Result<(), NvmfError> {
        validate_nqn(host).map_err(NvmfError::InvalidConfig)?;
        let sub = self.nvm_subsystem(nqn)?;
        if !sub.lock().hosts.insert(host.to_string()) {
            return Err(NvmfError::HostExists {
                nqn: nqn.to_string(),
                host: host.to_string(),
            });
        }
        self.shared.discovery_changed();
        Ok(())
    }

    /// Stops allowing `host`; its controllers are torn down.
    pub fn remove_host(&self, nqn: &str, host: &str) -> Result<(), NvmfError> {
        let sub = self.nvm_subsystem(nqn)?;
        if !sub.lock().hosts.remove(host) {
            return Err(NvmfError::HostNotFound {
                nqn: nqn.to_string(),
                host: host.to_string(),
            });
        }
        if !sub.host_allowed(host) {
            for ctrl in sub.controllers() {
                if ctrl.hostnqn == host {
                    ctrl.fail("host no longer allowed");
                }
            }
        }
        self.shared.discovery_changed();
        Ok(())
    }

    pub fn set_allow_any_host(&self, nqn: &str, allow: bool) -> Result<(), NvmfError> {
        let sub = self.nvm_subsystem(nqn)?;
        sub.lock().allow_any_host = allow;
        self.shared.discovery_changed();
        Ok(())
    }

    /// Sets the ANA state of `group` (0: every group) as seen through `addr`; controllers on
    /// that listener get an ANA change event.
    pub fn set_ana_state(
        &self,
        nqn: &str,
        addr: &ListenAddress,
        group: u32,
        state: AnaState,
    ) -> Result<(), NvmfError> {
        let sub = self.nvm_subsystem(nqn)?;
        {
            let mut st = sub.lock();
            let groups: Vec<u32> = if group == 0 {
                st.namespaces.values().map(|n| n.ana_group).collect()
            } else {
                vec![group]
            };
            let listener =
                st.listeners
                    .get_mut(addr)
                    .ok_or_else(|| NvmfError::ListenerNotFound {
                        nqn: nqn.to_string(),
                        addr: addr.to_string(),
                    })?;
            for g in groups {
                listener.states.insert(g, state);
            }
        }
        sub.bump_ana_change_count();
        sub.bump_generation();
        for ctrl in sub.controllers() {
            if ctrl.listener == *addr {
                ctrl.notice_ana_change();
            }
        }
        tracing::info!(nqn, %addr, group, state = state.name(), "nvmf: ANA state set");
        Ok(())
    }

    /// The discovery log generation counter.
    pub fn discovery_generation(&self) -> u64 {
        self.shared.genctr.load(Ordering::Acquire)
    }

    /// The controllers (host associations) of one subsystem or of all.
    pub fn controllers(&self, nqn: Option<&str>) -> Result<Vec<ControllerInfo>, NvmfError> {
        let subsystems = match nqn {
            Some(n) => vec![self.nvm_subsystem(n)?],
            None => self.subsystems(),
        };
        let mut out = Vec::new();
        for s in subsystems {
            let mut ctrls: Vec<Arc<Controller>> = s.lock().controllers.values().cloned().collect();
            ctrls.sort_by_key(|c| c.cntlid);
            for c in ctrls {
                let io_queues = c.lock().io_queues.iter().skip(1).filter(|&&q| q).count();
                out.push(ControllerInfo {
                    nqn: s.nqn.clone(),
                    cntlid: c.cntlid,
                    hostnqn: c.hostnqn.clone(),
                    hostid: c.hostid,
                    listener: c.listener,
                    kato_ms: c.kato_ms(),
                    io_queues,
                    ready: c.is_ready(),
                });
            }
        }
        Ok(out)
    }

    /// Ends a controller's association: every queue of it closes (the host may reconnect).
    pub fn disconnect_controller(&self, nqn: &str, cntlid: u16) -> Result<(), NvmfError> {
        let s = self.nvm_subsystem(nqn)?;
        let ctrl = s.lock().controllers.get(&cntlid).cloned();
        let ctrl = ctrl.ok_or_else(|| NvmfError::ControllerNotFound {
            nqn: nqn.to_string(),
            cntlid,
        })?;
        tracing::info!(nqn, cntlid, host = %ctrl.hostnqn, "nvmf: controller disconnected by request");
        ctrl.fail("disconnected by request");
        Ok(())
    }

    /// Transport counters since start.
    pub fn transport_stats(&self) -> TransportStats {
        TransportStats {
            connections_accepted: self.shared.next_connection_id.load(Ordering::Relaxed) - 1,
            fatal_errors: self.shared.fatal_errors.load(Ordering::Relaxed),
            data_digest_errors: self.shared.data_digest_errors.load(Ordering::Relaxed),
        }
    }

    /// Connections per reactor.
    pub fn connection_counts(&self) -> Vec<usize> {
        self.shared
            .groups
            .iter()
            .map(|g| g.connections.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops listening and closes every connection; waits up to `timeout` for each reactor.
    pub fn shutdown(&self, timeout: Duration) {
        let subs: Vec<String> = read(&self.shared.subsystems).keys().cloned().collect();
        for nqn in subs {
            let _ = self.delete_subsystem(&nqn);
        }
        for ctrl in self.shared.discovery.controllers() {
            ctrl.fail("target shutting down");
        }
        for g in &self.shared.groups {
            let _ = g.sender.send(GroupMsg::Shutdown);
        }
        let start = std::time::Instant::now();
        while start.elapsed() < timeout
            && self
                .shared
                .groups
                .iter()
                .any(|g| g.connections.load(Ordering::Acquire) > 0)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn acquire_listener(&self, addr: ListenAddress) -> Result<ListenAddress, NvmfError> {
        let mut listeners = lock(&self.shared.listeners);
        if let Some(entry) = listeners.get_mut(&addr) {
            entry.users += 1;
            return Ok(addr);
        }
        let socket = TcpListener::bind(addr.0).map_err(|e| NvmfError::Listen {
            addr: addr.to_string(),
            source: e,
        })?;
        let bound = ListenAddress(socket.local_addr().map_err(|e| NvmfError::Listen {
            addr: addr.to_string(),
            source: e,
        })?);
        if let Some(entry) = listeners.get_mut(&bound) {
            entry.users += 1;
            return Ok(bound);
        }
        let port_id = self.shared.next_port_id.fetch_add(1, Ordering::Relaxed);
        // Listening sockets are polled by the first group, which hands connections out.
        self.shared.groups[0]
            .sender
            .send(GroupMsg::Listen(socket, bound))
            .map_err(|_| NvmfError::Reactor("poll group queue full".to_string()))?;
        listeners.insert(bound, ListenerEntry { port_id, users: 1 });
        tracing::info!(addr = %bound, port_id, "nvmf: listening");
        Ok(bound)
    }

    fn release_listener(&self, addr: &ListenAddress) {
        let mut listeners = lock(&self.shared.listeners);
        let Some(entry) = listeners.get_mut(addr) else {
            return;
        };
        entry.users -= 1;
        if entry.users == 0 {
            listeners.remove(addr);
            let _ = self.shared.groups[0].sender.send(GroupMsg::Unlisten(*addr));
            tracing::info!(%addr, "nvmf: stopped listening");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}
