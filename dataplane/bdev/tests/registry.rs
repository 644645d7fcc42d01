//! The registry: names, descriptors, exclusive claims, removal with notification, and the
//! checks every channel applies before a backend sees a request.

use std::sync::{Arc, Mutex};

use gyre_bdev::{
    BdevError, BdevEvent, BdevRegistry, IoError, IoOp, IoRequest, MallocBdev, NullBdev,
};
use gyre_reactor::{BufferPool, ClassConfig, PoolConfig};

fn pool() -> BufferPool {
    BufferPool::new(&PoolConfig {
        classes: vec![ClassConfig {
            size: 65536,
            count: 16,
        }],
        prefer_hugepages: false,
    })
    .unwrap()
}

fn run_one(ch: &mut gyre_bdev::BdevChannel, req: IoRequest) -> Result<(), IoError> {
    ch.submit(req);
    let mut status = None;
    for _ in 0..1000 {
        ch.poll(|c| status = Some(c.status));
        if status.is_some() {
            break;
        }
    }
    status.expect("request completed")
}

#[test]
fn names_are_unique_and_validated() {
    let reg = BdevRegistry::new();
    reg.register(MallocBdev::create("m0", 1 << 20, 512).unwrap())
        .unwrap();
    let dup = reg.register(NullBdev::create("m0", 1 << 20, 512).unwrap());
    assert!(matches!(dup, Err(BdevError::AlreadyExists(n)) if n == "m0"));
    assert!(matches!(
        NullBdev::create("bad name", 1 << 20, 512),
        Err(BdevError::InvalidName(_))
    ));
    assert!(matches!(
        NullBdev::create("n", 1 << 20, 1000),
        Err(BdevError::InvalidBlockSize(1000))
    ));
    assert!(matches!(
        NullBdev::create("n", 100, 512),
        Err(BdevError::ZeroSize(_))
    ));
    assert!(matches!(
        reg.open("nope", true, "t", None),
        Err(BdevError::NotFound(_))
    ));
    let list = reg.list();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "m0");
    assert_eq!(list[0].module, "malloc");
    assert_eq!(list[0].num_blocks, 2048);
}

#[test]
fn claims_are_exclusive_and_released_on_close() {
    let reg = BdevRegistry::new();
    reg.register(NullBdev::create("base", 1 << 20, 4096).unwrap())
        .unwrap();
    let reader = reg.open("base", false, "reader", None).unwrap();
    let lvol = reg.open("base", true, "lvstore lvs0", None).unwrap();
    lvol.claim("lvstore lvs0").unwrap();
    lvol.claim("lvstore lvs0").unwrap(); // idempotent for the claimer
    match reg.open("base", true, "nvmf", None) {
        Err(BdevError::Claimed { name, by }) => {
            assert_eq!(name, "base");
            assert_eq!(by, "lvstore lvs0");
        }
        other => panic!("expected Claimed, got {:?}", other.err()),
    }
    // Read-only opens are still fine, and a read-only descriptor cannot claim.
    let ro = reg.open("base", false, "stats", None).unwrap();
    assert!(matches!(ro.claim("other"), Err(BdevError::Claimed { .. })));
    assert_eq!(reg.list()[0].claimed_by.as_deref(), Some("lvstore lvs0"));
    drop(lvol);
    assert_eq!(reg.list()[0].claimed_by, None);
    let w = reg.open("base", true, "nvmf", None).unwrap();
    // A writer elsewhere blocks a claim.
    let other = reg.open("base", true, "iscsi", None).unwrap();
    assert!(matches!(other.claim("x"), Err(BdevError::InUse { .. })));
    drop((reader, ro, w, other));
}

#[test]
fn delete_refuses_in_use_and_force_notifies_holders() {
    let reg = BdevRegistry::new();
    reg.register(MallocBdev::create("vol1", 1 << 20, 4096).unwrap())
        .unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let desc = reg
        .open(
            "vol1",
            true,
            "nvmf subsystem nqn.2026-11.io.gyre:a",
            Some(Arc::new(move |ev: &BdevEvent| {
                e.lock().unwrap().push(ev.clone())
            })),
        )
        .unwrap();
    let mut ch = desc.channel().unwrap();
    let err = reg.delete("vol1", false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bdev 'vol1' is in use by nvmf subsystem nqn.2026-11.io.gyre:a"
    );
    reg.delete("vol1", true).unwrap();
    assert_eq!(
        events.lock().unwrap().as_slice(),
        &[BdevEvent::Removed {
            name: "vol1".into()
        }]
    );
    assert!(reg.get("vol1").is_none());
    assert!(desc.channel().is_err());
    let p = pool();
    let buf = p.local().try_alloc(4096).unwrap();
    let r = run_one(&mut ch, IoRequest::new(IoOp::Read, 0, 1, buf, 7));
    assert_eq!(r, Err(IoError::Removed));
    assert!(IoError::Removed.is_device_failure());
    assert!(matches!(
        reg.delete("vol1", false),
        Err(BdevError::NotFound(_))
    ));
}

