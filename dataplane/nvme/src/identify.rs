//! Identify data structures (NVMe Base 2.x "Identify" and the NVM Command Set): the
//! controller and namespace structures, the namespace identification descriptor list and the
//! active namespace list. Each is 4096 bytes on the wire; encoders write into a caller's
//! buffer and zero what they do not set.

use crate::error::{DecodeError, NqnError};
use crate::fabrics::{Nqn, NQN_FIELD_LEN};
use crate::wire::{
    get_array, get_u128, get_u16, get_u32, get_u64, need, need_out, put_bytes, put_u128, put_u16,
    put_u32, put_u64,
};

/// Size of every Identify data structure.
pub const IDENTIFY_DATA_SIZE: usize = 4096;

/// Controller or Namespace Structure values (Identify CDW10.CNS).
pub struct Cns;

impl Cns {
    pub const NAMESPACE: u8 = 0x00;
    pub const CONTROLLER: u8 = 0x01;
    pub const ACTIVE_NAMESPACE_LIST: u8 = 0x02;
    pub const NAMESPACE_ID_DESCRIPTORS: u8 = 0x03;
    pub const NVM_SET_LIST: u8 = 0x04;
    pub const IOCS_NAMESPACE: u8 = 0x05;
    pub const IOCS_CONTROLLER: u8 = 0x06;
    pub const IOCS_ACTIVE_NAMESPACE_LIST: u8 = 0x07;
    pub const IOCS_INDEPENDENT_NAMESPACE: u8 = 0x08;
    pub const ALLOCATED_NAMESPACE_LIST: u8 = 0x10;
    pub const ALLOCATED_NAMESPACE: u8 = 0x11;
    pub const CONTROLLER_LIST_FOR_NAMESPACE: u8 = 0x12;
    pub const CONTROLLER_LIST: u8 = 0x13;
    pub const IO_COMMAND_SET: u8 = 0x1C;
}

/// Command Set Identifiers.
pub mod csi {
    pub const NVM: u8 = 0x00;
    pub const KEY_VALUE: u8 = 0x01;
    pub const ZONED: u8 = 0x02;
}

/// Controller types (Identify Controller CNTRLTYPE).
pub mod cntrltype {
    pub const IO: u8 = 1;
    pub const DISCOVERY: u8 = 2;
    pub const ADMIN: u8 = 3;
}

/// Identify Controller data structure (CNS 01h): the fields a target fills and a host reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentifyController {
    pub vid: u16,
    pub ssvid: u16,
    /// Serial number, space-padded ASCII.
    pub sn: [u8; 20],
    /// Model number, space-padded ASCII.
    pub mn: [u8; 40],
    /// Firmware revision, space-padded ASCII.
    pub fr: [u8; 8],
    pub rab: u8,
    pub ieee: [u8; 3],
    /// Multi-path I/O and namespace sharing (bit 0 multi-port, 1 multi-controller, 3 ANA).
    pub cmic: u8,
    /// Maximum data transfer size, as a power of two of CAP.MPSMIN units (0 = no limit).
    pub mdts: u8,
    pub cntlid: u16,
    pub ver: u32,
    pub rtd3r: u32,
    pub rtd3e: u32,
    /// Optional asynchronous events supported.
    pub oaes: u32,
    pub ctratt: u32,
    pub rrls: u16,
    pub cntrltype: u8,
    pub fguid: [u8; 16],
    pub crdt: [u16; 3],
    pub oacs: u16,
    /// Abort command limit, 0-based.
    pub acl: u8,
    /// Asynchronous event request limit, 0-based.
    pub aerl: u8,
    pub frmw: u8,
    pub lpa: u8,
    /// Error log page entries, 0-based.
    pub elpe: u8,
    /// Number of power states supported, 0-based.
    pub npss: u8,
    pub avscc: u8,
    pub apsta: u8,
    pub wctemp: u16,
    pub cctemp: u16,
    pub tnvmcap: u128,
    pub unvmcap: u128,
    /// Keep alive support granularity in 100 ms units (0 = not supported).
    pub kas: u16,
    /// ANA transition time in seconds.
    pub anatt: u8,
    pub anacap: u8,
    pub anagrpmax: u32,
    pub nanagrpid: u32,
    pub pels: u32,
    /// SQ entry size: required (bits 3:0) and maximum (bits 7:4), log2.
    pub sqes: u8,
    /// CQ entry size: required and maximum, log2.
    pub cqes: u8,
    pub maxcmd: u16,
    /// Number of namespaces (maximum NSID).
    pub nn: u32,
    /// Optional NVM command support.
    pub oncs: u16,
    pub fuses: u16,
    pub fna: u8,
    /// Volatile write cache.
    pub vwc: u8,
    pub awun: u16,
    pub awupf: u16,
    /// I/O command set vendor specific command configuration (formerly NVSCC).
    pub nvscc: u8,
    pub nwpc: u8,
    pub acwu: u16,
    pub ocfs: u16,
    /// SGL support.
    pub sgls: u32,
    pub mnan: u32,
    /// NVM subsystem NQN field (NUL-terminated, 256 bytes).
    pub subnqn: [u8; NQN_FIELD_LEN],
    /// I/O queue command capsule supported size, in 16-byte units.
    pub ioccsz: u32,
    /// I/O queue response capsule supported size, in 16-byte units.
    pub iorcsz: u32,
    /// In-capsule data offset, in 16-byte units.
    pub icdoff: u16,
    pub fcatt: u8,
    /// Maximum SGL data block descriptors (0 = no limit).
    pub msdbd: u8,
    /// Optional fabric commands supported (bit 0: Disconnect).
    pub ofcs: u16,
    /// Discovery controller type (discovery controllers only).
    pub dctype: u8,
    /// Power state descriptor 0.
    pub psd0: [u8; 32],
}

