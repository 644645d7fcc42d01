//! `gyrectl nvmf ...`: the NVMe-oF target's subsystems, namespaces, listeners, hosts and ANA.

use clap::Subcommand;
use gyre_api::nvmf::{
    AddNamespace, AllowAnyHost, CreateSubsystem, DisconnectController, GetControllers, Host,
    Listener, RemoveNamespace, SetAnaState, SubsystemRef,
};
use gyre_api::ClientError;
use serde::Serialize;
use serde_json::Value;

use crate::output::{done, field, table, Output};
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Subsystems: create, delete, list.
    #[command(subcommand)]
    Subsystem(Subsystem),
    /// Namespaces of a subsystem: add a bdev, remove.
    #[command(subcommand)]
    Ns(Namespace),
    /// Listeners of a subsystem (address:port; port 0 picks one).
    #[command(subcommand)]
    Listener(ListenerCmd),
    /// Host NQNs allowed to connect to a subsystem.
    #[command(subcommand)]
    Host(HostCmd),
    /// Connected controllers (host associations): list, disconnect.
    #[command(subcommand)]
    Controller(ControllerCmd),
    /// Set the ANA state of a listener (all groups, or one) for multipath hosts.
    Ana {
        nqn: String,
        /// The listener, e.g. 127.0.0.1:4420.
        #[arg(long)]
        address: String,
        /// optimized, non_optimized, inaccessible, persistent_loss, change.
        #[arg(long)]
        state: String,
        /// One ANA group (default: every group of the subsystem).
        #[arg(long, default_value_t = 0)]
        group: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum Subsystem {
    /// Create a subsystem.
    Create {
        nqn: String,
        /// Let any host connect (otherwise only hosts added with `nvmf host add`).
        #[arg(long)]
        allow_any_host: bool,
        /// Up to 20 ASCII characters (default: derived from the NQN).
        #[arg(long, default_value = "")]
        serial: String,
        #[arg(long)]
        model: Option<String>,
        /// Allowed host NQN (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        #[arg(long, default_value_t = 32)]
        max_namespaces: u32,
    },
    /// Delete a subsystem (its controllers are disconnected).
    Delete { nqn: String },
    /// List subsystems with their namespaces, listeners and controllers.
    List,
}

#[derive(Subcommand, Debug)]
pub enum Namespace {
    /// Export a bdev as a namespace.
    Add {
        nqn: String,
        /// The bdev to export.
        #[arg(long)]
        bdev: String,
        /// NSID (default: the lowest free one).
        #[arg(long, default_value_t = 0)]
        nsid: u32,
        /// ANA group (default: the NSID).
        #[arg(long, default_value_t = 0)]
        ana_group: u32,
        /// Namespace UUID (default: the bdev's).
        #[arg(long)]
        uuid: Option<String>,
    },
    /// Remove a namespace (hosts are told through an asynchronous event).
    Remove {
        nqn: String,
        #[arg(long)]
        nsid: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum ListenerCmd {
    Add { nqn: String, address: String },
    Remove { nqn: String, address: String },
}

#[derive(Subcommand, Debug)]
pub enum ControllerCmd {
    /// List controllers of one subsystem, or of all.
    List { nqn: Option<String> },
    /// End a controller's association (its queues close; the host may reconnect).
    Disconnect {
        nqn: String,
        #[arg(long)]
        cntlid: u16,
    },
}

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Allow a host NQN.
    Add { nqn: String, host: String },
    /// Disallow a host NQN.
    Remove { nqn: String, host: String },
    /// Let any host connect, or only the allowed ones.
    AllowAny {
        nqn: String,
        #[arg(long, action = clap::ArgAction::Set, default_value_t = true)]
        allow: bool,
    },
}

fn call<P: Serialize>(ctx: &mut Ctx, method: &str, p: &P) -> Result<Value, ClientError> {
    let params = serde_json::to_value(p).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    ctx.call(method, Some(params))
}

pub fn run(cmd: Command, ctx: &mut Ctx) -> Result<Output, ClientError> {
    Ok(match cmd {
        Command::Subsystem(Subsystem::Create {
            nqn,
            allow_any_host,
            serial,
            model,
            hosts,
            max_namespaces,
        }) => {
            let p = CreateSubsystem {
                nqn,
                serial_number: serial,
                model_number: model.clone().unwrap_or_default(),
                allow_any_host,
                hosts,
                max_namespaces,
            };
            let mut params =
                serde_json::to_value(&p).map_err(|e| ClientError::BadResponse(e.to_string()))?;
            if model.is_none() {
                // Leave the model to gyred's default.
                if let Some(o) = params.as_object_mut() {
                    o.remove("model_number");
                }
            }
            Output::new(ctx.call("nvmf_create_subsystem", Some(params))?, |v| {
                format!("created subsystem {}", field(v, "nqn"))
            })
        }
        Command::Subsystem(Subsystem::Delete { nqn }) => Output::new(
            call(ctx, "nvmf_delete_subsystem", &SubsystemRef { nqn })?,
            done,
        ),
        Command::Subsystem(Subsystem::List) => {
            Output::new(ctx.call("nvmf_get_subsystems", None)?, subsystems_table)
        }
        Command::Ns(Namespace::Add {
            nqn,
            bdev,
            nsid,
            ana_group,
            uuid,
        }) => Output::new(
            call(
                ctx,
                "nvmf_subsystem_add_ns",
                &AddNamespace {
                    nqn,
                    bdev_name: bdev,
                    nsid,
                    ana_group,
                    uuid,
                    nguid: None,
                    eui64: None,
                },
            )?,
            |v| format!("added namespace {}", field(v, "nsid")),
        ),
        Command::Ns(Namespace::Remove { nqn, nsid }) => Output::new(
            call(
                ctx,
                "nvmf_subsystem_remove_ns",
                &RemoveNamespace { nqn, nsid },
            )?,
            done,
        ),
        Command::Listener(ListenerCmd::Add { nqn, address }) => Output::new(
            call(
                ctx,
                "nvmf_subsystem_add_listener",
                &Listener { nqn, address },
            )?,
            |v| format!("listening on {}", field(v, "address")),
        ),
        Command::Listener(ListenerCmd::Remove { nqn, address }) => Output::new(
            call(
                ctx,
                "nvmf_subsystem_remove_listener",
                &Listener { nqn, address },
            )?,
            done,
        ),
        Command::Host(HostCmd::Add { nqn, host }) => Output::new(
            call(ctx, "nvmf_subsystem_add_host", &Host { nqn, host })?,
            done,
        ),
        Command::Host(HostCmd::Remove { nqn, host }) => Output::new(
            call(ctx, "nvmf_subsystem_remove_host", &Host { nqn, host })?,
            done,
        ),
        Command::Host(HostCmd::AllowAny { nqn, allow }) => Output::new(
            call(
                ctx,
                "nvmf_subsystem_allow_any_host",
                &AllowAnyHost { nqn, allow },
            )?,
            done,
        ),
        Command::Controller(ControllerCmd::List { nqn }) => Output::new(
            call(ctx, "nvmf_get_controllers", &GetControllers { nqn })?,
            controllers_table,
        ),
        Command::Controller(ControllerCmd::Disconnect { nqn, cntlid }) => Output::new(
            call(
                ctx,
                "nvmf_disconnect_controller",
                &DisconnectController { nqn, cntlid },
            )?,
            done,
        ),
        Command::Ana {
            nqn,
            address,
            state,
            group,
        } => Output::new(
            call(
                ctx,
                "nvmf_subsystem_set_ana_state",
                &SetAnaState {
                    nqn,
                    address,
                    ana_group: group,
                    state,
                },
            )?,
            done,
        ),
    })
}

fn list_of(v: &Value, key: &str, f: impl Fn(&Value) -> String) -> String {
    let items: Vec<String> = v
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().map(f).collect())
        .unwrap_or_default();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

fn subsystems_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|subs| {
            subs.iter()
                .map(|s| {
                    vec![
                        field(s, "nqn"),
                        list_of(s, "namespaces", |n| {
                            format!("{}:{}", field(n, "nsid"), field(n, "bdev_name"))
                        }),
                        list_of(s, "listeners", |l| field(l, "address")),
                        if s.get("allow_any_host").and_then(Value::as_bool) == Some(true) {
                            "any".into()
                        } else {
                            list_of(s, "hosts", |h| h.as_str().unwrap_or("").to_string())
                        },
                        field(s, "controllers"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &["NQN", "NAMESPACES", "LISTENERS", "HOSTS", "CONTROLLERS"],
        &rows,
    )
}

fn controllers_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|list| {
            list.iter()
                .map(|c| {
                    vec![
                        field(c, "nqn"),
                        field(c, "cntlid"),
                        field(c, "hostnqn"),
                        field(c, "address"),
                        field(c, "io_queues"),
                        field(c, "kato_ms"),
                        field(c, "ready"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &[
            "NQN",
            "CNTLID",
            "HOST",
            "VIA",
            "IO_QUEUES",
            "KATO_MS",
            "READY",
        ],
        &rows,
    )
}
