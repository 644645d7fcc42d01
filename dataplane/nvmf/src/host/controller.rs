//! A controller association: the admin queue, brought up and torn down the way the NVMe over
//! Fabrics specification orders it, and kept alive.
//!
//! Bring-up: ICReq (digests as asked), Fabrics Connect on queue 0 with CNTLID FFFFh (dynamic
//! model), the host NQN and Host Identifier and KATO; Property Get CAP and VS; Property Set CC
//! (EN=1, IOSQES=6, IOCQES=4) and CSTS.RDY polled within CAP.TO; Identify Controller (MDTS,
//! IOCCSZ, ...); Set Features Number of Queues. Tear-down: CC.SHN = normal, CSTS.SHST polled
//! until complete, then the socket closes.
//!
//! The admin queue is polled by its owner ([`Controller::poll`]): that sends Keep Alive at half
//! the KATO, notices a dead connection and, after a back-off, builds a new association. What I/O
//! queues need to (re)connect — the current controller ID and its limits — is published in the
//! [`ControllerLink`] with a generation number that moves with every new association.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gyre_nvme::command::keep_alive_command;
use gyre_nvme::fabrics::{PropertyGetCommand, PropertySetCommand, PropertySize};
use gyre_nvme::identify::IDENTIFY_DATA_SIZE;
use gyre_nvme::properties::{offset as prop, shn, shst};
use gyre_nvme::{
    Cap, Cc, Cns, Command, Completion, ConnectCommand, ConnectData, ConnectResponse, Csts,
    FeatureId, GetLogPageCommand, IdentifyCommand, IdentifyController, IdentifyNamespace, Nqn,
    SetFeaturesCommand, Version,
};

use super::error::{HostError, TransportError};
use super::io::IoQueue;
use super::options::HostOptions;
use super::queue::{QueueConfig, QueuePair, Transfer, ADMIN_IN_CAPSULE};

/// Admin queue entries (SQSIZE + 1): what every target accepts.
const ADMIN_QUEUE_ENTRIES: u16 = 32;
/// Largest admin data transfer we ask for at once (log pages are read in pieces).
const ADMIN_MAX_TRANSFER: u32 = 64 * 1024;
/// Time between CSTS reads while waiting for RDY or SHST.
const CSTS_POLL: Duration = Duration::from_millis(5);

/// What the controller told us at bring-up.
#[derive(Debug, Clone)]
pub struct ControllerInfo {
    pub subnqn: String,
    pub cntlid: u16,
    pub cap: Cap,
    pub version: Version,
    pub identify: Box<IdentifyController>,
    /// I/O queues granted by Set Features Number of Queues (0 for a discovery controller).
    pub io_queues: u16,
    /// Largest transfer of one command: the host's limit and MDTS, whichever is smaller.
    pub max_transfer: u32,
    /// In-capsule data bytes an I/O command may carry (from IOCCSZ; 0 when disabled).
    pub in_capsule_data: u32,
    /// Largest I/O queue (CAP.MQES + 1 entries).
    pub max_queue_entries: u32,
}

/// An active namespace as Identify Namespace describes it.
#[derive(Debug, Clone)]
pub struct NamespaceInfo {
    pub nsid: u32,
    pub block_size: u32,
    /// NSZE: size in logical blocks.
    pub num_blocks: u64,
    pub identify: Box<IdentifyNamespace>,
}

/// The parts of an association an I/O queue needs to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Association {
    pub generation: u64,
    pub cntlid: u16,
    pub io_queues: u16,
    pub max_transfer: u32,
    pub in_capsule_data: u32,
    pub max_queue_entries: u32,
}

struct LinkState {
    assoc: Option<Association>,
    /// Which QIDs (index = QID) an I/O queue of ours holds.
    qids: Vec<bool>,
}

struct LinkInner {
    addr: SocketAddr,
    subnqn: String,
    opts: HostOptions,
    generation: AtomicU64,
    closed: AtomicBool,
    state: Mutex<LinkState>,
}

/// What I/O queues connect through: the target's address, the subsystem, the host options and
/// the current association. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct ControllerLink {
    inner: Arc<LinkInner>,
}

