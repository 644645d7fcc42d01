//! The `lvol` module: pools (lvstores) on bdevs and their volumes, which it registers as bdevs
//! named `<pool>/<volume>` (so the protocol modules export them like any other bdev).
//!
//! Volumes live in the pool's own metadata on its base bdev, not in the saved configuration:
//! the module saves one `lvol_pool_import` per open pool, which finds every volume again when
//! the configuration is replayed. `lvol_pool_scan` imports every bdev that holds a pool.
//! Every pool's engine runs on reactor 0.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use gyre_api::core::NoParams;
use gyre_api::lvol::{
    PoolClose, PoolCreate, PoolDescription, PoolImport, Scanned, VolumeClone, VolumeCreate,
    VolumeDescription, VolumeList, VolumeRef, VolumeRename, VolumeResize, VolumeSnapshot,
};
use gyre_api::{codes, ConfigCall};
use gyre_lvol::{LvolError, MetaError, Pool, PoolInfo, VolumeInfo, DEFAULT_CLUSTER_SIZE};
use gyre_reactor::ReactorHandle;
use serde_json::{json, Value};

use crate::context::DaemonContext;
use crate::module::{parse, rank, to_result, MethodInfo, Module, ParamInfo, RpcError};

const POOL: ParamInfo = ParamInfo::required("pool", "string", "pool name");
const VOLUME: ParamInfo = ParamInfo::required("name", "string", "volume name");

const METHODS: &[MethodInfo] = &[
    MethodInfo {
        name: "lvol_pool_create",
        description: "Create a pool of logical volumes on a bdev (erases it)",
        params: &[
            ParamInfo::required("name", "string", "pool name"),
            ParamInfo::required("base_bdev", "string", "the bdev to hold the pool"),
            ParamInfo::optional(
                "cluster_size",
                "size",
                "allocation unit, power of two >= 4K (default 1M)",
            ),
        ],
        mutates: true,
    },
    MethodInfo {
        name: "lvol_pool_import",
        description: "Open the pool found on a bdev and register its volumes",
        params: &[ParamInfo::required(
            "base_bdev",
            "string",
            "the bdev holding the pool",
        )],
        mutates: true,
    },
    MethodInfo {
        name: "lvol_pool_scan",
        description: "Import every unclaimed bdev that holds a pool",
        params: &[],
        mutates: true,
    },
    MethodInfo {
        name: "lvol_pool_close",
        description: "Unregister a pool's volumes and release its bdev (data stays)",
        params: &[
            ParamInfo::required("name", "string", "pool name"),
            ParamInfo::optional("force", "boolean", "even if volumes are open"),
        ],
        mutates: true,
    },
    MethodInfo {
        name: "lvol_pool_list",
        description: "List pools with free, used and provisioned space",
        params: &[],
        mutates: false,
    },
    MethodInfo {
        name: "lvol_volume_create",
        description: "Create a volume (thin by default)",
        params: &[
            POOL,
            VOLUME,
            ParamInfo::required("size", "size", "size, e.g. \"10G\""),
            ParamInfo::optional("thin", "boolean", "allocate on first write (default true)"),
        ],
        mutates: true,
    },
    MethodInfo {
        name: "lvol_volume_resize",
        description: "Grow or shrink a volume",
        params: &[
            POOL,
            VOLUME,
            ParamInfo::required("size", "size", "new size"),
        ],
        mutates: true,
    },
    MethodInfo {
        name: "lvol_volume_rename",
        description: "Rename a volume (not while open)",
        params: &[
            POOL,
            VOLUME,
            ParamInfo::required("new_name", "string", "new volume name"),
        ],
        mutates: true,
    },
    MethodInfo {
        name: "lvol_volume_snapshot",
        description: "Take a read-only snapshot of a volume",
        params: &[
            POOL,
            VOLUME,
            ParamInfo::required("snapshot", "string", "snapshot name"),
        ],
        mutates: true,
    },
    MethodInfo {
        name: "lvol_volume_clone",
        description: "Create a writable clone of a snapshot",
        params: &[
            POOL,
            ParamInfo::required("snapshot", "string", "snapshot name"),
            ParamInfo::required("name", "string", "clone name"),
        ],
        mutates: true,
    },
    MethodInfo {
        name: "lvol_volume_inflate",
        description: "Give a clone private copies of its shared clusters",
        params: &[POOL, VOLUME],
        mutates: true,
    },
    MethodInfo {
        name: "lvol_volume_delete",
        description: "Delete a volume or snapshot (not while open)",
        params: &[POOL, VOLUME],
        mutates: true,
    },
    MethodInfo {
        name: "lvol_volume_list",
        description: "List volumes with provisioned and allocated bytes",
        params: &[ParamInfo::optional(
            "pool",
            "string",
            "one pool (default: all)",
        )],
        mutates: false,
    },
];

