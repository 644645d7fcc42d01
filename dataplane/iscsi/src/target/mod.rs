//! The iSCSI target: portal groups, initiator groups, targets with LUNs over bdevs, CHAP,
//! sessions (control path, here) and per-reactor poll groups serving connections (I/O path, in
//! `group` and `conn`).
//!
//! Control operations run on the caller's thread and change shared state under mutexes; they
//! reach reactors by message (new listening sockets, accepted connections) or through flags
//! and generation numbers connections read once per poll (LUN map changes, target removal,
//! session reinstatement). A connection lives on one reactor from accept to close, and a
//! session has exactly one connection (MaxConnections=1).

pub mod config;
mod conn;
mod group;
mod login;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use gyre_bdev::BdevRegistry;
use gyre_net::TcpListener;
use gyre_reactor::{MessageSender, ReactorHandle};
use gyre_scsi::{LunConfig, NexusTable, ScsiLun};
use thiserror::Error;

use crate::bhs::Isid;
use crate::negotiate::{DigestKind, OperationalConfig, SessionType};

pub use config::{
    validate_iscsi_name, AuthConfig, InitiatorGroupConfig, LunMapping, Network, PortalGroupConfig,
    Redirect, TargetConfig,
};
use group::GroupMsg;

/// Errors of the target's control path.
#[derive(Debug, Error)]
pub enum IscsiTargetError {
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("no reactors to run on")]
    NoReactors,
    #[error("reactor: {0}")]
    Reactor(String),
    #[error("portal group {0} already exists")]
    PortalGroupExists(u16),
    #[error("no portal group {0}")]
    PortalGroupNotFound(u16),
    #[error("portal group {0} is used by target '{1}'")]
    PortalGroupInUse(u16, String),
    #[error("initiator group {0} already exists")]
    InitiatorGroupExists(u16),
    #[error("no initiator group {0}")]
    InitiatorGroupNotFound(u16),
    #[error("no session with TSIH {0}")]
    SessionNotFound(u16),
    #[error("initiator group {0} is used by target '{1}'")]
    InitiatorGroupInUse(u16, String),
    #[error("target '{0}' already exists")]
    TargetExists(String),
    #[error("no target '{0}'")]
    TargetNotFound(String),
    #[error("target '{0}' already has LUN {1}")]
    LunExists(String, u16),
    #[error("target '{0}' has no LUN {1}")]
    LunNotFound(String, u16),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bdev(#[from] gyre_bdev::BdevError),
    #[error(transparent)]
    Scsi(#[from] gyre_scsi::ScsiError),
}

/// Limits and defaults of the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetOptions {
    /// What the target offers and accepts in operational negotiation.
    pub operational: OperationalConfig,
    /// Commands a session may have outstanding (task slots per connection).
    pub queue_depth: u16,
    /// Idle time after which the target sends a NOP-In ping (zero: never).
    pub nop_in_interval: Duration,
    /// How long the initiator has to answer that ping before the connection is dropped.
    pub nop_in_timeout: Duration,
}

impl Default for TargetOptions {
    fn default() -> Self {
        TargetOptions {
            operational: OperationalConfig {
                header_digest: vec![DigestKind::None, DigestKind::Crc32c],
                data_digest: vec![DigestKind::None, DigestKind::Crc32c],
                max_connections: 1,
                // InitialR2T is an OR: offering No lets the initiator choose.
                initial_r2t: false,
                immediate_data: true,
                max_recv_data_segment_length: 64 * 1024,
                max_burst_length: 1024 * 1024,
                first_burst_length: 256 * 1024,
                default_time2wait: 2,
                default_time2retain: 0,
                max_outstanding_r2t: 4,
                data_pdu_in_order: true,
                data_sequence_in_order: true,
                error_recovery_level: 0,
            },
            queue_depth: 128,
            nop_in_interval: Duration::from_secs(30),
            nop_in_timeout: Duration::from_secs(10),
        }
    }
}

/// A LUN as the target holds it.
pub(crate) struct TargetLun {
    pub number: u16,
    pub bdev: String,
    pub lun: Arc<ScsiLun>,
}

/// A target as connections see it.
pub(crate) struct Target {
    pub name: String,
    pub nexus: Arc<NexusTable>,
    pub cfg: Mutex<TargetConfig>,
    pub luns: Mutex<BTreeMap<u16, Arc<TargetLun>>>,
    /// Bumped when the LUN map changes.
    pub lun_generation: AtomicU64,
    /// The target was deleted: its connections close.
    pub removed: AtomicBool,
}

