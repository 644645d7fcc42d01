//! The 64-byte submission queue entry and typed views of the commands a target serves.
//!
//! [`Command`] holds every field of the common command format; the typed views
//! ([`RwCommand`], [`DsmCommand`], [`IdentifyCommand`], [`GetLogPageCommand`], ...) read their
//! fields from command dwords 10..15 and write them back, so the same code builds commands on a
//! host and parses them on a target. Nothing here allocates.

use crate::error::DecodeError;
use crate::sgl::SglDescriptor;
use crate::wire::{get_array, get_u32, get_u64, need, need_out, put_u32, put_u64};

/// Size of a submission queue entry.
pub const SQE_SIZE: usize = 64;

/// Admin command opcodes (NVMe Base 2.x, "Opcodes for Admin Commands").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AdminOpcode {
    DeleteIoSq = 0x00,
    CreateIoSq = 0x01,
    GetLogPage = 0x02,
    DeleteIoCq = 0x04,
    CreateIoCq = 0x05,
    Identify = 0x06,
    Abort = 0x08,
    SetFeatures = 0x09,
    GetFeatures = 0x0A,
    AsyncEventRequest = 0x0C,
    NamespaceManagement = 0x0D,
    FirmwareCommit = 0x10,
    FirmwareImageDownload = 0x11,
    DeviceSelfTest = 0x14,
    NamespaceAttachment = 0x15,
    KeepAlive = 0x18,
    DirectiveSend = 0x19,
    DirectiveReceive = 0x1A,
    VirtualizationManagement = 0x1C,
    NvmeMiSend = 0x1D,
    NvmeMiReceive = 0x1E,
    CapacityManagement = 0x20,
    Lockdown = 0x24,
    DoorbellBufferConfig = 0x7C,
    Fabrics = 0x7F,
    FormatNvm = 0x80,
    SecuritySend = 0x81,
    SecurityReceive = 0x82,
    Sanitize = 0x84,
    GetLbaStatus = 0x86,
}

impl AdminOpcode {
    pub const fn from_u8(v: u8) -> Option<Self> {
        use AdminOpcode::*;
        Some(match v {
            0x00 => DeleteIoSq,
            0x01 => CreateIoSq,
            0x02 => GetLogPage,
            0x04 => DeleteIoCq,
            0x05 => CreateIoCq,
            0x06 => Identify,
            0x08 => Abort,
            0x09 => SetFeatures,
            0x0A => GetFeatures,
            0x0C => AsyncEventRequest,
            0x0D => NamespaceManagement,
            0x10 => FirmwareCommit,
            0x11 => FirmwareImageDownload,
            0x14 => DeviceSelfTest,
            0x15 => NamespaceAttachment,
            0x18 => KeepAlive,
            0x19 => DirectiveSend,
            0x1A => DirectiveReceive,
            0x1C => VirtualizationManagement,
            0x1D => NvmeMiSend,
            0x1E => NvmeMiReceive,
            0x20 => CapacityManagement,
            0x24 => Lockdown,
            0x7C => DoorbellBufferConfig,
            0x7F => Fabrics,
            0x80 => FormatNvm,
            0x81 => SecuritySend,
            0x82 => SecurityReceive,
            0x84 => Sanitize,
            0x86 => GetLbaStatus,
            _ => return None,
        })
    }
}

/// NVM command set I/O opcodes (NVM Command Set 1.x, "Opcodes for NVM Commands").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum IoOpcode {
    Flush = 0x00,
    Write = 0x01,
    Read = 0x02,
    WriteUncorrectable = 0x04,
    Compare = 0x05,
    WriteZeroes = 0x08,
    DatasetManagement = 0x09,
    Verify = 0x0C,
    ReservationRegister = 0x0D,
    ReservationReport = 0x0E,
    ReservationAcquire = 0x11,
    ReservationRelease = 0x15,
    Copy = 0x19,
    /// Fabrics commands may also arrive on I/O queues (Disconnect, authentication).
    Fabrics = 0x7F,
}

