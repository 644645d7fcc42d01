//! Data-in builders for the commands the LUN answers itself (INQUIRY and its VPD pages, READ
//! CAPACITY, MODE SENSE, REPORT LUNS, REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT
//! FUNCTIONS, REPORT TARGET PORT GROUPS, GET LBA STATUS) and the MODE SELECT and UNMAP
//! parameter-list parsers. Each writes the full response into a reused `Vec`; the channel
//! copies at most the allocation length into a pool buffer (SPC-4 4.2.5.6 truncation).

use crate::cdb::{op, Limits, PageControl};
use crate::lun::{AluaState, PortGroup, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS};
use crate::sense::Sense;

/// Vendor identification in INQUIRY (8 characters, space padded).
pub const VENDOR: &[u8; 8] = b"GYRE    ";

fn padded(out: &mut Vec<u8>, s: &str, n: usize) {
    let b = s.as_bytes();
    for i in 0..n {
        out.push(b.get(i).copied().unwrap_or(b' '));
    }
}

/// What INQUIRY needs to know about the LUN and the asking nexus.
#[derive(Debug, Clone, Copy)]
pub struct InquiryCtx<'a> {
    pub product: &'a str,
    pub revision: &'a str,
    pub serial: &'a str,
    pub naa: &'a [u8; 16],
    pub protocol_id: u8,
    /// Relative target port and its group of the asking nexus.
    pub rtpi: Option<u16>,
    pub tpg: Option<u16>,
    pub limits: Limits,
}

/// Standard INQUIRY data (SPC-4 6.6.2), 74 bytes.
pub fn inquiry_standard(c: &InquiryCtx<'_>, out: &mut Vec<u8>) {
    out.clear();
    // Direct access block device, not removable, SPC-4, HISUP, response format 2.
    out.extend_from_slice(&[0x00, 0x00, 0x06, 0x12, 0x00]);
    // TPGS = 01b (implicit ALUA); CMDQUE.
    out.extend_from_slice(&[0x10, 0x00, 0x02]);
    out.extend_from_slice(VENDOR);
    padded(out, c.product, 16);
    padded(out, c.revision, 4);
    out.resize(58, 0);
    let mut versions: [u16; 4] = [0x00A0, 0x0460, 0x04C0, 0];
    if c.protocol_id == 5 {
        versions[3] = 0x0960;
    }
    for v in versions {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.resize(74, 0);
    out[4] = (out.len() - 5) as u8;
}

/// VPD pages we serve, in order.
pub const VPD_PAGES: [u8; 7] = [0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2];

/// A VPD page (SPC-4 7.8, SBC-3 6.5).
pub fn inquiry_vpd(c: &InquiryCtx<'_>, page: u8, out: &mut Vec<u8>) -> Result<(), Sense> {
    out.clear();
    out.extend_from_slice(&[0x00, page, 0, 0]);
    let lim = &c.limits;
    match page {
        0x00 => out.extend_from_slice(&VPD_PAGES),
        0x80 => out.extend_from_slice(c.serial.as_bytes()),
        0x83 => {
            // NAA IEEE Registered Extended, logical unit.
            out.extend_from_slice(&[0x01, 0x03, 0x00, 16]);
            out.extend_from_slice(c.naa);
            // T10 vendor id: vendor + serial.
            out.extend_from_slice(&[0x02, 0x01, 0x00, (8 + c.serial.len()) as u8]);
            out.extend_from_slice(VENDOR);
            out.extend_from_slice(c.serial.as_bytes());
            let proto = (c.protocol_id & 0x0F) << 4;
            if let Some(rtpi) = c.rtpi {
                // Relative target port (PIV, target port association).
                out.extend_from_slice(&[proto | 0x01, 0x94, 0x00, 4, 0, 0]);
                out.extend_from_slice(&rtpi.to_be_bytes());
            }
            if let Some(tpg) = c.tpg {
                out.extend_from_slice(&[proto | 0x01, 0x95, 0x00, 4, 0, 0]);
                out.extend_from_slice(&tpg.to_be_bytes());
            }
        }
        0x86 => {
            // Extended INQUIRY data: SIMPSUP, LUICLR.
            out.extend_from_slice(&[0x00, 0x01, 0x00, 0x01]);
            out.resize(64, 0);
        }
        0xB0 => {
            let bs = lim.block_size;
            out.push(0x01); // WSNZ
            out.push(lim.max_compare_write_blocks);
            out.extend_from_slice(&((4096 / bs).max(1) as u16).to_be_bytes());
            out.extend_from_slice(&lim.max_transfer_blocks.to_be_bytes());
            out.extend_from_slice(
                &((128 << 10) / bs)
                    .min(lim.max_transfer_blocks)
                    .to_be_bytes(),
            );
            out.extend_from_slice(&0u32.to_be_bytes()); // max prefetch
            let (ulba, udesc) = if lim.unmap {
                (MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS)
            } else {
                (0, 0)
            };
            out.extend_from_slice(&ulba.to_be_bytes());
            out.extend_from_slice(&udesc.to_be_bytes());
            out.extend_from_slice(&1u32.to_be_bytes()); // optimal unmap granularity
            out.extend_from_slice(&0u32.to_be_bytes()); // UGAVALID = 0
            out.extend_from_slice(&(lim.max_write_same_blocks as u64).to_be_bytes());
            out.resize(64, 0);
        }
        0xB1 => {
            // Non-rotating medium.
            out.extend_from_slice(&[0x00, 0x01, 0x00, 0x00]);
            out.resize(64, 0);
        }
        0xB2 => {
            let (flags, ptype) = if lim.unmap {
                (0x80 | 0x40 | 0x20 | 0x04, 0x02)
            } else {
                (0, 0)
            };
            out.extend_from_slice(&[0x00, flags, ptype, 0x00]);
        }
        _ => return Err(Sense::invalid_cdb_field(2, None)),
    }
    let len = (out.len() - 4) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

pub fn read_capacity10(lim: &Limits, out: &mut Vec<u8>) {
    out.clear();
    let last = lim.num_blocks.saturating_sub(1);
    let last = u32::try_from(last).unwrap_or(u32::MAX);
    out.extend_from_slice(&last.to_be_bytes());
    out.extend_from_slice(&lim.block_size.to_be_bytes());
}

pub fn read_capacity16(lim: &Limits, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&lim.num_blocks.saturating_sub(1).to_be_bytes());
    out.extend_from_slice(&lim.block_size.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    // LBPME and LBPRZ when we can deallocate (deallocated blocks read as zeroes).
    out.push(if lim.unmap { 0xC0 } else { 0 });
    out.push(0);
    out.resize(32, 0);
}

/// GET LBA STATUS (SBC-3 5.6): one descriptor, everything from `lba` on is mapped.
pub fn get_lba_status(lba: u64, lim: &Limits, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&20u32.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lba.to_be_bytes());
    let n = u32::try_from(lim.num_blocks.saturating_sub(lba)).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
}

/// Encodes a LUN number into the 8-byte SAM-5 format: peripheral device addressing below
/// 256, flat space addressing below 16384, the value itself (assumed already encoded) above.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    if lun < 256 {
        [0, lun as u8, 0, 0, 0, 0, 0, 0]
    } else if lun < 16384 {
        [0x40 | (lun >> 8) as u8, lun as u8, 0, 0, 0, 0, 0, 0]
    } else {
        lun.to_be_bytes()
    }
}

