//! A controller: the association between one host and one subsystem, made by an admin-queue
//! Connect and joined by I/O-queue Connects that carry its CNTLID.
//!
//! The admin queue's reactor owns everything the admin commands touch; the I/O queues (which
//! may live on other reactors) only read a few atomics per poll: whether the controller is
//! still alive and enabled. State the control path changes (namespace and ANA events) is
//! queued here under a mutex and flagged with an atomic the admin queue checks once per poll.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::config::ListenAddress;
use crate::target::subsystem::Subsystem;

/// Asynchronous events a controller can report (NVMe Base "Asynchronous Event Information").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingEvent {
    NamespaceAttributeChanged,
    AnaChange,
    DiscoveryLogChange,
}

/// Async event configuration bits (Set Features 0Bh) for the notices we send.
pub const AEC_NS_ATTR: u32 = 1 << 8;
pub const AEC_ANA_CHANGE: u32 = 1 << 11;
pub const AEC_DISCOVERY_LOG_CHANGE: u32 = 1 << 31;

/// Control-path state of a controller.
#[derive(Debug)]
pub struct ControllerState {
    /// Async event configuration (feature 0Bh).
    pub async_event_config: u32,
    /// Events waiting for an Asynchronous Event Request.
    pub pending: VecDeque<PendingEvent>,
    /// Event kinds sent and not yet re-armed by reading their log page (RAE=0).
    pub masked_ns_attr: bool,
    pub masked_ana: bool,
    pub masked_discovery: bool,
    /// Namespaces changed since the host last read the Changed Namespace List (None: more
    /// than the list holds).
    pub changed_namespaces: Option<Vec<u32>>,
    /// Granted I/O queues, 0-based as in feature 07h; set once before I/O queues exist.
    pub io_queues_granted: Option<u16>,
    /// I/O queues connected (bit per QID).
    pub io_queues: Vec<bool>,
    pub arbitration: u32,
    pub temperature_threshold: u32,
    pub error_recovery: u32,
    pub write_atomicity: u32,
    pub volatile_write_cache: bool,
}

/// One controller of a subsystem.
pub struct Controller {
    pub cntlid: u16,
    pub subsystem: Arc<Subsystem>,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// The listener the association came in through (its ANA view).
    pub listener: ListenAddress,
    /// Keep-alive timeout in ms; 0 disables it.
    kato_ms: AtomicU32,
    /// When the last Keep Alive (or the Connect) arrived, in ms since `born`.
    last_keep_alive_ms: AtomicU64,
    born: Instant,
    /// CC and CSTS properties.
    cc: AtomicU32,
    csts: AtomicU32,
    /// Set when the association must end: every queue of it closes.
    failed: AtomicBool,
    /// Set when events wait for the admin queue.
    events_pending: AtomicBool,
    state: Mutex<ControllerState>,
}

/// CSTS bits.
pub const CSTS_RDY: u32 = 1;
pub const CSTS_CFS: u32 = 1 << 1;
pub const CSTS_SHST_COMPLETE: u32 = 0b10 << 2;
/// CC bits.
pub const CC_EN: u32 = 1;

