//! NVMe/TCP PDUs (NVMe/TCP Transport Specification 1.0/1.1): pure encode and decode for both
//! ends of a connection.
//!
//! Receiving is split for a streaming reader that first fills a small staging buffer and then
//! lands payload straight into pool buffers:
//!
//! 1. [`CommonHeader::decode`] the first 8 bytes;
//! 2. [`CommonHeader::validate`] them against the connection's negotiated [`PduRules`]: this
//!    checks every HLEN / PDO / PLEN / FLAGS rule for the PDU type and gives a [`PduLayout`]
//!    (how many header bytes to read, where the data starts, how long it is, whether a data
//!    digest follows);
//! 3. once `layout.header_len` bytes are in hand, [`Pdu::decode`] checks the header digest and
//!    decodes the type-specific header.
//!
//! [`parse_header`] does all three on whatever bytes are staged. A protocol violation is a
//! [`PduError`] that carries the fatal error status ([`Fes`]) and field offset (FEI) for the
//! termination request. A data digest mismatch is not fatal in NVMe/TCP (the command fails
//! with a transient transport error), so it is left to the caller via
//! [`DataDigest`](super::digest::DataDigest).
//!
//! Sending: each PDU type has an encoder that writes the header (and header digest, and for
//! data PDUs the padding up to PDO) into a caller's buffer; the data itself is sent from pool
//! buffers, followed by the data digest when [`DataPduHeader::data_digest`] says so.

use gyre_nvme::{Command, Completion, SQE_SIZE};

use super::digest::{header_digest, DIGEST_LEN};

/// Length of the common header.
pub const COMMON_HEADER_LEN: usize = 8;
/// Largest PDU header including its header digest (ICReq / ICResp, which have none).
pub const MAX_HEADER_LEN: usize = 128;
/// HLEN of ICReq and ICResp.
pub const IC_HLEN: u8 = 128;
/// HLEN of H2CTermReq and C2HTermReq.
pub const TERM_REQ_HLEN: u8 = 24;
/// HLEN of CapsuleCmd (8 + the 64-byte SQE).
pub const CAPSULE_CMD_HLEN: u8 = 72;
/// HLEN of CapsuleResp (8 + the 16-byte CQE).
pub const CAPSULE_RESP_HLEN: u8 = 24;
/// HLEN of H2CData, C2HData and R2T.
pub const DATA_HLEN: u8 = 24;
/// HLEN of R2T.
pub const R2T_HLEN: u8 = 24;
/// Largest TermReq PDU: its 24-byte header and up to 128 bytes of the offending header.
pub const MAX_TERM_REQ_PLEN: u32 = 152;
/// Most bytes of the offending PDU header a TermReq carries.
pub const MAX_TERM_REQ_DATA: usize = 128;
/// PDU format version 1.0, the only one defined.
pub const PFV_1_0: u16 = 0;
/// Smallest MAXH2CDATA a controller may report.
pub const MIN_MAXH2CDATA: u32 = 4096;
/// Largest CPDA / HPDA value (alignment of 128 bytes).
pub const MAX_PDA: u8 = 31;

/// PDU types (common header byte 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PduType {
    IcReq = 0x00,
    IcResp = 0x01,
    H2cTermReq = 0x02,
    C2hTermReq = 0x03,
    CapsuleCmd = 0x04,
    CapsuleResp = 0x05,
    H2cData = 0x06,
    C2hData = 0x07,
    R2t = 0x09,
    /// Kickstart Discovery Request (transport 1.1, centralized discovery); not supported.
    KdReq = 0x0A,
    /// Kickstart Discovery Response (transport 1.1); not supported.
    KdResp = 0x0B,
}

impl PduType {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x00 => PduType::IcReq,
            0x01 => PduType::IcResp,
            0x02 => PduType::H2cTermReq,
            0x03 => PduType::C2hTermReq,
            0x04 => PduType::CapsuleCmd,
            0x05 => PduType::CapsuleResp,
            0x06 => PduType::H2cData,
            0x07 => PduType::C2hData,
            0x09 => PduType::R2t,
            0x0A => PduType::KdReq,
            0x0B => PduType::KdResp,
            _ => return None,
        })
    }

    /// The fixed HLEN of this type.
    pub const fn hlen(self) -> u8 {
        match self {
            PduType::IcReq | PduType::IcResp => IC_HLEN,
            PduType::H2cTermReq | PduType::C2hTermReq => TERM_REQ_HLEN,
            PduType::CapsuleCmd => CAPSULE_CMD_HLEN,
            PduType::CapsuleResp => CAPSULE_RESP_HLEN,
            PduType::H2cData | PduType::C2hData => DATA_HLEN,
            PduType::R2t => R2T_HLEN,
            PduType::KdReq | PduType::KdResp => 0,
        }
    }

    /// Which end sends this type.
    pub const fn sender(self) -> Role {
        match self {
            PduType::IcReq
            | PduType::H2cTermReq
            | PduType::CapsuleCmd
            | PduType::H2cData
            | PduType::KdReq => Role::Host,
            PduType::IcResp
            | PduType::C2hTermReq
            | PduType::CapsuleResp
            | PduType::C2hData
            | PduType::R2t
            | PduType::KdResp => Role::Controller,
        }
    }
}

