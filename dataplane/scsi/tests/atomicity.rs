//! COMPARE AND WRITE is atomic against writes from another reactor: the compare never sees
//! a block range half-written by a concurrent WRITE.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gyre_scsi::ScsiStatus;

#[test]
fn compare_and_write_never_sees_a_torn_write() {
    let h = Arc::new(Harness::new(2));
    h.clear_uas();
    const N: u8 = 128;
    let len = N as usize * BS;
    assert!(h
        .exec_on(0, h.a, &write16(0, N as u32), &vec![1u8; len])
        .good());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let h = h.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut v = 2u8;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let o = h.exec_on(1, h.b, &write16(0, N as u32), &vec![v; len]);
                assert!(o.good(), "{o:?}");
                v = if v == 1 { 2 } else { 1 };
                n += 1;
            }
            n
        })
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = vec![1u8; len];
    buf.extend_from_slice(&vec![3u8; len]);
    let (mut matched, mut miscompared) = (0, 0);
    while Instant::now() < deadline {
        let o = h.exec_on(0, h.a, &caw(0, N), &buf);
        match o.status {
            ScsiStatus::Good => matched += 1,
            ScsiStatus::CheckCondition => {
                assert_eq!(o.kcq(), (0xE, 0x1D, 0));
                let offset = u32::from_be_bytes(o.sense[3..7].try_into().unwrap());
                // A torn range (new data behind old) would miscompare past byte 0.
                assert_eq!(offset, 0, "compare saw a half-written range");
                miscompared += 1;
            }
            s => panic!("unexpected status {s:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().expect("writer");
    assert!(writes > 0 && matched + miscompared > 0);
    eprintln!("{writes} writes, {matched} matches, {miscompared} miscompares");
}

#[test]
fn compare_and_write_increments_from_two_reactors_are_serialised() {
    let h = Arc::new(Harness::new(2));
    h.clear_uas();
    assert!(h.exec(h.a, &write16(7, 1), &vec![0u8; BS]).good());
    const PER: u32 = 200;
    let workers: Vec<_> = [(0usize, h.a), (1usize, h.b)]
        .into_iter()
        .map(|(r, n)| {
            let h = h.clone();
            std::thread::spawn(move || {
                let mut done = 0;
                let deadline = Instant::now() + Duration::from_secs(30);
                while done < PER {
                    assert!(Instant::now() < deadline);
                    let cur = h.exec_on(r, n, &read16(7, 1), &[]).data;
                    let v = u32::from_le_bytes(cur[..4].try_into().unwrap());
                    let mut buf = cur.clone();
                    let mut next = cur.clone();
                    next[..4].copy_from_slice(&(v + 1).to_le_bytes());
                    buf.extend_from_slice(&next);
                    if h.exec_on(r, n, &caw(7, 1), &buf).good() {
                        done += 1;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let d = h.exec(h.a, &read16(7, 1), &[]).data;
    assert_eq!(u32::from_le_bytes(d[..4].try_into().unwrap()), 2 * PER);
}
