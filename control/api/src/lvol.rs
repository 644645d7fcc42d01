//! Parameters and results of the `lvol` module's methods: pools (lvstores) on base bdevs and
//! the volumes in them (thin or thick, snapshots, clones).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Size;

fn yes() -> bool {
    true
}

/// `lvol_pool_create`: a new pool on `base_bdev` (whatever the bdev held is lost).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolCreate {
    pub name: String,
    pub base_bdev: String,
    /// Allocation unit, a power of two of at least 4 KiB (default 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<Size>,
}

/// `lvol_pool_import`: opens the pool found on `base_bdev`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolImport {
    pub base_bdev: String,
}

/// `lvol_pool_close`: unregisters a pool's volumes and releases its base bdev (the data
/// stays on it; import it again to use it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolClose {
    pub name: String,
    /// Close even if volumes are open (their holders' I/O fails).
    #[serde(default)]
    pub force: bool,
}

/// A pool as `lvol_pool_list` describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolDescription {
    pub name: String,
    pub uuid: Uuid,
    pub base_bdev: String,
    pub cluster_size: u64,
    /// Where the data clusters start on the base bdev, in bytes.
    #[serde(default)]
    pub data_offset: u64,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// Bytes promised to volumes (snapshots not counted).
    pub provisioned_bytes: u64,
    /// Provisioned over total bytes; above 1 the pool is over-committed.
    pub overcommit_ratio: f64,
    pub volumes: usize,
}

/// `lvol_pool_scan` returns the pools it imported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scanned {
    pub imported: Vec<PoolDescription>,
}

/// `lvol_volume_create`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreate {
    pub pool: String,
    pub name: String,
    pub size: Size,
    /// Allocate clusters on first write (default) instead of all at creation.
    #[serde(default = "yes")]
    pub thin: bool,
}

/// `lvol_volume_resize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeResize {
    pub pool: String,
    pub name: String,
    pub size: Size,
}

/// `lvol_volume_rename` (the volume must not be open).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRename {
    pub pool: String,
    pub name: String,
    pub new_name: String,
}

/// `lvol_volume_snapshot`: a read-only snapshot `snapshot` of volume `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSnapshot {
    pub pool: String,
    pub name: String,
    pub snapshot: String,
}

/// `lvol_volume_clone`: a writable volume `name` sharing the clusters of `snapshot`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeClone {
    pub pool: String,
    pub snapshot: String,
    pub name: String,
}

/// `lvol_volume_inflate`, `lvol_volume_delete`: one volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRef {
    pub pool: String,
    pub name: String,
}

/// `lvol_volume_list`: the volumes of one pool, or of all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeList {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// A volume as the volume methods describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeDescription {
    pub pool: String,
    pub name: String,
    /// Its bdev, `<pool>/<name>`, to export or open.
    pub bdev_name: String,
    pub uuid: Uuid,
    pub size_bytes: u64,
    pub thin: bool,
    pub snapshot: bool,
    /// The snapshot it descends from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Bytes of clusters it references (shared ones included).
    pub allocated_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_create_defaults_to_thin_and_refuses_unknown_fields() {
        let v: VolumeCreate =
            serde_json::from_str(r#"{"pool":"p","name":"v","size":"1G"}"#).unwrap();
        assert!(v.thin);
        assert_eq!(v.size, Size(1 << 30));
        assert!(serde_json::from_str::<VolumeCreate>(
            r#"{"pool":"p","name":"v","size":"1G","thinn":false}"#
        )
        .is_err());
        let p: PoolCreate =
            serde_json::from_str(r#"{"name":"p","base_bdev":"u0","cluster_size":"64K"}"#).unwrap();
        assert_eq!(p.cluster_size, Some(Size(64 << 10)));
    }
}