pub struct LvolModule {
    ctx: DaemonContext,
    /// Open pools by name, with the base bdev each was opened on.
    pools: Mutex<BTreeMap<String, Arc<Pool>>>,
}

fn lvol_error(e: LvolError) -> RpcError {
    let msg = e.to_string();
    match e {
        LvolError::Bdev(b) => b.into(),
        LvolError::VolumeNotFound(_) | LvolError::NotAPool(_) => RpcError::not_found(msg),
        LvolError::Meta(m) => match m {
            MetaError::NameTaken(_) => RpcError::new(codes::ALREADY_EXISTS, msg),
            MetaError::BadName(_) => RpcError::invalid_param("name", msg),
            MetaError::BadSize { .. } => RpcError::invalid_param("size", msg),
            MetaError::NoVolume(_) => RpcError::not_found(msg),
            MetaError::HasChildren { .. } => RpcError::new(codes::IN_USE, msg),
            _ => RpcError::failed(msg),
        },
        _ => RpcError::failed(msg),
    }
}

fn describe_pool(p: &PoolInfo, volumes: usize) -> PoolDescription {
    PoolDescription {
        name: p.name.clone(),
        uuid: p.uuid,
        base_bdev: p.base_bdev.clone(),
        cluster_size: p.cluster_size,
        data_offset: p.data_offset,
        total_bytes: p.total_bytes(),
        used_bytes: p.used_bytes(),
        free_bytes: p.free_bytes(),
        provisioned_bytes: p.provisioned_bytes,
        overcommit_ratio: p.overcommit_ratio,
        volumes,
    }
}

fn describe_volume(pool: &str, v: VolumeInfo) -> VolumeDescription {
    VolumeDescription {
        pool: pool.to_string(),
        name: v.name,
        bdev_name: v.bdev_name,
        uuid: v.uuid,
        size_bytes: v.size_bytes,
        thin: v.thin,
        snapshot: v.snapshot,
        parent: v.parent,
        allocated_bytes: v.allocated_bytes,
    }
}

fn check_cluster_size(c: u64) -> Result<(), RpcError> {
    if c.is_power_of_two() && c >= 4096 {
        Ok(())
    } else {
        Err(RpcError::invalid_param(
            "cluster_size",
            format!("{c} is not a power of two of at least 4096"),
        ))
    }
}

impl LvolModule {
    pub fn new(ctx: DaemonContext) -> Self {
        LvolModule {
            ctx,
            pools: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Pool>>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn owner(&self) -> Result<ReactorHandle, RpcError> {
        self.ctx
            .reactors()
            .first()
            .cloned()
            .ok_or_else(|| RpcError::failed("no reactor"))
    }

    fn pool(&self, name: &str) -> Result<Arc<Pool>, RpcError> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| RpcError::not_found(format!("pool '{name}' not found")))
    }

    fn describe(&self, pool: &Pool) -> Result<PoolDescription, RpcError> {
        let (info, vols) = pool.query().map_err(lvol_error)?;
        Ok(describe_pool(&info, vols.len()))
    }

    fn pool_create(&self, p: PoolCreate) -> Result<PoolDescription, RpcError> {
        let cluster = p.cluster_size.map_or(DEFAULT_CLUSTER_SIZE, |s| s.0);
        check_cluster_size(cluster)?;
        let mut pools = self.lock();
        if pools.contains_key(&p.name) {
            return Err(RpcError::new(
                codes::ALREADY_EXISTS,
                format!("pool '{}' already exists", p.name),
            ));
        }
        let pool = Pool::create(
            self.ctx.bdevs(),
            self.owner()?,
            &p.base_bdev,
            &p.name,
            cluster,
        )
        .map_err(lvol_error)?;
        let d = self.describe(&pool)?;
        pools.insert(p.name, Arc::new(pool));
        Ok(d)
    }

