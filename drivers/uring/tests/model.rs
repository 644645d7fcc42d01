//! Every operation against a byte model, from a plain thread (the channel's own `poll`
//! submits and reaps): on ext4 with O_DIRECT, on tmpfs, with buffered I/O, with 512-byte
//! blocks, and with write-zeroes/unmap forced down to plain writes of zeroes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{assert_file_matches, random_content, run_plain, Config, TempFile, Workload};
use gyre_bdev::{Bdev, BdevRegistry, IoOp, IoRequest};
use gyre_reactor::global_pool;
use gyre_uring::{thread_ring_stats, BackingKind, UringBdev, UringOptions, ZeroMethod};

const SIZE: usize = 8 << 20;
const TIMEOUT: Duration = Duration::from_secs(120);

/// Opens `file` as a bdev, runs the workload through a registry channel, checks the model
/// against both the final reads and the file read back through the page cache.
fn run_model(
    file: &TempFile,
    content: Vec<u8>,
    opts: &UringOptions,
    cfg: Config,
    prepare: impl FnOnce(&UringBdev),
) -> Arc<UringBdev> {
    run_model_at(&file.path, content, opts, cfg, prepare)
}

fn run_model_at(
    path: &Path,
    content: Vec<u8>,
    opts: &UringOptions,
    cfg: Config,
    prepare: impl FnOnce(&UringBdev),
) -> Arc<UringBdev> {
    let name = format!("u{}", cfg.seed);
    let bdev = UringBdev::open(&name, path, opts).expect("open");
    prepare(&bdev);
    let bs = bdev.info().block_size();
    assert_eq!(bdev.info().size_bytes(), content.len() as u64);
    let reg = BdevRegistry::new();
    reg.register(bdev.clone()).expect("register");
    let desc = reg.open(&name, true, "test", None).expect("open desc");
    let mut ch = desc.channel().expect("channel");
    let mut w = Workload::new(cfg, content, bs);
    run_plain(&mut w, &mut ch, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    w.check_coverage().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ch.in_flight(), 0);
    let stats = ch.stats();
    assert_eq!(stats.errors, 0);
    drop(ch);
    drop(desc);
    reg.delete(&name, false).expect("delete");
    assert_file_matches(path, &w.model, bs as usize);
    eprintln!("{:?}\n{:?}", w.stats, thread_ring_stats());
    bdev
}

#[test]
fn ext4_direct_io_matches_model() {
    let content = random_content(1, SIZE);
    let file = TempFile::create(&std::env::temp_dir(), "ext4", &content);
    let bdev = run_model(
        &file,
        content,
        &UringOptions::default(),
        Config {
            seed: 11,
            ..Config::default()
        },
        |b| assert!(b.is_direct(), "temp_dir is ext4 here: O_DIRECT must work"),
    );
    assert!(bdev.info().volatile_write_cache());
    let rs = thread_ring_stats().expect("this thread has a ring");
    assert!(!rs.on_reactor);
    assert!(rs.fixed_buffers, "global pool registered as fixed buffers");
    assert!(rs.fixed_files);
    assert!(
        rs.fixed_buffer_sqes > 0,
        "single-segment pool I/O went fixed"
    );
    assert!(rs.vectored_sqes > 0, "multi-segment I/O went vectored");
    assert!(
        rs.enters < rs.sqes,
        "submission is batched: {} enters for {} SQEs",
        rs.enters,
        rs.sqes
    );
}

#[test]
fn ext4_direct_io_with_512_byte_blocks() {
    let content = random_content(2, SIZE / 4);
    let file = TempFile::create(&std::env::temp_dir(), "ext4-512", &content);
    run_model(
        &file,
        content,
        &UringOptions {
            block_size: Some(512),
            direct: true,
        },
        Config {
            seed: 12,
            ops: 800,
            max_blocks: 96,
            ..Config::default()
        },
        |b| {
            assert!(b.is_direct());
            assert_eq!(b.info().block_size(), 512);
        },
    );
}

#[test]
fn write_zeroes_and_unmap_fall_back_to_writing_zeroes() {
    let content = random_content(3, SIZE / 2);
    let file = TempFile::create(&std::env::temp_dir(), "zw", &content);
    let bdev = run_model(
        &file,
        content,
        &UringOptions::default(),
        Config {
            seed: 13,
            ops: 600,
            // Larger than the ring's 128 KiB zero buffer, so zeroing takes several writes.
            max_blocks: 80,
            mix: [30, 20, 5, 20, 20, 5],
            ..Config::default()
        },
        |b| {
            b.disable_zero_method(ZeroMethod::ZeroRange);
            b.disable_zero_method(ZeroMethod::PunchHole);
        },
    );
    assert!(!bdev.zero_method_supported(ZeroMethod::ZeroRange));
    let rs = thread_ring_stats().expect("ring");
    assert!(
        rs.continuations > 0,
        "long zeroing continued past one buffer"
    );
}

