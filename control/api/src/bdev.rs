//! Parameters and results of the `bdev` module's methods.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Size;

fn default_block_size() -> u32 {
    4096
}

fn yes() -> bool {
    true
}

/// `bdev_malloc_create`: a RAM-backed bdev.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MallocCreate {
    pub name: String,
    pub size: Size,
    /// 512 or 4096 (default).
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Keep this UUID (saved configurations carry it); a new one otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
}

/// `bdev_null_create`: reads return zeroes, writes are dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullCreate {
    pub name: String,
    pub size: Size,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
}

/// `bdev_uring_create`: a file or block device through io_uring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UringCreate {
    pub name: String,
    /// Path of a regular file (its size is the bdev's) or a block device.
    pub filename: String,
    /// Default: the device's logical block size, 4096 for a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// Open with O_DIRECT (default true; falls back to buffered where refused).
    #[serde(default = "yes")]
    pub direct: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
}

/// `bdev_inject_create`: a fault-injecting bdev stacked on (and claiming) `base_bdev`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectCreate {
    pub name: String,
    pub base_bdev: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
}

/// `bdev_inject_set`: what an inject bdev does from now on. Not saved in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectSet {
    pub name: String,
    /// Fail the next `fail_count` requests of these ops (`read`, `write`, `flush`, ...).
    #[serde(default)]
    pub fail_ops: Vec<String>,
    #[serde(default)]
    pub fail_count: u64,
    /// errno reported for failed requests (default EIO).
    #[serde(default = "eio")]
    pub errno: i32,
    /// Flip the first byte of this block in every read that covers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt_lba: Option<u64>,
    /// Hold every completion back this long.
    #[serde(default)]
    pub delay_us: u64,
}

fn eio() -> i32 {
    5
}

/// `bdev_delete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delete {
    pub name: String,
    /// Delete even if open: holders are told and their I/O fails; inject bdevs stacked on
    /// it are deleted too.
    #[serde(default)]
    pub force: bool,
}

/// `bdev_get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Get {
    pub name: String,
}

/// `bdev_iostat`: one bdev, or all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Iostat {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A bdev as `bdev_list` and `bdev_get` describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BdevDescription {
    pub name: String,
    /// The backend (`malloc`, `null`, `uring`, `inject`, ...).
    pub module: String,
    pub uuid: Uuid,
    pub block_size: u32,
    pub num_blocks: u64,
    pub size_bytes: u64,
    /// Supported operations.
    pub io_types: Vec<String>,
    /// The virtual bdev that claimed it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// Who holds it open.
    #[serde(default)]
    pub holders: Vec<String>,
    /// Backend-specific details (file name, base bdev, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<serde_json::Value>,
}

/// `bdev_malloc_create` and the other create methods return the new bdev's name and UUID.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Created {
    pub name: String,
    pub uuid: Uuid,
}

/// One latency bucket: requests that took at most `le_ns` (the last bucket has none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyBucket {
    pub le_ns: Option<u64>,
    pub count: u64,
}

/// Counts of one kind of I/O.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindIostat {
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
    pub mean_latency_ns: u64,
    /// Non-empty buckets only, in increasing order.
    pub latency: Vec<LatencyBucket>,
}

/// `bdev_iostat` returns one of these per bdev.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BdevIostat {
    pub name: String,
    pub read: KindIostat,
    pub write: KindIostat,
    /// Flush, unmap, write-zeroes, reset, compare.
    pub other: KindIostat,
}
