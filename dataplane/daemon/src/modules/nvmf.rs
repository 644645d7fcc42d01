//! The `nvmf` module: the NVMe-oF/TCP target's subsystems, namespaces, listeners, allowed
//! hosts and ANA states through JSON-RPC, and their part of the saved configuration.

use std::time::Instant;

use gyre_api::nvmf::{
    AddNamespace, AllowAnyHost, ControllerInfo, CreateSubsystem, DisconnectController,
    GetControllers, Host, Listener, ListenerInfo, NamespaceInfo, RemoveNamespace, SetAnaState,
    SubsystemInfo, SubsystemRef,
};
use gyre_api::{codes, ConfigCall};
use gyre_nvmf::{
    AnaState, ListenAddress, NamespaceConfig, NvmfError, NvmfTarget, SubsystemConfig,
    TransportOptions,
};
use serde_json::{json, Value};

use crate::context::DaemonContext;
use crate::module::{parse, rank, to_result, MethodInfo, Module, ParamInfo, RpcError};

pub struct NvmfModule {
    target: NvmfTarget,
}

const NQN: ParamInfo = ParamInfo::required("nqn", "string", "subsystem NQN");
const ADDRESS: ParamInfo = ParamInfo::required(
    "address",
    "string",
    "listen address, e.g. 127.0.0.1:4420 or [::1]:4420",
);

const METHODS: &[MethodInfo] = &[
    MethodInfo {
        name: "nvmf_create_subsystem",
        description: "Create an NVM subsystem",
        params: &[
            NQN,
            ParamInfo::optional("serial_number", "string", "up to 20 ASCII characters"),
            ParamInfo::optional("model_number", "string", "up to 40 ASCII characters"),
            ParamInfo::optional(
                "allow_any_host",
                "bool",
                "any host may connect (default false)",
            ),
            ParamInfo::optional("hosts", "array", "host NQNs allowed to connect"),
            ParamInfo::optional("max_namespaces", "integer", "highest NSID (default 32)"),
        ],
        mutates: true,
    },
    MethodInfo {
        name: "nvmf_delete_subsystem",
        description: "Delete a subsystem (its controllers are disconnected)",
        params: &[NQN],
        mutates: true,
    },
    MethodInfo {
        name: "nvmf_get_controllers",
        description: "List connected controllers (host associations) of one subsystem or all",
        params: &[ParamInfo::optional("nqn", "string", "subsystem NQN")],
        mutates: false,
    },
    MethodInfo {
        name: "nvmf_disconnect_controller",
        description: "End a controller's association: all its queues close, the host may reconnect",
        params: &[
            NQN,
            ParamInfo::required("cntlid", "integer", "controller ID"),
        ],
        mutates: false,
    },
    MethodInfo {
        name: "nvmf_get_subsystems",
        description: "List subsystems with their namespaces, listeners and hosts",
        params: &[],
        mutates: false,
    },
    MethodInfo {
        name: "nvmf_subsystem_add_ns",
        description: "Export a bdev as a namespace (hosts get an AEN)",
        params: &[
            NQN,
            ParamInfo::required("bdev_name", "string", "bdev to export"),
            ParamInfo::optional("nsid", "integer", "NSID (default: lowest free)"),
            ParamInfo::optional("ana_group", "integer", "ANA group (default: the NSID)"),
            ParamInfo::optional("uuid", "string", "namespace UUID (default: the bdev's)"),
            ParamInfo::optional("nguid", "string", "32 hex digits"),
            ParamInfo::optional("eui64", "string", "16 hex digits"),
        ],
        mutates: true,
    },
    MethodInfo {
        name: "nvmf_subsystem_remove_ns",
        description: "Remove a namespace (hosts get an AEN)",
        params: &[NQN, ParamInfo::required("nsid", "integer", "NSID")],
        mutates: true,
    },
    MethodInfo {
        name: "nvmf_subsystem_add_listener",
        description: "Make a subsystem reachable at an NVMe/TCP address",
        params: &[NQN, ADDRESS],
        mutates: true,
    },
    MethodInfo {
        name: "nvmf_subsystem_remove_listener",
        description: "Stop serving a subsystem at an address",
        params: &[NQN, ADDRESS],
        mutates: true,
    },
    MethodInfo {
        name: "nvmf_subsystem_add_host",
        description: "Allow a host NQN",
        params: &[NQN, ParamInfo::required("host", "string", "host NQN")],
        mutates: true,
    },
    MethodInfo {
        name: "nvmf_subsystem_remove_host",
        description: "Disallow a host NQN (its controllers are disconnected)",
        params: &[NQN, ParamInfo::required("host", "string", "host NQN")],
        mutates: true,
    },
    MethodInfo {
        name: "nvmf_subsystem_allow_any_host",
        description: "Let any host connect, or only the allowed ones",
        params: &[NQN, ParamInfo::required("allow", "bool", "allow any host")],
        mutates: true,
    },
    MethodInfo {
        name: "nvmf_subsystem_set_ana_state",
        description: "Set the ANA state of a group as seen through a listener",
        params: &[
            NQN,
            ADDRESS,
            ParamInfo::optional("ana_group", "integer", "group (default: all)"),
            ParamInfo::required(
                "state",
                "string",
                "optimized, non_optimized, inaccessible, persistent_loss, change",
            ),
        ],
        mutates: true,
    },
];

