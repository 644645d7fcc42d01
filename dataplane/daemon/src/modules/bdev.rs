//! The `bdev` module: creating, listing, deleting bdevs of the backends that need no other
//! module (malloc, null, uring, inject), their I/O statistics, and their part of the saved
//! configuration.
//!
//! The module remembers the bdevs it created, in creation order, which is an order that can
//! be replayed (a base always exists before the inject bdev stacked on it). Saved calls carry
//! each bdev's UUID so that a restart brings back the same identities.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gyre_api::bdev::{
    BdevDescription, BdevIostat, Created, Delete, Get, InjectCreate, InjectSet, Iostat, KindIostat,
    LatencyBucket, MallocCreate, NullCreate, UringCreate,
};
use gyre_api::core::NoParams;
use gyre_api::{codes, ConfigCall, Size};
use gyre_bdev::stats::latency_bucket_upper_ns;
use gyre_bdev::{
    Bdev, BdevError, BdevSummary, Faults, InjectBdev, IoOp, IoTypes, KindStats, MallocBdev,
    NullBdev,
};
use gyre_uring::{UringBdev, UringOptions};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::context::DaemonContext;
use crate::module::{parse, rank, to_result, MethodInfo, Module, ParamInfo, RpcError};

#[derive(Debug, Clone)]
enum Kind {
    Malloc {
        size: u64,
        block_size: u32,
    },
    Null {
        size: u64,
        block_size: u32,
    },
    Uring {
        filename: String,
        block_size: Option<u32>,
        direct: bool,
        is_direct: bool,
    },
    Inject {
        base: String,
    },
}

#[derive(Debug, Clone)]
struct Record {
    name: String,
    kind: Kind,
}

#[derive(Default)]
struct State {
    /// Bdevs this module created, in creation order.
    records: Vec<Record>,
    faults: HashMap<String, Arc<Faults>>,
}

pub struct BdevModule {
    ctx: DaemonContext,
    state: Mutex<State>,
}

const NAME: ParamInfo = ParamInfo::required("name", "string", "bdev name");
const UUID: ParamInfo = ParamInfo::optional("uuid", "uuid", "keep this UUID (default: a new one)");
const BLOCK_SIZE: ParamInfo =
    ParamInfo::optional("block_size", "integer", "512 or 4096 (default 4096)");

const METHODS: &[MethodInfo] = &[
    MethodInfo {
        name: "bdev_malloc_create",
        description: "Create a RAM-backed bdev",
        params: &[
            NAME,
            ParamInfo::required("size", "size", "size, e.g. \"1G\" or bytes"),
            BLOCK_SIZE,
            UUID,
        ],
        mutates: true,
    },
    MethodInfo {
        name: "bdev_null_create",
        description: "Create a bdev that reads zeroes and drops writes",
        params: &[
            NAME,
            ParamInfo::required("size", "size", "size, e.g. \"1G\" or bytes"),
            BLOCK_SIZE,
            UUID,
        ],
        mutates: true,
    },
    MethodInfo {
        name: "bdev_uring_create",
        description: "Create a bdev on a file or block device through io_uring",
        params: &[
            NAME,
            ParamInfo::required("filename", "string", "file or block device path"),
            ParamInfo::optional(
                "block_size",
                "integer",
                "512 or 4096 (default: the device's, 4096 for a file)",
            ),
            ParamInfo::optional("direct", "boolean", "open with O_DIRECT (default true)"),
            UUID,
        ],
        mutates: true,
    },
    MethodInfo {
        name: "bdev_inject_create",
        description: "Create a fault-injection bdev stacked on (and claiming) a base bdev",
        params: &[
            NAME,
            ParamInfo::required("base_bdev", "string", "the bdev to stack on"),
            UUID,
        ],
        mutates: true,
    },
    MethodInfo {
        name: "bdev_inject_set",
        description: "Set what an inject bdev does: fail, corrupt or delay I/O (not saved)",
        params: &[
            NAME,
            ParamInfo::optional("fail_ops", "array", "ops to fail: read, write, flush, ..."),
            ParamInfo::optional("fail_count", "integer", "how many requests to fail"),
            ParamInfo::optional(
                "errno",
                "integer",
                "errno of failed requests (default 5, EIO)",
            ),
            ParamInfo::optional(
                "corrupt_lba",
                "integer",
                "flip a byte of this block in reads",
            ),
            ParamInfo::optional("delay_us", "integer", "hold completions back this long"),
        ],
        mutates: true,
    },
    MethodInfo {
        name: "bdev_delete",
        description: "Delete a bdev (refused while in use unless force)",
        params: &[
            NAME,
            ParamInfo::optional(
                "force",
                "boolean",
                "delete even if in use: holders' I/O fails, inject bdevs on it go too",
            ),
        ],
        mutates: true,
    },
    MethodInfo {
        name: "bdev_list",
        description: "List all bdevs",
        params: &[],
        mutates: false,
    },
    MethodInfo {
        name: "bdev_get",
        description: "Describe one bdev",
        params: &[NAME],
        mutates: false,
    },
    MethodInfo {
        name: "bdev_iostat",
        description: "I/O statistics of one bdev or all: ops, bytes, errors, latency buckets",
        params: &[ParamInfo::optional(
            "name",
            "string",
            "one bdev (default: all)",
        )],
        mutates: false,
    },
];