impl IoOpcode {
    pub const fn from_u8(v: u8) -> Option<Self> {
        use IoOpcode::*;
        Some(match v {
            0x00 => Flush,
            0x01 => Write,
            0x02 => Read,
            0x04 => WriteUncorrectable,
            0x05 => Compare,
            0x08 => WriteZeroes,
            0x09 => DatasetManagement,
            0x0C => Verify,
            0x0D => ReservationRegister,
            0x0E => ReservationReport,
            0x11 => ReservationAcquire,
            0x15 => ReservationRelease,
            0x19 => Copy,
            0x7F => Fabrics,
            _ => return None,
        })
    }
}

/// Data transfer direction encoded in opcode bits 1:0 (host-to-controller = 01b,
/// controller-to-host = 10b, bidirectional = 11b).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirection {
    None,
    HostToController,
    ControllerToHost,
    Bidirectional,
}

impl DataDirection {
    pub const fn of_opcode(opcode: u8) -> Self {
        match opcode & 0x3 {
            0 => DataDirection::None,
            1 => DataDirection::HostToController,
            2 => DataDirection::ControllerToHost,
            _ => DataDirection::Bidirectional,
        }
    }
}

/// Fused operation (CDW0 bits 9:8, byte 1 bits 1:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fuse {
    #[default]
    Normal,
    First,
    Second,
    Reserved,
}

impl Fuse {
    pub const fn from_bits(v: u8) -> Self {
        match v & 0x3 {
            0 => Fuse::Normal,
            1 => Fuse::First,
            2 => Fuse::Second,
            _ => Fuse::Reserved,
        }
    }

    pub const fn bits(self) -> u8 {
        match self {
            Fuse::Normal => 0,
            Fuse::First => 1,
            Fuse::Second => 2,
            Fuse::Reserved => 3,
        }
    }
}

/// PSDT value for "SGLs used, MPTR is the address of a contiguous buffer" — what NVMe over
/// Fabrics hosts set.
pub const PSDT_SGL_MPTR_CONTIGUOUS: u8 = 0x1;

/// A submission queue entry in the common command format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Command {
    pub opcode: u8,
    pub fuse: Fuse,
    /// PRP or SGL for Data Transfer (2 bits): 0 = PRPs, 1 = SGL with contiguous metadata,
    /// 2 = SGL with metadata SGL.
    pub psdt: u8,
    pub cid: u16,
    /// Namespace identifier; for fabrics commands its low byte is the fabrics command type.
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub mptr: u64,
    /// Data pointer (SGL1; on PCIe with PSDT = 0 these bytes are PRP1 and PRP2).
    pub dptr: SglDescriptor,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
}

impl Command {
    /// A command with the given opcode and identifier and everything else zero.
    pub fn new(opcode: u8, cid: u16) -> Self {
        Command {
            opcode,
            cid,
            ..Default::default()
        }
    }

    pub fn decode(b: &[u8; SQE_SIZE]) -> Self {
        Command {
            opcode: b[0],
            fuse: Fuse::from_bits(b[1]),
            psdt: b[1] >> 6,
            cid: u16::from_le_bytes([b[2], b[3]]),
            nsid: get_u32(b, 4),
            cdw2: get_u32(b, 8),
            cdw3: get_u32(b, 12),
            mptr: get_u64(b, 16),
            dptr: SglDescriptor::from_bytes(get_array::<16>(b, 24)),
            cdw10: get_u32(b, 40),
            cdw11: get_u32(b, 44),
            cdw12: get_u32(b, 48),
            cdw13: get_u32(b, 52),
            cdw14: get_u32(b, 56),
            cdw15: get_u32(b, 60),
        }
    }

    /// Decodes the first 64 bytes of `buf`.
    pub fn decode_slice(buf: &[u8]) -> Result<Self, DecodeError> {
        need(buf, SQE_SIZE)?;
        Ok(Self::decode(&get_array::<SQE_SIZE>(buf, 0)))
    }

