//! PDU framing (RFC 7143 §11.1): BHS, AHS, header digest, padded data segment, data digest.
//!
//! A streaming receiver reads 48 bytes first; [`PduLayout::from_bhs_bytes`] then says how many
//! AHS and header-digest bytes follow and how long the data segment is, before the opcode is
//! even decoded, so the transport can pick a destination (staging buffer or pool buffer) for
//! the payload. [`parse_pdu`] does the whole job over one contiguous buffer, for small PDUs,
//! tests and fuzzing.

use crate::bhs::{Bhs, BhsError, ScsiCommand, BHS_LEN, MAX_DATA_SEGMENT_LEN};
use crate::digest::{crc32c, digest_from_wire, digest_to_wire, padding, DataDigest, DIGEST_LEN};
use thiserror::Error;

/// Which digests are in force on a connection (CRC32C or none, per direction both ways).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// Largest AHS area: TotalAHSLength is one byte of 4-byte words.
pub const MAX_AHS_LEN: usize = 255 * 4;

/// Largest CDB carried with an Extended CDB AHS (SPC: 260 bytes).
pub const MAX_CDB_LEN: usize = 260;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FramingError {
    #[error(transparent)]
    Bhs(#[from] BhsError),
    #[error("header digest mismatch: computed {computed:#010x}, received {received:#010x}")]
    HeaderDigest { computed: u32, received: u32 },
    #[error("data digest mismatch: computed {computed:#010x}, received {received:#010x}")]
    DataDigest { computed: u32, received: u32 },
    #[error("data segment of {len} bytes exceeds the {max} bytes this side accepts")]
    DataSegmentTooLong { len: u32, max: u32 },
    #[error("AHS area of {0} bytes does not fit TotalAHSLength (a multiple of 4, at most 1020)")]
    AhsAreaLength(usize),
    #[error("AHS entry at offset {offset}: {reason}")]
    Ahs { offset: usize, reason: AhsFault },
    #[error("CDB of {0} bytes is longer than 260 or the Extended CDB AHS disagrees")]
    CdbLength(usize),
    #[error("output buffer of {have} bytes, need {need}")]
    OutputTooSmall { have: usize, need: usize },
}

/// What is wrong with an AHS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AhsFault {
    #[error("header truncated")]
    Truncated,
    #[error("AHSLength runs past the AHS area")]
    Overrun,
    #[error("AHSLength {0} wrong for its type")]
    BadLength(u16),
    #[error("type appears twice")]
    Duplicate,
}

/// Sizes of the parts of one PDU on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PduLayout {
    pub ahs_len: usize,
    pub header_digest_len: usize,
    pub data_len: usize,
    pub data_padding: usize,
    pub data_digest_len: usize,
}

impl PduLayout {
    /// Layout from the raw BHS (bytes 4..8 only; works even when the opcode is unknown).
    pub fn from_bhs_bytes(bhs: &[u8; BHS_LEN], digests: Digests) -> Self {
        let data_len = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
        Self::new(usize::from(bhs[4]) * 4, data_len, digests)
    }

    pub fn of(bhs: &Bhs, digests: Digests) -> Self {
        Self::new(
            usize::from(bhs.total_ahs_len) * 4,
            (bhs.data_segment_len & MAX_DATA_SEGMENT_LEN) as usize,
            digests,
        )
    }

    fn new(ahs_len: usize, data_len: usize, digests: Digests) -> Self {
        PduLayout {
            ahs_len,
            header_digest_len: if digests.header { DIGEST_LEN } else { 0 },
            data_len,
            data_padding: padding(data_len),
            // No data digest without a data segment.
            data_digest_len: if digests.data && data_len > 0 {
                DIGEST_LEN
            } else {
                0
            },
        }
    }

    /// Bytes after the 48-byte BHS that still belong to the header (AHS + header digest).
    pub fn header_tail_len(&self) -> usize {
        self.ahs_len + self.header_digest_len
    }

    /// BHS + AHS + header digest.
    pub fn header_len(&self) -> usize {
        BHS_LEN + self.header_tail_len()
    }

    /// Data segment + padding + data digest.
    pub fn data_wire_len(&self) -> usize {
        self.data_len + self.data_padding + self.data_digest_len
    }

    pub fn total_len(&self) -> usize {
        self.header_len() + self.data_wire_len()
    }

