//! NVMe/TCP header and data digests: CRC32C (Castagnoli), computed by the `crc32c` crate
//! (SSE4.2 / ARMv8 CRC instructions when the CPU has them) and carried on the wire as a
//! little-endian u32 right after the header (HDGST) or after the data (DDGST).

use gyre_reactor::SgList;

/// Size of a digest on the wire.
pub const DIGEST_LEN: usize = 4;

/// The header digest of a PDU header (the HLEN bytes that precede it).
pub fn header_digest(header: &[u8]) -> u32 {
    crc32c::crc32c(header)
}

/// The data digest of a contiguous payload.
pub fn data_digest(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// A data digest computed incrementally, chunk by chunk, as payload arrives or is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataDigest {
    crc: u32,
}

impl DataDigest {
    pub fn new() -> Self {
        DataDigest { crc: 0 }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, chunk);
    }

    /// Adds bytes `[offset, offset + len)` of a scatter-gather list. Returns false (and adds
    /// what there was) if the list is shorter than that.
    pub fn update_sg(&mut self, sg: &SgList, offset: usize, len: usize) -> bool {
        sg.for_each_chunk(offset, len, |c| self.update(c))
    }

    pub fn finish(&self) -> u32 {
        self.crc
    }

    /// The digest as it goes on the wire.
    pub fn to_wire(&self) -> [u8; DIGEST_LEN] {
        self.crc.to_le_bytes()
    }

    /// Whether the 4 digest bytes received match.
    pub fn matches(&self, wire: [u8; DIGEST_LEN]) -> bool {
        u32::from_le_bytes(wire) == self.crc
    }
}

/// The data digest of bytes `[offset, offset + len)` of a scatter-gather list, or `None` if
/// the list is shorter.
pub fn sg_data_digest(sg: &SgList, offset: usize, len: usize) -> Option<u32> {
    let mut d = DataDigest::new();
    d.update_sg(sg, offset, len).then(|| d.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The CRC-32C check value from the catalogue of CRC parameters.
        assert_eq!(data_digest(b"123456789"), 0xE306_9283);
        assert_eq!(header_digest(b"123456789"), 0xE306_9283);
        // 32 bytes of zeros (RFC 3720 B.4 test vector).
        assert_eq!(data_digest(&[0u8; 32]), 0x8A91_36AA);
        // 32 bytes of 0xFF.
        assert_eq!(data_digest(&[0xFFu8; 32]), 0x62A8_AB43);
    }

    #[test]
    fn incremental_equals_one_shot() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut d = DataDigest::new();
        for c in data.chunks(37) {
            d.update(c);
        }
        assert_eq!(d.finish(), data_digest(&data));
        assert_eq!(d.to_wire(), data_digest(&data).to_le_bytes());
        assert!(d.matches(data_digest(&data).to_le_bytes()));
        assert!(!d.matches([0, 0, 0, 0]));
    }

    #[test]
    fn over_an_sglist() {
        let pool = gyre_reactor::BufferPool::new(&gyre_reactor::PoolConfig {
            classes: vec![gyre_reactor::ClassConfig {
                size: 4096,
                count: 8,
            }],
            prefer_hugepages: false,
        })
        .unwrap();
        let cache = pool.local();
        let mut sg = cache.try_alloc(10_000).unwrap();
        assert!(sg.num_segments() >= 3);
        let data: Vec<u8> = (0..sg.len()).map(|i| (i % 251) as u8).collect();
        assert!(sg.copy_from_slice(&data));
        assert_eq!(
            sg_data_digest(&sg, 100, 9000),
            Some(data_digest(&data[100..9100]))
        );
        assert_eq!(sg_data_digest(&sg, 0, sg.len() + 1), None);
    }
}