    pub fn encode(&self, b: &mut [u8; SQE_SIZE]) {
        b[0] = self.opcode;
        b[1] = self.fuse.bits() | ((self.psdt & 0x3) << 6);
        b[2..4].copy_from_slice(&self.cid.to_le_bytes());
        put_u32(b, 4, self.nsid);
        put_u32(b, 8, self.cdw2);
        put_u32(b, 12, self.cdw3);
        put_u64(b, 16, self.mptr);
        b[24..40].copy_from_slice(self.dptr.as_bytes());
        put_u32(b, 40, self.cdw10);
        put_u32(b, 44, self.cdw11);
        put_u32(b, 48, self.cdw12);
        put_u32(b, 52, self.cdw13);
        put_u32(b, 56, self.cdw14);
        put_u32(b, 60, self.cdw15);
    }

    /// Encodes into the first 64 bytes of `out`.
    pub fn encode_slice(&self, out: &mut [u8]) -> Result<usize, DecodeError> {
        need_out(out, SQE_SIZE)?;
        let mut b = [0u8; SQE_SIZE];
        self.encode(&mut b);
        out[..SQE_SIZE].copy_from_slice(&b);
        Ok(SQE_SIZE)
    }

    pub fn to_bytes(&self) -> [u8; SQE_SIZE] {
        let mut b = [0u8; SQE_SIZE];
        self.encode(&mut b);
        b
    }

    pub fn is_fabrics(&self) -> bool {
        self.opcode == AdminOpcode::Fabrics as u8
    }

    /// The fabrics command type (byte 4) of a fabrics command.
    pub fn fctype(&self) -> Option<u8> {
        self.is_fabrics().then_some(self.nsid as u8)
    }

    /// The data direction implied by the opcode (for a fabrics command, by the command type).
    pub fn data_direction(&self) -> DataDirection {
        match self.fctype() {
            Some(t) => DataDirection::of_opcode(t),
            None => DataDirection::of_opcode(self.opcode),
        }
    }
}

/// Read, Write, Compare and Verify fields (NVM Command Set: CDW10..15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RwCommand {
    pub nsid: u32,
    /// Starting LBA (CDW10..11).
    pub slba: u64,
    /// Number of logical blocks (1..=65536); the wire field NLB is this minus one.
    pub nlb: u32,
    /// Limited Retry (CDW12 bit 31).
    pub lr: bool,
    /// Force Unit Access (CDW12 bit 30).
    pub fua: bool,
    /// Protection Information field (CDW12 bits 29:26).
    pub prinfo: u8,
    /// Storage Tag Check (CDW12 bit 24; read and verify) / bit 24 of writes.
    pub stc: bool,
    /// Directive Type (CDW12 bits 23:20; writes).
    pub dtype: u8,
    /// Dataset Management hints (CDW13 bits 7:0).
    pub dsm: u8,
    /// Directive Specific (CDW13 bits 31:16; writes).
    pub dspec: u16,
    /// Expected initial logical block reference tag (CDW14).
    pub reftag: u32,
    /// Logical block application tag (CDW15 bits 15:0).
    pub apptag: u16,
    /// Logical block application tag mask (CDW15 bits 31:16).
    pub appmask: u16,
}

impl RwCommand {
    pub fn from_command(c: &Command) -> Self {
        RwCommand {
            nsid: c.nsid,
            slba: (c.cdw10 as u64) | ((c.cdw11 as u64) << 32),
            nlb: (c.cdw12 & 0xFFFF) + 1,
            lr: c.cdw12 & (1 << 31) != 0,
            fua: c.cdw12 & (1 << 30) != 0,
            prinfo: ((c.cdw12 >> 26) & 0xF) as u8,
            stc: c.cdw12 & (1 << 24) != 0,
            dtype: ((c.cdw12 >> 20) & 0xF) as u8,
            dsm: c.cdw13 as u8,
            dspec: (c.cdw13 >> 16) as u16,
            reftag: c.cdw14,
            apptag: c.cdw15 as u16,
            appmask: (c.cdw15 >> 16) as u16,
        }
    }

