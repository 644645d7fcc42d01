//! Header and data digests: CRC32C (RFC 7143 §13.1), generator 0x11EDC6F41.
//!
//! The 32-bit result goes on the wire least significant byte first: RFC 3720 appendix B.4
//! gives 32 zero bytes the digest bytes `aa 36 91 8a`, which is the little-endian encoding of
//! the CRC value 0x8a9136aa. Padding bytes of a data segment are covered by the data digest.

use gyre_reactor::SgList;

/// Length of a digest on the wire.
pub const DIGEST_LEN: usize = 4;

/// CRC32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// A digest value in wire order.
pub fn digest_to_wire(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

/// A digest read from the wire.
pub fn digest_from_wire(bytes: [u8; 4]) -> u32 {
    u32::from_le_bytes(bytes)
}

/// Bytes of zero padding that follow a data segment of `len` bytes.
pub fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Incremental CRC32C over a data segment that arrives (or is sent) in pieces: feed every
/// chunk in order, then `finish` adds the padding and returns the digest. No allocation.
#[derive(Debug, Clone, Copy, Default)]
pub struct DataDigest {
    crc: u32,
    len: usize,
}

impl DataDigest {
    pub fn new() -> Self {
        DataDigest { crc: 0, len: 0 }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, chunk);
        self.len += chunk.len();
    }

    /// Feeds `[offset, offset + len)` of `sg`. Returns false (feeding what exists) when the
    /// list is shorter than that.
    pub fn update_sg(&mut self, sg: &SgList, offset: usize, len: usize) -> bool {
        sg.for_each_chunk(offset, len, |chunk| self.update(chunk))
    }

    /// Bytes fed so far (without padding).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything fed plus the zero padding to a 4-byte boundary.
    pub fn finish(&self) -> u32 {
        let pad = padding(self.len);
        crc32c::crc32c_append(self.crc, &[0u8; 4][..pad])
    }

    pub fn finish_wire(&self) -> [u8; 4] {
        digest_to_wire(self.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 3720 appendix B.4 (carried into RFC 7143 by reference): CRC examples, digest bytes
    // as they appear on the wire.
    #[test]
    fn rfc3720_vectors() {
        assert_eq!(digest_to_wire(crc32c(&[0u8; 32])), [0xaa, 0x36, 0x91, 0x8a]);
        assert_eq!(
            digest_to_wire(crc32c(&[0xffu8; 32])),
            [0x43, 0xab, 0xa8, 0x62]
        );
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(digest_to_wire(crc32c(&inc)), [0x4e, 0x79, 0xdd, 0x46]);
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(digest_to_wire(crc32c(&dec)), [0x5c, 0xdb, 0x3f, 0x11]);
        // An iSCSI SCSI Read (10) command PDU.
        #[rustfmt::skip]
        let read_pdu = [
            0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
            0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18,
            0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(digest_to_wire(crc32c(&read_pdu)), [0x56, 0x3a, 0x96, 0xd9]);
    }

    #[test]
    fn incremental_equals_one_shot_with_padding() {
        let data: Vec<u8> = (0..1001u32).map(|i| (i * 7) as u8).collect();
        let mut padded = data.clone();
        padded.extend_from_slice(&[0, 0, 0]);
        let mut d = DataDigest::new();
        for chunk in data.chunks(97) {
            d.update(chunk);
        }
        assert_eq!(d.len(), 1001);
        assert_eq!(d.finish(), crc32c(&padded));
        assert_ne!(d.finish(), crc32c(&data));
    }

    #[test]
    fn over_sglist_chunks() {
        use gyre_reactor::iobuf::{BufferPool, ClassConfig, PoolConfig};
        let pool = BufferPool::new(&PoolConfig {
            classes: vec![ClassConfig {
                size: 4096,
                count: 8,
            }],
            prefer_hugepages: false,
        })
        .expect("pool");
        let cache = pool.local();
        let mut sg = cache.try_alloc(3 * 4096 + 100).expect("buffers");
        let data: Vec<u8> = (0..sg.len()).map(|i| (i % 251) as u8).collect();
        assert!(sg.copy_from_slice(&data));
        let mut d = DataDigest::new();
        assert!(d.update_sg(&sg, 10, 8000));
        assert_eq!(d.finish(), crc32c(&data[10..8010]));
        let mut short = DataDigest::new();
        assert!(!short.update_sg(&sg, 0, sg.len() + 1));
    }
}
