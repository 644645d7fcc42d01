//! Fabrics and admin commands: Connect, properties, Identify, Get Log Page, features, Keep
//! Alive and asynchronous events. These run on the admin queue's reactor, off the I/O path:
//! they may take the control-path mutexes and build their answers in ordinary memory.

use std::net::SocketAddr;
use std::sync::Arc;

use gyre_nvme::identify::{cntrltype, csi, ctrl, ns};
use gyre_nvme::{
    ActiveNamespaceList, AsyncEvent, Cap, Cc, Command, ConnectCommand, ConnectData, FeatureId,
    FeatureSelect, GetFeaturesCommand, GetLogPageCommand, IdentifyCommand, IdentifyController,
    IdentifyNamespace, LbaFormat, NsIdDescriptor, NsIdDescriptorList, SetFeaturesCommand, Status,
    Version,
};
use gyre_reactor::SgList;

use crate::config::{AnaState, ListenAddress};

use crate::target::controller::{
    Controller, PendingEvent, AEC_ANA_CHANGE, AEC_DISCOVERY_LOG_CHANGE, AEC_NS_ATTR, CC_EN,
    CSTS_RDY, CSTS_SHST_COMPLETE,
};
use crate::target::discovery;
use crate::target::subsystem::SubsystemKind;
use crate::target::TargetShared;

/// Asynchronous Event Requests a controller holds at once (AERL + 1).
pub const MAX_AERS: usize = 4;
/// Error log entries (ELPE + 1).
const ERROR_LOG_ENTRIES: usize = 4;
/// The version we implement.
pub const VERSION: Version = Version::V2_0;
/// CAP.TO in 500 ms units: how long a host waits for CSTS.RDY.
const CAP_TIMEOUT: u8 = 30;
const FIRMWARE_REVISION: &str = concat!("G", env!("CARGO_PKG_VERSION"));

// --- Connect ---------------------------------------------------------------------------------

/// A refused Connect: status and dword 0 (IATTR/IPO for invalid parameters).
#[derive(Debug, Clone, Copy)]
pub struct ConnectReply {
    pub status: Status,
    pub dw0: u32,
}

impl ConnectReply {
    fn invalid(in_data: bool, offset: u16) -> Self {
        Self {
            status: Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
            dw0: u32::from(offset) | (u32::from(in_data) << 16),
        }
    }

    fn status(status: Status) -> Self {
        Self { status, dw0: 0 }
    }

    /// Connect data missing or short.
    pub fn data_error() -> Self {
        Self::status(Status::DATA_SGL_LENGTH_INVALID.with_dnr())
    }
}

/// What a Connect made of the connection.
pub enum ConnectOutcome {
    Admin {
        ctrl: Arc<Controller>,
        entries: u16,
        sq_flow_disabled: bool,
    },
    Io {
        ctrl: Arc<Controller>,
        qid: u16,
        entries: u16,
        sq_flow_disabled: bool,
    },
    Refused(ConnectReply),
}

/// SQE byte offsets of Connect fields (for IPO).
const IPO_RECFMT: u16 = 40;
const IPO_QID: u16 = 42;
const IPO_SQSIZE: u16 = 44;
/// Connect data offsets.
const IPO_CNTLID: u16 = 16;
const IPO_SUBNQN: u16 = 256;
const IPO_HOSTNQN: u16 = 512;

