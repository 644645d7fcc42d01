//! Requests the device cannot serve are rejected with typed errors, through the registry's
//! channel and by the backend itself; bad opens fail with typed errors.

mod common;

use std::time::Duration;

use common::{random_content, TempFile};
use gyre_bdev::{Bdev, BdevError, BdevRegistry, IoCompletion, IoError, IoOp, IoRequest};
use gyre_reactor::global_pool;
use gyre_uring::{UringBdev, UringOptions};

fn wait_all(
    n: usize,
    mut poll: impl FnMut(&mut dyn FnMut(IoCompletion)) -> usize,
) -> Vec<IoCompletion> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "requests never completed"
        );
        poll(&mut |c| out.push(c));
    }
    out.sort_by_key(|c| c.req.tag);
    out
}

#[test]
fn out_of_range_and_unsupported_ops_are_rejected() {
    let content = random_content(21, 1 << 20);
    let file = TempFile::create(&std::env::temp_dir(), "reject", &content);
    let bdev = UringBdev::open("rej", &file.path, &UringOptions::default()).expect("open");
    let nb = bdev.info().num_blocks();
    assert_eq!(nb, 256);
    assert!(!bdev.info().supports(IoOp::Compare));
    let reg = BdevRegistry::new();
    reg.register(bdev.clone()).unwrap();
    let cache = global_pool().unwrap().local();

    let desc = reg.open("rej", true, "test", None).unwrap();
    let mut ch = desc.channel().unwrap();
    let buf = |n: usize| cache.try_alloc(n).unwrap();
    ch.submit(IoRequest::new(IoOp::Read, nb, 1, buf(4096), 1));
    ch.submit(IoRequest::new(IoOp::Write, nb - 1, 2, buf(8192), 2));
    ch.submit(IoRequest::new(IoOp::Read, u64::MAX, 2, buf(8192), 3));
    ch.submit(IoRequest::control(IoOp::Unmap, nb - 4, 5, 4));
    ch.submit(IoRequest::new(IoOp::Compare, 0, 1, buf(4096), 5));
    ch.submit(IoRequest::new(IoOp::Read, 0, 0, buf(4096), 6));
    ch.submit(IoRequest::new(IoOp::Read, 0, 2, buf(4096), 7));
    ch.submit(IoRequest::new(IoOp::Read, nb - 1, 1, buf(4096), 8));
    let got = wait_all(8, |f| ch.poll(f));
    assert!(
        matches!(got[0].status, Err(IoError::OutOfRange { offset, count: 1, num_blocks }) if offset == nb && num_blocks == nb)
    );
    assert!(matches!(got[1].status, Err(IoError::OutOfRange { .. })));
    assert!(matches!(got[2].status, Err(IoError::OutOfRange { .. })));
    assert!(matches!(got[3].status, Err(IoError::OutOfRange { .. })));
    assert_eq!(got[4].status, Err(IoError::Unsupported(IoOp::Compare)));
    assert_eq!(got[5].status, Err(IoError::Empty(IoOp::Read)));
    assert_eq!(
        got[6].status,
        Err(IoError::BufferTooSmall {
            need: 8192,
            have: 4096
        })
    );
    assert_eq!(got[7].status, Ok(()), "the last block is in range");
    let mut last = vec![0u8; 4096];
    assert!(got[7].req.buf.copy_to_slice(&mut last));
    assert_eq!(last, content[content.len() - 4096..]);
    assert_eq!(ch.stats().errors, 7);

    // A read-only descriptor refuses writes.
    let ro = reg.open("rej", false, "reader", None).unwrap();
    let mut rch = ro.channel().unwrap();
    rch.submit(IoRequest::new(IoOp::Write, 0, 1, buf(4096), 1));
    rch.submit(IoRequest::control(IoOp::WriteZeroes, 0, 1, 2));
    let got = wait_all(2, |f| rch.poll(f));
    assert!(got.iter().all(|c| c.status == Err(IoError::ReadOnly)));
    drop((ch, rch, desc, ro));

    // The backend checks on its own too (a stacked bdev may call it directly).
    let mut be = bdev.clone().create_channel().unwrap();
    be.submit(IoRequest::new(IoOp::Compare, 0, 1, buf(4096), 1));
    be.submit(IoRequest::new(IoOp::Read, nb, 1, buf(4096), 2));
    be.submit(IoRequest::control(IoOp::WriteZeroes, 0, 0, 3));
    be.submit(IoRequest::new(IoOp::Write, 0, 4, buf(4096), 4));
    be.submit(IoRequest::control(IoOp::Reset, 0, 0, 5));
    let got = wait_all(5, |f| be.poll(f));
    assert_eq!(got[0].status, Err(IoError::Unsupported(IoOp::Compare)));
    assert!(matches!(got[1].status, Err(IoError::OutOfRange { .. })));
    assert_eq!(got[2].status, Err(IoError::Empty(IoOp::WriteZeroes)));
    assert!(matches!(got[3].status, Err(IoError::BufferTooSmall { .. })));
    assert_eq!(
        got[4].status,
        Ok(()),
        "a reset with nothing in flight completes"
    );
    assert_eq!(be.in_flight(), 0);

    // Removed bdevs fail new I/O.
    reg.delete("rej", true).unwrap();
    assert!(bdev.info().is_removed());
}