    /// Writes these fields into `c` (NSID and CDW10..15). `nlb` must be 1..=65536.
    pub fn apply(&self, c: &mut Command) -> Result<(), DecodeError> {
        if self.nlb == 0 || self.nlb > 0x1_0000 {
            return Err(DecodeError::InvalidField {
                field: "NLB",
                offset: 48,
            });
        }
        c.nsid = self.nsid;
        c.cdw10 = self.slba as u32;
        c.cdw11 = (self.slba >> 32) as u32;
        c.cdw12 = (self.nlb - 1)
            | ((self.lr as u32) << 31)
            | ((self.fua as u32) << 30)
            | (((self.prinfo & 0xF) as u32) << 26)
            | ((self.stc as u32) << 24)
            | (((self.dtype & 0xF) as u32) << 20);
        c.cdw13 = (self.dsm as u32) | ((self.dspec as u32) << 16);
        c.cdw14 = self.reftag;
        c.cdw15 = (self.apptag as u32) | ((self.appmask as u32) << 16);
        Ok(())
    }

    /// A complete command: opcode, identifier, data pointer and these fields.
    pub fn to_command(
        &self,
        opcode: IoOpcode,
        cid: u16,
        dptr: SglDescriptor,
    ) -> Result<Command, DecodeError> {
        let mut c = Command::new(opcode as u8, cid);
        c.psdt = PSDT_SGL_MPTR_CONTIGUOUS;
        c.dptr = dptr;
        self.apply(&mut c)?;
        Ok(c)
    }

    /// One past the last LBA, or `None` on overflow.
    pub fn end_lba(&self) -> Option<u64> {
        self.slba.checked_add(self.nlb as u64)
    }
}

/// Write Zeroes fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteZeroesCommand {
    pub nsid: u32,
    pub slba: u64,
    /// Number of logical blocks (1..=65536).
    pub nlb: u32,
    pub lr: bool,
    pub fua: bool,
    pub prinfo: u8,
    /// Deallocate (CDW12 bit 25).
    pub deac: bool,
}

impl WriteZeroesCommand {
    pub fn from_command(c: &Command) -> Self {
        WriteZeroesCommand {
            nsid: c.nsid,
            slba: (c.cdw10 as u64) | ((c.cdw11 as u64) << 32),
            nlb: (c.cdw12 & 0xFFFF) + 1,
            lr: c.cdw12 & (1 << 31) != 0,
            fua: c.cdw12 & (1 << 30) != 0,
            prinfo: ((c.cdw12 >> 26) & 0xF) as u8,
            deac: c.cdw12 & (1 << 25) != 0,
        }
    }

    pub fn to_command(&self, cid: u16) -> Result<Command, DecodeError> {
        if self.nlb == 0 || self.nlb > 0x1_0000 {
            return Err(DecodeError::InvalidField {
                field: "NLB",
                offset: 48,
            });
        }
        let mut c = Command::new(IoOpcode::WriteZeroes as u8, cid);
        c.psdt = PSDT_SGL_MPTR_CONTIGUOUS;
        c.nsid = self.nsid;
        c.cdw10 = self.slba as u32;
        c.cdw11 = (self.slba >> 32) as u32;
        c.cdw12 = (self.nlb - 1)
            | ((self.lr as u32) << 31)
            | ((self.fua as u32) << 30)
            | (((self.prinfo & 0xF) as u32) << 26)
            | ((self.deac as u32) << 25);
        Ok(c)
    }
}

/// Dataset Management fields: number of ranges and the attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DsmCommand {
    pub nsid: u32,
    /// Number of ranges (1..=256); the wire field NR is this minus one.
    pub ranges: u16,
    /// Integral Dataset for Read (CDW11 bit 0).
    pub idr: bool,
    /// Integral Dataset for Write (CDW11 bit 1).
    pub idw: bool,
    /// Deallocate (CDW11 bit 2).
    pub ad: bool,
}

