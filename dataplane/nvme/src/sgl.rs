//! SGL descriptors (NVMe Base 2.x, "Scatter Gather List (SGL)"): 16 bytes, with the descriptor
//! type in bits 7:4 and the subtype in bits 3:0 of byte 15.
//!
//! NVMe over Fabrics always uses SGLs. NVMe/TCP uses two forms in SGL1 of a command:
//! in-capsule data as a Data Block with subtype Offset (identifier byte 0x01, address = offset
//! into the in-capsule data), and data moved by R2T/H2CData or C2HData as a Transport SGL Data
//! Block with the transport-specific subtype 0xA (identifier byte 0x5A, address reserved).

use crate::wire::{get_u32, get_u64, put_u32, put_u64};

/// SGL descriptor types (byte 15, bits 7:4).
pub mod sgl_type {
    pub const DATA_BLOCK: u8 = 0x0;
    pub const BIT_BUCKET: u8 = 0x1;
    pub const SEGMENT: u8 = 0x2;
    pub const LAST_SEGMENT: u8 = 0x3;
    pub const KEYED_DATA_BLOCK: u8 = 0x4;
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5;
    pub const VENDOR_SPECIFIC: u8 = 0xF;
}

/// SGL descriptor subtypes (byte 15, bits 3:0).
pub mod sgl_subtype {
    pub const ADDRESS: u8 = 0x0;
    pub const OFFSET: u8 = 0x1;
    pub const TRANSPORT_SPECIFIC: u8 = 0xA;
    /// Keyed Data Block: invalidate the key after the transfer (RDMA).
    pub const INVALIDATE_KEY: u8 = 0xF;
}

/// What a descriptor describes, decoded from byte 15.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SglKind {
    /// Data Block with subtype Address (a memory address).
    DataBlockAddress,
    /// Data Block with subtype Offset (offset into in-capsule data on fabrics).
    DataBlockOffset,
    BitBucket,
    Segment {
        offset_subtype: bool,
    },
    LastSegment {
        offset_subtype: bool,
    },
    /// Keyed Data Block (RDMA); `invalidate` is the Invalidate Key subtype.
    KeyedDataBlock {
        invalidate: bool,
    },
    /// Transport SGL Data Block with the transport-specific subtype 0xA (NVMe/TCP).
    TransportDataBlock,
    /// Any other type/subtype combination (`byte` is byte 15).
    Other {
        byte: u8,
    },
}

/// One 16-byte SGL descriptor, kept as its wire bytes with typed accessors.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct SglDescriptor {
    raw: [u8; 16],
}

impl std::fmt::Debug for SglDescriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SglDescriptor")
            .field("kind", &self.kind())
            .field("address", &self.address())
            .field("length", &self.length())
            .finish()
    }
}

impl SglDescriptor {
    pub const fn from_bytes(raw: [u8; 16]) -> Self {
        SglDescriptor { raw }
    }

    pub const fn to_bytes(&self) -> [u8; 16] {
        self.raw
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.raw
    }

    fn unkeyed(address: u64, length: u32, typ: u8, subtype: u8) -> Self {
        let mut raw = [0u8; 16];
        put_u64(&mut raw, 0, address);
        put_u32(&mut raw, 8, length);
        raw[15] = (typ << 4) | (subtype & 0xF);
        SglDescriptor { raw }
    }

    /// Data Block, subtype Address.
    pub fn data_block_address(address: u64, length: u32) -> Self {
        Self::unkeyed(address, length, sgl_type::DATA_BLOCK, sgl_subtype::ADDRESS)
    }

    /// Data Block, subtype Offset: in-capsule data at `offset` into the capsule's data.
    pub fn data_block_offset(offset: u64, length: u32) -> Self {
        Self::unkeyed(offset, length, sgl_type::DATA_BLOCK, sgl_subtype::OFFSET)
    }

    /// Transport SGL Data Block, subtype 0xA: data moved by the transport (NVMe/TCP R2T,
    /// H2CData, C2HData).
    pub fn transport_data_block(length: u32) -> Self {
        Self::unkeyed(
            0,
            length,
            sgl_type::TRANSPORT_DATA_BLOCK,
            sgl_subtype::TRANSPORT_SPECIFIC,
        )
    }

    /// Keyed Data Block: 64-bit address, 24-bit length, 32-bit key.
    pub fn keyed_data_block(address: u64, length: u32, key: u32, invalidate: bool) -> Self {
        let mut raw = [0u8; 16];
        put_u64(&mut raw, 0, address);
        raw[8..11].copy_from_slice(&length.to_le_bytes()[..3]);
        put_u32(&mut raw, 11, key);
        let sub = if invalidate {
            sgl_subtype::INVALIDATE_KEY
        } else {
            sgl_subtype::ADDRESS
        };
        raw[15] = (sgl_type::KEYED_DATA_BLOCK << 4) | sub;
        SglDescriptor { raw }
    }

