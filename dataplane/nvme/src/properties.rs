//! Controller properties (NVMe Base 2.x, "Controller Properties"): on PCIe these are MMIO
//! registers, on fabrics they are read and written with Property Get/Set at these offsets.

/// Property offsets.
pub mod offset {
    /// Controller Capabilities (8 bytes).
    pub const CAP: u32 = 0x00;
    /// Version (4 bytes).
    pub const VS: u32 = 0x08;
    /// Interrupt Mask Set (PCIe only).
    pub const INTMS: u32 = 0x0C;
    /// Interrupt Mask Clear (PCIe only).
    pub const INTMC: u32 = 0x10;
    /// Controller Configuration (4 bytes).
    pub const CC: u32 = 0x14;
    /// Controller Status (4 bytes).
    pub const CSTS: u32 = 0x1C;
    /// NVM Subsystem Reset (4 bytes).
    pub const NSSR: u32 = 0x20;
    /// Admin Queue Attributes (PCIe only).
    pub const AQA: u32 = 0x24;
    /// Admin SQ base address (PCIe only).
    pub const ASQ: u32 = 0x28;
    /// Admin CQ base address (PCIe only).
    pub const ACQ: u32 = 0x30;
}

/// The value written to NSSR to request an NVM subsystem reset ("NVMe").
pub const NSSR_RESET_VALUE: u32 = 0x4E56_4D65;

/// Controller Capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cap(pub u64);

impl Cap {
    /// Maximum Queue Entries Supported, 0-based (bits 15:0).
    pub const fn mqes(self) -> u16 {
        self.0 as u16
    }
    /// Contiguous Queues Required (bit 16).
    pub const fn cqr(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// Arbitration Mechanism Supported (bits 18:17).
    pub const fn ams(self) -> u8 {
        ((self.0 >> 17) & 0x3) as u8
    }
    /// Timeout in 500 ms units (bits 31:24).
    pub const fn to(self) -> u8 {
        (self.0 >> 24) as u8
    }
    /// Doorbell Stride (bits 35:32).
    pub const fn dstrd(self) -> u8 {
        ((self.0 >> 32) & 0xF) as u8
    }
    /// NVM Subsystem Reset Supported (bit 36).
    pub const fn nssrs(self) -> bool {
        self.0 & (1 << 36) != 0
    }
    /// Command Sets Supported (bits 44:37): bit 0 = NVM command set, bit 6 = I/O command
    /// sets, bit 7 = admin only.
    pub const fn css(self) -> u8 {
        ((self.0 >> 37) & 0xFF) as u8
    }
    /// Boot Partition Support (bit 45).
    pub const fn bps(self) -> bool {
        self.0 & (1 << 45) != 0
    }
    /// Memory Page Size Minimum (bits 51:48): 2^(12 + MPSMIN).
    pub const fn mpsmin(self) -> u8 {
        ((self.0 >> 48) & 0xF) as u8
    }
    /// Memory Page Size Maximum (bits 55:52).
    pub const fn mpsmax(self) -> u8 {
        ((self.0 >> 52) & 0xF) as u8
    }
    /// Persistent Memory Region Supported (bit 56).
    pub const fn pmrs(self) -> bool {
        self.0 & (1 << 56) != 0
    }
    /// Controller Memory Buffer Supported (bit 57).
    pub const fn cmbs(self) -> bool {
        self.0 & (1 << 57) != 0
    }

    /// Builds CAP from the fields a fabrics target reports.
    #[allow(clippy::too_many_arguments)]
    pub const fn build(
        mqes: u16,
        cqr: bool,
        ams: u8,
        to: u8,
        dstrd: u8,
        nssrs: bool,
        css: u8,
        mpsmin: u8,
        mpsmax: u8,
    ) -> Cap {
        Cap((mqes as u64)
            | ((cqr as u64) << 16)
            | (((ams & 0x3) as u64) << 17)
            | ((to as u64) << 24)
            | (((dstrd & 0xF) as u64) << 32)
            | ((nssrs as u64) << 36)
            | ((css as u64) << 37)
            | (((mpsmin & 0xF) as u64) << 48)
            | (((mpsmax & 0xF) as u64) << 52))
    }
}

/// CAP.CSS bit: NVM command set.
pub const CAP_CSS_NVM: u8 = 1 << 0;
/// CAP.CSS bit: one or more I/O command sets.
pub const CAP_CSS_IOCS: u8 = 1 << 6;
/// CAP.CSS bit: admin command set only (no I/O command set).
pub const CAP_CSS_NO_IO: u8 = 1 << 7;

/// Controller Configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cc(pub u32);

/// Shutdown notification (CC.SHN).
pub mod shn {
    pub const NONE: u8 = 0;
    pub const NORMAL: u8 = 1;
    pub const ABRUPT: u8 = 2;
}

/// Shutdown status (CSTS.SHST).
pub mod shst {
    pub const NORMAL: u8 = 0;
    pub const OCCURRING: u8 = 1;
    pub const COMPLETE: u8 = 2;
}

impl Cc {
    /// Enable (bit 0).
    pub const fn en(self) -> bool {
        self.0 & 1 != 0
    }
    /// I/O Command Set Selected (bits 6:4).
    pub const fn css(self) -> u8 {
        ((self.0 >> 4) & 0x7) as u8
    }
    /// Memory Page Size (bits 10:7): 2^(12 + MPS).
    pub const fn mps(self) -> u8 {
        ((self.0 >> 7) & 0xF) as u8
    }
    /// Arbitration Mechanism Selected (bits 13:11).
    pub const fn ams(self) -> u8 {
        ((self.0 >> 11) & 0x7) as u8
    }
    /// Shutdown Notification (bits 15:14).
    pub const fn shn(self) -> u8 {
        ((self.0 >> 14) & 0x3) as u8
    }
    /// I/O Submission Queue Entry Size, log2 (bits 19:16).
    pub const fn iosqes(self) -> u8 {
        ((self.0 >> 16) & 0xF) as u8
    }
    /// I/O Completion Queue Entry Size, log2 (bits 23:20).
    pub const fn iocqes(self) -> u8 {
        ((self.0 >> 20) & 0xF) as u8
    }

