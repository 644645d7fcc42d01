//! The READ/WRITE path allocates nothing on the heap in steady state.

mod common;

use std::time::Duration;

use common::*;
use gyre_bdev::testing::{allocations_on_this_thread, CountingAlloc};
use gyre_reactor::{global_pool, SgList};
use gyre_scsi::{ScsiCompletion, ScsiStatus, ScsiTask};

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

#[test]
fn read_write_path_does_not_allocate() {
    let h = Harness::new(1);
    h.clear_uas();
    let lun = h.lun.clone();
    let nexus = h.a;
    let allocs = h
        .reactors
        .get(0)
        .unwrap()
        .call(
            move || {
                let mut ch = lun.channel().expect("channel");
                let mut data_out: SgList =
                    global_pool().unwrap().local().try_alloc(8 * BS).unwrap();
                let mut run = |n: u64, data_out: &mut SgList| {
                    for i in 0..n {
                        let lba = (i * 8) % (BLOCKS - 8);
                        let mut wc = [0u8; 16];
                        wc[0] = 0x8A;
                        wc[2..10].copy_from_slice(&lba.to_be_bytes());
                        wc[13] = 8;
                        let mut rc = wc;
                        rc[0] = 0x88;
                        let mut w = ScsiTask::new(&wc, nexus, 1);
                        w.data_out = std::mem::take(data_out);
                        ch.submit(w);
                        ch.submit(ScsiTask::new(&rc, nexus, 2));
                        let mut got: [Option<ScsiCompletion>; 2] = [None, None];
                        while got.iter().any(|g| g.is_none()) {
                            ch.poll(|c| {
                                let i = c.tag as usize - 1;
                                got[i] = Some(c);
                            });
                        }
                        let [w, r] = got;
                        let (w, r) = (w.unwrap(), r.unwrap());
                        assert_eq!(w.status, ScsiStatus::Good);
                        assert_eq!(r.status, ScsiStatus::Good);
                        assert_eq!(r.data_in_len, 8 * BS);
                        *data_out = w.data_out;
                    }
                };
                run(1000, &mut data_out);
                let before = allocations_on_this_thread();
                run(10_000, &mut data_out);
                allocations_on_this_thread() - before
            },
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(allocs, 0, "heap allocations on the I/O path");
}