#[test]
fn channel_rejects_invalid_requests_before_the_backend() {
    let reg = BdevRegistry::new();
    reg.register(MallocBdev::create("m", 64 * 4096, 4096).unwrap())
        .unwrap();
    let desc = reg.open("m", true, "t", None).unwrap();
    let mut ch = desc.channel().unwrap();
    let p = pool();
    let c = p.local();
    let r = run_one(
        &mut ch,
        IoRequest::new(IoOp::Read, 63, 2, c.try_alloc(8192).unwrap(), 0),
    );
    assert_eq!(
        r,
        Err(IoError::OutOfRange {
            offset: 63,
            count: 2,
            num_blocks: 64
        })
    );
    let r = run_one(
        &mut ch,
        IoRequest::new(IoOp::Write, u64::MAX, 2, c.try_alloc(8192).unwrap(), 0),
    );
    assert!(
        matches!(r, Err(IoError::OutOfRange { .. })),
        "overflowing range"
    );
    let r = run_one(
        &mut ch,
        IoRequest::new(IoOp::Read, 0, 0, c.try_alloc(4096).unwrap(), 0),
    );
    assert_eq!(r, Err(IoError::Empty(IoOp::Read)));
    let r = run_one(
        &mut ch,
        IoRequest::new(IoOp::Read, 0, 2, c.try_alloc(4096).unwrap(), 0),
    );
    assert_eq!(
        r,
        Err(IoError::BufferTooSmall {
            need: 8192,
            have: 4096
        })
    );
    assert!(!IoError::BufferTooSmall { need: 1, have: 0 }.is_device_failure());
    let r = run_one(&mut ch, IoRequest::control(IoOp::Unmap, 60, 5, 0));
    assert!(matches!(r, Err(IoError::OutOfRange { .. })));
    // Flush and reset carry no range.
    assert_eq!(
        run_one(&mut ch, IoRequest::control(IoOp::Flush, 0, 0, 0)),
        Ok(())
    );
    assert_eq!(
        run_one(&mut ch, IoRequest::control(IoOp::Reset, 0, 0, 0)),
        Ok(())
    );
    assert_eq!(ch.stats().errors, 5);
    assert_eq!(ch.stats().other_ops, 2);

    // A read-only descriptor's channel refuses writes.
    let ro = reg.open("m", false, "ro", None).unwrap();
    let mut rch = ro.channel().unwrap();
    let r = run_one(
        &mut rch,
        IoRequest::new(IoOp::Write, 0, 1, c.try_alloc(4096).unwrap(), 0),
    );
    assert_eq!(r, Err(IoError::ReadOnly));
    let r = run_one(&mut rch, IoRequest::control(IoOp::WriteZeroes, 0, 1, 0));
    assert_eq!(r, Err(IoError::ReadOnly));
    let r = run_one(
        &mut rch,
        IoRequest::new(IoOp::Read, 0, 1, c.try_alloc(4096).unwrap(), 0),
    );
    assert_eq!(r, Ok(()));
}

#[test]
fn resize_is_announced_to_holders() {
    let reg = BdevRegistry::new();
    let bdev = NullBdev::create("n", 1 << 20, 512).unwrap();
    reg.register(bdev.clone()).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let _d = reg
        .open(
            "n",
            false,
            "t",
            Some(Arc::new(move |ev: &BdevEvent| {
                e.lock().unwrap().push(ev.clone())
            })),
        )
        .unwrap();
    use gyre_bdev::Bdev;
    bdev.info().set_num_blocks(4096);
    reg.notify_resized("n").unwrap();
    assert_eq!(
        events.lock().unwrap().as_slice(),
        &[BdevEvent::Resized {
            name: "n".into(),
            num_blocks: 4096
        }]
    );
}