/// Common header FLAGS bits.
pub mod flags {
    /// A header digest follows the PDU header.
    pub const HDGSTF: u8 = 1 << 0;
    /// A data digest follows the PDU data.
    pub const DDGSTF: u8 = 1 << 1;
    /// H2CData / C2HData: last PDU of the transfer.
    pub const LAST_PDU: u8 = 1 << 2;
    /// C2HData: the command succeeded and no CapsuleResp follows.
    pub const SUCCESS: u8 = 1 << 3;
}

/// ICReq / ICResp DGST bits.
pub mod dgst {
    pub const HDGST_ENABLE: u8 = 1 << 0;
    pub const DDGST_ENABLE: u8 = 1 << 1;
}

/// Which end of the connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The NVM subsystem side: receives host-to-controller PDUs.
    Controller,
    /// The host (initiator) side: receives controller-to-host PDUs.
    Host,
}

/// Fatal Error Status of a termination request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Fes {
    /// FEI = byte offset of the offending header field.
    InvalidHeaderField = 0x01,
    PduSequenceError = 0x02,
    HeaderDigestError = 0x03,
    DataTransferOutOfRange = 0x04,
    /// Data Transfer Limit Exceeded; also R2T Limit Exceeded (same value).
    DataTransferLimitExceeded = 0x05,
    /// FEI = byte offset of the unsupported parameter.
    UnsupportedParameter = 0x06,
}

impl Fes {
    /// R2T Limit Exceeded shares the value of Data Transfer Limit Exceeded.
    pub const R2T_LIMIT_EXCEEDED: Fes = Fes::DataTransferLimitExceeded;

    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0x01 => Fes::InvalidHeaderField,
            0x02 => Fes::PduSequenceError,
            0x03 => Fes::HeaderDigestError,
            0x04 => Fes::DataTransferOutOfRange,
            0x05 => Fes::DataTransferLimitExceeded,
            0x06 => Fes::UnsupportedParameter,
            _ => return None,
        })
    }
}

