//! The few SCSI commands the initiator issues itself (SBC-3 / SPC-4), and the parsing of
//! their replies: READ/WRITE 10 and 16, INQUIRY, REPORT LUNS, READ CAPACITY 16,
//! TEST UNIT READY.

/// A CDB of at most 16 bytes (no Extended CDB AHS needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cdb {
    pub bytes: [u8; 16],
    pub len: u8,
}

impl Cdb {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(16)]
    }
}

fn cdb<const N: usize>(b: [u8; N]) -> Cdb {
    let mut bytes = [0u8; 16];
    bytes[..N].copy_from_slice(&b);
    Cdb {
        bytes,
        len: N as u8,
    }
}

pub fn test_unit_ready() -> Cdb {
    cdb([0u8; 6])
}

/// READ(10); `None` when the LBA or block count does not fit.
pub fn read10(lba: u64, blocks: u32) -> Option<Cdb> {
    rw10(0x28, lba, blocks)
}

pub fn write10(lba: u64, blocks: u32) -> Option<Cdb> {
    rw10(0x2a, lba, blocks)
}

fn rw10(op: u8, lba: u64, blocks: u32) -> Option<Cdb> {
    let lba = u32::try_from(lba).ok()?;
    let blocks = u16::try_from(blocks).ok()?;
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    Some(cdb([op, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]))
}

pub fn read16(lba: u64, blocks: u32) -> Cdb {
    rw16(0x88, lba, blocks)
}

pub fn write16(lba: u64, blocks: u32) -> Cdb {
    rw16(0x8a, lba, blocks)
}

fn rw16(op: u8, lba: u64, blocks: u32) -> Cdb {
    let mut b = [0u8; 16];
    b[0] = op;
    b[2..10].copy_from_slice(&lba.to_be_bytes());
    b[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb(b)
}

/// Standard INQUIRY (or a VPD page when `page` is given).
pub fn inquiry(page: Option<u8>, alloc_len: u16) -> Cdb {
    let a = alloc_len.to_be_bytes();
    match page {
        None => cdb([0x12, 0, 0, a[0], a[1], 0]),
        Some(p) => cdb([0x12, 1, p, a[0], a[1], 0]),
    }
}

pub fn report_luns(alloc_len: u32) -> Cdb {
    let a = alloc_len.to_be_bytes();
    cdb([0xa0, 0, 0, 0, 0, 0, a[0], a[1], a[2], a[3], 0, 0])
}

/// READ CAPACITY(16) (SERVICE ACTION IN(16), service action 0x10).
pub fn read_capacity16(alloc_len: u32) -> Cdb {
    let a = alloc_len.to_be_bytes();
    cdb([
        0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, a[0], a[1], a[2], a[3], 0, 0,
    ])
}

/// What READ CAPACITY(16) reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Number of blocks (last LBA + 1).
    pub blocks: u64,
    pub block_size: u32,
}

pub fn parse_read_capacity16(data: &[u8]) -> Option<Capacity> {
    let last = u64::from_be_bytes(data.get(0..8)?.try_into().ok()?);
    let block_size = u32::from_be_bytes(data.get(8..12)?.try_into().ok()?);
    Some(Capacity {
        blocks: last.checked_add(1)?,
        block_size,
    })
}

/// LUN list of a REPORT LUNS reply (8-byte entries after an 8-byte header).
pub fn parse_report_luns(data: &[u8]) -> Option<Vec<crate::lun::Lun>> {
    let list_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    let body = data.get(8..)?;
    let n = (list_len / 8).min(body.len() / 8);
    Some(
        body.chunks_exact(8)
            .take(n)
            .map(|c| {
                let mut l = [0u8; 8];
                l.copy_from_slice(c);
                crate::lun::Lun(l)
            })
            .collect(),
    )
}

/// The interesting part of standard INQUIRY data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InquiryData {
    pub peripheral_device_type: u8,
    pub vendor: String,
    pub product: String,
    pub revision: String,
}

pub fn parse_inquiry(data: &[u8]) -> Option<InquiryData> {
    let text = |r: std::ops::Range<usize>| -> Option<String> {
        Some(String::from_utf8_lossy(data.get(r)?).trim_end().to_string())
    };
    Some(InquiryData {
        peripheral_device_type: data.first()? & 0x1f,
        vendor: text(8..16)?,
        product: text(16..32)?,
        revision: text(32..36)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdb_layouts() {
        assert_eq!(
            read10(0x01020304, 8).unwrap().as_slice(),
            &[0x28, 0, 1, 2, 3, 4, 0, 0, 8, 0]
        );
        assert!(read10(1 << 32, 1).is_none());
        assert!(write10(0, 65536).is_none());
        assert_eq!(
            write16(0x0102030405060708, 0x10).as_slice(),
            &[0x8a, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0x10, 0, 0]
        );
        assert_eq!(
            read_capacity16(32).as_slice(),
            &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]
        );
        assert_eq!(inquiry(None, 96).as_slice(), &[0x12, 0, 0, 0, 96, 0]);
        assert_eq!(
            inquiry(Some(0x80), 255).as_slice(),
            &[0x12, 1, 0x80, 0, 255, 0]
        );
        assert_eq!(report_luns(4096).as_slice()[6..10], [0, 0, 0x10, 0]);
    }

    #[test]
    fn reply_parsers() {
        let mut rc = [0u8; 32];
        rc[0..8].copy_from_slice(&131071u64.to_be_bytes());
        rc[8..12].copy_from_slice(&512u32.to_be_bytes());
        assert_eq!(
            parse_read_capacity16(&rc),
            Some(Capacity {
                blocks: 131072,
                block_size: 512
            })
        );
        assert_eq!(parse_read_capacity16(&rc[..8]), None);
        let mut rl = vec![0, 0, 0, 16, 0, 0, 0, 0];
        rl.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        rl.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        let luns = parse_report_luns(&rl).unwrap();
        assert_eq!(
            luns.iter().map(|l| l.index()).collect::<Vec<_>>(),
            [Some(0), Some(1)]
        );
        let mut inq = vec![0u8; 36];
        inq[8..16].copy_from_slice(b"GYRE    ");
        inq[16..32].copy_from_slice(b"disk            ");
        inq[32..36].copy_from_slice(b"0001");
        let i = parse_inquiry(&inq).unwrap();
        assert_eq!((i.vendor.as_str(), i.product.as_str()), ("GYRE", "disk"));
    }
}
