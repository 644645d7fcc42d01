//! Byte-level tests of the NVMe/TCP PDU codec: every PDU written out by hand from the
//! transport specification's layouts, decoded and re-encoded byte for byte, and one negative
//! test per validation rule. Digest bytes were computed with an independent bitwise CRC32C.

use super::digest::{data_digest, header_digest, DataDigest};
use super::pdu::*;
use gyre_nvme::{Completion, SglDescriptor, Status};

fn ctrl(hd: bool, dd: bool) -> PduRules {
    let mut r = PduRules::controller(128 * 1024, 8192);
    r.initialized = true;
    r.header_digest = hd;
    r.data_digest = dd;
    r
}

fn host(hd: bool, dd: bool) -> PduRules {
    let mut r = PduRules::host(1 << 20);
    r.initialized = true;
    r.header_digest = hd;
    r.data_digest = dd;
    r
}

fn parse(buf: &[u8], rules: &PduRules) -> (PduLayout, Pdu) {
    match parse_header(buf, rules) {
        Ok(HeaderParse::Complete { layout, pdu }) => (layout, pdu),
        other => panic!("expected a complete header, got {other:?}"),
    }
}

fn err(buf: &[u8], rules: &PduRules) -> PduError {
    match parse_header(buf, rules) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn assert_field(e: PduError, offset: u32) {
    assert_eq!(e.fes(), Some(Fes::InvalidHeaderField), "{e}");
    assert_eq!(e.fei(), offset, "{e}");
}

#[rustfmt::skip]
const ICREQ: [u8; 16] = [
    0x00,                   // PDU-type: ICReq
    0x00,                   // FLAGS
    0x80,                   // HLEN 128
    0x00,                   // PDO
    0x80, 0x00, 0x00, 0x00, // PLEN 128
    0x00, 0x00,             // PFV 0
    0x00,                   // HPDA 0
    0x03,                   // DGST: HDGST_ENABLE | DDGST_ENABLE
    0x0F, 0x00, 0x00, 0x00, // MAXR2T 15 (16 outstanding R2Ts)
];

fn icreq_bytes() -> [u8; 128] {
    let mut b = [0u8; 128];
    b[..16].copy_from_slice(&ICREQ);
    b
}

#[test]
fn icreq_decodes_and_encodes() {
    let b = icreq_bytes();
    let rules = PduRules::controller(128 * 1024, 8192);
    let (layout, pdu) = parse(&b, &rules);
    assert_eq!(layout.header_len, 128);
    assert_eq!(layout.data_len, 0);
    assert!(!layout.data_digest);
    let Pdu::IcReq(req) = pdu else {
        panic!("{pdu:?}")
    };
    assert_eq!(
        req,
        IcReq {
            pfv: 0,
            hpda: 0,
            header_digest: true,
            data_digest: true,
            maxr2t: 15
        }
    );
    let mut out = [0xAAu8; 128];
    assert_eq!(req.encode(&mut out).unwrap(), 128);
    assert_eq!(out, b);
}

#[test]
fn icresp_decodes_and_encodes() {
    #[rustfmt::skip]
    let head: [u8; 16] = [
        0x01,                   // PDU-type: ICResp
        0x00,                   // FLAGS
        0x80,                   // HLEN 128
        0x00,                   // PDO
        0x80, 0x00, 0x00, 0x00, // PLEN 128
        0x00, 0x00,             // PFV 0
        0x00,                   // CPDA 0
        0x01,                   // DGST: header digest only
        0x00, 0x00, 0x02, 0x00, // MAXH2CDATA 131072
    ];
    let mut b = [0u8; 128];
    b[..16].copy_from_slice(&head);
    let (_, pdu) = parse(&b, &PduRules::host(1 << 20));
    let Pdu::IcResp(resp) = pdu else {
        panic!("{pdu:?}")
    };
    assert_eq!(resp.maxh2cdata, 131_072);
    assert!(resp.header_digest && !resp.data_digest);
    let mut out = [0u8; 128];
    resp.encode(&mut out).unwrap();
    assert_eq!(out, b);
}

#[test]
fn initialization_negotiates_both_ends() {
    let req = IcReq {
        pfv: 0,
        hpda: 1,
        header_digest: true,
        data_digest: true,
        maxr2t: 0,
    };
    let mut c = PduRules::controller(65536, 8192);
    let resp = c.accept_icreq(&req, 0, true, false);
    assert!(c.initialized && c.header_digest && !c.data_digest);
    assert_eq!((c.rx_alignment(), c.tx_alignment()), (4, 8));
    assert_eq!(resp.maxh2cdata, 65536);
    let mut h = PduRules::host(1 << 20);
    h.accept_icresp(&req, &resp).unwrap();
    assert!(h.initialized && h.header_digest && !h.data_digest);
    assert_eq!((h.rx_alignment(), h.tx_alignment()), (8, 4));
    // A controller may not turn on a digest the host did not ask for.
    let plain = IcReq::default();
    let mut h = PduRules::host(1 << 20);
    assert_field(h.accept_icresp(&plain, &resp).unwrap_err(), 11);
}

#[rustfmt::skip]
const WRITE_SQE: [u8; 64] = [
    0x01, 0x40, 0x07, 0x00, // Write, PSDT 01b, CID 7
    0x01, 0x00, 0x00, 0x00, // NSID 1
    0, 0, 0, 0, 0, 0, 0, 0, // CDW2, CDW3
    0, 0, 0, 0, 0, 0, 0, 0, // MPTR
    0, 0, 0, 0, 0, 0, 0, 0, // SGL1 address: offset 0 into the in-capsule data
    0x10, 0x00, 0x00, 0x00, // SGL1 length 16
    0x00, 0x00, 0x00, 0x01, // SGL1 identifier: data block, offset subtype
    0, 0, 0, 0, 0, 0, 0, 0, // CDW10, CDW11: SLBA 0
    0, 0, 0, 0,             // CDW12: NLB 0 (one block)
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // CDW13..15
];

fn capsule(
    ch: [u8; 8],
    data: &[u8],
    hdgst: Option<[u8; 4]>,
    pad: usize,
    ddgst: Option<[u8; 4]>,
) -> Vec<u8> {
    let mut v = ch.to_vec();
    v.extend_from_slice(&WRITE_SQE);
    if let Some(h) = hdgst {
        v.extend_from_slice(&h);
    }
    v.extend(std::iter::repeat_n(0u8, pad));
    v.extend_from_slice(data);
    if let Some(d) = ddgst {
        v.extend_from_slice(&d);
    }
    v
}

#[test]
fn capsule_cmd_with_in_capsule_data() {
    let data: Vec<u8> = (0..16).collect();
    #[rustfmt::skip]
    let ch = [
        0x04,                   // CapsuleCmd
        0x00,                   // no digests
        0x48,                   // HLEN 72
        0x48,                   // PDO 72: data right after the SQE
        0x58, 0x00, 0x00, 0x00, // PLEN 88 = 72 + 16
    ];
    let pdu_bytes = capsule(ch, &data, None, 0, None);
    let rules = ctrl(false, false);
    let (layout, pdu) = parse(&pdu_bytes, &rules);
    assert_eq!(layout.header_len, 72);
    assert_eq!(layout.data_offset, 72);
    assert_eq!(layout.pad_len, 0);
    assert_eq!(layout.data_len, 16);
    assert!(!layout.data_digest);
    assert_eq!(layout.remaining_after_header(), 16);
    let Pdu::CapsuleCmd(cmd) = pdu else {
        panic!("{pdu:?}")
    };
    assert_eq!(cmd.sqe.opcode, 0x01);
    assert_eq!(cmd.sqe.cid, 7);
    assert_eq!(cmd.sqe.dptr, SglDescriptor::data_block_offset(0, 16));
    assert_eq!(
        &pdu_bytes[layout.data_offset..][..layout.data_len],
        &data[..]
    );
    // The host's encoder writes exactly the header bytes.
    let mut out = [0u8; 80];
    let h = cmd.encode(16, &host(false, false), &mut out).unwrap();
    assert_eq!(h.len, 72);
    assert_eq!(h.plen, 88);
    assert!(!h.data_digest);
    assert_eq!(&out[..72], &pdu_bytes[..72]);
}

#[test]
fn capsule_cmd_with_digests() {
    let data: Vec<u8> = (0..16).collect();
    #[rustfmt::skip]
    let ch = [
        0x04,                   // CapsuleCmd
        0x03,                   // HDGSTF | DDGSTF
        0x48,                   // HLEN 72
        0x4C,                   // PDO 76 = 72 + header digest
        0x60, 0x00, 0x00, 0x00, // PLEN 96 = 76 + 16 + 4
    ];
    let hdgst = [0x3E, 0x8B, 0x35, 0xF7];
    let ddgst = [0xEB, 0x08, 0xC9, 0xD9];
    let pdu_bytes = capsule(ch, &data, Some(hdgst), 0, Some(ddgst));
    let rules = ctrl(true, true);
    let (layout, _) = parse(&pdu_bytes, &rules);
    assert_eq!(layout.header_len, 76);
    assert_eq!(layout.data_offset, 76);
    assert_eq!(layout.data_len, 16);
    assert!(layout.data_digest);
    assert_eq!(layout.trailer_len(), 4);
    assert_eq!(header_digest(&pdu_bytes[..72]).to_le_bytes(), hdgst);
    let mut dd = DataDigest::new();
    dd.update(&pdu_bytes[76..84]);
    dd.update(&pdu_bytes[84..92]);
    assert!(dd.matches(ddgst));
    assert_eq!(data_digest(&data).to_le_bytes(), ddgst);
    let cmd = CapsuleCmd {
        sqe: gyre_nvme::Command::decode(&WRITE_SQE),
    };
    let mut out = [0u8; 128];
    let h = cmd.encode(16, &host(true, true), &mut out).unwrap();
    assert_eq!((h.len, h.plen, h.data_digest), (76, 96, true));
    assert_eq!(&out[..76], &pdu_bytes[..76]);
    // A flipped header bit fails the header digest.
    let mut bad = pdu_bytes.clone();
    bad[20] ^= 1;
    let e = err(&bad, &rules);
    assert_eq!(e.fes(), Some(Fes::HeaderDigestError));
    assert_eq!(e.fei(), 0);
}

#[test]
fn capsule_cmd_padding_for_cpda() {
    // CPDA 1: data aligned to 8 bytes; HLEN 72 + digest 4 = 76 -> PDO 80, 4 pad bytes.
    let mut rules = ctrl(true, false);
    rules.cpda = 1;
    let mut host_rules = host(true, false);
    host_rules.cpda = 1;
    let cmd = CapsuleCmd {
        sqe: gyre_nvme::Command::decode(&WRITE_SQE),
    };
    let mut out = [0xFFu8; 96];
    let h = cmd.encode(16, &host_rules, &mut out).unwrap();
    assert_eq!((h.len, h.plen), (80, 96));
    assert_eq!(out[3], 80);
    assert_eq!(&out[76..80], &[0, 0, 0, 0]);
    let mut v = out[..80].to_vec();
    v.extend(0..16u8);
    let (layout, _) = parse(&v, &rules);
    assert_eq!(
        (layout.data_offset, layout.pad_len, layout.data_len),
        (80, 4, 16)
    );
    // PDO 76 is not 8-aligned.
    v[3] = 76;
    assert_field(err(&v, &rules), 3);
}

#[test]
fn capsule_cmd_without_data() {
    #[rustfmt::skip]
    let ch = [
        0x04, 0x00, 0x48, 0x00, // CapsuleCmd, no flags, HLEN 72, PDO 0
        0x48, 0x00, 0x00, 0x00, // PLEN 72
    ];
    let v = capsule(ch, &[], None, 0, None);
    let rules = ctrl(false, true);
    let (layout, _) = parse(&v, &rules);
    assert_eq!((layout.data_len, layout.data_digest), (0, false));
    let cmd = CapsuleCmd {
        sqe: gyre_nvme::Command::decode(&WRITE_SQE),
    };
    let mut out = [0u8; 72];
    let h = cmd.encode(0, &host(false, true), &mut out).unwrap();
    assert_eq!((h.len, h.plen, h.data_digest), (72, 72, false));
    assert_eq!(&out[..], &v[..]);
    // DDGSTF without data.
    let mut bad = v.clone();
    bad[1] = 0x02;
    assert_field(err(&bad, &rules), 1);
    // PDO pointing somewhere with no data.
    let mut bad = v;
    bad[3] = 0x50;
    assert_field(err(&bad, &rules), 3);
}

#[test]
fn capsule_resp_plain_and_with_digest() {
    #[rustfmt::skip]
    let plain: [u8; 24] = [
        0x05, 0x00, 0x18, 0x00, // CapsuleResp, no flags, HLEN 24, PDO 0
        0x18, 0x00, 0x00, 0x00, // PLEN 24
        0x00, 0x00, 0x00, 0x00, // DW0
        0x00, 0x00, 0x00, 0x00, // DW1
        0x01, 0x00,             // SQHD 1
        0x01, 0x00,             // SQID 1
        0x07, 0x00,             // CID 7
        0x00, 0x00,             // status: success
    ];
    let (_, pdu) = parse(&plain, &host(false, false));
    let Pdu::CapsuleResp(r) = pdu else {
        panic!("{pdu:?}")
    };
    assert_eq!((r.cqe.cid, r.cqe.sqhd, r.cqe.sqid), (7, 1, 1));
    assert!(r.cqe.status.is_success());
    let mut out = [0u8; 28];
    assert_eq!(r.encode(&ctrl(false, false), &mut out).unwrap(), 24);
    assert_eq!(&out[..24], &plain);

    let mut with = [0u8; 28];
    with[..24].copy_from_slice(&plain);
    with[1] = 0x01; // HDGSTF
    with[4] = 0x1C; // PLEN 28
    with[24..].copy_from_slice(&[0x6F, 0xBC, 0x0F, 0x36]);
    let (layout, _) = parse(&with, &host(true, false));
    assert_eq!(layout.header_len, 28);
    assert_eq!(r.encode(&ctrl(true, true), &mut out).unwrap(), 28);
    assert_eq!(out, with);

    // A failed command's status travels intact.
    let failed = CapsuleResp {
        cqe: Completion::new(9, Status::LBA_OUT_OF_RANGE.with_dnr()),
    };
    failed.encode(&ctrl(false, false), &mut out).unwrap();
    assert_eq!(&out[22..24], &[0x00, 0x81]);
}

#[test]
fn h2c_data() {
    #[rustfmt::skip]
    let head: [u8; 28] = [
        0x06,                   // H2CData
        0x07,                   // HDGSTF | DDGSTF | LAST_PDU
        0x18,                   // HLEN 24
        0x1C,                   // PDO 28
        0x30, 0x00, 0x00, 0x00, // PLEN 48 = 28 + 16 + 4
        0x07, 0x00,             // CCCID 7
        0x03, 0x00,             // TTAG 3
        0x00, 0x10, 0x00, 0x00, // DATAO 4096
        0x10, 0x00, 0x00, 0x00, // DATAL 16
        0x00, 0x00, 0x00, 0x00, // reserved
        0xF1, 0xE0, 0x1E, 0x91, // HDGST
    ];
    let mut v = head.to_vec();
    v.extend(0..16u8);
    v.extend_from_slice(&data_digest(&v[28..44]).to_le_bytes());
    let rules = ctrl(true, true);
    let (layout, pdu) = parse(&v, &rules);
    assert_eq!((layout.data_offset, layout.data_len), (28, 16));
    let Pdu::H2cData(d) = pdu else {
        panic!("{pdu:?}")
    };
    assert_eq!(
        d,
        H2cData {
            cccid: 7,
            ttag: 3,
            datao: 4096,
            datal: 16,
            last: true
        }
    );
    let mut out = [0u8; 28];
    let h = d.encode(&host(true, true), &mut out).unwrap();
    assert_eq!((h.len, h.plen, h.data_digest), (28, 48, true));
    assert_eq!(out, head);
    // DATAL disagreeing with PLEN.
    let mut bad = v.clone();
    bad[16] = 0x0F;
    let hd = header_digest(&bad[..24]).to_le_bytes();
    bad[24..28].copy_from_slice(&hd);
    assert_field(err(&bad, &rules), 16);
    // More than MAXH2CDATA.
    let mut small = rules;
    small.maxh2cdata = 8;
    let e = err(&v, &small);
    assert_eq!(e.fes(), Some(Fes::DataTransferLimitExceeded));
    assert_eq!(e.fei(), 0);
}

#[test]
fn c2h_data_with_success() {
    #[rustfmt::skip]
    let head: [u8; 28] = [
        0x07,                   // C2HData
        0x0F,                   // HDGSTF | DDGSTF | LAST_PDU | SUCCESS
        0x18,                   // HLEN 24
        0x1C,                   // PDO 28
        0x30, 0x00, 0x00, 0x00, // PLEN 48
        0x07, 0x00,             // CCCID 7
        0x00, 0x00,             // reserved
        0x00, 0x00, 0x00, 0x00, // DATAO 0
        0x10, 0x00, 0x00, 0x00, // DATAL 16
        0x00, 0x00, 0x00, 0x00, // reserved
        0x0F, 0x7A, 0x63, 0x2A, // HDGST
    ];
    let mut v = head.to_vec();
    v.extend(0..16u8);
    v.extend_from_slice(&[0xEB, 0x08, 0xC9, 0xD9]);
    let rules = host(true, true);
    let (layout, pdu) = parse(&v, &rules);
    assert!(layout.data_digest);
    let Pdu::C2hData(d) = pdu else {
        panic!("{pdu:?}")
    };
    assert!(d.last && d.success);
    assert_eq!((d.cccid, d.datao, d.datal), (7, 0, 16));
    let mut out = [0u8; 64];
    let h = d.encode(&ctrl(true, true), &mut out).unwrap();
    assert_eq!((h.len, h.plen), (28, 48));
    assert_eq!(&out[..28], &head);
    // SUCCESS without LAST_PDU is a fatal error at FLAGS.
    let mut bad = v.clone();
    bad[1] = 0x0B;
    assert_field(err(&bad, &rules), 1);
    // The encoder never sets SUCCESS without LAST_PDU.
    let not_last = C2hData {
        last: false,
        success: true,
        ..d
    };
    not_last.encode(&ctrl(true, true), &mut out).unwrap();
    assert_eq!(out[1], 0x03);
    // With HPDA 3 (16-byte alignment) a controller pads to PDO 32.
    let mut padded = ctrl(false, false);
    padded.hpda = 3;
    let h = d.encode(&padded, &mut out).unwrap();
    assert_eq!((h.len, h.plen, out[3]), (32, 48, 32));
}

#[test]
fn r2t() {
    #[rustfmt::skip]
    let b: [u8; 28] = [
        0x09,                   // R2T
        0x01,                   // HDGSTF
        0x18,                   // HLEN 24
        0x00,                   // PDO 0
        0x1C, 0x00, 0x00, 0x00, // PLEN 28
        0x07, 0x00,             // CCCID 7
        0x03, 0x00,             // TTAG 3
        0x00, 0x00, 0x00, 0x00, // R2TO 0
        0x00, 0x20, 0x00, 0x00, // R2TL 8192
        0x00, 0x00, 0x00, 0x00, // reserved
        0x6B, 0xFC, 0x69, 0xBF, // HDGST
    ];
    let rules = host(true, false);
    let (_, pdu) = parse(&b, &rules);
    let Pdu::R2t(r) = pdu else { panic!("{pdu:?}") };
    assert_eq!(
        r,
        R2t {
            cccid: 7,
            ttag: 3,
            r2to: 0,
            r2tl: 8192
        }
    );
    let mut out = [0u8; 28];
    assert_eq!(r.encode(&ctrl(true, false), &mut out).unwrap(), 28);
    assert_eq!(out, b);
    assert!(check_data_range(r.r2to, r.r2tl, 8192).is_ok());
    let e = check_data_range(4096, r.r2tl, 8192).unwrap_err();
    assert_eq!(e.fes(), Some(Fes::DataTransferOutOfRange));
    assert!(check_data_range(u32::MAX, u32::MAX, u64::MAX).is_ok());
    // R2TL 0.
    let mut bad = b;
    bad[17] = 0;
    let hd = header_digest(&bad[..24]).to_le_bytes();
    bad[24..].copy_from_slice(&hd);
    assert_field(err(&bad, &rules), 16);
    // DDGSTF and PDO are not allowed on an R2T.
    let mut bad = b;
    bad[1] = 0x03;
    assert_field(err(&bad, &host(true, true)), 1);
    let mut bad = b;
    bad[3] = 0x1C;
    assert_field(err(&bad, &rules), 3);
    let mut bad = b;
    bad[4] = 0x20;
    assert_field(err(&bad, &rules), 4);
}

#[test]
fn term_reqs() {
    let offending = icreq_bytes();
    let t = TermReq::new(Fes::InvalidHeaderField, 2);
    let mut out = [0u8; 200];
    let n = t.encode(Role::Controller, &offending, &mut out).unwrap();
    assert_eq!(n, 152);
    #[rustfmt::skip]
    let head: [u8; 24] = [
        0x03,                   // C2HTermReq
        0x00,                   // FLAGS
        0x18,                   // HLEN 24
        0x00,                   // PDO
        0x98, 0x00, 0x00, 0x00, // PLEN 152 = 24 + 128
        0x01, 0x00,             // FES: invalid header field
        0x02, 0x00, 0x00, 0x00, // FEI: byte 2 (HLEN)
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // reserved
    ];
    assert_eq!(&out[..24], &head);
    assert_eq!(&out[24..152], &offending[..]);
    let (layout, pdu) = parse(&out[..n], &host(false, false));
    assert_eq!((layout.data_offset, layout.data_len), (24, 128));
    assert_eq!(pdu, Pdu::C2hTermReq(t));
    assert_eq!(t.fes_kind(), Some(Fes::InvalidHeaderField));

    // A host's H2CTermReq, accepted even before initialization.
    let h = TermReq::new(Fes::PduSequenceError, 0);
    let n = h.encode(Role::Host, &offending[..8], &mut out).unwrap();
    assert_eq!(n, 32);
    assert_eq!(&out[..8], &[0x02, 0, 0x18, 0, 0x20, 0, 0, 0]);
    let (_, pdu) = parse(&out[..n], &PduRules::controller(65536, 8192));
    assert_eq!(pdu, Pdu::H2cTermReq(h));

    // PLEN above 152, and digest flags, are invalid.
    let mut bad = out;
    bad[4] = 0x99;
    assert_field(err(&bad[..n], &ctrl(false, false)), 4);
    let mut bad = out;
    bad[1] = 0x01;
    assert_field(err(&bad[..n], &ctrl(true, false)), 1);
    assert_eq!(
        TermReq::for_error(&PduError::invalid_field(4, "x")),
        Some(TermReq::new(Fes::InvalidHeaderField, 4))
    );
    assert_eq!(
        TermReq::for_error(&PduError::Incomplete { needed: 8 }),
        None
    );
}

#[test]
fn streaming_needs_more() {
    let b = icreq_bytes();
    let rules = PduRules::controller(65536, 8192);
    assert_eq!(parse_header(&[], &rules), Ok(HeaderParse::NeedMore(8)));
    assert_eq!(parse_header(&b[..7], &rules), Ok(HeaderParse::NeedMore(8)));
    assert_eq!(
        parse_header(&b[..8], &rules),
        Ok(HeaderParse::NeedMore(128))
    );
    assert_eq!(
        parse_header(&b[..127], &rules),
        Ok(HeaderParse::NeedMore(128))
    );
    let layout = CommonHeader::decode(b.first_chunk().unwrap())
        .validate(&rules)
        .unwrap();
    assert_eq!(
        Pdu::decode(&layout, &b[..100]),
        Err(PduError::Incomplete { needed: 128 })
    );
}

#[test]
fn type_direction_and_sequence_rules() {
    let ic = icreq_bytes();
    // Unknown type, 1.1 kickstart types, and the wrong direction: FEI 0.
    for t in [0x08u8, 0x0C, 0xFF, 0x0A, 0x0B] {
        let mut b = ic;
        b[0] = t;
        assert_field(err(&b, &ctrl(false, false)), 0);
    }
    let mut resp = ic;
    resp[0] = 0x05;
    resp[2] = 0x18;
    resp[4] = 0x18;
    assert_field(err(&resp[..24], &ctrl(false, false)), 0);
    // ICReq twice.
    let e = err(&ic, &ctrl(false, false));
    assert_eq!(e.fes(), Some(Fes::PduSequenceError));
    // A command before ICReq.
    let cmd = capsule([0x04, 0, 0x48, 0, 0x48, 0, 0, 0], &[], None, 0, None);
    let e = err(&cmd, &PduRules::controller(65536, 8192));
    assert_eq!(e.fes(), Some(Fes::PduSequenceError));
    // An ICResp after initialization on the host.
    let mut icresp = ic;
    icresp[0] = 0x01;
    assert_eq!(
        err(&icresp, &host(false, false)).fes(),
        Some(Fes::PduSequenceError)
    );
}

#[test]
fn hlen_pdo_plen_flags_rules() {
    let rules = PduRules::controller(65536, 8192);
    // ICReq: HLEN, PDO, PLEN and digest flags.
    let mut b = icreq_bytes();
    b[2] = 0x7F;
    assert_field(err(&b, &rules), 2);
    let mut b = icreq_bytes();
    b[3] = 4;
    assert_field(err(&b, &rules), 3);
    let mut b = icreq_bytes();
    b[4] = 0x84;
    assert_field(err(&b, &rules), 4);
    let mut b = icreq_bytes();
    b[1] = 0x01;
    assert_field(err(&b, &rules), 1);
    // ICReq fields: PFV is an unsupported parameter, HPDA above 31 invalid.
    let mut b = icreq_bytes();
    b[8] = 1;
    let e = err(&b, &rules);
    assert_eq!((e.fes(), e.fei()), (Some(Fes::UnsupportedParameter), 8));
    let mut b = icreq_bytes();
    b[10] = 32;
    assert_field(err(&b, &rules), 10);
    // ICResp: MAXH2CDATA below 4096 or unaligned, CPDA above 31.
    let mut r = icreq_bytes();
    r[0] = 0x01;
    r[12..16].copy_from_slice(&4094u32.to_le_bytes());
    assert_field(err(&r, &PduRules::host(1 << 20)), 12);
    r[12..16].copy_from_slice(&8190u32.to_le_bytes());
    assert_field(err(&r, &PduRules::host(1 << 20)), 12);
    r[12..16].copy_from_slice(&8192u32.to_le_bytes());
    r[10] = 40;
    assert_field(err(&r, &PduRules::host(1 << 20)), 10);

    let data: Vec<u8> = (0..16).collect();
    let good = capsule(
        [0x04, 0x00, 0x48, 0x48, 0x58, 0, 0, 0],
        &data,
        None,
        0,
        None,
    );
    let c = ctrl(false, false);
    assert!(parse_header(&good, &c).is_ok());
    // HDGSTF disagreeing with the negotiated header digest (both ways).
    let mut b = good.clone();
    b[1] = 0x01;
    assert_field(err(&b, &c), 1);
    assert_field(err(&good, &ctrl(true, false)), 1);
    // DDGSTF without a negotiated data digest, and missing when negotiated.
    let mut b = good.clone();
    b[1] = 0x02;
    assert_field(err(&b, &c), 1);
    assert_field(err(&good, &ctrl(false, true)), 1);
    // HLEN wrong for the type.
    let mut b = good.clone();
    b[2] = 0x40;
    assert_field(err(&b, &c), 2);
    // PDO inside the header, past the end.
    let mut b = good.clone();
    b[3] = 0x40;
    assert_field(err(&b, &c), 3);
    let mut b = good.clone();
    b[3] = 0x5C;
    assert_field(err(&b, &c), 3);
    // PLEN shorter than the header.
    let mut b = good.clone();
    b[4] = 0x40;
    assert_field(err(&b, &c), 4);
    // PDO equal to PLEN with a data digest: no room for data.
    let dd = ctrl(false, true);
    let mut b = good.clone();
    b[1] = 0x02;
    b[4] = 0x4C; // PLEN 76: PDO 72 + digest, zero data bytes
    assert_field(err(&b, &dd), 4);
    // In-capsule data above the controller's limit.
    let mut tight = c;
    tight.max_in_capsule_data = 8;
    assert_eq!(
        err(&good, &tight).fes(),
        Some(Fes::DataTransferLimitExceeded)
    );
    // H2CData without any data.
    #[rustfmt::skip]
    let empty: [u8; 24] = [
        0x06, 0x04, 0x18, 0x00, 0x18, 0, 0, 0, // H2CData, LAST_PDU, PLEN 24
        7, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_field(err(&empty, &c), 4);
    // C2HData above the host's limit.
    let d = C2hData {
        cccid: 1,
        datao: 0,
        datal: 4096,
        last: true,
        success: false,
    };
    let mut out = [0u8; 24];
    d.encode(&ctrl(false, false), &mut out).unwrap();
    let mut v = out.to_vec();
    v.resize(24 + 4096, 0);
    let mut hr = host(false, false);
    assert!(parse_header(&v, &hr).is_ok());
    hr.max_c2h_data = 1024;
    assert_eq!(err(&v, &hr).fes(), Some(Fes::DataTransferLimitExceeded));
}

#[test]
fn encoders_check_buffers() {
    let mut small = [0u8; 10];
    assert!(matches!(
        IcReq::default().encode(&mut small),
        Err(EncodeError::BufferTooSmall {
            needed: 128,
            got: 10
        })
    ));
    let r = R2t::default();
    assert!(r.encode(&ctrl(true, false), &mut small).is_err());
    let c = CapsuleCmd {
        sqe: gyre_nvme::Command::decode(&WRITE_SQE),
    };
    assert!(c.encode(16, &host(false, false), &mut [0u8; 71]).is_err());
    let big = C2hData {
        datal: u32::MAX,
        ..Default::default()
    };
    assert_eq!(
        big.encode(&ctrl(false, false), &mut [0u8; 64]),
        Err(EncodeError::TooLong)
    );
}