impl Target {
    pub fn luns_snapshot(&self) -> Vec<Arc<TargetLun>> {
        lock(&self.luns).values().cloned().collect()
    }

    fn lun_list_changed(&self) {
        let luns = self.luns_snapshot();
        let numbers: Vec<u64> = luns.iter().map(|l| u64::from(l.number)).collect();
        for l in &luns {
            l.lun.set_lun_list(numbers.clone());
            l.lun.reported_luns_changed();
        }
        self.lun_generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// A logged-in session, as listed by [`IscsiTarget::sessions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub tsih: u16,
    pub initiator_name: String,
    pub isid: [u8; 6],
    pub target_name: Option<String>,
    pub discovery: bool,
    pub peer: SocketAddr,
    pub portal_group_tag: u16,
    pub reactor: usize,
    pub header_digest: bool,
    pub data_digest: bool,
}

pub(crate) struct SessionEntry {
    pub info: SessionInfo,
    /// Set to make the session's connection close (reinstatement, target deletion).
    pub kill: Arc<AtomicBool>,
}

#[derive(Default)]
pub(crate) struct Sessions {
    pub by_tsih: BTreeMap<u16, SessionEntry>,
}

pub(crate) struct GroupRef {
    pub sender: MessageSender<GroupMsg>,
    pub connections: Arc<AtomicUsize>,
}

/// Everything the control path and the poll groups share.
pub(crate) struct Shared {
    pub registry: BdevRegistry,
    pub options: TargetOptions,
    pub portal_groups: Mutex<BTreeMap<u16, PortalGroupConfig>>,
    pub initiator_groups: Mutex<BTreeMap<u16, InitiatorGroupConfig>>,
    pub targets: Mutex<BTreeMap<String, Arc<Target>>>,
    pub discovery_auth: Mutex<AuthConfig>,
    pub sessions: Mutex<Sessions>,
    /// Bound portals and their portal group tags.
    listeners: Mutex<BTreeMap<SocketAddr, u16>>,
    pub groups: Vec<GroupRef>,
    next_tsih: AtomicU16,
    pub next_connection_id: AtomicU64,
}

impl Shared {
    pub fn target(&self, name: &str) -> Option<Arc<Target>> {
        let t = lock(&self.targets);
        t.get(name).cloned().or_else(|| {
            t.values()
                .find(|t| t.name.eq_ignore_ascii_case(name))
                .cloned()
        })
    }

    /// May `initiator` from `ip` use `target`? (No initiator group: nobody may.)
    pub fn initiator_allowed(&self, target: &TargetConfig, initiator: &str, ip: IpAddr) -> bool {
        let groups = lock(&self.initiator_groups);
        target
            .initiator_groups
            .iter()
            .filter_map(|t| groups.get(t))
            .any(|g| g.allows(initiator, ip))
    }

    pub fn least_loaded_group(&self) -> usize {
        self.groups
            .iter()
            .enumerate()
            .min_by_key(|(_, g)| g.connections.load(Ordering::Relaxed))
            .map(|(i, _)| i)
            .unwrap_or(0)
    }

    /// A TSIH no live session uses (1..=0xFFFF).
    pub fn allocate_tsih(&self, sessions: &Sessions) -> Option<u16> {
        for _ in 0..0xFFFF {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 && !sessions.by_tsih.contains_key(&t) {
                return Some(t);
            }
        }
        None
    }
}

/// The iSCSI target. Cheap to clone; all clones are the same target.
#[derive(Clone)]
pub struct IscsiTarget {
    shared: Arc<Shared>,
}

const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// The SCSI port name of an initiator session (SPC-4 TransportID format for iSCSI).
pub(crate) fn initiator_port_name(initiator: &str, isid: Isid) -> String {
    let i = isid.0;
    format!(
        "{},i,0x{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        initiator, i[0], i[1], i[2], i[3], i[4], i[5]
    )
}

impl IscsiTarget {
    /// Starts a poll group on each reactor. Portals come with portal groups.
    pub fn start(
        reactors: &[ReactorHandle],
        registry: BdevRegistry,
        options: TargetOptions,
    ) -> Result<Self, IscsiTargetError> {
        if reactors.is_empty() {
            return Err(IscsiTargetError::NoReactors);
        }
        if options.queue_depth < 16 {
            return Err(IscsiTargetError::InvalidConfig(
                "queue_depth must be at least 16".into(),
            ));
        }
        let slot: Arc<OnceLock<Weak<Shared>>> = Arc::default();
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
            .map_err(|e| IscsiTargetError::Reactor(e.to_string()))?;
            groups.push(GroupRef {
                sender,
                connections,
            });
        }
        let shared = Arc::new(Shared {
            registry,
            options,
            portal_groups: Mutex::new(BTreeMap::new()),
            initiator_groups: Mutex::new(BTreeMap::new()),
            targets: Mutex::new(BTreeMap::new()),
            discovery_auth: Mutex::new(AuthConfig::default()),
            sessions: Mutex::new(Sessions::default()),
            listeners: Mutex::new(BTreeMap::new()),
            groups,
            next_tsih: AtomicU16::new(1),
            next_connection_id: AtomicU64::new(1),
        });
        let _ = slot.set(Arc::downgrade(&shared));
        Ok(IscsiTarget { shared })
    }