impl Controller {
    /// Every argument is one Connect field or target setting; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cntlid: u16,
        subsystem: Arc<Subsystem>,
        hostnqn: String,
        hostid: [u8; 16],
        listener: ListenAddress,
        kato_ms: u32,
        max_io_queues: u16,
        volatile_write_cache: bool,
    ) -> Self {
        Self {
            cntlid,
            subsystem,
            hostnqn,
            hostid,
            listener,
            kato_ms: AtomicU32::new(kato_ms),
            last_keep_alive_ms: AtomicU64::new(0),
            born: Instant::now(),
            cc: AtomicU32::new(0),
            csts: AtomicU32::new(0),
            failed: AtomicBool::new(false),
            events_pending: AtomicBool::new(false),
            state: Mutex::new(ControllerState {
                async_event_config: 0,
                pending: VecDeque::new(),
                masked_ns_attr: false,
                masked_ana: false,
                masked_discovery: false,
                changed_namespaces: Some(Vec::new()),
                io_queues_granted: None,
                io_queues: vec![false; usize::from(max_io_queues) + 1],
                arbitration: 0,
                temperature_threshold: 0x0157, // 343 K, the usual default
                error_recovery: 0,
                write_atomicity: 0,
                volatile_write_cache,
            }),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, ControllerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    // --- liveness -------------------------------------------------------------------------

    /// Ends the association: its queues see this on their next poll and close.
    pub fn fail(&self, why: &str) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::info!(
                nqn = %self.subsystem.nqn,
                cntlid = self.cntlid,
                host = %self.hostnqn,
                why,
                "nvmf: controller torn down"
            );
        }
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn kato_ms(&self) -> u32 {
        self.kato_ms.load(Ordering::Relaxed)
    }

    pub fn set_kato_ms(&self, ms: u32) {
        self.kato_ms.store(ms, Ordering::Relaxed);
        self.keep_alive();
    }

    /// Restarts the keep-alive timer.
    pub fn keep_alive(&self) {
        self.last_keep_alive_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Whether the host has been silent longer than its keep-alive timeout.
    pub fn keep_alive_expired(&self) -> bool {
        let kato = u64::from(self.kato_ms());
        if kato == 0 {
            return false;
        }
        let now = self.born.elapsed().as_millis() as u64;
        now.saturating_sub(self.last_keep_alive_ms.load(Ordering::Relaxed)) > kato
    }

    // --- properties -----------------------------------------------------------------------

    pub fn cc(&self) -> u32 {
        self.cc.load(Ordering::Acquire)
    }

    pub fn csts(&self) -> u32 {
        let v = self.csts.load(Ordering::Acquire);
        if self.is_failed() {
            v | CSTS_CFS
        } else {
            v
        }
    }

    /// Whether I/O queues may carry commands (CC.EN = 1 and CSTS.RDY = 1).
    pub fn is_ready(&self) -> bool {
        self.csts.load(Ordering::Acquire) & CSTS_RDY != 0 && !self.is_failed()
    }

    pub(crate) fn store_cc(&self, cc: u32) {
        self.cc.store(cc, Ordering::Release);
    }

    pub(crate) fn store_csts(&self, csts: u32) {
        self.csts.store(csts, Ordering::Release);
    }

    // --- asynchronous events --------------------------------------------------------------

    /// Whether events wait (checked by the admin queue once per poll).
    pub fn has_pending_events(&self) -> bool {
        self.events_pending.load(Ordering::Acquire)
    }

    /// Takes the next event the host asked for and is not masked.
    pub fn take_event(&self) -> Option<PendingEvent> {
        let mut st = self.lock();
        let ev = st.pending.pop_front();
        if st.pending.is_empty() {
            self.events_pending.store(false, Ordering::Release);
        }
        match ev {
            Some(PendingEvent::NamespaceAttributeChanged) => st.masked_ns_attr = true,
            Some(PendingEvent::AnaChange) => st.masked_ana = true,
            Some(PendingEvent::DiscoveryLogChange) => st.masked_discovery = true,
            None => {}
        }
        ev
    }

    fn queue_event(&self, st: &mut ControllerState, ev: PendingEvent) {
        let (enabled, masked) = match ev {
            PendingEvent::NamespaceAttributeChanged => {
                (st.async_event_config & AEC_NS_ATTR != 0, st.masked_ns_attr)
            }
            PendingEvent::AnaChange => (st.async_event_config & AEC_ANA_CHANGE != 0, st.masked_ana),
            PendingEvent::DiscoveryLogChange => (
                st.async_event_config & AEC_DISCOVERY_LOG_CHANGE != 0,
                st.masked_discovery,
            ),
        };
        if enabled && !masked && !st.pending.contains(&ev) {
            st.pending.push_back(ev);
            self.events_pending.store(true, Ordering::Release);
        }
    }

    /// A namespace was added, removed or changed.
    pub fn notice_namespace_change(&self, nsid: u32) {
        let mut st = self.lock();
        if let Some(list) = st.changed_namespaces.as_mut() {
            if !list.contains(&nsid) {
                if list.len() >= 1024 {
                    st.changed_namespaces = None;
                } else {
                    list.push(nsid);
                    list.sort_unstable();
                }
            }
        }
        self.queue_event(&mut st, PendingEvent::NamespaceAttributeChanged);
    }

    pub fn notice_ana_change(&self) {
        let mut st = self.lock();
        self.queue_event(&mut st, PendingEvent::AnaChange);
    }

    pub fn notice_discovery_change(&self) {
        let mut st = self.lock();
        self.queue_event(&mut st, PendingEvent::DiscoveryLogChange);
    }

    /// Events raised before the host enabled them are not replayed; an event enabled later
    /// fires on the next change.
    pub fn set_async_event_config(&self, v: u32) {
        self.lock().async_event_config = v;
    }
}

impl Controller {
    /// Marks I/O queue `qid` connected; false if it is out of range or already connected.
    pub fn claim_io_queue(&self, qid: u16) -> bool {
        let mut st = self.lock();
        let granted = st
            .io_queues_granted
            .map_or(st.io_queues.len() - 1, |g| usize::from(g) + 1);
        let q = usize::from(qid);
        if q == 0 || q > granted || q >= st.io_queues.len() || st.io_queues[q] {
            return false;
        }
        st.io_queues[q] = true;
        true
    }

    pub fn release_io_queue(&self, qid: u16) {
        if let Some(q) = self.lock().io_queues.get_mut(usize::from(qid)) {
            *q = false;
        }
    }

    /// CC.EN went to 0: the I/O queues of the association go away. Queues notice through
    /// `is_ready` and close; the admin queue stays.
    pub fn reset_io_queues(&self) {
        let mut st = self.lock();
        st.io_queues_granted = None;
    }
}
