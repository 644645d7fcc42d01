//! `gyrectl iscsi ...`: the iSCSI target's portal groups, initiator groups, targets, LUNs,
//! CHAP secrets and sessions.

use clap::{Args, Subcommand};
use gyre_api::iscsi::{
    AddLun, Chap, CreateInitiatorGroup, CreatePortalGroup, CreateTarget, GroupRef, LunParams,
    RemoveLun, SessionRef, SetTargetChap, TargetRef,
};
use gyre_api::ClientError;
use serde::Serialize;
use serde_json::Value;

use crate::output::{done, field, table, Output};
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Portal groups: the addresses targets are reached through.
    #[command(subcommand)]
    PortalGroup(PortalGroup),
    /// Initiator groups: who may log in, from which networks.
    #[command(subcommand)]
    InitiatorGroup(InitiatorGroup),
    /// Targets: create, delete, list, LUNs, CHAP.
    #[command(subcommand)]
    Target(Target),
    /// CHAP settings for discovery sessions.
    DiscoveryAuth(ChapArgs),
    /// Logged-in sessions.
    Sessions,
    /// Close a session's connection (the initiator may log in again).
    Disconnect { tsih: u16 },
}

#[derive(Subcommand, Debug)]
pub enum PortalGroup {
    /// Create a portal group; `--portal 127.0.0.1:3260` (repeatable, port 0 picks one).
    Create {
        tag: u16,
        #[arg(long = "portal", required = true)]
        portals: Vec<String>,
    },
    Delete {
        tag: u16,
    },
    List,
}

#[derive(Subcommand, Debug)]
pub enum InitiatorGroup {
    /// Create an initiator group: initiator names (or ANY) and networks (default ANY).
    Create {
        tag: u16,
        #[arg(long = "initiator", required = true)]
        initiators: Vec<String>,
        #[arg(long = "network")]
        networks: Vec<String>,
    },
    Delete {
        tag: u16,
    },
    List,
}

#[derive(Subcommand, Debug)]
pub enum Target {
    /// Create a target: `--lun 0:BDEV` (repeatable), portal and initiator groups by tag.
    Create {
        name: String,
        #[arg(long)]
        alias: Option<String>,
        /// LUN:BDEV, e.g. 0:malloc0.
        #[arg(long = "lun", value_parser = parse_lun)]
        luns: Vec<LunParams>,
        #[arg(long = "portal-group", required = true)]
        portal_groups: Vec<u16>,
        #[arg(long = "initiator-group", required = true)]
        initiator_groups: Vec<u16>,
        #[command(flatten)]
        chap: ChapArgs,
    },
    Delete {
        name: String,
    },
    List,
    /// Map a bdev as a LUN of a target.
    AddLun {
        name: String,
        #[arg(long)]
        lun: u16,
        #[arg(long)]
        bdev: String,
    },
    RemoveLun {
        name: String,
        #[arg(long)]
        lun: u16,
    },
    /// Replace a target's CHAP settings (for new logins).
    SetChap {
        name: String,
        #[command(flatten)]
        chap: ChapArgs,
    },
}

#[derive(Args, Debug)]
pub struct ChapArgs {
    /// Require CHAP.
    #[arg(long)]
    require_chap: bool,
    /// Require mutual CHAP (the target proves itself too).
    #[arg(long)]
    mutual_chap: bool,
    /// The initiator's CHAP name.
    #[arg(long = "chap-user", default_value = "")]
    user: String,
    /// The initiator's CHAP secret.
    #[arg(long = "chap-secret", default_value = "")]
    secret: String,
    /// The target's CHAP name (mutual CHAP).
    #[arg(long = "mutual-user", default_value = "")]
    mutual_user: String,
    /// The target's CHAP secret (mutual CHAP).
    #[arg(long = "mutual-secret", default_value = "")]
    mutual_secret: String,
}

impl ChapArgs {
    fn chap(self) -> Chap {
        Chap {
            require_chap: self.require_chap,
            mutual_chap: self.mutual_chap,
            user: self.user,
            secret: self.secret,
            mutual_user: self.mutual_user,
            mutual_secret: self.mutual_secret,
        }
    }

    fn is_set(&self) -> bool {
        self.require_chap || self.mutual_chap || !self.user.is_empty() || !self.secret.is_empty()
    }
}

fn parse_lun(s: &str) -> Result<LunParams, String> {
    let (lun, bdev) = s
        .split_once(':')
        .ok_or_else(|| format!("'{s}': expected LUN:BDEV, e.g. 0:malloc0"))?;
    let lun = lun
        .parse::<u16>()
        .map_err(|_| format!("'{lun}': a LUN is a number 0..=65535"))?;
    if bdev.is_empty() {
        return Err(format!("'{s}': the bdev name is missing"));
    }
    Ok(LunParams {
        lun,
        bdev_name: bdev.to_string(),
    })
}

fn call<P: Serialize>(ctx: &mut Ctx, method: &str, p: &P) -> Result<Value, ClientError> {
    let params = serde_json::to_value(p).map_err(|e| ClientError::BadResponse(e.to_string()))?;
    ctx.call(method, Some(params))
}