    pub fn options(&self) -> &TargetOptions {
        &self.shared.options
    }

    // --- portal groups ----------------------------------------------------------------------

    /// Creates a portal group and starts listening on its portals. Returns the bound
    /// addresses (port 0 picks a free port).
    pub fn create_portal_group(
        &self,
        mut cfg: PortalGroupConfig,
    ) -> Result<PortalGroupConfig, IscsiTargetError> {
        if cfg.tag == 0 {
            return Err(IscsiTargetError::InvalidConfig(
                "portal group tag 0 is reserved".into(),
            ));
        }
        if cfg.portals.is_empty() {
            return Err(IscsiTargetError::InvalidConfig(
                "a portal group needs at least one portal".into(),
            ));
        }
        let mut pgs = lock(&self.shared.portal_groups);
        if pgs.contains_key(&cfg.tag) {
            return Err(IscsiTargetError::PortalGroupExists(cfg.tag));
        }
        let mut bound = Vec::with_capacity(cfg.portals.len());
        for addr in &cfg.portals {
            match self.listen(*addr, cfg.tag) {
                Ok(b) => bound.push(b),
                Err(e) => {
                    for b in bound {
                        self.unlisten(b);
                    }
                    return Err(e);
                }
            }
        }
        cfg.portals = bound;
        pgs.insert(cfg.tag, cfg.clone());
        tracing::info!(tag = cfg.tag, portals = ?cfg.portals, "iscsi: portal group created");
        Ok(cfg)
    }

    /// Deletes a portal group no target uses; stops listening on its portals.
    pub fn delete_portal_group(&self, tag: u16) -> Result<(), IscsiTargetError> {
        for t in lock(&self.shared.targets).values() {
            if lock(&t.cfg).portal_groups.contains(&tag) {
                return Err(IscsiTargetError::PortalGroupInUse(tag, t.name.clone()));
            }
        }
        let pg = lock(&self.shared.portal_groups)
            .remove(&tag)
            .ok_or(IscsiTargetError::PortalGroupNotFound(tag))?;
        for p in pg.portals {
            self.unlisten(p);
        }
        Ok(())
    }

    pub fn portal_groups(&self) -> Vec<PortalGroupConfig> {
        lock(&self.shared.portal_groups).values().cloned().collect()
    }

    fn listen(&self, addr: SocketAddr, tag: u16) -> Result<SocketAddr, IscsiTargetError> {
        let mut listeners = lock(&self.shared.listeners);
        if listeners.contains_key(&addr) {
            return Err(IscsiTargetError::InvalidConfig(format!(
                "portal {addr} is already in use"
            )));
        }
        let socket =
            TcpListener::bind(addr).map_err(|source| IscsiTargetError::Listen { addr, source })?;
        let bound = socket
            .local_addr()
            .map_err(|source| IscsiTargetError::Listen { addr, source })?;
        self.shared.groups[0]
            .sender
            .send(GroupMsg::Listen(socket, bound, tag))
            .map_err(|_| IscsiTargetError::Reactor("poll group queue full".into()))?;
        listeners.insert(bound, tag);
        tracing::info!(addr = %bound, tag, "iscsi: listening");
        Ok(bound)
    }

    fn unlisten(&self, addr: SocketAddr) {
        if lock(&self.shared.listeners).remove(&addr).is_some() {
            let _ = self.shared.groups[0].sender.send(GroupMsg::Unlisten(addr));
        }
    }

    // --- initiator groups -------------------------------------------------------------------