impl Default for IdentifyController {
    fn default() -> Self {
        IdentifyController {
            vid: 0,
            ssvid: 0,
            sn: [b' '; 20],
            mn: [b' '; 40],
            fr: [b' '; 8],
            rab: 0,
            ieee: [0; 3],
            cmic: 0,
            mdts: 0,
            cntlid: 0,
            ver: 0,
            rtd3r: 0,
            rtd3e: 0,
            oaes: 0,
            ctratt: 0,
            rrls: 0,
            cntrltype: 0,
            fguid: [0; 16],
            crdt: [0; 3],
            oacs: 0,
            acl: 0,
            aerl: 0,
            frmw: 0,
            lpa: 0,
            elpe: 0,
            npss: 0,
            avscc: 0,
            apsta: 0,
            wctemp: 0,
            cctemp: 0,
            tnvmcap: 0,
            unvmcap: 0,
            kas: 0,
            anatt: 0,
            anacap: 0,
            anagrpmax: 0,
            nanagrpid: 0,
            pels: 0,
            sqes: 0,
            cqes: 0,
            maxcmd: 0,
            nn: 0,
            oncs: 0,
            fuses: 0,
            fna: 0,
            vwc: 0,
            awun: 0,
            awupf: 0,
            nvscc: 0,
            nwpc: 0,
            acwu: 0,
            ocfs: 0,
            sgls: 0,
            mnan: 0,
            subnqn: [0; NQN_FIELD_LEN],
            ioccsz: 0,
            iorcsz: 0,
            icdoff: 0,
            fcatt: 0,
            msdbd: 0,
            ofcs: 0,
            dctype: 0,
            psd0: [0; 32],
        }
    }
}

/// Identify Controller bit values.
pub mod ctrl {
    pub const CMIC_MULTI_PORT: u8 = 1 << 0;
    pub const CMIC_MULTI_CONTROLLER: u8 = 1 << 1;
    pub const CMIC_ANA_REPORTING: u8 = 1 << 3;
    pub const OAES_NAMESPACE_ATTRIBUTE: u32 = 1 << 8;
    pub const OAES_FIRMWARE_ACTIVATION: u32 = 1 << 9;
    pub const OAES_ANA_CHANGE: u32 = 1 << 11;
    pub const OAES_DISCOVERY_LOG_CHANGE: u32 = 1 << 31;
    pub const CTRATT_HOST_ID_128: u32 = 1 << 0;
    pub const LPA_SMART_PER_NAMESPACE: u8 = 1 << 0;
    pub const LPA_COMMANDS_EFFECTS: u8 = 1 << 1;
    pub const LPA_EXTENDED_DATA: u8 = 1 << 2;
    pub const ONCS_COMPARE: u16 = 1 << 0;
    pub const ONCS_WRITE_UNCORRECTABLE: u16 = 1 << 1;
    pub const ONCS_DSM: u16 = 1 << 2;
    pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;
    pub const ONCS_SAVE_FEATURES: u16 = 1 << 4;
    pub const ONCS_RESERVATIONS: u16 = 1 << 5;
    pub const ONCS_TIMESTAMP: u16 = 1 << 6;
    pub const ONCS_VERIFY: u16 = 1 << 7;
    pub const ONCS_COPY: u16 = 1 << 8;
    pub const FUSES_COMPARE_AND_WRITE: u16 = 1 << 0;
    pub const VWC_PRESENT: u8 = 1 << 0;
    /// VWC bits 2:1 = 11b: Flush with NSID FFFFFFFFh is supported.
    pub const VWC_FLUSH_BROADCAST: u8 = 0x3 << 1;
    /// SGLS bits 1:0 = 01b: SGLs supported, no alignment requirement.
    pub const SGLS_SUPPORTED: u32 = 0x1;
    pub const SGLS_KEYED: u32 = 1 << 2;
    pub const SGLS_OFFSET: u32 = 1 << 20;
    pub const SGLS_TRANSPORT_DATA_BLOCK: u32 = 1 << 21;
    pub const ANACAP_OPTIMIZED: u8 = 1 << 0;
    pub const ANACAP_NON_OPTIMIZED: u8 = 1 << 1;
    pub const ANACAP_INACCESSIBLE: u8 = 1 << 2;
    pub const ANACAP_PERSISTENT_LOSS: u8 = 1 << 3;
    pub const ANACAP_CHANGE: u8 = 1 << 4;
    pub const ANACAP_GRPID_NOT_CHANGING: u8 = 1 << 6;
    pub const OFCS_DISCONNECT: u16 = 1 << 0;
}

impl IdentifyController {
    pub const SUBNQN_OFFSET: usize = 768;
    pub const FABRICS_OFFSET: usize = 1792;

    /// Sets SUBNQN from a validated NQN.
    pub fn set_subnqn(&mut self, nqn: &Nqn) {
        self.subnqn = nqn.to_field();
    }

    /// SUBNQN as an NQN.
    pub fn subnqn(&self) -> Result<Nqn, NqnError> {
        Nqn::from_field(&self.subnqn)
    }

    /// Maximum data transfer size in bytes given the controller's minimum page size
    /// (`4096 << CAP.MPSMIN`); `None` = no limit.
    pub fn max_transfer_bytes(&self, min_page_size: u64) -> Option<u64> {
        if self.mdts == 0 {
            None
        } else {
            min_page_size.checked_shl(self.mdts as u32)
        }
    }