impl NvmfModule {
    pub fn new(ctx: &DaemonContext) -> Result<Self, NvmfError> {
        let target = NvmfTarget::start(
            ctx.reactors(),
            ctx.bdevs().clone(),
            TransportOptions::default(),
        )?;
        Ok(Self { target })
    }

    pub fn target(&self) -> &NvmfTarget {
        &self.target
    }

    fn subsystems(&self) -> Vec<SubsystemInfo> {
        self.target
            .subsystems()
            .iter()
            .map(|s| {
                let cfg = s.config();
                SubsystemInfo {
                    nqn: cfg.nqn,
                    serial_number: cfg.serial_number,
                    model_number: cfg.model_number,
                    allow_any_host: cfg.allow_any_host,
                    hosts: cfg.hosts,
                    max_namespaces: cfg.max_namespaces,
                    namespaces: s
                        .namespaces()
                        .iter()
                        .map(|n| NamespaceInfo {
                            nsid: n.nsid,
                            bdev_name: n.bdev_name.clone(),
                            ana_group: n.ana_group,
                            uuid: uuid::Uuid::from_bytes(n.uuid).to_string(),
                            nguid: hex(&n.nguid),
                            eui64: hex(&n.eui64),
                        })
                        .collect(),
                    listeners: s
                        .listeners()
                        .into_iter()
                        .map(|(a, l)| ListenerInfo {
                            address: a.0.to_string(),
                            ana_states: l
                                .states
                                .iter()
                                .filter(|(_, st)| **st != AnaState::Optimized)
                                .map(|(g, st)| (*g, st.name().to_string()))
                                .collect(),
                        })
                        .collect(),
                    controllers: s.controllers().len(),
                }
            })
            .collect()
    }

    fn add_ns(&self, p: AddNamespace) -> Result<Value, RpcError> {
        let mut cfg = NamespaceConfig::new(&p.bdev_name);
        cfg.nsid = p.nsid;
        cfg.ana_group = p.ana_group;
        cfg.uuid = p
            .uuid
            .as_deref()
            .map(|s| unhex::<16>("uuid", s))
            .transpose()?;
        cfg.nguid = p
            .nguid
            .as_deref()
            .map(|s| unhex::<16>("nguid", s))
            .transpose()?;
        cfg.eui64 = p
            .eui64
            .as_deref()
            .map(|s| unhex::<8>("eui64", s))
            .transpose()?;
        let nsid = self.target.add_namespace(&p.nqn, cfg).map_err(err)?;
        Ok(json!({ "nsid": nsid }))
    }
}