    pub fn create_initiator_group(
        &self,
        cfg: InitiatorGroupConfig,
    ) -> Result<(), IscsiTargetError> {
        if cfg.tag == 0 {
            return Err(IscsiTargetError::InvalidConfig(
                "initiator group tag 0 is reserved".into(),
            ));
        }
        if cfg.initiators.is_empty() || cfg.networks.is_empty() {
            return Err(IscsiTargetError::InvalidConfig(
                "an initiator group needs initiators (or ANY) and networks (or ANY)".into(),
            ));
        }
        for n in &cfg.initiators {
            if !n.eq_ignore_ascii_case("any") {
                validate_iscsi_name(n)?;
            }
        }
        let mut igs = lock(&self.shared.initiator_groups);
        if igs.contains_key(&cfg.tag) {
            return Err(IscsiTargetError::InitiatorGroupExists(cfg.tag));
        }
        igs.insert(cfg.tag, cfg);
        Ok(())
    }

    pub fn delete_initiator_group(&self, tag: u16) -> Result<(), IscsiTargetError> {
        for t in lock(&self.shared.targets).values() {
            if lock(&t.cfg).initiator_groups.contains(&tag) {
                return Err(IscsiTargetError::InitiatorGroupInUse(tag, t.name.clone()));
            }
        }
        lock(&self.shared.initiator_groups)
            .remove(&tag)
            .map(|_| ())
            .ok_or(IscsiTargetError::InitiatorGroupNotFound(tag))
    }

    pub fn initiator_groups(&self) -> Vec<InitiatorGroupConfig> {
        lock(&self.shared.initiator_groups)
            .values()
            .cloned()
            .collect()
    }

    // --- targets ----------------------------------------------------------------------------

    /// Creates a target with its LUNs (each bdev opened for writing and claimed).
    pub fn create_target(&self, cfg: TargetConfig) -> Result<(), IscsiTargetError> {
        validate_iscsi_name(&cfg.name)?;
        cfg.auth.validate()?;
        if let Some(a) = &cfg.alias {
            if a.len() > 255 || a.contains('\0') {
                return Err(IscsiTargetError::InvalidConfig("alias too long".into()));
            }
        }
        {
            let pgs = lock(&self.shared.portal_groups);
            for t in &cfg.portal_groups {
                if !pgs.contains_key(t) {
                    return Err(IscsiTargetError::PortalGroupNotFound(*t));
                }
            }
            let igs = lock(&self.shared.initiator_groups);
            for t in &cfg.initiator_groups {
                if !igs.contains_key(t) {
                    return Err(IscsiTargetError::InitiatorGroupNotFound(*t));
                }
            }
        }
        let mut targets = lock(&self.shared.targets);
        if targets.keys().any(|n| n.eq_ignore_ascii_case(&cfg.name)) {
            return Err(IscsiTargetError::TargetExists(cfg.name));
        }
        let target = Arc::new(Target {
            name: cfg.name.clone(),
            nexus: NexusTable::new(),
            cfg: Mutex::new(TargetConfig {
                luns: Vec::new(),
                ..cfg.clone()
            }),
            luns: Mutex::new(BTreeMap::new()),
            lun_generation: AtomicU64::new(1),
            removed: AtomicBool::new(false),
        });
        for m in &cfg.luns {
            if lock(&target.luns).contains_key(&m.lun) {
                return Err(IscsiTargetError::LunExists(cfg.name.clone(), m.lun));
            }
            let l = self.open_lun(&target, m)?;
            lock(&target.luns).insert(m.lun, l);
        }
        target.lun_list_changed();
        targets.insert(cfg.name.clone(), target);
        tracing::info!(name = %cfg.name, luns = cfg.luns.len(), "iscsi: target created");
        Ok(())
    }

    fn open_lun(
        &self,
        target: &Target,
        m: &LunMapping,
    ) -> Result<Arc<TargetLun>, IscsiTargetError> {
        if m.lun > crate::lun::MAX_SINGLE_LEVEL_LUN {
            return Err(IscsiTargetError::InvalidConfig(format!(
                "LUN {} is above {}",
                m.lun,
                crate::lun::MAX_SINGLE_LEVEL_LUN
            )));
        }
        let holder = format!("iscsi target '{}' lun {}", target.name, m.lun);
        let desc = self.shared.registry.open(&m.bdev, true, &holder, None)?;
        let cfg = LunConfig {
            lun: u64::from(m.lun),
            ..LunConfig::default()
        };
        let lun = ScsiLun::new(cfg, desc, target.nexus.clone())?;
        Ok(Arc::new(TargetLun {
            number: m.lun,
            bdev: m.bdev.clone(),
            lun,
        }))
    }

