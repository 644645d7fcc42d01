//! Log pages (NVMe Base 2.x "Get Log Page" and NVMe over Fabrics): error information,
//! SMART / health, firmware slot information, changed namespace list, ANA and the discovery
//! log, with builders and decoders.
//!
//! A host asks for a byte window `[offset, offset + len)` of a page, and pages such as the
//! discovery or ANA log can be far larger than one buffer. [`LogWindow`] lets a target write a
//! page one entry at a time, in order, while only the bytes inside the window land in the
//! caller's buffer: entries wholly outside it are skipped without being encoded.

use crate::error::{DecodeError, NqnError};
use crate::fabrics::{Nqn, NQN_FIELD_LEN};
use crate::status::Status;
use crate::wire::{
    get_array, get_u128, get_u16, get_u32, get_u64, need, need_out, put_bytes, put_u128, put_u16,
    put_u32, put_u64,
};

/// Log Page Identifiers.
pub struct LogPageId;

impl LogPageId {
    pub const SUPPORTED_LOG_PAGES: u8 = 0x00;
    pub const ERROR_INFORMATION: u8 = 0x01;
    pub const SMART_HEALTH: u8 = 0x02;
    pub const FIRMWARE_SLOT: u8 = 0x03;
    pub const CHANGED_NAMESPACE_LIST: u8 = 0x04;
    pub const COMMANDS_SUPPORTED_AND_EFFECTS: u8 = 0x05;
    pub const DEVICE_SELF_TEST: u8 = 0x06;
    pub const TELEMETRY_HOST: u8 = 0x07;
    pub const TELEMETRY_CONTROLLER: u8 = 0x08;
    pub const ANA: u8 = 0x0C;
    pub const PERSISTENT_EVENT: u8 = 0x0D;
    pub const DISCOVERY: u8 = 0x70;
    pub const RESERVATION_NOTIFICATION: u8 = 0x80;
    pub const SANITIZE_STATUS: u8 = 0x81;
}

/// Writes a log page sequentially while keeping only the bytes of one window of it.
pub struct LogWindow<'a> {
    out: &'a mut [u8],
    start: u64,
    pos: u64,
}

impl<'a> LogWindow<'a> {
    /// A writer whose output `out` receives page bytes `[offset, offset + out.len())`.
    pub fn new(out: &'a mut [u8], offset: u64) -> Self {
        LogWindow {
            out,
            start: offset,
            pos: 0,
        }
    }

    fn end(&self) -> u64 {
        self.start.saturating_add(self.out.len() as u64)
    }

    /// Page offset of the next byte to be written.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Whether everything after this point falls beyond the window.
    pub fn is_full(&self) -> bool {
        self.pos >= self.end()
    }

    /// Whether the next `len` page bytes touch the window.
    pub fn overlaps(&self, len: usize) -> bool {
        let next = self.pos.saturating_add(len as u64);
        self.pos < self.end() && next > self.start
    }

    /// Appends `bytes` to the page.
    pub fn put(&mut self, bytes: &[u8]) {
        if self.overlaps(bytes.len()) {
            let skip = self.start.saturating_sub(self.pos) as usize;
            let dst = self.pos.saturating_sub(self.start) as usize;
            let n = (bytes.len() - skip).min(self.out.len() - dst);
            self.out[dst..dst + n].copy_from_slice(&bytes[skip..skip + n]);
        }
        self.pos = self.pos.saturating_add(bytes.len() as u64);
    }

    /// Appends `len` zero bytes.
    pub fn put_zeros(&mut self, len: usize) {
        if self.overlaps(len) {
            let skip = self.start.saturating_sub(self.pos) as usize;
            let dst = self.pos.saturating_sub(self.start) as usize;
            let n = (len - skip).min(self.out.len() - dst);
            self.out[dst..dst + n].fill(0);
        }
        self.pos = self.pos.saturating_add(len as u64);
    }

    pub fn put_u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }

    /// Appends an `N`-byte entry produced by `encode`, calling it only when the entry touches
    /// the window.
    pub fn put_entry<const N: usize>(&mut self, encode: impl FnOnce(&mut [u8; N])) {
        if self.overlaps(N) {
            let mut tmp = [0u8; N];
            encode(&mut tmp);
            self.put(&tmp);
        } else {
            self.pos = self.pos.saturating_add(N as u64);
        }
    }

    /// Bytes of the output holding page data so far.
    pub fn filled(&self) -> usize {
        (self.pos.saturating_sub(self.start) as usize).min(self.out.len())
    }

    /// Zeroes the output past the end of the page and returns how many bytes hold page data.
    pub fn finish(self) -> usize {
        let filled = self.filled();
        self.out[filled..].fill(0);
        filled
    }
}

