//! Completion status: Status Code Type, Status Code, Command Retry Delay, More and Do Not
//! Retry (NVMe Base 2.x, "Completion Queue Entry: Status Field"). The named constants give the
//! codes with DNR and More clear; add them with [`Status::with_dnr`] / [`Status::with_more`].
//!
//! Command-specific codes (SCT 1h) are interpreted relative to the command that failed, so the
//! same value appears under several names (0x80 is Conflicting Attributes for Dataset
//! Management and Connect Incompatible Format for Connect).

/// Status Code Type (bits 11:9 of the status field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusCodeType {
    Generic,
    CommandSpecific,
    MediaAndDataIntegrity,
    PathRelated,
    Reserved(u8),
    VendorSpecific,
}

impl StatusCodeType {
    pub const fn from_raw(v: u8) -> Self {
        match v & 0x7 {
            0 => StatusCodeType::Generic,
            1 => StatusCodeType::CommandSpecific,
            2 => StatusCodeType::MediaAndDataIntegrity,
            3 => StatusCodeType::PathRelated,
            7 => StatusCodeType::VendorSpecific,
            r => StatusCodeType::Reserved(r),
        }
    }

    pub const fn raw(self) -> u8 {
        match self {
            StatusCodeType::Generic => 0,
            StatusCodeType::CommandSpecific => 1,
            StatusCodeType::MediaAndDataIntegrity => 2,
            StatusCodeType::PathRelated => 3,
            StatusCodeType::Reserved(r) => r & 0x7,
            StatusCodeType::VendorSpecific => 7,
        }
    }
}

/// A completion status (the status field without the phase tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status {
    /// Status Code Type, raw 3 bits (see [`StatusCodeType`]).
    pub sct: u8,
    /// Status Code.
    pub sc: u8,
    /// Command Retry Delay (0 = none, 1..3 select CRDT1..CRDT3 of Identify Controller).
    pub crd: u8,
    /// More: more status information in the Error Information log.
    pub more: bool,
    /// Do Not Retry.
    pub dnr: bool,
}

const fn st(sct: u8, sc: u8) -> Status {
    Status {
        sct,
        sc,
        crd: 0,
        more: false,
        dnr: false,
    }
}

impl Status {
    pub const fn new(sct: StatusCodeType, sc: u8) -> Self {
        st(sct.raw(), sc)
    }

    pub const fn code_type(&self) -> StatusCodeType {
        StatusCodeType::from_raw(self.sct)
    }

    pub const fn is_success(&self) -> bool {
        self.sct == 0 && self.sc == 0
    }

    pub const fn with_dnr(mut self) -> Self {
        self.dnr = true;
        self
    }

    pub const fn with_more(mut self) -> Self {
        self.more = true;
        self
    }

    pub const fn with_crd(mut self, crd: u8) -> Self {
        self.crd = crd & 0x3;
        self
    }

    /// Same code type and code, ignoring CRD, More and DNR.
    pub const fn same_code(&self, other: Status) -> bool {
        self.sct == other.sct && self.sc == other.sc
    }

    /// The 16-bit status field of a CQE (bytes 14..16) with the given phase tag.
    pub const fn to_field(&self, phase: bool) -> u16 {
        (phase as u16)
            | ((self.sc as u16) << 1)
            | (((self.sct & 0x7) as u16) << 9)
            | (((self.crd & 0x3) as u16) << 12)
            | ((self.more as u16) << 14)
            | ((self.dnr as u16) << 15)
    }

    /// Splits a CQE status field into the status and the phase tag.
    pub const fn from_field(field: u16) -> (Status, bool) {
        (
            Status {
                sc: (field >> 1) as u8,
                sct: ((field >> 9) & 0x7) as u8,
                crd: ((field >> 12) & 0x3) as u8,
                more: field & (1 << 14) != 0,
                dnr: field & (1 << 15) != 0,
            },
            field & 1 != 0,
        )
    }

