//! CDB decoding: bytes in, a typed [`Command`] or the [`Sense`] that rejects it out. Pure (no
//! I/O, no allocation), shared by `prepare`, execution and the fuzzers. Field checks come
//! first, then transfer-length limits, then the LBA range, as SBC-3 orders them.

use crate::sense::{Asc, Sense};

/// Operation codes this crate knows (SPC-4, SBC-3).
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const PREVENT_ALLOW: u8 = 0x1E;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
    pub const VERIFY_10: u8 = 0x2F;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    pub const READ_16: u8 = 0x88;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const WRITE_16: u8 = 0x8A;
    pub const ORWRITE_16: u8 = 0x8B;
    pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
    pub const VERIFY_16: u8 = 0x8F;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const MAINTENANCE_IN: u8 = 0xA3;
    pub const READ_12: u8 = 0xA8;
    pub const WRITE_12: u8 = 0xAA;
    pub const WRITE_AND_VERIFY_12: u8 = 0xAE;
    pub const VERIFY_12: u8 = 0xAF;

    /// SERVICE ACTION IN (16) service actions.
    pub const SAI_READ_CAPACITY_16: u8 = 0x10;
    pub const SAI_GET_LBA_STATUS: u8 = 0x12;
    /// MAINTENANCE IN service actions.
    pub const MI_REPORT_TARGET_PORT_GROUPS: u8 = 0x0A;
    pub const MI_REPORT_SUPPORTED_OPCODES: u8 = 0x0C;
    pub const MI_REPORT_SUPPORTED_TMFS: u8 = 0x0D;
}

/// The longest PERSISTENT RESERVE OUT parameter list accepted (a REGISTER AND MOVE with the
/// longest iSCSI TransportID fits easily).
pub const MAX_PR_OUT_PARAM_LEN: u32 = 4096;

/// A CDB of up to 32 bytes, inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Cdb {
    bytes: [u8; 32],
    len: u8,
}

impl Cdb {
    /// Copies `bytes` (1 to 32 of them; longer input is cut to 32, shorter CDBs are rejected
    /// by decoding).
    pub fn new(bytes: &[u8]) -> Cdb {
        let mut b = [0u8; 32];
        let n = bytes.len().min(32);
        b[..n].copy_from_slice(&bytes[..n]);
        Cdb {
            bytes: b,
            len: n as u8,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn opcode(&self) -> u8 {
        self.bytes[0]
    }

    /// Byte `i` (zero beyond the CDB).
    #[inline]
    pub fn b(&self, i: usize) -> u8 {
        self.bytes.get(i).copied().unwrap_or(0)
    }

    #[inline]
    pub fn be16(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.b(i), self.b(i + 1)])
    }

    #[inline]
    pub fn be24(&self, i: usize) -> u32 {
        u32::from_be_bytes([0, self.b(i), self.b(i + 1), self.b(i + 2)])
    }

    #[inline]
    pub fn be32(&self, i: usize) -> u32 {
        u32::from_be_bytes([self.b(i), self.b(i + 1), self.b(i + 2), self.b(i + 3)])
    }

    #[inline]
    pub fn be64(&self, i: usize) -> u64 {
        ((self.be32(i) as u64) << 32) | self.be32(i + 4) as u64
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for Cdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cdb({:02x?})", self.as_slice())
    }
}

/// The CDB length an opcode's group implies (SPC-4 4.2.5.1), or None for variable-length
/// and vendor-specific groups.
pub fn cdb_length(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// The device geometry and limits decoding checks against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub block_size: u32,
    pub num_blocks: u64,
    /// MAXIMUM TRANSFER LENGTH (blocks) for reads, writes, verifies.
    pub max_transfer_blocks: u32,
    /// MAXIMUM WRITE SAME LENGTH (blocks).
    pub max_write_same_blocks: u32,
    /// MAXIMUM COMPARE AND WRITE LENGTH (blocks, at most 255).
    pub max_compare_write_blocks: u8,
    /// Whether UNMAP and WRITE SAME with UNMAP are supported (logical block provisioning).
    pub unmap: bool,
}

/// Which way data moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDirection {
    None,
    /// Target to initiator (data-in).
    In,
    /// Initiator to target (data-out).
    Out,
}

