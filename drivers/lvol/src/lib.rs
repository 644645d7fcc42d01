//! Logical volumes: thin-provisioned pools (lvstores) on a base bdev, whose volumes are bdevs,
//! with snapshots, clones, inflate, resize and crash-consistent metadata.
//!
//! - [`meta`]: the metadata as plain data and its byte format (`docs/lvol-format.md`): a
//!   superblock, and a complete metadata image written alternately to two regions with a
//!   sequence number and a CRC (shadow paging), so that a crash at any moment leaves one valid
//!   image.
//! - [`Pool`]: the control side. Every metadata change runs on the pool's owner reactor (the
//!   engine), which batches the changes that arrive together, carries out their data work
//!   (zeroing new clusters, copy on write), and persists one new image per batch before it
//!   answers any of them.
//! - The volume bdevs: per-reactor channels look clusters up in a published map of atomics
//!   (no lock, no allocation); a write that needs a new cluster or a private copy asks the
//!   owner by message and is resubmitted once the change is durable.

mod engine;
pub mod meta;
mod pool;
mod volume;

pub use meta::{MetaError, Superblock, VolumeMeta};
pub use pool::{Pool, PoolInfo, VolumeInfo, DEFAULT_CLUSTER_SIZE};
pub use volume::VolumeBdev;

/// Errors of the pool's control path.
#[derive(Debug, thiserror::Error)]
pub enum LvolError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Bdev(#[from] gyre_bdev::BdevError),
    #[error("base bdev I/O failed: {0}")]
    Io(#[from] gyre_bdev::IoError),
    #[error("bdev '{0}' holds no pool")]
    NotAPool(String),
    #[error("no valid metadata image on bdev '{0}'")]
    NoValidImage(String),
    #[error("base bdev '{name}' lacks {op}, which a pool needs")]
    BaseUnsupported { name: String, op: gyre_bdev::IoOp },
    #[error("the pool metadata does not fit its region ({need} bytes, region {have})")]
    MetadataFull { need: u64, have: u64 },
    #[error("volume '{0}' not found")]
    VolumeNotFound(String),
    #[error("the pool's owner reactor stopped or did not answer in time")]
    Reactor,
    #[error("the I/O buffer pool is unavailable: {0}")]
    Buffers(String),
}