fn address(s: &str) -> Result<ListenAddress, RpcError> {
    s.parse::<ListenAddress>()
        .map_err(|e| RpcError::invalid_param("address", e))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex<const N: usize>(field: &str, s: &str) -> Result<[u8; N], RpcError> {
    let digits: String = s.chars().filter(|c| *c != '-').collect();
    if digits.len() != N * 2 {
        return Err(RpcError::invalid_param(
            field,
            format!("expected {} hex digits", N * 2),
        ));
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&digits[i * 2..i * 2 + 2], 16)
            .map_err(|_| RpcError::invalid_param(field, "not hexadecimal"))?;
    }
    Ok(out)
}

/// Maps target errors to JSON-RPC errors with the application codes.
fn err(e: NvmfError) -> RpcError {
    let msg = e.to_string();
    match e {
        NvmfError::SubsystemNotFound(_)
        | NvmfError::NamespaceNotFound { .. }
        | NvmfError::ListenerNotFound { .. }
        | NvmfError::HostNotFound { .. }
        | NvmfError::ControllerNotFound { .. } => RpcError::new(codes::NOT_FOUND, msg),
        NvmfError::SubsystemExists(_)
        | NvmfError::NsidInUse { .. }
        | NvmfError::ListenerExists { .. }
        | NvmfError::HostExists { .. } => RpcError::new(codes::ALREADY_EXISTS, msg),
        NvmfError::InvalidConfig(_) | NvmfError::NoFreeNsid(_) => {
            RpcError::new(codes::INVALID_PARAMS, msg)
        }
        NvmfError::Bdev(b) => RpcError::from(b),
        _ => RpcError::failed(msg),
    }
}

fn call(method: &str, params: Value) -> ConfigCall {
    ConfigCall {
        method: method.to_string(),
        params,
    }
}