/// REPORT LUNS parameter data (SPC-4 6.33) for `luns` under SELECT REPORT `select`. For
/// transports that answer REPORT LUNS addressed to a LUN that does not exist.
pub fn report_luns(select: u8, luns: &[u64], out: &mut Vec<u8>) {
    out.clear();
    // We have no well-known or administrative logical units.
    let listed: &[u64] = if matches!(select, 0x01 | 0x10) {
        &[]
    } else {
        luns
    };
    out.extend_from_slice(&((listed.len() * 8) as u32).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    for &l in listed {
        out.extend_from_slice(&encode_lun(l));
    }
}

/// Mode parameter values the device server lets initiators change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeValues {
    pub wce: bool,
    pub d_sense: bool,
}

/// Static inputs of MODE SENSE / SELECT.
#[derive(Debug, Clone, Copy)]
pub struct ModeCtx {
    pub current: ModeValues,
    pub default: ModeValues,
    /// WCE may change only if the bdev has a volatile cache.
    pub wce_changeable: bool,
    pub write_protected: bool,
    pub limits: Limits,
}

const MODE_PAGES: [u8; 5] = [0x01, 0x02, 0x08, 0x0A, 0x1C];

fn mode_page(page: u8, pc: PageControl, c: &ModeCtx, out: &mut Vec<u8>) {
    let v = match pc {
        PageControl::Default => c.default,
        _ => c.current,
    };
    let changeable = pc == PageControl::Changeable;
    let start = out.len();
    match page {
        0x01 => {
            out.extend_from_slice(&[0x01, 0x0A]);
            out.resize(start + 12, 0);
        }
        0x02 => {
            out.extend_from_slice(&[0x02, 0x0E]);
            out.resize(start + 16, 0);
        }
        0x08 => {
            out.extend_from_slice(&[0x08, 0x12]);
            let wce = if changeable { c.wce_changeable } else { v.wce };
            out.push(if wce { 0x04 } else { 0 });
            out.resize(start + 20, 0);
        }
        0x0A => {
            out.extend_from_slice(&[0x0A, 0x0A]);
            if changeable {
                out.push(0x04);
                out.resize(start + 12, 0);
            } else {
                out.push(if v.d_sense { 0x04 } else { 0 });
                // Unrestricted reordering, QERR 00b; TAS 0.
                out.extend_from_slice(&[0x10, 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00]);
            }
        }
        _ => {
            out.extend_from_slice(&[0x1C, 0x0A]);
            out.resize(start + 12, 0);
        }
    }
}

