//! Streams arbitrary bytes through the NVMe/TCP receive path under fuzzer-chosen negotiated
//! rules: common header -> validation -> specific header -> data length accounting, PDU after
//! PDU. Every accepted header is re-encoded by the peer's encoder and must decode to the same
//! PDU; every rejection must yield a TermReq that itself decodes.
#![no_main]

use gyre_nvmf::tcp::digest::DataDigest;
use gyre_nvmf::tcp::pdu::{
    parse_header, HeaderParse, IcReq, Pdu, PduLayout, PduRules, Role, TermReq, MAX_HEADER_LEN,
};
use libfuzzer_sys::fuzz_target;

fn rules_from(cfg: &[u8; 12]) -> PduRules {
    let role = if cfg[0] & 1 == 0 {
        Role::Controller
    } else {
        Role::Host
    };
    let le = |i: usize| u32::from_le_bytes([cfg[i], cfg[i + 1], cfg[i + 2], 0]);
    let mut r = match role {
        Role::Controller => PduRules::controller(le(3).max(4096), le(6)),
        Role::Host => PduRules::host(le(6)),
    };
    r.initialized = cfg[0] & 2 != 0;
    r.header_digest = cfg[0] & 4 != 0;
    r.data_digest = cfg[0] & 8 != 0;
    r.cpda = cfg[1] & 31;
    r.hpda = cfg[2] & 31;
    r.max_c2h_data = le(9);
    r
}

fn peer(r: &PduRules) -> PduRules {
    PduRules {
        role: match r.role {
            Role::Controller => Role::Host,
            Role::Host => Role::Controller,
        },
        ..*r
    }
}

fn check_layout(l: &PduLayout) {
    let plen = l.plen as usize;
    assert!(l.header_len <= MAX_HEADER_LEN);
    assert!(l.header_len <= plen);
    if l.data_len > 0 {
        assert!(l.data_offset >= l.header_len);
        assert_eq!(l.pad_len, l.data_offset - l.header_len);
        assert_eq!(l.data_offset + l.data_len + l.trailer_len(), plen);
    } else {
        assert!(!l.data_digest);
        assert_eq!(l.pad_len, 0);
        assert_eq!(l.header_len, plen);
    }
    assert_eq!(l.remaining_after_header(), plen - l.header_len);
}

/// Re-encodes `pdu` as its sender would and checks it decodes to the same thing.
fn round_trip(pdu: &Pdu, layout: &PduLayout, rules: &PduRules) {
    let tx = peer(rules);
    let mut out = [0u8; 256];
    let n = match pdu {
        Pdu::IcReq(p) => p.encode(&mut out).expect("icreq"),
        Pdu::IcResp(p) => p.encode(&mut out).expect("icresp"),
        Pdu::H2cTermReq(t) | Pdu::C2hTermReq(t) => {
            let data = [0u8; 128];
            t.encode(tx.role, &data[..layout.data_len], &mut out)
                .expect("termreq")
        }
        Pdu::CapsuleCmd(c) => {
            c.encode(layout.data_len as u32, &tx, &mut out)
                .expect("capsule")
                .len
        }
        Pdu::CapsuleResp(c) => c.encode(&tx, &mut out).expect("resp"),
        Pdu::H2cData(d) => d.encode(&tx, &mut out).expect("h2c").len,
        Pdu::C2hData(d) => d.encode(&tx, &mut out).expect("c2h").len,
        Pdu::R2t(r) => r.encode(&tx, &mut out).expect("r2t"),
    };
    match parse_header(&out[..n], rules) {
        Ok(HeaderParse::Complete {
            layout: l2,
            pdu: p2,
        }) => {
            assert_eq!(&p2, pdu);
            assert_eq!(l2.data_len, layout.data_len);
            assert_eq!(l2.data_digest, layout.data_digest);
        }
        other => panic!("re-encoded {pdu:?} did not decode: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((cfg, mut buf)) = data.split_first_chunk::<12>() else {
        return;
    };
    let mut rules = rules_from(cfg);
    for _ in 0..64 {
        match parse_header(buf, &rules) {
            Ok(HeaderParse::NeedMore(n)) => {
                assert!(n > buf.len());
                return;
            }
            Ok(HeaderParse::Complete { layout, pdu }) => {
                check_layout(&layout);
                round_trip(&pdu, &layout, &rules);
                // The connection state machine's part of the handshake.
                match pdu {
                    Pdu::IcReq(req) => {
                        let resp = rules.accept_icreq(&req, cfg[1] & 31, true, true);
                        assert!(rules.initialized);
                        assert_eq!(resp.header_digest, req.header_digest);
                    }
                    Pdu::IcResp(resp) => {
                        let req = IcReq {
                            pfv: 0,
                            hpda: rules.hpda,
                            header_digest: true,
                            data_digest: true,
                            maxr2t: 0,
                        };
                        rules.accept_icresp(&req, &resp).expect("icresp");
                    }
                    _ => {}
                }
                let plen = layout.plen as usize;
                let Some(whole) = buf.get(..plen) else {
                    return;
                };
                if layout.data_len > 0 {
                    let payload = &whole[layout.data_offset..layout.data_offset + layout.data_len];
                    let mut d = DataDigest::new();
                    for chunk in payload.chunks(1000) {
                        d.update(chunk);
                    }
                    if layout.data_digest {
                        let at = layout.data_offset + layout.data_len;
                        let mut wire = [0u8; 4];
                        wire.copy_from_slice(&whole[at..at + 4]);
                        let _ = d.matches(wire);
                    }
                }
                buf = &buf[plen..];
            }
            Err(e) => {
                let _ = e.to_string();
                if let Some(t) = TermReq::for_error(&e) {
                    assert_eq!(t.fes_kind(), e.fes());
                    let mut out = [0u8; 160];
                    let n = t
                        .encode(rules.role, &buf[..buf.len().min(200)], &mut out)
                        .expect("termreq");
                    assert!(n <= 152);
                    let mut other = peer(&rules);
                    other.initialized = true;
                    match parse_header(&out[..n], &other) {
                        Ok(HeaderParse::Complete {
                            pdu: Pdu::H2cTermReq(t2) | Pdu::C2hTermReq(t2),
                            ..
                        }) => assert_eq!(t2, t),
                        other => panic!("TermReq did not decode: {other:?}"),
                    }
                }
                return;
            }
        }
    }
});
