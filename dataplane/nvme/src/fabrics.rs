//! NVMe over Fabrics commands (NVMe Base 2.x, "Fabrics Command Set"): Connect with its
//! 1024-byte data, Property Get/Set and Disconnect, and the NQN strings they carry.
//!
//! A fabrics command has opcode 7Fh and its command type (FCTYPE) in byte 4, which
//! [`Command`] keeps as the low byte of `nsid`. Command-specific fields start at byte 40
//! (CDW10).

use crate::command::{AdminOpcode, Command};
use crate::completion::Completion;
use crate::error::{DecodeError, NqnError};
use crate::sgl::SglDescriptor;
use crate::status::Status;
use crate::wire::{get_array, get_u16, need, need_out, put_bytes, put_u16};

/// Fabrics command types (byte 4 of a fabrics command).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FabricsType {
    PropertySet = 0x00,
    Connect = 0x01,
    PropertyGet = 0x04,
    AuthenticationSend = 0x05,
    AuthenticationReceive = 0x06,
    Disconnect = 0x08,
}

impl FabricsType {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x00 => FabricsType::PropertySet,
            0x01 => FabricsType::Connect,
            0x04 => FabricsType::PropertyGet,
            0x05 => FabricsType::AuthenticationSend,
            0x06 => FabricsType::AuthenticationReceive,
            0x08 => FabricsType::Disconnect,
            _ => return None,
        })
    }
}

/// A fabrics command of type `fctype` with everything else zero.
pub fn fabrics_command(fctype: FabricsType, cid: u16) -> Command {
    let mut c = Command::new(AdminOpcode::Fabrics as u8, cid);
    c.nsid = fctype as u32;
    c
}

fn expect_fabrics(c: &Command, fctype: FabricsType) -> Result<(), DecodeError> {
    if !c.is_fabrics() {
        return Err(DecodeError::WrongOpcode { opcode: c.opcode });
    }
    // Bytes 5..8 (the rest of the NSID dword) are reserved; only byte 4 selects the type.
    if c.nsid as u8 != fctype as u8 {
        return Err(DecodeError::InvalidField {
            field: "FCTYPE",
            offset: 4,
        });
    }
    Ok(())
}

/// Size of an NQN field in Connect data and Identify Controller.
pub const NQN_FIELD_LEN: usize = 256;
/// Longest NQN the specification allows, in bytes, without the terminating NUL.
pub const NQN_MAX_LEN: usize = 223;

/// An NVMe Qualified Name: UTF-8, 1..=223 bytes, stored inline (no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nqn {
    bytes: [u8; NQN_FIELD_LEN],
    len: u16,
}

impl std::fmt::Debug for Nqn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nqn({:?})", self.as_str())
    }
}

impl std::fmt::Display for Nqn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Nqn {
    /// The well-known NQN of discovery subsystems.
    pub const DISCOVERY: &'static str = "nqn.2014-08.org.nvmexpress.discovery";

    pub fn new(s: &str) -> Result<Self, NqnError> {
        if s.is_empty() {
            return Err(NqnError::Empty);
        }
        if s.len() > NQN_MAX_LEN {
            return Err(NqnError::TooLong);
        }
        if s.as_bytes().contains(&0) {
            return Err(NqnError::NotUtf8);
        }
        let mut bytes = [0u8; NQN_FIELD_LEN];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Nqn {
            bytes,
            len: s.len() as u16,
        })
    }

    /// Parses a NUL-terminated NQN field (bytes after the terminator are ignored).
    pub fn from_field(field: &[u8]) -> Result<Self, NqnError> {
        let len = field
            .iter()
            .take(NQN_FIELD_LEN)
            .position(|&b| b == 0)
            .ok_or(NqnError::Unterminated)?;
        let s = std::str::from_utf8(&field[..len]).map_err(|_| NqnError::NotUtf8)?;
        Nqn::new(s)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }

    /// The 256-byte field: the name, then NULs.
    pub fn to_field(&self) -> [u8; NQN_FIELD_LEN] {
        self.bytes
    }

    pub fn is_discovery(&self) -> bool {
        self.as_str() == Self::DISCOVERY
    }
}

