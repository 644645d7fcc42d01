//! `gyre-uring`: files and block devices as bdevs, served through io_uring.
//!
//! [`UringBdev::open`] opens a regular file or a block device (with `O_DIRECT` unless the
//! filesystem refuses it) and describes it as a [`gyre_bdev::Bdev`]. Its channels
//! ([`UringChannel`]) are thin handles on one io_uring per thread, shared by all channels of
//! the thread so that a reactor submits a whole iteration's I/O with one `io_uring_enter`;
//! in-flight slots are preallocated per channel, so steady-state I/O allocates nothing.
//!
//! Operations: read, write (FUA as `RWF_DSYNC`), flush (`fdatasync`), write-zeroes and unmap
//! (`fallocate` zero-range or punch-hole, falling back to writing zeroes), and reset (waits
//! for the channel's earlier requests). Compare is not supported.

mod bdev;
mod ring;
mod slot;

pub use bdev::{BackingKind, UringBdev, UringOptions, ZeroMethod};
pub use ring::{thread_ring_fd, thread_ring_stats, RingStats, UringChannel};