    pub const fn build(en: bool, css: u8, mps: u8, ams: u8, shn: u8, iosqes: u8, iocqes: u8) -> Cc {
        Cc((en as u32)
            | (((css & 0x7) as u32) << 4)
            | (((mps & 0xF) as u32) << 7)
            | (((ams & 0x7) as u32) << 11)
            | (((shn & 0x3) as u32) << 14)
            | (((iosqes & 0xF) as u32) << 16)
            | (((iocqes & 0xF) as u32) << 20))
    }
}

/// Controller Status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Csts(pub u32);

impl Csts {
    /// Ready (bit 0).
    pub const fn rdy(self) -> bool {
        self.0 & 1 != 0
    }
    /// Controller Fatal Status (bit 1).
    pub const fn cfs(self) -> bool {
        self.0 & 2 != 0
    }
    /// Shutdown Status (bits 3:2).
    pub const fn shst(self) -> u8 {
        ((self.0 >> 2) & 0x3) as u8
    }
    /// NVM Subsystem Reset Occurred (bit 4).
    pub const fn nssro(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    /// Processing Paused (bit 5).
    pub const fn pp(self) -> bool {
        self.0 & (1 << 5) != 0
    }

    pub const fn build(rdy: bool, cfs: bool, shst: u8, nssro: bool, pp: bool) -> Csts {
        Csts(
            (rdy as u32)
                | ((cfs as u32) << 1)
                | (((shst & 0x3) as u32) << 2)
                | ((nssro as u32) << 4)
                | ((pp as u32) << 5),
        )
    }
}

/// Version (VS property and Identify Controller VER).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Version(pub u32);

impl Version {
    pub const V1_3: Version = Version::new(1, 3, 0);
    pub const V1_4: Version = Version::new(1, 4, 0);
    pub const V2_0: Version = Version::new(2, 0, 0);

    pub const fn new(major: u16, minor: u8, tertiary: u8) -> Self {
        Version(((major as u32) << 16) | ((minor as u32) << 8) | tertiary as u32)
    }
    pub const fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }
    pub const fn minor(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub const fn tertiary(self) -> u8 {
        self.0 as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fields() {
        // MQES 127, CQR, TO 30 (15 s), CSS NVM, MPSMIN 0, MPSMAX 0.
        let cap = Cap::build(127, true, 0, 30, 0, false, CAP_CSS_NVM, 0, 0);
        assert_eq!(cap.0, 0x0000_0020_1E01_007F);
        assert_eq!(cap.mqes(), 127);
        assert!(cap.cqr());
        assert_eq!(cap.to(), 30);
        assert_eq!(cap.css(), 1);
        let all = Cap(u64::MAX);
        assert_eq!(
            (all.ams(), all.dstrd(), all.mpsmin(), all.mpsmax()),
            (3, 15, 15, 15)
        );
        assert!(all.nssrs() && all.bps() && all.pmrs() && all.cmbs());
    }

    #[test]
    fn cc_and_csts() {
        // What Linux writes to enable: EN, IOSQES 6, IOCQES 4 -> 0x00460001.
        let cc = Cc(0x0046_0001);
        assert!(cc.en());
        assert_eq!((cc.iosqes(), cc.iocqes(), cc.mps(), cc.css()), (6, 4, 0, 0));
        assert_eq!(Cc::build(true, 0, 0, 0, 0, 6, 4), cc);
        let shut = Cc(0x0046_4001);
        assert_eq!(shut.shn(), shn::NORMAL);
        let st = Csts::build(true, false, shst::COMPLETE, false, false);
        assert_eq!(st.0, 0x9);
        assert!(st.rdy() && !st.cfs());
        assert_eq!(st.shst(), shst::COMPLETE);
        assert!(Csts(0x30).nssro() && Csts(0x30).pp());
    }

    #[test]
    fn version() {
        let v = Version::new(2, 0, 0);
        assert_eq!(v.0, 0x0002_0000);
        assert_eq!(Version(0x0001_0403).minor(), 4);
        assert_eq!(Version(0x0001_0403).tertiary(), 3);
        assert!(Version::V1_4 < Version::V2_0);
    }
}