#[test]
fn reset_completes_after_earlier_requests() {
    let content = random_content(22, 4 << 20);
    let file = TempFile::create(&std::env::temp_dir(), "reset", &content);
    let bdev = UringBdev::open("reset", &file.path, &UringOptions::default()).expect("open");
    let cache = global_pool().unwrap().local();
    let mut ch = bdev.clone().create_channel().unwrap();
    for i in 0..16u64 {
        ch.submit(IoRequest::new(
            IoOp::Read,
            i * 64,
            32,
            cache.try_alloc(128 << 10).unwrap(),
            i,
        ));
    }
    ch.submit(IoRequest::control(IoOp::Reset, 0, 0, 100));
    ch.submit(IoRequest::control(IoOp::Flush, 0, 0, 101));
    ch.submit(IoRequest::control(IoOp::Reset, 0, 0, 102));
    assert_eq!(ch.in_flight(), 19);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut order = Vec::new();
    while order.len() < 19 {
        assert!(
            std::time::Instant::now() < deadline,
            "requests never completed"
        );
        ch.poll(&mut |c| {
            assert_eq!(c.status, Ok(()), "tag {}", c.req.tag);
            order.push(c.req.tag)
        });
    }
    let pos = |t: u64| order.iter().position(|&x| x == t).unwrap();
    for i in 0..16 {
        assert!(
            pos(i) < pos(100),
            "read {i} completed after the reset: {order:?}"
        );
    }
    assert!(
        pos(101) < pos(102),
        "flush before the second reset: {order:?}"
    );
    assert!(pos(100) < pos(102));
}

#[test]
fn bad_opens_fail_with_typed_errors() {
    let dir = std::env::temp_dir();
    let missing = dir.join(format!("gyre-uring-missing-{}", std::process::id()));
    assert!(matches!(
        UringBdev::open("m", &missing, &UringOptions::default()),
        Err(BdevError::Io { .. })
    ));
    let small = TempFile::create(&dir, "small", &[0u8; 1000]);
    assert!(matches!(
        UringBdev::open("s", &small.path, &UringOptions::default()),
        Err(BdevError::ZeroSize(_))
    ));
    let ok = TempFile::create(&dir, "bs", &[0u8; 8192]);
    assert!(matches!(
        UringBdev::open(
            "b",
            &ok.path,
            &UringOptions {
                block_size: Some(1024),
                direct: true
            }
        ),
        Err(BdevError::InvalidBlockSize(1024))
    ));
    assert!(matches!(
        UringBdev::open("bad name!", &ok.path, &UringOptions::default()),
        Err(BdevError::InvalidName(_))
    ));
    assert!(matches!(
        UringBdev::open("d", &dir, &UringOptions::default()),
        Err(BdevError::Io { .. }) | Err(BdevError::Backend(_))
    ));
    // Size is rounded down to whole blocks.
    let odd = TempFile::create(&dir, "odd", &[0u8; 3 * 4096 + 100]);
    let b = UringBdev::open("o", &odd.path, &UringOptions::default()).unwrap();
    assert_eq!(b.info().num_blocks(), 3);
    assert_eq!(b.info().module(), "uring");
}