/// A fatal NVMe/TCP protocol error: terminate the connection with a TermReq carrying
/// [`PduError::fes`] and [`PduError::fei`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    #[error("invalid PDU header field at byte {offset}: {reason}")]
    InvalidHeaderField { offset: u32, reason: &'static str },
    #[error("PDU sequence error: {reason}")]
    SequenceError { reason: &'static str },
    #[error("header digest mismatch: computed {computed:#010x}, received {received:#010x}")]
    HeaderDigest { computed: u32, received: u32 },
    #[error("data transfer out of range: {reason}")]
    DataOutOfRange { reason: &'static str },
    #[error("data transfer limit exceeded: {len} bytes > limit {limit}")]
    DataLimitExceeded { len: u64, limit: u64 },
    #[error("R2T limit exceeded")]
    R2tLimitExceeded,
    #[error("unsupported parameter at byte {offset}: {reason}")]
    UnsupportedParameter { offset: u32, reason: &'static str },
    /// The caller passed fewer header bytes than the layout requires (not a peer error).
    #[error("incomplete header: need {needed} bytes")]
    Incomplete { needed: usize },
}

impl PduError {
    pub const fn invalid_field(offset: u32, reason: &'static str) -> Self {
        PduError::InvalidHeaderField { offset, reason }
    }

    pub const fn sequence(reason: &'static str) -> Self {
        PduError::SequenceError { reason }
    }

    pub const fn out_of_range(reason: &'static str) -> Self {
        PduError::DataOutOfRange { reason }
    }

    /// The FES to send, or `None` for [`PduError::Incomplete`] (a caller error).
    pub const fn fes(&self) -> Option<Fes> {
        Some(match self {
            PduError::InvalidHeaderField { .. } => Fes::InvalidHeaderField,
            PduError::SequenceError { .. } => Fes::PduSequenceError,
            PduError::HeaderDigest { .. } => Fes::HeaderDigestError,
            PduError::DataOutOfRange { .. } => Fes::DataTransferOutOfRange,
            PduError::DataLimitExceeded { .. } | PduError::R2tLimitExceeded => {
                Fes::DataTransferLimitExceeded
            }
            PduError::UnsupportedParameter { .. } => Fes::UnsupportedParameter,
            PduError::Incomplete { .. } => return None,
        })
    }

    /// Fatal Error Information: the field offset for header-field and parameter errors,
    /// otherwise reserved (0).
    pub const fn fei(&self) -> u32 {
        match self {
            PduError::InvalidHeaderField { offset, .. }
            | PduError::UnsupportedParameter { offset, .. } => *offset,
            _ => 0,
        }
    }
}

/// An encoder was given too small a buffer, or a length that cannot be represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("buffer too small: need {needed} bytes, got {got}")]
    BufferTooSmall { needed: usize, got: usize },
    #[error("PDU length does not fit in PLEN")]
    TooLong,
}

/// What the connection has negotiated, which decides how PDUs are checked and built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PduRules {
    pub role: Role,
    /// ICReq / ICResp have been exchanged.
    pub initialized: bool,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Controller PDU data alignment (host-to-controller data PDUs), 0-based dwords.
    pub cpda: u8,
    /// Host PDU data alignment (controller-to-host data PDUs), 0-based dwords.
    pub hpda: u8,
    /// Most data bytes in one H2CData PDU.
    pub maxh2cdata: u32,
    /// Most in-capsule data bytes a CapsuleCmd may carry (from IOCCSZ); controller side.
    pub max_in_capsule_data: u32,
    /// Most data bytes accepted in one C2HData PDU; host side.
    pub max_c2h_data: u32,
}

impl PduRules {
    /// A controller end before ICReq: no digests, CPDA 0.
    pub const fn controller(maxh2cdata: u32, max_in_capsule_data: u32) -> Self {
        PduRules {
            role: Role::Controller,
            initialized: false,
            header_digest: false,
            data_digest: false,
            cpda: 0,
            hpda: 0,
            maxh2cdata,
            max_in_capsule_data,
            max_c2h_data: u32::MAX,
        }
    }

    /// A host end before ICResp.
    pub const fn host(max_c2h_data: u32) -> Self {
        PduRules {
            role: Role::Host,
            initialized: false,
            header_digest: false,
            data_digest: false,
            cpda: 0,
            hpda: 0,
            maxh2cdata: MIN_MAXH2CDATA,
            max_in_capsule_data: 0,
            max_c2h_data,
        }
    }

    /// Data alignment in bytes of the PDUs we receive.
    pub const fn rx_alignment(&self) -> usize {
        match self.role {
            Role::Controller => (self.cpda as usize + 1) * 4,
            Role::Host => (self.hpda as usize + 1) * 4,
        }
    }

    /// Data alignment in bytes of the PDUs we send.
    pub const fn tx_alignment(&self) -> usize {
        match self.role {
            Role::Controller => (self.hpda as usize + 1) * 4,
            Role::Host => (self.cpda as usize + 1) * 4,
        }
    }

    const fn hdgst_len(&self) -> usize {
        if self.header_digest {
            DIGEST_LEN
        } else {
            0
        }
    }

    /// Controller: take the host's ICReq and produce the ICResp, enabling each digest the host
    /// asked for and `allow` permits. `cpda` is the alignment we want for the host's data.
    pub fn accept_icreq(
        &mut self,
        req: &IcReq,
        cpda: u8,
        allow_header_digest: bool,
        allow_data_digest: bool,
    ) -> IcResp {
        self.header_digest = req.header_digest && allow_header_digest;
        self.data_digest = req.data_digest && allow_data_digest;
        self.hpda = req.hpda;
        self.cpda = cpda.min(MAX_PDA);
        self.initialized = true;
        IcResp {
            pfv: PFV_1_0,
            cpda: self.cpda,
            header_digest: self.header_digest,
            data_digest: self.data_digest,
            maxh2cdata: self.maxh2cdata,
        }
    }

    /// Host: take the controller's ICResp to our `req`. A controller may only enable digests
    /// the host asked for.
    pub fn accept_icresp(&mut self, req: &IcReq, resp: &IcResp) -> Result<(), PduError> {
        if (resp.header_digest && !req.header_digest) || (resp.data_digest && !req.data_digest) {
            return Err(PduError::invalid_field(
                11,
                "digest enabled that was not requested",
            ));
        }
        self.header_digest = resp.header_digest;
        self.data_digest = resp.data_digest;
        self.hpda = req.hpda;
        self.cpda = resp.cpda;
        self.maxh2cdata = resp.maxh2cdata;
        self.initialized = true;
        Ok(())
    }
}

/// The 8-byte common header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommonHeader {
    pub pdu_type: u8,
    pub flags: u8,
    /// PDU header length, without the header digest.
    pub hlen: u8,
    /// PDU data offset from the start of the PDU.
    pub pdo: u8,
    /// Total PDU length: header, header digest, padding, data, data digest.
    pub plen: u32,
}

/// Where the parts of a received PDU are, once its common header checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PduLayout {
    pub pdu_type: PduType,
    pub flags: u8,
    pub hlen: u8,
    /// Bytes from the start of the PDU to the end of its header (HLEN + header digest): read
    /// this much before calling [`Pdu::decode`].
    pub header_len: usize,
    /// Whether a header digest follows the HLEN bytes.
    pub header_digest: bool,
    /// Offset of the data from the start of the PDU (PDO, or HLEN for a TermReq).
    pub data_offset: usize,
    /// Padding between the header and the data.
    pub pad_len: usize,
    /// Data bytes (0 when the PDU carries none).
    pub data_len: usize,
    /// Whether a 4-byte data digest follows the data.
    pub data_digest: bool,
    pub plen: u32,
}

impl PduLayout {
    /// Bytes after the header: padding, data and data digest.
    pub fn remaining_after_header(&self) -> usize {
        self.plen as usize - self.header_len
    }