pub fn connect(
    target: &TargetShared,
    cmd: &Command,
    data: &[u8; ConnectData::SIZE],
    listener: &ListenAddress,
    peer: &SocketAddr,
) -> ConnectOutcome {
    use ConnectOutcome::Refused;
    let c = match ConnectCommand::from_command(cmd) {
        Ok(c) => c,
        Err(e) => return Refused(ConnectReply::status(e.status())),
    };
    if c.recfmt != 0 {
        return Refused(ConnectReply::status(
            Status::CONNECT_INCOMPATIBLE_FORMAT.with_dnr(),
        ));
    }
    let _ = IPO_RECFMT;
    let d = match ConnectData::decode(data) {
        Ok(d) => d,
        Err(e) => {
            let off = e.offset().unwrap_or(0) as u16;
            return Refused(ConnectReply::invalid(true, off));
        }
    };
    let subnqn = d.subnqn.as_str();
    let hostnqn = d.hostnqn.as_str();
    let Some(sub) = target.subsystem(subnqn) else {
        tracing::info!(%peer, subnqn, hostnqn, "nvmf: connect to an unknown subsystem refused");
        return Refused(ConnectReply::invalid(true, IPO_SUBNQN));
    };
    if !sub.has_listener(listener) {
        tracing::info!(%peer, subnqn, %listener, "nvmf: connect through a listener the subsystem lacks refused");
        return Refused(ConnectReply::invalid(true, IPO_SUBNQN));
    }
    if !sub.host_allowed(hostnqn) {
        tracing::info!(%peer, subnqn, hostnqn, "nvmf: host not allowed");
        return Refused(ConnectReply::status(
            Status::CONNECT_INVALID_HOST.with_dnr(),
        ));
    }
    let entries = c.queue_entries();
    let sq_flow_disabled = c.disable_sq_flow_control();
    if c.qid == 0 {
        let max = u32::from(target.options.max_admin_queue_depth);
        if !(32..=max).contains(&entries) {
            return Refused(ConnectReply::invalid(false, IPO_SQSIZE));
        }
        if d.cntlid != ConnectData::CNTLID_DYNAMIC {
            // Dynamic controller model: the host must ask for "any controller".
            return Refused(ConnectReply::invalid(true, IPO_CNTLID));
        }
        if d.hostid == [0u8; 16] && sub.kind == SubsystemKind::Nvme {
            // A zero Host Identifier is not a host identity (NVMe Base: "Host Identifier").
            return Refused(ConnectReply::status(
                Status::HOST_IDENTIFIER_INCONSISTENT_FORMAT.with_dnr(),
            ));
        }
        let Some(cntlid) = target.allocate_cntlid(&sub) else {
            return Refused(ConnectReply::status(Status::CONNECT_CONTROLLER_BUSY));
        };
        let vwc = sub
            .namespaces()
            .iter()
            .any(|n| n.desc.info().volatile_write_cache());
        let ctrl = Arc::new(Controller::new(
            cntlid,
            sub.clone(),
            hostnqn.to_string(),
            d.hostid,
            *listener,
            c.kato,
            target.options.max_io_queues,
            vwc,
        ));
        ctrl.keep_alive();
        sub.add_controller(ctrl.clone());
        tracing::info!(
            %peer,
            nqn = subnqn,
            host = hostnqn,
            cntlid,
            kato_ms = c.kato,
            "nvmf: controller created"
        );
        return ConnectOutcome::Admin {
            ctrl,
            entries: entries as u16,
            sq_flow_disabled,
        };
    }
    // I/O queue: joins an existing controller of this host.
    if sub.kind == SubsystemKind::Discovery {
        return Refused(ConnectReply::invalid(false, IPO_QID));
    }
    let Some(ctrl) = sub.controller(d.cntlid) else {
        return Refused(ConnectReply::invalid(true, IPO_CNTLID));
    };
    if ctrl.hostnqn != hostnqn {
        return Refused(ConnectReply::invalid(true, IPO_HOSTNQN));
    }
    if ctrl.hostid != d.hostid {
        return Refused(ConnectReply::invalid(true, 0));
    }
    if !ctrl.is_ready() {
        return Refused(ConnectReply::status(
            Status::COMMAND_SEQUENCE_ERROR.with_dnr(),
        ));
    }
    let max_entries = u32::from(target.options.max_queue_depth);
    if !(2..=max_entries).contains(&entries) {
        return Refused(ConnectReply::invalid(false, IPO_SQSIZE));
    }
    if !ctrl.claim_io_queue(c.qid) {
        return Refused(ConnectReply::invalid(false, IPO_QID));
    }
    ConnectOutcome::Io {
        ctrl,
        qid: c.qid,
        entries: entries as u16,
        sq_flow_disabled,
    }
}

// --- properties -------------------------------------------------------------------------------