fn check_block_size(bs: u32) -> Result<(), RpcError> {
    if bs == 512 || bs == 4096 {
        Ok(())
    } else {
        Err(BdevError::InvalidBlockSize(bs).into())
    }
}

fn check_size(name: &str, size: Size, block_size: u32) -> Result<(), RpcError> {
    check_block_size(block_size)?;
    if size.0 == 0 {
        return Err(BdevError::ZeroSize(name.to_string()).into());
    }
    // Block sizes are powers of two (checked above).
    if size.0 & (block_size as u64 - 1) != 0 {
        return Err(RpcError::invalid_param(
            "size",
            format!(
                "{} is not a multiple of the block size {block_size}",
                size.0
            ),
        ));
    }
    Ok(())
}

fn op_from_name(s: &str) -> Option<IoOp> {
    IoOp::ALL.into_iter().find(|op| op.name() == s)
}

fn io_type_names(t: IoTypes) -> Vec<String> {
    t.iter().map(|op| op.name().to_string()).collect()
}

fn kind_iostat(k: &KindStats) -> KindIostat {
    KindIostat {
        ops: k.ops,
        bytes: k.bytes,
        errors: k.errors,
        mean_latency_ns: k.mean_latency_ns(),
        latency: k
            .latency_buckets
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &count)| LatencyBucket {
                le_ns: latency_bucket_upper_ns(i),
                count,
            })
            .collect(),
    }
}