    /// Writes the 4096-byte structure.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, DecodeError> {
        need_out(out, IDENTIFY_DATA_SIZE)?;
        let b = &mut out[..IDENTIFY_DATA_SIZE];
        b.fill(0);
        put_u16(b, 0, self.vid);
        put_u16(b, 2, self.ssvid);
        put_bytes(b, 4, &self.sn);
        put_bytes(b, 24, &self.mn);
        put_bytes(b, 64, &self.fr);
        b[72] = self.rab;
        put_bytes(b, 73, &self.ieee);
        b[76] = self.cmic;
        b[77] = self.mdts;
        put_u16(b, 78, self.cntlid);
        put_u32(b, 80, self.ver);
        put_u32(b, 84, self.rtd3r);
        put_u32(b, 88, self.rtd3e);
        put_u32(b, 92, self.oaes);
        put_u32(b, 96, self.ctratt);
        put_u16(b, 100, self.rrls);
        b[111] = self.cntrltype;
        put_bytes(b, 112, &self.fguid);
        put_u16(b, 128, self.crdt[0]);
        put_u16(b, 130, self.crdt[1]);
        put_u16(b, 132, self.crdt[2]);
        put_u16(b, 256, self.oacs);
        b[258] = self.acl;
        b[259] = self.aerl;
        b[260] = self.frmw;
        b[261] = self.lpa;
        b[262] = self.elpe;
        b[263] = self.npss;
        b[264] = self.avscc;
        b[265] = self.apsta;
        put_u16(b, 266, self.wctemp);
        put_u16(b, 268, self.cctemp);
        put_u128(b, 280, self.tnvmcap);
        put_u128(b, 296, self.unvmcap);
        put_u16(b, 320, self.kas);
        b[342] = self.anatt;
        b[343] = self.anacap;
        put_u32(b, 344, self.anagrpmax);
        put_u32(b, 348, self.nanagrpid);
        put_u32(b, 352, self.pels);
        b[512] = self.sqes;
        b[513] = self.cqes;
        put_u16(b, 514, self.maxcmd);
        put_u32(b, 516, self.nn);
        put_u16(b, 520, self.oncs);
        put_u16(b, 522, self.fuses);
        b[524] = self.fna;
        b[525] = self.vwc;
        put_u16(b, 526, self.awun);
        put_u16(b, 528, self.awupf);
        b[530] = self.nvscc;
        b[531] = self.nwpc;
        put_u16(b, 532, self.acwu);
        put_u16(b, 534, self.ocfs);
        put_u32(b, 536, self.sgls);
        put_u32(b, 540, self.mnan);
        put_bytes(b, Self::SUBNQN_OFFSET, &self.subnqn);
        put_u32(b, 1792, self.ioccsz);
        put_u32(b, 1796, self.iorcsz);
        put_u16(b, 1800, self.icdoff);
        b[1802] = self.fcatt;
        b[1803] = self.msdbd;
        put_u16(b, 1804, self.ofcs);
        b[1806] = self.dctype;
        put_bytes(b, 2048, &self.psd0);
        Ok(IDENTIFY_DATA_SIZE)
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        need(buf, IDENTIFY_DATA_SIZE)?;
        let b = buf;
        Ok(IdentifyController {
            vid: get_u16(b, 0),
            ssvid: get_u16(b, 2),
            sn: get_array(b, 4),
            mn: get_array(b, 24),
            fr: get_array(b, 64),
            rab: b[72],
            ieee: get_array(b, 73),
            cmic: b[76],
            mdts: b[77],
            cntlid: get_u16(b, 78),
            ver: get_u32(b, 80),
            rtd3r: get_u32(b, 84),
            rtd3e: get_u32(b, 88),
            oaes: get_u32(b, 92),
            ctratt: get_u32(b, 96),
            rrls: get_u16(b, 100),
            cntrltype: b[111],
            fguid: get_array(b, 112),
            crdt: [get_u16(b, 128), get_u16(b, 130), get_u16(b, 132)],
            oacs: get_u16(b, 256),
            acl: b[258],
            aerl: b[259],
            frmw: b[260],
            lpa: b[261],
            elpe: b[262],
            npss: b[263],
            avscc: b[264],
            apsta: b[265],
            wctemp: get_u16(b, 266),
            cctemp: get_u16(b, 268),
            tnvmcap: get_u128(b, 280),
            unvmcap: get_u128(b, 296),
            kas: get_u16(b, 320),
            anatt: b[342],
            anacap: b[343],
            anagrpmax: get_u32(b, 344),
            nanagrpid: get_u32(b, 348),
            pels: get_u32(b, 352),
            sqes: b[512],
            cqes: b[513],
            maxcmd: get_u16(b, 514),
            nn: get_u32(b, 516),
            oncs: get_u16(b, 520),
            fuses: get_u16(b, 522),
            fna: b[524],
            vwc: b[525],
            awun: get_u16(b, 526),
            awupf: get_u16(b, 528),
            nvscc: b[530],
            nwpc: b[531],
            acwu: get_u16(b, 532),
            ocfs: get_u16(b, 534),
            sgls: get_u32(b, 536),
            mnan: get_u32(b, 540),
            subnqn: get_array(b, Self::SUBNQN_OFFSET),
            ioccsz: get_u32(b, 1792),
            iorcsz: get_u32(b, 1796),
            icdoff: get_u16(b, 1800),
            fcatt: b[1802],
            msdbd: b[1803],
            ofcs: get_u16(b, 1804),
            dctype: b[1806],
            psd0: get_array(b, 2048),
        })
    }
}

