//! The fault injector: stacking and claiming, failed requests, corrupted reads, delays.

use std::time::{Duration, Instant};

use gyre_bdev::{
    Bdev, BdevChannel, BdevError, BdevRegistry, InjectBdev, IoError, IoOp, IoRequest, IoStatus,
    IoTypes, MallocBdev,
};
use gyre_reactor::{BufferPool, ClassConfig, PoolConfig, SgList};

fn wait(ch: &mut BdevChannel) -> (IoStatus, SgList) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut out = None;
        ch.poll(|c| out = Some((c.status, c.req.buf)));
        if let Some(o) = out {
            return o;
        }
        assert!(Instant::now() < deadline, "no completion");
    }
}

#[test]
fn injector_claims_base_and_injects_faults() {
    let reg = BdevRegistry::new();
    reg.register(MallocBdev::create("base", 1 << 20, 512).unwrap())
        .unwrap();
    let inj = InjectBdev::create(&reg, "faulty", "base").unwrap();
    reg.register(inj.clone()).unwrap();
    assert!(matches!(
        reg.open("base", true, "other", None),
        Err(BdevError::Claimed { .. })
    ));
    assert_eq!(inj.info().num_blocks(), 2048);

    let faults = inj.faults();
    let desc = reg.open("faulty", true, "test", None).unwrap();
    let mut ch = desc.channel().unwrap();
    let pool = BufferPool::new(&PoolConfig {
        classes: vec![ClassConfig {
            size: 4096,
            count: 16,
        }],
        prefer_hugepages: false,
    })
    .unwrap();
    let cache = pool.local();

    // Data passes through to the base.
    let mut w = cache.try_alloc(1024).unwrap();
    w.fill(1024, 0x5A);
    ch.submit(IoRequest::new(IoOp::Write, 100, 2, w, 0));
    assert_eq!(wait(&mut ch).0, Ok(()));

    // Two writes fail, the third succeeds; reads are unaffected.
    faults.fail(IoTypes::NONE.with(IoOp::Write), 2, libc_eio());
    for expect in [
        Err(IoError::Device(libc_eio())),
        Err(IoError::Device(libc_eio())),
        Ok(()),
    ] {
        ch.submit(IoRequest::new(
            IoOp::Write,
            0,
            1,
            cache.try_alloc(512).unwrap(),
            0,
        ));
        let (st, _) = wait(&mut ch);
        assert_eq!(st, expect);
        if let Err(e) = st {
            assert!(e.is_device_failure());
        }
    }

    // A read covering block 101 sees its first byte flipped; block 100 is intact.
    faults.corrupt_reads_of(Some(101));
    ch.submit(IoRequest::new(
        IoOp::Read,
        100,
        2,
        cache.try_alloc(1024).unwrap(),
        0,
    ));
    let (st, buf) = wait(&mut ch);
    assert_eq!(st, Ok(()));
    let mut data = vec![0u8; 1024];
    buf.copy_to_slice(&mut data);
    assert!(data[..512].iter().all(|&b| b == 0x5A));
    assert_eq!(data[512], 0x5A ^ 0xFF);
    assert!(data[513..].iter().all(|&b| b == 0x5A));

    // Delayed completions.
    faults.clear();
    faults.delay(Duration::from_millis(30));
    let t = Instant::now();
    ch.submit(IoRequest::control(IoOp::Flush, 0, 0, 0));
    assert_eq!(wait(&mut ch).0, Ok(()));
    assert!(t.elapsed() >= Duration::from_millis(30));

    // Removing the stack releases the claim.
    drop(ch);
    drop(desc);
    reg.delete("faulty", false).unwrap();
    drop(inj);
    assert!(reg.open("base", true, "other", None).is_ok());
}

fn libc_eio() -> i32 {
    5
}