    /// Refuses a data segment longer than what this side declared with
    /// MaxRecvDataSegmentLength (or the login limit of 8192).
    pub fn check_data_len(&self, max_recv_data_segment_length: u32) -> Result<(), FramingError> {
        if self.data_len > max_recv_data_segment_length as usize {
            return Err(FramingError::DataSegmentTooLong {
                len: self.data_len as u32,
                max: max_recv_data_segment_length,
            });
        }
        Ok(())
    }
}

/// Verifies the header digest that follows BHS + AHS in `header` (laid out as `layout`).
pub fn check_header_digest(header: &[u8], layout: &PduLayout) -> Result<(), FramingError> {
    if layout.header_digest_len == 0 {
        return Ok(());
    }
    let covered = BHS_LEN + layout.ahs_len;
    let (Some(body), Some(d)) = (header.get(..covered), header.get(covered..covered + 4)) else {
        return Err(FramingError::OutputTooSmall {
            have: header.len(),
            need: covered + 4,
        });
    };
    let computed = crc32c(body);
    let received = digest_from_wire([d[0], d[1], d[2], d[3]]);
    if computed != received {
        return Err(FramingError::HeaderDigest { computed, received });
    }
    Ok(())
}

/// Compares a finished [`DataDigest`] with the digest bytes received after the segment.
pub fn check_data_digest(digest: &DataDigest, received: [u8; 4]) -> Result<(), FramingError> {
    let computed = digest.finish();
    let received = digest_from_wire(received);
    if computed != received {
        return Err(FramingError::DataDigest { computed, received });
    }
    Ok(())
}

/// One PDU found in a contiguous buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PduRef<'a> {
    pub bhs: Bhs,
    pub ahs: &'a [u8],
    /// The data segment without padding.
    pub data: &'a [u8],
}

/// Outcome of [`parse_pdu`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole PDU and the number of bytes it took.
    Complete(PduRef<'a>, usize),
    /// The buffer holds less than one PDU; at least this many bytes are needed in total.
    Incomplete(usize),
}

/// Parses the PDU at the start of `buf`: checks the data length limit and both digests, then
/// decodes the BHS. Lengths are checked before anything is read past the BHS.
pub fn parse_pdu(
    buf: &[u8],
    digests: Digests,
    max_recv_data_segment_length: u32,
) -> Result<Parsed<'_>, FramingError> {
    let Some(head) = buf.first_chunk::<BHS_LEN>() else {
        return Ok(Parsed::Incomplete(BHS_LEN));
    };
    let layout = PduLayout::from_bhs_bytes(head, digests);
    layout.check_data_len(max_recv_data_segment_length)?;
    let total = layout.total_len();
    if buf.len() < total {
        return Ok(Parsed::Incomplete(total));
    }
    check_header_digest(&buf[..layout.header_len()], &layout)?;
    let bhs = Bhs::decode(head)?;
    let ahs = &buf[BHS_LEN..BHS_LEN + layout.ahs_len];
    let data_start = layout.header_len();
    let data = &buf[data_start..data_start + layout.data_len];
    if layout.data_digest_len > 0 {
        let mut d = DataDigest::new();
        d.update(data);
        let at = data_start + layout.data_len + layout.data_padding;
        check_data_digest(&d, [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])?;
    }
    Ok(Parsed::Complete(PduRef { bhs, ahs, data }, total))
}

/// Writes BHS + AHS + header digest into `out` and returns the length written.
/// `bhs.total_ahs_len` is set from `ahs`, which must be whole 4-byte words.
pub fn encode_header(
    bhs: &Bhs,
    ahs: &[u8],
    digests: Digests,
    out: &mut [u8],
) -> Result<usize, FramingError> {
    if ahs.len() & 3 != 0 || ahs.len() > MAX_AHS_LEN {
        return Err(FramingError::AhsAreaLength(ahs.len()));
    }
    let need = BHS_LEN + ahs.len() + if digests.header { DIGEST_LEN } else { 0 };
    if out.len() < need {
        return Err(FramingError::OutputTooSmall {
            have: out.len(),
            need,
        });
    }
    let mut b = *bhs;
    b.total_ahs_len = (ahs.len() / 4) as u8;
    let mut head = [0u8; BHS_LEN];
    b.encode(&mut head);
    out[..BHS_LEN].copy_from_slice(&head);
    out[BHS_LEN..BHS_LEN + ahs.len()].copy_from_slice(ahs);
    if digests.header {
        let crc = crc32c(&out[..BHS_LEN + ahs.len()]);
        out[BHS_LEN + ahs.len()..need].copy_from_slice(&digest_to_wire(crc));
    }
    Ok(need)
}

