//! The target connection's view of NVMe/TCP PDUs: what it needs to parse host-to-controller
//! PDUs out of a byte stream and to build controller-to-host ones into slot memory.

use gyre_nvme::{Command, Completion};
use gyre_reactor::SgList;

const ICREQ: u8 = 0x00;
const ICRESP: u8 = 0x01;
const H2C_TERM_REQ: u8 = 0x02;
const C2H_TERM_REQ: u8 = 0x03;
const CAPSULE_CMD: u8 = 0x04;
const CAPSULE_RESP: u8 = 0x05;
const H2C_DATA: u8 = 0x06;
const C2H_DATA: u8 = 0x07;
const R2T: u8 = 0x09;

const FLAG_HDGST: u8 = 0x01;
const FLAG_DDGST: u8 = 0x02;
const FLAG_LAST_PDU: u8 = 0x04;
const FLAG_SUCCESS: u8 = 0x08;

/// Fatal error statuses of a termination request.
pub const FES_INVALID_HEADER_FIELD: u8 = 0x01;
pub const FES_PDU_SEQUENCE_ERROR: u8 = 0x02;
pub const FES_HEADER_DIGEST_ERROR: u8 = 0x03;
pub const FES_DATA_OUT_OF_RANGE: u8 = 0x04;
pub const FES_DATA_LIMIT_EXCEEDED: u8 = 0x05;

/// Negotiated receive rules.
#[derive(Debug, Clone, Copy)]
pub struct RxRules {
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_h2c_data: usize,
    /// Largest PDU data of a command capsule we accept.
    pub max_in_capsule: usize,
    initialized: bool,
}

impl RxRules {
    pub fn initial(max_h2c_data: usize) -> Self {
        Self {
            header_digest: false,
            data_digest: false,
            max_h2c_data,
            max_in_capsule: 8192,
            initialized: false,
        }
    }

    pub fn enable(&mut self, header_digest: bool, data_digest: bool) {
        self.header_digest = header_digest;
        self.data_digest = data_digest;
        self.initialized = true;
    }
}

/// A host-to-controller PDU header.
#[derive(Debug, Clone, Copy)]
pub enum H2cPdu {
    IcReq {
        pfv: u16,
        hpda: u8,
        header_digest: bool,
        data_digest: bool,
    },
    TermReq {
        fes: u16,
        fei: u32,
    },
    CapsuleCmd(Command),
    H2cData {
        cccid: u16,
        ttag: u16,
        datao: u32,
        datal: u32,
        last: bool,
    },
}

/// A decoded header and where its data lies.
pub struct Parsed {
    pub pdu: H2cPdu,
    /// Padding bytes between the header (and its digest) and the data.
    pub pad: usize,
    /// Data bytes (without the data digest).
    pub data_len: usize,
}

/// A fatal transport error: what to put in the C2HTermReq.
#[derive(Debug, Clone)]
pub struct PduFault {
    pub fes: u8,
    pub fei: u32,
    pub why: &'static str,
    /// The offending PDU header, echoed in the termination request.
    pub header: Vec<u8>,
}

impl PduFault {
    fn new(fes: u8, fei: u32, why: &'static str) -> Self {
        Self {
            fes,
            fei,
            why,
            header: Vec::new(),
        }
    }

    pub fn invalid_field(offset: u32, why: &'static str) -> Self {
        Self::new(FES_INVALID_HEADER_FIELD, offset, why)
    }

    pub fn sequence(why: &'static str) -> Self {
        Self::new(FES_PDU_SEQUENCE_ERROR, 0, why)
    }

    pub fn out_of_range(why: &'static str) -> Self {
        Self::new(FES_DATA_OUT_OF_RANGE, 0, why)
    }

    fn with_header(mut self, h: &[u8]) -> Self {
        self.header = h[..h.len().min(128)].to_vec();
        self
    }
}

fn hlen_of(ty: u8) -> Option<usize> {
    match ty {
        ICREQ => Some(128),
        H2C_TERM_REQ => Some(24),
        CAPSULE_CMD => Some(72),
        H2C_DATA => Some(24),
        _ => None,
    }
}

/// Bytes of header (with its digest) to read before decoding, once 8 bytes are in hand;
/// `None` until then.
pub fn header_len(avail: &[u8], rules: &RxRules) -> Result<Option<usize>, PduFault> {
    if avail.len() < 8 {
        return Ok(None);
    }
    let ty = avail[0];
    let Some(hlen) = hlen_of(ty) else {
        return Err(
            PduFault::invalid_field(0, "PDU type not valid from a host").with_header(&avail[..8])
        );
    };
    if usize::from(avail[2]) != hlen {
        return Err(
            PduFault::invalid_field(2, "wrong HLEN for the PDU type").with_header(&avail[..8])
        );
    }
    let digest = if ty != ICREQ && ty != H2C_TERM_REQ && rules.header_digest {
        4
    } else {
        0
    };
    Ok(Some(hlen + digest))
}

