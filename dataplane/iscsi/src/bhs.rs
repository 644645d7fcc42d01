//! The 48-byte Basic Header Segment (RFC 7143 §11) of every iSCSI PDU, both directions.
//!
//! `Bhs::decode` turns 48 bytes into a typed header and `Bhs::encode` writes one back. Reserved
//! fields are written as zero and ignored on receipt (RFC 7143 §11.1); reserved *code values* in
//! defined fields (an unknown opcode, TMF function, logout reason, login stage, ...) are errors
//! that name the field, so the receiver can answer with the protocol's own error.

use crate::lun::Lun;
use thiserror::Error;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// Largest value of the 24-bit DataSegmentLength field.
pub const MAX_DATA_SEGMENT_LEN: u32 = 0x00ff_ffff;

/// The reserved "no tag" value of ITT/TTT fields.
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// The one protocol version RFC 7143 defines (Version-max/min/active).
pub const ISCSI_VERSION: u8 = 0x00;

/// A BHS field whose content could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BhsError {
    #[error("opcode {0:#04x} is not an iSCSI opcode this codec knows")]
    UnknownOpcode(u8),
    #[error("task management function code {0} is reserved")]
    TmfFunction(u8),
    #[error("task management response code {0} is reserved")]
    TmfResponse(u8),
    #[error("logout reason code {0} is reserved")]
    LogoutReason(u8),
    #[error("logout response code {0} is reserved")]
    LogoutResponse(u8),
    #[error("SNACK type {0} is reserved")]
    SnackType(u8),
    #[error("reject reason {0:#04x} is reserved")]
    RejectReason(u8),
    #[error("SCSI response code {0:#04x} is reserved")]
    ScsiResponseCode(u8),
    #[error("login stage {0} is reserved (CSG/NSG)")]
    LoginStage(u8),
    #[error("task attribute {0} is reserved")]
    TaskAttribute(u8),
}

/// Operation codes (RFC 7143 §11.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmtRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    SnackRequest = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    R2t = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

impl Opcode {
    pub fn from_u8(v: u8) -> Result<Opcode, BhsError> {
        Ok(match v & 0x3f {
            0x00 => Opcode::NopOut,
            0x01 => Opcode::ScsiCommand,
            0x02 => Opcode::TaskMgmtRequest,
            0x03 => Opcode::LoginRequest,
            0x04 => Opcode::TextRequest,
            0x05 => Opcode::DataOut,
            0x06 => Opcode::LogoutRequest,
            0x10 => Opcode::SnackRequest,
            0x20 => Opcode::NopIn,
            0x21 => Opcode::ScsiResponse,
            0x22 => Opcode::TaskMgmtResponse,
            0x23 => Opcode::LoginResponse,
            0x24 => Opcode::TextResponse,
            0x25 => Opcode::DataIn,
            0x26 => Opcode::LogoutResponse,
            0x31 => Opcode::R2t,
            0x32 => Opcode::AsyncMessage,
            0x3f => Opcode::Reject,
            other => return Err(BhsError::UnknownOpcode(other)),
        })
    }

    /// True for opcodes an initiator sends.
    pub fn is_initiator(self) -> bool {
        (self as u8) < 0x20
    }
}

/// SCSI task attributes (ATTR field of the SCSI Command PDU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TaskAttribute {
    Untagged = 0,
    Simple = 1,
    Ordered = 2,
    HeadOfQueue = 3,
    Aca = 4,
}

impl TaskAttribute {
    fn from_u8(v: u8) -> Result<Self, BhsError> {
        Ok(match v {
            0 => TaskAttribute::Untagged,
            1 => TaskAttribute::Simple,
            2 => TaskAttribute::Ordered,
            3 => TaskAttribute::HeadOfQueue,
            4 => TaskAttribute::Aca,
            other => return Err(BhsError::TaskAttribute(other)),
        })
    }
}

/// Task management functions (RFC 7143 §11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TmfFunction {
    AbortTask = 1,
    AbortTaskSet = 2,
    ClearAca = 3,
    ClearTaskSet = 4,
    LogicalUnitReset = 5,
    TargetWarmReset = 6,
    TargetColdReset = 7,
    TaskReassign = 8,
}

impl TmfFunction {
    fn from_u8(v: u8) -> Result<Self, BhsError> {
        Ok(match v {
            1 => TmfFunction::AbortTask,
            2 => TmfFunction::AbortTaskSet,
            3 => TmfFunction::ClearAca,
            4 => TmfFunction::ClearTaskSet,
            5 => TmfFunction::LogicalUnitReset,
            6 => TmfFunction::TargetWarmReset,
            7 => TmfFunction::TargetColdReset,
            8 => TmfFunction::TaskReassign,
            other => return Err(BhsError::TmfFunction(other)),
        })
    }
}

/// Task management responses (RFC 7143 §11.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TmfResponse {
    FunctionComplete = 0,
    TaskDoesNotExist = 1,
    LunDoesNotExist = 2,
    TaskStillAllegiant = 3,
    AllegianceReassignmentNotSupported = 4,
    FunctionNotSupported = 5,
    AuthorizationFailed = 6,
    Rejected = 255,
}

impl TmfResponse {
    fn from_u8(v: u8) -> Result<Self, BhsError> {
        Ok(match v {
            0 => TmfResponse::FunctionComplete,
            1 => TmfResponse::TaskDoesNotExist,
            2 => TmfResponse::LunDoesNotExist,
            3 => TmfResponse::TaskStillAllegiant,
            4 => TmfResponse::AllegianceReassignmentNotSupported,
            5 => TmfResponse::FunctionNotSupported,
            6 => TmfResponse::AuthorizationFailed,
            255 => TmfResponse::Rejected,
            other => return Err(BhsError::TmfResponse(other)),
        })
    }
}

/// Logout reasons (RFC 7143 §11.14.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LogoutReason {
    CloseSession = 0,
    CloseConnection = 1,
    RemoveConnectionForRecovery = 2,
}

/// Logout responses (RFC 7143 §11.15.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LogoutResponseCode {
    Closed = 0,
    CidNotFound = 1,
    RecoveryNotSupported = 2,
    CleanupFailed = 3,
}

/// SNACK types (RFC 7143 §11.16.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SnackType {
    DataR2t = 0,
    Status = 1,
    DataAck = 2,
    RData = 3,
}

/// Reject reasons (RFC 7143 §11.17.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    DataDigestError = 0x02,
    SnackReject = 0x03,
    ProtocolError = 0x04,
    CommandNotSupported = 0x05,
    ImmediateCommandReject = 0x06,
    TaskInProgress = 0x07,
    InvalidDataAck = 0x08,
    InvalidPduField = 0x09,
    LongOperationReject = 0x0a,
    DeprecatedNegotiationReset = 0x0b,
    WaitingForLogout = 0x0c,
}