    fn import(&self, base: &str) -> Result<PoolDescription, RpcError> {
        let mut pools = self.lock();
        if let Some(sb) = Pool::probe(self.ctx.bdevs(), &self.owner()?, base).map_err(lvol_error)? {
            if pools.contains_key(&sb.name) {
                return Err(RpcError::new(
                    codes::ALREADY_EXISTS,
                    format!("a pool named '{}' is already open", sb.name),
                ));
            }
        }
        let pool = Pool::open(self.ctx.bdevs(), self.owner()?, base).map_err(lvol_error)?;
        let d = self.describe(&pool)?;
        pools.insert(pool.name().to_string(), Arc::new(pool));
        Ok(d)
    }

    fn scan(&self) -> Result<Scanned, RpcError> {
        let mut imported = Vec::new();
        let candidates: Vec<String> = self
            .ctx
            .bdevs()
            .list()
            .into_iter()
            .filter(|b| b.claimed_by.is_none() && b.module != "lvol")
            .map(|b| b.name)
            .collect();
        for name in candidates {
            match Pool::probe(self.ctx.bdevs(), &self.owner()?, &name) {
                Ok(Some(_)) => match self.import(&name) {
                    Ok(d) => imported.push(d),
                    Err(e) => tracing::warn!(bdev = %name, error = %e, "pool not imported"),
                },
                Ok(None) => {}
                Err(e) => tracing::warn!(bdev = %name, error = %e, "cannot probe for a pool"),
            }
        }
        Ok(Scanned { imported })
    }

    fn close(&self, p: PoolClose) -> Result<Value, RpcError> {
        let pool = self.pool(&p.name)?;
        pool.close(p.force).map_err(lvol_error)?;
        self.lock().remove(&p.name);
        Ok(json!(true))
    }

    fn pool_list(&self) -> Result<Vec<PoolDescription>, RpcError> {
        let pools: Vec<Arc<Pool>> = self.lock().values().cloned().collect();
        pools.iter().map(|p| self.describe(p)).collect()
    }

    fn volume_list(&self, p: VolumeList) -> Result<Vec<VolumeDescription>, RpcError> {
        let pools: Vec<Arc<Pool>> = match &p.pool {
            Some(name) => vec![self.pool(name)?],
            None => self.lock().values().cloned().collect(),
        };
        let mut out = Vec::new();
        for pool in pools {
            for v in pool.volumes().map_err(lvol_error)? {
                out.push(describe_volume(pool.name(), v));
            }
        }
        Ok(out)
    }

    fn volume_op(
        &self,
        pool: &str,
        f: impl FnOnce(&Pool) -> Result<VolumeInfo, LvolError>,
    ) -> Result<Value, RpcError> {
        let pool = self.pool(pool)?;
        let v = f(&pool).map_err(lvol_error)?;
        to_result(&describe_volume(pool.name(), v))
    }
}