/// Appends a whole PDU (header, data, padding, data digest) to `out`. For the login/text
/// path and tests; the data path sends header and pool buffers with one vectored write.
pub fn encode_pdu(
    bhs: &Bhs,
    ahs: &[u8],
    data: &[u8],
    digests: Digests,
    out: &mut Vec<u8>,
) -> Result<(), FramingError> {
    if data.len() > MAX_DATA_SEGMENT_LEN as usize {
        return Err(FramingError::DataSegmentTooLong {
            len: data.len().min(u32::MAX as usize) as u32,
            max: MAX_DATA_SEGMENT_LEN,
        });
    }
    let mut b = *bhs;
    b.data_segment_len = data.len() as u32;
    let mut head = [0u8; BHS_LEN + MAX_AHS_LEN + DIGEST_LEN];
    let n = encode_header(&b, ahs, digests, &mut head)?;
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(data);
    out.extend_from_slice(&[0u8; 4][..padding(data.len())]);
    if digests.data && !data.is_empty() {
        let mut d = DataDigest::new();
        d.update(data);
        out.extend_from_slice(&d.finish_wire());
    }
    Ok(())
}

/// AHS types (RFC 7143 §11.2.2).
pub const AHS_TYPE_EXTENDED_CDB: u8 = 1;
pub const AHS_TYPE_BIDI_READ_LENGTH: u8 = 2;

/// One Additional Header Segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ahs<'a> {
    /// CDB bytes beyond the first 16.
    ExtendedCdb(&'a [u8]),
    /// Expected read data length of a bidirectional command.
    BidiReadLength(u32),
    /// A type this codec does not interpret.
    Other { ahs_type: u8, data: &'a [u8] },
}

/// Iterates the AHS area of a PDU. Yields an error (and then stops) on a malformed entry.
pub fn ahs_entries(area: &[u8]) -> AhsIter<'_> {
    AhsIter {
        area,
        at: 0,
        failed: false,
    }
}

pub struct AhsIter<'a> {
    area: &'a [u8],
    at: usize,
    failed: bool,
}

impl<'a> Iterator for AhsIter<'a> {
    type Item = Result<Ahs<'a>, FramingError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.area.len() {
            return None;
        }
        let offset = self.at;
        let fail = |s: &mut Self, reason| {
            s.failed = true;
            Some(Err(FramingError::Ahs { offset, reason }))
        };
        let Some(h) = self.area.get(offset..offset + 3) else {
            return fail(self, AhsFault::Truncated);
        };
        let ahs_len = u16::from_be_bytes([h[0], h[1]]);
        let ahs_type = h[2];
        // AHSLength counts the type-specific bytes (from offset 3, including a reserved byte
        // for the standard types), excluding padding.
        let end = offset + 3 + usize::from(ahs_len);
        let Some(specific) = self.area.get(offset + 3..end) else {
            return fail(self, AhsFault::Overrun);
        };
        self.at = end + padding(3 + usize::from(ahs_len));
        let entry = match ahs_type {
            AHS_TYPE_EXTENDED_CDB => {
                if ahs_len < 2 {
                    return fail(self, AhsFault::BadLength(ahs_len));
                }
                Ahs::ExtendedCdb(&specific[1..])
            }
            AHS_TYPE_BIDI_READ_LENGTH => {
                if ahs_len != 5 {
                    return fail(self, AhsFault::BadLength(ahs_len));
                }
                Ahs::BidiReadLength(u32::from_be_bytes([
                    specific[1],
                    specific[2],
                    specific[3],
                    specific[4],
                ]))
            }
            _ => Ahs::Other {
                ahs_type,
                data: specific,
            },
        };
        Some(Ok(entry))
    }
}