/// MODE SENSE (6) / (10) parameter data (SPC-4 6.11, 6.12, 7.5).
#[allow(clippy::too_many_arguments)]
pub fn mode_sense(
    ten: bool,
    dbd: bool,
    llbaa: bool,
    pc: PageControl,
    page: u8,
    subpage: u8,
    c: &ModeCtx,
    out: &mut Vec<u8>,
) -> Result<(), Sense> {
    out.clear();
    if page != 0x3F && !MODE_PAGES.contains(&page) {
        return Err(Sense::invalid_cdb_field(2, Some(5)));
    }
    if subpage != 0 && subpage != 0xFF {
        return Err(Sense::invalid_cdb_field(3, None));
    }
    let hdr = if ten { 8 } else { 4 };
    out.resize(hdr, 0);
    let devspec = 0x10 | if c.write_protected { 0x80 } else { 0 };
    let lim = &c.limits;
    if !dbd {
        if llbaa {
            out.extend_from_slice(&lim.num_blocks.to_be_bytes());
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&lim.block_size.to_be_bytes());
        } else {
            let n = u32::try_from(lim.num_blocks).unwrap_or(u32::MAX);
            out.extend_from_slice(&n.to_be_bytes());
            out.push(0);
            out.extend_from_slice(&lim.block_size.to_be_bytes()[1..]);
        }
    }
    let bdl = out.len() - hdr;
    if page == 0x3F {
        for p in MODE_PAGES {
            mode_page(p, pc, c, out);
        }
    } else {
        mode_page(page, pc, c, out);
    }
    if ten {
        let len = (out.len() - 2) as u16;
        out[0..2].copy_from_slice(&len.to_be_bytes());
        out[3] = devspec;
        out[4] = if llbaa && !dbd { 0x01 } else { 0 };
        out[6..8].copy_from_slice(&(bdl as u16).to_be_bytes());
    } else {
        out[0] = (out.len() - 1).min(255) as u8;
        out[2] = devspec;
        out[3] = bdl as u8;
    }
    Ok(())
}

/// Parses a MODE SELECT parameter list (SPC-4 7.5) and returns the new values. Every bit
/// that is not changeable must keep its current value.
pub fn parse_mode_select(
    ten: bool,
    param_len: u32,
    data: &[u8],
    c: &ModeCtx,
) -> Result<ModeValues, Sense> {
    let mut v = c.current;
    if param_len == 0 {
        return Ok(v);
    }
    let hdr = if ten { 8 } else { 4 };
    let len = param_len as usize;
    if len < hdr || data.len() < len {
        return Err(Sense::param_list_length());
    }
    let data = &data[..len];
    let (medium, bdl, long) = if ten {
        (
            data[2],
            u16::from_be_bytes([data[6], data[7]]) as usize,
            data[4] & 1 != 0,
        )
    } else {
        (data[1], data[3] as usize, false)
    };
    if medium != 0 {
        return Err(Sense::invalid_param_field(if ten { 2 } else { 1 }, None));
    }
    let bd_size = if long { 16 } else { 8 };
    if bdl != 0 && bdl != bd_size {
        return Err(Sense::invalid_param_field(if ten { 6 } else { 3 }, None));
    }
    if hdr + bdl > len {
        return Err(Sense::param_list_length());
    }
    if bdl != 0 {
        let bd = &data[hdr..hdr + bdl];
        let bl = if long {
            u32::from_be_bytes([bd[12], bd[13], bd[14], bd[15]])
        } else {
            u32::from_be_bytes([0, bd[5], bd[6], bd[7]])
        };
        if bl != c.limits.block_size {
            return Err(Sense::invalid_param_field((hdr + bdl - 3) as u16, None));
        }
    }
    let mut at = hdr + bdl;
    let mut cur = Vec::with_capacity(20);
    let mut chg = Vec::with_capacity(20);
    while at < len {
        if len - at < 2 {
            return Err(Sense::param_list_length());
        }
        let code = data[at] & 0x3F;
        if data[at] & 0x40 != 0 {
            // Subpage format: we have no subpages.
            return Err(Sense::invalid_param_field(at as u16, Some(6)));
        }
        if !MODE_PAGES.contains(&code) {
            return Err(Sense::invalid_param_field(at as u16, Some(5)));
        }
        cur.clear();
        chg.clear();
        let ctx_now = ModeCtx { current: v, ..*c };
        mode_page(code, PageControl::Current, &ctx_now, &mut cur);
        mode_page(code, PageControl::Changeable, &ctx_now, &mut chg);
        let plen = data[at + 1] as usize;
        if plen + 2 != cur.len() {
            return Err(Sense::invalid_param_field((at + 1) as u16, None));
        }
        if at + 2 + plen > len {
            return Err(Sense::param_list_length());
        }
        let page = &data[at..at + 2 + plen];
        for i in 2..page.len() {
            if (page[i] ^ cur[i]) & !chg[i] != 0 {
                let diff = (page[i] ^ cur[i]) & !chg[i];
                let bit = 7 - diff.leading_zeros() as u8;
                return Err(Sense::invalid_param_field((at + i) as u16, Some(bit)));
            }
        }
        match code {
            0x08 => v.wce = page[2] & 0x04 != 0,
            0x0A => v.d_sense = page[2] & 0x04 != 0,
            _ => {}
        }
        at += 2 + plen;
    }
    Ok(v)
}