/// One Error Information log entry (64 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorLogEntry {
    /// Error count: unique, increasing; 0 = empty entry.
    pub error_count: u64,
    pub sqid: u16,
    pub cid: u16,
    /// Status of the failed command.
    pub status: Status,
    /// Parameter error location: byte (bits 7:0) and bit (10:8) in the command.
    pub parameter_location: u16,
    pub lba: u64,
    pub nsid: u32,
    pub vendor_info: u8,
    /// Transport type (3 = TCP).
    pub trtype: u8,
    pub command_specific: u64,
    pub transport_specific: u16,
}

impl ErrorLogEntry {
    pub const SIZE: usize = 64;

    pub fn encode(&self, b: &mut [u8; 64]) {
        b.fill(0);
        put_u64(b, 0, self.error_count);
        put_u16(b, 8, self.sqid);
        put_u16(b, 10, self.cid);
        put_u16(b, 12, self.status.to_field(false));
        put_u16(b, 14, self.parameter_location);
        put_u64(b, 16, self.lba);
        put_u32(b, 24, self.nsid);
        b[28] = self.vendor_info;
        b[29] = self.trtype;
        put_u64(b, 32, self.command_specific);
        put_u16(b, 40, self.transport_specific);
    }

    pub fn decode(b: &[u8; 64]) -> Self {
        ErrorLogEntry {
            error_count: get_u64(b, 0),
            sqid: get_u16(b, 8),
            cid: get_u16(b, 10),
            status: Status::from_field(get_u16(b, 12)).0,
            parameter_location: get_u16(b, 14),
            lba: get_u64(b, 16),
            nsid: get_u32(b, 24),
            vendor_info: b[28],
            trtype: b[29],
            command_specific: get_u64(b, 32),
            transport_specific: get_u16(b, 40),
        }
    }
}

/// SMART / Health Information log (512 bytes). Counters are 128-bit on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SmartLog {
    pub critical_warning: u8,
    /// Composite temperature in kelvins.
    pub composite_temperature: u16,
    pub available_spare: u8,
    pub available_spare_threshold: u8,
    pub percentage_used: u8,
    pub endurance_group_critical_warning: u8,
    /// In thousands of 512-byte units.
    pub data_units_read: u128,
    pub data_units_written: u128,
    pub host_read_commands: u128,
    pub host_write_commands: u128,
    /// Minutes.
    pub controller_busy_time: u128,
    pub power_cycles: u128,
    pub power_on_hours: u128,
    pub unsafe_shutdowns: u128,
    pub media_errors: u128,
    pub error_log_entries: u128,
    pub warning_temperature_time: u32,
    pub critical_temperature_time: u32,
    pub temperature_sensors: [u16; 8],
}

impl SmartLog {
    pub const SIZE: usize = 512;

    pub fn encode(&self, out: &mut [u8]) -> Result<usize, DecodeError> {
        need_out(out, Self::SIZE)?;
        let b = &mut out[..Self::SIZE];
        b.fill(0);
        b[0] = self.critical_warning;
        put_u16(b, 1, self.composite_temperature);
        b[3] = self.available_spare;
        b[4] = self.available_spare_threshold;
        b[5] = self.percentage_used;
        b[6] = self.endurance_group_critical_warning;
        put_u128(b, 32, self.data_units_read);
        put_u128(b, 48, self.data_units_written);
        put_u128(b, 64, self.host_read_commands);
        put_u128(b, 80, self.host_write_commands);
        put_u128(b, 96, self.controller_busy_time);
        put_u128(b, 112, self.power_cycles);
        put_u128(b, 128, self.power_on_hours);
        put_u128(b, 144, self.unsafe_shutdowns);
        put_u128(b, 160, self.media_errors);
        put_u128(b, 176, self.error_log_entries);
        put_u32(b, 192, self.warning_temperature_time);
        put_u32(b, 196, self.critical_temperature_time);
        for (i, t) in self.temperature_sensors.iter().enumerate() {
            put_u16(b, 200 + 2 * i, *t);
        }
        Ok(Self::SIZE)
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        need(buf, Self::SIZE)?;
        let b = buf;
        let mut temperature_sensors = [0u16; 8];
        for (i, t) in temperature_sensors.iter_mut().enumerate() {
            *t = get_u16(b, 200 + 2 * i);
        }
        Ok(SmartLog {
            critical_warning: b[0],
            composite_temperature: get_u16(b, 1),
            available_spare: b[3],
            available_spare_threshold: b[4],
            percentage_used: b[5],
            endurance_group_critical_warning: b[6],
            data_units_read: get_u128(b, 32),
            data_units_written: get_u128(b, 48),
            host_read_commands: get_u128(b, 64),
            host_write_commands: get_u128(b, 80),
            controller_busy_time: get_u128(b, 96),
            power_cycles: get_u128(b, 112),
            power_on_hours: get_u128(b, 128),
            unsafe_shutdowns: get_u128(b, 144),
            media_errors: get_u128(b, 160),
            error_log_entries: get_u128(b, 176),
            warning_temperature_time: get_u32(b, 192),
            critical_temperature_time: get_u32(b, 196),
            temperature_sensors,
        })
    }
}