/// Builds the AHS area for a command: an Extended CDB AHS when `cdb` is longer than 16 bytes,
/// a Bidirectional Read Expected Data Transfer Length AHS when `bidi_read_len` is given.
/// Returns the bytes written into `out` (a multiple of 4).
pub fn build_command_ahs(
    cdb: &[u8],
    bidi_read_len: Option<u32>,
    out: &mut [u8],
) -> Result<usize, FramingError> {
    if cdb.len() > MAX_CDB_LEN {
        return Err(FramingError::CdbLength(cdb.len()));
    }
    let mut at = 0;
    if cdb.len() > 16 {
        let ext = &cdb[16..];
        let ahs_len = ext.len() + 1;
        let wire = 3 + ahs_len + padding(3 + ahs_len);
        if out.len() < wire {
            return Err(FramingError::OutputTooSmall {
                have: out.len(),
                need: wire,
            });
        }
        out[..wire].fill(0);
        out[..2].copy_from_slice(&(ahs_len as u16).to_be_bytes());
        out[2] = AHS_TYPE_EXTENDED_CDB;
        out[4..4 + ext.len()].copy_from_slice(ext);
        at = wire;
    }
    if let Some(len) = bidi_read_len {
        if out.len() < at + 8 {
            return Err(FramingError::OutputTooSmall {
                have: out.len(),
                need: at + 8,
            });
        }
        out[at..at + 4].copy_from_slice(&[0, 5, AHS_TYPE_BIDI_READ_LENGTH, 0]);
        out[at + 4..at + 8].copy_from_slice(&len.to_be_bytes());
        at += 8;
    }
    Ok(at)
}

/// What a SCSI Command's AHS area adds to the BHS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandAhs {
    pub cdb: [u8; MAX_CDB_LEN],
    pub cdb_len: usize,
    pub bidi_read_len: Option<u32>,
}

impl CommandAhs {
    pub fn cdb(&self) -> &[u8] {
        &self.cdb[..self.cdb_len]
    }
}