    /// 4 if a data digest follows the data, else 0.
    pub fn trailer_len(&self) -> usize {
        if self.data_digest {
            DIGEST_LEN
        } else {
            0
        }
    }
}

fn bad(offset: u32, reason: &'static str) -> PduError {
    PduError::invalid_field(offset, reason)
}

const FLAGS_OFFSET: u32 = 1;
const HLEN_OFFSET: u32 = 2;
const PDO_OFFSET: u32 = 3;
const PLEN_OFFSET: u32 = 4;

impl CommonHeader {
    pub fn decode(b: &[u8; COMMON_HEADER_LEN]) -> Self {
        CommonHeader {
            pdu_type: b[0],
            flags: b[1],
            hlen: b[2],
            pdo: b[3],
            plen: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    pub fn encode(&self, b: &mut [u8; COMMON_HEADER_LEN]) {
        b[0] = self.pdu_type;
        b[1] = self.flags;
        b[2] = self.hlen;
        b[3] = self.pdo;
        b[4..8].copy_from_slice(&self.plen.to_le_bytes());
    }

    /// Checks the common header of a PDU we received against the connection's rules.
    pub fn validate(&self, rules: &PduRules) -> Result<PduLayout, PduError> {
        let pdu_type = match PduType::from_u8(self.pdu_type) {
            Some(PduType::KdReq | PduType::KdResp) => {
                return Err(bad(0, "kickstart discovery PDUs are not supported"))
            }
            Some(t) => t,
            None => return Err(bad(0, "unknown PDU type")),
        };
        // A PDU of the other direction is as invalid as an unknown type.
        if pdu_type.sender() == rules.role {
            return Err(bad(0, "PDU type not sent in this direction"));
        }
        let is_ic = matches!(pdu_type, PduType::IcReq | PduType::IcResp);
        let is_term = matches!(pdu_type, PduType::H2cTermReq | PduType::C2hTermReq);
        if !is_term && is_ic == rules.initialized {
            return Err(PduError::sequence(if is_ic {
                "connection already initialized"
            } else {
                "PDU before connection initialization"
            }));
        }
        if self.hlen != pdu_type.hlen() {
            return Err(bad(HLEN_OFFSET, "HLEN does not match the PDU type"));
        }
        let hlen = self.hlen as usize;
        let plen = self.plen as usize;
        let hdgstf = self.flags & flags::HDGSTF != 0;
        let ddgstf = self.flags & flags::DDGSTF != 0;

        // Initialization and termination PDUs never carry digests.
        if is_ic || is_term {
            if hdgstf || ddgstf {
                return Err(bad(FLAGS_OFFSET, "digest flag on a PDU without digests"));
            }
            if is_ic {
                if self.pdo != 0 {
                    return Err(bad(PDO_OFFSET, "PDO must be 0"));
                }
                if plen != hlen {
                    return Err(bad(PLEN_OFFSET, "PLEN must equal HLEN"));
                }
                return Ok(self.layout(pdu_type, hlen, false, hlen, 0, false));
            }
            if self.plen < TERM_REQ_HLEN as u32 || self.plen > MAX_TERM_REQ_PLEN {
                return Err(bad(PLEN_OFFSET, "TermReq PLEN out of range"));
            }
            return Ok(self.layout(pdu_type, hlen, false, hlen, plen - hlen, false));
        }

        if hdgstf != rules.header_digest {
            return Err(bad(
                FLAGS_OFFSET,
                "HDGSTF does not match the negotiated header digest",
            ));
        }
        if ddgstf && !rules.data_digest {
            return Err(bad(
                FLAGS_OFFSET,
                "DDGSTF set without a negotiated data digest",
            ));
        }
        let header_len = hlen + rules.hdgst_len();
        if plen < header_len {
            return Err(bad(PLEN_OFFSET, "PLEN shorter than the header"));
        }

        if matches!(pdu_type, PduType::CapsuleResp | PduType::R2t) {
            if ddgstf {
                return Err(bad(FLAGS_OFFSET, "DDGSTF on a PDU without data"));
            }
            if self.pdo != 0 {
                return Err(bad(PDO_OFFSET, "PDO must be 0"));
            }
            if plen != header_len {
                return Err(bad(PLEN_OFFSET, "PLEN must equal the header length"));
            }
            return Ok(self.layout(pdu_type, header_len, rules.header_digest, 0, 0, false));
        }

        // CapsuleCmd, H2CData, C2HData: may (data PDUs: must) carry data.
        if pdu_type == PduType::C2hData
            && self.flags & flags::SUCCESS != 0
            && self.flags & flags::LAST_PDU == 0
        {
            return Err(bad(FLAGS_OFFSET, "SUCCESS without LAST_PDU"));
        }
        if plen == header_len {
            if pdu_type != PduType::CapsuleCmd {
                return Err(bad(PLEN_OFFSET, "data PDU without data"));
            }
            if ddgstf {
                return Err(bad(FLAGS_OFFSET, "DDGSTF on a capsule without data"));
            }
            if self.pdo != 0 && self.pdo as usize != header_len {
                return Err(bad(PDO_OFFSET, "PDO set on a capsule without data"));
            }
            return Ok(self.layout(pdu_type, header_len, rules.header_digest, 0, 0, false));
        }
        let pdo = self.pdo as usize;
        if pdo < header_len {
            return Err(bad(PDO_OFFSET, "PDO inside the header"));
        }
        if !pdo.is_multiple_of(rules.rx_alignment()) {
            return Err(bad(PDO_OFFSET, "PDO not aligned to the negotiated PDA"));
        }
        if ddgstf != rules.data_digest {
            return Err(bad(
                FLAGS_OFFSET,
                "DDGSTF does not match the negotiated data digest",
            ));
        }
        let trailer = if ddgstf { DIGEST_LEN } else { 0 };
        let data_len = plen
            .checked_sub(pdo)
            .and_then(|n| n.checked_sub(trailer))
            .filter(|&n| n > 0)
            .ok_or(if pdo > plen {
                bad(PDO_OFFSET, "PDO beyond the end of the PDU")
            } else {
                bad(PLEN_OFFSET, "PLEN leaves no room for data")
            })?;
        let limit = match pdu_type {
            PduType::CapsuleCmd => rules.max_in_capsule_data,
            PduType::H2cData => rules.maxh2cdata,
            _ => rules.max_c2h_data,
        };
        if data_len as u64 > limit as u64 {
            return Err(PduError::DataLimitExceeded {
                len: data_len as u64,
                limit: limit as u64,
            });
        }
        Ok(self.layout(
            pdu_type,
            header_len,
            rules.header_digest,
            pdo,
            data_len,
            ddgstf,
        ))
    }

    fn layout(
        &self,
        pdu_type: PduType,
        header_len: usize,
        header_digest: bool,
        data_offset: usize,
        data_len: usize,
        data_digest: bool,
    ) -> PduLayout {
        PduLayout {
            pdu_type,
            flags: self.flags,
            hlen: self.hlen,
            header_len,
            header_digest,
            data_offset,
            pad_len: if data_len > 0 {
                data_offset - header_len
            } else {
                0
            },
            data_len,
            data_digest,
            plen: self.plen,
        }
    }
}

/// Initialize Connection Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IcReq {
    pub pfv: u16,
    /// Host PDU data alignment, 0-based dwords (0..=31).
    pub hpda: u8,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Maximum outstanding R2T PDUs per command, 0-based.
    pub maxr2t: u32,
}

/// Initialize Connection Response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IcResp {
    pub pfv: u16,
    /// Controller PDU data alignment, 0-based dwords (0..=31).
    pub cpda: u8,
    pub header_digest: bool,
    pub data_digest: bool,
    /// Most data bytes per H2CData PDU (multiple of 4, at least 4096).
    pub maxh2cdata: u32,
}