/// Decodes a full header (as sized by [`header_len`]).
pub fn decode_h2c(hdr: &[u8], rules: &RxRules) -> Result<Parsed, PduFault> {
    let fault = |f: PduFault| f.with_header(hdr);
    let ty = hdr[0];
    let flags = hdr[1];
    let hlen = usize::from(hdr[2]);
    let pdo = usize::from(hdr[3]);
    let plen = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
    let hd = if ty != ICREQ && ty != H2C_TERM_REQ && rules.header_digest {
        4
    } else {
        0
    };
    if !rules.initialized && ty != ICREQ {
        return Err(fault(PduFault::sequence("PDU before ICReq")));
    }
    if rules.initialized && ty == ICREQ {
        return Err(fault(PduFault::sequence("second ICReq")));
    }
    if ty != ICREQ && ty != H2C_TERM_REQ && (flags & FLAG_HDGST != 0) != rules.header_digest {
        return Err(fault(PduFault::invalid_field(
            1,
            "HDGSTF does not match the negotiated digest",
        )));
    }
    if hd == 4 {
        let want = crate::tcp::digest::header_digest(&hdr[..hlen]);
        let got = u32::from_le_bytes([hdr[hlen], hdr[hlen + 1], hdr[hlen + 2], hdr[hlen + 3]]);
        if want != got {
            return Err(
                PduFault::new(FES_HEADER_DIGEST_ERROR, 0, "header digest mismatch")
                    .with_header(hdr),
            );
        }
    }
    match ty {
        ICREQ => {
            if plen != 128 || pdo != 0 {
                return Err(fault(PduFault::invalid_field(
                    if pdo != 0 { 3 } else { 4 },
                    "bad ICReq length",
                )));
            }
            let dgst = hdr[11];
            Ok(Parsed {
                pdu: H2cPdu::IcReq {
                    pfv: u16::from_le_bytes([hdr[8], hdr[9]]),
                    hpda: hdr[10],
                    header_digest: dgst & 1 != 0,
                    data_digest: dgst & 2 != 0,
                },
                pad: 0,
                data_len: 0,
            })
        }
        H2C_TERM_REQ => {
            if !(24..=24 + 128).contains(&plen) {
                return Err(fault(PduFault::invalid_field(4, "bad H2CTermReq length")));
            }
            Ok(Parsed {
                pdu: H2cPdu::TermReq {
                    fes: u16::from_le_bytes([hdr[8], hdr[9]]),
                    fei: u32::from_le_bytes([hdr[10], hdr[11], hdr[12], hdr[13]]),
                },
                pad: 0,
                data_len: plen - 24,
            })
        }
        CAPSULE_CMD | H2C_DATA => {
            let (pad, data_len) =
                data_layout(hdr, flags, hlen + hd, pdo, plen, rules).map_err(fault)?;
            if ty == CAPSULE_CMD {
                if data_len > rules.max_in_capsule {
                    return Err(fault(PduFault::new(
                        FES_DATA_LIMIT_EXCEEDED,
                        0,
                        "in-capsule data larger than IOCCSZ allows",
                    )));
                }
                let mut sqe = [0u8; 64];
                sqe.copy_from_slice(&hdr[8..72]);
                return Ok(Parsed {
                    pdu: H2cPdu::CapsuleCmd(Command::decode(&sqe)),
                    pad,
                    data_len,
                });
            }
            let datao = u32::from_le_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
            let datal = u32::from_le_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]);
            if datal as usize != data_len || data_len == 0 {
                return Err(fault(PduFault::invalid_field(
                    16,
                    "DATAL does not match PLEN",
                )));
            }
            if data_len > rules.max_h2c_data {
                return Err(fault(PduFault::new(
                    FES_DATA_LIMIT_EXCEEDED,
                    0,
                    "H2CData larger than MAXH2CDATA",
                )));
            }
            Ok(Parsed {
                pdu: H2cPdu::H2cData {
                    cccid: u16::from_le_bytes([hdr[8], hdr[9]]),
                    ttag: u16::from_le_bytes([hdr[10], hdr[11]]),
                    datao,
                    datal,
                    last: flags & FLAG_LAST_PDU != 0,
                },
                pad,
                data_len,
            })
        }
        _ => Err(fault(PduFault::invalid_field(
            0,
            "PDU type not valid from a host",
        ))),
    }
}

/// Padding and data length of a PDU that may carry data.
fn data_layout(
    _hdr: &[u8],
    flags: u8,
    header_end: usize,
    pdo: usize,
    plen: usize,
    rules: &RxRules,
) -> Result<(usize, usize), PduFault> {
    if pdo == 0 {
        if plen != header_end {
            return Err(PduFault::invalid_field(
                4,
                "PLEN does not match a PDU without data",
            ));
        }
        return Ok((0, 0));
    }
    if pdo < header_end || !pdo.is_multiple_of(4) {
        return Err(PduFault::invalid_field(
            3,
            "PDO inside the header or misaligned",
        ));
    }
    if (flags & FLAG_DDGST != 0) != rules.data_digest {
        return Err(PduFault::invalid_field(
            1,
            "DDGSTF does not match the negotiated digest",
        ));
    }
    let dd = if rules.data_digest { 4 } else { 0 };
    if plen < pdo + dd + 1 {
        return Err(PduFault::invalid_field(
            4,
            "PLEN too small for the data offset",
        ));
    }
    Ok((pdo - header_end, plen - pdo - dd))
}