/// Firmware Slot Information log (512 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FirmwareSlotLog {
    /// Active firmware info: slot running (bits 2:0), slot at next reset (bits 6:4).
    pub afi: u8,
    /// Firmware revision of slots 1..7 (8 ASCII bytes each; zero = empty slot).
    pub frs: [[u8; 8]; 7],
}

impl FirmwareSlotLog {
    pub const SIZE: usize = 512;

    pub fn encode(&self, out: &mut [u8]) -> Result<usize, DecodeError> {
        need_out(out, Self::SIZE)?;
        let b = &mut out[..Self::SIZE];
        b.fill(0);
        b[0] = self.afi;
        for (i, r) in self.frs.iter().enumerate() {
            put_bytes(b, 8 + 8 * i, r);
        }
        Ok(Self::SIZE)
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        need(buf, Self::SIZE)?;
        let mut frs = [[0u8; 8]; 7];
        for (i, r) in frs.iter_mut().enumerate() {
            *r = get_array(buf, 8 + 8 * i);
        }
        Ok(FirmwareSlotLog { afi: buf[0], frs })
    }
}

/// Changed Namespace List log (4096 bytes: up to 1024 NSIDs, zero-terminated; FFFFFFFFh in
/// the first entry means more than 1024 changed).
pub struct ChangedNamespaceList;

impl ChangedNamespaceList {
    pub const SIZE: usize = 4096;
    pub const MAX_ENTRIES: usize = 1024;
    pub const OVERFLOW: u32 = 0xFFFF_FFFF;

    /// Writes the page for `nsids` (increasing). More than 1024 gives the overflow form.
    pub fn write(nsids: &[u32], w: &mut LogWindow<'_>) {
        if nsids.len() > Self::MAX_ENTRIES {
            w.put_u32(Self::OVERFLOW);
            w.put_zeros(Self::SIZE - 4);
            return;
        }
        for &id in nsids {
            w.put_u32(id);
        }
        w.put_zeros(Self::SIZE - 4 * nsids.len());
    }

    /// The NSIDs listed, or `None` for the overflow form.
    pub fn decode(buf: &[u8]) -> Option<impl Iterator<Item = u32> + '_> {
        let ids = buf
            .chunks_exact(4)
            .take(Self::MAX_ENTRIES)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .take_while(|&id| id != 0);
        if buf.len() >= 4 && get_u32(buf, 0) == Self::OVERFLOW {
            None
        } else {
            Some(ids)
        }
    }
}

/// ANA states (ANA group descriptor byte 16, bits 3:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnaState {
    Optimized,
    NonOptimized,
    Inaccessible,
    PersistentLoss,
    Change,
}

impl AnaState {
    pub const fn bits(self) -> u8 {
        match self {
            AnaState::Optimized => 0x1,
            AnaState::NonOptimized => 0x2,
            AnaState::Inaccessible => 0x3,
            AnaState::PersistentLoss => 0x4,
            AnaState::Change => 0xF,
        }
    }

    pub fn from_bits(v: u8) -> Option<Self> {
        Some(match v & 0xF {
            0x1 => AnaState::Optimized,
            0x2 => AnaState::NonOptimized,
            0x3 => AnaState::Inaccessible,
            0x4 => AnaState::PersistentLoss,
            0xF => AnaState::Change,
            _ => return None,
        })
    }

