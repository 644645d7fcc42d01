//! `gyrectl bdev ...`

use clap::{Args, Subcommand};
use gyre_api::bdev::{
    Delete, Get, InjectCreate, InjectSet, Iostat, MallocCreate, NullCreate, UringCreate,
};
use gyre_api::{ClientError, Size};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::output::{bytes, done, field, table, Output};
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a bdev.
    #[command(subcommand)]
    Create(Create),
    /// List bdevs.
    List,
    /// Describe one bdev.
    Get { name: String },
    /// Delete a bdev (refused while in use, unless --force).
    Delete {
        name: String,
        /// Delete even if in use: holders' I/O fails; inject bdevs on it are deleted too.
        #[arg(long)]
        force: bool,
    },
    /// I/O statistics (ops, bytes, errors, mean latency) of one bdev or all.
    Iostat { name: Option<String> },
    /// Set what an inject bdev does from now on (no options: stop injecting).
    InjectSet(InjectSetArgs),
}

#[derive(Subcommand, Debug)]
pub enum Create {
    /// A RAM disk.
    Malloc(SizedArgs),
    /// Reads zeroes, drops writes.
    Null(SizedArgs),
    /// A file or block device through io_uring.
    Uring {
        #[arg(long)]
        name: String,
        /// File or block device.
        #[arg(long)]
        filename: String,
        /// 512 or 4096 (default: the device's, 4096 for a file).
        #[arg(long)]
        block_size: Option<u32>,
        /// Use the page cache instead of O_DIRECT.
        #[arg(long)]
        buffered: bool,
        #[arg(long)]
        uuid: Option<Uuid>,
    },
    /// A fault injector stacked on a base bdev.
    Inject {
        #[arg(long)]
        name: String,
        /// The bdev to stack on.
        #[arg(long)]
        base: String,
        #[arg(long)]
        uuid: Option<Uuid>,
    },
}

#[derive(Args, Debug)]
pub struct SizedArgs {
    #[arg(long)]
    name: String,
    /// Size: bytes, or with a unit (512M, 1G).
    #[arg(long)]
    size: Size,
    /// 512 or 4096.
    #[arg(long, default_value_t = 4096)]
    block_size: u32,
    #[arg(long)]
    uuid: Option<Uuid>,
}

#[derive(Args, Debug)]
pub struct InjectSetArgs {
    name: String,
    /// Ops to fail, comma-separated: read,write,flush,...
    #[arg(long, value_delimiter = ',')]
    fail_ops: Vec<String>,
    /// How many requests to fail.
    #[arg(long, default_value_t = 0)]
    fail_count: u64,
    /// errno reported for failed requests.
    #[arg(long, default_value_t = 5)]
    errno: i32,
    /// Flip a byte of this block in every read covering it.
    #[arg(long)]
    corrupt_lba: Option<u64>,
    /// Hold every completion back this many microseconds.
    #[arg(long, default_value_t = 0)]
    delay_us: u64,
}

fn call<P: Serialize>(ctx: &mut Ctx, method: &str, p: &P) -> Result<Value, ClientError> {
    let params = serde_json::to_value(p).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    ctx.call(method, Some(params))
}

pub fn run(cmd: Command, ctx: &mut Ctx) -> Result<Output, ClientError> {
    Ok(match cmd {
        Command::Create(c) => {
            let v = match c {
                Create::Malloc(a) => call(
                    ctx,
                    "bdev_malloc_create",
                    &MallocCreate {
                        name: a.name,
                        size: a.size,
                        block_size: a.block_size,
                        uuid: a.uuid,
                    },
                )?,
                Create::Null(a) => call(
                    ctx,
                    "bdev_null_create",
                    &NullCreate {
                        name: a.name,
                        size: a.size,
                        block_size: a.block_size,
                        uuid: a.uuid,
                    },
                )?,
                Create::Uring {
                    name,
                    filename,
                    block_size,
                    buffered,
                    uuid,
                } => call(
                    ctx,
                    "bdev_uring_create",
                    &UringCreate {
                        name,
                        filename,
                        block_size,
                        direct: !buffered,
                        uuid,
                    },
                )?,
                Create::Inject { name, base, uuid } => call(
                    ctx,
                    "bdev_inject_create",
                    &InjectCreate {
                        name,
                        base_bdev: base,
                        uuid,
                    },
                )?,
            };
            Output::new(v, |v| {
                format!(
                    "created bdev {} (uuid {})",
                    field(v, "name"),
                    field(v, "uuid")
                )
            })
        }
        Command::List => Output::new(ctx.call("bdev_list", None)?, list_table),
        Command::Get { name } => Output::new(call(ctx, "bdev_get", &Get { name })?, describe),
        Command::Delete { name, force } => {
            Output::new(call(ctx, "bdev_delete", &Delete { name, force })?, done)
        }
        Command::Iostat { name } => {
            Output::new(call(ctx, "bdev_iostat", &Iostat { name })?, iostat_table)
        }
        Command::InjectSet(a) => Output::new(
            call(
                ctx,
                "bdev_inject_set",
                &InjectSet {
                    name: a.name,
                    fail_ops: a.fail_ops,
                    fail_count: a.fail_count,
                    errno: a.errno,
                    corrupt_lba: a.corrupt_lba,
                    delay_us: a.delay_us,
                },
            )?,
            done,
        ),
    })
}

fn size_of(b: &Value) -> String {
    b.get("size_bytes")
        .and_then(Value::as_u64)
        .map(bytes)
        .unwrap_or_else(|| "-".into())
}

fn list_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    vec![
                        field(b, "name"),
                        field(b, "module"),
                        size_of(b),
                        field(b, "block_size"),
                        field(b, "uuid"),
                        field(b, "holders"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        return "no bdevs\n".into();
    }
    table(
        &["NAME", "MODULE", "SIZE", "BLOCK", "UUID", "HELD BY"],
        &rows,
    )
}

fn describe(b: &Value) -> String {
    let mut rows = vec![
        vec!["name".into(), field(b, "name")],
        vec!["module".into(), field(b, "module")],
        vec!["uuid".into(), field(b, "uuid")],
        vec![
            "size".into(),
            format!(
                "{} ({} blocks of {} bytes)",
                size_of(b),
                field(b, "num_blocks"),
                field(b, "block_size")
            ),
        ],
        vec!["io types".into(), field(b, "io_types")],
        vec!["claimed by".into(), field(b, "claimed_by")],
        vec!["held by".into(), field(b, "holders")],
    ];
    if let Some(Value::Object(d)) = b.get("driver") {
        for (k, v) in d {
            let v = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            rows.push(vec![k.replace('_', " "), v]);
        }
    }
    table(&["FIELD", "VALUE"], &rows)
}

fn iostat_table(v: &Value) -> String {
    let mut rows = Vec::new();
    for b in v.as_array().into_iter().flatten() {
        for kind in ["read", "write", "other"] {
            let Some(k) = b.get(kind) else { continue };
            let n = |key: &str| k.get(key).and_then(Value::as_u64).unwrap_or(0);
            rows.push(vec![
                field(b, "name"),
                kind.to_string(),
                n("ops").to_string(),
                bytes(n("bytes")),
                n("errors").to_string(),
                format!("{:.1}", n("mean_latency_ns") as f64 / 1000.0),
            ]);
        }
    }
    if rows.is_empty() {
        return "no bdevs\n".into();
    }
    table(
        &["BDEV", "OP", "OPS", "BYTES", "ERRORS", "MEAN LAT (us)"],
        &rows,
    )
}