/// Property Get / Property Set. Returns the status and the value read.
pub fn property(ctrl: &Controller, target: &TargetShared, cmd: &Command) -> (Status, u64) {
    let set = cmd.fctype() == Some(0x00);
    if set {
        let p = match gyre_nvme::PropertySetCommand::from_command(cmd) {
            Ok(p) => p,
            Err(e) => return (e.status(), 0),
        };
        match p.offset {
            gyre_nvme::properties::offset::CC => (set_cc(ctrl, p.value as u32), 0),
            _ => (Status::INVALID_FIELD.with_dnr(), 0),
        }
    } else {
        let p = match gyre_nvme::PropertyGetCommand::from_command(cmd) {
            Ok(p) => p,
            Err(e) => return (e.status(), 0),
        };
        let value = match (p.offset, p.size.bytes()) {
            (gyre_nvme::properties::offset::CAP, 8) => cap(target).0,
            (gyre_nvme::properties::offset::VS, 4) => u64::from(VERSION.0),
            (gyre_nvme::properties::offset::CC, 4) => u64::from(ctrl.cc()),
            (gyre_nvme::properties::offset::CSTS, 4) => u64::from(ctrl.csts()),
            _ => return (Status::INVALID_FIELD.with_dnr(), 0),
        };
        (Status::SUCCESS, value)
    }
}

/// FUSES bit 0: fused Compare and Write is supported.
const FUSES_COMPARE_AND_WRITE: u16 = 1;

fn cap(target: &TargetShared) -> Cap {
    Cap::build(
        target.options.max_queue_depth - 1,
        true,
        0,
        CAP_TIMEOUT,
        0,
        false,
        gyre_nvme::properties::CAP_CSS_NVM,
        0,
        0,
    )
}

/// A CC write: enabling makes the controller ready at once; disabling resets it (its I/O
/// queues close); a shutdown notification completes at once (nothing is cached in volatile
/// memory of our own).
fn set_cc(ctrl: &Controller, value: u32) -> Status {
    let new = Cc(value);
    let old = Cc(ctrl.cc());
    if new.en() && !old.en() {
        if new.iosqes() != 6 || new.iocqes() != 4 || new.mps() != 0 || new.css() != 0 {
            return Status::INVALID_FIELD.with_dnr();
        }
        ctrl.store_cc(value);
        ctrl.store_csts(CSTS_RDY);
        return Status::SUCCESS;
    }
    if !new.en() && old.en() {
        ctrl.store_cc(value & !CC_EN);
        ctrl.store_csts(0);
        ctrl.reset_io_queues();
        return Status::SUCCESS;
    }
    if new.shn() != 0 {
        ctrl.store_cc(value);
        ctrl.store_csts((ctrl.csts() & CSTS_RDY) | CSTS_SHST_COMPLETE);
        return Status::SUCCESS;
    }
    ctrl.store_cc(value);
    Status::SUCCESS
}

// --- admin commands ---------------------------------------------------------------------------

/// What an admin command produced.
pub enum AdminReply {
    /// Completed; `data` (if any) goes to the host first.
    Done {
        status: Status,
        dw0: u32,
        data: Option<Vec<u8>>,
    },
    /// An Asynchronous Event Request to hold until something happens.
    ParkEvent,
}

fn done(status: Status) -> AdminReply {
    AdminReply::Done {
        status,
        dw0: 0,
        data: None,
    }
}

fn done_dw0(dw0: u32) -> AdminReply {
    AdminReply::Done {
        status: Status::SUCCESS,
        dw0,
        data: None,
    }
}

fn done_data(data: Vec<u8>) -> AdminReply {
    AdminReply::Done {
        status: Status::SUCCESS,
        dw0: 0,
        data: Some(data),
    }
}

const OPC_GET_LOG_PAGE: u8 = 0x02;
const OPC_IDENTIFY: u8 = 0x06;
const OPC_ABORT: u8 = 0x08;
const OPC_SET_FEATURES: u8 = 0x09;
const OPC_GET_FEATURES: u8 = 0x0A;
const OPC_ASYNC_EVENT_REQUEST: u8 = 0x0C;
const OPC_KEEP_ALIVE: u8 = 0x18;