    /// The status a command gets on a namespace in this state, or `None` if it may run.
    pub fn io_status(self) -> Option<Status> {
        match self {
            AnaState::Optimized | AnaState::NonOptimized => None,
            AnaState::Inaccessible => Some(Status::ASYMMETRIC_ACCESS_INACCESSIBLE),
            AnaState::PersistentLoss => Some(Status::ASYMMETRIC_ACCESS_PERSISTENT_LOSS),
            AnaState::Change => Some(Status::ASYMMETRIC_ACCESS_TRANSITION),
        }
    }
}

/// ANA log Log Specific Parameter bit: Return Groups Only (no NSID lists).
pub const ANA_LSP_RGO: u8 = 0x1;

/// ANA log header (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AnaLogHeader {
    pub change_count: u64,
    pub num_descriptors: u16,
}

impl AnaLogHeader {
    pub const SIZE: usize = 16;

    pub fn encode(&self, b: &mut [u8; 16]) {
        b.fill(0);
        put_u64(b, 0, self.change_count);
        put_u16(b, 8, self.num_descriptors);
    }

    pub fn decode(b: &[u8; 16]) -> Self {
        AnaLogHeader {
            change_count: get_u64(b, 0),
            num_descriptors: get_u16(b, 8),
        }
    }
}

/// ANA group descriptor header (32 bytes; the NSID list follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnaGroupDescriptor {
    pub grpid: u32,
    pub num_nsids: u32,
    pub change_count: u64,
    pub state: AnaState,
}

impl AnaGroupDescriptor {
    pub const SIZE: usize = 32;

    pub fn encode(&self, b: &mut [u8; 32]) {
        b.fill(0);
        put_u32(b, 0, self.grpid);
        put_u32(b, 4, self.num_nsids);
        put_u64(b, 8, self.change_count);
        b[16] = self.state.bits();
    }

    pub fn decode(b: &[u8; 32]) -> Result<Self, DecodeError> {
        Ok(AnaGroupDescriptor {
            grpid: get_u32(b, 0),
            num_nsids: get_u32(b, 4),
            change_count: get_u64(b, 8),
            state: AnaState::from_bits(b[16]).ok_or(DecodeError::InvalidField {
                field: "ANA state",
                offset: 16,
            })?,
        })
    }

    /// Size of this descriptor with its NSID list.
    pub fn wire_len(&self) -> usize {
        Self::SIZE + 4 * self.num_nsids as usize
    }
}

/// Writes the ANA log: header, then one group at a time.
pub struct AnaLogWriter;

impl AnaLogWriter {
    pub fn header(w: &mut LogWindow<'_>, change_count: u64, num_groups: u16) {
        w.put_entry::<16>(|b| {
            AnaLogHeader {
                change_count,
                num_descriptors: num_groups,
            }
            .encode(b)
        });
    }

    /// One group. With `rgo` (LSP bit 0) the NSID list is left out and NSID count is 0.
    pub fn group(
        w: &mut LogWindow<'_>,
        grpid: u32,
        change_count: u64,
        state: AnaState,
        nsids: &[u32],
        rgo: bool,
    ) {
        let listed: &[u32] = if rgo { &[] } else { nsids };
        w.put_entry::<32>(|b| {
            AnaGroupDescriptor {
                grpid,
                num_nsids: listed.len() as u32,
                change_count,
                state,
            }
            .encode(b)
        });
        for &id in listed {
            w.put_u32(id);
        }
    }
}

/// Reads an ANA log: the header and each group with its NSIDs.
pub struct AnaLogReader<'a> {
    buf: &'a [u8],
    at: usize,
    left: u16,
    pub header: AnaLogHeader,
}

impl<'a> AnaLogReader<'a> {
    pub fn new(buf: &'a [u8]) -> Result<Self, DecodeError> {
        need(buf, AnaLogHeader::SIZE)?;
        let header = AnaLogHeader::decode(&get_array::<16>(buf, 0));
        Ok(AnaLogReader {
            buf,
            at: AnaLogHeader::SIZE,
            left: header.num_descriptors,
            header,
        })
    }
}