/// An LBA format descriptor (4 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LbaFormat {
    /// Metadata size in bytes (bits 15:0).
    pub ms: u16,
    /// LBA data size as a power of two (bits 23:16); 9 = 512 bytes, 12 = 4096.
    pub lbads: u8,
    /// Relative performance (bits 25:24).
    pub rp: u8,
}

impl LbaFormat {
    pub const fn from_u32(v: u32) -> Self {
        LbaFormat {
            ms: v as u16,
            lbads: (v >> 16) as u8,
            rp: ((v >> 24) & 0x3) as u8,
        }
    }

    pub const fn to_u32(self) -> u32 {
        (self.ms as u32) | ((self.lbads as u32) << 16) | (((self.rp & 0x3) as u32) << 24)
    }

    /// Block size in bytes, if LBADS is in the valid range (2^9 ..= 2^31).
    pub fn block_size(self) -> Option<u32> {
        (9..=31).contains(&self.lbads).then(|| 1u32 << self.lbads)
    }
}

/// Number of LBA format descriptors in Identify Namespace.
pub const MAX_LBA_FORMATS: usize = 64;

/// Identify Namespace data structure for the NVM command set (CNS 00h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentifyNamespace {
    pub nsze: u64,
    pub ncap: u64,
    pub nuse: u64,
    pub nsfeat: u8,
    /// Number of LBA formats, 0-based.
    pub nlbaf: u8,
    /// Formatted LBA size: index bits 3:0 (low) and 6:5 (high), bit 4 extended metadata.
    pub flbas: u8,
    pub mc: u8,
    pub dpc: u8,
    pub dps: u8,
    pub nmic: u8,
    pub rescap: u8,
    pub fpi: u8,
    pub dlfeat: u8,
    pub nawun: u16,
    pub nawupf: u16,
    pub nacwu: u16,
    pub nabsn: u16,
    pub nabo: u16,
    pub nabspf: u16,
    pub noiob: u16,
    pub nvmcap: u128,
    pub npwg: u16,
    pub npwa: u16,
    pub npdg: u16,
    pub npda: u16,
    pub nows: u16,
    pub mssrl: u16,
    pub mcl: u32,
    pub msrc: u8,
    pub anagrpid: u32,
    pub nsattr: u8,
    pub nvmsetid: u16,
    pub endgid: u16,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub lbaf: [LbaFormat; MAX_LBA_FORMATS],
}

impl Default for IdentifyNamespace {
    fn default() -> Self {
        IdentifyNamespace {
            nsze: 0,
            ncap: 0,
            nuse: 0,
            nsfeat: 0,
            nlbaf: 0,
            flbas: 0,
            mc: 0,
            dpc: 0,
            dps: 0,
            nmic: 0,
            rescap: 0,
            fpi: 0,
            dlfeat: 0,
            nawun: 0,
            nawupf: 0,
            nacwu: 0,
            nabsn: 0,
            nabo: 0,
            nabspf: 0,
            noiob: 0,
            nvmcap: 0,
            npwg: 0,
            npwa: 0,
            npdg: 0,
            npda: 0,
            nows: 0,
            mssrl: 0,
            mcl: 0,
            msrc: 0,
            anagrpid: 0,
            nsattr: 0,
            nvmsetid: 0,
            endgid: 0,
            nguid: [0; 16],
            eui64: [0; 8],
            lbaf: [LbaFormat::default(); MAX_LBA_FORMATS],
        }
    }
}

/// Identify Namespace bit values.
pub mod ns {
    pub const NSFEAT_THIN: u8 = 1 << 0;
    pub const NSFEAT_NATOMIC: u8 = 1 << 1;
    pub const NSFEAT_DULBE: u8 = 1 << 2;
    pub const NSFEAT_IO_OPT: u8 = 1 << 4;
    pub const NMIC_SHARED: u8 = 1 << 0;
    /// DLFEAT bits 2:0 = 001b: deallocated blocks read as zeroes.
    pub const DLFEAT_READ_ZEROES: u8 = 0x1;
    /// DLFEAT bit 3: Write Zeroes with DEAC deallocates.
    pub const DLFEAT_WRITE_ZEROES_DEALLOCATES: u8 = 1 << 3;
    pub const NSATTR_WRITE_PROTECTED: u8 = 1 << 0;
}

impl IdentifyNamespace {
    /// Index of the formatted LBA format (FLBAS bits 3:0 and 6:5).
    pub fn formatted_lba_index(&self) -> usize {
        ((self.flbas & 0xF) as usize) | ((((self.flbas >> 5) & 0x3) as usize) << 4)
    }

    /// Sets FLBAS to select LBA format `index` (0..64).
    pub fn set_formatted_lba_index(&mut self, index: usize) {
        let index = index.min(MAX_LBA_FORMATS - 1) as u8;
        self.flbas = (self.flbas & 0x10) | (index & 0xF) | ((index >> 4) << 5);
    }

    /// The block size of the formatted LBA format.
    pub fn block_size(&self) -> Option<u32> {
        self.lbaf
            .get(self.formatted_lba_index())
            .and_then(|f| f.block_size())
    }