/// What the transport needs before execution: direction and the exact byte count the
/// command transfers (to compute residuals and issue R2Ts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandInfo {
    pub direction: DataDirection,
    pub transfer_len: u64,
    /// The command must fail unless the initiator's expected data transfer length equals
    /// `transfer_len` exactly (COMPARE AND WRITE, SBC-3 5.2). The transport checks; the
    /// channel also refuses a data-out payload of any other size.
    pub exact: bool,
}

/// MODE SENSE / MODE SELECT page control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
    Saved,
}

/// A decoded command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    TestUnitReady,
    RequestSense {
        desc: bool,
        alloc: u32,
    },
    Inquiry {
        evpd: bool,
        page: u8,
        alloc: u32,
    },
    ReportLuns {
        select: u8,
        alloc: u32,
    },
    ReadCapacity10,
    ReadCapacity16 {
        alloc: u32,
    },
    Read {
        lba: u64,
        blocks: u32,
        fua: bool,
    },
    Write {
        lba: u64,
        blocks: u32,
        fua: bool,
    },
    WriteAndVerify {
        lba: u64,
        blocks: u32,
        bytchk: bool,
    },
    /// `bytchk`: 0 medium check only, 1 compare data-out, 3 compare one block against all.
    Verify {
        lba: u64,
        blocks: u32,
        bytchk: u8,
    },
    SynchronizeCache {
        lba: u64,
        blocks: u32,
    },
    PreFetch {
        lba: u64,
        blocks: u32,
    },
    /// `blocks == 0` means "to the end of the medium" (only when WSNZ is clear; we set it).
    WriteSame {
        lba: u64,
        blocks: u32,
        unmap: bool,
        ndob: bool,
    },
    Unmap {
        param_len: u32,
    },
    CompareAndWrite {
        lba: u64,
        blocks: u8,
        fua: bool,
    },
    OrWrite {
        lba: u64,
        blocks: u32,
        fua: bool,
    },
    GetLbaStatus {
        lba: u64,
        alloc: u32,
    },
    ModeSense {
        ten: bool,
        dbd: bool,
        llbaa: bool,
        pc: PageControl,
        page: u8,
        subpage: u8,
        alloc: u32,
    },
    ModeSelect {
        ten: bool,
        param_len: u32,
    },
    StartStopUnit,
    PreventAllow {
        prevent: bool,
    },
    ReportSupportedOpcodes {
        rctd: bool,
        options: u8,
        opcode: u8,
        service_action: u16,
        alloc: u32,
    },
    ReportSupportedTmfs {
        repd: bool,
        alloc: u32,
    },
    ReportTargetPortGroups {
        extended: bool,
        alloc: u32,
    },
    Reserve,
    Release,
    PersistentReserveIn {
        service_action: u8,
        alloc: u32,
    },
    PersistentReserveOut {
        service_action: u8,
        scope: u8,
        rtype: u8,
        param_len: u32,
    },
}

impl Command {
    /// Direction and exact byte count of the command's data transfer.
    pub fn info(&self, block_size: u32) -> CommandInfo {
        let bs = block_size as u64;
        let (direction, transfer_len) = match *self {
            Command::TestUnitReady
            | Command::SynchronizeCache { .. }
            | Command::PreFetch { .. }
            | Command::StartStopUnit
            | Command::PreventAllow { .. }
            | Command::Reserve
            | Command::Release => (DataDirection::None, 0),
            Command::RequestSense { alloc, .. }
            | Command::Inquiry { alloc, .. }
            | Command::ReportLuns { alloc, .. }
            | Command::ReadCapacity16 { alloc }
            | Command::GetLbaStatus { alloc, .. }
            | Command::ModeSense { alloc, .. }
            | Command::ReportSupportedOpcodes { alloc, .. }
            | Command::ReportSupportedTmfs { alloc, .. }
            | Command::ReportTargetPortGroups { alloc, .. }
            | Command::PersistentReserveIn { alloc, .. } => (DataDirection::In, alloc as u64),
            Command::ReadCapacity10 => (DataDirection::In, 8),
            Command::Read { blocks, .. } => (DataDirection::In, blocks as u64 * bs),
            Command::Write { blocks, .. }
            | Command::WriteAndVerify { blocks, .. }
            | Command::OrWrite { blocks, .. } => (DataDirection::Out, blocks as u64 * bs),
            Command::Verify { blocks, bytchk, .. } => match bytchk {
                0 => (DataDirection::None, 0),
                1 => (DataDirection::Out, blocks as u64 * bs),
                _ if blocks == 0 => (DataDirection::None, 0),
                _ => (DataDirection::Out, bs),
            },
            Command::WriteSame { ndob, .. } => {
                if ndob {
                    (DataDirection::None, 0)
                } else {
                    (DataDirection::Out, bs)
                }
            }
            Command::CompareAndWrite { blocks, .. } => (DataDirection::Out, 2 * blocks as u64 * bs),
            Command::Unmap { param_len }
            | Command::ModeSelect { param_len, .. }
            | Command::PersistentReserveOut { param_len, .. } => {
                (DataDirection::Out, param_len as u64)
            }
        };
        let direction = if transfer_len == 0 {
            DataDirection::None
        } else {
            direction
        };
        CommandInfo {
            direction,
            transfer_len,
            exact: matches!(self, Command::CompareAndWrite { .. }),
        }
    }