impl BdevModule {
    pub fn new(ctx: DaemonContext) -> Self {
        BdevModule {
            ctx,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new bdev under the checks every create shares.
    fn add(
        &self,
        st: &mut State,
        bdev: Arc<dyn Bdev>,
        uuid: Option<Uuid>,
        kind: Kind,
    ) -> Result<Created, RpcError> {
        let name = bdev.info().name().to_string();
        if let Some(u) = uuid {
            bdev.info().assign_uuid(u);
        }
        self.ctx.bdevs().register(bdev.clone())?;
        st.records.push(Record {
            name: name.clone(),
            kind,
        });
        Ok(Created {
            name,
            uuid: bdev.info().uuid(),
        })
    }

    /// Refuses a name or UUID that is taken, before anything is built.
    fn check_new(&self, name: &str, uuid: Option<Uuid>) -> Result<(), RpcError> {
        if self.ctx.bdevs().get(name).is_some() {
            return Err(BdevError::AlreadyExists(name.to_string()).into());
        }
        if let Some(u) = uuid {
            if let Some(other) = self.ctx.bdevs().list().into_iter().find(|b| b.uuid == u) {
                return Err(RpcError::new(
                    codes::ALREADY_EXISTS,
                    format!("bdev '{}' already has UUID {u}", other.name),
                ));
            }
        }
        Ok(())
    }

    fn malloc_create(&self, p: MallocCreate) -> Result<Created, RpcError> {
        check_size(&p.name, p.size, p.block_size)?;
        let mut st = self.lock();
        self.check_new(&p.name, p.uuid)?;
        let bdev = MallocBdev::create(&p.name, p.size.0, p.block_size)?;
        let kind = Kind::Malloc {
            size: p.size.0,
            block_size: p.block_size,
        };
        self.add(&mut st, bdev, p.uuid, kind)
    }

    fn null_create(&self, p: NullCreate) -> Result<Created, RpcError> {
        check_size(&p.name, p.size, p.block_size)?;
        let mut st = self.lock();
        self.check_new(&p.name, p.uuid)?;
        let bdev = NullBdev::create(&p.name, p.size.0, p.block_size)?;
        let kind = Kind::Null {
            size: p.size.0,
            block_size: p.block_size,
        };
        self.add(&mut st, bdev, p.uuid, kind)
    }

    fn uring_create(&self, p: UringCreate) -> Result<Created, RpcError> {
        if let Some(bs) = p.block_size {
            check_block_size(bs)?;
        }
        let mut st = self.lock();
        self.check_new(&p.name, p.uuid)?;
        let opts = UringOptions {
            block_size: p.block_size,
            direct: p.direct,
        };
        let bdev =
            UringBdev::open(&p.name, Path::new(&p.filename), &opts).map_err(|e| match e {
                BdevError::Io { .. } => RpcError::invalid_param("filename", e),
                other => other.into(),
            })?;
        let kind = Kind::Uring {
            filename: p.filename,
            block_size: p.block_size,
            direct: p.direct,
            is_direct: bdev.is_direct(),
        };
        self.add(&mut st, bdev, p.uuid, kind)
    }

    fn inject_create(&self, p: InjectCreate) -> Result<Created, RpcError> {
        let mut st = self.lock();
        self.check_new(&p.name, p.uuid)?;
        let bdev =
            InjectBdev::create(self.ctx.bdevs(), &p.name, &p.base_bdev).map_err(|e| match e {
                BdevError::NotFound(_) => RpcError::not_found(format!("params.base_bdev: {e}"))
                    .with_data(json!({ "field": "base_bdev" })),
                other => other.into(),
            })?;
        let faults = bdev.faults();
        let created = self.add(&mut st, bdev, p.uuid, Kind::Inject { base: p.base_bdev })?;
        st.faults.insert(p.name, faults);
        Ok(created)
    }

    fn inject_set(&self, p: InjectSet) -> Result<Value, RpcError> {
        let st = self.lock();
        let faults = st
            .faults
            .get(&p.name)
            .ok_or_else(|| RpcError::not_found(format!("inject bdev '{}' not found", p.name)))?;
        let mut ops = IoTypes::NONE;
        for (i, name) in p.fail_ops.iter().enumerate() {
            let op = op_from_name(name).ok_or_else(|| {
                RpcError::invalid_param(
                    &format!("fail_ops[{i}]"),
                    format!("unknown op '{name}' (read, write, flush, write_zeroes, unmap, reset, compare)"),
                )
            })?;
            ops = ops.with(op);
        }
        faults.clear();
        if p.fail_count > 0 && ops != IoTypes::NONE {
            faults.fail(ops, p.fail_count, p.errno);
        }
        faults.corrupt_reads_of(p.corrupt_lba);
        faults.delay(Duration::from_micros(p.delay_us));
        Ok(json!(true))
    }

    fn delete(&self, p: Delete) -> Result<Value, RpcError> {
        let mut st = self.lock();
        self.delete_locked(&mut st, &p.name, p.force)?;
        Ok(json!(true))
    }

    fn delete_locked(&self, st: &mut State, name: &str, force: bool) -> Result<(), RpcError> {
        if !st.records.iter().any(|r| r.name == name) {
            return match self.ctx.bdevs().get(name) {
                Some(b) => Err(RpcError::new(
                    codes::IN_USE,
                    format!(
                        "bdev '{name}' belongs to module '{}'; delete it with that module's method",
                        b.info().module()
                    ),
                )),
                None => Err(BdevError::NotFound(name.to_string()).into()),
            };
        }
        if force {
            let stacked: Vec<String> = st
                .records
                .iter()
                .filter(|r| matches!(&r.kind, Kind::Inject { base } if base == name))
                .map(|r| r.name.clone())
                .collect();
            for s in stacked {
                self.delete_locked(st, &s, true)?;
            }
        }
        self.ctx.bdevs().delete(name, force)?;
        st.records.retain(|r| r.name != name);
        st.faults.remove(name);
        Ok(())
    }

    fn describe(&self, st: &State, s: BdevSummary) -> BdevDescription {
        let driver = st
            .records
            .iter()
            .find(|r| r.name == s.name)
            .and_then(|r| match &r.kind {
                Kind::Uring {
                    filename,
                    direct,
                    is_direct,
                    ..
                } => Some(json!({"filename": filename, "direct": direct, "is_direct": is_direct})),
                Kind::Inject { base } => Some(json!({ "base_bdev": base })),
                Kind::Malloc { .. } | Kind::Null { .. } => None,
            });
        BdevDescription {
            size_bytes: s.num_blocks * s.block_size as u64,
            name: s.name,
            module: s.module.to_string(),
            uuid: s.uuid,
            block_size: s.block_size,
            num_blocks: s.num_blocks,
            io_types: io_type_names(s.io_types),
            claimed_by: s.claimed_by,
            holders: s.holders,
            driver,
        }
    }

    fn list(&self) -> Vec<BdevDescription> {
        let st = self.lock();
        self.ctx
            .bdevs()
            .list()
            .into_iter()
            .map(|s| self.describe(&st, s))
            .collect()
    }

    fn get(&self, name: &str) -> Result<BdevDescription, RpcError> {
        let st = self.lock();
        let s = self
            .ctx
            .bdevs()
            .list()
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        Ok(self.describe(&st, s))
    }

    fn iostat(&self, p: Iostat) -> Result<Vec<BdevIostat>, RpcError> {
        let names: Vec<String> = match p.name {
            Some(n) => {
                if self.ctx.bdevs().get(&n).is_none() {
                    return Err(BdevError::NotFound(n).into());
                }
                vec![n]
            }
            None => self
                .ctx
                .bdevs()
                .list()
                .into_iter()
                .map(|s| s.name)
                .collect(),
        };
        Ok(names
            .into_iter()
            .filter_map(|n| {
                let b = self.ctx.bdevs().get(&n)?;
                let s = b.info().io_stats();
                Some(BdevIostat {
                    name: n,
                    read: kind_iostat(&s.read),
                    write: kind_iostat(&s.write),
                    other: kind_iostat(&s.other),
                })
            })
            .collect())
    }

    fn config_call(&self, r: &Record) -> Option<ConfigCall> {
        let uuid = Some(self.ctx.bdevs().get(&r.name)?.info().uuid());
        let name = r.name.clone();
        let (method, params) = match &r.kind {
            Kind::Malloc { size, block_size } => (
                "bdev_malloc_create",
                serde_json::to_value(MallocCreate {
                    name,
                    size: Size(*size),
                    block_size: *block_size,
                    uuid,
                }),
            ),
            Kind::Null { size, block_size } => (
                "bdev_null_create",
                serde_json::to_value(NullCreate {
                    name,
                    size: Size(*size),
                    block_size: *block_size,
                    uuid,
                }),
            ),
            Kind::Uring {
                filename,
                block_size,
                direct,
                ..
            } => (
                "bdev_uring_create",
                serde_json::to_value(UringCreate {
                    name,
                    filename: filename.clone(),
                    block_size: *block_size,
                    direct: *direct,
                    uuid,
                }),
            ),
            Kind::Inject { base } => (
                "bdev_inject_create",
                serde_json::to_value(InjectCreate {
                    name,
                    base_bdev: base.clone(),
                    uuid,
                }),
            ),
        };
        params.ok().map(|p| ConfigCall::new(method, p))
    }
}

impl Module for BdevModule {
    fn name(&self) -> &'static str {
        "bdev"
    }

    fn rank(&self) -> u32 {
        rank::BDEV
    }

    fn methods(&self) -> Vec<MethodInfo> {
        METHODS.to_vec()
    }

    fn handle(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "bdev_malloc_create" => to_result(&self.malloc_create(parse(params)?)?),
            "bdev_null_create" => to_result(&self.null_create(parse(params)?)?),
            "bdev_uring_create" => to_result(&self.uring_create(parse(params)?)?),
            "bdev_inject_create" => to_result(&self.inject_create(parse(params)?)?),
            "bdev_inject_set" => self.inject_set(parse(params)?),
            "bdev_delete" => self.delete(parse(params)?),
            "bdev_list" => {
                let _: NoParams = parse(params)?;
                to_result(&self.list())
            }
            "bdev_get" => {
                let p: Get = parse(params)?;
                to_result(&self.get(&p.name)?)
            }
            "bdev_iostat" => to_result(&self.iostat(parse(params)?)?),
            _ => Err(RpcError::internal(format!("bdev: no method {method}"))),
        }
    }