/// Connect command fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectCommand {
    pub cid: u16,
    /// SGL1 describing the 1024-byte Connect data.
    pub dptr: SglDescriptor,
    /// Record Format (bytes 40..42); 0 is the only defined format.
    pub recfmt: u16,
    /// Queue ID (bytes 42..44): 0 = admin queue.
    pub qid: u16,
    /// Submission queue size, 0-based (bytes 44..46).
    pub sqsize: u16,
    /// Connect Attributes (byte 46); bit 2 disables SQ flow control.
    pub cattr: u8,
    /// Keep Alive Timeout in milliseconds (bytes 48..52); 0 disables the timer.
    pub kato: u32,
}

impl ConnectCommand {
    pub fn from_command(c: &Command) -> Result<Self, DecodeError> {
        expect_fabrics(c, FabricsType::Connect)?;
        Ok(ConnectCommand {
            cid: c.cid,
            dptr: c.dptr,
            recfmt: c.cdw10 as u16,
            qid: (c.cdw10 >> 16) as u16,
            sqsize: c.cdw11 as u16,
            cattr: (c.cdw11 >> 16) as u8,
            kato: c.cdw12,
        })
    }

    pub fn to_command(&self) -> Command {
        let mut c = fabrics_command(FabricsType::Connect, self.cid);
        c.dptr = self.dptr;
        c.cdw10 = (self.recfmt as u32) | ((self.qid as u32) << 16);
        c.cdw11 = (self.sqsize as u32) | ((self.cattr as u32) << 16);
        c.cdw12 = self.kato;
        c
    }

    /// Queue entries: SQSIZE + 1.
    pub fn queue_entries(&self) -> u32 {
        self.sqsize as u32 + 1
    }

    /// CATTR bit 2: the host disables SQ flow control (SQHD need not be reported).
    pub fn disable_sq_flow_control(&self) -> bool {
        self.cattr & 0x4 != 0
    }
}

/// The 1024-byte Connect command data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectData {
    /// Host Identifier (bytes 0..16).
    pub hostid: [u8; 16],
    /// Controller ID (bytes 16..18): FFFFh = dynamic, FFFEh = static any.
    pub cntlid: u16,
    /// NVM Subsystem NQN (bytes 256..512).
    pub subnqn: Nqn,
    /// Host NQN (bytes 512..768).
    pub hostnqn: Nqn,
}

impl ConnectData {
    pub const SIZE: usize = 1024;
    pub const SUBNQN_OFFSET: usize = 256;
    pub const HOSTNQN_OFFSET: usize = 512;
    /// Dynamic controller model: the target picks the controller ID.
    pub const CNTLID_DYNAMIC: u16 = 0xFFFF;

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        need(buf, Self::SIZE)?;
        let subnqn =
            Nqn::from_field(&buf[Self::SUBNQN_OFFSET..Self::HOSTNQN_OFFSET]).map_err(|reason| {
                DecodeError::InvalidNqn {
                    field: "SUBNQN",
                    offset: Self::SUBNQN_OFFSET,
                    reason,
                }
            })?;
        let hostnqn = Nqn::from_field(&buf[Self::HOSTNQN_OFFSET..768]).map_err(|reason| {
            DecodeError::InvalidNqn {
                field: "HOSTNQN",
                offset: Self::HOSTNQN_OFFSET,
                reason,
            }
        })?;
        Ok(ConnectData {
            hostid: get_array::<16>(buf, 0),
            cntlid: get_u16(buf, 16),
            subnqn,
            hostnqn,
        })
    }

    pub fn encode(&self, out: &mut [u8]) -> Result<usize, DecodeError> {
        need_out(out, Self::SIZE)?;
        let out = &mut out[..Self::SIZE];
        out.fill(0);
        put_bytes(out, 0, &self.hostid);
        put_u16(out, 16, self.cntlid);
        put_bytes(out, Self::SUBNQN_OFFSET, &self.subnqn.to_field());
        put_bytes(out, Self::HOSTNQN_OFFSET, &self.hostnqn.to_field());
        Ok(Self::SIZE)
    }
}

/// The outcome of a Connect as carried in its completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectResponse {
    /// Success: dword 0 bits 15:0 = controller ID, bits 31:16 = AUTHREQ.
    Success { cntlid: u16, authreq: u16 },
    /// Connect Invalid Parameters: dword 0 bits 15:0 = IPO (byte offset of the bad
    /// parameter), bit 16 (IATTR) = the parameter is in the Connect data rather than the SQE.
    InvalidParameters { in_data: bool, offset: u16 },
    /// Any other status.
    Failed(Status),
}