/// One UNMAP block descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnmapDescriptor {
    pub lba: u64,
    pub blocks: u32,
}

/// Checks an UNMAP parameter list (SBC-3 5.28.2) completely: lengths, descriptor count,
/// total blocks, and every range. Returns the number of descriptors; read them with
/// [`unmap_descriptor`].
pub fn parse_unmap(param_len: u32, data: &[u8], lim: &Limits) -> Result<usize, Sense> {
    let len = param_len as usize;
    if len == 0 {
        return Ok(0);
    }
    if len < 8 || data.len() < len {
        return Err(Sense::param_list_length());
    }
    let data_len = u16::from_be_bytes([data[0], data[1]]) as usize;
    let bd_len = u16::from_be_bytes([data[2], data[3]]) as usize;
    if data_len + 2 > len {
        return Err(Sense::param_list_length());
    }
    if bd_len + 8 > len {
        return Err(Sense::param_list_length());
    }
    if !bd_len.is_multiple_of(16) {
        return Err(Sense::param_list_length());
    }
    let n = bd_len / 16;
    if n > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::invalid_param_field(2, None));
    }
    let mut total: u64 = 0;
    for i in 0..n {
        let d = unmap_descriptor(data, i).ok_or_else(Sense::param_list_length)?;
        match d.lba.checked_add(d.blocks as u64) {
            Some(end) if end <= lim.num_blocks => {}
            _ => return Err(Sense::lba_out_of_range()),
        }
        total += d.blocks as u64;
        if d.blocks > MAX_UNMAP_BLOCKS || total > MAX_UNMAP_BLOCKS as u64 * n as u64 {
            return Err(Sense::invalid_param_field((8 + i * 16 + 8) as u16, None));
        }
    }
    Ok(n)
}

/// Descriptor `i` of an UNMAP parameter list, if present.
pub fn unmap_descriptor(data: &[u8], i: usize) -> Option<UnmapDescriptor> {
    let at = 8 + i * 16;
    let d = data.get(at..at + 16)?;
    let mut lba = [0u8; 8];
    lba.copy_from_slice(&d[0..8]);
    Some(UnmapDescriptor {
        lba: u64::from_be_bytes(lba),
        blocks: u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
    })
}

struct OpcodeEntry {
    op: u8,
    sa: Option<u8>,
    usage: &'static [u8],
}

const RW10: [u8; 10] = [0, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x07];
const RW12: [u8; 12] = [
    0, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0x07,
];
const RW16: [u8; 16] = [
    0, 0xFA, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0x07,
];

macro_rules! with_op {
    ($base:expr, $op:expr, $b1:expr) => {{
        let mut u = $base;
        u[0] = $op;
        u[1] = $b1;
        u
    }};
}

const READ10_U: [u8; 10] = with_op!(RW10, op::READ_10, 0xFA);
const WRITE10_U: [u8; 10] = with_op!(RW10, op::WRITE_10, 0xFA);
const WV10_U: [u8; 10] = with_op!(RW10, op::WRITE_AND_VERIFY_10, 0xF2);
const VERIFY10_U: [u8; 10] = with_op!(RW10, op::VERIFY_10, 0xF6);
const PREFETCH10_U: [u8; 10] = with_op!(RW10, op::PRE_FETCH_10, 0x02);
const SYNC10_U: [u8; 10] = with_op!(RW10, op::SYNCHRONIZE_CACHE_10, 0x02);
const WS10_U: [u8; 10] = with_op!(RW10, op::WRITE_SAME_10, 0xF8);
const READ12_U: [u8; 12] = with_op!(RW12, op::READ_12, 0xFA);
const WRITE12_U: [u8; 12] = with_op!(RW12, op::WRITE_12, 0xFA);
const WV12_U: [u8; 12] = with_op!(RW12, op::WRITE_AND_VERIFY_12, 0xF2);
const VERIFY12_U: [u8; 12] = with_op!(RW12, op::VERIFY_12, 0xF6);
const READ16_U: [u8; 16] = with_op!(RW16, op::READ_16, 0xFA);
const WRITE16_U: [u8; 16] = with_op!(RW16, op::WRITE_16, 0xFA);
const ORWRITE_U: [u8; 16] = with_op!(RW16, op::ORWRITE_16, 0xF8);
const WV16_U: [u8; 16] = with_op!(RW16, op::WRITE_AND_VERIFY_16, 0xF2);
const VERIFY16_U: [u8; 16] = with_op!(RW16, op::VERIFY_16, 0xF6);
const PREFETCH16_U: [u8; 16] = with_op!(RW16, op::PRE_FETCH_16, 0x02);
const SYNC16_U: [u8; 16] = with_op!(RW16, op::SYNCHRONIZE_CACHE_16, 0x02);
const WS16_U: [u8; 16] = with_op!(RW16, op::WRITE_SAME_16, 0xF9);
const CAW_U: [u8; 16] = [
    op::COMPARE_AND_WRITE,
    0xF8,
    0xFF,
    0xFF,
    0xFF,
    0xFF,
    0xFF,
    0xFF,
    0xFF,
    0xFF,
    0,
    0,
    0,
    0xFF,
    0x1F,
    0x07,
];
const RC16_U: [u8; 16] = [
    0x9E, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x07,
];
const GLS_U: [u8; 16] = [
    0x9E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x07,
];