impl RejectReason {
    fn from_u8(v: u8) -> Result<Self, BhsError> {
        Ok(match v {
            0x02 => RejectReason::DataDigestError,
            0x03 => RejectReason::SnackReject,
            0x04 => RejectReason::ProtocolError,
            0x05 => RejectReason::CommandNotSupported,
            0x06 => RejectReason::ImmediateCommandReject,
            0x07 => RejectReason::TaskInProgress,
            0x08 => RejectReason::InvalidDataAck,
            0x09 => RejectReason::InvalidPduField,
            0x0a => RejectReason::LongOperationReject,
            0x0b => RejectReason::DeprecatedNegotiationReset,
            0x0c => RejectReason::WaitingForLogout,
            other => return Err(BhsError::RejectReason(other)),
        })
    }
}

/// The Response field of a SCSI Response PDU (RFC 7143 §11.4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScsiResponseCode {
    CommandCompleted,
    TargetFailure,
    VendorSpecific(u8),
}

impl ScsiResponseCode {
    fn from_u8(v: u8) -> Result<Self, BhsError> {
        match v {
            0x00 => Ok(ScsiResponseCode::CommandCompleted),
            0x01 => Ok(ScsiResponseCode::TargetFailure),
            0x80..=0xff => Ok(ScsiResponseCode::VendorSpecific(v)),
            other => Err(BhsError::ScsiResponseCode(other)),
        }
    }
    fn to_u8(self) -> u8 {
        match self {
            ScsiResponseCode::CommandCompleted => 0,
            ScsiResponseCode::TargetFailure => 1,
            ScsiResponseCode::VendorSpecific(v) => v,
        }
    }
}

/// Asynchronous event codes (RFC 7143 §11.9.1). Codes this enum does not name are kept raw:
/// vendor-specific (255) events are legal and the receiver decides what to do with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncEvent {
    ScsiAsyncEvent,
    LogoutRequested,
    ConnectionDropped,
    AllConnectionsDropped,
    RenegotiationRequested,
    Other(u8),
}

impl AsyncEvent {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => AsyncEvent::ScsiAsyncEvent,
            1 => AsyncEvent::LogoutRequested,
            2 => AsyncEvent::ConnectionDropped,
            3 => AsyncEvent::AllConnectionsDropped,
            4 => AsyncEvent::RenegotiationRequested,
            other => AsyncEvent::Other(other),
        }
    }
    /// The AsyncEvent code on the wire.
    pub fn code(self) -> u8 {
        self.to_u8()
    }

    fn to_u8(self) -> u8 {
        match self {
            AsyncEvent::ScsiAsyncEvent => 0,
            AsyncEvent::LogoutRequested => 1,
            AsyncEvent::ConnectionDropped => 2,
            AsyncEvent::AllConnectionsDropped => 3,
            AsyncEvent::RenegotiationRequested => 4,
            AsyncEvent::Other(v) => v,
        }
    }
}

/// Login stages (CSG/NSG, RFC 7143 §11.12.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum LoginStage {
    SecurityNegotiation = 0,
    LoginOperationalNegotiation = 1,
    FullFeaturePhase = 3,
}

impl LoginStage {
    fn from_bits(v: u8) -> Result<Self, BhsError> {
        match v {
            0 => Ok(LoginStage::SecurityNegotiation),
            1 => Ok(LoginStage::LoginOperationalNegotiation),
            3 => Ok(LoginStage::FullFeaturePhase),
            other => Err(BhsError::LoginStage(other)),
        }
    }
}

/// Login Status-Class and Status-Detail (RFC 7143 §11.13.5), as one 16-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoginStatus(pub u16);

impl LoginStatus {
    pub const SUCCESS: LoginStatus = LoginStatus(0x0000);
    pub const TARGET_MOVED_TEMPORARILY: LoginStatus = LoginStatus(0x0101);
    pub const TARGET_MOVED_PERMANENTLY: LoginStatus = LoginStatus(0x0102);
    pub const INITIATOR_ERROR: LoginStatus = LoginStatus(0x0200);
    pub const AUTHENTICATION_FAILURE: LoginStatus = LoginStatus(0x0201);
    pub const AUTHORIZATION_FAILURE: LoginStatus = LoginStatus(0x0202);
    pub const NOT_FOUND: LoginStatus = LoginStatus(0x0203);
    pub const TARGET_REMOVED: LoginStatus = LoginStatus(0x0204);
    pub const UNSUPPORTED_VERSION: LoginStatus = LoginStatus(0x0205);
    pub const TOO_MANY_CONNECTIONS: LoginStatus = LoginStatus(0x0206);
    pub const MISSING_PARAMETER: LoginStatus = LoginStatus(0x0207);
    pub const CANT_INCLUDE_IN_SESSION: LoginStatus = LoginStatus(0x0208);
    pub const SESSION_TYPE_NOT_SUPPORTED: LoginStatus = LoginStatus(0x0209);
    pub const SESSION_DOES_NOT_EXIST: LoginStatus = LoginStatus(0x020a);
    pub const INVALID_DURING_LOGIN: LoginStatus = LoginStatus(0x020b);
    pub const TARGET_ERROR: LoginStatus = LoginStatus(0x0300);
    pub const SERVICE_UNAVAILABLE: LoginStatus = LoginStatus(0x0301);
    pub const OUT_OF_RESOURCES: LoginStatus = LoginStatus(0x0302);

    pub fn new(class: u8, detail: u8) -> Self {
        LoginStatus(u16::from(class) << 8 | u16::from(detail))
    }
    pub fn class(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub fn detail(self) -> u8 {
        self.0 as u8
    }
    pub fn is_success(self) -> bool {
        self.class() == 0
    }
    pub fn is_redirection(self) -> bool {
        self.class() == 1
    }
}

impl std::fmt::Display for LoginStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match *self {
            LoginStatus::SUCCESS => "success",
            LoginStatus::TARGET_MOVED_TEMPORARILY => "target moved temporarily",
            LoginStatus::TARGET_MOVED_PERMANENTLY => "target moved permanently",
            LoginStatus::INITIATOR_ERROR => "initiator error",
            LoginStatus::AUTHENTICATION_FAILURE => "authentication failure",
            LoginStatus::AUTHORIZATION_FAILURE => "authorization failure",
            LoginStatus::NOT_FOUND => "not found",
            LoginStatus::TARGET_REMOVED => "target removed",
            LoginStatus::UNSUPPORTED_VERSION => "unsupported version",
            LoginStatus::TOO_MANY_CONNECTIONS => "too many connections",
            LoginStatus::MISSING_PARAMETER => "missing parameter",
            LoginStatus::CANT_INCLUDE_IN_SESSION => "can't include in session",
            LoginStatus::SESSION_TYPE_NOT_SUPPORTED => "session type not supported",
            LoginStatus::SESSION_DOES_NOT_EXIST => "session does not exist",
            LoginStatus::INVALID_DURING_LOGIN => "invalid during login",
            LoginStatus::TARGET_ERROR => "target error",
            LoginStatus::SERVICE_UNAVAILABLE => "service unavailable",
            LoginStatus::OUT_OF_RESOURCES => "out of resources",
            _ => "unknown status",
        };
        write!(f, "{:#06x} ({name})", self.0)
    }
}