impl Module for NvmfModule {
    fn name(&self) -> &'static str {
        "nvmf"
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
            "nvmf_create_subsystem" => {
                let p: CreateSubsystem = parse(params)?;
                let cfg = SubsystemConfig {
                    nqn: p.nqn.clone(),
                    serial_number: p.serial_number,
                    model_number: p.model_number,
                    allow_any_host: p.allow_any_host,
                    hosts: p.hosts,
                    max_namespaces: p.max_namespaces,
                };
                t.create_subsystem(cfg).map_err(err)?;
                Ok(json!({ "nqn": p.nqn }))
            }
            "nvmf_delete_subsystem" => {
                let p: SubsystemRef = parse(params)?;
                t.delete_subsystem(&p.nqn).map_err(err)?;
                Ok(Value::Bool(true))
            }
            "nvmf_get_subsystems" => to_result(&self.subsystems()),
            "nvmf_get_controllers" => {
                let p: GetControllers = parse(params)?;
                let list: Vec<ControllerInfo> = t
                    .controllers(p.nqn.as_deref())
                    .map_err(err)?
                    .into_iter()
                    .map(|c| ControllerInfo {
                        nqn: c.nqn,
                        cntlid: c.cntlid,
                        hostnqn: c.hostnqn,
                        hostid: uuid::Uuid::from_bytes(c.hostid).to_string(),
                        address: c.listener.0.to_string(),
                        kato_ms: c.kato_ms,
                        io_queues: c.io_queues,
                        ready: c.ready,
                    })
                    .collect();
                to_result(&list)
            }
            "nvmf_disconnect_controller" => {
                let p: DisconnectController = parse(params)?;
                t.disconnect_controller(&p.nqn, p.cntlid).map_err(err)?;
                Ok(Value::Bool(true))
            }
            "nvmf_subsystem_add_ns" => self.add_ns(parse(params)?),
            "nvmf_subsystem_remove_ns" => {
                let p: RemoveNamespace = parse(params)?;
                t.remove_namespace(&p.nqn, p.nsid).map_err(err)?;
                Ok(Value::Bool(true))
            }
            "nvmf_subsystem_add_listener" => {
                let p: Listener = parse(params)?;
                let bound = t.add_listener(&p.nqn, address(&p.address)?).map_err(err)?;
                Ok(json!({ "address": bound.0.to_string() }))
            }
            "nvmf_subsystem_remove_listener" => {
                let p: Listener = parse(params)?;
                t.remove_listener(&p.nqn, &address(&p.address)?)
                    .map_err(err)?;
                Ok(Value::Bool(true))
            }
            "nvmf_subsystem_add_host" => {
                let p: Host = parse(params)?;
                t.add_host(&p.nqn, &p.host).map_err(err)?;
                Ok(Value::Bool(true))
            }
            "nvmf_subsystem_remove_host" => {
                let p: Host = parse(params)?;
                t.remove_host(&p.nqn, &p.host).map_err(err)?;
                Ok(Value::Bool(true))
            }
            "nvmf_subsystem_allow_any_host" => {
                let p: AllowAnyHost = parse(params)?;
                t.set_allow_any_host(&p.nqn, p.allow).map_err(err)?;
                Ok(Value::Bool(true))
            }
            "nvmf_subsystem_set_ana_state" => {
                let p: SetAnaState = parse(params)?;
                let state = p
                    .state
                    .parse::<AnaState>()
                    .map_err(|e| RpcError::invalid_param("state", e))?;
                t.set_ana_state(&p.nqn, &address(&p.address)?, p.ana_group, state)
                    .map_err(err)?;
                Ok(Value::Bool(true))
            }
            _ => Err(RpcError::new(
                codes::METHOD_NOT_FOUND,
                format!("nvmf has no method '{method}'"),
            )),
        }
    }

    fn validate(&self, method: &str, params: &Value) -> Result<(), RpcError> {
        let p = params.clone();
        match method {
            "nvmf_create_subsystem" => parse::<CreateSubsystem>(p).map(drop),
            "nvmf_delete_subsystem" => parse::<SubsystemRef>(p).map(drop),
            "nvmf_subsystem_add_ns" => parse::<AddNamespace>(p).map(drop),
            "nvmf_subsystem_remove_ns" => parse::<RemoveNamespace>(p).map(drop),
            "nvmf_subsystem_add_listener" | "nvmf_subsystem_remove_listener" => {
                let l = parse::<Listener>(p)?;
                address(&l.address).map(drop)
            }
            "nvmf_subsystem_add_host" | "nvmf_subsystem_remove_host" => parse::<Host>(p).map(drop),
            "nvmf_subsystem_allow_any_host" => parse::<AllowAnyHost>(p).map(drop),
            "nvmf_subsystem_set_ana_state" => parse::<SetAnaState>(p).map(drop),
            _ => Ok(()),
        }
    }

    fn undo(&self, c: &ConfigCall) -> Result<(), RpcError> {
        let nqn = c
            .params
            .get("nqn")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match c.method.as_str() {
            // Deleting the subsystem undoes everything added to it.
            "nvmf_create_subsystem" => self.target.delete_subsystem(&nqn).map_err(err),
            _ if self.target.subsystem(&nqn).is_none() => Ok(()),
            "nvmf_subsystem_add_listener" => {
                let addr = c
                    .params
                    .get("address")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                self.target
                    .remove_listener(&nqn, &address(addr)?)
                    .map_err(err)
            }
            _ => Err(RpcError::internal(format!("nvmf cannot undo {}", c.method))),
        }
    }

    fn object_name(&self, _method: &str, params: &Value) -> Option<String> {
        params.get("nqn")?.as_str().map(str::to_string)
    }

    fn save_config(&self) -> Vec<ConfigCall> {
        let mut calls = Vec::new();
        for s in self.target.subsystems() {
            let cfg = s.config();
            calls.push(call(
                "nvmf_create_subsystem",
                json!({
                    "nqn": cfg.nqn,
                    "serial_number": cfg.serial_number,
                    "model_number": cfg.model_number,
                    "allow_any_host": cfg.allow_any_host,
                    "hosts": cfg.hosts,
                    "max_namespaces": cfg.max_namespaces,
                }),
            ));
            for n in s.namespaces() {
                calls.push(call(
                    "nvmf_subsystem_add_ns",
                    json!({
                        "nqn": s.nqn,
                        "bdev_name": n.bdev_name,
                        "nsid": n.nsid,
                        "ana_group": n.ana_group,
                        "uuid": hex(&n.uuid),
                        "nguid": hex(&n.nguid),
                        "eui64": hex(&n.eui64),
                    }),
                ));
            }
            for (addr, ana) in s.listeners() {
                let address = addr.0.to_string();
                calls.push(call(
                    "nvmf_subsystem_add_listener",
                    json!({ "nqn": s.nqn, "address": address }),
                ));
                for (group, state) in ana.states {
                    if state != AnaState::Optimized {
                        calls.push(call(
                            "nvmf_subsystem_set_ana_state",
                            json!({
                                "nqn": s.nqn,
                                "address": address,
                                "ana_group": group,
                                "state": state.name(),
                            }),
                        ));
                    }
                }
            }
        }
        calls
    }

    fn connect_hints(&self) -> Vec<String> {
        let mut hints = Vec::new();
        for s in self.target.subsystems() {
            for (addr, _) in s.listeners() {
                hints.push(format!(
                    "NVMe/TCP: subsystem {} on {} — Linux host: nvme connect -t tcp -a {} -s {} -n {}",
                    s.nqn,
                    addr.0,
                    addr.traddr(),
                    addr.trsvcid(),
                    s.nqn
                ));
                hints.push(format!(
                    "NVMe/TCP load test: gyre-perf run nvmf://{}/{} --rw randread --qd 32 --time 10s",
                    addr.0, s.nqn
                ));
            }
        }
        hints
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(NvmfCollector {
            target: self.target.clone(),
        }));
    }

    fn shutdown(&self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        self.target.shutdown(left);
    }
}