impl ConnectResponse {
    pub fn to_completion(&self, cid: u16) -> Completion {
        match *self {
            ConnectResponse::Success { cntlid, authreq } => Completion {
                cid,
                dw0: (cntlid as u32) | ((authreq as u32) << 16),
                ..Default::default()
            },
            ConnectResponse::InvalidParameters { in_data, offset } => Completion {
                cid,
                dw0: (offset as u32) | ((in_data as u32) << 16),
                status: Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
                ..Default::default()
            },
            ConnectResponse::Failed(status) => Completion::new(cid, status),
        }
    }

    pub fn from_completion(c: &Completion) -> Self {
        if c.status.is_success() {
            ConnectResponse::Success {
                cntlid: c.dw0 as u16,
                authreq: (c.dw0 >> 16) as u16,
            }
        } else if c.status.same_code(Status::CONNECT_INVALID_PARAMETERS) {
            ConnectResponse::InvalidParameters {
                in_data: (c.dw0 >> 16) & 1 != 0,
                offset: c.dw0 as u16,
            }
        } else {
            ConnectResponse::Failed(c.status)
        }
    }

    /// The response for a Connect whose data failed to decode with `err`.
    pub fn for_data_error(err: &DecodeError) -> Self {
        match err.offset() {
            Some(offset) => ConnectResponse::InvalidParameters {
                in_data: true,
                offset: offset as u16,
            },
            None => ConnectResponse::Failed(err.status()),
        }
    }
}

/// Property size (ATTRIB bits 2:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertySize {
    Four,
    Eight,
}

impl PropertySize {
    fn from_attrib(a: u32) -> Result<Self, DecodeError> {
        match a & 0x7 {
            0 => Ok(PropertySize::Four),
            1 => Ok(PropertySize::Eight),
            _ => Err(DecodeError::InvalidField {
                field: "ATTRIB",
                offset: 40,
            }),
        }
    }

    fn attrib(self) -> u32 {
        match self {
            PropertySize::Four => 0,
            PropertySize::Eight => 1,
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            PropertySize::Four => 4,
            PropertySize::Eight => 8,
        }
    }
}

/// Property Get: read a controller property. The value comes back in completion dwords 0..1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropertyGetCommand {
    pub cid: u16,
    pub size: PropertySize,
    /// Property offset (bytes 44..48).
    pub offset: u32,
}

impl PropertyGetCommand {
    pub fn from_command(c: &Command) -> Result<Self, DecodeError> {
        expect_fabrics(c, FabricsType::PropertyGet)?;
        Ok(PropertyGetCommand {
            cid: c.cid,
            size: PropertySize::from_attrib(c.cdw10)?,
            offset: c.cdw11,
        })
    }

    pub fn to_command(&self) -> Command {
        let mut c = fabrics_command(FabricsType::PropertyGet, self.cid);
        c.cdw10 = self.size.attrib();
        c.cdw11 = self.offset;
        c
    }

    /// A successful completion carrying `value`.
    pub fn completion(&self, value: u64) -> Completion {
        Completion {
            cid: self.cid,
            dw0: value as u32,
            dw1: (value >> 32) as u32,
            ..Default::default()
        }
    }
}

/// Property Set: write a controller property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropertySetCommand {
    pub cid: u16,
    pub size: PropertySize,
    pub offset: u32,
    /// Value (bytes 48..56; only the low 4 bytes for a 4-byte property).
    pub value: u64,
}

impl PropertySetCommand {
    pub fn from_command(c: &Command) -> Result<Self, DecodeError> {
        expect_fabrics(c, FabricsType::PropertySet)?;
        let size = PropertySize::from_attrib(c.cdw10)?;
        let value = match size {
            PropertySize::Four => c.cdw12 as u64,
            PropertySize::Eight => (c.cdw12 as u64) | ((c.cdw13 as u64) << 32),
        };
        Ok(PropertySetCommand {
            cid: c.cid,
            size,
            offset: c.cdw11,
            value,
        })
    }