    /// Whether the command writes the medium (for write protection, reservations and the
    /// COMPARE AND WRITE range lock).
    pub fn writes_medium(&self) -> bool {
        matches!(
            self,
            Command::Write { .. }
                | Command::WriteAndVerify { .. }
                | Command::WriteSame { .. }
                | Command::Unmap { .. }
                | Command::CompareAndWrite { .. }
                | Command::OrWrite { .. }
        )
    }
}

fn invalid(byte: u16, bit: u8) -> Sense {
    Sense::invalid_cdb_field(byte, Some(bit))
}

/// Checks the CONTROL byte at `at`: NACA and the obsolete LINK bit are not supported.
fn check_control(cdb: &Cdb, at: usize) -> Result<(), Sense> {
    let c = cdb.b(at);
    if c & 0x04 != 0 {
        return Err(invalid(at as u16, 2));
    }
    if c & 0x01 != 0 {
        return Err(invalid(at as u16, 0));
    }
    Ok(())
}

/// LBA range check (SBC-3 4.5): `lba + blocks` must not pass the capacity; with zero blocks
/// the LBA itself may equal the capacity.
fn check_range(lba: u64, blocks: u64, lim: &Limits) -> Result<(), Sense> {
    match lba.checked_add(blocks) {
        Some(end) if end <= lim.num_blocks && lba <= lim.num_blocks => Ok(()),
        _ => Err(Sense::lba_out_of_range()),
    }
}

fn check_transfer(blocks: u32, len_byte: u16, lim: &Limits) -> Result<(), Sense> {
    if blocks > lim.max_transfer_blocks {
        return Err(Sense::invalid_cdb_field(len_byte, None));
    }
    Ok(())
}

/// The RDPROTECT/WRPROTECT/VRPROTECT field (byte 1, bits 7-5): we format without protection
/// information, so it must be zero.
fn check_protect(cdb: &Cdb) -> Result<(), Sense> {
    if cdb.b(1) & 0xE0 != 0 {
        return Err(invalid(1, 7));
    }
    Ok(())
}