impl DsmCommand {
    pub fn from_command(c: &Command) -> Self {
        DsmCommand {
            nsid: c.nsid,
            ranges: (c.cdw10 & 0xFF) as u16 + 1,
            idr: c.cdw11 & 1 != 0,
            idw: c.cdw11 & 2 != 0,
            ad: c.cdw11 & 4 != 0,
        }
    }

    /// Bytes of range data the command carries (16 per range).
    pub fn data_len(&self) -> usize {
        self.ranges as usize * DsmRange::SIZE
    }

    pub fn to_command(&self, cid: u16, dptr: SglDescriptor) -> Result<Command, DecodeError> {
        if self.ranges == 0 || self.ranges > 256 {
            return Err(DecodeError::InvalidField {
                field: "NR",
                offset: 40,
            });
        }
        let mut c = Command::new(IoOpcode::DatasetManagement as u8, cid);
        c.psdt = PSDT_SGL_MPTR_CONTIGUOUS;
        c.nsid = self.nsid;
        c.dptr = dptr;
        c.cdw10 = (self.ranges - 1) as u32;
        c.cdw11 = (self.idr as u32) | ((self.idw as u32) << 1) | ((self.ad as u32) << 2);
        Ok(c)
    }
}

/// One Dataset Management range (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DsmRange {
    /// Context attributes (bytes 0..4).
    pub context_attributes: u32,
    /// Length in logical blocks (bytes 4..8; not 0-based).
    pub nlb: u32,
    /// Starting LBA (bytes 8..16).
    pub slba: u64,
}

impl DsmRange {
    pub const SIZE: usize = 16;

    pub fn decode(b: &[u8; 16]) -> Self {
        DsmRange {
            context_attributes: get_u32(b, 0),
            nlb: get_u32(b, 4),
            slba: get_u64(b, 8),
        }
    }

    pub fn encode(&self, b: &mut [u8; 16]) {
        put_u32(b, 0, self.context_attributes);
        put_u32(b, 4, self.nlb);
        put_u64(b, 8, self.slba);
    }

    /// The `count` ranges at the start of `buf`.
    pub fn decode_list(
        buf: &[u8],
        count: usize,
    ) -> Result<impl Iterator<Item = DsmRange> + '_, DecodeError> {
        need(buf, count.saturating_mul(Self::SIZE))?;
        Ok(buf
            .chunks_exact(Self::SIZE)
            .take(count)
            .map(|c| DsmRange::decode(&get_array::<16>(c, 0))))
    }
}

/// Identify command fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdentifyCommand {
    pub nsid: u32,
    /// Controller or Namespace Structure (CDW10 bits 7:0).
    pub cns: u8,
    /// Controller Identifier (CDW10 bits 31:16).
    pub cntid: u16,
    /// CNS Specific Identifier (CDW11 bits 15:0).
    pub cnssid: u16,
    /// Command Set Identifier (CDW11 bits 31:24).
    pub csi: u8,
    /// UUID index (CDW14 bits 6:0).
    pub uuid_index: u8,
}

impl IdentifyCommand {
    pub fn from_command(c: &Command) -> Self {
        IdentifyCommand {
            nsid: c.nsid,
            cns: c.cdw10 as u8,
            cntid: (c.cdw10 >> 16) as u16,
            cnssid: c.cdw11 as u16,
            csi: (c.cdw11 >> 24) as u8,
            uuid_index: (c.cdw14 & 0x7F) as u8,
        }
    }

    pub fn to_command(&self, cid: u16, dptr: SglDescriptor) -> Command {
        let mut c = Command::new(AdminOpcode::Identify as u8, cid);
        c.psdt = PSDT_SGL_MPTR_CONTIGUOUS;
        c.nsid = self.nsid;
        c.dptr = dptr;
        c.cdw10 = (self.cns as u32) | ((self.cntid as u32) << 16);
        c.cdw11 = (self.cnssid as u32) | ((self.csi as u32) << 24);
        c.cdw14 = (self.uuid_index & 0x7F) as u32;
        c
    }
}