/// H2CTermReq / C2HTermReq header. The offending PDU header follows as the PDU data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TermReq {
    /// Fatal error status (raw; see [`Fes`]).
    pub fes: u16,
    /// Fatal error information.
    pub fei: u32,
}

/// Command capsule: the SQE (in-capsule data follows per the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapsuleCmd {
    pub sqe: Command,
}

/// Response capsule: the CQE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapsuleResp {
    pub cqe: Completion,
}

/// Host-to-controller data, sent in answer to an R2T.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct H2cData {
    /// Command capsule CID.
    pub cccid: u16,
    /// Transfer tag from the R2T.
    pub ttag: u16,
    /// Offset of this data in the command's data.
    pub datao: u32,
    pub datal: u32,
    pub last: bool,
}

/// Controller-to-host data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct C2hData {
    pub cccid: u16,
    pub datao: u32,
    pub datal: u32,
    pub last: bool,
    /// The command succeeded; no CapsuleResp follows (only with `last`).
    pub success: bool,
}

/// Ready to Transfer: the controller asks for host data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct R2t {
    pub cccid: u16,
    pub ttag: u16,
    /// Offset of the requested data in the command's data.
    pub r2to: u32,
    /// Length of the requested data.
    pub r2tl: u32,
}

/// A decoded PDU header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pdu {
    IcReq(IcReq),
    IcResp(IcResp),
    H2cTermReq(TermReq),
    C2hTermReq(TermReq),
    CapsuleCmd(CapsuleCmd),
    CapsuleResp(CapsuleResp),
    H2cData(H2cData),
    C2hData(C2hData),
    R2t(R2t),
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Pdu {
    /// Decodes the PDU-specific header from `header` (at least `layout.header_len` bytes,
    /// starting with the common header), checking the header digest when there is one.
    pub fn decode(layout: &PduLayout, header: &[u8]) -> Result<Pdu, PduError> {
        // The layout comes from `validate`; a hand-built one that disagrees with its PDU
        // type is refused here rather than trusted.
        let hlen = layout.pdu_type.hlen() as usize;
        let needed = layout
            .header_len
            .max(hlen + if layout.header_digest { DIGEST_LEN } else { 0 });
        let h = header
            .get(..needed)
            .ok_or(PduError::Incomplete { needed })?;
        if layout.header_digest {
            let computed = header_digest(&h[..hlen]);
            let received = le32(h, hlen);
            if computed != received {
                return Err(PduError::HeaderDigest { computed, received });
            }
        }
        Ok(match layout.pdu_type {
            PduType::IcReq => {
                let r = IcReq {
                    pfv: le16(h, 8),
                    hpda: h[10],
                    header_digest: h[11] & dgst::HDGST_ENABLE != 0,
                    data_digest: h[11] & dgst::DDGST_ENABLE != 0,
                    maxr2t: le32(h, 12),
                };
                if r.pfv != PFV_1_0 {
                    return Err(PduError::UnsupportedParameter {
                        offset: 8,
                        reason: "PDU format version",
                    });
                }
                if r.hpda > MAX_PDA {
                    return Err(bad(10, "HPDA above 31"));
                }
                Pdu::IcReq(r)
            }
            PduType::IcResp => {
                let r = IcResp {
                    pfv: le16(h, 8),
                    cpda: h[10],
                    header_digest: h[11] & dgst::HDGST_ENABLE != 0,
                    data_digest: h[11] & dgst::DDGST_ENABLE != 0,
                    maxh2cdata: le32(h, 12),
                };
                if r.pfv != PFV_1_0 {
                    return Err(PduError::UnsupportedParameter {
                        offset: 8,
                        reason: "PDU format version",
                    });
                }
                if r.cpda > MAX_PDA {
                    return Err(bad(10, "CPDA above 31"));
                }
                if r.maxh2cdata < MIN_MAXH2CDATA || !r.maxh2cdata.is_multiple_of(4) {
                    return Err(bad(12, "MAXH2CDATA below 4096 or not a multiple of 4"));
                }
                Pdu::IcResp(r)
            }
            PduType::H2cTermReq | PduType::C2hTermReq => {
                let t = TermReq {
                    fes: le16(h, 8),
                    fei: le32(h, 10),
                };
                if layout.pdu_type == PduType::H2cTermReq {
                    Pdu::H2cTermReq(t)
                } else {
                    Pdu::C2hTermReq(t)
                }
            }
            PduType::CapsuleCmd => {
                let mut sqe = [0u8; SQE_SIZE];
                sqe.copy_from_slice(&h[8..8 + SQE_SIZE]);
                Pdu::CapsuleCmd(CapsuleCmd {
                    sqe: Command::decode(&sqe),
                })
            }
            PduType::CapsuleResp => {
                let mut cqe = [0u8; gyre_nvme::CQE_SIZE];
                cqe.copy_from_slice(&h[8..8 + gyre_nvme::CQE_SIZE]);
                Pdu::CapsuleResp(CapsuleResp {
                    cqe: Completion::decode(&cqe),
                })
            }
            PduType::H2cData => {
                let d = H2cData {
                    cccid: le16(h, 8),
                    ttag: le16(h, 10),
                    datao: le32(h, 12),
                    datal: le32(h, 16),
                    last: layout.flags & flags::LAST_PDU != 0,
                };
                if d.datal as usize != layout.data_len {
                    return Err(bad(16, "DATAL does not match the PDU data length"));
                }
                Pdu::H2cData(d)
            }
            PduType::C2hData => {
                let d = C2hData {
                    cccid: le16(h, 8),
                    datao: le32(h, 12),
                    datal: le32(h, 16),
                    last: layout.flags & flags::LAST_PDU != 0,
                    success: layout.flags & flags::SUCCESS != 0,
                };
                if d.datal as usize != layout.data_len {
                    return Err(bad(16, "DATAL does not match the PDU data length"));
                }
                Pdu::C2hData(d)
            }
            PduType::R2t => {
                let r = R2t {
                    cccid: le16(h, 8),
                    ttag: le16(h, 10),
                    r2to: le32(h, 12),
                    r2tl: le32(h, 16),
                };
                if r.r2tl == 0 {
                    return Err(bad(16, "R2TL is 0"));
                }
                Pdu::R2t(r)
            }
            PduType::KdReq | PduType::KdResp => {
                return Err(bad(0, "kickstart discovery PDUs are not supported"))
            }
        })
    }
}