/// Initiator Session ID (6 bytes, RFC 7143 §11.12.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Isid(pub [u8; 6]);

/// NOP-Out (0x00).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: Lun,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SCSI Command (0x01). `cdb` holds the first 16 bytes; longer CDBs continue in an
/// Extended CDB AHS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_: bool,
    pub read: bool,
    pub write: bool,
    pub attr: TaskAttribute,
    pub lun: Lun,
    pub itt: u32,
    pub expected_data_transfer_length: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub cdb: [u8; 16],
}

/// Task Management Function Request (0x02).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: TmfFunction,
    pub lun: Lun,
    pub itt: u32,
    pub referenced_task_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

/// Login Request (0x03). The I bit is always 1 on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub continue_: bool,
    pub csg: LoginStage,
    /// Only meaningful when `transit` is set (reserved otherwise).
    pub nsg: LoginStage,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: Isid,
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Text Request (0x04).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_: bool,
    pub continue_: bool,
    pub lun: Lun,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SCSI Data-Out (0x05).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataOut {
    pub final_: bool,
    pub lun: Lun,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
}

/// Logout Request (0x06).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: LogoutReason,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SNACK Request (0x10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnackRequest {
    pub snack_type: SnackType,
    pub lun: Lun,
    pub itt: u32,
    /// TTT or SNACK Tag, depending on the type.
    pub ttt_or_snack_tag: u32,
    pub exp_stat_sn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

/// NOP-In (0x20).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NopIn {
    pub lun: Lun,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// SCSI Response (0x21).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiResponse {
    pub bidi_read_overflow: bool,
    pub bidi_read_underflow: bool,
    pub overflow: bool,
    pub underflow: bool,
    pub response: ScsiResponseCode,
    pub status: u8,
    pub itt: u32,
    pub snack_tag: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_data_sn: u32,
    pub bidi_read_residual_count: u32,
    pub residual_count: u32,
}

/// Task Management Function Response (0x22).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskMgmtResponse {
    pub response: TmfResponse,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// Login Response (0x23).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub continue_: bool,
    pub csg: LoginStage,
    pub nsg: LoginStage,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: Isid,
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub status: LoginStatus,
}

/// Text Response (0x24).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TextResponse {
    pub final_: bool,
    pub continue_: bool,
    pub lun: Lun,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// SCSI Data-In (0x25).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataIn {
    pub final_: bool,
    pub acknowledge: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// S bit: `status` and `stat_sn` are valid and this PDU completes the command.
    pub status_present: bool,
    pub status: u8,
    pub lun: Lun,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual_count: u32,
}

/// Logout Response (0x26).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogoutResponse {
    pub response: LogoutResponseCode,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

/// Ready To Transfer (0x31).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct R2t {
    pub lun: Lun,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_data_transfer_length: u32,
}

/// Asynchronous Message (0x32). The ITT field is always 0xffffffff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncMessage {
    pub lun: Lun,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub event: AsyncEvent,
    pub vcode: u8,
    pub parameter1: u16,
    pub parameter2: u16,
    pub parameter3: u16,
}

/// Reject (0x3f). The data segment carries the rejected PDU's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub reason: RejectReason,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn_or_r2t_sn: u32,
}

/// The opcode-specific part of a BHS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BhsBody {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    SnackRequest(SnackRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

/// A decoded Basic Header Segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bhs {
    /// TotalAHSLength, in 4-byte words.
    pub total_ahs_len: u8,
    /// DataSegmentLength in bytes (24 bits; excludes padding).
    pub data_segment_len: u32,
    pub body: BhsBody,
}