fn put_common(out: &mut [u8], ty: u8, flags: u8, hlen: u8, pdo: u8, plen: u32) {
    out[0] = ty;
    out[1] = flags;
    out[2] = hlen;
    out[3] = pdo;
    out[4..8].copy_from_slice(&plen.to_le_bytes());
}

fn seal(out: &mut [u8], hlen: usize, hdgst: bool) -> usize {
    if hdgst {
        let d = crate::tcp::digest::header_digest(&out[..hlen]);
        out[hlen..hlen + 4].copy_from_slice(&d.to_le_bytes());
        hlen + 4
    } else {
        hlen
    }
}

pub fn encode_ic_resp(
    out: &mut [u8],
    header_digest: bool,
    data_digest: bool,
    max_h2c: u32,
) -> usize {
    out[..128].fill(0);
    put_common(out, ICRESP, 0, 128, 0, 128);
    out[8..10].copy_from_slice(&0u16.to_le_bytes()); // PFV 0
    out[10] = 0; // CPDA: no alignment required
    out[11] = u8::from(header_digest) | (u8::from(data_digest) << 1);
    out[12..16].copy_from_slice(&max_h2c.to_le_bytes());
    128
}

pub fn encode_capsule_resp(out: &mut [u8], cqe: &Completion, hdgst: bool) -> usize {
    out[..24].fill(0);
    let plen = 24 + if hdgst { 4 } else { 0 };
    put_common(
        out,
        CAPSULE_RESP,
        if hdgst { FLAG_HDGST } else { 0 },
        24,
        0,
        plen,
    );
    let mut c = [0u8; 16];
    cqe.encode(&mut c);
    out[8..24].copy_from_slice(&c);
    seal(out, 24, hdgst)
}

pub fn encode_r2t(
    out: &mut [u8],
    cccid: u16,
    ttag: u16,
    r2to: u32,
    r2tl: u32,
    hdgst: bool,
) -> usize {
    out[..24].fill(0);
    let plen = 24 + if hdgst { 4 } else { 0 };
    put_common(out, R2T, if hdgst { FLAG_HDGST } else { 0 }, 24, 0, plen);
    out[8..10].copy_from_slice(&cccid.to_le_bytes());
    out[10..12].copy_from_slice(&ttag.to_le_bytes());
    out[12..16].copy_from_slice(&r2to.to_le_bytes());
    out[16..20].copy_from_slice(&r2tl.to_le_bytes());
    seal(out, 24, hdgst)
}

/// A C2HData header (with digest and padding up to the host's data alignment). The data and
/// its digest follow separately.
#[allow(clippy::too_many_arguments)]
pub fn encode_c2h_data(
    out: &mut [u8],
    cccid: u16,
    datao: u32,
    datal: u32,
    success: bool,
    hdgst: bool,
    ddgst: bool,
    align: usize,
) -> usize {
    let header_end: usize = 24 + if hdgst { 4 } else { 0 };
    let pdo = header_end.div_ceil(align.max(4)) * align.max(4);
    out[..pdo].fill(0);
    let mut flags = FLAG_LAST_PDU;
    if success {
        flags |= FLAG_SUCCESS;
    }
    if hdgst {
        flags |= FLAG_HDGST;
    }
    if ddgst {
        flags |= FLAG_DDGST;
    }
    let plen = pdo as u32 + datal + if ddgst { 4 } else { 0 };
    put_common(out, C2H_DATA, flags, 24, pdo as u8, plen);
    out[8..10].copy_from_slice(&cccid.to_le_bytes());
    out[12..16].copy_from_slice(&datao.to_le_bytes());
    out[16..20].copy_from_slice(&datal.to_le_bytes());
    seal(out, 24, hdgst);
    pdo
}

pub fn encode_c2h_term_req(out: &mut [u8], fes: u8, fei: u32, header: &[u8]) -> usize {
    let data = &header[..header.len().min(out.len() - 24).min(128)];
    out[..24].fill(0);
    put_common(out, C2H_TERM_REQ, 0, 24, 0, (24 + data.len()) as u32);
    out[8..10].copy_from_slice(&u16::from(fes).to_le_bytes());
    out[10..14].copy_from_slice(&fei.to_le_bytes());
    out[24..24 + data.len()].copy_from_slice(data);
    24 + data.len()
}

/// CRC32C over `len` bytes of `buf` from `offset` (the codec's digest; a range outside the
/// buffer digests to a value no peer's digest will match).
pub fn data_digest(buf: &SgList, offset: usize, len: usize) -> u32 {
    crate::tcp::digest::sg_data_digest(buf, offset, len).unwrap_or(!0)
}
