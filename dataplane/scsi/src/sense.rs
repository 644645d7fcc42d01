//! Sense data (SPC-4 4.5): what a CHECK CONDITION says, built without allocation and
//! encoded in fixed (70h) or descriptor (72h) format as the control mode page's D_SENSE bit
//! asks.

/// Sense keys (SPC-4 table 27).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    AbortedCommand = 0xB,
    Miscompare = 0xE,
}

/// An additional sense code and qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asc(pub u8, pub u8);

impl Asc {
    pub const NO_ADDITIONAL_SENSE: Asc = Asc(0x00, 0x00);
    pub const LU_NOT_READY_CAUSE_NOT_REPORTABLE: Asc = Asc(0x04, 0x00);
    pub const LU_NOT_ACCESSIBLE_TRANSITIONING: Asc = Asc(0x04, 0x0A);
    pub const LU_NOT_ACCESSIBLE_STANDBY: Asc = Asc(0x04, 0x0B);
    pub const LU_NOT_ACCESSIBLE_UNAVAILABLE: Asc = Asc(0x04, 0x0C);
    pub const WRITE_ERROR: Asc = Asc(0x0C, 0x00);
    pub const INVALID_FIELD_IN_INFORMATION_UNIT: Asc = Asc(0x0E, 0x03);
    pub const UNRECOVERED_READ_ERROR: Asc = Asc(0x11, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Asc = Asc(0x1A, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Asc = Asc(0x1D, 0x00);
    pub const INVALID_COMMAND_OPERATION_CODE: Asc = Asc(0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Asc = Asc(0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Asc = Asc(0x24, 0x00);
    pub const LOGICAL_UNIT_NOT_SUPPORTED: Asc = Asc(0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Asc = Asc(0x26, 0x00);
    pub const INVALID_RELEASE_OF_PERSISTENT_RESERVATION: Asc = Asc(0x26, 0x04);
    pub const WRITE_PROTECTED: Asc = Asc(0x27, 0x00);
    pub const SPACE_ALLOCATION_FAILED_WRITE_PROTECT: Asc = Asc(0x27, 0x07);
    pub const POWER_ON_RESET: Asc = Asc(0x29, 0x00);
    pub const BUS_DEVICE_RESET_FUNCTION_OCCURRED: Asc = Asc(0x29, 0x03);
    pub const I_T_NEXUS_LOSS_OCCURRED: Asc = Asc(0x29, 0x07);
    pub const MODE_PARAMETERS_CHANGED: Asc = Asc(0x2A, 0x01);
    pub const RESERVATIONS_PREEMPTED: Asc = Asc(0x2A, 0x03);
    pub const RESERVATIONS_RELEASED: Asc = Asc(0x2A, 0x04);
    pub const REGISTRATIONS_PREEMPTED: Asc = Asc(0x2A, 0x05);
    pub const ASYMMETRIC_ACCESS_STATE_CHANGED: Asc = Asc(0x2A, 0x06);
    pub const CAPACITY_DATA_HAS_CHANGED: Asc = Asc(0x2A, 0x09);
    pub const COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: Asc = Asc(0x2F, 0x00);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc(0x39, 0x00);
    pub const REPORTED_LUNS_DATA_HAS_CHANGED: Asc = Asc(0x3F, 0x0E);
    pub const INTERNAL_TARGET_FAILURE: Asc = Asc(0x44, 0x00);
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Asc = Asc(0x55, 0x04);
}

/// Sense data for one CHECK CONDITION. `Copy`, no heap: built on the I/O path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: Asc,
    /// The INFORMATION field (e.g. the offset of a miscompare), when valid.
    pub information: Option<u64>,
    /// The 3 bytes of the sense-key specific field, with SKSV set, when valid.
    pub sense_key_specific: Option<[u8; 3]>,
}

/// Longest encoding this crate produces (descriptor format with both descriptors).
pub const MAX_SENSE_LEN: usize = 8 + 12 + 8;

/// Fixed-format length.
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    pub const fn new(key: SenseKey, asc: Asc) -> Sense {
        Sense {
            key,
            asc,
            information: None,
            sense_key_specific: None,
        }
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB, pointing at `byte` (and `bit`, if given).
    pub const fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            key: SenseKey::IllegalRequest,
            asc: Asc::INVALID_FIELD_IN_CDB,
            information: None,
            sense_key_specific: Some(field_pointer(true, byte, bit)),
        }
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST, pointing at `byte` of the list.
    pub const fn invalid_param_field(byte: u16, bit: Option<u8>) -> Sense {
        Sense {
            key: SenseKey::IllegalRequest,
            asc: Asc::INVALID_FIELD_IN_PARAMETER_LIST,
            information: None,
            sense_key_specific: Some(field_pointer(false, byte, bit)),
        }
    }

    pub const fn illegal(asc: Asc) -> Sense {
        Sense::new(SenseKey::IllegalRequest, asc)
    }

    pub const fn invalid_opcode() -> Sense {
        Sense::illegal(Asc::INVALID_COMMAND_OPERATION_CODE)
    }

    pub const fn lba_out_of_range() -> Sense {
        Sense::illegal(Asc::LBA_OUT_OF_RANGE)
    }

    pub const fn param_list_length() -> Sense {
        Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR)
    }

    pub const fn unit_attention(asc: Asc) -> Sense {
        Sense::new(SenseKey::UnitAttention, asc)
    }

    /// MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION, with the offset of the first differing
    /// byte in INFORMATION.
    pub const fn miscompare(offset: u64) -> Sense {
        Sense {
            key: SenseKey::Miscompare,
            asc: Asc::MISCOMPARE_DURING_VERIFY,
            information: Some(offset),
            sense_key_specific: None,
        }
    }

    /// Encodes into `out` in descriptor format if `descriptor`, else fixed format; returns
    /// the length used.
    pub fn encode(&self, descriptor: bool, out: &mut [u8; MAX_SENSE_LEN]) -> usize {
        *out = [0; MAX_SENSE_LEN];
        if descriptor {
            out[0] = 0x72;
            out[1] = self.key as u8;
            out[2] = self.asc.0;
            out[3] = self.asc.1;
            let mut at = 8;
            if let Some(info) = self.information {
                // Information descriptor (SPC-4 4.5.2.2).
                out[at] = 0x00;
                out[at + 1] = 0x0A;
                out[at + 2] = 0x80;
                out[at + 4..at + 12].copy_from_slice(&info.to_be_bytes());
                at += 12;
            }
            if let Some(sks) = self.sense_key_specific {
                // Sense key specific descriptor (SPC-4 4.5.2.4).
                out[at] = 0x02;
                out[at + 1] = 0x06;
                out[at + 4..at + 7].copy_from_slice(&sks);
                at += 8;
            }
            out[7] = (at - 8) as u8;
            at
        } else {
            out[0] = 0x70;
            out[2] = self.key as u8;
            if let Some(info) = self.information {
                // The fixed format has 4 bytes of INFORMATION; VALID only if it fits.
                if let Ok(v) = u32::try_from(info) {
                    out[0] |= 0x80;
                    out[3..7].copy_from_slice(&v.to_be_bytes());
                }
            }
            out[7] = (FIXED_SENSE_LEN - 8) as u8;
            out[12] = self.asc.0;
            out[13] = self.asc.1;
            if let Some(sks) = self.sense_key_specific {
                out[15..18].copy_from_slice(&sks);
            }
            FIXED_SENSE_LEN
        }
    }
}

/// The sense-key specific field pointer (SPC-4 4.5.2.4.2): SKSV, C/D, BPV and bit pointer,
/// then the byte.
const fn field_pointer(in_cdb: bool, byte: u16, bit: Option<u8>) -> [u8; 3] {
    let mut b0 = 0x80;
    if in_cdb {
        b0 |= 0x40;
    }
    if let Some(bit) = bit {
        b0 |= 0x08 | (bit & 0x07);
    }
    let be = byte.to_be_bytes();
    [b0, be[0], be[1]]
}

/// Sense data as it leaves a completion: encoded bytes and their length.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SenseBuf {
    bytes: [u8; MAX_SENSE_LEN],
    len: u8,
}

impl SenseBuf {
    pub const EMPTY: SenseBuf = SenseBuf {
        bytes: [0; MAX_SENSE_LEN],
        len: 0,
    };

