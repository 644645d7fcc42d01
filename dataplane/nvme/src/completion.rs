//! The 16-byte completion queue entry.

use crate::error::DecodeError;
use crate::status::Status;
use crate::wire::{get_array, get_u16, get_u32, need, need_out, put_u16, put_u32};

/// Size of a completion queue entry.
pub const CQE_SIZE: usize = 16;

/// A completion queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Completion {
    /// Command specific dword 0.
    pub dw0: u32,
    /// Command specific dword 1.
    pub dw1: u32,
    /// SQ head pointer.
    pub sqhd: u16,
    /// SQ identifier.
    pub sqid: u16,
    /// Command identifier.
    pub cid: u16,
    pub status: Status,
    /// Phase tag (meaningful on PCIe; zero on fabrics).
    pub phase: bool,
}

impl Completion {
    /// A completion for `cid` with `status` and everything else zero.
    pub fn new(cid: u16, status: Status) -> Self {
        Completion {
            cid,
            status,
            ..Default::default()
        }
    }

    pub fn decode(b: &[u8; CQE_SIZE]) -> Self {
        let (status, phase) = Status::from_field(get_u16(b, 14));
        Completion {
            dw0: get_u32(b, 0),
            dw1: get_u32(b, 4),
            sqhd: get_u16(b, 8),
            sqid: get_u16(b, 10),
            cid: get_u16(b, 12),
            status,
            phase,
        }
    }

    pub fn decode_slice(buf: &[u8]) -> Result<Self, DecodeError> {
        need(buf, CQE_SIZE)?;
        Ok(Self::decode(&get_array::<CQE_SIZE>(buf, 0)))
    }

    pub fn encode(&self, b: &mut [u8; CQE_SIZE]) {
        put_u32(b, 0, self.dw0);
        put_u32(b, 4, self.dw1);
        put_u16(b, 8, self.sqhd);
        put_u16(b, 10, self.sqid);
        put_u16(b, 12, self.cid);
        put_u16(b, 14, self.status.to_field(self.phase));
    }

    pub fn encode_slice(&self, out: &mut [u8]) -> Result<usize, DecodeError> {
        need_out(out, CQE_SIZE)?;
        let mut b = [0u8; CQE_SIZE];
        self.encode(&mut b);
        out[..CQE_SIZE].copy_from_slice(&b);
        Ok(CQE_SIZE)
    }

    pub fn to_bytes(&self) -> [u8; CQE_SIZE] {
        let mut b = [0u8; CQE_SIZE];
        self.encode(&mut b);
        b
    }

    /// The 64-bit result carried in dword 0 (low) and dword 1 (high), as for Property Get.
    pub fn result_u64(&self) -> u64 {
        (self.dw0 as u64) | ((self.dw1 as u64) << 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cqe_byte_exact() {
        let bytes: [u8; 16] = [
            0x01, 0x00, 0x00, 0x00, // DW0 = 1
            0x00, 0x00, 0x00, 0x00, // DW1
            0x05, 0x00, // SQHD 5
            0x02, 0x00, // SQID 2
            0xCD, 0xAB, // CID 0xABCD
            0x05, 0x80, // status: P=1, SC=0x02 (Invalid Field), SCT=0, DNR=1
        ];
        let c = Completion::decode(&bytes);
        assert_eq!(c.dw0, 1);
        assert_eq!(c.sqhd, 5);
        assert_eq!(c.sqid, 2);
        assert_eq!(c.cid, 0xABCD);
        assert!(c.phase);
        assert_eq!(c.status, Status::INVALID_FIELD.with_dnr());
        assert_eq!(c.to_bytes(), bytes);
        let mut short = [0u8; 8];
        assert!(c.encode_slice(&mut short).is_err());
        assert!(Completion::decode_slice(&bytes[..15]).is_err());
    }
}
