//! Every command through a real LunChannel on a real reactor over a malloc bdev, with the
//! exact bytes SPC-4 / SBC-3 require.

mod common;

use common::*;
use gyre_scsi::{AluaState, LunConfig, PortGroup, ResetKind, ScsiStatus};

const TUR: [u8; 6] = [0, 0, 0, 0, 0, 0];

#[test]
fn power_on_unit_attention_then_ready_and_inquiry_exempt() {
    let h = Harness::new(1);
    // INQUIRY neither reports nor clears the unit attention.
    let inq = h.exec(h.a, &[0x12, 0, 0, 0, 36, 0], &[]);
    assert!(inq.good());
    assert_eq!(inq.data.len(), 36);
    let t = h.exec(h.a, &TUR, &[]);
    assert_eq!(t.status, ScsiStatus::CheckCondition);
    assert_eq!(t.kcq(), (0x6, 0x29, 0x00));
    // Fixed format, 18 bytes.
    assert_eq!(t.sense.len(), 18);
    assert_eq!(t.sense[0], 0x70);
    assert!(h.exec(h.a, &TUR, &[]).good());
    // B still has its own, and REQUEST SENSE returns it as data.
    let rs = h.exec(h.b, &[0x03, 0, 0, 0, 252, 0], &[]);
    assert!(rs.good());
    assert_eq!(rs.data.len(), 18);
    assert_eq!((rs.data[2], rs.data[12], rs.data[13]), (0x6, 0x29, 0x00));
    assert!(h.exec(h.b, &TUR, &[]).good());
    let rs = h.exec(h.b, &[0x03, 0, 0, 0, 252, 0], &[]);
    assert_eq!(&rs.data[..3], &[0x70, 0, 0]);
}

#[test]
fn inquiry_standard_and_vpd_pages() {
    let h = Harness::new(1);
    h.clear_uas();
    let s = h.exec(h.a, &[0x12, 0, 0, 1, 4, 0], &[]);
    assert_eq!(s.data.len(), 74);
    assert_eq!(
        &s.data[..8],
        &[0x00, 0x00, 0x06, 0x12, 69, 0x10, 0x00, 0x02]
    );
    assert_eq!(&s.data[8..16], b"GYRE    ");
    assert_eq!(&s.data[16..27], b"Gyre volume");
    // Truncated to the allocation length.
    assert_eq!(h.exec(h.a, &[0x12, 0, 0, 0, 5, 0], &[]).data.len(), 5);
    let p0 = h.exec(h.a, &[0x12, 1, 0x00, 0, 255, 0], &[]);
    assert_eq!(
        p0.data,
        [0, 0, 0, 7, 0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2]
    );
    let sn = h.exec(h.a, &[0x12, 1, 0x80, 0, 255, 0], &[]);
    assert_eq!(sn.data[3] as usize, h.lun.serial().len());
    assert_eq!(&sn.data[4..], h.lun.serial().as_bytes());
    let di = h.exec(h.a, &[0x12, 1, 0x83, 0, 255, 0], &[]);
    assert_eq!(&di.data[4..8], &[0x01, 0x03, 0x00, 16]);
    assert_eq!(di.data[8] >> 4, 6, "NAA 6");
    // Relative target port 1 and target port group 1 designators at the end.
    let n = di.data.len();
    assert_eq!(&di.data[n - 16..n - 8], &[0x51, 0x94, 0, 4, 0, 0, 0, 1]);
    assert_eq!(&di.data[n - 8..], &[0x51, 0x95, 0, 4, 0, 0, 0, 1]);
    let bl = h.exec(h.a, &[0x12, 1, 0xB0, 0, 255, 0], &[]);
    assert_eq!(bl.data.len(), 64);
    assert_eq!(&bl.data[..6], &[0, 0xB0, 0, 0x3C, 0x01, 255]);
    assert_eq!(&bl.data[8..12], &2048u32.to_be_bytes());
    assert_eq!(&bl.data[20..28], &[0, 0x10, 0, 0, 0, 0, 1, 0]);
    // MAXIMUM WRITE SAME LENGTH stays within MAXIMUM TRANSFER LENGTH.
    assert_eq!(&bl.data[36..44], &2048u64.to_be_bytes());
    let lbp = h.exec(h.a, &[0x12, 1, 0xB2, 0, 255, 0], &[]);
    assert_eq!(lbp.data, [0, 0xB2, 0, 4, 0, 0xE4, 0x02, 0]);
    // Unknown page; page code without EVPD.
    let bad = h.exec(h.a, &[0x12, 1, 0x42, 0, 255, 0], &[]);
    assert_eq!(bad.status, ScsiStatus::CheckCondition);
    assert_eq!(
        bad.sense,
        [0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xC0, 0, 2]
    );
    let bad = h.exec(h.a, &[0x12, 0, 0x80, 0, 255, 0], &[]);
    assert_eq!(bad.kcq(), (5, 0x24, 0));
}