#[test]
fn tmpfs_matches_model_direct_or_not() {
    let shm = Path::new("/dev/shm");
    assert!(shm.is_dir(), "/dev/shm is needed for this test");
    // Default options: kernels before 6.6 refuse O_DIRECT on tmpfs (EINVAL) and the bdev
    // falls back to buffered I/O; newer ones accept it. Either way the data must be right.
    let content = random_content(4, SIZE / 2);
    let file = TempFile::create(shm, "tmpfs", &content);
    let bdev = run_model(
        &file,
        content,
        &UringOptions::default(),
        Config {
            seed: 14,
            ops: 1000,
            ..Config::default()
        },
        |_| {},
    );
    eprintln!("tmpfs O_DIRECT accepted: {}", bdev.is_direct());
    // tmpfs has no ZERO_RANGE: write-zeroes went through the punch-hole fallback.
    assert!(!bdev.zero_method_supported(ZeroMethod::ZeroRange));
    assert!(bdev.zero_method_supported(ZeroMethod::PunchHole));

    // Buffered I/O explicitly.
    let content = random_content(5, SIZE / 2);
    let file = TempFile::create(shm, "tmpfs-buf", &content);
    run_model(
        &file,
        content,
        &UringOptions {
            block_size: None,
            direct: false,
        },
        Config {
            seed: 15,
            ops: 1000,
            ..Config::default()
        },
        |b| assert!(!b.is_direct()),
    );
}

#[test]
fn read_of_a_file_truncated_under_the_bdev_fails_instead_of_looping() {
    let content = random_content(6, 64 << 10);
    let file = TempFile::create(&std::env::temp_dir(), "trunc", &content);
    let bdev = UringBdev::open("trunc", &file.path, &UringOptions::default()).expect("open");
    // 2.5 blocks remain: the read comes back short, its continuation finds the end of the
    // file and the request completes with an error instead of spinning.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file.path)
        .and_then(|f| f.set_len(10 << 10))
        .expect("truncate");
    let mut ch = bdev.clone().create_channel().expect("channel");
    let sg = global_pool().unwrap().local().try_alloc(16 << 10).unwrap();
    ch.submit(IoRequest::new(IoOp::Read, 0, 4, sg, 7));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut got = None;
    while got.is_none() {
        assert!(std::time::Instant::now() < deadline, "read never completed");
        ch.poll(&mut |c| got = Some(c));
    }
    let c = got.unwrap();
    assert_eq!(c.req.tag, 7);
    assert!(
        matches!(c.status, Err(gyre_bdev::IoError::Device(_))),
        "{:?}",
        c.status
    );
    let mut head = vec![0u8; 8192];
    assert!(c.req.buf.copy_to_slice(&mut head));
    assert_eq!(head, content[..8192], "the part that existed was read");
    assert_eq!(ch.in_flight(), 0);
}

#[test]
fn channel_dropped_with_io_in_flight_waits_and_frees_its_buffers() {
    let content = random_content(7, 4 << 20);
    let file = TempFile::create(&std::env::temp_dir(), "drop", &content);
    let bdev = UringBdev::open("drop", &file.path, &UringOptions::default()).expect("open");
    let pool = global_pool().unwrap();
    let cache = pool.local();
    let before = thread_ring_stats().map_or(0, |s| s.channels);
    {
        let mut ch = bdev.clone().create_channel().expect("channel");
        for i in 0..32u64 {
            let sg = cache.try_alloc(128 << 10).unwrap();
            ch.submit(IoRequest::new(IoOp::Read, i * 32, 32, sg, i));
        }
        let mut n = 0;
        ch.poll(&mut |_| n += 1);
        assert!(ch.in_flight() + n == 32);
    }
    let after = thread_ring_stats().expect("ring");
    assert_eq!(after.channels, before, "the closed channel is gone");
    // All 32 buffers are back: the pool serves them again.
    let again: Vec<_> = (0..32).map(|_| cache.try_alloc(128 << 10)).collect();
    assert!(again.iter().all(|s| s.is_some()));
}

/// A loop device over a file, detached on drop.
struct LoopDevice {
    dev: PathBuf,
}

impl LoopDevice {
    /// `None` (the test is skipped) where loop devices cannot be set up.
    fn attach(file: &Path) -> Option<LoopDevice> {
        let out = match Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                eprintln!("skipped: cannot run losetup: {e}");
                return None;
            }
        };
        if !out.status.success() {
            eprintln!(
                "skipped: losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Some(LoopDevice { dev })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[test]
fn block_device_matches_model() {
    let content = random_content(8, SIZE / 2);
    let file = TempFile::create(&std::env::temp_dir(), "loop", &content);
    let Some(lo) = LoopDevice::attach(&file.path) else {
        return;
    };
    // Geometry from BLKGETSIZE64 and BLKSSZGET (a loop device has 512-byte sectors).
    let bdev = run_model_at(
        &lo.dev,
        content.clone(),
        &UringOptions::default(),
        Config {
            seed: 16,
            ops: 800,
            max_blocks: 96,
            ..Config::default()
        },
        |b| {
            assert_eq!(b.backing_kind(), BackingKind::BlockDevice);
            assert_eq!(b.info().block_size(), 512);
            assert!(b.is_direct());
        },
    );
    drop(bdev);
    // The same device with 4 KiB blocks, continuing from what the first run left.
    let now = std::fs::read(&lo.dev).expect("read the device");
    run_model_at(
        &lo.dev,
        now,
        &UringOptions {
            block_size: Some(4096),
            direct: true,
        },
        Config {
            seed: 17,
            ops: 600,
            ..Config::default()
        },
        |b| assert_eq!(b.info().num_blocks(), (SIZE / 2 / 4096) as u64),
    );
}
