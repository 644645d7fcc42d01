//! The parameter-list parsers (UNMAP, MODE SELECT, PERSISTENT RESERVE OUT, TransportID) on
//! arbitrary bytes: byte 0 picks the parser and its variant, bytes 1..=4 the CDB's length
//! field, the rest is the list.
#![no_main]

use gyre_scsi::cdb::Limits;
use gyre_scsi::emulate::{parse_mode_select, parse_unmap, unmap_descriptor, ModeCtx, ModeValues};
use gyre_scsi::pr::{parse_pr_out, parse_transport_id, NexusIdent, PrState};
use libfuzzer_sys::fuzz_target;

const LIM: Limits = Limits {
    block_size: 512,
    num_blocks: 1 << 20,
    max_transfer_blocks: 2048,
    max_write_same_blocks: 65536,
    max_compare_write_blocks: 255,
    unmap: true,
};

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let sel = data[0];
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]);
    let list = &data[5..];
    match sel % 4 {
        0 => {
            if let Ok(n) = parse_unmap(len & 0xFFFF, list, &LIM) {
                for i in 0..n {
                    let d = unmap_descriptor(list, i).expect("checked descriptor");
                    assert!(d.lba + d.blocks as u64 <= LIM.num_blocks);
                }
            }
        }
        1 => {
            let v = ModeValues {
                wce: sel & 0x10 != 0,
                d_sense: sel & 0x20 != 0,
            };
            let c = ModeCtx {
                current: v,
                default: v,
                wce_changeable: sel & 0x40 != 0,
                write_protected: false,
                limits: LIM,
            };
            let ten = sel & 0x80 != 0;
            let _ = parse_mode_select(ten, len & if ten { 0xFFFF } else { 0xFF }, list, &c);
        }
        2 => {
            let sa = (sel >> 2) & 0x07;
            if let Ok(p) = parse_pr_out(sa, len.min(4096), list) {
                // Run it against a state machine with a registration or two.
                let a = NexusIdent {
                    initiator: "iqn.fuzz:a,i,0x01",
                    rtpi: 1,
                };
                let mut st = PrState::default();
                let mut uas = Vec::new();
                let reg = parse_pr_out(6, 24, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]).expect("valid");
                st.pr_out(&a, 6, 0, 0, &reg, &mut uas);
                let _ = st.pr_out(&a, sa, sel >> 5, list.first().copied().unwrap_or(0) & 0x0F, &p, &mut uas);
                let mut out = Vec::new();
                for s in 0..4 {
                    st.pr_in(s, 5, &mut out);
                }
            }
        }
        _ => {
            let _ = parse_transport_id(list, 24);
        }
    }
});
