//! `gyrectl pool ...` and `gyrectl volume ...`: logical volume pools and their volumes.

use clap::Subcommand;
use gyre_api::lvol::{
    PoolClose, PoolCreate, PoolImport, VolumeClone, VolumeCreate, VolumeList, VolumeRef,
    VolumeRename, VolumeResize, VolumeSnapshot,
};
use gyre_api::{ClientError, Size};
use serde::Serialize;
use serde_json::Value;

use crate::output::{bytes, done, field, table, Output};
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum PoolCommand {
    /// Create a pool on a bdev (erases what the bdev held).
    Create {
        #[arg(long)]
        name: String,
        /// The bdev to hold the pool.
        #[arg(long)]
        base: String,
        /// Allocation unit, a power of two of at least 4K (default 1M).
        #[arg(long)]
        cluster_size: Option<Size>,
    },
    /// Open the pool found on a bdev.
    Import {
        /// The bdev holding the pool.
        base: String,
    },
    /// Import every unclaimed bdev that holds a pool.
    Scan,
    /// Unregister a pool's volumes and release its bdev (the data stays).
    Close {
        name: String,
        /// Even if volumes are open.
        #[arg(long)]
        force: bool,
    },
    /// List pools: size, used, free, provisioned, over-commit.
    List,
}

#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume (thin unless --thick).
    Create {
        #[arg(long)]
        pool: String,
        #[arg(long)]
        name: String,
        /// Size: bytes, or with a unit (10G).
        #[arg(long)]
        size: Size,
        /// Allocate every cluster now instead of on first write.
        #[arg(long)]
        thick: bool,
    },
    /// Grow or shrink a volume.
    Resize {
        #[arg(long)]
        pool: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        size: Size,
    },
    /// Rename a volume (not while open).
    Rename {
        #[arg(long)]
        pool: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        new_name: String,
    },
    /// Take a read-only snapshot of a volume.
    Snapshot {
        #[arg(long)]
        pool: String,
        /// The volume.
        #[arg(long)]
        name: String,
        /// The snapshot's name.
        #[arg(long)]
        snapshot: String,
    },
    /// Create a writable clone of a snapshot.
    Clone {
        #[arg(long)]
        pool: String,
        #[arg(long)]
        snapshot: String,
        /// The clone's name.
        #[arg(long)]
        name: String,
    },
    /// Give a clone private copies of the clusters it shares.
    Inflate {
        #[arg(long)]
        pool: String,
        #[arg(long)]
        name: String,
    },
    /// Delete a volume or snapshot (not while open).
    Delete {
        #[arg(long)]
        pool: String,
        #[arg(long)]
        name: String,
    },
    /// List volumes (of one pool with --pool).
    List {
        #[arg(long)]
        pool: Option<String>,
    },
}

fn call<P: Serialize>(ctx: &mut Ctx, method: &str, p: &P) -> Result<Value, ClientError> {
    let params = serde_json::to_value(p).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    ctx.call(method, Some(params))
}

pub fn run_pool(cmd: PoolCommand, ctx: &mut Ctx) -> Result<Output, ClientError> {
    Ok(match cmd {
        PoolCommand::Create {
            name,
            base,
            cluster_size,
        } => Output::new(
            call(
                ctx,
                "lvol_pool_create",
                &PoolCreate {
                    name,
                    base_bdev: base,
                    cluster_size,
                },
            )?,
            |v| pools_table(&Value::Array(vec![v.clone()])),
        ),
        PoolCommand::Import { base } => Output::new(
            call(ctx, "lvol_pool_import", &PoolImport { base_bdev: base })?,
            |v| pools_table(&Value::Array(vec![v.clone()])),
        ),
        PoolCommand::Scan => Output::new(ctx.call("lvol_pool_scan", None)?, |v| {
            pools_table(v.get("imported").unwrap_or(&Value::Null))
        }),
        PoolCommand::Close { name, force } => Output::new(
            call(ctx, "lvol_pool_close", &PoolClose { name, force })?,
            done,
        ),
        PoolCommand::List => Output::new(ctx.call("lvol_pool_list", None)?, pools_table),
    })
}

pub fn run_volume(cmd: VolumeCommand, ctx: &mut Ctx) -> Result<Output, ClientError> {
    let one = |v: &Value| volumes_table(&Value::Array(vec![v.clone()]));
    Ok(match cmd {
        VolumeCommand::Create {
            pool,
            name,
            size,
            thick,
        } => Output::new(
            call(
                ctx,
                "lvol_volume_create",
                &VolumeCreate {
                    pool,
                    name,
                    size,
                    thin: !thick,
                },
            )?,
            one,
        ),
        VolumeCommand::Resize { pool, name, size } => Output::new(
            call(
                ctx,
                "lvol_volume_resize",
                &VolumeResize { pool, name, size },
            )?,
            one,
        ),
        VolumeCommand::Rename {
            pool,
            name,
            new_name,
        } => Output::new(
            call(
                ctx,
                "lvol_volume_rename",
                &VolumeRename {
                    pool,
                    name,
                    new_name,
                },
            )?,
            one,
        ),
        VolumeCommand::Snapshot {
            pool,
            name,
            snapshot,
        } => Output::new(
            call(
                ctx,
                "lvol_volume_snapshot",
                &VolumeSnapshot {
                    pool,
                    name,
                    snapshot,
                },
            )?,
            one,
        ),
        VolumeCommand::Clone {
            pool,
            snapshot,
            name,
        } => Output::new(
            call(
                ctx,
                "lvol_volume_clone",
                &VolumeClone {
                    pool,
                    snapshot,
                    name,
                },
            )?,
            one,
        ),
        VolumeCommand::Inflate { pool, name } => Output::new(
            call(ctx, "lvol_volume_inflate", &VolumeRef { pool, name })?,
            one,
        ),
        VolumeCommand::Delete { pool, name } => Output::new(
            call(ctx, "lvol_volume_delete", &VolumeRef { pool, name })?,
            done,
        ),
        VolumeCommand::List { pool } => Output::new(
            call(ctx, "lvol_volume_list", &VolumeList { pool })?,
            volumes_table,
        ),
    })
}

fn size_field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_u64)
        .map(bytes)
        .unwrap_or_else(|| "-".into())
}

fn pools_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    vec![
                        field(p, "name"),
                        field(p, "base_bdev"),
                        size_field(p, "cluster_size"),
                        size_field(p, "total_bytes"),
                        size_field(p, "used_bytes"),
                        size_field(p, "free_bytes"),
                        size_field(p, "provisioned_bytes"),
                        p.get("overcommit_ratio")
                            .and_then(Value::as_f64)
                            .map(|r| format!("{r:.2}"))
                            .unwrap_or_else(|| "-".into()),
                        field(p, "volumes"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &[
            "NAME",
            "BASE",
            "CLUSTER",
            "SIZE",
            "USED",
            "FREE",
            "PROVISIONED",
            "OVERCOMMIT",
            "VOLUMES",
        ],
        &rows,
    )
}

fn volumes_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    let kind = if x.get("snapshot").and_then(Value::as_bool) == Some(true) {
                        "snapshot"
                    } else if x.get("thin").and_then(Value::as_bool) == Some(true) {
                        "thin"
                    } else {
                        "thick"
                    };
                    vec![
                        field(x, "bdev_name"),
                        kind.to_string(),
                        size_field(x, "size_bytes"),
                        size_field(x, "allocated_bytes"),
                        field(x, "parent"),
                        field(x, "uuid"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &["BDEV", "KIND", "SIZE", "ALLOCATED", "PARENT", "UUID"],
        &rows,
    )
}