    pub fn encode(&self, out: &mut [u8]) -> Result<usize, DecodeError> {
        need_out(out, IDENTIFY_DATA_SIZE)?;
        let b = &mut out[..IDENTIFY_DATA_SIZE];
        b.fill(0);
        put_u64(b, 0, self.nsze);
        put_u64(b, 8, self.ncap);
        put_u64(b, 16, self.nuse);
        b[24] = self.nsfeat;
        b[25] = self.nlbaf;
        b[26] = self.flbas;
        b[27] = self.mc;
        b[28] = self.dpc;
        b[29] = self.dps;
        b[30] = self.nmic;
        b[31] = self.rescap;
        b[32] = self.fpi;
        b[33] = self.dlfeat;
        put_u16(b, 34, self.nawun);
        put_u16(b, 36, self.nawupf);
        put_u16(b, 38, self.nacwu);
        put_u16(b, 40, self.nabsn);
        put_u16(b, 42, self.nabo);
        put_u16(b, 44, self.nabspf);
        put_u16(b, 46, self.noiob);
        put_u128(b, 48, self.nvmcap);
        put_u16(b, 64, self.npwg);
        put_u16(b, 66, self.npwa);
        put_u16(b, 68, self.npdg);
        put_u16(b, 70, self.npda);
        put_u16(b, 72, self.nows);
        put_u16(b, 74, self.mssrl);
        put_u32(b, 76, self.mcl);
        b[80] = self.msrc;
        put_u32(b, 92, self.anagrpid);
        b[99] = self.nsattr;
        put_u16(b, 100, self.nvmsetid);
        put_u16(b, 102, self.endgid);
        put_bytes(b, 104, &self.nguid);
        put_bytes(b, 120, &self.eui64);
        for (i, f) in self.lbaf.iter().enumerate() {
            put_u32(b, 128 + 4 * i, f.to_u32());
        }
        Ok(IDENTIFY_DATA_SIZE)
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        need(buf, IDENTIFY_DATA_SIZE)?;
        let b = buf;
        let mut lbaf = [LbaFormat::default(); MAX_LBA_FORMATS];
        for (i, f) in lbaf.iter_mut().enumerate() {
            *f = LbaFormat::from_u32(get_u32(b, 128 + 4 * i));
        }
        Ok(IdentifyNamespace {
            nsze: get_u64(b, 0),
            ncap: get_u64(b, 8),
            nuse: get_u64(b, 16),
            nsfeat: b[24],
            nlbaf: b[25],
            flbas: b[26],
            mc: b[27],
            dpc: b[28],
            dps: b[29],
            nmic: b[30],
            rescap: b[31],
            fpi: b[32],
            dlfeat: b[33],
            nawun: get_u16(b, 34),
            nawupf: get_u16(b, 36),
            nacwu: get_u16(b, 38),
            nabsn: get_u16(b, 40),
            nabo: get_u16(b, 42),
            nabspf: get_u16(b, 44),
            noiob: get_u16(b, 46),
            nvmcap: get_u128(b, 48),
            npwg: get_u16(b, 64),
            npwa: get_u16(b, 66),
            npdg: get_u16(b, 68),
            npda: get_u16(b, 70),
            nows: get_u16(b, 72),
            mssrl: get_u16(b, 74),
            mcl: get_u32(b, 76),
            msrc: b[80],
            anagrpid: get_u32(b, 92),
            nsattr: b[99],
            nvmsetid: get_u16(b, 100),
            endgid: get_u16(b, 102),
            nguid: get_array(b, 104),
            eui64: get_array(b, 120),
            lbaf,
        })
    }
}

/// One namespace identification descriptor (Identify CNS 03h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsIdDescriptor {
    /// NIDT 1: IEEE EUI-64 (8 bytes).
    Eui64([u8; 8]),
    /// NIDT 2: NGUID (16 bytes).
    Nguid([u8; 16]),
    /// NIDT 3: UUID (16 bytes).
    Uuid([u8; 16]),
    /// NIDT 4: Command Set Identifier (1 byte).
    Csi(u8),
    /// A type this code does not know, skipped over.
    Unknown { nidt: u8, nidl: u8 },
}

impl NsIdDescriptor {
    pub const NIDT_EUI64: u8 = 1;
    pub const NIDT_NGUID: u8 = 2;
    pub const NIDT_UUID: u8 = 3;
    pub const NIDT_CSI: u8 = 4;

    fn value(&self) -> (u8, &[u8]) {
        match self {
            NsIdDescriptor::Eui64(v) => (Self::NIDT_EUI64, v),
            NsIdDescriptor::Nguid(v) => (Self::NIDT_NGUID, v),
            NsIdDescriptor::Uuid(v) => (Self::NIDT_UUID, v),
            NsIdDescriptor::Csi(v) => (Self::NIDT_CSI, std::slice::from_ref(v)),
            NsIdDescriptor::Unknown { nidt, .. } => (*nidt, &[]),
        }
    }
}

/// The namespace identification descriptor list (4096 bytes, ends with a zero NIDT).
pub struct NsIdDescriptorList;

impl NsIdDescriptorList {
    /// Writes `descs` (skipping `Unknown` ones) and zeroes the rest of the 4096 bytes.
    pub fn encode(descs: &[NsIdDescriptor], out: &mut [u8]) -> Result<usize, DecodeError> {
        need_out(out, IDENTIFY_DATA_SIZE)?;
        let b = &mut out[..IDENTIFY_DATA_SIZE];
        b.fill(0);
        let mut at = 0usize;
        for d in descs {
            if matches!(d, NsIdDescriptor::Unknown { .. }) {
                continue;
            }
            let (nidt, v) = d.value();
            if at + 4 + v.len() > IDENTIFY_DATA_SIZE - 4 {
                return Err(DecodeError::BufferTooSmall {
                    needed: at + 4 + v.len() + 4,
                    got: IDENTIFY_DATA_SIZE,
                });
            }
            b[at] = nidt;
            b[at + 1] = v.len() as u8;
            put_bytes(b, at + 4, v);
            at += 4 + v.len();
        }
        Ok(IDENTIFY_DATA_SIZE)
    }