/// The target's connections per reactor, controllers per subsystem, and transport errors,
/// read at scrape time.
struct NvmfCollector {
    target: NvmfTarget,
}

impl std::fmt::Debug for NvmfCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NvmfCollector")
    }
}

impl prometheus_client::collector::Collector for NvmfCollector {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;

        let mut m = enc.encode_descriptor(
            "gyre_nvmf_connections",
            "NVMe/TCP connections served by each reactor",
            None,
            MetricType::Gauge,
        )?;
        for (reactor, n) in self.target.connection_counts().into_iter().enumerate() {
            let labels = [("reactor", reactor.to_string())];
            ConstGauge::new(n as i64).encode(m.encode_family(&labels)?)?;
        }
        let mut m = enc.encode_descriptor(
            "gyre_nvmf_controllers",
            "Controllers (host associations) of each subsystem",
            None,
            MetricType::Gauge,
        )?;
        for s in self.target.subsystems() {
            let n = self.target.controllers(Some(&s.nqn)).map_or(0, |c| c.len());
            let labels = [("subsystem", s.nqn.clone())];
            ConstGauge::new(n as i64).encode(m.encode_family(&labels)?)?;
        }
        let stats = self.target.transport_stats();
        let m = enc.encode_descriptor(
            "gyre_nvmf_connections_accepted",
            "NVMe/TCP connections accepted since start",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(stats.connections_accepted).encode(m)?;
        let mut m = enc.encode_descriptor(
            "gyre_nvmf_transport_errors",
            "NVMe/TCP errors: fatal (connection terminated) and data digest mismatches",
            None,
            MetricType::Counter,
        )?;
        for (kind, n) in [
            ("fatal", stats.fatal_errors),
            ("data_digest", stats.data_digest_errors),
        ] {
            ConstCounter::new(n).encode(m.encode_family(&[("kind", kind)])?)?;
        }
        Ok(())
    }
}