    /// Deletes a target. Its sessions are asked to log out (Asynchronous Message) and closed
    /// if they do not within a few seconds.
    pub fn delete_target(&self, name: &str) -> Result<(), IscsiTargetError> {
        let target = lock(&self.shared.targets)
            .remove(name)
            .ok_or_else(|| IscsiTargetError::TargetNotFound(name.to_string()))?;
        target.removed.store(true, Ordering::Release);
        lock(&target.luns).clear();
        tracing::info!(name, "iscsi: target deleted");
        Ok(())
    }

    pub fn add_lun(&self, target: &str, m: LunMapping) -> Result<(), IscsiTargetError> {
        let t = self
            .shared
            .target(target)
            .ok_or_else(|| IscsiTargetError::TargetNotFound(target.to_string()))?;
        if lock(&t.luns).contains_key(&m.lun) {
            return Err(IscsiTargetError::LunExists(target.to_string(), m.lun));
        }
        let l = self.open_lun(&t, &m)?;
        lock(&t.luns).insert(m.lun, l);
        t.lun_list_changed();
        Ok(())
    }

    pub fn remove_lun(&self, target: &str, lun: u16) -> Result<(), IscsiTargetError> {
        let t = self
            .shared
            .target(target)
            .ok_or_else(|| IscsiTargetError::TargetNotFound(target.to_string()))?;
        if lock(&t.luns).remove(&lun).is_none() {
            return Err(IscsiTargetError::LunNotFound(target.to_string(), lun));
        }
        t.lun_list_changed();
        Ok(())
    }

    /// Replaces a target's CHAP settings (new logins only).
    pub fn set_target_auth(&self, target: &str, auth: AuthConfig) -> Result<(), IscsiTargetError> {
        auth.validate()?;
        let t = self
            .shared
            .target(target)
            .ok_or_else(|| IscsiTargetError::TargetNotFound(target.to_string()))?;
        lock(&t.cfg).auth = auth;
        Ok(())
    }

    /// Targets with their current LUN maps.
    pub fn targets(&self) -> Vec<TargetConfig> {
        lock(&self.shared.targets)
            .values()
            .map(|t| {
                let mut cfg = lock(&t.cfg).clone();
                cfg.luns = t
                    .luns_snapshot()
                    .iter()
                    .map(|l| LunMapping {
                        lun: l.number,
                        bdev: l.bdev.clone(),
                    })
                    .collect();
                cfg
            })
            .collect()
    }

    pub fn set_discovery_auth(&self, auth: AuthConfig) -> Result<(), IscsiTargetError> {
        auth.validate()?;
        *lock(&self.shared.discovery_auth) = auth;
        Ok(())
    }

    pub fn discovery_auth(&self) -> AuthConfig {
        lock(&self.shared.discovery_auth).clone()
    }

    /// Closes a session's connection (the initiator may log in again).
    pub fn disconnect_session(&self, tsih: u16) -> Result<(), IscsiTargetError> {
        let sessions = lock(&self.shared.sessions);
        let entry = sessions
            .by_tsih
            .get(&tsih)
            .ok_or(IscsiTargetError::SessionNotFound(tsih))?;
        tracing::info!(
            tsih,
            initiator = %entry.info.initiator_name,
            "iscsi: session disconnected by request"
        );
        entry.kill.store(true, Ordering::Release);
        Ok(())
    }

    pub fn sessions(&self) -> Vec<SessionInfo> {
        lock(&self.shared.sessions)
            .by_tsih
            .values()
            .map(|s| s.info.clone())
            .collect()
    }

    /// Connections per reactor.
    pub fn connection_counts(&self) -> Vec<usize> {
        self.shared
            .groups
            .iter()
            .map(|g| g.connections.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops listening, closes every connection, releases every LUN; waits up to `timeout`.
    pub fn shutdown(&self, timeout: Duration) {
        let addrs: Vec<SocketAddr> = lock(&self.shared.listeners).keys().copied().collect();
        for a in addrs {
            self.unlisten(a);
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
        let names: Vec<String> = lock(&self.shared.targets).keys().cloned().collect();
        for n in names {
            let _ = self.delete_target(&n);
        }
        lock(&self.shared.portal_groups).clear();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The session type a login asked for, for listings.
pub(crate) fn is_discovery(t: SessionType) -> bool {
    t == SessionType::Discovery
}