impl<'a> Iterator for AnaLogReader<'a> {
    type Item = Result<(AnaGroupDescriptor, AnaNsids<'a>), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let fail = |s: &mut Self, e| {
            s.left = 0;
            Some(Err(e))
        };
        let Some(h) = self.buf.get(self.at..self.at + AnaGroupDescriptor::SIZE) else {
            let needed = self.at + AnaGroupDescriptor::SIZE;
            let got = self.buf.len();
            return fail(self, DecodeError::Truncated { needed, got });
        };
        let d = match AnaGroupDescriptor::decode(&get_array::<32>(h, 0)) {
            Ok(d) => d,
            Err(DecodeError::InvalidField { field, offset }) => {
                let offset = self.at + offset;
                return fail(self, DecodeError::InvalidField { field, offset });
            }
            Err(e) => return fail(self, e),
        };
        let start = self.at + AnaGroupDescriptor::SIZE;
        let end = (d.num_nsids as usize)
            .checked_mul(4)
            .and_then(|n| n.checked_add(start));
        let Some(list) = end.and_then(|end| self.buf.get(start..end)) else {
            let got = self.buf.len();
            return fail(
                self,
                DecodeError::Truncated {
                    needed: end.unwrap_or(usize::MAX),
                    got,
                },
            );
        };
        self.at = start + list.len();
        Some(Ok((d, AnaNsids { list })))
    }
}

/// The NSID list of one ANA group.
#[derive(Debug, Clone, Copy)]
pub struct AnaNsids<'a> {
    list: &'a [u8],
}

impl<'a> AnaNsids<'a> {
    pub fn iter(&self) -> impl Iterator<Item = u32> + 'a {
        self.list
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// Transport types (discovery TRTYPE).
pub mod trtype {
    pub const RDMA: u8 = 1;
    pub const FC: u8 = 2;
    pub const TCP: u8 = 3;
    pub const INTRA_HOST: u8 = 254;
}

/// Address families (discovery ADRFAM).
pub mod adrfam {
    pub const IPV4: u8 = 1;
    pub const IPV6: u8 = 2;
    pub const IB: u8 = 3;
    pub const FC: u8 = 4;
    pub const INTRA_HOST: u8 = 254;
}

/// Subsystem types (discovery SUBTYPE).
pub mod subtype {
    /// A referral to another discovery service.
    pub const DISCOVERY_REFERRAL: u8 = 1;
    pub const NVME: u8 = 2;
    /// The discovery subsystem the host is talking to.
    pub const CURRENT_DISCOVERY: u8 = 3;
}

/// Transport requirements (discovery TREQ).
pub mod treq {
    pub const SECURE_CHANNEL_NOT_SPECIFIED: u8 = 0;
    pub const SECURE_CHANNEL_REQUIRED: u8 = 1;
    pub const SECURE_CHANNEL_NOT_REQUIRED: u8 = 2;
    /// The controller supports disabling SQ flow control.
    pub const DISABLE_SQ_FLOW_CONTROL: u8 = 1 << 2;
}

/// Entry flags (discovery EFLAGS).
pub mod eflags {
    pub const DUPLICATE_RETURNED_INFO: u16 = 1 << 0;
    pub const EXPLICIT_PERSISTENT_CONNECTION: u16 = 1 << 1;
    pub const NO_CDC_CONNECTIVITY: u16 = 1 << 2;
}

/// NVMe/TCP security types (TSAS byte 0).
pub mod sectype {
    pub const NONE: u8 = 0;
    pub const TLS12: u8 = 1;
    pub const TLS13: u8 = 2;
}

/// Discovery log page header (1024 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiscoveryLogHeader {
    /// Generation counter: changes whenever the log changes.
    pub genctr: u64,
    pub numrec: u64,
    pub recfmt: u16,
}

impl DiscoveryLogHeader {
    pub const SIZE: usize = 1024;

    pub fn encode(&self, b: &mut [u8; 1024]) {
        b.fill(0);
        put_u64(b, 0, self.genctr);
        put_u64(b, 8, self.numrec);
        put_u16(b, 16, self.recfmt);
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        need(buf, 18)?;
        Ok(DiscoveryLogHeader {
            genctr: get_u64(buf, 0),
            numrec: get_u64(buf, 8),
            recfmt: get_u16(buf, 16),
        })
    }
}

