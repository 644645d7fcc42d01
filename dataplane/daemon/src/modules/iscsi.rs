//! The `iscsi` module: the iSCSI target's portal groups, initiator groups, targets with their
//! LUNs, CHAP settings and sessions through JSON-RPC, their part of the saved configuration,
//! the connect hints and the connection-count metrics.

use std::net::SocketAddr;
use std::time::Instant;

use gyre_api::iscsi::{
    AddLun, Chap, CreateInitiatorGroup, CreatePortalGroup, CreateTarget, GroupRef,
    InitiatorGroupInfo, LunParams, PortalGroupInfo, Redirect, RemoveLun, SessionInfo, SessionRef,
    SetTargetChap, TargetInfo, TargetRef,
};
use gyre_api::{codes, ConfigCall};
use gyre_iscsi::target::{
    AuthConfig, InitiatorGroupConfig, IscsiTarget, IscsiTargetError, LunMapping, Network,
    PortalGroupConfig, TargetConfig, TargetOptions,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use serde_json::{json, Value};

use crate::context::DaemonContext;
use crate::daemon::DaemonError;
use crate::module::{parse, rank, to_result, MethodInfo, Module, ParamInfo, RpcError};

pub struct IscsiModule {
    target: IscsiTarget,
}

const TAG: ParamInfo = ParamInfo::required("tag", "integer", "group tag (1-65535)");
const NAME: ParamInfo = ParamInfo::required("name", "string", "target name (iqn.…)");

const METHODS: &[MethodInfo] = &[
    MethodInfo {
        name: "iscsi_create_portal_group",
        description: "Create a portal group and listen on its portals",
        params: &[
            TAG,
            ParamInfo::required("portals", "array", "addresses, e.g. [\"127.0.0.1:3260\"]"),
        ],
        mutates: true,
    },
    MethodInfo {
        name: "iscsi_delete_portal_group",
        description: "Delete a portal group no target uses",
        params: &[TAG],
        mutates: true,
    },
    MethodInfo {
        name: "iscsi_get_portal_groups",
        description: "List portal groups",
        params: &[],
        mutates: false,
    },
    MethodInfo {
        name: "iscsi_create_initiator_group",
        description: "Create an initiator group (initiator names and networks allowed)",
        params: &[
            TAG,
            ParamInfo::required("initiators", "array", "initiator names or ANY"),
            ParamInfo::optional(
                "networks",
                "array",
                "networks (10.0.0.0/8) or ANY (default)",
            ),
        ],
        mutates: true,
    },
    MethodInfo {
        name: "iscsi_delete_initiator_group",
        description: "Delete an initiator group no target uses",
        params: &[TAG],
        mutates: true,
    },
    MethodInfo {
        name: "iscsi_get_initiator_groups",
        description: "List initiator groups",
        params: &[],
        mutates: false,
    },
    MethodInfo {
        name: "iscsi_create_target",
        description: "Create a target exporting bdevs as LUNs",
        params: &[
            NAME,
            ParamInfo::optional("alias", "string", "TargetAlias"),
            ParamInfo::optional("luns", "array", "[{\"lun\":0,\"bdev_name\":\"malloc0\"}]"),
            ParamInfo::required("portal_groups", "array", "portal group tags"),
            ParamInfo::required("initiator_groups", "array", "initiator group tags"),
            ParamInfo::optional(
                "chap",
                "object",
                "require_chap, mutual_chap, user, secret, mutual_user, mutual_secret",
            ),
            ParamInfo::optional(
                "redirect",
                "object",
                "address (host:port[,tpgt]), permanent",
            ),
        ],
        mutates: true,
    },
    MethodInfo {
        name: "iscsi_delete_target",
        description: "Delete a target (its sessions are closed)",
        params: &[NAME],
        mutates: true,
    },
    MethodInfo {
        name: "iscsi_target_add_lun",
        description: "Export a bdev as a LUN of a target",
        params: &[
            NAME,
            ParamInfo::required("lun", "integer", "LUN number"),
            ParamInfo::required("bdev_name", "string", "bdev to export"),
        ],
        mutates: true,
    },
    MethodInfo {
        name: "iscsi_target_remove_lun",
        description: "Remove a LUN from a target",
        params: &[NAME, ParamInfo::required("lun", "integer", "LUN number")],
        mutates: true,
    },
    MethodInfo {
        name: "iscsi_target_set_chap",
        description: "Replace a target's CHAP settings (new logins)",
        params: &[NAME, ParamInfo::required("chap", "object", "CHAP settings")],
        mutates: true,
    },
    MethodInfo {
        name: "iscsi_set_discovery_auth",
        description: "CHAP settings of discovery sessions",
        params: &[
            ParamInfo::optional("require_chap", "bool", "CHAP required"),
            ParamInfo::optional("mutual_chap", "bool", "mutual CHAP required"),
            ParamInfo::optional("user", "string", "initiator's CHAP name"),
            ParamInfo::optional("secret", "string", "initiator's secret"),
            ParamInfo::optional("mutual_user", "string", "target's CHAP name"),
            ParamInfo::optional("mutual_secret", "string", "target's secret"),
        ],
        mutates: true,
    },
    MethodInfo {
        name: "iscsi_get_targets",
        description: "List targets with their LUNs",
        params: &[],
        mutates: false,
    },
    MethodInfo {
        name: "iscsi_disconnect_session",
        description: "Close a session's connection (the initiator may log in again)",
        params: &[ParamInfo::required("tsih", "integer", "the session's TSIH")],
        mutates: false,
    },
    MethodInfo {
        name: "iscsi_get_sessions",
        description: "List logged-in sessions",
        params: &[],
        mutates: false,
    },
];

fn err(e: IscsiTargetError) -> RpcError {
    let msg = e.to_string();
    match e {
        IscsiTargetError::PortalGroupNotFound(_)
        | IscsiTargetError::InitiatorGroupNotFound(_)
        | IscsiTargetError::TargetNotFound(_)
        | IscsiTargetError::SessionNotFound(_)
        | IscsiTargetError::LunNotFound(..) => RpcError::new(codes::NOT_FOUND, msg),
        IscsiTargetError::PortalGroupExists(_)
        | IscsiTargetError::InitiatorGroupExists(_)
        | IscsiTargetError::TargetExists(_)
        | IscsiTargetError::LunExists(..) => RpcError::new(codes::ALREADY_EXISTS, msg),
        IscsiTargetError::PortalGroupInUse(..) | IscsiTargetError::InitiatorGroupInUse(..) => {
            RpcError::new(codes::IN_USE, msg)
        }
        IscsiTargetError::InvalidConfig(_) => RpcError::new(codes::INVALID_PARAMS, msg),
        IscsiTargetError::Bdev(b) => RpcError::from(b),
        _ => RpcError::failed(msg),
    }
}

fn portals(list: &[String]) -> Result<Vec<SocketAddr>, RpcError> {
    list.iter()
        .map(|p| {
            p.parse::<SocketAddr>()
                .map_err(|e| RpcError::invalid_param("portals", format!("{p}: {e}")))
        })
        .collect()
}

fn networks(list: &[String]) -> Result<Vec<Network>, RpcError> {
    list.iter()
        .map(|n| Network::parse(n).map_err(|e| RpcError::invalid_param("networks", e)))
        .collect()
}

fn auth(c: &Chap) -> AuthConfig {
    AuthConfig {
        require_chap: c.require_chap,
        mutual_chap: c.mutual_chap,
        user: c.user.clone(),
        secret: c.secret.clone(),
        mutual_user: c.mutual_user.clone(),
        mutual_secret: c.mutual_secret.clone(),
    }
}

fn chap(a: &AuthConfig) -> Chap {
    Chap {
        require_chap: a.require_chap,
        mutual_chap: a.mutual_chap,
        user: a.user.clone(),
        secret: a.secret.clone(),
        mutual_user: a.mutual_user.clone(),
        mutual_secret: a.mutual_secret.clone(),
    }
}

fn target_config(p: CreateTarget) -> TargetConfig {
    let mut t = TargetConfig::new(&p.name);
    t.alias = p.alias;
    t.luns = p
        .luns
        .into_iter()
        .map(|l| LunMapping {
            lun: l.lun,
            bdev: l.bdev_name,
        })
        .collect();
    t.portal_groups = p.portal_groups;
    t.initiator_groups = p.initiator_groups;
    t.auth = p.chap.as_ref().map(auth).unwrap_or_default();
    t.redirect = p.redirect.map(|r| gyre_iscsi::target::Redirect {
        address: r.address,
        permanent: r.permanent,
    });
    t
}

fn call(method: &str, params: Value) -> ConfigCall {
    ConfigCall {
        method: method.to_string(),
        params,
    }
}

impl IscsiModule {
    pub fn new(ctx: &DaemonContext) -> Result<Self, DaemonError> {
        let target = IscsiTarget::start(
            ctx.reactors(),
            ctx.bdevs().clone(),
            TargetOptions::default(),
        )
        .map_err(|e| DaemonError::Config(RpcError::failed(format!("iSCSI target: {e}"))))?;
        Ok(IscsiModule { target })
    }

    pub fn target(&self) -> &IscsiTarget {
        &self.target
    }

    fn targets(&self) -> Vec<TargetInfo> {
        self.target
            .targets()
            .into_iter()
            .map(|t| TargetInfo {
                name: t.name,
                alias: t.alias,
                luns: t
                    .luns
                    .into_iter()
                    .map(|l| LunParams {
                        lun: l.lun,
                        bdev_name: l.bdev,
                    })
                    .collect(),
                portal_groups: t.portal_groups,
                initiator_groups: t.initiator_groups,
                require_chap: t.auth.require_chap,
                mutual_chap: t.auth.mutual_chap,
                redirect: t.redirect.map(|r| Redirect {
                    address: r.address,
                    permanent: r.permanent,
                }),
            })
            .collect()
    }
}

impl Module for IscsiModule {
    fn name(&self) -> &'static str {
        "iscsi"
    }

    fn rank(&self) -> u32 {
        rank::PROTOCOL
    }

    fn methods(&self) -> Vec<MethodInfo> {
        METHODS.to_vec()
    }

    fn handle(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let t = &self.target;
        match method {
            "iscsi_create_portal_group" => {
                let p: CreatePortalGroup = parse(params)?;
                let pg = t
                    .create_portal_group(PortalGroupConfig {
                        tag: p.tag,
                        portals: portals(&p.portals)?,
                    })
                    .map_err(err)?;
                let bound: Vec<String> = pg.portals.iter().map(|a| a.to_string()).collect();
                Ok(json!({ "tag": pg.tag, "portals": bound }))
            }
            "iscsi_delete_portal_group" => {
                let p: GroupRef = parse(params)?;
                t.delete_portal_group(p.tag).map_err(err)?;
                Ok(Value::Bool(true))
            }
            "iscsi_get_portal_groups" => {
                let list: Vec<PortalGroupInfo> = t
                    .portal_groups()
                    .into_iter()
                    .map(|g| PortalGroupInfo {
                        tag: g.tag,
                        portals: g.portals.iter().map(|a| a.to_string()).collect(),
                    })
                    .collect();
                to_result(&list)
            }
            "iscsi_create_initiator_group" => {
                let p: CreateInitiatorGroup = parse(params)?;
                t.create_initiator_group(InitiatorGroupConfig {
                    tag: p.tag,
                    initiators: p.initiators,
                    networks: networks(&p.networks)?,
                })
                .map_err(err)?;
                Ok(json!({ "tag": p.tag }))
            }
            "iscsi_delete_initiator_group" => {
                let p: GroupRef = parse(params)?;
                t.delete_initiator_group(p.tag).map_err(err)?;
                Ok(Value::Bool(true))
            }
            "iscsi_get_initiator_groups" => {
                let list: Vec<InitiatorGroupInfo> = t
                    .initiator_groups()
                    .into_iter()
                    .map(|g| InitiatorGroupInfo {
                        tag: g.tag,
                        initiators: g.initiators,
                        networks: g.networks.iter().map(|n| n.to_string()).collect(),
                    })
                    .collect();
                to_result(&list)
            }
            "iscsi_create_target" => {
                let p: CreateTarget = parse(params)?;
                let name = p.name.clone();
                t.create_target(target_config(p)).map_err(err)?;
                Ok(json!({ "name": name }))
            }
            "iscsi_delete_target" => {
                let p: TargetRef = parse(params)?;
                t.delete_target(&p.name).map_err(err)?;
                Ok(Value::Bool(true))
            }
            "iscsi_target_add_lun" => {
                let p: AddLun = parse(params)?;
                t.add_lun(
                    &p.name,
                    LunMapping {
                        lun: p.lun,
                        bdev: p.bdev_name,
                    },
                )
                .map_err(err)?;
                Ok(Value::Bool(true))
            }
            "iscsi_target_remove_lun" => {
                let p: RemoveLun = parse(params)?;
                t.remove_lun(&p.name, p.lun).map_err(err)?;
                Ok(Value::Bool(true))
            }
            "iscsi_target_set_chap" => {
                let p: SetTargetChap = parse(params)?;
                t.set_target_auth(&p.name, auth(&p.chap)).map_err(err)?;
                Ok(Value::Bool(true))
            }
            "iscsi_set_discovery_auth" => {
                let p: Chap = parse(params)?;
                t.set_discovery_auth(auth(&p)).map_err(err)?;
                Ok(Value::Bool(true))
            }
            "iscsi_get_targets" => to_result(&self.targets()),
            "iscsi_disconnect_session" => {
                let p: SessionRef = parse(params)?;
                t.disconnect_session(p.tsih).map_err(err)?;
                Ok(Value::Bool(true))
            }
            "iscsi_get_sessions" => {
                let list: Vec<SessionInfo> = t
                    .sessions()
                    .into_iter()
                    .map(|s| SessionInfo {
                        tsih: s.tsih,
                        initiator_name: s.initiator_name,
                        isid: s.isid.iter().map(|b| format!("{b:02x}")).collect(),
                        target_name: s.target_name,
                        discovery: s.discovery,
                        peer: s.peer.to_string(),
                        portal_group_tag: s.portal_group_tag,
                        reactor: s.reactor,
                        header_digest: s.header_digest,
                        data_digest: s.data_digest,
                    })
                    .collect();
                to_result(&list)
            }
            _ => Err(RpcError::new(
                codes::METHOD_NOT_FOUND,
                format!("iscsi has no method '{method}'"),
            )),
        }
    }

    fn validate(&self, method: &str, params: &Value) -> Result<(), RpcError> {
        let p = params.clone();
        match method {
            "iscsi_create_portal_group" => {
                let g = parse::<CreatePortalGroup>(p)?;
                portals(&g.portals).map(drop)
            }
            "iscsi_create_initiator_group" => {
                let g = parse::<CreateInitiatorGroup>(p)?;
                networks(&g.networks).map(drop)
            }
            "iscsi_create_target" => parse::<CreateTarget>(p).map(drop),
            "iscsi_target_add_lun" => parse::<AddLun>(p).map(drop),
            "iscsi_target_remove_lun" => parse::<RemoveLun>(p).map(drop),
            "iscsi_set_discovery_auth" => parse::<Chap>(p).map(drop),
            "iscsi_delete_portal_group" | "iscsi_delete_initiator_group" => {
                parse::<GroupRef>(p).map(drop)
            }
            "iscsi_delete_target" => parse::<TargetRef>(p).map(drop),
            _ => Ok(()),
        }
    }

    fn undo(&self, c: &ConfigCall) -> Result<(), RpcError> {
        let tag = c.params.get("tag").and_then(Value::as_u64).unwrap_or(0) as u16;
        let name = c
            .params
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match c.method.as_str() {
            "iscsi_create_portal_group" => self.target.delete_portal_group(tag).map_err(err),
            "iscsi_create_initiator_group" => self.target.delete_initiator_group(tag).map_err(err),
            "iscsi_create_target" => self.target.delete_target(name).map_err(err),
            "iscsi_target_add_lun" => {
                let lun = c.params.get("lun").and_then(Value::as_u64).unwrap_or(0) as u16;
                self.target.remove_lun(name, lun).map_err(err)
            }
            "iscsi_set_discovery_auth" => self
                .target
                .set_discovery_auth(AuthConfig::default())
                .map_err(err),
            _ => Err(RpcError::internal(format!(
                "iscsi cannot undo {}",
                c.method
            ))),
        }
    }

    fn object_name(&self, _method: &str, params: &Value) -> Option<String> {
        if let Some(n) = params.get("name").and_then(Value::as_str) {
            return Some(n.to_string());
        }
        params.get("tag").map(|t| format!("group {t}"))
    }

    fn save_config(&self) -> Vec<ConfigCall> {
        let t = &self.target;
        let mut calls = Vec::new();
        for g in t.portal_groups() {
            let portals: Vec<String> = g.portals.iter().map(|a| a.to_string()).collect();
            calls.push(call(
                "iscsi_create_portal_group",
                json!({ "tag": g.tag, "portals": portals }),
            ));
        }
        for g in t.initiator_groups() {
            let nets: Vec<String> = g.networks.iter().map(|n| n.to_string()).collect();
            calls.push(call(
                "iscsi_create_initiator_group",
                json!({ "tag": g.tag, "initiators": g.initiators, "networks": nets }),
            ));
        }
        for tc in t.targets() {
            let p = CreateTarget {
                name: tc.name.clone(),
                alias: tc.alias.clone(),
                luns: tc
                    .luns
                    .iter()
                    .map(|l| LunParams {
                        lun: l.lun,
                        bdev_name: l.bdev.clone(),
                    })
                    .collect(),
                portal_groups: tc.portal_groups.clone(),
                initiator_groups: tc.initiator_groups.clone(),
                chap: (tc.auth != AuthConfig::default()).then(|| chap(&tc.auth)),
                redirect: tc.redirect.as_ref().map(|r| Redirect {
                    address: r.address.clone(),
                    permanent: r.permanent,
                }),
            };
            calls.push(call(
                "iscsi_create_target",
                serde_json::to_value(&p).unwrap_or(Value::Null),
            ));
        }
        let d = t.discovery_auth();
        if d != AuthConfig::default() {
            calls.push(call(
                "iscsi_set_discovery_auth",
                serde_json::to_value(chap(&d)).unwrap_or(Value::Null),
            ));
        }
        calls
    }

    fn connect_hints(&self) -> Vec<String> {
        let pgs = self.target.portal_groups();
        let mut hints = Vec::new();
        for t in self.target.targets() {
            for tag in &t.portal_groups {
                let Some(pg) = pgs.iter().find(|g| g.tag == *tag) else {
                    continue;
                };
                for p in &pg.portals {
                    let lun = t.luns.first().map_or(0, |l| l.lun);
                    let name = &t.name;
                    hints.push(format!(
                        "iSCSI: target {name} on {p} — Linux host: iscsiadm -m discovery -t st -p {p}; \
                         iscsiadm -m node -T {name} -p {p} --login"
                    ));
                    hints.push(format!(
                        "iSCSI: libiscsi: iscsi-ls -s iscsi://{p}/ — load: gyre-perf run \
                         iscsi://{p}/{name}/{lun} --rw randread --bs 4k --qd 32 --time 10s"
                    ));
                }
            }
        }
        hints
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(IscsiCollector {
            target: self.target.clone(),
        }));
    }

    fn shutdown(&self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        self.target.shutdown(left);
    }
}