    /// Iterates over the descriptors in `buf` (up to 4096 bytes).
    pub fn decode(buf: &[u8]) -> NsIdDescriptorIter<'_> {
        NsIdDescriptorIter {
            buf: &buf[..buf.len().min(IDENTIFY_DATA_SIZE)],
            at: 0,
            done: false,
        }
    }
}

/// Iterator over a namespace identification descriptor list.
pub struct NsIdDescriptorIter<'a> {
    buf: &'a [u8],
    at: usize,
    done: bool,
}

impl Iterator for NsIdDescriptorIter<'_> {
    type Item = Result<NsIdDescriptor, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let at = self.at;
        let (nidt, nidl) = match (self.buf.get(at), self.buf.get(at + 1)) {
            (Some(&t), Some(&l)) => (t, l),
            _ => {
                self.done = true;
                return None;
            }
        };
        if nidt == 0 {
            self.done = true;
            return None;
        }
        let start = at + 4;
        let end = start + nidl as usize;
        let Some(v) = self.buf.get(start..end) else {
            self.done = true;
            return Some(Err(DecodeError::Truncated {
                needed: end,
                got: self.buf.len(),
            }));
        };
        self.at = end;
        let bad = DecodeError::InvalidField {
            field: "NIDL",
            offset: at + 1,
        };
        let d = match nidt {
            NsIdDescriptor::NIDT_EUI64 => <[u8; 8]>::try_from(v).map(NsIdDescriptor::Eui64),
            NsIdDescriptor::NIDT_NGUID => <[u8; 16]>::try_from(v).map(NsIdDescriptor::Nguid),
            NsIdDescriptor::NIDT_UUID => <[u8; 16]>::try_from(v).map(NsIdDescriptor::Uuid),
            NsIdDescriptor::NIDT_CSI => <[u8; 1]>::try_from(v).map(|c| NsIdDescriptor::Csi(c[0])),
            _ => Ok(NsIdDescriptor::Unknown { nidt, nidl }),
        };
        match d {
            Ok(d) => Some(Ok(d)),
            Err(_) => {
                self.done = true;
                Some(Err(bad))
            }
        }
    }
}

/// The active namespace list (CNS 02h and 07h): up to 1024 NSIDs in increasing order, ended
/// by a zero entry.
pub struct ActiveNamespaceList;

impl ActiveNamespaceList {
    pub const MAX_ENTRIES: usize = 1024;

    /// Writes the NSIDs of `nsids` (increasing) that are greater than `after` (the command's
    /// NSID), at most 1024, and zeroes the rest. Returns how many were written.
    pub fn encode(
        nsids: impl IntoIterator<Item = u32>,
        after: u32,
        out: &mut [u8],
    ) -> Result<usize, DecodeError> {
        need_out(out, IDENTIFY_DATA_SIZE)?;
        let b = &mut out[..IDENTIFY_DATA_SIZE];
        b.fill(0);
        let mut n = 0;
        for id in nsids.into_iter().filter(|&id| id > after && id != 0) {
            if n == Self::MAX_ENTRIES {
                break;
            }
            put_u32(b, 4 * n, id);
            n += 1;
        }
        Ok(n)
    }