/// One discovery log page entry (1024 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryLogEntry {
    pub trtype: u8,
    pub adrfam: u8,
    pub subtype: u8,
    pub treq: u8,
    pub portid: u16,
    /// FFFFh: dynamic controller model.
    pub cntlid: u16,
    /// Admin max SQ size.
    pub asqsz: u16,
    pub eflags: u16,
    /// Transport service id (the TCP port), space-padded ASCII.
    pub trsvcid: [u8; 32],
    /// Subsystem NQN, NUL-terminated.
    pub subnqn: [u8; NQN_FIELD_LEN],
    /// Transport address (IP address text), space-padded ASCII.
    pub traddr: [u8; 256],
    /// Transport specific address subtype (TCP: byte 0 = SECTYPE).
    pub tsas: [u8; 256],
}

fn padded<const N: usize>(s: &str) -> [u8; N] {
    crate::wire::ascii_padded::<N>(s)
}

fn text(field: &[u8]) -> &str {
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    std::str::from_utf8(&field[..end])
        .unwrap_or("")
        .trim_end_matches(' ')
}

impl DiscoveryLogEntry {
    pub const SIZE: usize = 1024;

    /// An NVMe/TCP entry.
    #[allow(clippy::too_many_arguments)]
    pub fn tcp(
        subtype: u8,
        subnqn: &Nqn,
        traddr: &str,
        trsvcid: &str,
        ipv6: bool,
        portid: u16,
        asqsz: u16,
        sectype: u8,
    ) -> Self {
        let mut tsas = [0u8; 256];
        tsas[0] = sectype;
        DiscoveryLogEntry {
            trtype: trtype::TCP,
            adrfam: if ipv6 { adrfam::IPV6 } else { adrfam::IPV4 },
            subtype,
            treq: treq::SECURE_CHANNEL_NOT_REQUIRED,
            portid,
            cntlid: 0xFFFF,
            asqsz,
            eflags: 0,
            trsvcid: padded(trsvcid),
            subnqn: subnqn.to_field(),
            traddr: padded(traddr),
            tsas,
        }
    }

    pub fn traddr_str(&self) -> &str {
        text(&self.traddr)
    }

    pub fn trsvcid_str(&self) -> &str {
        text(&self.trsvcid)
    }

    pub fn subnqn(&self) -> Result<Nqn, NqnError> {
        Nqn::from_field(&self.subnqn)
    }

    pub fn encode(&self, b: &mut [u8; 1024]) {
        b.fill(0);
        b[0] = self.trtype;
        b[1] = self.adrfam;
        b[2] = self.subtype;
        b[3] = self.treq;
        put_u16(b, 4, self.portid);
        put_u16(b, 6, self.cntlid);
        put_u16(b, 8, self.asqsz);
        put_u16(b, 10, self.eflags);
        put_bytes(b, 32, &self.trsvcid);
        put_bytes(b, 256, &self.subnqn);
        put_bytes(b, 512, &self.traddr);
        put_bytes(b, 768, &self.tsas);
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        need(buf, Self::SIZE)?;
        Ok(DiscoveryLogEntry {
            trtype: buf[0],
            adrfam: buf[1],
            subtype: buf[2],
            treq: buf[3],
            portid: get_u16(buf, 4),
            cntlid: get_u16(buf, 6),
            asqsz: get_u16(buf, 8),
            eflags: get_u16(buf, 10),
            trsvcid: get_array(buf, 32),
            subnqn: get_array(buf, 256),
            traddr: get_array(buf, 512),
            tsas: get_array(buf, 768),
        })
    }
}

/// Writes the discovery log: the header, then each entry.
pub struct DiscoveryLogWriter;

impl DiscoveryLogWriter {
    pub fn header(w: &mut LogWindow<'_>, genctr: u64, numrec: u64) {
        w.put_entry::<1024>(|b| {
            DiscoveryLogHeader {
                genctr,
                numrec,
                recfmt: 0,
            }
            .encode(b)
        });
    }