/// Reassembles the full CDB (BHS part + Extended CDB AHS) and the bidirectional read length.
/// Other AHS types are ignored; a duplicated type is an error.
pub fn parse_command_ahs(cmd: &ScsiCommand, area: &[u8]) -> Result<CommandAhs, FramingError> {
    let mut out = CommandAhs {
        cdb: [0u8; MAX_CDB_LEN],
        cdb_len: 16,
        bidi_read_len: None,
    };
    out.cdb[..16].copy_from_slice(&cmd.cdb);
    let mut seen_cdb = false;
    let mut offset = 0;
    for entry in ahs_entries(area) {
        match entry? {
            Ahs::ExtendedCdb(ext) => {
                if seen_cdb {
                    return Err(FramingError::Ahs {
                        offset,
                        reason: AhsFault::Duplicate,
                    });
                }
                seen_cdb = true;
                let len = 16 + ext.len();
                if len > MAX_CDB_LEN {
                    return Err(FramingError::CdbLength(len));
                }
                out.cdb[16..len].copy_from_slice(ext);
                out.cdb_len = len;
                offset += 4 + ext.len() + padding(4 + ext.len());
            }
            Ahs::BidiReadLength(len) => {
                if out.bidi_read_len.is_some() {
                    return Err(FramingError::Ahs {
                        offset,
                        reason: AhsFault::Duplicate,
                    });
                }
                out.bidi_read_len = Some(len);
                offset += 8;
            }
            Ahs::Other { data, .. } => offset += 3 + data.len() + padding(3 + data.len()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bhs::{BhsBody, NopIn, TaskAttribute};
    use crate::lun::Lun;

    fn nop_in_bhs(data_len: u32) -> Bhs {
        Bhs::with_data_len(
            BhsBody::NopIn(NopIn {
                itt: 1,
                ttt: 0xffff_ffff,
                stat_sn: 2,
                exp_cmd_sn: 3,
                max_cmd_sn: 4,
                ..NopIn::default()
            }),
            data_len,
        )
    }

    #[test]
    fn layout_counts_padding_and_digests() {
        let b = nop_in_bhs(5).to_bytes();
        let plain = PduLayout::from_bhs_bytes(&b, Digests::default());
        assert_eq!(
            (plain.header_len(), plain.data_wire_len(), plain.total_len()),
            (48, 8, 56)
        );
        let both = PduLayout::from_bhs_bytes(
            &b,
            Digests {
                header: true,
                data: true,
            },
        );
        assert_eq!((both.header_len(), both.data_wire_len()), (52, 12));
        // No data digest without data.
        let empty = PduLayout::from_bhs_bytes(
            &nop_in_bhs(0).to_bytes(),
            Digests {
                header: true,
                data: true,
            },
        );
        assert_eq!(empty.total_len(), 52);
        let mut with_ahs = b;
        with_ahs[4] = 3;
        assert_eq!(
            PduLayout::from_bhs_bytes(&with_ahs, Digests::default()).header_tail_len(),
            12
        );
    }

    #[test]
    fn encode_then_parse_with_digests_and_detect_corruption() {
        let digests = Digests {
            header: true,
            data: true,
        };
        let mut wire = Vec::new();
        encode_pdu(&nop_in_bhs(0), &[], b"hello", digests, &mut wire).unwrap();
        assert_eq!(wire.len(), 48 + 4 + 8 + 4);
        assert_eq!(&wire[52..60], b"hello\0\0\0");
        // Header digest is CRC32C over the 48 bytes, little-endian on the wire.
        let hd = crc32c(&wire[..48]).to_le_bytes();
        assert_eq!(&wire[48..52], &hd);
        // Data digest covers the padding.
        assert_eq!(&wire[60..64], &crc32c(b"hello\0\0\0").to_le_bytes());

        let Parsed::Complete(pdu, used) = parse_pdu(&wire, digests, 8192).unwrap() else {
            panic!()
        };
        assert_eq!((pdu.data, used), (&b"hello"[..], 64));
        assert_eq!(pdu.bhs.data_segment_len, 5);

        for cut in [0, 47, 48, 63] {
            assert_eq!(
                parse_pdu(&wire[..cut], digests, 8192),
                Ok(Parsed::Incomplete(if cut < 48 { 48 } else { 64 }))
            );
        }
        let mut bad = wire.clone();
        bad[20] ^= 1;
        assert!(matches!(
            parse_pdu(&bad, digests, 8192),
            Err(FramingError::HeaderDigest { .. })
        ));
        let mut bad = wire.clone();
        bad[53] ^= 1;
        assert!(matches!(
            parse_pdu(&bad, digests, 8192),
            Err(FramingError::DataDigest { .. })
        ));
        assert_eq!(
            parse_pdu(&wire, digests, 4),
            Err(FramingError::DataSegmentTooLong { len: 5, max: 4 })
        );
    }

    #[test]
    fn extended_cdb_and_bidi_ahs() {
        // A 32-byte CDB (e.g. a variable-length CDB): 16 bytes in the BHS, 16 in the AHS.
        let cdb: Vec<u8> = (0..32u8).collect();
        let mut area = [0u8; 64];
        let n = build_command_ahs(&cdb, Some(4096), &mut area).unwrap();
        #[rustfmt::skip]
        let expected: [u8; 28] = [
            0x00, 0x11,       // AHSLength = 32 - 15 = 17
            0x01,             // AHSType: Extended CDB
            0x00,             // reserved
            16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
            0x00, 0x05,       // AHSLength 5
            0x02,             // AHSType: Bidirectional Read Expected Data Transfer Length
            0x00,             // reserved
            0x00, 0x00, 0x10, 0x00,
        ];
        assert_eq!(&area[..n], &expected);
        let mut cmd_cdb = [0u8; 16];
        cmd_cdb.copy_from_slice(&cdb[..16]);
        let cmd = ScsiCommand {
            immediate: false,
            final_: true,
            read: true,
            write: true,
            attr: TaskAttribute::Simple,
            lun: Lun::default(),
            itt: 0,
            expected_data_transfer_length: 0,
            cmd_sn: 0,
            exp_stat_sn: 0,
            cdb: cmd_cdb,
        };
        let parsed = parse_command_ahs(&cmd, &area[..n]).unwrap();
        assert_eq!(parsed.cdb(), &cdb[..]);
        assert_eq!(parsed.bidi_read_len, Some(4096));
        // Odd lengths are padded: a 17-byte CDB gives AHSLength 2 and one word + padding.
        let n = build_command_ahs(&cdb[..17], None, &mut area).unwrap();
        assert_eq!(&area[..n], &[0, 2, 1, 0, 16, 0, 0, 0]);
        assert_eq!(
            parse_command_ahs(&cmd, &area[..n]).unwrap().cdb(),
            &cdb[..17]
        );
        // Truncated and overrunning entries are typed errors.
        assert!(matches!(
            parse_command_ahs(&cmd, &[0, 9, 1, 0]),
            Err(FramingError::Ahs {
                reason: AhsFault::Overrun,
                ..
            })
        ));
        assert!(matches!(
            parse_command_ahs(&cmd, &[0, 4, 2, 0, 0, 0, 0, 0]),
            Err(FramingError::Ahs {
                reason: AhsFault::BadLength(4),
                ..
            })
        ));
        assert!(build_command_ahs(&[0u8; 261], None, &mut [0u8; 512]).is_err());
    }
}