/// Decodes `cdb` against `lim`.
pub fn decode(cdb: &Cdb, lim: &Limits) -> Result<Command, Sense> {
    let opc = cdb.opcode();
    let Some(need) = cdb_length(opc) else {
        return Err(Sense::invalid_opcode());
    };
    if cdb.len() < need {
        return Err(Sense::invalid_opcode());
    }
    let ctl = need - 1;
    match opc {
        op::TEST_UNIT_READY => {
            check_control(cdb, ctl)?;
            Ok(Command::TestUnitReady)
        }
        op::REQUEST_SENSE => {
            check_control(cdb, ctl)?;
            Ok(Command::RequestSense {
                desc: cdb.b(1) & 0x01 != 0,
                alloc: cdb.b(4) as u32,
            })
        }
        op::INQUIRY => {
            check_control(cdb, ctl)?;
            if cdb.b(1) & 0x02 != 0 {
                // CMDDT is obsolete.
                return Err(invalid(1, 1));
            }
            let evpd = cdb.b(1) & 0x01 != 0;
            let page = cdb.b(2);
            if !evpd && page != 0 {
                return Err(Sense::invalid_cdb_field(2, None));
            }
            Ok(Command::Inquiry {
                evpd,
                page,
                alloc: cdb.be16(3) as u32,
            })
        }
        op::REPORT_LUNS => {
            check_control(cdb, ctl)?;
            let select = cdb.b(2);
            if !matches!(select, 0x00..=0x02 | 0x10..=0x12) {
                return Err(Sense::invalid_cdb_field(2, None));
            }
            Ok(Command::ReportLuns {
                select,
                alloc: cdb.be32(6),
            })
        }
        op::READ_CAPACITY_10 => {
            check_control(cdb, ctl)?;
            let pmi = cdb.b(8) & 0x01 != 0;
            if !pmi && cdb.be32(2) != 0 {
                return Err(Sense::invalid_cdb_field(2, None));
            }
            Ok(Command::ReadCapacity10)
        }
        op::SERVICE_ACTION_IN_16 => {
            check_control(cdb, ctl)?;
            match cdb.b(1) & 0x1F {
                op::SAI_READ_CAPACITY_16 => {
                    let pmi = cdb.b(14) & 0x01 != 0;
                    if !pmi && cdb.be64(2) != 0 {
                        return Err(Sense::invalid_cdb_field(2, None));
                    }
                    Ok(Command::ReadCapacity16 {
                        alloc: cdb.be32(10),
                    })
                }
                op::SAI_GET_LBA_STATUS => {
                    let lba = cdb.be64(2);
                    if lba >= lim.num_blocks {
                        return Err(Sense::lba_out_of_range());
                    }
                    Ok(Command::GetLbaStatus {
                        lba,
                        alloc: cdb.be32(10),
                    })
                }
                _ => Err(invalid(1, 4)),
            }
        }
        op::READ_6 | op::WRITE_6 => {
            check_control(cdb, ctl)?;
            let lba = (cdb.be24(1) & 0x1F_FFFF) as u64;
            // A transfer length of 0 means 256 blocks (SBC-3 5.15).
            let blocks = match cdb.b(4) {
                0 => 256,
                n => n as u32,
            };
            check_transfer(blocks, 4, lim)?;
            check_range(lba, blocks as u64, lim)?;
            Ok(if opc == op::READ_6 {
                Command::Read {
                    lba,
                    blocks,
                    fua: false,
                }
            } else {
                Command::Write {
                    lba,
                    blocks,
                    fua: false,
                }
            })
        }
        op::READ_10 | op::READ_12 | op::READ_16 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => {
            check_control(cdb, ctl)?;
            check_protect(cdb)?;
            let (lba, blocks, len_at) = lba_len(cdb, opc);
            let fua = cdb.b(1) & 0x08 != 0;
            check_transfer(blocks, len_at, lim)?;
            check_range(lba, blocks as u64, lim)?;
            Ok(if matches!(opc, op::READ_10 | op::READ_12 | op::READ_16) {
                Command::Read { lba, blocks, fua }
            } else {
                Command::Write { lba, blocks, fua }
            })
        }
        op::WRITE_AND_VERIFY_10 | op::WRITE_AND_VERIFY_12 | op::WRITE_AND_VERIFY_16 => {
            check_control(cdb, ctl)?;
            check_protect(cdb)?;
            let (lba, blocks, len_at) = lba_len(cdb, opc);
            // BYTCHK is bits 2-1; only 00b and 01b are defined for WRITE AND VERIFY.
            let bytchk = (cdb.b(1) >> 1) & 0x03;
            if bytchk > 1 {
                return Err(invalid(1, 2));
            }
            check_transfer(blocks, len_at, lim)?;
            check_range(lba, blocks as u64, lim)?;
            Ok(Command::WriteAndVerify {
                lba,
                blocks,
                bytchk: bytchk == 1,
            })
        }
        op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16 => {
            check_control(cdb, ctl)?;
            check_protect(cdb)?;
            let (lba, blocks, len_at) = lba_len(cdb, opc);
            let bytchk = (cdb.b(1) >> 1) & 0x03;
            if bytchk == 2 {
                return Err(invalid(1, 2));
            }
            check_transfer(blocks, len_at, lim)?;
            check_range(lba, blocks as u64, lim)?;
            Ok(Command::Verify {
                lba,
                blocks,
                bytchk,
            })
        }
        op::SYNCHRONIZE_CACHE_10
        | op::SYNCHRONIZE_CACHE_16
        | op::PRE_FETCH_10
        | op::PRE_FETCH_16 => {
            check_control(cdb, ctl)?;
            let (lba, blocks) = if matches!(opc, op::SYNCHRONIZE_CACHE_10 | op::PRE_FETCH_10) {
                (cdb.be32(2) as u64, cdb.be16(7) as u32)
            } else {
                (cdb.be64(2), cdb.be32(10))
            };
            check_range(lba, blocks as u64, lim)?;
            Ok(if matches!(opc, op::PRE_FETCH_10 | op::PRE_FETCH_16) {
                Command::PreFetch { lba, blocks }
            } else {
                Command::SynchronizeCache { lba, blocks }
            })
        }
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => {
            check_control(cdb, ctl)?;
            check_protect(cdb)?;
            let b1 = cdb.b(1);
            let unmap = b1 & 0x08 != 0;
            let anchor = b1 & 0x10 != 0;
            let ndob = opc == op::WRITE_SAME_16 && b1 & 0x01 != 0;
            if opc == op::WRITE_SAME_10 && b1 & 0x06 != 0 {
                // PBDATA / LBDATA are obsolete.
                return Err(invalid(1, 2));
            }
            if opc == op::WRITE_SAME_16 && b1 & 0x06 != 0 {
                return Err(invalid(1, 2));
            }
            if anchor {
                // ANCHOR needs ANC_SUP, which we do not report.
                return Err(invalid(1, 4));
            }
            if unmap && !lim.unmap {
                return Err(invalid(1, 3));
            }
            let (lba, blocks, len_at) = if opc == op::WRITE_SAME_10 {
                (cdb.be32(2) as u64, cdb.be16(7) as u32, 7)
            } else {
                (cdb.be64(2), cdb.be32(10), 10)
            };
            // WSNZ is set in the block limits page: zero blocks is an invalid field.
            if blocks == 0 {
                check_range(lba, 0, lim)?;
                return Err(Sense::invalid_cdb_field(len_at, None));
            }
            if blocks > lim.max_write_same_blocks {
                return Err(Sense::invalid_cdb_field(len_at, None));
            }
            check_range(lba, blocks as u64, lim)?;
            Ok(Command::WriteSame {
                lba,
                blocks,
                unmap,
                ndob,
            })
        }
        op::UNMAP => {
            check_control(cdb, ctl)?;
            if !lim.unmap {
                return Err(Sense::invalid_opcode());
            }
            if cdb.b(1) & 0x01 != 0 {
                // ANCHOR
                return Err(invalid(1, 0));
            }
            Ok(Command::Unmap {
                param_len: cdb.be16(7) as u32,
            })
        }
        op::COMPARE_AND_WRITE => {
            check_control(cdb, ctl)?;
            check_protect(cdb)?;
            let lba = cdb.be64(2);
            let blocks = cdb.b(13);
            if blocks > lim.max_compare_write_blocks {
                return Err(Sense::invalid_cdb_field(13, None));
            }
            check_range(lba, blocks as u64, lim)?;
            Ok(Command::CompareAndWrite {
                lba,
                blocks,
                fua: cdb.b(1) & 0x08 != 0,
            })
        }
        op::ORWRITE_16 => {
            check_control(cdb, ctl)?;
            check_protect(cdb)?;
            let lba = cdb.be64(2);
            let blocks = cdb.be32(10);
            check_transfer(blocks, 10, lim)?;
            check_range(lba, blocks as u64, lim)?;
            Ok(Command::OrWrite {
                lba,
                blocks,
                fua: cdb.b(1) & 0x08 != 0,
            })
        }
        op::MODE_SENSE_6 | op::MODE_SENSE_10 => {
            check_control(cdb, ctl)?;
            let ten = opc == op::MODE_SENSE_10;
            let pc = match cdb.b(2) >> 6 {
                0 => PageControl::Current,
                1 => PageControl::Changeable,
                2 => PageControl::Default,
                _ => PageControl::Saved,
            };
            if pc == PageControl::Saved {
                return Err(Sense::illegal(Asc::SAVING_PARAMETERS_NOT_SUPPORTED));
            }
            Ok(Command::ModeSense {
                ten,
                dbd: cdb.b(1) & 0x08 != 0,
                llbaa: ten && cdb.b(1) & 0x10 != 0,
                pc,
                page: cdb.b(2) & 0x3F,
                subpage: cdb.b(3),
                alloc: if ten {
                    cdb.be16(7) as u32
                } else {
                    cdb.b(4) as u32
                },
            })
        }
        op::MODE_SELECT_6 | op::MODE_SELECT_10 => {
            check_control(cdb, ctl)?;
            let ten = opc == op::MODE_SELECT_10;
            if cdb.b(1) & 0x10 == 0 {
                // PF must be set: we only take SPC page format.
                return Err(invalid(1, 4));
            }
            if cdb.b(1) & 0x01 != 0 {
                // SP: nothing is saved.
                return Err(invalid(1, 0));
            }
            Ok(Command::ModeSelect {
                ten,
                param_len: if ten {
                    cdb.be16(7) as u32
                } else {
                    cdb.b(4) as u32
                },
            })
        }
        op::START_STOP_UNIT => {
            check_control(cdb, ctl)?;
            let b4 = cdb.b(4);
            if b4 & 0x02 != 0 {
                // LOEJ: the medium is not removable.
                return Err(invalid(4, 1));
            }
            Ok(Command::StartStopUnit)
        }
        op::PREVENT_ALLOW => {
            check_control(cdb, ctl)?;
            Ok(Command::PreventAllow {
                prevent: cdb.b(4) & 0x03 != 0,
            })
        }
        op::MAINTENANCE_IN => {
            check_control(cdb, ctl)?;
            match cdb.b(1) & 0x1F {
                op::MI_REPORT_SUPPORTED_OPCODES => {
                    let options = cdb.b(2) & 0x07;
                    if options > 3 {
                        return Err(invalid(2, 2));
                    }
                    Ok(Command::ReportSupportedOpcodes {
                        rctd: cdb.b(2) & 0x80 != 0,
                        options,
                        opcode: cdb.b(3),
                        service_action: cdb.be16(4),
                        alloc: cdb.be32(6),
                    })
                }
                op::MI_REPORT_SUPPORTED_TMFS => Ok(Command::ReportSupportedTmfs {
                    repd: cdb.b(2) & 0x80 != 0,
                    alloc: cdb.be32(6),
                }),
                op::MI_REPORT_TARGET_PORT_GROUPS => {
                    let format = cdb.b(1) >> 5;
                    if format > 1 {
                        return Err(invalid(1, 7));
                    }
                    Ok(Command::ReportTargetPortGroups {
                        extended: format == 1,
                        alloc: cdb.be32(6),
                    })
                }
                _ => Err(invalid(1, 4)),
            }
        }
        op::RESERVE_6 | op::RELEASE_6 => {
            check_control(cdb, ctl)?;
            if cdb.b(1) & 0x01 != 0 {
                // Extents are obsolete.
                return Err(invalid(1, 0));
            }
            Ok(if opc == op::RESERVE_6 {
                Command::Reserve
            } else {
                Command::Release
            })
        }
        op::RESERVE_10 | op::RELEASE_10 => {
            check_control(cdb, ctl)?;
            if cdb.b(1) & 0x10 != 0 {
                // Third-party reservations are not supported.
                return Err(invalid(1, 4));
            }
            if cdb.b(1) & 0x02 != 0 {
                // LONGID needs a third party.
                return Err(invalid(1, 1));
            }
            Ok(if opc == op::RESERVE_10 {
                Command::Reserve
            } else {
                Command::Release
            })
        }
        op::PERSISTENT_RESERVE_IN => {
            check_control(cdb, ctl)?;
            let sa = cdb.b(1) & 0x1F;
            if sa > 3 {
                return Err(invalid(1, 4));
            }
            Ok(Command::PersistentReserveIn {
                service_action: sa,
                alloc: cdb.be16(7) as u32,
            })
        }
        op::PERSISTENT_RESERVE_OUT => {
            check_control(cdb, ctl)?;
            let sa = cdb.b(1) & 0x1F;
            if sa > 7 {
                return Err(invalid(1, 4));
            }
            let param_len = cdb.be32(5);
            if param_len > MAX_PR_OUT_PARAM_LEN {
                return Err(Sense::param_list_length());
            }
            Ok(Command::PersistentReserveOut {
                service_action: sa,
                scope: cdb.b(2) >> 4,
                rtype: cdb.b(2) & 0x0F,
                param_len,
            })
        }
        _ => Err(Sense::invalid_opcode()),
    }
}