impl std::fmt::Debug for ControllerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerLink")
            .field("addr", &self.inner.addr)
            .field("subnqn", &self.inner.subnqn)
            .field("generation", &self.generation())
            .finish()
    }
}

impl ControllerLink {
    fn new(addr: SocketAddr, subnqn: &str, opts: &HostOptions) -> Self {
        ControllerLink {
            inner: Arc::new(LinkInner {
                addr,
                subnqn: subnqn.to_string(),
                opts: opts.clone(),
                generation: AtomicU64::new(0),
                closed: AtomicBool::new(false),
                state: Mutex::new(LinkState {
                    assoc: None,
                    qids: Vec::new(),
                }),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    pub fn subnqn(&self) -> &str {
        &self.inner.subnqn
    }

    pub fn options(&self) -> &HostOptions {
        &self.inner.opts
    }

    /// Moves on every new association (0: none yet). One atomic load: I/O queues check it
    /// each poll.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// The controller was disconnected for good: I/O queues stop reconnecting.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    pub(crate) fn association(&self) -> Option<Association> {
        self.lock().assoc
    }

    fn publish(&self, assoc: Option<Association>) {
        let mut st = self.lock();
        st.assoc = assoc;
        if let Some(a) = assoc {
            self.inner.generation.store(a.generation, Ordering::Release);
        }
    }

    /// Claims the lowest free QID the association granted.
    pub(crate) fn claim_qid(&self) -> Result<u16, HostError> {
        let mut st = self.lock();
        let granted = st.assoc.map_or(0, |a| a.io_queues) as usize;
        if st.qids.len() < granted + 1 {
            st.qids.resize(granted + 1, false);
        }
        let free = (1..=granted).find(|&q| !st.qids[q]);
        match free {
            Some(q) => {
                st.qids[q] = true;
                Ok(q as u16)
            }
            None if st.assoc.is_none() => Err(HostError::NotConnected),
            None => Err(HostError::InvalidArgument(format!(
                "all {granted} granted I/O queues are in use"
            ))),
        }
    }

    pub(crate) fn release_qid(&self, qid: u16) {
        let mut st = self.lock();
        if let Some(q) = st.qids.get_mut(qid as usize) {
            *q = false;
        }
    }

    /// Connects a new I/O queue on the lowest free QID (blocking, bounded by the connect
    /// timeout). Call it on the thread that will poll the queue.
    pub fn connect_io_queue(&self) -> Result<IoQueue, HostError> {
        IoQueue::connect(self.clone())
    }
}

struct KeepAlive {
    /// Time between Keep Alive commands (KATO / 2); `None` when KATO is 0.
    interval: Option<Duration>,
    kato: Duration,
    last_sent: Instant,
    outstanding: Option<(u64, Instant)>,
}

struct Lost {
    error: TransportError,
    failed_attempts: u32,
    next_try: Instant,
}

/// An NVMe-oF controller reached over NVMe/TCP: the admin queue and what it learnt.
pub struct Controller {
    link: ControllerLink,
    admin: Option<QueuePair<Vec<u8>>>,
    info: ControllerInfo,
    next_tag: u64,
    ka: KeepAlive,
    lost: Option<Lost>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("addr", &self.link.addr())
            .field("subnqn", &self.info.subnqn)
            .field("cntlid", &self.info.cntlid)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Controller {
    /// Connects the admin queue of subsystem `subnqn` at `addr` and brings the controller up
    /// (blocking; each step bounded by the options' timeouts).
    pub fn connect(addr: SocketAddr, subnqn: &str, opts: &HostOptions) -> Result<Self, HostError> {
        opts.validate()?;
        Nqn::new(subnqn).map_err(|e| HostError::InvalidArgument(format!("subsystem NQN: {e}")))?;
        let link = ControllerLink::new(addr, subnqn, opts);
        let mut next_tag = 1;
        let (admin, info) = establish(&link, &mut next_tag)?;
        link.publish(Some(association(&info, 1)));
        let kato = opts.keep_alive_timeout;
        Ok(Controller {
            link,
            admin: Some(admin),
            info,
            next_tag,
            ka: KeepAlive {
                interval: (!kato.is_zero()).then(|| kato / 2),
                kato,
                last_sent: Instant::now(),
                outstanding: None,
            },
            lost: None,
        })
    }

    pub fn info(&self) -> &ControllerInfo {
        &self.info
    }

    /// What I/O queues connect through (clone it to other threads).
    pub fn link(&self) -> ControllerLink {
        self.link.clone()
    }

    pub fn is_connected(&self) -> bool {
        self.admin.as_ref().is_some_and(|q| q.is_connected())
    }

    /// Why the admin connection is down, while it is.
    pub fn failure(&self) -> Option<TransportError> {
        self.lost.as_ref().map(|l| l.error)
    }

    /// Connects an I/O queue of this controller (see [`ControllerLink::connect_io_queue`]).
    pub fn connect_io_queue(&self) -> Result<IoQueue, HostError> {
        self.link.connect_io_queue()
    }

    /// Runs the admin queue: completions, Keep Alive at KATO/2 (a keep-alive unanswered for a
    /// whole KATO drops the connection), and after a loss, reconnection with back-off. Call it
    /// regularly (every few milliseconds is plenty). Fails only when the reconnect policy
    /// gives up.
    pub fn poll(&mut self) -> Result<(), HostError> {
        let now = Instant::now();
        if let Some(q) = self.admin.as_mut() {
            // Keep-alive first, so that the poll below sends it and may already see its answer.
            if let (true, Some(interval)) = (q.is_connected(), self.ka.interval) {
                match self.ka.outstanding {
                    Some((_, sent)) if now.duration_since(sent) > self.ka.kato => {
                        q.close();
                    }
                    None if now.duration_since(self.ka.last_sent) >= interval => {
                        let tag = self.next_tag;
                        self.next_tag += 1;
                        if q.submit(keep_alive_command(0), Transfer::None, None, tag)
                            .is_ok()
                        {
                            self.ka.outstanding = Some((tag, now));
                            self.ka.last_sent = now;
                        }
                    }
                    _ => {}
                }
            }
            let ka = &mut self.ka;
            q.poll(|tag, _result, _buf| {
                if ka.outstanding.is_some_and(|(t, _)| t == tag) {
                    // Any answer, even an error status, shows the controller is there.
                    ka.outstanding = None;
                }
            });
            if let Some(e) = q.failure() {
                tracing::warn!(addr = %self.link.addr(), nqn = %self.info.subnqn, error = %e,
                    "nvmf host: admin connection lost");
                self.admin = None;
                self.ka.outstanding = None;
                self.link.publish(None);
                self.lost = Some(Lost {
                    error: e,
                    failed_attempts: 0,
                    next_try: now + self.link.options().reconnect.delay(0),
                });
            }
            return Ok(());
        }
        if self.link.is_closed() {
            return Err(HostError::NotConnected);
        }
        let Some(lost) = self.lost.as_mut() else {
            return Err(HostError::NotConnected);
        };
        if now < lost.next_try {
            return Ok(());
        }
        let policy = self.link.options().reconnect;
        if !policy.allows(lost.failed_attempts) {
            return Err(HostError::ReconnectExhausted(lost.failed_attempts));
        }
        match establish(&self.link, &mut self.next_tag) {
            Ok((admin, info)) => {
                let generation = self.link.generation() + 1;
                tracing::info!(addr = %self.link.addr(), nqn = %info.subnqn, cntlid = info.cntlid,
                    generation, "nvmf host: admin queue reconnected");
                self.link.publish(Some(association(&info, generation)));
                self.admin = Some(admin);
                self.info = info;
                self.lost = None;
                self.ka.last_sent = Instant::now();
                Ok(())
            }
            Err(e) => {
                lost.failed_attempts += 1;
                lost.next_try = Instant::now() + policy.delay(lost.failed_attempts);
                tracing::debug!(error = %e, attempts = lost.failed_attempts,
                    "nvmf host: admin reconnect failed");
                if policy.allows(lost.failed_attempts) {
                    Ok(())
                } else {
                    Err(HostError::ReconnectExhausted(lost.failed_attempts))
                }
            }
        }
    }

    /// Runs one admin command to completion (blocking, bounded by the admin timeout); keeps
    /// serving keep-alive completions meanwhile. A non-success status is an error.
    pub fn admin_command(
        &mut self,
        what: &'static str,
        cmd: Command,
        transfer: Transfer,
        buf: Option<Vec<u8>>,
    ) -> Result<(Completion, Option<Vec<u8>>), HostError> {
        let timeout = self.link.options().admin_timeout;
        let tag = self.next_tag;
        self.next_tag += 1;
        let Some(q) = self.admin.as_mut() else {
            return Err(HostError::NotConnected);
        };
        let ka = &mut self.ka;
        let (result, buf) = q.run_blocking(cmd, transfer, buf, tag, timeout, |t, _, _| {
            if ka.outstanding.is_some_and(|(k, _)| k == t) {
                ka.outstanding = None;
            }
        })?;
        let cqe = result.map_err(|e| HostError::from_command(what, e))?;
        if !cqe.status.is_success() {
            return Err(HostError::Status {
                command: what,
                status: cqe.status,
            });
        }
        Ok((cqe, buf))
    }

    /// Identify Namespace `nsid`.
    pub fn identify_namespace(&mut self, nsid: u32) -> Result<NamespaceInfo, HostError> {
        let cmd = IdentifyCommand {
            nsid,
            cns: Cns::NAMESPACE,
            ..Default::default()
        }
        .to_command(0, Default::default());
        let data = self.read_data("Identify Namespace", cmd, IDENTIFY_DATA_SIZE)?;
        let id = IdentifyNamespace::decode(&data)
            .map_err(|e| HostError::decode("Identify Namespace", e))?;
        if id.nsze == 0 {
            return Err(HostError::InvalidResponse {
                command: "Identify Namespace",
                reason: format!("namespace {nsid} is not active"),
            });
        }
        let block_size = id.block_size().ok_or_else(|| HostError::InvalidResponse {
            command: "Identify Namespace",
            reason: "no valid formatted LBA size".into(),
        })?;
        Ok(NamespaceInfo {
            nsid,
            block_size,
            num_blocks: id.nsze,
            identify: Box::new(id),
        })
    }

    /// The active namespace IDs (Identify CNS 02h), in increasing order.
    pub fn active_namespaces(&mut self) -> Result<Vec<u32>, HostError> {
        let cmd = IdentifyCommand {
            nsid: 0,
            cns: Cns::ACTIVE_NAMESPACE_LIST,
            ..Default::default()
        }
        .to_command(0, Default::default());
        let data = self.read_data("Identify Active Namespace List", cmd, IDENTIFY_DATA_SIZE)?;
        Ok(data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .take_while(|&n| n != 0)
            .collect())
    }

    /// Reads `len` bytes (a multiple of 4) of log page `lid` from byte `offset`.
    pub fn get_log_page(
        &mut self,
        lid: u8,
        nsid: u32,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, HostError> {
        if len > ADMIN_MAX_TRANSFER {
            return Err(HostError::InvalidArgument(format!(
                "log page read of {len} bytes exceeds {ADMIN_MAX_TRANSFER}"
            )));
        }
        let g = GetLogPageCommand::for_window(lid, nsid, offset, len)
            .map_err(|e| HostError::InvalidArgument(e.to_string()))?;
        let cmd = g.to_command(0, Default::default());
        self.read_data("Get Log Page", cmd, len as usize)
    }

    /// Set Features `fid` with CDW11 = `value`; returns completion dword 0.
    pub fn set_feature(&mut self, fid: u8, value: u32) -> Result<u32, HostError> {
        let cmd = SetFeaturesCommand {
            fid,
            cdw11: value,
            ..Default::default()
        }
        .to_command(0);
        Ok(self
            .admin_command("Set Features", cmd, Transfer::None, None)?
            .0
            .dw0)
    }

    /// Get Features `fid` (current value); returns completion dword 0.
    pub fn get_feature(&mut self, fid: u8) -> Result<u32, HostError> {
        let mut cmd = Command::new(gyre_nvme::AdminOpcode::GetFeatures as u8, 0);
        cmd.cdw10 = u32::from(fid);
        Ok(self
            .admin_command("Get Features", cmd, Transfer::None, None)?
            .0
            .dw0)
    }

    /// Sends one Keep Alive and waits for it.
    pub fn keep_alive(&mut self) -> Result<(), HostError> {
        self.admin_command("Keep Alive", keep_alive_command(0), Transfer::None, None)?;
        self.ka.last_sent = Instant::now();
        Ok(())
    }

    /// Reads a controller property (4 or 8 bytes).
    pub fn property_get(&mut self, offset: u32, size: PropertySize) -> Result<u64, HostError> {
        let cmd = PropertyGetCommand {
            cid: 0,
            size,
            offset,
        }
        .to_command();
        let (c, _) = self.admin_command("Property Get", cmd, Transfer::None, None)?;
        Ok(c.result_u64())
    }

    fn read_data(
        &mut self,
        what: &'static str,
        cmd: Command,
        len: usize,
    ) -> Result<Vec<u8>, HostError> {
        let (_, buf) = self.admin_command(
            what,
            cmd,
            Transfer::ControllerToHost(len as u32),
            Some(vec![0u8; len]),
        )?;
        buf.ok_or(HostError::InvalidResponse {
            command: what,
            reason: "no data buffer returned".into(),
        })
    }

    /// Shuts the controller down (CC.SHN = normal, then CSTS.SHST = complete within the admin
    /// timeout) and closes the admin connection. I/O queues of this controller stop
    /// reconnecting; close them first.
    pub fn disconnect(mut self) -> Result<(), HostError> {
        self.link.inner.closed.store(true, Ordering::Release);
        let result = self.shutdown();
        if let Some(q) = self.admin.as_mut() {
            q.close();
            q.poll(|_, _, _| {});
        }
        self.admin = None;
        self.link.publish(None);
        result
    }

    fn shutdown(&mut self) -> Result<(), HostError> {
        let Some(q) = self.admin.as_mut() else {
            return Err(HostError::NotConnected);
        };
        let timeout = self.link.options().admin_timeout;
        let cc = Cc(prop_get(q, &mut self.next_tag, prop::CC, PropertySize::Four, timeout)? as u32);
        let new = Cc::build(
            cc.en(),
            cc.css(),
            cc.mps(),
            cc.ams(),
            shn::NORMAL,
            cc.iosqes(),
            cc.iocqes(),
        );
        prop_set(q, &mut self.next_tag, prop::CC, new.0, timeout)?;
        let deadline = Instant::now() + timeout;
        loop {
            let csts = Csts(prop_get(
                q,
                &mut self.next_tag,
                prop::CSTS,
                PropertySize::Four,
                timeout,
            )? as u32);
            if csts.shst() == shst::COMPLETE {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HostError::Timeout("shutdown (CSTS.SHST)"));
            }
            std::thread::sleep(CSTS_POLL);
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(q) = self.admin.as_mut() {
            q.close();
        }
        self.link.inner.closed.store(true, Ordering::Release);
        self.link.publish(None);
    }
}

fn association(info: &ControllerInfo, generation: u64) -> Association {
    Association {
        generation,
        cntlid: info.cntlid,
        io_queues: info.io_queues,
        max_transfer: info.max_transfer,
        in_capsule_data: info.in_capsule_data,
        max_queue_entries: info.max_queue_entries,
    }
}

/// Runs an admin command during bring-up (nothing else is in flight).
fn run(
    q: &mut QueuePair<Vec<u8>>,
    next_tag: &mut u64,
    what: &'static str,
    cmd: Command,
    transfer: Transfer,
    buf: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(Completion, Option<Vec<u8>>), HostError> {
    let tag = *next_tag;
    *next_tag += 1;
    let (result, buf) = q.run_blocking(cmd, transfer, buf, tag, timeout, |_, _, _| {})?;
    let cqe = result.map_err(|e| HostError::from_command(what, e))?;
    Ok((cqe, buf))
}

fn ok(what: &'static str, c: Completion) -> Result<Completion, HostError> {
    if c.status.is_success() {
        Ok(c)
    } else {
        Err(HostError::Status {
            command: what,
            status: c.status,
        })
    }
}

fn prop_get(
    q: &mut QueuePair<Vec<u8>>,
    tag: &mut u64,
    offset: u32,
    size: PropertySize,
    timeout: Duration,
) -> Result<u64, HostError> {
    let cmd = PropertyGetCommand {
        cid: 0,
        size,
        offset,
    }
    .to_command();
    let (c, _) = run(q, tag, "Property Get", cmd, Transfer::None, None, timeout)?;
    Ok(ok("Property Get", c)?.result_u64())
}

fn prop_set(
    q: &mut QueuePair<Vec<u8>>,
    tag: &mut u64,
    offset: u32,
    value: u32,
    timeout: Duration,
) -> Result<(), HostError> {
    let cmd = PropertySetCommand {
        cid: 0,
        size: PropertySize::Four,
        offset,
        value: u64::from(value),
    }
    .to_command();
    let (c, _) = run(q, tag, "Property Set", cmd, Transfer::None, None, timeout)?;
    ok("Property Set", c).map(|_| ())
}

/// Sends Fabrics Connect for queue `qid` and returns the controller ID it answered with.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fabrics_connect<B: super::DataBuffer>(
    q: &mut QueuePair<B>,
    opts: &HostOptions,
    subnqn: &str,
    qid: u16,
    cntlid: u16,
    entries: u16,
    cattr: u8,
    kato_ms: u32,
) -> Result<u16, HostError> {
    let data = ConnectData {
        hostid: opts.hostid,
        cntlid,
        subnqn: Nqn::new(subnqn)
            .map_err(|e| HostError::InvalidArgument(format!("subsystem NQN: {e}")))?,
        hostnqn: Nqn::new(&opts.hostnqn)
            .map_err(|e| HostError::InvalidArgument(format!("host NQN: {e}")))?,
    };
    let mut bytes = [0u8; ConnectData::SIZE];
    data.encode(&mut bytes)
        .map_err(|e| HostError::InvalidArgument(e.to_string()))?;
    let cmd = ConnectCommand {
        cid: 0,
        dptr: Default::default(),
        recfmt: 0,
        qid,
        sqsize: entries.saturating_sub(1),
        cattr,
        kato: kato_ms,
    }
    .to_command();
    const CONNECT_TAG: u64 = u64::MAX;
    q.submit_connect(cmd, &bytes, CONNECT_TAG)?;
    let (result, _) = q.wait_for(CONNECT_TAG, opts.connect_timeout, |_, _, _| {})?;
    let cqe = result.map_err(|e| HostError::from_command("Connect", e))?;
    match ConnectResponse::from_completion(&cqe) {
        ConnectResponse::Success { cntlid, authreq } => {
            if authreq != 0 {
                return Err(HostError::InvalidResponse {
                    command: "Connect",
                    reason: format!("the controller requires authentication (AUTHREQ {authreq:#x}), which this host does not do"),
                });
            }
            Ok(cntlid)
        }
        ConnectResponse::InvalidParameters { in_data, offset } => {
            Err(HostError::ConnectInvalidParameters { in_data, offset })
        }
        ConnectResponse::Failed(status) => Err(HostError::Status {
            command: "Connect",
            status,
        }),
    }
}

/// Connects and brings up the admin queue of a new association.
fn establish(
    link: &ControllerLink,
    next_tag: &mut u64,
) -> Result<(QueuePair<Vec<u8>>, ControllerInfo), HostError> {
    let opts = link.options();
    let subnqn = link.subnqn();
    let discovery = subnqn == Nqn::DISCOVERY;
    let cfg = QueueConfig {
        depth: ADMIN_QUEUE_ENTRIES - 1,
        max_transfer: ADMIN_MAX_TRANSFER,
        in_capsule_max: ADMIN_IN_CAPSULE,
        header_digest: opts.header_digest,
        data_digest: opts.data_digest,
        sq_flow_disabled: false,
        exact_c2h: false,
    };
    let mut q = QueuePair::<Vec<u8>>::connect(link.addr(), cfg, opts.connect_timeout)?;
    let kato_ms = opts.keep_alive_timeout.as_millis().min(u32::MAX as u128) as u32;
    let cntlid = fabrics_connect(
        &mut q,
        opts,
        subnqn,
        0,
        ConnectData::CNTLID_DYNAMIC,
        ADMIN_QUEUE_ENTRIES,
        0,
        kato_ms,
    )?;
    let t = opts.admin_timeout;
    let cap = Cap(prop_get(
        &mut q,
        next_tag,
        prop::CAP,
        PropertySize::Eight,
        t,
    )?);
    let version = Version(prop_get(&mut q, next_tag, prop::VS, PropertySize::Four, t)? as u32);
    let cc = Cc::build(true, 0, 0, 0, 0, 6, 4);
    prop_set(&mut q, next_tag, prop::CC, cc.0, t)?;
    // CAP.TO is in 500 ms units: the longest the controller may take to become ready.
    let ready_within = Duration::from_millis(500 * u64::from(cap.to().max(1)));
    let deadline = Instant::now() + ready_within;
    loop {
        let csts = Csts(prop_get(&mut q, next_tag, prop::CSTS, PropertySize::Four, t)? as u32);
        if csts.cfs() {
            return Err(HostError::InvalidResponse {
                command: "enable",
                reason: "controller fatal status (CSTS.CFS)".into(),
            });
        }
        if csts.rdy() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(HostError::Timeout("controller enable (CSTS.RDY)"));
        }
        std::thread::sleep(CSTS_POLL);
    }
    let id_cmd = IdentifyCommand {
        nsid: 0,
        cns: Cns::CONTROLLER,
        ..Default::default()
    }
    .to_command(0, Default::default());
    let (c, data) = run(
        &mut q,
        next_tag,
        "Identify Controller",
        id_cmd,
        Transfer::ControllerToHost(IDENTIFY_DATA_SIZE as u32),
        Some(vec![0u8; IDENTIFY_DATA_SIZE]),
        t,
    )?;
    ok("Identify Controller", c)?;
    let data = data.unwrap_or_default();
    let identify = IdentifyController::decode(&data)
        .map_err(|e| HostError::decode("Identify Controller", e))?;
    let io_queues = if discovery {
        0
    } else {
        let want = u32::from(opts.io_queues.saturating_sub(1));
        let cmd = SetFeaturesCommand {
            fid: FeatureId::NUMBER_OF_QUEUES,
            cdw11: want | (want << 16),
            ..Default::default()
        }
        .to_command(0);
        let (c, _) = run(
            &mut q,
            next_tag,
            "Set Features (Number of Queues)",
            cmd,
            Transfer::None,
            None,
            t,
        )?;
        let c = ok("Set Features (Number of Queues)", c)?;
        let nsqa = (c.dw0 & 0xFFFF) as u16;
        let ncqa = (c.dw0 >> 16) as u16;
        nsqa.min(ncqa).saturating_add(1).min(opts.io_queues)
    };
    let min_page = 4096u64 << cap.mpsmin();
    let mdts = identify.max_transfer_bytes(min_page).unwrap_or(u64::MAX);
    let max_transfer = u64::from(opts.max_io_size)
        .min(mdts)
        .min(u64::from(u32::MAX)) as u32;
    let in_capsule_data = if opts.in_capsule_data && identify.icdoff == 0 {
        (identify.ioccsz.saturating_mul(16))
            .saturating_sub(64)
            .min(max_transfer)
    } else {
        0
    };
    let info = ControllerInfo {
        subnqn: subnqn.to_string(),
        cntlid,
        cap,
        version,
        identify: Box::new(identify),
        io_queues,
        max_transfer,
        in_capsule_data,
        max_queue_entries: u32::from(cap.mqes()) + 1,
    };
    Ok((q, info))
}