#[inline]
fn be32(b: &[u8; 48], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
#[inline]
fn be16(b: &[u8; 48], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
#[inline]
fn put32(b: &mut [u8; 48], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
#[inline]
fn put16(b: &mut [u8; 48], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
#[inline]
fn lun_at(b: &[u8; 48]) -> Lun {
    let mut l = [0u8; 8];
    l.copy_from_slice(&b[8..16]);
    Lun(l)
}

const F: u8 = 0x80;

impl BhsBody {
    pub fn opcode(&self) -> Opcode {
        match self {
            BhsBody::NopOut(_) => Opcode::NopOut,
            BhsBody::ScsiCommand(_) => Opcode::ScsiCommand,
            BhsBody::TaskMgmtRequest(_) => Opcode::TaskMgmtRequest,
            BhsBody::LoginRequest(_) => Opcode::LoginRequest,
            BhsBody::TextRequest(_) => Opcode::TextRequest,
            BhsBody::DataOut(_) => Opcode::DataOut,
            BhsBody::LogoutRequest(_) => Opcode::LogoutRequest,
            BhsBody::SnackRequest(_) => Opcode::SnackRequest,
            BhsBody::NopIn(_) => Opcode::NopIn,
            BhsBody::ScsiResponse(_) => Opcode::ScsiResponse,
            BhsBody::TaskMgmtResponse(_) => Opcode::TaskMgmtResponse,
            BhsBody::LoginResponse(_) => Opcode::LoginResponse,
            BhsBody::TextResponse(_) => Opcode::TextResponse,
            BhsBody::DataIn(_) => Opcode::DataIn,
            BhsBody::LogoutResponse(_) => Opcode::LogoutResponse,
            BhsBody::R2t(_) => Opcode::R2t,
            BhsBody::AsyncMessage(_) => Opcode::AsyncMessage,
            BhsBody::Reject(_) => Opcode::Reject,
        }
    }

    /// The Initiator Task Tag, where the PDU carries one.
    pub fn itt(&self) -> Option<u32> {
        Some(match self {
            BhsBody::NopOut(p) => p.itt,
            BhsBody::ScsiCommand(p) => p.itt,
            BhsBody::TaskMgmtRequest(p) => p.itt,
            BhsBody::LoginRequest(p) => p.itt,
            BhsBody::TextRequest(p) => p.itt,
            BhsBody::DataOut(p) => p.itt,
            BhsBody::LogoutRequest(p) => p.itt,
            BhsBody::SnackRequest(p) => p.itt,
            BhsBody::NopIn(p) => p.itt,
            BhsBody::ScsiResponse(p) => p.itt,
            BhsBody::TaskMgmtResponse(p) => p.itt,
            BhsBody::LoginResponse(p) => p.itt,
            BhsBody::TextResponse(p) => p.itt,
            BhsBody::DataIn(p) => p.itt,
            BhsBody::LogoutResponse(p) => p.itt,
            BhsBody::R2t(p) => p.itt,
            BhsBody::AsyncMessage(_) | BhsBody::Reject(_) => return None,
        })
    }
}

impl Bhs {
    pub fn new(body: BhsBody) -> Self {
        Bhs {
            total_ahs_len: 0,
            data_segment_len: 0,
            body,
        }
    }

    pub fn with_data_len(body: BhsBody, data_segment_len: u32) -> Self {
        Bhs {
            total_ahs_len: 0,
            data_segment_len,
            body,
        }
    }

    pub fn opcode(&self) -> Opcode {
        self.body.opcode()
    }

    /// Decodes 48 bytes. Never panics; reserved fields are ignored.
    pub fn decode(b: &[u8; 48]) -> Result<Bhs, BhsError> {
        let opcode = Opcode::from_u8(b[0])?;
        let immediate = b[0] & 0x40 != 0;
        let f1 = b[1];
        let final_ = f1 & F != 0;
        let total_ahs_len = b[4];
        let data_segment_len = u32::from_be_bytes([0, b[5], b[6], b[7]]);
        let itt = be32(b, 16);
        let body = match opcode {
            Opcode::NopOut => BhsBody::NopOut(NopOut {
                immediate,
                lun: lun_at(b),
                itt,
                ttt: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            }),
            Opcode::ScsiCommand => {
                let mut cdb = [0u8; 16];
                cdb.copy_from_slice(&b[32..48]);
                BhsBody::ScsiCommand(ScsiCommand {
                    immediate,
                    final_,
                    read: f1 & 0x40 != 0,
                    write: f1 & 0x20 != 0,
                    attr: TaskAttribute::from_u8(f1 & 0x07)?,
                    lun: lun_at(b),
                    itt,
                    expected_data_transfer_length: be32(b, 20),
                    cmd_sn: be32(b, 24),
                    exp_stat_sn: be32(b, 28),
                    cdb,
                })
            }
            Opcode::TaskMgmtRequest => BhsBody::TaskMgmtRequest(TaskMgmtRequest {
                immediate,
                function: TmfFunction::from_u8(f1 & 0x7f)?,
                lun: lun_at(b),
                itt,
                referenced_task_tag: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
                ref_cmd_sn: be32(b, 32),
                exp_data_sn: be32(b, 36),
            }),
            Opcode::LoginRequest => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                let transit = f1 & 0x80 != 0;
                BhsBody::LoginRequest(LoginRequest {
                    transit,
                    continue_: f1 & 0x40 != 0,
                    csg: LoginStage::from_bits((f1 >> 2) & 3)?,
                    nsg: login_nsg(transit, f1)?,
                    version_max: b[2],
                    version_min: b[3],
                    isid: Isid(isid),
                    tsih: be16(b, 14),
                    itt,
                    cid: be16(b, 20),
                    cmd_sn: be32(b, 24),
                    exp_stat_sn: be32(b, 28),
                })
            }
            Opcode::TextRequest => BhsBody::TextRequest(TextRequest {
                immediate,
                final_,
                continue_: f1 & 0x40 != 0,
                lun: lun_at(b),
                itt,
                ttt: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            }),
            Opcode::DataOut => BhsBody::DataOut(DataOut {
                final_,
                lun: lun_at(b),
                itt,
                ttt: be32(b, 20),
                exp_stat_sn: be32(b, 28),
                data_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
            }),
            Opcode::LogoutRequest => BhsBody::LogoutRequest(LogoutRequest {
                immediate,
                reason: match f1 & 0x7f {
                    0 => LogoutReason::CloseSession,
                    1 => LogoutReason::CloseConnection,
                    2 => LogoutReason::RemoveConnectionForRecovery,
                    other => return Err(BhsError::LogoutReason(other)),
                },
                itt,
                cid: be16(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            }),
            Opcode::SnackRequest => BhsBody::SnackRequest(SnackRequest {
                snack_type: match f1 & 0x0f {
                    0 => SnackType::DataR2t,
                    1 => SnackType::Status,
                    2 => SnackType::DataAck,
                    3 => SnackType::RData,
                    other => return Err(BhsError::SnackType(other)),
                },
                lun: lun_at(b),
                itt,
                ttt_or_snack_tag: be32(b, 20),
                exp_stat_sn: be32(b, 28),
                beg_run: be32(b, 40),
                run_length: be32(b, 44),
            }),
            Opcode::NopIn => BhsBody::NopIn(NopIn {
                lun: lun_at(b),
                itt,
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
            }),
            Opcode::ScsiResponse => BhsBody::ScsiResponse(ScsiResponse {
                bidi_read_overflow: f1 & 0x10 != 0,
                bidi_read_underflow: f1 & 0x08 != 0,
                overflow: f1 & 0x04 != 0,
                underflow: f1 & 0x02 != 0,
                response: ScsiResponseCode::from_u8(b[2])?,
                status: b[3],
                itt,
                snack_tag: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                exp_data_sn: be32(b, 36),
                bidi_read_residual_count: be32(b, 40),
                residual_count: be32(b, 44),
            }),
            Opcode::TaskMgmtResponse => BhsBody::TaskMgmtResponse(TaskMgmtResponse {
                response: TmfResponse::from_u8(b[2])?,
                itt,
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
            }),
            Opcode::LoginResponse => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                let transit = f1 & 0x80 != 0;
                BhsBody::LoginResponse(LoginResponse {
                    transit,
                    continue_: f1 & 0x40 != 0,
                    csg: LoginStage::from_bits((f1 >> 2) & 3)?,
                    nsg: login_nsg(transit, f1)?,
                    version_max: b[2],
                    version_active: b[3],
                    isid: Isid(isid),
                    tsih: be16(b, 14),
                    itt,
                    stat_sn: be32(b, 24),
                    exp_cmd_sn: be32(b, 28),
                    max_cmd_sn: be32(b, 32),
                    status: LoginStatus::new(b[36], b[37]),
                })
            }
            Opcode::TextResponse => BhsBody::TextResponse(TextResponse {
                final_,
                continue_: f1 & 0x40 != 0,
                lun: lun_at(b),
                itt,
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
            }),
            Opcode::DataIn => BhsBody::DataIn(DataIn {
                final_,
                acknowledge: f1 & 0x40 != 0,
                overflow: f1 & 0x04 != 0,
                underflow: f1 & 0x02 != 0,
                status_present: f1 & 0x01 != 0,
                status: if f1 & 0x01 != 0 { b[3] } else { 0 },
                lun: lun_at(b),
                itt,
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                data_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
                residual_count: be32(b, 44),
            }),
            Opcode::LogoutResponse => BhsBody::LogoutResponse(LogoutResponse {
                response: match b[2] {
                    0 => LogoutResponseCode::Closed,
                    1 => LogoutResponseCode::CidNotFound,
                    2 => LogoutResponseCode::RecoveryNotSupported,
                    3 => LogoutResponseCode::CleanupFailed,
                    other => return Err(BhsError::LogoutResponse(other)),
                },
                itt,
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                time2wait: be16(b, 40),
                time2retain: be16(b, 42),
            }),
            Opcode::R2t => BhsBody::R2t(R2t {
                lun: lun_at(b),
                itt,
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                r2t_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
                desired_data_transfer_length: be32(b, 44),
            }),
            Opcode::AsyncMessage => BhsBody::AsyncMessage(AsyncMessage {
                lun: lun_at(b),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                event: AsyncEvent::from_u8(b[36]),
                vcode: b[37],
                parameter1: be16(b, 38),
                parameter2: be16(b, 40),
                parameter3: be16(b, 42),
            }),
            Opcode::Reject => BhsBody::Reject(Reject {
                reason: RejectReason::from_u8(b[2])?,
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                data_sn_or_r2t_sn: be32(b, 36),
            }),
        };
        Ok(Bhs {
            total_ahs_len,
            data_segment_len,
            body,
        })
    }

    /// Writes the header into `b` (every byte, reserved ones as zero). `data_segment_len`
    /// is truncated to its 24 bits; callers keep it within [`MAX_DATA_SEGMENT_LEN`].
    pub fn encode(&self, b: &mut [u8; 48]) {
        *b = [0u8; 48];
        b[4] = self.total_ahs_len;
        let dsl = self.data_segment_len.to_be_bytes();
        b[5..8].copy_from_slice(&dsl[1..4]);
        let op = self.opcode() as u8;
        let imm = |i: bool| if i { 0x40 } else { 0 };
        let bit = |on: bool, v: u8| if on { v } else { 0 };
        b[0] = op;
        match &self.body {
            BhsBody::NopOut(p) => {
                b[0] |= imm(p.immediate);
                b[1] = F;
                b[8..16].copy_from_slice(&p.lun.0);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put32(b, 24, p.cmd_sn);
                put32(b, 28, p.exp_stat_sn);
            }
            BhsBody::ScsiCommand(p) => {
                b[0] |= imm(p.immediate);
                b[1] = bit(p.final_, F) | bit(p.read, 0x40) | bit(p.write, 0x20) | p.attr as u8;
                b[8..16].copy_from_slice(&p.lun.0);
                put32(b, 16, p.itt);
                put32(b, 20, p.expected_data_transfer_length);
                put32(b, 24, p.cmd_sn);
                put32(b, 28, p.exp_stat_sn);
                b[32..48].copy_from_slice(&p.cdb);
            }
            BhsBody::TaskMgmtRequest(p) => {
                b[0] |= imm(p.immediate);
                b[1] = F | p.function as u8;
                b[8..16].copy_from_slice(&p.lun.0);
                put32(b, 16, p.itt);
                put32(b, 20, p.referenced_task_tag);
                put32(b, 24, p.cmd_sn);
                put32(b, 28, p.exp_stat_sn);
                put32(b, 32, p.ref_cmd_sn);
                put32(b, 36, p.exp_data_sn);
            }
            BhsBody::LoginRequest(p) => {
                b[0] |= 0x40;
                b[1] = bit(p.transit, 0x80)
                    | bit(p.continue_, 0x40)
                    | (p.csg as u8) << 2
                    | if p.transit { p.nsg as u8 } else { 0 };
                b[2] = p.version_max;
                b[3] = p.version_min;
                b[8..14].copy_from_slice(&p.isid.0);
                put16(b, 14, p.tsih);
                put32(b, 16, p.itt);
                put16(b, 20, p.cid);
                put32(b, 24, p.cmd_sn);
                put32(b, 28, p.exp_stat_sn);
            }
            BhsBody::TextRequest(p) => {
                b[0] |= imm(p.immediate);
                b[1] = bit(p.final_, F) | bit(p.continue_, 0x40);
                b[8..16].copy_from_slice(&p.lun.0);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put32(b, 24, p.cmd_sn);
                put32(b, 28, p.exp_stat_sn);
            }
            BhsBody::DataOut(p) => {
                b[1] = bit(p.final_, F);
                b[8..16].copy_from_slice(&p.lun.0);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put32(b, 28, p.exp_stat_sn);
                put32(b, 36, p.data_sn);
                put32(b, 40, p.buffer_offset);
            }
            BhsBody::LogoutRequest(p) => {
                b[0] |= imm(p.immediate);
                b[1] = F | p.reason as u8;
                put32(b, 16, p.itt);
                put16(b, 20, p.cid);
                put32(b, 24, p.cmd_sn);
                put32(b, 28, p.exp_stat_sn);
            }
            BhsBody::SnackRequest(p) => {
                b[1] = F | p.snack_type as u8;
                b[8..16].copy_from_slice(&p.lun.0);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt_or_snack_tag);
                put32(b, 28, p.exp_stat_sn);
                put32(b, 40, p.beg_run);
                put32(b, 44, p.run_length);
            }
            BhsBody::NopIn(p) => {
                b[1] = F;
                b[8..16].copy_from_slice(&p.lun.0);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put32(b, 24, p.stat_sn);
                put32(b, 28, p.exp_cmd_sn);
                put32(b, 32, p.max_cmd_sn);
            }
            BhsBody::ScsiResponse(p) => {
                b[1] = F
                    | bit(p.bidi_read_overflow, 0x10)
                    | bit(p.bidi_read_underflow, 0x08)
                    | bit(p.overflow, 0x04)
                    | bit(p.underflow, 0x02);
                b[2] = p.response.to_u8();
                b[3] = p.status;
                put32(b, 16, p.itt);
                put32(b, 20, p.snack_tag);
                put32(b, 24, p.stat_sn);
                put32(b, 28, p.exp_cmd_sn);
                put32(b, 32, p.max_cmd_sn);
                put32(b, 36, p.exp_data_sn);
                put32(b, 40, p.bidi_read_residual_count);
                put32(b, 44, p.residual_count);
            }
            BhsBody::TaskMgmtResponse(p) => {
                b[1] = F;
                b[2] = p.response as u8;
                put32(b, 16, p.itt);
                put32(b, 24, p.stat_sn);
                put32(b, 28, p.exp_cmd_sn);
                put32(b, 32, p.max_cmd_sn);
            }
            BhsBody::LoginResponse(p) => {
                b[1] = bit(p.transit, 0x80)
                    | bit(p.continue_, 0x40)
                    | (p.csg as u8) << 2
                    | if p.transit { p.nsg as u8 } else { 0 };
                b[2] = p.version_max;
                b[3] = p.version_active;
                b[8..14].copy_from_slice(&p.isid.0);
                put16(b, 14, p.tsih);
                put32(b, 16, p.itt);
                put32(b, 24, p.stat_sn);
                put32(b, 28, p.exp_cmd_sn);
                put32(b, 32, p.max_cmd_sn);
                b[36] = p.status.class();
                b[37] = p.status.detail();
            }
            BhsBody::TextResponse(p) => {
                b[1] = bit(p.final_, F) | bit(p.continue_, 0x40);
                b[8..16].copy_from_slice(&p.lun.0);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put32(b, 24, p.stat_sn);
                put32(b, 28, p.exp_cmd_sn);
                put32(b, 32, p.max_cmd_sn);
            }
            BhsBody::DataIn(p) => {
                b[1] = bit(p.final_, F)
                    | bit(p.acknowledge, 0x40)
                    | bit(p.overflow, 0x04)
                    | bit(p.underflow, 0x02)
                    | bit(p.status_present, 0x01);
                b[3] = if p.status_present { p.status } else { 0 };
                b[8..16].copy_from_slice(&p.lun.0);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put32(b, 24, p.stat_sn);
                put32(b, 28, p.exp_cmd_sn);
                put32(b, 32, p.max_cmd_sn);
                put32(b, 36, p.data_sn);
                put32(b, 40, p.buffer_offset);
                put32(b, 44, p.residual_count);
            }
            BhsBody::LogoutResponse(p) => {
                b[1] = F;
                b[2] = p.response as u8;
                put32(b, 16, p.itt);
                put32(b, 24, p.stat_sn);
                put32(b, 28, p.exp_cmd_sn);
                put32(b, 32, p.max_cmd_sn);
                put16(b, 40, p.time2wait);
                put16(b, 42, p.time2retain);
            }
            BhsBody::R2t(p) => {
                b[1] = F;
                b[8..16].copy_from_slice(&p.lun.0);
                put32(b, 16, p.itt);
                put32(b, 20, p.ttt);
                put32(b, 24, p.stat_sn);
                put32(b, 28, p.exp_cmd_sn);
                put32(b, 32, p.max_cmd_sn);
                put32(b, 36, p.r2t_sn);
                put32(b, 40, p.buffer_offset);
                put32(b, 44, p.desired_data_transfer_length);
            }
            BhsBody::AsyncMessage(p) => {
                b[1] = F;
                b[8..16].copy_from_slice(&p.lun.0);
                put32(b, 16, RESERVED_TAG);
                put32(b, 24, p.stat_sn);
                put32(b, 28, p.exp_cmd_sn);
                put32(b, 32, p.max_cmd_sn);
                b[36] = p.event.to_u8();
                b[37] = p.vcode;
                put16(b, 38, p.parameter1);
                put16(b, 40, p.parameter2);
                put16(b, 42, p.parameter3);
            }
            BhsBody::Reject(p) => {
                b[1] = F;
                b[2] = p.reason as u8;
                put32(b, 16, RESERVED_TAG);
                put32(b, 24, p.stat_sn);
                put32(b, 28, p.exp_cmd_sn);
                put32(b, 32, p.max_cmd_sn);
                put32(b, 36, p.data_sn_or_r2t_sn);
            }
        }
    }

    /// Encodes into a fresh array.
    pub fn to_bytes(&self) -> [u8; 48] {
        let mut b = [0u8; 48];
        self.encode(&mut b);
        b
    }
}

/// NSG is reserved unless T is set (then it reads as the current stage); with T set, 2 is a
/// reserved stage.
fn login_nsg(transit: bool, f1: u8) -> Result<LoginStage, BhsError> {
    if transit {
        LoginStage::from_bits(f1 & 3)
    } else {
        // Reserved when T=0: the PDU stays in its current stage.
        LoginStage::from_bits((f1 >> 2) & 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(bytes: [u8; 48]) -> Bhs {
        let bhs = Bhs::decode(&bytes).unwrap();
        assert_eq!(bhs.to_bytes(), bytes, "re-encoding {bhs:?}");
        bhs
    }

    #[test]
    fn scsi_command_read10() {
        // RFC 7143 §11.3: SCSI Command, READ(10) of 8 blocks at LBA 0x20 on LUN 1.
        #[rustfmt::skip]
        let bytes = [
            0x01,                   // opcode 0x01, I=0
            0xc1,                   // F=1 R=1 W=0 ATTR=1 (simple)
            0x00, 0x00,             // reserved
            0x00,                   // TotalAHSLength
            0x00, 0x00, 0x00,       // DataSegmentLength
            0x00, 0x01, 0, 0, 0, 0, 0, 0, // LUN 1 (peripheral addressing)
            0x00, 0x00, 0x00, 0x2a, // ITT
            0x00, 0x00, 0x10, 0x00, // Expected Data Transfer Length 4096
            0x00, 0x00, 0x00, 0x07, // CmdSN
            0x00, 0x00, 0x00, 0x03, // ExpStatSN
            0x28, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, // CDB: READ(10) LBA 0x20
            0x08, 0x00, 0, 0, 0, 0, 0, 0,                   // transfer length 8
        ];
        let bhs = roundtrip(bytes);
        let BhsBody::ScsiCommand(c) = bhs.body else {
            panic!("{bhs:?}")
        };
        assert!(c.final_ && c.read && !c.write && !c.immediate);
        assert_eq!(c.attr, TaskAttribute::Simple);
        assert_eq!(c.lun.index(), Some(1));
        assert_eq!(c.itt, 42);
        assert_eq!(c.expected_data_transfer_length, 4096);
        assert_eq!((c.cmd_sn, c.exp_stat_sn), (7, 3));
        assert_eq!(c.cdb[0], 0x28);
        assert_eq!(c.cdb[5], 0x20);
    }

    #[test]
    fn login_request_with_immediate_and_stages() {
        #[rustfmt::skip]
        let bytes = [
            0x43,                   // I=1, opcode 0x03
            0x87,                   // T=1 C=0 CSG=1 NSG=3
            0x00, 0x00,             // Version-max, Version-min
            0x00,                   // TotalAHSLength
            0x00, 0x01, 0x02,       // DataSegmentLength 258
            0x80, 0x12, 0x34, 0x56, 0x78, 0x9a, // ISID (OUI format, qualifier)
            0x00, 0x00,             // TSIH 0 (new session)
            0x00, 0x00, 0x00, 0x01, // ITT
            0x00, 0x02,             // CID 2
            0x00, 0x00,             // reserved
            0x00, 0x00, 0x00, 0x10, // CmdSN
            0x00, 0x00, 0x00, 0x00, // ExpStatSN
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // reserved
        ];
        let bhs = roundtrip(bytes);
        assert_eq!(bhs.data_segment_len, 258);
        let BhsBody::LoginRequest(l) = bhs.body else {
            panic!()
        };
        assert!(l.transit && !l.continue_);
        assert_eq!(l.csg, LoginStage::LoginOperationalNegotiation);
        assert_eq!(l.nsg, LoginStage::FullFeaturePhase);
        assert_eq!(l.isid, Isid([0x80, 0x12, 0x34, 0x56, 0x78, 0x9a]));
        assert_eq!((l.tsih, l.cid, l.cmd_sn), (0, 2, 16));
    }

    #[test]
    fn login_response_status() {
        #[rustfmt::skip]
        let bytes = [
            0x23, 0x00,             // opcode, T=0 C=0 CSG=0 NSG=0
            0x00, 0x00,             // Version-max, Version-active
            0x00, 0x00, 0x00, 0x00, // AHS, DSL
            0x80, 0x12, 0x34, 0x56, 0x78, 0x9a, 0x00, 0x00, // ISID, TSIH
            0x00, 0x00, 0x00, 0x01, // ITT
            0, 0, 0, 0,             // reserved
            0x00, 0x00, 0x00, 0x05, // StatSN
            0x00, 0x00, 0x00, 0x10, // ExpCmdSN
            0x00, 0x00, 0x00, 0x10, // MaxCmdSN
            0x02, 0x01,             // Status-Class 2, Status-Detail 1: authentication failure
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let bhs = roundtrip(bytes);
        let BhsBody::LoginResponse(l) = bhs.body else {
            panic!()
        };
        assert_eq!(l.status, LoginStatus::AUTHENTICATION_FAILURE);
        assert_eq!(l.stat_sn, 5);
    }

    #[test]
    fn data_in_with_status() {
        #[rustfmt::skip]
        let bytes = [
            0x25, 0x83,             // F=1 A=0 O=0 U=1 S=1
            0x00, 0x00,             // reserved, Status GOOD
            0x00, 0x00, 0x02, 0x00, // AHS 0, DSL 512
            0, 0, 0, 0, 0, 0, 0, 0, // LUN
            0xde, 0xad, 0xbe, 0xef, // ITT
            0xff, 0xff, 0xff, 0xff, // TTT reserved
            0x00, 0x00, 0x00, 0x09, // StatSN
            0x00, 0x00, 0x00, 0x0a, // ExpCmdSN
            0x00, 0x00, 0x00, 0x2a, // MaxCmdSN
            0x00, 0x00, 0x00, 0x01, // DataSN
            0x00, 0x00, 0x10, 0x00, // Buffer Offset 4096
            0x00, 0x00, 0x02, 0x00, // Residual Count 512
        ];
        let bhs = roundtrip(bytes);
        let BhsBody::DataIn(d) = bhs.body else {
            panic!()
        };
        assert!(d.final_ && d.status_present && d.underflow && !d.overflow);
        assert_eq!(d.itt, 0xdead_beef);
        assert_eq!(d.ttt, RESERVED_TAG);
        assert_eq!(
            (d.data_sn, d.buffer_offset, d.residual_count),
            (1, 4096, 512)
        );
        assert_eq!(bhs.data_segment_len, 512);
    }

    #[test]
    fn r2t_fields() {
        #[rustfmt::skip]
        let bytes = [
            0x31, 0x80, 0, 0,
            0, 0, 0, 0,
            0, 0x05, 0, 0, 0, 0, 0, 0, // LUN 5
            0, 0, 0, 0x11,             // ITT
            0, 0, 0, 0x77,             // TTT
            0, 0, 0, 0x01,             // StatSN
            0, 0, 0, 0x02,             // ExpCmdSN
            0, 0, 0, 0x03,             // MaxCmdSN
            0, 0, 0, 0x04,             // R2TSN
            0, 0x01, 0, 0,             // Buffer Offset 65536
            0, 0x04, 0, 0,             // Desired Data Transfer Length 262144
        ];
        let bhs = roundtrip(bytes);
        assert_eq!(
            bhs.body,
            BhsBody::R2t(R2t {
                lun: Lun::from_index(5),
                itt: 0x11,
                ttt: 0x77,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
                r2t_sn: 4,
                buffer_offset: 65536,
                desired_data_transfer_length: 262144,
            })
        );
    }

    #[test]
    fn scsi_response_with_sense() {
        #[rustfmt::skip]
        let bytes = [
            0x21, 0x82,             // F=1, U=1
            0x00, 0x02,             // Response: completed at target; Status CHECK CONDITION
            0x00, 0x00, 0x00, 0x14, // DSL 20 (SenseLength + sense)
            0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0x05,          // ITT
            0, 0, 0, 0,             // SNACK tag
            0, 0, 0, 0x10,          // StatSN
            0, 0, 0, 0x20,          // ExpCmdSN
            0, 0, 0, 0x40,          // MaxCmdSN
            0, 0, 0, 0x00,          // ExpDataSN
            0, 0, 0, 0x00,          // Bidi residual
            0, 0, 0x02, 0x00,       // Residual 512
        ];
        let bhs = roundtrip(bytes);
        let BhsBody::ScsiResponse(r) = bhs.body else {
            panic!()
        };
        assert_eq!(r.response, ScsiResponseCode::CommandCompleted);
        assert_eq!(r.status, 2);
        assert!(r.underflow && !r.overflow);
        assert_eq!(r.residual_count, 512);
    }

    #[test]
    fn tmf_logout_reject_async_nop_text_snack_roundtrip() {
        let cases = [
            BhsBody::TaskMgmtRequest(TaskMgmtRequest {
                immediate: true,
                function: TmfFunction::AbortTask,
                lun: Lun::from_index(3),
                itt: 9,
                referenced_task_tag: 7,
                cmd_sn: 100,
                exp_stat_sn: 50,
                ref_cmd_sn: 98,
                exp_data_sn: 0,
            }),
            BhsBody::TaskMgmtResponse(TaskMgmtResponse {
                response: TmfResponse::Rejected,
                itt: 9,
                stat_sn: 51,
                exp_cmd_sn: 101,
                max_cmd_sn: 132,
            }),
            BhsBody::LogoutRequest(LogoutRequest {
                immediate: true,
                reason: LogoutReason::CloseConnection,
                itt: 1,
                cid: 4,
                cmd_sn: 8,
                exp_stat_sn: 9,
            }),
            BhsBody::LogoutResponse(LogoutResponse {
                response: LogoutResponseCode::Closed,
                itt: 1,
                stat_sn: 9,
                exp_cmd_sn: 8,
                max_cmd_sn: 40,
                time2wait: 2,
                time2retain: 20,
            }),
            BhsBody::Reject(Reject {
                reason: RejectReason::ProtocolError,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
                data_sn_or_r2t_sn: 0,
            }),
            BhsBody::AsyncMessage(AsyncMessage {
                lun: Lun::default(),
                stat_sn: 4,
                exp_cmd_sn: 5,
                max_cmd_sn: 6,
                event: AsyncEvent::ConnectionDropped,
                vcode: 0,
                parameter1: 1,
                parameter2: 2,
                parameter3: 20,
            }),
            BhsBody::NopOut(NopOut {
                immediate: true,
                lun: Lun::default(),
                itt: RESERVED_TAG,
                ttt: 0x1234,
                cmd_sn: 3,
                exp_stat_sn: 4,
            }),
            BhsBody::NopIn(NopIn {
                lun: Lun::default(),
                itt: RESERVED_TAG,
                ttt: 0x1234,
                stat_sn: 3,
                exp_cmd_sn: 4,
                max_cmd_sn: 5,
            }),
            BhsBody::TextRequest(TextRequest {
                immediate: true,
                final_: true,
                continue_: false,
                lun: Lun::default(),
                itt: 2,
                ttt: RESERVED_TAG,
                cmd_sn: 1,
                exp_stat_sn: 1,
            }),
            BhsBody::TextResponse(TextResponse {
                final_: false,
                continue_: true,
                lun: Lun::default(),
                itt: 2,
                ttt: 0x99,
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 3,
            }),
            BhsBody::SnackRequest(SnackRequest {
                snack_type: SnackType::Status,
                lun: Lun::default(),
                itt: RESERVED_TAG,
                ttt_or_snack_tag: 0,
                exp_stat_sn: 3,
                beg_run: 2,
                run_length: 1,
            }),
            BhsBody::DataOut(DataOut {
                final_: true,
                lun: Lun::from_index(300),
                itt: 4,
                ttt: 5,
                exp_stat_sn: 6,
                data_sn: 7,
                buffer_offset: 8192,
            }),
        ];
        for body in cases {
            let bhs = Bhs::with_data_len(body, 12);
            let bytes = bhs.to_bytes();
            assert_eq!(Bhs::decode(&bytes), Ok(bhs));
            assert_eq!(bytes[0] & 0x3f, body.opcode() as u8);
            assert_eq!(&bytes[5..8], &[0, 0, 12]);
        }
    }

    #[test]
    fn specific_byte_positions() {
        let t = Bhs::new(BhsBody::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: TmfFunction::LogicalUnitReset,
            lun: Lun::default(),
            itt: 1,
            referenced_task_tag: RESERVED_TAG,
            cmd_sn: 2,
            exp_stat_sn: 3,
            ref_cmd_sn: 0,
            exp_data_sn: 0,
        }))
        .to_bytes();
        assert_eq!(&t[0..2], &[0x42, 0x85]);
        let l = Bhs::new(BhsBody::LogoutResponse(LogoutResponse {
            response: LogoutResponseCode::CidNotFound,
            itt: 0,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            time2wait: 0x0102,
            time2retain: 0x0304,
        }))
        .to_bytes();
        assert_eq!((l[2], &l[40..44]), (1, &[1u8, 2, 3, 4][..]));
        let a = Bhs::new(BhsBody::AsyncMessage(AsyncMessage {
            lun: Lun::default(),
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            event: AsyncEvent::LogoutRequested,
            vcode: 0,
            parameter1: 0,
            parameter2: 0,
            parameter3: 5,
        }))
        .to_bytes();
        assert_eq!(&a[16..20], &[0xff; 4]);
        assert_eq!((a[36], &a[42..44]), (1, &[0u8, 5][..]));
    }

    #[test]
    fn reserved_codes_are_typed_errors() {
        let mut b = [0u8; 48];
        b[0] = 0x07;
        assert_eq!(Bhs::decode(&b), Err(BhsError::UnknownOpcode(0x07)));
        b[0] = 0x1c; // vendor-specific initiator opcode: not supported
        assert_eq!(Bhs::decode(&b), Err(BhsError::UnknownOpcode(0x1c)));
        b[0] = 0x02;
        b[1] = 0x80 | 9;
        assert_eq!(Bhs::decode(&b), Err(BhsError::TmfFunction(9)));
        b[0] = 0x06;
        b[1] = 0x80 | 3;
        assert_eq!(Bhs::decode(&b), Err(BhsError::LogoutReason(3)));
        b[0] = 0x03;
        b[1] = 0x80 | 0x08 | 0x02; // CSG=2
        assert_eq!(Bhs::decode(&b), Err(BhsError::LoginStage(2)));
        b[1] = 0x80 | 0x04 | 0x02; // CSG=1, T=1, NSG=2
        assert_eq!(Bhs::decode(&b), Err(BhsError::LoginStage(2)));
        b[1] = 0x04 | 0x02; // T=0: NSG reserved, ignored
        assert!(Bhs::decode(&b).is_ok());
        b[0] = 0x3f;
        b[2] = 0x01;
        assert_eq!(Bhs::decode(&b), Err(BhsError::RejectReason(1)));
        b[0] = 0x21;
        b[2] = 0x05;
        assert_eq!(Bhs::decode(&b), Err(BhsError::ScsiResponseCode(5)));
        b[0] = 0x01;
        b[1] = 0x87;
        assert_eq!(Bhs::decode(&b), Err(BhsError::TaskAttribute(7)));
    }

    #[test]
    fn reserved_fields_are_ignored_and_zeroed() {
        let mut b = Bhs::new(BhsBody::NopIn(NopIn::default())).to_bytes();
        b[2] = 0xaa; // reserved
        b[40] = 0xbb; // reserved
        let bhs = Bhs::decode(&b).unwrap();
        let clean = bhs.to_bytes();
        assert_eq!((clean[2], clean[40]), (0, 0));
    }

    #[test]
    fn decode_never_panics_on_any_first_bytes() {
        for op in 0..=255u8 {
            for f in [0u8, 0x55, 0xaa, 0xff] {
                let mut b = [f; 48];
                b[0] = op;
                if let Ok(bhs) = Bhs::decode(&b) {
                    // Anything that decodes re-encodes to something that decodes the same.
                    assert_eq!(Bhs::decode(&bhs.to_bytes()), Ok(bhs));
                }
            }
        }
    }
}