/// The outcome of [`parse_header`] on the bytes staged so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderParse {
    /// At least this many bytes (from the start of the PDU) are needed.
    NeedMore(usize),
    /// The header is complete and valid; the data (if any) follows per the layout.
    Complete { layout: PduLayout, pdu: Pdu },
}

/// Validates and decodes the header at the start of `buf`, or says how many bytes it needs.
pub fn parse_header(buf: &[u8], rules: &PduRules) -> Result<HeaderParse, PduError> {
    let Some(ch) = buf.first_chunk::<COMMON_HEADER_LEN>() else {
        return Ok(HeaderParse::NeedMore(COMMON_HEADER_LEN));
    };
    let layout = CommonHeader::decode(ch).validate(rules)?;
    if buf.len() < layout.header_len {
        return Ok(HeaderParse::NeedMore(layout.header_len));
    }
    let pdu = Pdu::decode(&layout, buf)?;
    Ok(HeaderParse::Complete { layout, pdu })
}

/// Checks that `[offset, offset + len)` lies within a transfer of `total` bytes (an R2T or
/// C2HData against its command, an H2CData against its R2T).
pub fn check_data_range(offset: u32, len: u32, total: u64) -> Result<(), PduError> {
    match (offset as u64).checked_add(len as u64) {
        Some(end) if end <= total => Ok(()),
        _ => Err(PduError::out_of_range("data beyond the command's transfer")),
    }
}