    /// The NSIDs in `buf`, up to the first zero.
    pub fn decode(buf: &[u8]) -> impl Iterator<Item = u32> + '_ {
        buf.chunks_exact(4)
            .take(Self::MAX_ENTRIES)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .take_while(|&id| id != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ascii_padded;

    fn sample_controller() -> IdentifyController {
        let mut c = IdentifyController {
            vid: 0x1D1D,
            ssvid: 0x1D1D,
            sn: ascii_padded("GYRE0001"),
            mn: ascii_padded("Gyre NVMe-oF"),
            fr: ascii_padded("0.1.0"),
            cmic: ctrl::CMIC_MULTI_CONTROLLER | ctrl::CMIC_ANA_REPORTING,
            mdts: 5,
            cntlid: 0x0001,
            ver: 0x0002_0000,
            oaes: ctrl::OAES_NAMESPACE_ATTRIBUTE | ctrl::OAES_ANA_CHANGE,
            ctratt: ctrl::CTRATT_HOST_ID_128,
            cntrltype: cntrltype::IO,
            aerl: 3,
            lpa: ctrl::LPA_EXTENDED_DATA,
            elpe: 127,
            kas: 10,
            anatt: 10,
            anacap: ctrl::ANACAP_OPTIMIZED | ctrl::ANACAP_INACCESSIBLE,
            anagrpmax: 32,
            nanagrpid: 32,
            sqes: 0x66,
            cqes: 0x44,
            maxcmd: 128,
            nn: 32,
            oncs: ctrl::ONCS_DSM | ctrl::ONCS_WRITE_ZEROES,
            vwc: ctrl::VWC_PRESENT | ctrl::VWC_FLUSH_BROADCAST,
            sgls: ctrl::SGLS_SUPPORTED | ctrl::SGLS_OFFSET | ctrl::SGLS_TRANSPORT_DATA_BLOCK,
            mnan: 32,
            ioccsz: 260,
            iorcsz: 1,
            msdbd: 1,
            ofcs: ctrl::OFCS_DISCONNECT,
            ..Default::default()
        };
        c.set_subnqn(&Nqn::new("nqn.2024-01.io.gyre:vol1").unwrap());
        c
    }

    #[test]
    fn identify_controller_offsets() {
        let c = sample_controller();
        let mut out = [0xEEu8; 4096];
        assert_eq!(c.encode(&mut out).unwrap(), 4096);
        assert_eq!(&out[0..4], &[0x1D, 0x1D, 0x1D, 0x1D]);
        assert_eq!(&out[4..12], b"GYRE0001");
        assert_eq!(out[23], b' ');
        assert_eq!(&out[24..36], b"Gyre NVMe-oF");
        assert_eq!(&out[64..72], b"0.1.0   ");
        assert_eq!(out[76], 0x0A); // CMIC
        assert_eq!(out[77], 5); // MDTS
        assert_eq!(&out[78..80], &[0x01, 0x00]); // CNTLID
        assert_eq!(&out[80..84], &[0x00, 0x00, 0x02, 0x00]); // VER 2.0
        assert_eq!(&out[92..96], &[0x00, 0x09, 0x00, 0x00]); // OAES bits 8, 11
        assert_eq!(out[111], 1); // CNTRLTYPE
        assert_eq!(out[259], 3); // AERL
        assert_eq!(&out[320..322], &[10, 0]); // KAS
        assert_eq!(out[342], 10); // ANATT
        assert_eq!(&out[344..348], &[32, 0, 0, 0]); // ANAGRPMAX
        assert_eq!((out[512], out[513]), (0x66, 0x44)); // SQES, CQES
        assert_eq!(&out[516..520], &[32, 0, 0, 0]); // NN
        assert_eq!(&out[520..522], &[0x0C, 0x00]); // ONCS
        assert_eq!(out[525], 0x07); // VWC
        assert_eq!(&out[536..540], &[0x01, 0x00, 0x30, 0x00]); // SGLS bits 0, 20, 21
        assert_eq!(&out[768..792], b"nqn.2024-01.io.gyre:vol1");
        assert_eq!(out[792], 0);
        assert_eq!(&out[1792..1796], &[0x04, 0x01, 0, 0]); // IOCCSZ 260
        assert_eq!(&out[1796..1800], &[1, 0, 0, 0]); // IORCSZ 1
        assert_eq!(out[1803], 1); // MSDBD
        assert_eq!(&out[1804..1806], &[1, 0]); // OFCS
        assert!(out[1807..].iter().all(|&b| b == 0));
        let d = IdentifyController::decode(&out).unwrap();
        assert_eq!(d, c);
        assert_eq!(d.subnqn().unwrap().as_str(), "nqn.2024-01.io.gyre:vol1");
        assert_eq!(crate::wire::ascii_trimmed(&d.mn), "Gyre NVMe-oF");
        assert_eq!(d.max_transfer_bytes(4096), Some(128 * 1024));
        assert!(IdentifyController::decode(&out[..4095]).is_err());
        assert!(c.encode(&mut [0u8; 100]).is_err());
    }

    #[test]
    fn identify_namespace_offsets() {
        let mut n = IdentifyNamespace {
            nsze: 0x20_0000,
            ncap: 0x20_0000,
            nuse: 0x1000,
            nsfeat: ns::NSFEAT_THIN,
            nlbaf: 1,
            nmic: ns::NMIC_SHARED,
            dlfeat: ns::DLFEAT_READ_ZEROES,
            anagrpid: 1,
            nguid: [0xAB; 16],
            eui64: [0xCD; 8],
            ..Default::default()
        };
        n.lbaf[0] = LbaFormat {
            ms: 0,
            lbads: 9,
            rp: 0,
        };
        n.lbaf[1] = LbaFormat {
            ms: 8,
            lbads: 12,
            rp: 1,
        };
        n.set_formatted_lba_index(1);
        let mut out = [0u8; 4096];
        n.encode(&mut out).unwrap();
        assert_eq!(&out[0..8], &[0, 0, 0x20, 0, 0, 0, 0, 0]);
        assert_eq!(&out[16..24], &[0, 0x10, 0, 0, 0, 0, 0, 0]);
        assert_eq!((out[24], out[25], out[26]), (1, 1, 1));
        assert_eq!(out[30], 1);
        assert_eq!(out[33], 1);
        assert_eq!(&out[92..96], &[1, 0, 0, 0]); // ANAGRPID
        assert_eq!(&out[104..120], &[0xAB; 16]);
        assert_eq!(&out[120..128], &[0xCD; 8]);
        assert_eq!(&out[128..132], &[0, 0, 9, 0]); // LBAF0
        assert_eq!(&out[132..136], &[8, 0, 12, 1]); // LBAF1
        let d = IdentifyNamespace::decode(&out).unwrap();
        assert_eq!(d, n);
        assert_eq!(d.block_size(), Some(4096));
        n.set_formatted_lba_index(17);
        assert_eq!(n.flbas, 0x21);
        assert_eq!(n.formatted_lba_index(), 17);
    }

    #[test]
    fn ns_id_descriptors() {
        let descs = [
            NsIdDescriptor::Eui64([1, 2, 3, 4, 5, 6, 7, 8]),
            NsIdDescriptor::Nguid([0x11; 16]),
            NsIdDescriptor::Uuid([0x22; 16]),
            NsIdDescriptor::Csi(0),
        ];
        let mut out = [0xFFu8; 4096];
        NsIdDescriptorList::encode(&descs, &mut out).unwrap();
        assert_eq!(&out[0..4], &[1, 8, 0, 0]);
        assert_eq!(&out[4..12], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&out[12..16], &[2, 16, 0, 0]);
        assert_eq!(&out[32..36], &[3, 16, 0, 0]);
        assert_eq!(&out[52..56], &[4, 1, 0, 0]);
        assert_eq!(out[56], 0);
        assert_eq!(&out[57..61], &[0, 0, 0, 0]); // terminator
        let got: Vec<_> = NsIdDescriptorList::decode(&out)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got, descs);
        // An EUI-64 descriptor with NIDL 4 is invalid.
        let mut bad = [0u8; 4096];
        bad[0] = 1;
        bad[1] = 4;
        let e = NsIdDescriptorList::decode(&bad)
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!(
            e,
            DecodeError::InvalidField {
                field: "NIDL",
                offset: 1
            }
        );
        // A descriptor running off the end.
        let mut tail = [0u8; 8];
        tail[0] = 2;
        tail[1] = 16;
        assert!(NsIdDescriptorList::decode(&tail).next().unwrap().is_err());
    }