    // ---- Generic Command Status (SCT 0h) ----
    pub const SUCCESS: Status = st(0, 0x00);
    pub const INVALID_OPCODE: Status = st(0, 0x01);
    pub const INVALID_FIELD: Status = st(0, 0x02);
    pub const COMMAND_ID_CONFLICT: Status = st(0, 0x03);
    pub const DATA_TRANSFER_ERROR: Status = st(0, 0x04);
    pub const ABORTED_POWER_LOSS: Status = st(0, 0x05);
    pub const INTERNAL_ERROR: Status = st(0, 0x06);
    pub const ABORTED_BY_REQUEST: Status = st(0, 0x07);
    pub const ABORTED_SQ_DELETION: Status = st(0, 0x08);
    pub const ABORTED_FAILED_FUSED: Status = st(0, 0x09);
    pub const ABORTED_MISSING_FUSED: Status = st(0, 0x0A);
    pub const INVALID_NAMESPACE_OR_FORMAT: Status = st(0, 0x0B);
    pub const COMMAND_SEQUENCE_ERROR: Status = st(0, 0x0C);
    pub const INVALID_SGL_SEGMENT_DESCRIPTOR: Status = st(0, 0x0D);
    pub const INVALID_NUMBER_OF_SGL_DESCRIPTORS: Status = st(0, 0x0E);
    pub const DATA_SGL_LENGTH_INVALID: Status = st(0, 0x0F);
    pub const METADATA_SGL_LENGTH_INVALID: Status = st(0, 0x10);
    pub const SGL_DESCRIPTOR_TYPE_INVALID: Status = st(0, 0x11);
    pub const INVALID_USE_OF_CMB: Status = st(0, 0x12);
    pub const PRP_OFFSET_INVALID: Status = st(0, 0x13);
    pub const ATOMIC_WRITE_UNIT_EXCEEDED: Status = st(0, 0x14);
    pub const OPERATION_DENIED: Status = st(0, 0x15);
    pub const SGL_OFFSET_INVALID: Status = st(0, 0x16);
    pub const HOST_IDENTIFIER_INCONSISTENT_FORMAT: Status = st(0, 0x18);
    pub const KEEP_ALIVE_TIMER_EXPIRED: Status = st(0, 0x19);
    pub const KEEP_ALIVE_TIMEOUT_INVALID: Status = st(0, 0x1A);
    pub const ABORTED_PREEMPT_AND_ABORT: Status = st(0, 0x1B);
    pub const SANITIZE_FAILED: Status = st(0, 0x1C);
    pub const SANITIZE_IN_PROGRESS: Status = st(0, 0x1D);
    pub const SGL_DATA_BLOCK_GRANULARITY_INVALID: Status = st(0, 0x1E);
    pub const COMMAND_NOT_SUPPORTED_FOR_CMB_QUEUE: Status = st(0, 0x1F);
    pub const NAMESPACE_WRITE_PROTECTED: Status = st(0, 0x20);
    pub const COMMAND_INTERRUPTED: Status = st(0, 0x21);
    pub const TRANSIENT_TRANSPORT_ERROR: Status = st(0, 0x22);
    pub const COMMAND_PROHIBITED_BY_LOCKDOWN: Status = st(0, 0x23);
    pub const ADMIN_COMMAND_MEDIA_NOT_READY: Status = st(0, 0x24);
    // Generic, NVM command set
    pub const LBA_OUT_OF_RANGE: Status = st(0, 0x80);
    pub const CAPACITY_EXCEEDED: Status = st(0, 0x81);
    pub const NAMESPACE_NOT_READY: Status = st(0, 0x82);
    pub const RESERVATION_CONFLICT: Status = st(0, 0x83);
    pub const FORMAT_IN_PROGRESS: Status = st(0, 0x84);

    // ---- Command Specific Status (SCT 1h) ----
    pub const COMPLETION_QUEUE_INVALID: Status = st(1, 0x00);
    pub const INVALID_QUEUE_IDENTIFIER: Status = st(1, 0x01);
    pub const INVALID_QUEUE_SIZE: Status = st(1, 0x02);
    pub const ABORT_COMMAND_LIMIT_EXCEEDED: Status = st(1, 0x03);
    pub const ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED: Status = st(1, 0x05);
    pub const INVALID_FIRMWARE_SLOT: Status = st(1, 0x06);
    pub const INVALID_FIRMWARE_IMAGE: Status = st(1, 0x07);
    pub const INVALID_INTERRUPT_VECTOR: Status = st(1, 0x08);
    pub const INVALID_LOG_PAGE: Status = st(1, 0x09);
    pub const INVALID_FORMAT: Status = st(1, 0x0A);
    pub const INVALID_QUEUE_DELETION: Status = st(1, 0x0C);
    pub const FEATURE_NOT_SAVEABLE: Status = st(1, 0x0D);
    pub const FEATURE_NOT_CHANGEABLE: Status = st(1, 0x0E);
    pub const FEATURE_NOT_NAMESPACE_SPECIFIC: Status = st(1, 0x0F);
    pub const NAMESPACE_INSUFFICIENT_CAPACITY: Status = st(1, 0x15);
    pub const NAMESPACE_IDENTIFIER_UNAVAILABLE: Status = st(1, 0x16);
    pub const NAMESPACE_ALREADY_ATTACHED: Status = st(1, 0x18);
    pub const NAMESPACE_IS_PRIVATE: Status = st(1, 0x19);
    pub const NAMESPACE_NOT_ATTACHED: Status = st(1, 0x1A);
    pub const CONTROLLER_LIST_INVALID: Status = st(1, 0x1C);
    pub const ANA_GROUP_IDENTIFIER_INVALID: Status = st(1, 0x24);
    pub const ANA_ATTACH_FAILED: Status = st(1, 0x25);
    // Command specific, NVM command set (Dataset Management, reads/writes, Copy)
    pub const CONFLICTING_ATTRIBUTES: Status = st(1, 0x80);
    pub const INVALID_PROTECTION_INFORMATION: Status = st(1, 0x81);
    pub const ATTEMPTED_WRITE_TO_READ_ONLY_RANGE: Status = st(1, 0x82);
    pub const COMMAND_SIZE_LIMIT_EXCEEDED: Status = st(1, 0x83);
    // Command specific, Fabrics commands
    pub const CONNECT_INCOMPATIBLE_FORMAT: Status = st(1, 0x80);
    pub const CONNECT_CONTROLLER_BUSY: Status = st(1, 0x81);
    pub const CONNECT_INVALID_PARAMETERS: Status = st(1, 0x82);
    pub const CONNECT_RESTART_DISCOVERY: Status = st(1, 0x83);
    pub const CONNECT_INVALID_HOST: Status = st(1, 0x84);
    pub const INVALID_QUEUE_TYPE: Status = st(1, 0x85);
    pub const DISCOVER_RESTART: Status = st(1, 0x90);
    pub const AUTHENTICATION_REQUIRED: Status = st(1, 0x91);

