//! Arbitrary bytes through the BHS decoder, the framing (digests, lengths, AHS) and the text
//! parser. Nothing may panic; whatever decodes must re-encode to the same value.
#![no_main]

use gyre_iscsi::bhs::{Bhs, BhsBody};
use gyre_iscsi::framing::{ahs_entries, parse_command_ahs, parse_pdu, Digests, PduLayout, Parsed};
use gyre_iscsi::sendtargets::{parse_response, Portal};
use gyre_iscsi::text::{parse_binary, parse_number, TextLimits, TextList, TextReassembly};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let digests = Digests {
        header: mode & 1 != 0,
        data: mode & 2 != 0,
    };
    let limits = TextLimits {
        max_total_len: 4096,
        ..TextLimits::default()
    };

    if let Some(head) = rest.first_chunk::<48>() {
        let layout = PduLayout::from_bhs_bytes(head, digests);
        assert!(layout.total_len() >= 48);
        if let Ok(bhs) = Bhs::decode(head) {
            let again = Bhs::decode(&bhs.to_bytes()).expect("re-encoded header decodes");
            assert_eq!(again, bhs);
        }
    }

    // Walk the buffer as a stream of PDUs, as a connection would.
    let mut buf = rest;
    let mut reassembly = TextReassembly::new(4096);
    for _ in 0..64 {
        match parse_pdu(buf, digests, 1 << 16) {
            Ok(Parsed::Complete(pdu, used)) => {
                assert!(used >= 48 && used <= buf.len());
                for entry in ahs_entries(pdu.ahs) {
                    if entry.is_err() {
                        break;
                    }
                }
                match pdu.bhs.body {
                    BhsBody::ScsiCommand(cmd) => {
                        if let Ok(c) = parse_command_ahs(&cmd, pdu.ahs) {
                            assert!(c.cdb().len() >= 16 && c.cdb().len() <= 260);
                        }
                    }
                    BhsBody::LoginRequest(r) => {
                        if let Ok(Some(text)) = reassembly.push(pdu.data, r.continue_) {
                            let _ = TextList::parse(&text, &limits);
                        }
                    }
                    BhsBody::TextResponse(r) => {
                        if let Ok(Some(text)) = reassembly.push(pdu.data, r.continue_) {
                            if let Ok(list) = TextList::parse(&text, &limits) {
                                let _ = parse_response(&list);
                                for (_, v) in list.iter() {
                                    let _ = parse_number(v);
                                    let _ = parse_binary(v);
                                    let _ = Portal::parse(v);
                                }
                            }
                        }
                    }
                    _ => {}
                }
                buf = &buf[used..];
            }
            Ok(Parsed::Incomplete(need)) => {
                assert!(need > buf.len());
                break;
            }
            Err(_) => break,
        }
    }

    // The whole input as a text segment too.
    if let Ok(list) = TextList::parse(rest, &limits) {
        let encoded = list.encode();
        assert_eq!(TextList::parse(&encoded, &limits).ok(), Some(list));
    }
});