/// Get Log Page command fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GetLogPageCommand {
    pub nsid: u32,
    /// Log Page Identifier (CDW10 bits 7:0).
    pub lid: u8,
    /// Log Specific Parameter (CDW10 bits 14:8).
    pub lsp: u8,
    /// Retain Asynchronous Event (CDW10 bit 15).
    pub rae: bool,
    /// Number of dwords, 0-based (NUMDU:NUMDL, CDW11 bits 15:0 and CDW10 bits 31:16).
    pub numd: u32,
    /// Log Specific Identifier (CDW11 bits 31:16).
    pub lsi: u16,
    /// Log Page Offset in bytes (LPOU:LPOL, CDW13:CDW12), or an index when `ot` is set.
    pub lpo: u64,
    /// UUID index (CDW14 bits 6:0).
    pub uuid_index: u8,
    /// Offset Type (CDW14 bit 23): the offset is an index of entries, not bytes.
    pub ot: bool,
    /// Command Set Identifier (CDW14 bits 31:24).
    pub csi: u8,
}

impl GetLogPageCommand {
    pub fn from_command(c: &Command) -> Self {
        GetLogPageCommand {
            nsid: c.nsid,
            lid: c.cdw10 as u8,
            lsp: ((c.cdw10 >> 8) & 0x7F) as u8,
            rae: c.cdw10 & (1 << 15) != 0,
            numd: (c.cdw10 >> 16) | ((c.cdw11 & 0xFFFF) << 16),
            lsi: (c.cdw11 >> 16) as u16,
            lpo: (c.cdw12 as u64) | ((c.cdw13 as u64) << 32),
            uuid_index: (c.cdw14 & 0x7F) as u8,
            ot: c.cdw14 & (1 << 23) != 0,
            csi: (c.cdw14 >> 24) as u8,
        }
    }

    /// Transfer length in bytes: (NUMD + 1) * 4.
    pub fn length(&self) -> u64 {
        (self.numd as u64 + 1) * 4
    }

    /// The byte window `(offset, length)` of the log page to return. Fails (Invalid Field, at
    /// CDW12) when the offset is an index (OT set) or not dword aligned.
    pub fn window(&self) -> Result<(u64, u64), DecodeError> {
        if self.ot {
            return Err(DecodeError::InvalidField {
                field: "OT",
                offset: 56,
            });
        }
        if !self.lpo.is_multiple_of(4) {
            return Err(DecodeError::InvalidField {
                field: "LPOL",
                offset: 48,
            });
        }
        Ok((self.lpo, self.length()))
    }

    /// A command reading `len` bytes (a positive multiple of 4) at `offset`.
    pub fn for_window(lid: u8, nsid: u32, offset: u64, len: u32) -> Result<Self, DecodeError> {
        if len == 0 || !len.is_multiple_of(4) {
            return Err(DecodeError::InvalidField {
                field: "NUMD",
                offset: 42,
            });
        }
        Ok(GetLogPageCommand {
            nsid,
            lid,
            numd: len / 4 - 1,
            lpo: offset,
            ..Default::default()
        })
    }

    pub fn to_command(&self, cid: u16, dptr: SglDescriptor) -> Command {
        let mut c = Command::new(AdminOpcode::GetLogPage as u8, cid);
        c.psdt = PSDT_SGL_MPTR_CONTIGUOUS;
        c.nsid = self.nsid;
        c.dptr = dptr;
        c.cdw10 = (self.lid as u32)
            | (((self.lsp & 0x7F) as u32) << 8)
            | ((self.rae as u32) << 15)
            | ((self.numd & 0xFFFF) << 16);
        c.cdw11 = (self.numd >> 16) | ((self.lsi as u32) << 16);
        c.cdw12 = self.lpo as u32;
        c.cdw13 = (self.lpo >> 32) as u32;
        c.cdw14 = ((self.uuid_index & 0x7F) as u32)
            | ((self.ot as u32) << 23)
            | ((self.csi as u32) << 24);
        c
    }
}

/// Abort command fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AbortCommand {
    /// Submission Queue Identifier (CDW10 bits 15:0).
    pub sqid: u16,
    /// Command Identifier to abort (CDW10 bits 31:16).
    pub cid: u16,
}