    fn validate(&self, method: &str, params: &Value) -> Result<(), RpcError> {
        let params = params.clone();
        match method {
            "bdev_malloc_create" => {
                let p: MallocCreate = parse(params)?;
                check_size(&p.name, p.size, p.block_size)
            }
            "bdev_null_create" => {
                let p: NullCreate = parse(params)?;
                check_size(&p.name, p.size, p.block_size)
            }
            "bdev_uring_create" => {
                let p: UringCreate = parse(params)?;
                p.block_size.map_or(Ok(()), check_block_size)
            }
            "bdev_inject_create" => parse::<InjectCreate>(params).map(drop),
            "bdev_inject_set" => parse::<InjectSet>(params).map(drop),
            "bdev_delete" => parse::<Delete>(params).map(drop),
            "bdev_get" => parse::<Get>(params).map(drop),
            "bdev_iostat" => parse::<Iostat>(params).map(drop),
            "bdev_list" => parse::<NoParams>(params).map(drop),
            _ => Err(RpcError::internal(format!("bdev: no method {method}"))),
        }
    }

    fn undo(&self, call: &ConfigCall) -> Result<(), RpcError> {
        match call.method.as_str() {
            "bdev_malloc_create" | "bdev_null_create" | "bdev_uring_create"
            | "bdev_inject_create" => {
                let name = call
                    .params
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| RpcError::internal("no name to undo"))?;
                let mut st = self.lock();
                self.delete_locked(&mut st, name, false)
            }
            // Deleting and fault settings are not undone.
            other => Err(RpcError::internal(format!("bdev: cannot undo {other}"))),
        }
    }

    fn save_config(&self) -> Vec<ConfigCall> {
        let st = self.lock();
        st.records
            .iter()
            .filter_map(|r| self.config_call(r))
            .collect()
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(crate::metrics::BdevCollector::new(
            self.ctx.bdevs().clone(),
        )));
    }

    fn shutdown(&self, deadline: Instant) {
        // Flush what the page cache holds for files opened without O_DIRECT (and the
        // device's cache for those with it), so that acknowledged writes survive a crash
        // after exit.
        let files: Vec<String> = self
            .lock()
            .records
            .iter()
            .filter_map(|r| match &r.kind {
                Kind::Uring { filename, .. } => Some(filename.clone()),
                _ => None,
            })
            .collect();
        for f in files {
            if Instant::now() >= deadline {
                tracing::warn!(file = %f, "shutdown deadline passed; not flushing");
                continue;
            }
            if let Err(e) = std::fs::File::open(&f).and_then(|file| file.sync_all()) {
                tracing::warn!(file = %f, error = %e, "cannot flush");
            }
        }
    }
}