#[test]
fn read_capacity_and_report_luns() {
    let h = Harness::new(1);
    h.clear_uas();
    let rc = h.exec(h.a, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(rc.data, [0, 0, 0x1F, 0xFF, 0, 0, 2, 0]);
    let rc16 = h.exec(
        h.a,
        &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        &[],
    );
    assert_eq!(rc16.data.len(), 32);
    assert_eq!(
        &rc16.data[..16],
        &[0, 0, 0, 0, 0, 0, 0x1F, 0xFF, 0, 0, 2, 0, 0, 0, 0xC0, 0]
    );
    // PMI clear with a non-zero LBA is invalid.
    let bad = h.exec(h.a, &[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], &[]);
    assert_eq!(bad.kcq(), (5, 0x24, 0));
    h.lun.set_lun_list(vec![0, 3]);
    let rl = h.exec(h.a, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
    assert_eq!(
        rl.data,
        [0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0]
    );
    let bad = h.exec(h.a, &[0xA0, 0, 7, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
    assert_eq!(bad.kcq(), (5, 0x24, 0));
}

#[test]
fn write_read_back_ranges_and_zero_length() {
    let h = Harness::new(1);
    h.clear_uas();
    let data: Vec<u8> = (0..4 * BS).map(|i| (i % 251) as u8).collect();
    assert!(h.exec(h.a, &write16(100, 4), &data).good());
    let r = h.exec(h.a, &read16(100, 4), &[]);
    assert!(r.good());
    assert_eq!(r.data, data);
    // READ 10 / 12 / 6 of the same.
    assert_eq!(h.exec(h.a, &cdb10(0x28, 0x08, 100, 4), &[]).data, data);
    assert_eq!(
        h.exec(h.a, &[0xA8, 0, 0, 0, 0, 100, 0, 0, 0, 4, 0, 0], &[])
            .data,
        data
    );
    assert_eq!(h.exec(h.a, &[0x08, 0, 0, 100, 4, 0], &[]).data, data);
    // WRITE 10 with FUA, then read.
    assert!(h.exec(h.a, &cdb10(0x2A, 0x08, 200, 1), &data[..BS]).good());
    assert_eq!(h.exec(h.a, &read16(200, 1), &[]).data, &data[..BS]);
    // Beyond the end.
    let oob = h.exec(h.a, &read16(BLOCKS - 1, 2), &[]);
    assert_eq!(oob.kcq(), (5, 0x21, 0));
    let oob = h.exec(h.a, &write16(BLOCKS, 1), &data[..BS]);
    assert_eq!(oob.kcq(), (5, 0x21, 0));
    // Zero blocks: fine at the capacity, out of range past it.
    assert!(h.exec(h.a, &cdb10(0x28, 0, BLOCKS as u32, 0), &[]).good());
    assert_eq!(
        h.exec(h.a, &cdb10(0x28, 0, BLOCKS as u32 + 1, 0), &[])
            .kcq(),
        (5, 0x21, 0)
    );
    // RDPROTECT without protection information.
    let p = h.exec(h.a, &cdb10(0x28, 0x20, 0, 1), &[]);
    assert_eq!(p.sense[15..18], [0xCF, 0, 1]);
    // Unsupported opcode.
    assert_eq!(h.exec(h.a, &[0x04, 0, 0, 0, 0, 0], &[]).kcq(), (5, 0x20, 0));
    assert!(h.exec(h.a, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).good());
}

#[test]
fn short_write_payload_writes_only_the_whole_blocks_received() {
    let h = Harness::new(1);
    h.clear_uas();
    assert!(h.exec(h.a, &write16(0, 2), &vec![b'a'; 2 * BS]).good());
    // Two blocks in the CDB, one block of data (the iSCSI EDTL was one block).
    assert!(h.exec(h.a, &cdb10(0x2A, 0, 0, 2), &vec![b'b'; BS]).good());
    let r = h.exec(h.a, &read16(0, 2), &[]).data;
    assert!(r[..BS].iter().all(|&b| b == b'b'));
    assert!(r[BS..].iter().all(|&b| b == b'a'));
    // No data at all: nothing written, GOOD.
    assert!(h.exec(h.a, &cdb10(0x2A, 0, 0, 1), &[]).good());
    // COMPARE AND WRITE needs its whole payload.
    assert_eq!(
        h.exec(h.a, &caw(0, 1), &vec![b'b'; BS]).kcq(),
        (5, 0x0E, 0x03)
    );
}

#[test]
fn verify_and_write_and_verify() {
    let h = Harness::new(1);
    h.clear_uas();
    let data = vec![0x5Au8; 2 * BS];
    assert!(h.exec(h.a, &cdb10(0x2E, 0x02, 10, 2), &data).good());
    assert!(h.exec(h.a, &cdb10(0x2F, 0x02, 10, 2), &data).good());
    let mut other = data.clone();
    other[BS + 3] = 0;
    let m = h.exec(h.a, &cdb10(0x2F, 0x02, 10, 2), &other);
    assert_eq!(m.status, ScsiStatus::CheckCondition);
    assert_eq!(m.kcq(), (0xE, 0x1D, 0));
    assert_eq!(m.sense[0], 0xF0, "VALID");
    assert_eq!(&m.sense[3..7], &((BS + 3) as u32).to_be_bytes());
    // BYTCHK 3: one block compared against each.
    assert!(h.exec(h.a, &cdb10(0x2F, 0x06, 10, 2), &data[..BS]).good());
    // BYTCHK 0: medium verification only.
    assert!(h.exec(h.a, &cdb10(0x2F, 0, 10, 2), &[]).good());
    assert_eq!(
        h.exec(h.a, &cdb10(0x2F, 0x04, 10, 2), &[]).kcq(),
        (5, 0x24, 0)
    );
}

#[test]
fn unmap_write_same_and_lba_status() {
    let h = Harness::new(1);
    h.clear_uas();
    let ones = vec![0xFFu8; 16 * BS];
    assert!(h.exec(h.a, &write16(0, 16), &ones).good());
    // UNMAP blocks 2..6.
    let mut p = vec![0u8; 24];
    p[1] = 22;
    p[3] = 16;
    p[15] = 2;
    p[19] = 4;
    assert!(h.exec(h.a, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p).good());
    let r = h.exec(h.a, &read16(0, 8), &[]).data;
    assert!(r[..2 * BS].iter().all(|&b| b == 0xFF));
    assert!(r[2 * BS..6 * BS].iter().all(|&b| b == 0));
    assert!(r[6 * BS..].iter().all(|&b| b == 0xFF));
    // Out of range and short lists.
    p[10] = 0x7F;
    assert_eq!(
        h.exec(h.a, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p).kcq(),
        (5, 0x21, 0)
    );
    assert_eq!(
        h.exec(h.a, &[0x42, 0, 0, 0, 0, 0, 0, 0, 4, 0], &p[..4])
            .kcq(),
        (5, 0x1A, 0)
    );
    assert!(h.exec(h.a, &[0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).good());
    // WRITE SAME 10 of a pattern over 300 blocks, read back.
    let pat: Vec<u8> = (0..BS).map(|i| i as u8).collect();
    assert!(h.exec(h.a, &cdb10(0x41, 0, 1000, 300), &pat).good());
    let r = h.exec(h.a, &read16(1000, 300), &[]).data;
    assert!(r.chunks(BS).all(|c| c == pat.as_slice()));
    // WRITE SAME 16 with UNMAP and zeroes.
    let mut ws = vec![0x93, 0x08];
    ws.extend_from_slice(&1000u64.to_be_bytes());
    ws.extend_from_slice(&10u32.to_be_bytes());
    ws.extend_from_slice(&[0, 0]);
    assert!(h.exec(h.a, &ws, &vec![0u8; BS]).good());
    assert!(h
        .exec(h.a, &read16(1000, 10), &[])
        .data
        .iter()
        .all(|&b| b == 0));
    // NDOB: no data out, zeroes.
    ws[1] = 0x01;
    ws[9] = 0xE8 + 10; // lba 1010
    assert!(h.exec(h.a, &ws, &[]).good());
    assert!(h
        .exec(h.a, &read16(1010, 10), &[])
        .data
        .iter()
        .all(|&b| b == 0));
    // Zero blocks (WSNZ) and beyond the end.
    assert_eq!(h.exec(h.a, &cdb10(0x41, 0, 0, 0), &pat).kcq(), (5, 0x24, 0));
    assert_eq!(
        h.exec(h.a, &cdb10(0x41, 0, BLOCKS as u32 - 1, 2), &pat)
            .kcq(),
        (5, 0x21, 0)
    );
    // GET LBA STATUS.
    let mut g = vec![0x9E, 0x12];
    g.extend_from_slice(&5u64.to_be_bytes());
    g.extend_from_slice(&[0, 0, 0, 24, 0, 0]);
    let st = h.exec(h.a, &g, &[]);
    assert_eq!(
        st.data,
        [0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0x1F, 0xFB, 0, 0, 0, 0]
    );
    g[2..10].copy_from_slice(&BLOCKS.to_be_bytes());
    assert_eq!(h.exec(h.a, &g, &[]).kcq(), (5, 0x21, 0));
}

#[test]
fn compare_and_write_and_orwrite() {
    let h = Harness::new(1);
    h.clear_uas();
    let a = vec![b'A'; 2 * BS];
    assert!(h.exec(h.a, &write16(50, 2), &a).good());
    let mut buf = a.clone();
    buf.extend_from_slice(&vec![b'B'; 2 * BS]);
    assert!(h.exec(h.a, &caw(50, 2), &buf).good());
    assert_eq!(h.exec(h.a, &read16(50, 2), &[]).data, vec![b'B'; 2 * BS]);
    // Miscompare: offset of the first differing byte, medium unchanged.
    let mut bad = vec![b'B'; 2 * BS];
    bad[2 * BS - 27] = b'C';
    bad.extend_from_slice(&vec![b'D'; 2 * BS]);
    let m = h.exec(h.a, &caw(50, 2), &bad);
    assert_eq!(m.kcq(), (0xE, 0x1D, 0));
    assert_eq!(&m.sense[3..7], &((2 * BS - 27) as u32).to_be_bytes());
    assert_eq!(h.exec(h.a, &read16(50, 2), &[]).data, vec![b'B'; 2 * BS]);
    assert_eq!(h.exec(h.a, &caw(BLOCKS - 1, 2), &bad).kcq(), (5, 0x21, 0));
    // ORWRITE.
    assert!(h.exec(h.a, &write16(60, 1), &vec![0x0F; BS]).good());
    let mut ow = write16(60, 1);
    ow[0] = 0x8B;
    assert!(h.exec(h.a, &ow, &vec![0xF0; BS]).good());
    assert_eq!(h.exec(h.a, &read16(60, 1), &[]).data, vec![0xFF; BS]);
}

#[test]
fn mode_sense_select_and_descriptor_sense() {
    let h = Harness::new(1);
    h.clear_uas();
    let all = h.exec(h.a, &[0x1A, 0, 0x3F, 0, 255, 0], &[]);
    assert!(all.good());
    assert_eq!(all.data[0] as usize, all.data.len() - 1);
    assert_eq!(all.data[3], 8);
    let ctl = h.exec(h.a, &[0x1A, 0x08, 0x0A, 0, 255, 0], &[]);
    assert_eq!(
        ctl.data,
        [15, 0, 0x10, 0, 0x0A, 0x0A, 0, 0x10, 0, 0, 0xFF, 0xFF, 0, 0, 0, 0]
    );
    let chg = h.exec(h.a, &[0x1A, 0x08, 0x4A, 0, 255, 0], &[]);
    assert_eq!(&chg.data[4..7], &[0x0A, 0x0A, 0x04]);
    assert_eq!(
        h.exec(h.a, &[0x1A, 0x08, 0xCA, 0, 255, 0], &[]).kcq(),
        (5, 0x39, 0)
    );
    // Set D_SENSE through MODE SELECT 6.
    let mut p = ctl.data.clone();
    p[0] = 0;
    p[2] = 0;
    p[6] |= 0x04;
    let sel = [0x15, 0x10, 0, 0, p.len() as u8, 0];
    assert!(h.exec(h.a, &sel, &p).good());
    let e = h.exec(h.a, &[0x04, 0, 0, 0, 0, 0], &[]);
    assert_eq!(e.sense, [0x72, 5, 0x20, 0, 0, 0, 0, 0]);
    // The other nexus is told.
    assert_eq!(h.exec(h.b, &TUR, &[]).kcq(), (6, 0x2A, 0x01));
    // A non-changeable bit rejected with a pointer into the list.
    p[7] ^= 0x10;
    let r = h.exec(h.a, &sel, &p);
    assert_eq!(r.sense[0], 0x72);
    assert_eq!(&r.sense[1..4], &[5, 0x26, 0]);
    assert_eq!(&r.sense[8..15], &[0x02, 0x06, 0, 0, 0x8C, 0, 7]);
    // SP is not supported.
    assert_eq!(
        h.exec(h.a, &[0x15, 0x11, 0, 0, 0, 0], &[]).kcq(),
        (5, 0x24, 0)
    );
}

#[test]
fn supported_opcodes_and_tmfs() {
    let h = Harness::new(1);
    h.clear_uas();
    let one = h.exec(h.a, &[0xA3, 0x0C, 0x01, 0x28, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
    assert_eq!(&one.data[..5], &[0, 3, 0, 10, 0x28]);
    let rctd = h.exec(h.a, &[0xA3, 0x0C, 0x81, 0x89, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
    assert_eq!(rctd.data.len(), 4 + 16 + 12);
    assert_eq!(rctd.data[1], 0x83);
    assert_eq!(&rctd.data[20..22], &[0, 0x0A]);
    let tmf = h.exec(h.a, &[0xA3, 0x0D, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0], &[]);
    assert_eq!(tmf.data, [0xDA, 0, 0, 0]);
}

#[test]
fn lun_reset_unit_attention_and_spc2_release() {
    let h = Harness::new(1);
    h.clear_uas();
    assert!(h.exec(h.a, &[0x16, 0, 0, 0, 0, 0], &[]).good());
    assert_eq!(
        h.exec(h.b, &read16(0, 1), &[]).status,
        ScsiStatus::ReservationConflict
    );
    assert_eq!(
        h.exec(h.b, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        ScsiStatus::ReservationConflict
    );
    // INQUIRY is allowed through an SPC-2 reservation.
    assert!(h.exec(h.b, &[0x12, 0, 0, 0, 36, 0], &[]).good());
    h.lun.reset(ResetKind::LogicalUnit);
    for n in [h.a, h.b] {
        assert_eq!(h.exec(n, &TUR, &[]).kcq(), (6, 0x29, 0x03));
        assert!(h.exec(n, &TUR, &[]).good());
    }
    // The reset released the SPC-2 reservation.
    assert!(h.exec(h.b, &read16(0, 1), &[]).good());
}

#[test]
fn alua_states_and_report_target_port_groups() {
    let cfg = LunConfig {
        port_groups: vec![
            PortGroup {
                id: 1,
                ports: vec![1],
                state: AluaState::ActiveOptimized,
                preferred: true,
            },
            PortGroup {
                id: 2,
                ports: vec![2],
                state: AluaState::Standby,
                preferred: false,
            },
        ],
        ..LunConfig::default()
    };
    let h = Harness::with_config(1, cfg);
    let c = h.table.register("iqn.2024-01.test:c,i,0x000000000003", 2);
    h.clear_uas();
    h.exec(c, &TUR, &[]);
    let rtpg = h.exec(h.a, &[0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], &[]);
    assert_eq!(
        rtpg.data,
        [
            0, 0, 0, 24, //
            0x80, 0x8F, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, //
            0x02, 0x8F, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2
        ]
    );
    // Through the standby port: TUR and READ are refused, INQUIRY works.
    assert_eq!(h.exec(c, &TUR, &[]).kcq(), (2, 0x04, 0x0B));
    assert_eq!(h.exec(c, &read16(0, 1), &[]).kcq(), (2, 0x04, 0x0B));
    assert!(h.exec(c, &[0x12, 0, 0, 0, 36, 0], &[]).good());
    h.lun
        .set_alua_state(2, AluaState::ActiveNonOptimized)
        .unwrap();
    assert_eq!(h.exec(c, &TUR, &[]).kcq(), (6, 0x2A, 0x06));
    assert!(h.exec(c, &read16(0, 1), &[]).good());
    h.lun.set_alua_state(1, AluaState::Unavailable).unwrap();
    h.exec(h.a, &TUR, &[]);
    assert_eq!(h.exec(h.a, &TUR, &[]).kcq(), (2, 0x04, 0x0C));
    h.lun.set_alua_state(1, AluaState::Transitioning).unwrap();
    h.exec(h.a, &TUR, &[]);
    assert_eq!(h.exec(h.a, &read16(0, 1), &[]).kcq(), (2, 0x04, 0x0A));
}