const OPCODES: &[OpcodeEntry] = &[
    OpcodeEntry {
        op: op::TEST_UNIT_READY,
        sa: None,
        usage: &[0x00, 0, 0, 0, 0, 0x07],
    },
    OpcodeEntry {
        op: op::REQUEST_SENSE,
        sa: None,
        usage: &[0x03, 0x01, 0, 0, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::READ_6,
        sa: None,
        usage: &[0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::WRITE_6,
        sa: None,
        usage: &[0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::INQUIRY,
        sa: None,
        usage: &[0x12, 0x01, 0xFF, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::MODE_SELECT_6,
        sa: None,
        usage: &[0x15, 0x11, 0, 0, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::RESERVE_6,
        sa: None,
        usage: &[0x16, 0, 0, 0, 0, 0x07],
    },
    OpcodeEntry {
        op: op::RELEASE_6,
        sa: None,
        usage: &[0x17, 0, 0, 0, 0, 0x07],
    },
    OpcodeEntry {
        op: op::MODE_SENSE_6,
        sa: None,
        usage: &[0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::START_STOP_UNIT,
        sa: None,
        usage: &[0x1B, 0x01, 0, 0x0F, 0xF7, 0x07],
    },
    OpcodeEntry {
        op: op::PREVENT_ALLOW,
        sa: None,
        usage: &[0x1E, 0, 0, 0, 0x03, 0x07],
    },
    OpcodeEntry {
        op: op::READ_CAPACITY_10,
        sa: None,
        usage: &[0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, 0x07],
    },
    OpcodeEntry {
        op: op::READ_10,
        sa: None,
        usage: &READ10_U,
    },
    OpcodeEntry {
        op: op::WRITE_10,
        sa: None,
        usage: &WRITE10_U,
    },
    OpcodeEntry {
        op: op::WRITE_AND_VERIFY_10,
        sa: None,
        usage: &WV10_U,
    },
    OpcodeEntry {
        op: op::VERIFY_10,
        sa: None,
        usage: &VERIFY10_U,
    },
    OpcodeEntry {
        op: op::PRE_FETCH_10,
        sa: None,
        usage: &PREFETCH10_U,
    },
    OpcodeEntry {
        op: op::SYNCHRONIZE_CACHE_10,
        sa: None,
        usage: &SYNC10_U,
    },
    OpcodeEntry {
        op: op::WRITE_SAME_10,
        sa: None,
        usage: &WS10_U,
    },
    OpcodeEntry {
        op: op::UNMAP,
        sa: None,
        usage: &[0x42, 0, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::MODE_SELECT_10,
        sa: None,
        usage: &[0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::RESERVE_10,
        sa: None,
        usage: &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0x07],
    },
    OpcodeEntry {
        op: op::RELEASE_10,
        sa: None,
        usage: &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0x07],
    },
    OpcodeEntry {
        op: op::MODE_SENSE_10,
        sa: None,
        usage: &[0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::PERSISTENT_RESERVE_IN,
        sa: Some(0),
        usage: &[0x5E, 0x00, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::PERSISTENT_RESERVE_IN,
        sa: Some(1),
        usage: &[0x5E, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::PERSISTENT_RESERVE_IN,
        sa: Some(2),
        usage: &[0x5E, 0x02, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::PERSISTENT_RESERVE_IN,
        sa: Some(3),
        usage: &[0x5E, 0x03, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::PERSISTENT_RESERVE_OUT,
        sa: Some(0),
        usage: &[0x5F, 0x00, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::PERSISTENT_RESERVE_OUT,
        sa: Some(1),
        usage: &[0x5F, 0x01, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::PERSISTENT_RESERVE_OUT,
        sa: Some(2),
        usage: &[0x5F, 0x02, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::PERSISTENT_RESERVE_OUT,
        sa: Some(3),
        usage: &[0x5F, 0x03, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::PERSISTENT_RESERVE_OUT,
        sa: Some(4),
        usage: &[0x5F, 0x04, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::PERSISTENT_RESERVE_OUT,
        sa: Some(5),
        usage: &[0x5F, 0x05, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::PERSISTENT_RESERVE_OUT,
        sa: Some(6),
        usage: &[0x5F, 0x06, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::PERSISTENT_RESERVE_OUT,
        sa: Some(7),
        usage: &[0x5F, 0x07, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x07],
    },
    OpcodeEntry {
        op: op::READ_16,
        sa: None,
        usage: &READ16_U,
    },
    OpcodeEntry {
        op: op::COMPARE_AND_WRITE,
        sa: None,
        usage: &CAW_U,
    },
    OpcodeEntry {
        op: op::WRITE_16,
        sa: None,
        usage: &WRITE16_U,
    },
    OpcodeEntry {
        op: op::ORWRITE_16,
        sa: None,
        usage: &ORWRITE_U,
    },
    OpcodeEntry {
        op: op::WRITE_AND_VERIFY_16,
        sa: None,
        usage: &WV16_U,
    },
    OpcodeEntry {
        op: op::VERIFY_16,
        sa: None,
        usage: &VERIFY16_U,
    },
    OpcodeEntry {
        op: op::PRE_FETCH_16,
        sa: None,
        usage: &PREFETCH16_U,
    },
    OpcodeEntry {
        op: op::SYNCHRONIZE_CACHE_16,
        sa: None,
        usage: &SYNC16_U,
    },
    OpcodeEntry {
        op: op::WRITE_SAME_16,
        sa: None,
        usage: &WS16_U,
    },
    OpcodeEntry {
        op: op::SERVICE_ACTION_IN_16,
        sa: Some(0x10),
        usage: &RC16_U,
    },
    OpcodeEntry {
        op: op::SERVICE_ACTION_IN_16,
        sa: Some(0x12),
        usage: &GLS_U,
    },
    OpcodeEntry {
        op: op::REPORT_LUNS,
        sa: None,
        usage: &[0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07],
    },
    OpcodeEntry {
        op: op::MAINTENANCE_IN,
        sa: Some(0x0A),
        usage: &[0xA3, 0x2A, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07],
    },
    OpcodeEntry {
        op: op::MAINTENANCE_IN,
        sa: Some(0x0C),
        usage: &[
            0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07,
        ],
    },
    OpcodeEntry {
        op: op::MAINTENANCE_IN,
        sa: Some(0x0D),
        usage: &[0xA3, 0x0D, 0x80, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07],
    },
    OpcodeEntry {
        op: op::READ_12,
        sa: None,
        usage: &READ12_U,
    },
    OpcodeEntry {
        op: op::WRITE_12,
        sa: None,
        usage: &WRITE12_U,
    },
    OpcodeEntry {
        op: op::WRITE_AND_VERIFY_12,
        sa: None,
        usage: &WV12_U,
    },
    OpcodeEntry {
        op: op::VERIFY_12,
        sa: None,
        usage: &VERIFY12_U,
    },
];

fn timeouts(out: &mut Vec<u8>) {
    // Command timeouts descriptor (SPC-4 6.29.4): nominal 1 s, recommended 30 s.
    out.extend_from_slice(&[0x00, 0x0A, 0x00, 0x00]);
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&30u32.to_be_bytes());
}

/// Whether the table lists `opcode` (with service action `sa` if it has them). For
/// transports and tests.
pub fn is_supported_opcode(opcode: u8, sa: Option<u8>) -> bool {
    OPCODES
        .iter()
        .any(|e| e.op == opcode && (e.sa.is_none() || e.sa == sa))
}

/// REPORT SUPPORTED OPERATION CODES (SPC-4 6.35). `unmap` drops UNMAP when the LUN cannot
/// deallocate.
pub fn report_supported_opcodes(
    rctd: bool,
    options: u8,
    opcode: u8,
    service_action: u16,
    unmap: bool,
    out: &mut Vec<u8>,
) -> Result<(), Sense> {
    out.clear();
    let listed = |e: &&OpcodeEntry| unmap || e.op != op::UNMAP;
    if options == 0 {
        out.extend_from_slice(&[0; 4]);
        for e in OPCODES.iter().filter(listed) {
            out.push(e.op);
            out.push(0);
            out.extend_from_slice(&(e.sa.unwrap_or(0) as u16).to_be_bytes());
            out.push(0);
            let mut flags = 0;
            if e.sa.is_some() {
                flags |= 0x01;
            }
            if rctd {
                flags |= 0x02;
            }
            out.push(flags);
            out.extend_from_slice(&(e.usage.len() as u16).to_be_bytes());
            if rctd {
                timeouts(out);
            }
        }
        let len = (out.len() - 4) as u32;
        out[0..4].copy_from_slice(&len.to_be_bytes());
        return Ok(());
    }
    let has_sa = OPCODES.iter().any(|e| e.op == opcode && e.sa.is_some());
    let known = OPCODES.iter().filter(listed).any(|e| e.op == opcode);
    let want_sa = match options {
        1 => {
            if has_sa {
                return Err(Sense::invalid_cdb_field(2, Some(2)));
            }
            None
        }
        2 => {
            if known && !has_sa {
                return Err(Sense::invalid_cdb_field(2, Some(2)));
            }
            Some(service_action)
        }
        _ => has_sa.then_some(service_action),
    };
    let entry = OPCODES.iter().filter(listed).find(|e| {
        e.op == opcode
            && match (e.sa, want_sa) {
                (None, None) => true,
                (Some(a), Some(b)) => a as u16 == b,
                _ => false,
            }
    });
    match entry {
        Some(e) => {
            out.push(0);
            out.push(0x03 | if rctd { 0x80 } else { 0 });
            out.extend_from_slice(&(e.usage.len() as u16).to_be_bytes());
            out.extend_from_slice(e.usage);
            if rctd {
                timeouts(out);
            }
        }
        None => out.extend_from_slice(&[0, 0x01, 0, 0]),
    }
    Ok(())
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.36): ABORT TASK, ABORT TASK SET,
/// CLEAR TASK SET, LOGICAL UNIT RESET, TARGET RESET.
pub fn report_supported_tmfs(repd: bool, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0x80 | 0x40 | 0x10 | 0x08 | 0x02, 0x00, 0x00]);
    if repd {
        out.push(0x0C);
        out.resize(16, 0);
    } else {
        out.push(0);
    }
}

/// REPORT TARGET PORT GROUPS (SPC-4 6.37) for `groups` with their current states.
pub fn report_target_port_groups(
    extended: bool,
    groups: &[PortGroup],
    state_of: impl Fn(usize) -> AluaState,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(&[0; 4]);
    if extended {
        // Format 001b, implicit transition time 0 (not specified).
        out.extend_from_slice(&[0x10, 0x00, 0x00, 0x00]);
    }
    for (i, g) in groups.iter().enumerate() {
        let state = state_of(i) as u8;
        out.push(if g.preferred { 0x80 } else { 0 } | state);
        // T_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP.
        out.push(0x80 | 0x08 | 0x04 | 0x02 | 0x01);
        out.extend_from_slice(&g.id.to_be_bytes());
        out.push(0);
        // Status: altered by implicit behaviour if not active/optimized.
        out.push(0);
        out.push(0);
        out.push(g.ports.len().min(255) as u8);
        for p in g.ports.iter().take(255) {
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&p.to_be_bytes());
        }
    }
    let len = (out.len() - 4) as u32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits {
        block_size: 512,
        num_blocks: 2048,
        max_transfer_blocks: 2048,
        max_write_same_blocks: 65536,
        max_compare_write_blocks: 255,
        unmap: true,
    };

    fn ctx() -> ModeCtx {
        let v = ModeValues {
            wce: true,
            d_sense: false,
        };
        ModeCtx {
            current: v,
            default: v,
            wce_changeable: true,
            write_protected: false,
            limits: LIM,
        }
    }

    #[test]
    fn report_luns_bytes() {
        let mut v = Vec::new();
        report_luns(0, &[0, 1, 300], &mut v);
        assert_eq!(
            v,
            [
                0, 0, 0, 24, 0, 0, 0, 0, //
                0, 0, 0, 0, 0, 0, 0, 0, //
                0, 1, 0, 0, 0, 0, 0, 0, //
                0x41, 0x2C, 0, 0, 0, 0, 0, 0
            ]
        );
        report_luns(1, &[0, 1], &mut v);
        assert_eq!(v, [0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn mode_sense6_caching_page_with_block_descriptor() {
        let mut v = Vec::new();
        mode_sense(
            false,
            false,
            false,
            PageControl::Current,
            0x08,
            0,
            &ctx(),
            &mut v,
        )
        .unwrap();
        assert_eq!(v.len(), 4 + 8 + 20);
        assert_eq!(&v[..4], &[31, 0, 0x10, 8]);
        assert_eq!(&v[4..12], &[0, 0, 0x08, 0, 0, 0, 0x02, 0x00]);
        assert_eq!(&v[12..15], &[0x08, 0x12, 0x04]);
    }

    #[test]
    fn mode_sense10_long_lba_and_changeable_control() {
        let mut v = Vec::new();
        mode_sense(
            true,
            false,
            true,
            PageControl::Changeable,
            0x0A,
            0,
            &ctx(),
            &mut v,
        )
        .unwrap();
        assert_eq!(v.len(), 8 + 16 + 12);
        assert_eq!(&v[..8], &[0, 34, 0, 0x10, 0x01, 0, 0, 16]);
        assert_eq!(&v[24..27], &[0x0A, 0x0A, 0x04]);
        assert!(v[27..].iter().all(|&b| b == 0));
    }

    #[test]
    fn mode_sense_rejects_unknown_page_and_subpage() {
        let mut v = Vec::new();
        assert_eq!(
            mode_sense(
                false,
                true,
                false,
                PageControl::Current,
                0x05,
                0,
                &ctx(),
                &mut v
            ),
            Err(Sense::invalid_cdb_field(2, Some(5)))
        );
        assert_eq!(
            mode_sense(
                false,
                true,
                false,
                PageControl::Current,
                0x08,
                1,
                &ctx(),
                &mut v
            ),
            Err(Sense::invalid_cdb_field(3, None))
        );
    }

    #[test]
    fn mode_select_changes_d_sense_and_rejects_fixed_bits() {
        let mut v = Vec::new();
        mode_sense(
            false,
            true,
            false,
            PageControl::Current,
            0x0A,
            0,
            &ctx(),
            &mut v,
        )
        .unwrap();
        v[0] = 0;
        v[2] = 0; // device-specific parameter is reserved in MODE SELECT
        v[4 + 2] |= 0x04;
        let got = parse_mode_select(false, v.len() as u32, &v, &ctx()).unwrap();
        assert!(got.d_sense && got.wce);
        v[4 + 3] ^= 0x20; // queue algorithm modifier is not changeable
        assert_eq!(
            parse_mode_select(false, v.len() as u32, &v, &ctx()),
            Err(Sense::invalid_param_field(7, Some(5)))
        );
        assert_eq!(
            parse_mode_select(false, 3, &v, &ctx()),
            Err(Sense::param_list_length())
        );
    }

    #[test]
    fn unmap_list_checks() {
        let mut d = vec![0u8; 24];
        d[1] = 22;
        d[3] = 16;
        d[15] = 8; // lba 8
        d[19] = 4; // 4 blocks
        assert_eq!(parse_unmap(24, &d, &LIM), Ok(1));
        assert_eq!(
            unmap_descriptor(&d, 0),
            Some(UnmapDescriptor { lba: 8, blocks: 4 })
        );
        d[10] = 0x10; // lba far beyond the end
        assert_eq!(parse_unmap(24, &d, &LIM), Err(Sense::lba_out_of_range()));
        d[3] = 15;
        assert_eq!(parse_unmap(24, &d, &LIM), Err(Sense::param_list_length()));
        assert_eq!(parse_unmap(0, &[], &LIM), Ok(0));
        assert_eq!(parse_unmap(7, &d, &LIM), Err(Sense::param_list_length()));
    }

    #[test]
    fn supported_opcodes_one_command_and_all() {
        let mut v = Vec::new();
        report_supported_opcodes(false, 1, op::READ_10, 0, true, &mut v).unwrap();
        assert_eq!(&v[..4], &[0, 0x03, 0, 10]);
        assert_eq!(v[4], op::READ_10);
        report_supported_opcodes(true, 1, 0xFF, 0, true, &mut v).unwrap();
        assert_eq!(v, [0, 0x01, 0, 0]);
        assert_eq!(
            report_supported_opcodes(false, 1, op::MAINTENANCE_IN, 0, true, &mut v),
            Err(Sense::invalid_cdb_field(2, Some(2)))
        );
        report_supported_opcodes(false, 2, op::SERVICE_ACTION_IN_16, 0x10, true, &mut v).unwrap();
        assert_eq!(&v[..4], &[0, 0x03, 0, 16]);
        report_supported_opcodes(true, 0, 0, 0, true, &mut v).unwrap();
        let len = u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize;
        assert_eq!(len, v.len() - 4);
        assert_eq!(len % 20, 0);
        assert_eq!(len / 20, OPCODES.len());
    }

    #[test]
    fn rtpg_bytes() {
        let groups = [PortGroup {
            id: 1,
            ports: vec![1, 2],
            state: AluaState::Standby,
            preferred: true,
        }];
        let mut v = Vec::new();
        report_target_port_groups(false, &groups, |_| AluaState::Standby, &mut v);
        assert_eq!(
            v,
            [0, 0, 0, 16, 0x82, 0x8F, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2]
        );
    }

    #[test]
    fn vpd_pages_have_their_lengths() {
        let naa = [0x60; 16];
        let c = InquiryCtx {
            product: "p",
            revision: "1",
            serial: "abc",
            naa: &naa,
            protocol_id: 5,
            rtpi: Some(1),
            tpg: Some(7),
            limits: LIM,
        };
        let mut v = Vec::new();
        inquiry_vpd(&c, 0xB0, &mut v).unwrap();
        assert_eq!(v.len(), 64);
        assert_eq!(v[3], 0x3C);
        assert_eq!(v[4], 1);
        inquiry_vpd(&c, 0xB2, &mut v).unwrap();
        assert_eq!(v, [0, 0xB2, 0, 4, 0, 0xE4, 0x02, 0]);
        inquiry_vpd(&c, 0x83, &mut v).unwrap();
        assert_eq!(v.len(), 4 + 20 + 15 + 8 + 8);
        assert_eq!(&v[v.len() - 8..], &[0x51, 0x95, 0, 4, 0, 0, 0, 7]);
        inquiry_standard(&c, &mut v);
        assert_eq!(v.len(), 74);
        assert_eq!(v[4], 69);
        assert_eq!(&v[8..16], b"GYRE    ");
        assert_eq!(
            inquiry_vpd(&c, 0x99, &mut v),
            Err(Sense::invalid_cdb_field(2, None))
        );
    }
}