pub fn execute(
    ctrl: &Controller,
    target: &TargetShared,
    _listener: &ListenAddress,
    cmd: &Command,
    host_data: &SgList,
    host_data_len: usize,
) -> AdminReply {
    let _ = (host_data, host_data_len);
    let discovery = ctrl.subsystem.kind == SubsystemKind::Discovery;
    if !ctrl.is_ready() && cmd.opcode != OPC_KEEP_ALIVE {
        // Until CC.EN=1 and CSTS.RDY=1 only fabrics commands are allowed.
        return done(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    }
    match cmd.opcode {
        OPC_IDENTIFY => identify(ctrl, target, cmd),
        OPC_GET_LOG_PAGE => get_log_page(ctrl, target, cmd),
        OPC_SET_FEATURES => set_features(ctrl, target, cmd),
        OPC_GET_FEATURES => get_features(ctrl, target, cmd),
        OPC_ASYNC_EVENT_REQUEST => AdminReply::ParkEvent,
        OPC_KEEP_ALIVE => {
            ctrl.keep_alive();
            done(Status::SUCCESS)
        }
        // Abort: we never abort (dword 0 bit 0 = 1: "command not aborted"), which the spec
        // allows; commands complete quickly anyway.
        OPC_ABORT if !discovery => done_dw0(1),
        _ => done(Status::INVALID_OPCODE.with_dnr()),
    }
}

/// Dword 0 of the AER completion for `ev`.
pub fn event_dw0(ev: PendingEvent) -> u32 {
    match ev {
        PendingEvent::NamespaceAttributeChanged => AsyncEvent::namespace_attribute_changed(),
        PendingEvent::AnaChange => AsyncEvent::ana_change(),
        PendingEvent::DiscoveryLogChange => AsyncEvent::discovery_log_change(),
    }
    .to_dw0()
}

fn identify(ctrl: &Controller, target: &TargetShared, cmd: &Command) -> AdminReply {
    let id = IdentifyCommand::from_command(cmd);
    let sub = &ctrl.subsystem;
    let mut page = vec![0u8; gyre_nvme::identify::IDENTIFY_DATA_SIZE];
    let nvm = sub.kind == SubsystemKind::Nvme;
    match id.cns {
        gyre_nvme::Cns::CONTROLLER => {
            let c = identify_controller(ctrl, target);
            if c.encode(&mut page).is_err() {
                return done(Status::INTERNAL_ERROR);
            }
        }
        gyre_nvme::Cns::NAMESPACE | gyre_nvme::Cns::IOCS_INDEPENDENT_NAMESPACE if nvm => {
            if id.nsid == 0 || id.nsid == u32::MAX || id.nsid > sub.max_namespaces {
                return done(Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr());
            }
            // An inactive NSID in range reads as zeroes.
            if let Some(n) = sub.namespace(id.nsid) {
                if id.cns == gyre_nvme::Cns::NAMESPACE {
                    let state = sub.ana_state(&ctrl.listener, n.ana_group);
                    if identify_namespace(&n, state).encode(&mut page).is_err() {
                        return done(Status::INTERNAL_ERROR);
                    }
                } else {
                    independent_namespace(
                        &n,
                        sub.ana_state(&ctrl.listener, n.ana_group),
                        &mut page,
                    );
                }
            }
        }
        gyre_nvme::Cns::ACTIVE_NAMESPACE_LIST if nvm => {
            if id.nsid >= 0xFFFF_FFFE {
                return done(Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr());
            }
            if ActiveNamespaceList::encode(sub.nsids(), id.nsid, &mut page).is_err() {
                return done(Status::INTERNAL_ERROR);
            }
        }
        gyre_nvme::Cns::IOCS_ACTIVE_NAMESPACE_LIST if nvm => {
            if id.nsid >= 0xFFFF_FFFE {
                return done(Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr());
            }
            let list = if id.csi == csi::NVM {
                sub.nsids()
            } else {
                Vec::new()
            };
            if ActiveNamespaceList::encode(list, id.nsid, &mut page).is_err() {
                return done(Status::INTERNAL_ERROR);
            }
        }
        gyre_nvme::Cns::NAMESPACE_ID_DESCRIPTORS if nvm => {
            let Some(n) = sub.namespace(id.nsid) else {
                return done(Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr());
            };
            let descs = [
                NsIdDescriptor::Eui64(n.eui64),
                NsIdDescriptor::Nguid(n.nguid),
                NsIdDescriptor::Uuid(n.uuid),
                NsIdDescriptor::Csi(csi::NVM),
            ];
            if NsIdDescriptorList::encode(&descs, &mut page).is_err() {
                return done(Status::INTERNAL_ERROR);
            }
        }
        gyre_nvme::Cns::IOCS_NAMESPACE if nvm => {
            if id.csi != csi::NVM {
                return done(Status::INVALID_FIELD.with_dnr());
            }
            if sub.namespace(id.nsid).is_none() && (id.nsid == 0 || id.nsid > sub.max_namespaces) {
                return done(Status::INVALID_NAMESPACE_OR_FORMAT.with_dnr());
            }
            // NVM command set specific namespace data: nothing beyond the defaults (no
            // extended LBA formats, no storage tags); all zeroes is the correct answer.
        }
        gyre_nvme::Cns::IOCS_CONTROLLER => {
            if id.csi != csi::NVM {
                return done(Status::INVALID_FIELD.with_dnr());
            }
            // NVM command set specific controller data: no size limits beyond MDTS.
        }
        gyre_nvme::Cns::IO_COMMAND_SET => {
            // One command set combination: NVM only (bit 0 of the first vector).
            page[0] = 1;
        }
        _ => return done(Status::INVALID_FIELD.with_dnr()),
    }
    done_data(page)
}

fn identify_controller(ctrl: &Controller, target: &TargetShared) -> IdentifyController {
    let sub = &ctrl.subsystem;
    let opts = &target.options;
    let mut c = IdentifyController::default();
    copy_padded(&mut c.sn, &sub.serial_number);
    copy_padded(&mut c.mn, &sub.model_number);
    copy_padded(&mut c.fr, FIRMWARE_REVISION);
    c.cntlid = ctrl.cntlid;
    c.ver = VERSION.0;
    c.rab = 6;
    c.mdts = (opts.max_io_size / 4096).trailing_zeros() as u8;
    c.aerl = (MAX_AERS - 1) as u8;
    c.acl = 3;
    c.frmw = 0x03; // slot 1 read-only, one slot
    c.lpa = ctrl::LPA_EXTENDED_DATA;
    c.elpe = (ERROR_LOG_ENTRIES - 1) as u8;
    c.kas = 1; // keep-alive granularity: 100 ms
    c.sqes = 0x66;
    c.cqes = 0x44;
    c.maxcmd = opts.max_queue_depth;
    c.sgls = ctrl::SGLS_SUPPORTED | ctrl::SGLS_OFFSET | ctrl::SGLS_TRANSPORT_DATA_BLOCK;
    c.ioccsz = (64 + opts.in_capsule_data_size) / 16;
    c.iorcsz = 1;
    c.icdoff = 0;
    c.fcatt = 0; // dynamic controller model
    c.msdbd = 1;
    c.ofcs = ctrl::OFCS_DISCONNECT;
    if let Ok(nqn) = gyre_nvme::Nqn::new(&sub.nqn) {
        c.set_subnqn(&nqn);
    }
    match sub.kind {
        SubsystemKind::Discovery => {
            c.cntrltype = cntrltype::DISCOVERY;
            c.oaes = ctrl::OAES_DISCOVERY_LOG_CHANGE;
            c.nn = 0;
        }
        SubsystemKind::Nvme => {
            c.cntrltype = cntrltype::IO;
            c.cmic = ctrl::CMIC_MULTI_PORT | ctrl::CMIC_MULTI_CONTROLLER | ctrl::CMIC_ANA_REPORTING;
            c.oaes = ctrl::OAES_NAMESPACE_ATTRIBUTE | ctrl::OAES_ANA_CHANGE;
            c.ctratt = ctrl::CTRATT_HOST_ID_128;
            c.nn = sub.max_namespaces;
            c.mnan = sub.max_namespaces;
            // Fused Compare-and-Write, atomic over any transfer we accept (the bdev's range
            // lock holds the whole range). ACWU: 0-based blocks, for the largest block size.
            c.fuses = FUSES_COMPARE_AND_WRITE;
            c.acwu = u16::try_from((opts.max_io_size / 4096).max(1) - 1).unwrap_or(u16::MAX);
            c.oncs = ctrl::ONCS_COMPARE
                | ctrl::ONCS_DSM
                | ctrl::ONCS_WRITE_ZEROES
                | ctrl::ONCS_SAVE_FEATURES;
            c.vwc = if ctrl.lock().volatile_write_cache {
                // Present; Flush with the broadcast NSID is not supported (10b).
                ctrl::VWC_PRESENT | (0b10 << 1)
            } else {
                0b10 << 1
            };
            c.anatt = 10;
            c.anacap = ctrl::ANACAP_OPTIMIZED
                | ctrl::ANACAP_NON_OPTIMIZED
                | ctrl::ANACAP_INACCESSIBLE
                | ctrl::ANACAP_PERSISTENT_LOSS
                | ctrl::ANACAP_CHANGE
                | ctrl::ANACAP_GRPID_NOT_CHANGING;
            c.anagrpmax = sub.max_namespaces;
            c.nanagrpid = sub.max_namespaces;
            c.wctemp = 0x0157;
            c.cctemp = 0x0175;
        }
    }
    c
}

fn identify_namespace(
    n: &crate::target::subsystem::Namespace,
    state: AnaState,
) -> IdentifyNamespace {
    let info = n.desc.info();
    let mut id = IdentifyNamespace {
        nsze: info.num_blocks(),
        ncap: info.num_blocks(),
        nuse: info.num_blocks(),
        nlbaf: 0,
        flbas: 0,
        ..Default::default()
    };
    id.lbaf[0] = LbaFormat {
        ms: 0,
        lbads: info.block_size().trailing_zeros() as u8,
        rp: 0,
    };
    id.nmic = ns::NMIC_SHARED;
    if info.supports(gyre_bdev::IoOp::Unmap) {
        // Deallocated blocks read as zeroes; Write Zeroes may deallocate.
        id.dlfeat = ns::DLFEAT_READ_ZEROES | ns::DLFEAT_WRITE_ZEROES_DEALLOCATES;
    }
    id.nguid = n.nguid;
    id.eui64 = n.eui64;
    id.anagrpid = n.ana_group;
    if matches!(state, AnaState::Inaccessible | AnaState::PersistentLoss) {
        // The spec lets capacity fields read zero through an inaccessible path.
        id.ncap = 0;
        id.nuse = 0;
    }
    id
}

/// I/O Command Set Independent Identify Namespace (CNS 08h): NMIC, ANAGRPID, NSFEAT.
fn independent_namespace(
    n: &crate::target::subsystem::Namespace,
    _state: AnaState,
    page: &mut [u8],
) {
    // Byte 0 NSFEAT, 1 NMIC, 2 RESCAP, 3 FPI, 4..8 ANAGRPID, 8 NSATTR, 9..11 NVMSETID,
    // 11..13 ENDGID, 13 NSTAT (bit 0: namespace ready).
    page[1] = ns::NMIC_SHARED;
    page[4..8].copy_from_slice(&n.ana_group.to_le_bytes());
    page[13] = 1;
}

fn copy_padded(dst: &mut [u8], s: &str) {
    dst.fill(b' ');
    let n = s.len().min(dst.len());
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

// --- features ---------------------------------------------------------------------------------

fn set_features(ctrl: &Controller, target: &TargetShared, cmd: &Command) -> AdminReply {
    let f = SetFeaturesCommand::from_command(cmd);
    if f.sv {
        return done(Status::FEATURE_NOT_SAVEABLE.with_dnr());
    }
    let v = cmd.cdw11;
    let discovery = ctrl.subsystem.kind == SubsystemKind::Discovery;
    let mut st = ctrl.lock();
    match f.fid {
        FeatureId::ASYNC_EVENT_CONFIGURATION => {
            let supported = if discovery {
                AEC_DISCOVERY_LOG_CHANGE
            } else {
                AEC_NS_ATTR | AEC_ANA_CHANGE | 0xFF
            };
            st.async_event_config = v & supported;
            drop(st);
            done(Status::SUCCESS)
        }
        FeatureId::KEEP_ALIVE_TIMER => {
            drop(st);
            ctrl.set_kato_ms(v);
            done(Status::SUCCESS)
        }
        _ if discovery => done(Status::INVALID_FIELD.with_dnr()),
        FeatureId::NUMBER_OF_QUEUES => {
            let nsq = (v & 0xFFFF) as u16;
            let ncq = (v >> 16) as u16;
            if nsq == 0xFFFF || ncq == 0xFFFF {
                return done(Status::INVALID_FIELD.with_dnr());
            }
            if st.io_queues.iter().skip(1).any(|&q| q) {
                // May not change once I/O queues exist.
                return done(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
            }
            let max = target.options.max_io_queues - 1;
            let granted = nsq.max(ncq).min(max);
            st.io_queues_granted = Some(granted);
            done_dw0(u32::from(granted) | (u32::from(granted) << 16))
        }
        FeatureId::ARBITRATION => {
            st.arbitration = v;
            done(Status::SUCCESS)
        }
        FeatureId::POWER_MANAGEMENT => {
            // One power state (NPSS = 0): only PS 0 exists.
            if v & 0x1F != 0 {
                return done(Status::INVALID_FIELD.with_dnr());
            }
            done(Status::SUCCESS)
        }
        FeatureId::TEMPERATURE_THRESHOLD => {
            st.temperature_threshold = v & 0xFFFF;
            done(Status::SUCCESS)
        }
        FeatureId::ERROR_RECOVERY => {
            st.error_recovery = v;
            done(Status::SUCCESS)
        }
        FeatureId::VOLATILE_WRITE_CACHE => {
            st.volatile_write_cache = v & 1 != 0;
            done(Status::SUCCESS)
        }
        FeatureId::WRITE_ATOMICITY_NORMAL => {
            st.write_atomicity = v & 1;
            done(Status::SUCCESS)
        }
        // Fabrics hosts identify themselves in Connect; changing it later is a sequence error.
        FeatureId::HOST_IDENTIFIER => done(Status::COMMAND_SEQUENCE_ERROR.with_dnr()),
        _ => done(Status::INVALID_FIELD.with_dnr()),
    }
}

fn get_features(ctrl: &Controller, target: &TargetShared, cmd: &Command) -> AdminReply {
    let f = match GetFeaturesCommand::from_command(cmd) {
        Ok(f) => f,
        Err(e) => return done(e.status()),
    };
    let discovery = ctrl.subsystem.kind == SubsystemKind::Discovery;
    let changeable = gyre_nvme::features::capabilities::CHANGEABLE;
    let st = ctrl.lock();
    let default = f.sel == FeatureSelect::Default || f.sel == FeatureSelect::Saved;
    let caps = f.sel == FeatureSelect::SupportedCapabilities;
    let value = match f.fid {
        FeatureId::ASYNC_EVENT_CONFIGURATION => {
            if default {
                0
            } else {
                st.async_event_config
            }
        }
        FeatureId::KEEP_ALIVE_TIMER => {
            if default {
                0
            } else {
                ctrl.kato_ms()
            }
        }
        _ if discovery => return done(Status::INVALID_FIELD.with_dnr()),
        FeatureId::NUMBER_OF_QUEUES => {
            let n = if default {
                target.options.max_io_queues - 1
            } else {
                st.io_queues_granted
                    .unwrap_or(target.options.max_io_queues - 1)
            };
            u32::from(n) | (u32::from(n) << 16)
        }
        FeatureId::ARBITRATION => {
            if default {
                0
            } else {
                st.arbitration
            }
        }
        FeatureId::POWER_MANAGEMENT => 0,
        FeatureId::TEMPERATURE_THRESHOLD => {
            if default {
                0x0157
            } else {
                st.temperature_threshold
            }
        }
        FeatureId::ERROR_RECOVERY => {
            if default {
                0
            } else {
                st.error_recovery
            }
        }
        FeatureId::VOLATILE_WRITE_CACHE => u32::from(st.volatile_write_cache),
        FeatureId::WRITE_ATOMICITY_NORMAL => {
            if default {
                0
            } else {
                st.write_atomicity
            }
        }
        FeatureId::HOST_IDENTIFIER => {
            // 128-bit host identifier (EXHID set) returned as data.
            if cmd.cdw11 & 1 == 0 {
                return done(Status::HOST_IDENTIFIER_INCONSISTENT_FORMAT.with_dnr());
            }
            let id = ctrl.hostid.to_vec();
            drop(st);
            return done_data(id);
        }
        _ => return done(Status::INVALID_FIELD.with_dnr()),
    };
    drop(st);
    if caps {
        return done_dw0(changeable);
    }
    done_dw0(value)
}

// --- log pages --------------------------------------------------------------------------------

fn get_log_page(ctrl: &Controller, target: &TargetShared, cmd: &Command) -> AdminReply {
    use gyre_nvme::log::{
        AnaLogWriter, ChangedNamespaceList, FirmwareSlotLog, LogPageId, LogWindow, SmartLog,
    };
    let g = GetLogPageCommand::from_command(cmd);
    // NUMD is 0-based: (NUMD + 1) dwords.
    let len = usize::try_from(g.length()).unwrap_or(usize::MAX);
    if !g.lpo.is_multiple_of(4) || len > target.options.max_io_size as usize {
        return done(Status::INVALID_FIELD.with_dnr());
    }
    let discovery = ctrl.subsystem.kind == SubsystemKind::Discovery;
    let mut out = vec![0u8; len];
    let mut w = LogWindow::new(&mut out, g.lpo);
    let page_len: u64 = match g.lid {
        LogPageId::DISCOVERY if discovery => {
            discovery::write_log_page(target, &ctrl.hostnqn, &mut w);
            w.position()
        }
        LogPageId::ERROR_INFORMATION => {
            // No errors recorded: every entry is zero (error count 0 means "unused").
            w.put_zeros(64 * ERROR_LOG_ENTRIES);
            w.position()
        }
        LogPageId::SMART_HEALTH if !discovery => {
            let smart = SmartLog {
                composite_temperature: 295,
                available_spare: 100,
                available_spare_threshold: 10,
                ..Default::default()
            };
            let mut page = [0u8; SmartLog::SIZE];
            let _ = smart.encode(&mut page);
            w.put(&page);
            w.position()
        }
        LogPageId::FIRMWARE_SLOT if !discovery => {
            let mut fw = FirmwareSlotLog {
                afi: 1,
                ..Default::default()
            };
            fw.frs[0] = gyre_nvme::ascii_padded::<8>(FIRMWARE_REVISION);
            let mut page = [0u8; FirmwareSlotLog::SIZE];
            let _ = fw.encode(&mut page);
            w.put(&page);
            w.position()
        }
        LogPageId::CHANGED_NAMESPACE_LIST if !discovery => {
            let mut st = ctrl.lock();
            match &st.changed_namespaces {
                Some(list) => ChangedNamespaceList::write(list, &mut w),
                None => {
                    w.put_u32(ChangedNamespaceList::OVERFLOW);
                }
            }
            let pad = ChangedNamespaceList::SIZE as u64 - w.position().min(4096);
            w.put_zeros(pad as usize);
            if !g.rae {
                st.changed_namespaces = Some(Vec::new());
            }
            w.position()
        }
        LogPageId::ANA if !discovery => {
            let rgo = g.lsp & gyre_nvme::log::ANA_LSP_RGO != 0;
            let sub = &ctrl.subsystem;
            let namespaces = sub.namespaces();
            let groups = sub.ana_groups();
            let change = sub.ana_change_count();
            AnaLogWriter::header(&mut w, change, groups.len() as u16);
            for grp in groups {
                let members: Vec<u32> = namespaces
                    .iter()
                    .filter(|n| n.ana_group == grp)
                    .map(|n| n.nsid)
                    .collect();
                let state = sub.ana_state(&ctrl.listener, grp);
                let state = gyre_nvme::log::AnaState::from_bits(state.code())
                    .unwrap_or(gyre_nvme::log::AnaState::Inaccessible);
                AnaLogWriter::group(&mut w, grp, change, state, &members, rgo);
            }
            w.position()
        }
        _ => return done(Status::INVALID_LOG_PAGE.with_dnr()),
    };
    if g.lpo > page_len {
        return done(Status::INVALID_FIELD.with_dnr());
    }
    if !g.rae {
        // Reading the page re-arms its event.
        let mut st = ctrl.lock();
        match g.lid {
            LogPageId::DISCOVERY => st.masked_discovery = false,
            LogPageId::CHANGED_NAMESPACE_LIST => st.masked_ns_attr = false,
            LogPageId::ANA => st.masked_ana = false,
            _ => {}
        }
    }
    done_data(out)
}
