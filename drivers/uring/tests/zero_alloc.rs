//! Proof that steady-state I/O through io_uring allocates nothing: O_DIRECT on a file on the
//! real disk, registered pool buffers, on a real reactor.

use std::path::PathBuf;

use gyre_bdev::testing::{steady_state_allocations, CountingAlloc};
use gyre_uring::{UringBdev, UringOptions};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn uring_io_allocates_nothing_in_steady_state() {
    let file =
        TempFile(std::env::temp_dir().join(format!("gyre-zero-alloc-{}.img", std::process::id())));
    std::fs::write(&file.0, vec![0u8; 64 << 20]).unwrap();
    let bdev = UringBdev::open(
        "u",
        &file.0,
        &UringOptions {
            block_size: Some(4096),
            direct: true,
        },
    )
    .unwrap();
    assert!(
        bdev.is_direct(),
        "O_DIRECT works on the temp dir's filesystem"
    );
    let pool = gyre_reactor::global_pool().unwrap().clone();
    let measured = 50_000;
    let r = steady_state_allocations(bdev, pool, 32, 5_000, measured);
    assert!(r.ios >= measured, "only {} I/Os", r.ios);
    assert_eq!(
        r.allocations, 0,
        "{} heap allocations during {} I/Os",
        r.allocations, r.ios
    );
}