/// LBA, transfer length and the byte of the length field of a READ/WRITE/VERIFY 10/12/16.
fn lba_len(cdb: &Cdb, opc: u8) -> (u64, u32, u16) {
    match opc >> 5 {
        1 | 2 => (cdb.be32(2) as u64, cdb.be16(7) as u32, 7),
        5 => (cdb.be32(2) as u64, cdb.be32(6), 6),
        _ => (cdb.be64(2), cdb.be32(10), 10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits {
        block_size: 512,
        num_blocks: 1000,
        max_transfer_blocks: 256,
        max_write_same_blocks: 512,
        max_compare_write_blocks: 255,
        unmap: true,
    };

    fn dec(b: &[u8]) -> Result<Command, Sense> {
        let mut full = [0u8; 16];
        full[..b.len()].copy_from_slice(b);
        decode(&Cdb::new(&full), &LIM)
    }

    #[test]
    fn read10_fields_and_info() {
        let c = dec(&[0x28, 0x08, 0, 0, 0, 10, 0, 0, 4, 0]).unwrap();
        assert_eq!(
            c,
            Command::Read {
                lba: 10,
                blocks: 4,
                fua: true
            }
        );
        assert_eq!(
            c.info(512),
            CommandInfo {
                direction: DataDirection::In,
                transfer_len: 2048,
                exact: false
            }
        );
    }

    #[test]
    fn zero_blocks_at_capacity_is_fine_one_past_is_not() {
        assert!(dec(&[0x28, 0, 0, 0, 0x03, 0xE8, 0, 0, 0, 0]).is_ok());
        assert_eq!(
            dec(&[0x28, 0, 0, 0, 0x03, 0xE9, 0, 0, 0, 0]),
            Err(Sense::lba_out_of_range())
        );
        assert_eq!(
            dec(&[0x88, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 1, 0, 0]),
            Err(Sense::lba_out_of_range())
        );
    }

    #[test]
    fn read6_zero_means_256() {
        assert_eq!(
            dec(&[0x08, 0, 0, 0, 0, 0]).unwrap(),
            Command::Read {
                lba: 0,
                blocks: 256,
                fua: false
            }
        );
    }

    #[test]
    fn rdprotect_is_rejected_with_bit_pointer() {
        let s = dec(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap_err();
        assert_eq!(s, Sense::invalid_cdb_field(1, Some(7)));
    }

    #[test]
    fn naca_rejected() {
        assert_eq!(
            dec(&[0x00, 0, 0, 0, 0, 0x04]).unwrap_err(),
            Sense::invalid_cdb_field(5, Some(2))
        );
    }

    #[test]
    fn over_max_transfer_is_invalid_field() {
        assert_eq!(
            dec(&[0x28, 0, 0, 0, 0, 0, 0, 0x01, 0x01, 0]).unwrap_err(),
            Sense::invalid_cdb_field(7, None)
        );
    }

    #[test]
    fn write_same_zero_blocks_rejected_after_range_check() {
        assert_eq!(
            dec(&[0x41, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err(),
            Sense::invalid_cdb_field(7, None)
        );
        assert_eq!(
            dec(&[0x41, 0, 0, 0, 0x03, 0xE9, 0, 0, 0, 0]).unwrap_err(),
            Sense::lba_out_of_range()
        );
    }

    #[test]
    fn compare_and_write_transfers_twice_the_blocks() {
        let c = dec(&[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 2, 0, 0]).unwrap();
        assert_eq!(c.info(512).transfer_len, 2048);
        assert_eq!(c.info(512).direction, DataDirection::Out);
        assert!(c.info(512).exact);
    }

    #[test]
    fn inquiry_page_without_evpd_is_invalid() {
        assert_eq!(
            dec(&[0x12, 0, 0x80, 0, 0xFF, 0]).unwrap_err(),
            Sense::invalid_cdb_field(2, None)
        );
    }

    #[test]
    fn unknown_opcode() {
        assert_eq!(
            dec(&[0x04, 0, 0, 0, 0, 0]).unwrap_err(),
            Sense::invalid_opcode()
        );
        assert_eq!(
            dec(&[0xE0, 0, 0, 0, 0, 0]).unwrap_err(),
            Sense::invalid_opcode()
        );
    }
}