// ---- Encoding ----

fn need_out(out: &[u8], needed: usize) -> Result<(), EncodeError> {
    if out.len() < needed {
        Err(EncodeError::BufferTooSmall {
            needed,
            got: out.len(),
        })
    } else {
        Ok(())
    }
}

fn put_common(out: &mut [u8], t: PduType, flags: u8, pdo: u8, plen: u32) {
    out[0] = t as u8;
    out[1] = flags;
    out[2] = t.hlen();
    out[3] = pdo;
    out[4..8].copy_from_slice(&plen.to_le_bytes());
}

/// Writes the header digest after the HLEN bytes when enabled; returns HLEN + digest.
fn put_hdgst(out: &mut [u8], hlen: usize, enabled: bool) -> usize {
    if enabled {
        let d = header_digest(&out[..hlen]);
        out[hlen..hlen + DIGEST_LEN].copy_from_slice(&d.to_le_bytes());
        hlen + DIGEST_LEN
    } else {
        hlen
    }
}

/// What a data-carrying PDU's encoder wrote and what the transport sends after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPduHeader {
    /// Bytes written to the buffer: header, header digest and padding (= PDO when the PDU
    /// carries data). Send these, then `data_len` data bytes, then the data digest.
    pub len: usize,
    pub plen: u32,
    pub data_len: u32,
    /// A 4-byte data digest (little-endian CRC32C of the data) follows the data.
    pub data_digest: bool,
}

/// Common part of CapsuleCmd / H2CData / C2HData encoding.
fn encode_data_pdu(
    out: &mut [u8],
    t: PduType,
    mut fl: u8,
    data_len: u32,
    rules: &PduRules,
    specific: impl FnOnce(&mut [u8]),
) -> Result<DataPduHeader, EncodeError> {
    let hlen = t.hlen() as usize;
    let header_end = hlen + rules.hdgst_len();
    let has_data = data_len > 0;
    let pdo = if has_data {
        header_end.next_multiple_of(rules.tx_alignment())
    } else {
        0
    };
    let ddgst = has_data && rules.data_digest;
    if rules.header_digest {
        fl |= flags::HDGSTF;
    }
    if ddgst {
        fl |= flags::DDGSTF;
    }
    let plen = if has_data {
        (pdo as u64) + data_len as u64 + if ddgst { DIGEST_LEN as u64 } else { 0 }
    } else {
        header_end as u64
    };
    let plen = u32::try_from(plen).map_err(|_| EncodeError::TooLong)?;
    let written = pdo.max(header_end);
    need_out(out, written)?;
    let pdo_byte = u8::try_from(pdo).map_err(|_| EncodeError::TooLong)?;
    out[..hlen].fill(0);
    put_common(out, t, fl, pdo_byte, plen);
    specific(&mut out[..hlen]);
    put_hdgst(out, hlen, rules.header_digest);
    out[header_end..written].fill(0);
    Ok(DataPduHeader {
        len: written,
        plen,
        data_len,
        data_digest: ddgst,
    })
}

fn dgst_byte(header: bool, data: bool) -> u8 {
    let mut v = 0;
    if header {
        v |= dgst::HDGST_ENABLE;
    }
    if data {
        v |= dgst::DDGST_ENABLE;
    }
    v
}

impl IcReq {
    /// Writes the 128-byte ICReq.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        need_out(out, IC_HLEN as usize)?;
        let b = &mut out[..IC_HLEN as usize];
        b.fill(0);
        put_common(b, PduType::IcReq, 0, 0, IC_HLEN as u32);
        b[8..10].copy_from_slice(&self.pfv.to_le_bytes());
        b[10] = self.hpda;
        b[11] = dgst_byte(self.header_digest, self.data_digest);
        b[12..16].copy_from_slice(&self.maxr2t.to_le_bytes());
        Ok(IC_HLEN as usize)
    }
}

impl IcResp {
    /// Writes the 128-byte ICResp.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        need_out(out, IC_HLEN as usize)?;
        let b = &mut out[..IC_HLEN as usize];
        b.fill(0);
        put_common(b, PduType::IcResp, 0, 0, IC_HLEN as u32);
        b[8..10].copy_from_slice(&self.pfv.to_le_bytes());
        b[10] = self.cpda;
        b[11] = dgst_byte(self.header_digest, self.data_digest);
        b[12..16].copy_from_slice(&self.maxh2cdata.to_le_bytes());
        Ok(IC_HLEN as usize)
    }
}