    /// The SGL identifier (byte 15).
    pub const fn identifier(&self) -> u8 {
        self.raw[15]
    }

    pub const fn descriptor_type(&self) -> u8 {
        self.raw[15] >> 4
    }

    pub const fn subtype(&self) -> u8 {
        self.raw[15] & 0xF
    }

    pub fn kind(&self) -> SglKind {
        let sub = self.subtype();
        match (self.descriptor_type(), sub) {
            (sgl_type::DATA_BLOCK, sgl_subtype::ADDRESS) => SglKind::DataBlockAddress,
            (sgl_type::DATA_BLOCK, sgl_subtype::OFFSET) => SglKind::DataBlockOffset,
            (sgl_type::BIT_BUCKET, 0) => SglKind::BitBucket,
            (sgl_type::SEGMENT, 0 | 1) => SglKind::Segment {
                offset_subtype: sub == 1,
            },
            (sgl_type::LAST_SEGMENT, 0 | 1) => SglKind::LastSegment {
                offset_subtype: sub == 1,
            },
            (sgl_type::KEYED_DATA_BLOCK, sgl_subtype::ADDRESS) => {
                SglKind::KeyedDataBlock { invalidate: false }
            }
            (sgl_type::KEYED_DATA_BLOCK, sgl_subtype::INVALIDATE_KEY) => {
                SglKind::KeyedDataBlock { invalidate: true }
            }
            (sgl_type::TRANSPORT_DATA_BLOCK, sgl_subtype::TRANSPORT_SPECIFIC) => {
                SglKind::TransportDataBlock
            }
            _ => SglKind::Other { byte: self.raw[15] },
        }
    }

    /// Address (bytes 0..8): a memory address, or an offset for the Offset subtype.
    pub fn address(&self) -> u64 {
        get_u64(&self.raw, 0)
    }

    /// Length in bytes: bytes 8..12, or the 24-bit length of a Keyed Data Block.
    pub fn length(&self) -> u32 {
        if self.descriptor_type() == sgl_type::KEYED_DATA_BLOCK {
            u32::from_le_bytes([self.raw[8], self.raw[9], self.raw[10], 0])
        } else {
            get_u32(&self.raw, 8)
        }
    }

    /// The key of a Keyed Data Block (bytes 11..15).
    pub fn key(&self) -> Option<u32> {
        if self.descriptor_type() == sgl_type::KEYED_DATA_BLOCK {
            Some(get_u32(&self.raw, 11))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvme_tcp_forms() {
        // In-capsule data: address (offset) 0, length 4096, byte 15 = 0x01.
        let d = SglDescriptor::data_block_offset(0, 4096);
        assert_eq!(
            d.to_bytes(),
            [0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x10, 0, 0, 0, 0, 0, 0x01]
        );
        assert_eq!(d.kind(), SglKind::DataBlockOffset);
        // Transport data block: length 0x20000, byte 15 = 0x5A.
        let t = SglDescriptor::transport_data_block(0x2_0000);
        assert_eq!(
            t.to_bytes(),
            [0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x02, 0x00, 0, 0, 0, 0x5A]
        );
        assert_eq!(t.kind(), SglKind::TransportDataBlock);
        assert_eq!(t.length(), 0x2_0000);
    }

    #[test]
    fn keyed() {
        let k =
            SglDescriptor::keyed_data_block(0x1122_3344_5566_7788, 0x00AB_CDEF, 0xDEAD_BEEF, true);
        assert_eq!(
            k.to_bytes(),
            [
                0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // address
                0xEF, 0xCD, 0xAB, // length (24 bits)
                0xEF, 0xBE, 0xAD, 0xDE, // key
                0x4F, // type 4, subtype F
            ]
        );
        assert_eq!(k.kind(), SglKind::KeyedDataBlock { invalidate: true });
        assert_eq!(k.length(), 0x00AB_CDEF);
        assert_eq!(k.key(), Some(0xDEAD_BEEF));
    }

    #[test]
    fn segments_and_unknown() {
        let mut raw = [0u8; 16];
        raw[15] = 0x30;
        assert_eq!(
            SglDescriptor::from_bytes(raw).kind(),
            SglKind::LastSegment {
                offset_subtype: false
            }
        );
        raw[15] = 0x21;
        assert_eq!(
            SglDescriptor::from_bytes(raw).kind(),
            SglKind::Segment {
                offset_subtype: true
            }
        );
        raw[15] = 0x52;
        assert_eq!(
            SglDescriptor::from_bytes(raw).kind(),
            SglKind::Other { byte: 0x52 }
        );
    }
}