    // ---- Media and Data Integrity Errors (SCT 2h) ----
    pub const WRITE_FAULT: Status = st(2, 0x80);
    pub const UNRECOVERED_READ_ERROR: Status = st(2, 0x81);
    pub const END_TO_END_GUARD_CHECK_ERROR: Status = st(2, 0x82);
    pub const END_TO_END_APPLICATION_TAG_CHECK_ERROR: Status = st(2, 0x83);
    pub const END_TO_END_REFERENCE_TAG_CHECK_ERROR: Status = st(2, 0x84);
    pub const COMPARE_FAILURE: Status = st(2, 0x85);
    pub const ACCESS_DENIED: Status = st(2, 0x86);
    pub const DEALLOCATED_OR_UNWRITTEN_LOGICAL_BLOCK: Status = st(2, 0x87);
    pub const END_TO_END_STORAGE_TAG_CHECK_ERROR: Status = st(2, 0x88);

    // ---- Path Related Status (SCT 3h) ----
    pub const INTERNAL_PATH_ERROR: Status = st(3, 0x00);
    pub const ASYMMETRIC_ACCESS_PERSISTENT_LOSS: Status = st(3, 0x01);
    pub const ASYMMETRIC_ACCESS_INACCESSIBLE: Status = st(3, 0x02);
    pub const ASYMMETRIC_ACCESS_TRANSITION: Status = st(3, 0x03);
    pub const CONTROLLER_PATHING_ERROR: Status = st(3, 0x60);
    pub const HOST_PATHING_ERROR: Status = st(3, 0x70);
    pub const COMMAND_ABORTED_BY_HOST: Status = st(3, 0x71);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_field_layout() {
        // Invalid Field in Command with DNR, phase 1:
        // P=1 (bit 0), SC=0x02 (bits 8:1), SCT=0 (11:9), CRD=0, M=0, DNR=1 (bit 15).
        let s = Status::INVALID_FIELD.with_dnr();
        assert_eq!(s.to_field(true), 0x8005);
        assert_eq!(Status::from_field(0x8005), (s, true));
        // Connect Invalid Parameters: SCT=1, SC=0x82 -> (0x82 << 1) | (1 << 9) = 0x0304.
        assert_eq!(Status::CONNECT_INVALID_PARAMETERS.to_field(false), 0x0304);
        // ANA inaccessible: SCT=3, SC=2, More + CRD=2 -> 4 | 0x600 | 0x2000 | 0x4000.
        let p = Status::ASYMMETRIC_ACCESS_INACCESSIBLE
            .with_crd(2)
            .with_more();
        assert_eq!(p.to_field(false), 0x0004 | 0x0600 | 0x2000 | 0x4000);
        assert_eq!(Status::from_field(p.to_field(false)).0, p);
        assert_eq!(p.code_type(), StatusCodeType::PathRelated);
    }

    #[test]
    fn values_match_the_spec_tables() {
        assert_eq!(
            (
                Status::HOST_PATHING_ERROR.sct,
                Status::HOST_PATHING_ERROR.sc
            ),
            (3, 0x70)
        );
        assert_eq!(Status::TRANSIENT_TRANSPORT_ERROR.sc, 0x22);
        assert_eq!(Status::DEALLOCATED_OR_UNWRITTEN_LOGICAL_BLOCK.sc, 0x87);
        assert_eq!(Status::AUTHENTICATION_REQUIRED.sc, 0x91);
        assert_eq!(Status::INVALID_QUEUE_TYPE.sc, 0x85);
        assert!(Status::SUCCESS.is_success());
        assert!(!Status::CONFLICTING_ATTRIBUTES.is_success());
        assert!(Status::CONFLICTING_ATTRIBUTES.same_code(Status::CONNECT_INCOMPATIBLE_FORMAT));
    }
}