    pub fn to_command(&self) -> Command {
        let mut c = fabrics_command(FabricsType::PropertySet, self.cid);
        c.cdw10 = self.size.attrib();
        c.cdw11 = self.offset;
        c.cdw12 = self.value as u32;
        if self.size == PropertySize::Eight {
            c.cdw13 = (self.value >> 32) as u32;
        }
        c
    }
}

/// Disconnect: delete the I/O queue the command arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisconnectCommand {
    pub cid: u16,
    /// Record Format (bytes 40..42).
    pub recfmt: u16,
}

impl DisconnectCommand {
    pub fn from_command(c: &Command) -> Result<Self, DecodeError> {
        expect_fabrics(c, FabricsType::Disconnect)?;
        Ok(DisconnectCommand {
            cid: c.cid,
            recfmt: c.cdw10 as u16,
        })
    }

    pub fn to_command(&self) -> Command {
        let mut c = fabrics_command(FabricsType::Disconnect, self.cid);
        c.cdw10 = self.recfmt as u32;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::SQE_SIZE;

    /// Connect for I/O queue 3 with 128 entries, KATO 0, as in the fabrics spec's layout.
    const CONNECT_SQE: [u8; SQE_SIZE] = [
        0x7F, // opcode: fabrics
        0x40, // byte 1 (PSDT as Linux sets it)
        0x05, 0x00, // CID 5
        0x01, // FCTYPE: Connect
        0, 0, 0, // reserved
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // reserved (bytes 8..24)
        0, 0, 0, 0, 0, 0, 0, 0, // SGL1 address (offset 0)
        0x00, 0x04, 0x00, 0x00, // SGL1 length 1024
        0, 0, 0, 0x01, // SGL1: data block, offset subtype
        0x00, 0x00, // RECFMT 0
        0x03, 0x00, // QID 3
        0x7F, 0x00, // SQSIZE 127 (0-based)
        0x00, // CATTR
        0x00, // reserved
        0x30, 0x75, 0x00, 0x00, // KATO 30000 ms
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // reserved
    ];

    #[test]
    fn connect_command_byte_exact() {
        let c = Command::decode(&CONNECT_SQE);
        let cc = ConnectCommand::from_command(&c).unwrap();
        assert_eq!(cc.cid, 5);
        assert_eq!(cc.qid, 3);
        assert_eq!(cc.sqsize, 127);
        assert_eq!(cc.queue_entries(), 128);
        assert_eq!(cc.kato, 30_000);
        assert_eq!(cc.dptr.length(), 1024);
        let mut back = cc.to_command();
        back.psdt = 1;
        assert_eq!(back.to_bytes(), CONNECT_SQE);
        // Wrong fabrics type.
        let mut wrong = c;
        wrong.nsid = 0x04;
        assert!(matches!(
            ConnectCommand::from_command(&wrong),
            Err(DecodeError::InvalidField { offset: 4, .. })
        ));
        let mut not_fabrics = c;
        not_fabrics.opcode = 0x06;
        assert!(matches!(
            ConnectCommand::from_command(&not_fabrics),
            Err(DecodeError::WrongOpcode { opcode: 0x06 })
        ));
    }

    fn connect_data_bytes() -> [u8; 1024] {
        let mut d = [0u8; 1024];
        d[0..16].copy_from_slice(&[
            0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE,
            0xFF, 0x00,
        ]);
        d[16] = 0xFF; // CNTLID FFFFh (dynamic)
        d[17] = 0xFF;
        let sub = b"nqn.2024-01.io.gyre:vol1";
        d[256..256 + sub.len()].copy_from_slice(sub);
        let host = b"nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";
        d[512..512 + host.len()].copy_from_slice(host);
        d
    }

    #[test]
    fn connect_data_round_trip() {
        let d = connect_data_bytes();
        let cd = ConnectData::decode(&d).unwrap();
        assert_eq!(cd.cntlid, ConnectData::CNTLID_DYNAMIC);
        assert_eq!(cd.hostid[0], 0x11);
        assert_eq!(cd.subnqn.as_str(), "nqn.2024-01.io.gyre:vol1");
        assert!(cd
            .hostnqn
            .as_str()
            .starts_with("nqn.2014-08.org.nvmexpress:uuid:"));
        let mut out = [0xAAu8; 1024];
        assert_eq!(cd.encode(&mut out).unwrap(), 1024);
        assert_eq!(out, d);
    }

    #[test]
    fn connect_data_rejects_bad_nqns() {
        let mut d = connect_data_bytes();
        d[256..512].fill(b'a'); // no NUL in SUBNQN
        let e = ConnectData::decode(&d).unwrap_err();
        assert_eq!(
            e,
            DecodeError::InvalidNqn {
                field: "SUBNQN",
                offset: 256,
                reason: NqnError::Unterminated
            }
        );
        assert_eq!(
            ConnectResponse::for_data_error(&e),
            ConnectResponse::InvalidParameters {
                in_data: true,
                offset: 256
            }
        );
        let mut d = connect_data_bytes();
        d[512..768].fill(0); // empty HOSTNQN
        assert!(matches!(
            ConnectData::decode(&d),
            Err(DecodeError::InvalidNqn {
                offset: 512,
                reason: NqnError::Empty,
                ..
            })
        ));
        let mut d = connect_data_bytes();
        d[256] = 0xFF; // not UTF-8
        assert!(matches!(
            ConnectData::decode(&d),
            Err(DecodeError::InvalidNqn {
                reason: NqnError::NotUtf8,
                ..
            })
        ));
        let mut d = connect_data_bytes();
        d[512..512 + 230].fill(b'x'); // 230 bytes, terminated, too long
        d[512 + 230..768].fill(0);
        assert!(matches!(
            ConnectData::decode(&d),
            Err(DecodeError::InvalidNqn {
                reason: NqnError::TooLong,
                ..
            })
        ));
        assert!(ConnectData::decode(&d[..1000]).is_err());
    }

    #[test]
    fn connect_response_dw0() {
        let ok = ConnectResponse::Success {
            cntlid: 0x0102,
            authreq: 0,
        }
        .to_completion(5);
        assert_eq!(ok.dw0, 0x0000_0102);
        assert_eq!(
            ConnectResponse::from_completion(&ok),
            ConnectResponse::Success {
                cntlid: 0x0102,
                authreq: 0
            }
        );
        let bad = ConnectResponse::InvalidParameters {
            in_data: true,
            offset: 512,
        }
        .to_completion(5);
        assert_eq!(bad.dw0, 0x0001_0200);
        assert_eq!(bad.status.sct, 1);
        assert_eq!(bad.status.sc, 0x82);
        assert!(matches!(
            ConnectResponse::from_completion(&bad),
            ConnectResponse::InvalidParameters {
                in_data: true,
                offset: 512
            }
        ));
    }

    #[test]
    fn property_get_set() {
        let mut c = fabrics_command(FabricsType::PropertyGet, 9);
        c.cdw10 = 1; // 8 bytes
        c.cdw11 = 0x00; // CAP
        let g = PropertyGetCommand::from_command(&c).unwrap();
        assert_eq!(g.size, PropertySize::Eight);
        assert_eq!(g.offset, 0);
        let cpl = g.completion(0x0000_0020_1E01_007F);
        assert_eq!((cpl.dw0, cpl.dw1), (0x1E01_007F, 0x20));
        assert_eq!(cpl.result_u64(), 0x0000_0020_1E01_007F);
        c.cdw10 = 2;
        assert!(matches!(
            PropertyGetCommand::from_command(&c),
            Err(DecodeError::InvalidField { offset: 40, .. })
        ));
        let s = PropertySetCommand {
            cid: 1,
            size: PropertySize::Four,
            offset: 0x14,
            value: 0x0046_0001,
        };
        let sc = s.to_command();
        let b = sc.to_bytes();
        assert_eq!(b[0], 0x7F);
        assert_eq!(b[4], 0x00);
        assert_eq!(b[40], 0x00);
        assert_eq!(&b[44..48], &[0x14, 0, 0, 0]);
        assert_eq!(&b[48..56], &[0x01, 0x00, 0x46, 0x00, 0, 0, 0, 0]);
        assert_eq!(PropertySetCommand::from_command(&sc).unwrap(), s);
        let d = DisconnectCommand { cid: 3, recfmt: 0 };
        let dc = d.to_command();
        assert_eq!(dc.to_bytes()[4], 0x08);
        assert_eq!(DisconnectCommand::from_command(&dc).unwrap(), d);
    }
}