impl Module for LvolModule {
    fn name(&self) -> &'static str {
        "lvol"
    }

    fn rank(&self) -> u32 {
        rank::VBDEV
    }

    fn methods(&self) -> Vec<MethodInfo> {
        METHODS.to_vec()
    }

    fn handle(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "lvol_pool_create" => to_result(&self.pool_create(parse(params)?)?),
            "lvol_pool_import" => {
                let p: PoolImport = parse(params)?;
                to_result(&self.import(&p.base_bdev)?)
            }
            "lvol_pool_scan" => {
                let _: NoParams = parse(params)?;
                to_result(&self.scan()?)
            }
            "lvol_pool_close" => self.close(parse(params)?),
            "lvol_pool_list" => {
                let _: NoParams = parse(params)?;
                to_result(&self.pool_list()?)
            }
            "lvol_volume_create" => {
                let p: VolumeCreate = parse(params)?;
                self.volume_op(&p.pool, |pool| {
                    pool.create_volume(&p.name, p.size.0, p.thin)
                })
            }
            "lvol_volume_resize" => {
                let p: VolumeResize = parse(params)?;
                self.volume_op(&p.pool, |pool| pool.resize(&p.name, p.size.0))
            }
            "lvol_volume_rename" => {
                let p: VolumeRename = parse(params)?;
                self.volume_op(&p.pool, |pool| pool.rename(&p.name, &p.new_name))
            }
            "lvol_volume_snapshot" => {
                let p: VolumeSnapshot = parse(params)?;
                self.volume_op(&p.pool, |pool| pool.snapshot(&p.name, &p.snapshot))
            }
            "lvol_volume_clone" => {
                let p: VolumeClone = parse(params)?;
                self.volume_op(&p.pool, |pool| pool.clone_volume(&p.snapshot, &p.name))
            }
            "lvol_volume_inflate" => {
                let p: VolumeRef = parse(params)?;
                self.volume_op(&p.pool, |pool| pool.inflate(&p.name))
            }
            "lvol_volume_delete" => {
                let p: VolumeRef = parse(params)?;
                self.pool(&p.pool)?
                    .delete_volume(&p.name)
                    .map_err(lvol_error)?;
                Ok(json!(true))
            }
            "lvol_volume_list" => to_result(&self.volume_list(parse(params)?)?),
            _ => Err(RpcError::internal(format!("lvol: no method {method}"))),
        }
    }

    fn validate(&self, method: &str, params: &Value) -> Result<(), RpcError> {
        let params = params.clone();
        match method {
            "lvol_pool_create" => {
                let p: PoolCreate = parse(params)?;
                p.cluster_size.map_or(Ok(()), |c| check_cluster_size(c.0))
            }
            "lvol_pool_import" => parse::<PoolImport>(params).map(drop),
            "lvol_pool_scan" | "lvol_pool_list" => parse::<NoParams>(params).map(drop),
            "lvol_pool_close" => parse::<PoolClose>(params).map(drop),
            "lvol_volume_create" => parse::<VolumeCreate>(params).map(drop),
            "lvol_volume_resize" => parse::<VolumeResize>(params).map(drop),
            "lvol_volume_rename" => parse::<VolumeRename>(params).map(drop),
            "lvol_volume_snapshot" => parse::<VolumeSnapshot>(params).map(drop),
            "lvol_volume_clone" => parse::<VolumeClone>(params).map(drop),
            "lvol_volume_inflate" | "lvol_volume_delete" => parse::<VolumeRef>(params).map(drop),
            "lvol_volume_list" => parse::<VolumeList>(params).map(drop),
            _ => Err(RpcError::internal(format!("lvol: no method {method}"))),
        }
    }

    fn undo(&self, call: &ConfigCall) -> Result<(), RpcError> {
        match call.method.as_str() {
            "lvol_pool_import" => {
                let p: PoolImport = parse(call.params.clone())?;
                let name = self
                    .lock()
                    .iter()
                    .find(|(_, pool)| pool.base_name() == p.base_bdev)
                    .map(|(n, _)| n.clone());
                match name {
                    Some(name) => self.close(PoolClose { name, force: true }).map(drop),
                    None => Ok(()),
                }
            }
            "lvol_pool_create" => {
                let p: PoolCreate = parse(call.params.clone())?;
                // The pool stays on its bdev; it is only closed again.
                self.close(PoolClose {
                    name: p.name,
                    force: true,
                })
                .map(drop)
            }
            "lvol_volume_create" | "lvol_volume_snapshot" | "lvol_volume_clone" => {
                let (pool, name) = match call.method.as_str() {
                    "lvol_volume_create" => {
                        let p: VolumeCreate = parse(call.params.clone())?;
                        (p.pool, p.name)
                    }
                    "lvol_volume_snapshot" => {
                        let p: VolumeSnapshot = parse(call.params.clone())?;
                        (p.pool, p.snapshot)
                    }
                    _ => {
                        let p: VolumeClone = parse(call.params.clone())?;
                        (p.pool, p.name)
                    }
                };
                self.pool(&pool)?.delete_volume(&name).map_err(lvol_error)
            }
            other => Err(RpcError::internal(format!("lvol: cannot undo {other}"))),
        }
    }

    fn object_name(&self, method: &str, params: &Value) -> Option<String> {
        match method {
            "lvol_pool_import" => params.get("base_bdev")?.as_str().map(str::to_string),
            _ => params.get("name")?.as_str().map(str::to_string),
        }
    }

    fn save_config(&self) -> Vec<ConfigCall> {
        self.lock()
            .values()
            .map(|p| ConfigCall::new("lvol_pool_import", json!({ "base_bdev": p.base_name() })))
            .collect()
    }

    fn shutdown(&self, _deadline: Instant) {
        // Metadata is durable after every change; closing drops the base channels on their
        // reactors before those stop.
        let pools: Vec<Arc<Pool>> = std::mem::take(&mut *self.lock()).into_values().collect();
        for p in pools {
            if let Err(e) = p.close(true) {
                tracing::warn!(pool = %p.name(), error = %e, "pool not closed cleanly");
            }
        }
    }
}