impl TermReq {
    pub fn new(fes: Fes, fei: u32) -> Self {
        TermReq {
            fes: fes as u16,
            fei,
        }
    }

    /// The TermReq for a protocol error (`None` for [`PduError::Incomplete`]).
    pub fn for_error(e: &PduError) -> Option<Self> {
        e.fes().map(|fes| TermReq::new(fes, e.fei()))
    }

    pub fn fes_kind(&self) -> Option<Fes> {
        Fes::from_u16(self.fes)
    }

    /// Writes a whole TermReq PDU sent by `from` (H2CTermReq from a host, C2HTermReq from a
    /// controller): the header and up to 128 bytes of `offending` (the header of the PDU in
    /// error). Returns the PDU length.
    pub fn encode(
        &self,
        from: Role,
        offending: &[u8],
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        let data = &offending[..offending.len().min(MAX_TERM_REQ_DATA)];
        let hlen = TERM_REQ_HLEN as usize;
        let plen = hlen + data.len();
        need_out(out, plen)?;
        let t = match from {
            Role::Host => PduType::H2cTermReq,
            Role::Controller => PduType::C2hTermReq,
        };
        out[..hlen].fill(0);
        put_common(out, t, 0, 0, plen as u32);
        out[8..10].copy_from_slice(&self.fes.to_le_bytes());
        out[10..14].copy_from_slice(&self.fei.to_le_bytes());
        out[hlen..plen].copy_from_slice(data);
        Ok(plen)
    }
}

impl CapsuleCmd {
    /// Writes the CapsuleCmd header for a command with `in_capsule_len` bytes of in-capsule
    /// data (0 for none).
    pub fn encode(
        &self,
        in_capsule_len: u32,
        rules: &PduRules,
        out: &mut [u8],
    ) -> Result<DataPduHeader, EncodeError> {
        let sqe = self.sqe.to_bytes();
        encode_data_pdu(out, PduType::CapsuleCmd, 0, in_capsule_len, rules, |b| {
            b[8..8 + SQE_SIZE].copy_from_slice(&sqe)
        })
    }
}

impl CapsuleResp {
    /// Writes the CapsuleResp (header and header digest).
    pub fn encode(&self, rules: &PduRules, out: &mut [u8]) -> Result<usize, EncodeError> {
        let hlen = CAPSULE_RESP_HLEN as usize;
        let len = hlen + rules.hdgst_len();
        need_out(out, len)?;
        let fl = if rules.header_digest {
            flags::HDGSTF
        } else {
            0
        };
        put_common(out, PduType::CapsuleResp, fl, 0, len as u32);
        out[8..24].copy_from_slice(&self.cqe.to_bytes());
        Ok(put_hdgst(out, hlen, rules.header_digest))
    }
}

impl H2cData {
    /// Writes the H2CData header for `datal` bytes of data.
    pub fn encode(&self, rules: &PduRules, out: &mut [u8]) -> Result<DataPduHeader, EncodeError> {
        let fl = if self.last { flags::LAST_PDU } else { 0 };
        encode_data_pdu(out, PduType::H2cData, fl, self.datal, rules, |b| {
            b[8..10].copy_from_slice(&self.cccid.to_le_bytes());
            b[10..12].copy_from_slice(&self.ttag.to_le_bytes());
            b[12..16].copy_from_slice(&self.datao.to_le_bytes());
            b[16..20].copy_from_slice(&self.datal.to_le_bytes());
        })
    }
}

impl C2hData {
    /// Writes the C2HData header for `datal` bytes of data. SUCCESS is only set together
    /// with LAST_PDU.
    pub fn encode(&self, rules: &PduRules, out: &mut [u8]) -> Result<DataPduHeader, EncodeError> {
        let mut fl = 0;
        if self.last {
            fl |= flags::LAST_PDU;
            if self.success {
                fl |= flags::SUCCESS;
            }
        }
        encode_data_pdu(out, PduType::C2hData, fl, self.datal, rules, |b| {
            b[8..10].copy_from_slice(&self.cccid.to_le_bytes());
            b[12..16].copy_from_slice(&self.datao.to_le_bytes());
            b[16..20].copy_from_slice(&self.datal.to_le_bytes());
        })
    }
}

impl R2t {
    /// Writes the R2T (header and header digest).
    pub fn encode(&self, rules: &PduRules, out: &mut [u8]) -> Result<usize, EncodeError> {
        let hlen = R2T_HLEN as usize;
        let len = hlen + rules.hdgst_len();
        need_out(out, len)?;
        out[..hlen].fill(0);
        let fl = if rules.header_digest {
            flags::HDGSTF
        } else {
            0
        };
        put_common(out, PduType::R2t, fl, 0, len as u32);
        out[8..10].copy_from_slice(&self.cccid.to_le_bytes());
        out[10..12].copy_from_slice(&self.ttag.to_le_bytes());
        out[12..16].copy_from_slice(&self.r2to.to_le_bytes());
        out[16..20].copy_from_slice(&self.r2tl.to_le_bytes());
        Ok(put_hdgst(out, hlen, rules.header_digest))
    }
}