/// iSCSI connections per reactor and sessions per target, read at scrape time.
struct IscsiCollector {
    target: IscsiTarget,
}

impl std::fmt::Debug for IscsiCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IscsiCollector")
    }
}

impl Collector for IscsiCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut m = enc.encode_descriptor(
                "gyre_iscsi_connections",
                "iSCSI connections served, per reactor",
                None,
                MetricType::Gauge,
            )?;
            for (i, n) in self.target.connection_counts().iter().enumerate() {
                let labels = [("reactor", i.to_string())];
                ConstGauge::new(*n as i64).encode(m.encode_family(&labels)?)?;
            }
        }
        let sessions = self.target.sessions();
        let mut m = enc.encode_descriptor(
            "gyre_iscsi_sessions",
            "Logged-in iSCSI sessions, per target (discovery sessions under \"\")",
            None,
            MetricType::Gauge,
        )?;
        let mut names: Vec<String> = sessions
            .iter()
            .map(|s| s.target_name.clone().unwrap_or_default())
            .collect();
        names.sort();
        names.dedup();
        for n in names {
            let count = sessions
                .iter()
                .filter(|s| s.target_name.clone().unwrap_or_default() == n)
                .count();
            let labels = [("target", n)];
            ConstGauge::new(count as i64).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