    pub fn entry(w: &mut LogWindow<'_>, e: &DiscoveryLogEntry) {
        w.put_entry::<1024>(|b| e.encode(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_keeps_only_its_bytes() {
        let page: Vec<u8> = (0..=255u8).collect();
        for (off, len) in [(0usize, 256usize), (10, 20), (250, 16), (300, 8), (0, 1)] {
            let mut out = vec![0xEEu8; len];
            let mut w = LogWindow::new(&mut out, off as u64);
            for chunk in page.chunks(7) {
                w.put(chunk);
            }
            let filled = w.finish();
            let expect = page.get(off..(off + len).min(256)).unwrap_or(&[]);
            assert_eq!(filled, expect.len(), "window {off}+{len}");
            assert_eq!(&out[..filled], expect);
            assert!(out[filled..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn put_entry_skips_encoding_outside_window() {
        let mut out = [0u8; 8];
        let mut w = LogWindow::new(&mut out, 2048);
        let mut calls = 0;
        for _ in 0..4 {
            w.put_entry::<1024>(|b| {
                calls += 1;
                b.fill(7);
            });
        }
        assert_eq!(calls, 1);
        assert_eq!(w.finish(), 8);
        assert_eq!(out, [7; 8]);
    }

    #[test]
    fn error_log_entry_bytes() {
        let e = ErrorLogEntry {
            error_count: 1,
            sqid: 1,
            cid: 0x10,
            status: Status::LBA_OUT_OF_RANGE.with_dnr(),
            parameter_location: 40,
            lba: 0x1234,
            nsid: 1,
            trtype: trtype::TCP,
            ..Default::default()
        };
        let mut b = [0u8; 64];
        e.encode(&mut b);
        assert_eq!(&b[0..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[8..12], &[1, 0, 0x10, 0]);
        assert_eq!(&b[12..14], &[0x00, 0x81]); // SC 0x80 << 1, DNR bit 15
        assert_eq!(&b[14..16], &[40, 0]);
        assert_eq!(&b[16..24], &[0x34, 0x12, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[24..28], &[1, 0, 0, 0]);
        assert_eq!(b[29], 3);
        assert_eq!(ErrorLogEntry::decode(&b), e);
    }

    #[test]
    fn smart_and_firmware() {
        let s = SmartLog {
            composite_temperature: 310,
            available_spare: 100,
            available_spare_threshold: 10,
            data_units_read: 0x1_0000_0000_0000_0001,
            power_on_hours: 42,
            temperature_sensors: [300, 0, 0, 0, 0, 0, 0, 301],
            ..Default::default()
        };
        let mut b = [0u8; 512];
        s.encode(&mut b).unwrap();
        assert_eq!(&b[1..3], &[0x36, 0x01]);
        assert_eq!(b[3], 100);
        assert_eq!(
            &b[32..48],
            &[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(b[128], 42);
        assert_eq!(&b[214..216], &[0x2D, 0x01]);
        assert_eq!(SmartLog::decode(&b).unwrap(), s);
        let f = FirmwareSlotLog {
            afi: 0x11,
            frs: [*b"0.1.0   ", [0; 8], [0; 8], [0; 8], [0; 8], [0; 8], [0; 8]],
        };
        f.encode(&mut b).unwrap();
        assert_eq!(b[0], 0x11);
        assert_eq!(&b[8..16], b"0.1.0   ");
        assert_eq!(FirmwareSlotLog::decode(&b).unwrap(), f);
    }

    #[test]
    fn changed_namespace_list() {
        let mut out = [0xFFu8; 4096];
        let mut w = LogWindow::new(&mut out, 0);
        ChangedNamespaceList::write(&[1, 3], &mut w);
        assert_eq!(w.finish(), 4096);
        assert_eq!(&out[..12], &[1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
        let ids: Vec<u32> = ChangedNamespaceList::decode(&out).unwrap().collect();
        assert_eq!(ids, vec![1, 3]);
        let many: Vec<u32> = (1..=1025).collect();
        let mut w = LogWindow::new(&mut out, 0);
        ChangedNamespaceList::write(&many, &mut w);
        w.finish();
        assert_eq!(&out[..8], &[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]);
        assert!(ChangedNamespaceList::decode(&out).is_none());
    }

    #[test]
    fn ana_log_bytes_and_rgo() {
        let mut out = [0u8; 128];
        let mut w = LogWindow::new(&mut out, 0);
        AnaLogWriter::header(&mut w, 5, 2);
        AnaLogWriter::group(&mut w, 1, 5, AnaState::Optimized, &[1, 2], false);
        AnaLogWriter::group(&mut w, 2, 5, AnaState::Inaccessible, &[3], false);
        let n = w.finish();
        assert_eq!(n, 16 + 32 + 8 + 32 + 4);
        #[rustfmt::skip]
        let expect: [u8; 92] = [
            5, 0, 0, 0, 0, 0, 0, 0, // change count
            2, 0, // number of descriptors
            0, 0, 0, 0, 0, 0, // reserved
            1, 0, 0, 0, // ANA group 1
            2, 0, 0, 0, // 2 NSIDs
            5, 0, 0, 0, 0, 0, 0, 0, // change count
            0x01, // optimized
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // reserved
            1, 0, 0, 0, 2, 0, 0, 0, // NSIDs 1, 2
            2, 0, 0, 0, // ANA group 2
            1, 0, 0, 0, // 1 NSID
            5, 0, 0, 0, 0, 0, 0, 0, // change count
            0x03, // inaccessible
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // reserved
            3, 0, 0, 0, // NSID 3
        ];
        assert_eq!(&out[..92], &expect);
        let r = AnaLogReader::new(&out[..n]).unwrap();
        assert_eq!(r.header.num_descriptors, 2);
        let groups: Vec<(u32, AnaState, Vec<u32>)> = r
            .map(|g| {
                let (d, ids) = g.unwrap();
                (d.grpid, d.state, ids.iter().collect())
            })
            .collect();
        assert_eq!(
            groups,
            vec![
                (1, AnaState::Optimized, vec![1, 2]),
                (2, AnaState::Inaccessible, vec![3])
            ]
        );
        // RGO: groups only.
        let mut w = LogWindow::new(&mut out, 0);
        AnaLogWriter::header(&mut w, 5, 1);
        AnaLogWriter::group(&mut w, 1, 5, AnaState::NonOptimized, &[1, 2], true);
        assert_eq!(w.finish(), 48);
        assert_eq!(&out[20..24], &[0, 0, 0, 0]);
        // Truncated NSID list and a bad state are errors, not panics.
        let mut bad = expect;
        bad[20] = 200;
        let mut r = AnaLogReader::new(&bad).unwrap();
        assert!(r.next().unwrap().is_err());
        let mut bad = expect;
        bad[32] = 0x7;
        let mut r = AnaLogReader::new(&bad).unwrap();
        assert_eq!(
            r.next().unwrap().unwrap_err(),
            DecodeError::InvalidField {
                field: "ANA state",
                offset: 32
            }
        );
        assert_eq!(AnaState::Change.bits(), 0xF);
        assert_eq!(
            AnaState::Inaccessible.io_status(),
            Some(Status::ASYMMETRIC_ACCESS_INACCESSIBLE)
        );
    }

    #[test]
    fn discovery_log_bytes_and_paging() {
        let nqn = Nqn::new("nqn.2024-01.io.gyre:vol1").unwrap();
        let e = DiscoveryLogEntry::tcp(
            subtype::NVME,
            &nqn,
            "127.0.0.1",
            "4420",
            false,
            1,
            32,
            sectype::NONE,
        );
        let mut b = [0u8; 1024];
        e.encode(&mut b);
        assert_eq!(&b[0..12], &[3, 1, 2, 2, 1, 0, 0xFF, 0xFF, 32, 0, 0, 0]);
        assert_eq!(&b[32..38], b"4420  ");
        assert_eq!(&b[256..280], b"nqn.2024-01.io.gyre:vol1");
        assert_eq!(&b[512..522], b"127.0.0.1 ");
        assert_eq!(b[768], 0);
        let d = DiscoveryLogEntry::decode(&b).unwrap();
        assert_eq!(d, e);
        assert_eq!(d.traddr_str(), "127.0.0.1");
        assert_eq!(d.trsvcid_str(), "4420");
        assert_eq!(d.subnqn().unwrap(), nqn);

        // The whole page (header + 3 entries) read in two windows matches one read.
        let write = |out: &mut [u8], off: u64| {
            let mut w = LogWindow::new(out, off);
            DiscoveryLogWriter::header(&mut w, 9, 3);
            for _ in 0..3 {
                DiscoveryLogWriter::entry(&mut w, &e);
            }
            w.finish()
        };
        let mut whole = vec![0u8; 4096];
        assert_eq!(write(&mut whole, 0), 4096);
        let mut a = vec![0u8; 1500];
        let mut c = vec![0u8; 4096];
        assert_eq!(write(&mut a, 0), 1500);
        assert_eq!(write(&mut c, 1500), 4096 - 1500);
        assert_eq!(&whole[..1500], &a[..]);
        assert_eq!(&whole[1500..], &c[..4096 - 1500]);
        let h = DiscoveryLogHeader::decode(&whole).unwrap();
        assert_eq!((h.genctr, h.numrec, h.recfmt), (9, 3, 0));
    }
}
