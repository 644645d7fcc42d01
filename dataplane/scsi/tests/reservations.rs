//! Persistent reservations across two I_T nexuses, in the sequences a Windows failover
//! cluster uses, through real channels.

mod common;

use common::*;
use gyre_scsi::ScsiStatus;

const KEY_A: u64 = 0x1111_0000_0000_000A;
const KEY_B: u64 = 0x2222_0000_0000_000B;

fn out(h: &Harness, n: gyre_scsi::NexusId, sa: u8, rtype: u8, key: u64, sak: u64) -> Outcome {
    let (cdb, p) = pr_out(sa, rtype, key, sak);
    h.exec(n, &cdb, &p)
}

fn keys(h: &Harness) -> Vec<u64> {
    // A third nexus that never gets unit attentions from these sequences after the first.
    let c = h
        .table
        .register("iqn.2024-01.test:observer,i,0x000000000009", 1);
    let mut o = h.exec(c, &pr_in(0), &[]);
    if !o.good() {
        o = h.exec(c, &pr_in(0), &[]);
    }
    let d = o.data;
    d[8..]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

fn can_read(h: &Harness, n: gyre_scsi::NexusId) -> ScsiStatus {
    h.exec(n, &read16(0, 1), &[]).status
}

fn can_write(h: &Harness, n: gyre_scsi::NexusId) -> ScsiStatus {
    h.exec(n, &write16(0, 1), &vec![1u8; BS]).status
}

#[test]
fn failover_cluster_sequence() {
    let h = Harness::new(1);
    h.clear_uas();
    const GOOD: ScsiStatus = ScsiStatus::Good;
    const CONFLICT: ScsiStatus = ScsiStatus::ReservationConflict;
    // Both nodes register (REGISTER AND IGNORE EXISTING KEY, as Windows does).
    assert!(out(&h, h.a, 6, 0, 0, KEY_A).good());
    assert!(out(&h, h.b, 6, 0, 0, KEY_B).good());
    assert_eq!(keys(&h), vec![KEY_A, KEY_B]);
    // Registering again with a wrong key conflicts.
    assert_eq!(out(&h, h.b, 0, 0, 0x99, 0x98).status, CONFLICT);
    // Node A reserves write exclusive, registrants only.
    assert!(out(&h, h.a, 1, 5, KEY_A, 0).good());
    let rr = h.exec(h.b, &pr_in(1), &[]).data;
    assert_eq!(&rr[4..8], &[0, 0, 0, 16]);
    assert_eq!(&rr[8..16], &KEY_A.to_be_bytes());
    assert_eq!(rr[21], 5);
    // B is registered: full access under WE-RO.
    assert_eq!(can_read(&h, h.b), GOOD);
    assert_eq!(can_write(&h, h.b), GOOD);
    // B reserving a different type conflicts.
    assert_eq!(out(&h, h.b, 1, 6, KEY_B, 0).status, CONFLICT);
    // Node B takes over: PREEMPT A's key, new type EA-RO.
    assert!(out(&h, h.b, 4, 6, KEY_B, KEY_A).good());
    assert_eq!(keys(&h), vec![KEY_B]);
    // A learns it was preempted, then is locked out of reads and writes.
    let ua = h.exec(h.a, &[0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(ua.kcq(), (6, 0x2A, 0x05));
    assert_eq!(can_read(&h, h.a), CONFLICT);
    assert_eq!(can_write(&h, h.a), CONFLICT);
    // READ CAPACITY, INQUIRY, PR IN stay allowed for A.
    assert!(h.exec(h.a, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).good());
    assert!(h.exec(h.a, &pr_in(1), &[]).good());
    // A re-registers and may read and write again (registrants only).
    assert!(out(&h, h.a, 6, 0, 0, KEY_A).good());
    assert_eq!(can_read(&h, h.a), GOOD);
    assert_eq!(can_write(&h, h.a), GOOD);
    // A preempts-and-aborts B back.
    assert!(out(&h, h.a, 5, 1, KEY_A, KEY_B).good());
    assert_eq!(h.exec(h.b, &[0, 0, 0, 0, 0, 0], &[]).kcq(), (6, 0x2A, 0x05));
    // Write exclusive: B may read, not write.
    assert_eq!(can_read(&h, h.b), GOOD);
    assert_eq!(can_write(&h, h.b), CONFLICT);
    // Release with the wrong type is an illegal release.
    assert_eq!(out(&h, h.a, 2, 3, KEY_A, 0).kcq(), (5, 0x26, 0x04));
    assert!(out(&h, h.a, 2, 1, KEY_A, 0).good());
    assert_eq!(can_write(&h, h.b), GOOD);
    // CLEAR drops everything.
    assert!(out(&h, h.b, 6, 0, 0, KEY_B).good());
    assert!(out(&h, h.a, 1, 3, KEY_A, 0).good());
    assert_eq!(can_read(&h, h.b), CONFLICT);
    assert!(out(&h, h.b, 3, 0, KEY_B, 0).good());
    assert!(keys(&h).is_empty());
    assert_eq!(h.exec(h.a, &[0, 0, 0, 0, 0, 0], &[]).kcq(), (6, 0x2A, 0x03));
    assert_eq!(can_write(&h, h.b), GOOD);
    assert_eq!(can_write(&h, h.a), GOOD);
}

#[test]
fn all_registrants_and_report_capabilities() {
    let h = Harness::new(1);
    h.clear_uas();
    assert!(out(&h, h.a, 0, 0, 0, KEY_A).good());
    assert!(out(&h, h.b, 0, 0, 0, KEY_B).good());
    assert!(out(&h, h.a, 1, 8, KEY_A, 0).good());
    // All registrants hold it: B may reserve the same type, and access everything.
    assert!(out(&h, h.b, 1, 8, KEY_B, 0).good());
    assert_eq!(can_write(&h, h.b), ScsiStatus::Good);
    let rr = h.exec(h.a, &pr_in(1), &[]).data;
    assert_eq!(&rr[8..16], &[0; 8], "key 0 for all-registrants");
    // A unregisters; the reservation stays while B is registered.
    assert!(out(&h, h.a, 0, 0, KEY_A, 0).good());
    assert_eq!(can_read(&h, h.a), ScsiStatus::ReservationConflict);
    let caps = h.exec(h.a, &pr_in(2), &[]).data;
    assert_eq!(caps, [0, 8, 0x14, 0x80, 0xEA, 0x01, 0, 0]);
    // APTPL is refused; SPC-2 RESERVE conflicts while registrations exist.
    let (cdb, mut p) = pr_out(0, 0, 0, 5);
    p[20] = 0x01;
    assert_eq!(h.exec(h.a, &cdb, &p).kcq(), (5, 0x26, 0));
    assert_eq!(
        h.exec(h.a, &[0x16, 0, 0, 0, 0, 0], &[]).status,
        ScsiStatus::ReservationConflict
    );
    // Wrong parameter list length.
    let (mut cdb, p) = pr_out(0, 0, 0, 5);
    cdb[8] = 20;
    assert_eq!(h.exec(h.a, &cdb, &p[..20]).kcq(), (5, 0x1A, 0));
    // READ FULL STATUS lists B as holder with its TransportID.
    let fs = h.exec(h.a, &pr_in(3), &[]).data;
    assert_eq!(&fs[8..16], &KEY_B.to_be_bytes());
    assert_eq!(fs[20], 0x01);
    assert_eq!(fs[21], 8);
    assert_eq!(fs[32], 0x45);
}

#[test]
fn preempt_and_abort_aborts_the_preempted_nexus_tasks_and_device_errors_map_to_sense() {
    use gyre_bdev::IoTypes;
    use gyre_reactor::global_pool;
    use gyre_scsi::{ScsiCompletion, ScsiTask};
    use std::time::{Duration, Instant};

    let (h, faults) = Harness::with_faults(1);
    h.clear_uas();
    assert!(out(&h, h.a, 6, 0, 0, KEY_A).good());
    assert!(out(&h, h.b, 6, 0, 0, KEY_B).good());
    assert!(out(&h, h.b, 1, 1, KEY_B, 0).good());
    faults.delay(Duration::from_millis(300));
    let (lun, a, b) = (h.lun.clone(), h.a, h.b);
    let (read_status, pr_status) = h
        .reactors
        .get(0)
        .unwrap()
        .call(
            move || {
                let mut ch = lun.channel().expect("channel");
                ch.submit(ScsiTask::new(&read16(0, 1), b, 1));
                let (cdb, p) = pr_out(5, 1, KEY_A, KEY_B);
                let mut t = ScsiTask::new(&cdb, a, 2);
                let mut buf = global_pool().unwrap().local().try_alloc(24).unwrap();
                buf.copy_from_slice(&p);
                t.data_out = buf;
                ch.submit(t);
                let mut got: Vec<ScsiCompletion> = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(10);
                while got.len() < 2 && Instant::now() < deadline {
                    ch.poll(|c| got.push(c));
                    std::thread::sleep(Duration::from_millis(1));
                }
                let st = |tag| got.iter().find(|c| c.tag == tag).map(|c| c.status);
                (st(1), st(2))
            },
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!(pr_status, Some(ScsiStatus::Good));
    assert_eq!(read_status, Some(ScsiStatus::TaskAborted));
    faults.clear();
    // B was preempted: its unit attention, then conflicts on writes (WE held by A).
    assert_eq!(h.exec(h.b, &[0, 0, 0, 0, 0, 0], &[]).kcq(), (6, 0x2A, 0x05));
    assert_eq!(can_write(&h, h.b), ScsiStatus::ReservationConflict);
    // A device error on read and on write maps to MEDIUM ERROR with the right ASC.
    faults.fail(IoTypes::NONE.with(gyre_bdev::IoOp::Read), 1, 5);
    assert_eq!(h.exec(h.a, &read16(0, 1), &[]).kcq(), (3, 0x11, 0));
    faults.fail(IoTypes::NONE.with(gyre_bdev::IoOp::Write), 1, 5);
    assert_eq!(
        h.exec(h.a, &write16(0, 1), &vec![0u8; BS]).kcq(),
        (3, 0x0C, 0)
    );
}