impl AbortCommand {
    pub fn from_command(c: &Command) -> Self {
        AbortCommand {
            sqid: c.cdw10 as u16,
            cid: (c.cdw10 >> 16) as u16,
        }
    }

    pub fn to_command(&self, cid: u16) -> Command {
        let mut c = Command::new(AdminOpcode::Abort as u8, cid);
        c.cdw10 = (self.sqid as u32) | ((self.cid as u32) << 16);
        c
    }

    /// Completion dword 0: bit 0 clear = the command was aborted, set = it was not.
    pub fn completion_dw0(aborted: bool) -> u32 {
        (!aborted) as u32
    }
}

/// A Keep Alive command (no fields).
pub fn keep_alive_command(cid: u16) -> Command {
    Command::new(AdminOpcode::KeepAlive as u8, cid)
}

/// An Asynchronous Event Request command (no fields).
pub fn async_event_request_command(cid: u16) -> Command {
    Command::new(AdminOpcode::AsyncEventRequest as u8, cid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Read of 8 blocks at LBA 0x1_0000_0010 on NSID 1, CID 0x1234, as a Linux NVMe/TCP host
    /// sends it (SGL transport data block, PSDT 01b).
    const READ_SQE: [u8; 64] = [
        0x02, // opcode: Read
        0x40, // FUSE 00b, PSDT 01b (bits 7:6)
        0x34, 0x12, // CID
        0x01, 0x00, 0x00, 0x00, // NSID 1
        0, 0, 0, 0, 0, 0, 0, 0, // CDW2, CDW3
        0, 0, 0, 0, 0, 0, 0, 0, // MPTR
        0, 0, 0, 0, 0, 0, 0, 0, // SGL1 address
        0x00, 0x10, 0x00, 0x00, // SGL1 length 4096
        0, 0, 0, 0x5A, // reserved, SGL identifier: transport data block / 0xA
        0x10, 0x00, 0x00, 0x00, // CDW10: SLBA low
        0x01, 0x00, 0x00, 0x00, // CDW11: SLBA high
        0x07, 0x00, 0x00, 0x40, // CDW12: NLB 7 (8 blocks), FUA (bit 30)
        0x00, 0x00, 0x00, 0x00, // CDW13
        0x00, 0x00, 0x00, 0x00, // CDW14
        0x00, 0x00, 0x00, 0x00, // CDW15
    ];

    #[test]
    fn read_sqe_decodes_and_encodes_byte_exact() {
        let c = Command::decode(&READ_SQE);
        assert_eq!(c.opcode, IoOpcode::Read as u8);
        assert_eq!(c.psdt, 1);
        assert_eq!(c.fuse, Fuse::Normal);
        assert_eq!(c.cid, 0x1234);
        assert_eq!(c.nsid, 1);
        assert_eq!(c.dptr.kind(), crate::SglKind::TransportDataBlock);
        assert_eq!(c.dptr.length(), 4096);
        let rw = RwCommand::from_command(&c);
        assert_eq!(rw.slba, 0x1_0000_0010);
        assert_eq!(rw.nlb, 8);
        assert!(rw.fua);
        assert!(!rw.lr);
        assert_eq!(rw.end_lba(), Some(0x1_0000_0018));
        assert_eq!(c.to_bytes(), READ_SQE);
        let built = rw
            .to_command(
                IoOpcode::Read,
                0x1234,
                SglDescriptor::transport_data_block(4096),
            )
            .unwrap();
        assert_eq!(built.to_bytes(), READ_SQE);
        assert_eq!(c.data_direction(), DataDirection::ControllerToHost);
    }

    #[test]
    fn nlb_bounds() {
        let rw = RwCommand {
            nlb: 0,
            ..Default::default()
        };
        assert!(rw
            .to_command(IoOpcode::Write, 1, SglDescriptor::default())
            .is_err());
        let rw = RwCommand {
            nlb: 0x1_0000,
            ..Default::default()
        };
        let c = rw
            .to_command(IoOpcode::Write, 1, SglDescriptor::default())
            .unwrap();
        assert_eq!(c.cdw12 & 0xFFFF, 0xFFFF);
        assert_eq!(RwCommand::from_command(&c).nlb, 0x1_0000);
    }

    #[test]
    fn dsm_and_ranges() {
        let mut c = Command::new(IoOpcode::DatasetManagement as u8, 7);
        c.cdw10 = 0x02; // 3 ranges
        c.cdw11 = 0x04; // AD
        let d = DsmCommand::from_command(&c);
        assert_eq!(d.ranges, 3);
        assert!(d.ad && !d.idr && !d.idw);
        assert_eq!(d.data_len(), 48);
        let range: [u8; 16] = [
            0x00, 0x00, 0x00, 0x00, // context attributes
            0x00, 0x01, 0x00, 0x00, // 256 blocks
            0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // SLBA 0x2000
        ];
        let r = DsmRange::decode(&range);
        assert_eq!((r.nlb, r.slba), (256, 0x2000));
        let mut out = [0u8; 16];
        r.encode(&mut out);
        assert_eq!(out, range);
        let mut buf = [0u8; 40];
        buf[..16].copy_from_slice(&range);
        assert!(DsmRange::decode_list(&buf, 3).is_err());
        assert_eq!(DsmRange::decode_list(&buf, 2).unwrap().count(), 2);
    }

    #[test]
    fn get_log_page_fields() {
        // LID 0x0C (ANA), LSP 1 (RGO), RAE, NUMDL 0xFFFF, NUMDU 1, LSI 0, LPO 0x1000.
        let mut c = Command::new(AdminOpcode::GetLogPage as u8, 1);
        c.cdw10 = 0x0C | (1 << 8) | (1 << 15) | (0xFFFF << 16);
        c.cdw11 = 0x0001;
        c.cdw12 = 0x1000;
        let g = GetLogPageCommand::from_command(&c);
        assert_eq!(g.lid, 0x0C);
        assert_eq!(g.lsp, 1);
        assert!(g.rae);
        assert_eq!(g.numd, 0x1_FFFF);
        assert_eq!(g.window().unwrap(), (0x1000, 0x2_0000 * 4));
        let back = g.to_command(1, SglDescriptor::default());
        assert_eq!(
            (back.cdw10, back.cdw11, back.cdw12),
            (c.cdw10, c.cdw11, c.cdw12)
        );
        let mut odd = g;
        odd.lpo = 2;
        assert!(odd.window().is_err());
        let w = GetLogPageCommand::for_window(0x70, 0, 1024, 3072).unwrap();
        assert_eq!(w.window().unwrap(), (1024, 3072));
    }

    #[test]
    fn identify_and_abort() {
        let id = IdentifyCommand {
            nsid: 0,
            cns: 0x01,
            cntid: 5,
            cnssid: 0,
            csi: 0,
            uuid_index: 0,
        };
        let c = id.to_command(9, SglDescriptor::default());
        assert_eq!(c.cdw10, 0x0005_0001);
        assert_eq!(IdentifyCommand::from_command(&c), id);
        let a = AbortCommand { sqid: 2, cid: 0x77 };
        let c = a.to_command(3);
        assert_eq!(c.cdw10, 0x0077_0002);
        assert_eq!(AbortCommand::from_command(&c), a);
        assert_eq!(AbortCommand::completion_dw0(false), 1);
    }

    #[test]
    fn opcodes_round_trip() {
        for v in 0..=255u8 {
            if let Some(o) = AdminOpcode::from_u8(v) {
                assert_eq!(o as u8, v);
            }
            if let Some(o) = IoOpcode::from_u8(v) {
                assert_eq!(o as u8, v);
            }
        }
        assert_eq!(
            AdminOpcode::from_u8(0x7C),
            Some(AdminOpcode::DoorbellBufferConfig)
        );
        assert_eq!(IoOpcode::from_u8(0x19), Some(IoOpcode::Copy));
        assert_eq!(IoOpcode::from_u8(0x03), None);
    }
}
