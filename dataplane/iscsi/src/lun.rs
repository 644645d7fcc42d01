//! The 8-byte SAM LUN field and its single-level encodings (SAM-5 §4.7): peripheral device
//! addressing for LUNs below 256 (what most initiators expect for small numbers) and flat
//! space addressing up to 16383.

/// A LUN exactly as it travels in a BHS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Lun(pub [u8; 8]);

/// Largest LUN number the single-level encodings can carry.
pub const MAX_SINGLE_LEVEL_LUN: u16 = 16383;

impl Lun {
    /// Encodes `index`: peripheral addressing (method 00b, bus 0) below 256, flat space
    /// addressing (method 01b) up to 16383. Only the low 14 bits of `index` are used;
    /// [`Lun::try_from_index`] refuses larger numbers instead.
    pub fn from_index(index: u16) -> Lun {
        let index = index & 0x3fff;
        let mut b = [0u8; 8];
        if index < 256 {
            b[1] = index as u8;
        } else {
            b[0] = 0x40 | (index >> 8) as u8;
            b[1] = index as u8;
        }
        Lun(b)
    }

    /// Encodes `index` if it fits a single-level LUN.
    pub fn try_from_index(index: u32) -> Option<Lun> {
        if index <= u32::from(MAX_SINGLE_LEVEL_LUN) {
            Some(Lun::from_index(index as u16))
        } else {
            None
        }
    }

    /// The LUN number of a single-level peripheral (bus 0) or flat space LUN; `None` for
    /// other addressing methods, for a non-zero bus, or when later levels are not zero.
    pub fn index(&self) -> Option<u16> {
        let b = self.0;
        if b[2..].iter().any(|&x| x != 0) {
            return None;
        }
        match b[0] >> 6 {
            0b00 if b[0] == 0 => Some(u16::from(b[1])),
            0b01 => Some(u16::from(b[0] & 0x3f) << 8 | u16::from(b[1])),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> u64 {
        u64::from_be_bytes(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_sam() {
        assert_eq!(Lun::from_index(0).0, [0; 8]);
        assert_eq!(Lun::from_index(5).0, [0x00, 0x05, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Lun::from_index(255).0, [0x00, 0xff, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Lun::from_index(256).0, [0x41, 0x00, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Lun::from_index(16383).0, [0x7f, 0xff, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Lun::try_from_index(16384), None);
    }

    #[test]
    fn decodes_both_methods_and_refuses_others() {
        for i in [0u16, 1, 200, 255, 256, 1000, 16383] {
            assert_eq!(Lun::from_index(i).index(), Some(i));
        }
        // Flat addressing may also be used for small numbers.
        assert_eq!(Lun([0x40, 0x07, 0, 0, 0, 0, 0, 0]).index(), Some(7));
        // Peripheral with a non-zero bus, logical unit addressing, second level.
        assert_eq!(Lun([0x01, 0x07, 0, 0, 0, 0, 0, 0]).index(), None);
        assert_eq!(Lun([0x80, 0x07, 0, 0, 0, 0, 0, 0]).index(), None);
        assert_eq!(Lun([0x00, 0x07, 0x00, 0x01, 0, 0, 0, 0]).index(), None);
    }
}