    pub fn encode(sense: &Sense, descriptor: bool) -> SenseBuf {
        let mut bytes = [0; MAX_SENSE_LEN];
        let len = sense.encode(descriptor, &mut bytes) as u8;
        SenseBuf { bytes, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for SenseBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SenseBuf({:02x?})", self.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_invalid_field_in_cdb_with_bit_pointer() {
        let s = Sense::invalid_cdb_field(1, Some(5));
        let mut out = [0; MAX_SENSE_LEN];
        assert_eq!(s.encode(false, &mut out), 18);
        assert_eq!(
            &out[..18],
            &[0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0xCD, 0x00, 0x01]
        );
    }

    #[test]
    fn fixed_miscompare_sets_valid_and_information() {
        let s = Sense::miscompare(0x1234);
        let mut out = [0; MAX_SENSE_LEN];
        s.encode(false, &mut out);
        assert_eq!(&out[..8], &[0xF0, 0, 0x0E, 0, 0, 0x12, 0x34, 10]);
        assert_eq!(&out[12..14], &[0x1D, 0x00]);
    }

    #[test]
    fn descriptor_format_carries_information_and_field_pointer() {
        let mut s = Sense::invalid_param_field(0x102, None);
        s.information = Some(7);
        let mut out = [0; MAX_SENSE_LEN];
        let n = s.encode(true, &mut out);
        assert_eq!(n, 8 + 12 + 8);
        assert_eq!(&out[..8], &[0x72, 0x05, 0x26, 0x00, 0, 0, 0, 20]);
        assert_eq!(&out[8..20], &[0, 0x0A, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(&out[20..28], &[0x02, 0x06, 0, 0, 0x80, 0x01, 0x02, 0]);
    }

    #[test]
    fn descriptor_without_extras_is_eight_bytes() {
        let s = Sense::unit_attention(Asc::POWER_ON_RESET);
        let b = SenseBuf::encode(&s, true);
        assert_eq!(b.as_slice(), &[0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]);
    }
}