    #[test]
    fn active_namespace_list() {
        let mut out = [0u8; 4096];
        let n = ActiveNamespaceList::encode([1, 2, 5, 9], 1, &mut out).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            &out[0..16],
            &[2, 0, 0, 0, 5, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]
        );
        let got: Vec<u32> = ActiveNamespaceList::decode(&out).collect();
        assert_eq!(got, vec![2, 5, 9]);
        let n = ActiveNamespaceList::encode(1..=2000, 0, &mut out).unwrap();
        assert_eq!(n, 1024);
        assert_eq!(ActiveNamespaceList::decode(&out).last(), Some(1024));
    }
}

/// I/O Command Set specific Identify Controller data for the NVM command set (CNS 06h,
/// CSI 00h): size limits for Verify, Write Zeroes, Write Uncorrectable and Dataset
/// Management. Sizes are powers of two in units of CAP.MPSMIN; 0 = no limit / not reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdentifyNvmController {
    /// Verify size limit.
    pub vsl: u8,
    /// Write Zeroes size limit.
    pub wzsl: u8,
    /// Write Uncorrectable size limit.
    pub wusl: u8,
    /// Dataset Management ranges limit (0 = 256).
    pub dmrl: u8,
    /// Dataset Management range size limit, in logical blocks.
    pub dmrsl: u32,
    /// Dataset Management size limit, in logical blocks.
    pub dmsl: u64,
}

impl IdentifyNvmController {
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, DecodeError> {
        need_out(out, IDENTIFY_DATA_SIZE)?;
        let b = &mut out[..IDENTIFY_DATA_SIZE];
        b.fill(0);
        b[0] = self.vsl;
        b[1] = self.wzsl;
        b[2] = self.wusl;
        b[3] = self.dmrl;
        put_u32(b, 4, self.dmrsl);
        put_u64(b, 8, self.dmsl);
        Ok(IDENTIFY_DATA_SIZE)
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        need(buf, 16)?;
        Ok(IdentifyNvmController {
            vsl: buf[0],
            wzsl: buf[1],
            wusl: buf[2],
            dmrl: buf[3],
            dmrsl: get_u32(buf, 4),
            dmsl: get_u64(buf, 8),
        })
    }
}

/// I/O Command Set Independent Identify Namespace data (CNS 08h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdentifyNamespaceIndependent {
    pub nsfeat: u8,
    pub nmic: u8,
    pub rescap: u8,
    pub fpi: u8,
    pub anagrpid: u32,
    pub nsattr: u8,
    pub nvmsetid: u16,
    pub endgid: u16,
    /// Namespace status: bit 0 = namespace ready.
    pub nstat: u8,
}

impl IdentifyNamespaceIndependent {
    pub const NSTAT_READY: u8 = 1 << 0;

    pub fn encode(&self, out: &mut [u8]) -> Result<usize, DecodeError> {
        need_out(out, IDENTIFY_DATA_SIZE)?;
        let b = &mut out[..IDENTIFY_DATA_SIZE];
        b.fill(0);
        b[0] = self.nsfeat;
        b[1] = self.nmic;
        b[2] = self.rescap;
        b[3] = self.fpi;
        put_u32(b, 4, self.anagrpid);
        b[8] = self.nsattr;
        put_u16(b, 10, self.nvmsetid);
        put_u16(b, 12, self.endgid);
        b[14] = self.nstat;
        Ok(IDENTIFY_DATA_SIZE)
    }

    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        need(buf, 15)?;
        Ok(IdentifyNamespaceIndependent {
            nsfeat: buf[0],
            nmic: buf[1],
            rescap: buf[2],
            fpi: buf[3],
            anagrpid: get_u32(buf, 4),
            nsattr: buf[8],
            nvmsetid: get_u16(buf, 10),
            endgid: get_u16(buf, 12),
            nstat: buf[14],
        })
    }
}

#[cfg(test)]
mod iocs_tests {
    use super::*;

    #[test]
    fn nvm_controller_and_independent_namespace() {
        let c = IdentifyNvmController {
            wzsl: 5,
            dmrl: 0,
            dmrsl: 0x1_0000,
            ..Default::default()
        };
        let mut out = [0xFFu8; 4096];
        c.encode(&mut out).unwrap();
        assert_eq!(
            &out[..16],
            &[0, 5, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert!(out[16..].iter().all(|&b| b == 0));
        assert_eq!(IdentifyNvmController::decode(&out).unwrap(), c);
        let n = IdentifyNamespaceIndependent {
            nmic: 1,
            anagrpid: 2,
            nstat: IdentifyNamespaceIndependent::NSTAT_READY,
            ..Default::default()
        };
        n.encode(&mut out).unwrap();
        assert_eq!(
            &out[..16],
            &[0, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        );
        assert_eq!(IdentifyNamespaceIndependent::decode(&out).unwrap(), n);
        assert!(IdentifyNamespaceIndependent::decode(&out[..14]).is_err());
    }
}