pub fn run(cmd: Command, ctx: &mut Ctx) -> Result<Output, ClientError> {
    Ok(match cmd {
        Command::PortalGroup(PortalGroup::Create { tag, portals }) => Output::new(
            call(
                ctx,
                "iscsi_create_portal_group",
                &CreatePortalGroup { tag, portals },
            )?,
            |v| format!("created portal group {}", crate::output::pretty(v)),
        ),
        Command::PortalGroup(PortalGroup::Delete { tag }) => Output::new(
            call(ctx, "iscsi_delete_portal_group", &GroupRef { tag })?,
            done,
        ),
        Command::PortalGroup(PortalGroup::List) => Output::new(
            ctx.call("iscsi_get_portal_groups", None)?,
            portal_groups_table,
        ),
        Command::InitiatorGroup(InitiatorGroup::Create {
            tag,
            initiators,
            networks,
        }) => {
            let networks = if networks.is_empty() {
                vec!["ANY".to_string()]
            } else {
                networks
            };
            Output::new(
                call(
                    ctx,
                    "iscsi_create_initiator_group",
                    &CreateInitiatorGroup {
                        tag,
                        initiators,
                        networks,
                    },
                )?,
                done,
            )
        }
        Command::InitiatorGroup(InitiatorGroup::Delete { tag }) => Output::new(
            call(ctx, "iscsi_delete_initiator_group", &GroupRef { tag })?,
            done,
        ),
        Command::InitiatorGroup(InitiatorGroup::List) => Output::new(
            ctx.call("iscsi_get_initiator_groups", None)?,
            initiator_groups_table,
        ),
        Command::Target(Target::Create {
            name,
            alias,
            luns,
            portal_groups,
            initiator_groups,
            chap,
        }) => {
            let chap = chap.is_set().then(|| chap.chap());
            Output::new(
                call(
                    ctx,
                    "iscsi_create_target",
                    &CreateTarget {
                        name: name.clone(),
                        alias,
                        luns,
                        portal_groups,
                        initiator_groups,
                        chap,
                        redirect: None,
                    },
                )?,
                done,
            )
        }
        Command::Target(Target::Delete { name }) => {
            Output::new(call(ctx, "iscsi_delete_target", &TargetRef { name })?, done)
        }
        Command::Target(Target::List) => {
            Output::new(ctx.call("iscsi_get_targets", None)?, targets_table)
        }
        Command::Target(Target::AddLun { name, lun, bdev }) => Output::new(
            call(
                ctx,
                "iscsi_target_add_lun",
                &AddLun {
                    name,
                    lun,
                    bdev_name: bdev,
                },
            )?,
            done,
        ),
        Command::Target(Target::RemoveLun { name, lun }) => Output::new(
            call(ctx, "iscsi_target_remove_lun", &RemoveLun { name, lun })?,
            done,
        ),
        Command::Target(Target::SetChap { name, chap }) => Output::new(
            call(
                ctx,
                "iscsi_target_set_chap",
                &SetTargetChap {
                    name,
                    chap: chap.chap(),
                },
            )?,
            done,
        ),
        Command::DiscoveryAuth(chap) => {
            Output::new(call(ctx, "iscsi_set_discovery_auth", &chap.chap())?, done)
        }
        Command::Sessions => Output::new(ctx.call("iscsi_get_sessions", None)?, sessions_table),
        Command::Disconnect { tsih } => Output::new(
            call(ctx, "iscsi_disconnect_session", &SessionRef { tsih })?,
            done,
        ),
    })
}

fn joined(v: &Value, key: &str) -> String {
    let items: Vec<String> = v
        .get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

fn rows(v: &Value, f: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    v.as_array()
        .map(|a| a.iter().map(f).collect())
        .unwrap_or_default()
}

fn portal_groups_table(v: &Value) -> String {
    table(
        &["TAG", "PORTALS"],
        &rows(v, |g| vec![field(g, "tag"), joined(g, "portals")]),
    )
}

fn initiator_groups_table(v: &Value) -> String {
    table(
        &["TAG", "INITIATORS", "NETWORKS"],
        &rows(v, |g| {
            vec![
                field(g, "tag"),
                joined(g, "initiators"),
                joined(g, "networks"),
            ]
        }),
    )
}

fn targets_table(v: &Value) -> String {
    table(
        &["NAME", "LUNS", "PORTAL_GROUPS", "INITIATOR_GROUPS", "CHAP"],
        &rows(v, |t| {
            let luns: Vec<String> = t
                .get("luns")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|l| format!("{}:{}", field(l, "lun"), field(l, "bdev_name")))
                        .collect()
                })
                .unwrap_or_default();
            let chap = match (
                t.get("require_chap").and_then(Value::as_bool),
                t.get("mutual_chap").and_then(Value::as_bool),
            ) {
                (_, Some(true)) => "mutual",
                (Some(true), _) => "required",
                _ => "none",
            };
            vec![
                field(t, "name"),
                if luns.is_empty() {
                    "-".into()
                } else {
                    luns.join(", ")
                },
                joined(t, "portal_groups"),
                joined(t, "initiator_groups"),
                chap.to_string(),
            ]
        }),
    )
}

fn sessions_table(v: &Value) -> String {
    table(
        &[
            "TSIH",
            "INITIATOR",
            "ISID",
            "TARGET",
            "PEER",
            "TPGT",
            "REACTOR",
            "DIGESTS",
        ],
        &rows(v, |s| {
            let digests = match (
                s.get("header_digest").and_then(Value::as_bool),
                s.get("data_digest").and_then(Value::as_bool),
            ) {
                (Some(true), Some(true)) => "header+data",
                (Some(true), _) => "header",
                (_, Some(true)) => "data",
                _ => "none",
            };
            vec![
                field(s, "tsih"),
                field(s, "initiator_name"),
                field(s, "isid"),
                if s.get("discovery").and_then(Value::as_bool) == Some(true) {
                    "(discovery)".into()
                } else {
                    field(s, "target_name")
                },
                field(s, "peer"),
                field(s, "portal_group_tag"),
                field(s, "reactor"),
                digests.to_string(),
            ]
        }),
    )
}
