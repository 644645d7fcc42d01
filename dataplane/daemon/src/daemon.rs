//! Putting the daemon together: reactors, modules, configuration, the RPC server, metrics,
//! and an orderly shutdown on SIGTERM/SIGINT (a second signal exits at once).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre_api::Size;
use gyre_bdev::BdevRegistry;
use gyre_reactor::{CoreList, IdlePolicy, ReactorConfig, ReactorError, Reactors};
use prometheus_client::registry::Registry;

use crate::config::{parse_config, read_config_file, DEFAULT_CONFIG};
use crate::context::{DaemonContext, ShutdownFlag};
use crate::core::{Core, RegistrationError, DEFAULT_SHUTDOWN_TIMEOUT};
use crate::metrics::MetricsServer;
use crate::module::{Module, RpcError};
use crate::modules::{BdevModule, NvmfModule, ReactorModule};
use crate::server::{RpcServer, RpcSocket, SocketError};

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub cores: CoreList,
    pub idle: IdlePolicy,
    pub rpc_socket: PathBuf,
    /// The configuration to start from (and `save_config`'s default target); `None` starts
    /// from the embedded default.
    pub config: Option<PathBuf>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// How long the whole shutdown may take (in-flight RPCs, then module shutdowns).
    pub shutdown_timeout: Duration,
    /// How long a reactor may take to answer a control message.
    pub call_timeout: Duration,
}

impl DaemonOptions {
    /// Two reactors on the first two cores (one on a one-core machine).
    pub fn default_cores() -> Result<CoreList, gyre_reactor::CoreListError> {
        CoreList::first_available(2)
    }

    pub fn new(cores: CoreList) -> Self {
        DaemonOptions {
            cores,
            idle: IdlePolicy::hybrid(),
            rpc_socket: PathBuf::from(gyre_api::DEFAULT_RPC_SOCKET),
            config: None,
            metrics: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            call_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start reactors: {0}")]
    Reactors(#[from] ReactorError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("{0}")]
    Config(RpcError),
    #[error(transparent)]
    Registration(#[from] RegistrationError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the NVMe-oF target: {0}")]
    Nvmf(#[from] gyre_nvmf::NvmfError),
}

/// A daemon being assembled: reactors are running; modules can still be registered.
pub struct Daemon {
    options: DaemonOptions,
    reactors: Reactors,
    ctx: DaemonContext,
    modules: Vec<Box<dyn Module>>,
    shutdown: Arc<ShutdownFlag>,
}

impl Daemon {
    /// Starts the reactors and registers the built-in modules (`reactor`, `bdev`, `nvmf`).
    pub fn new(options: DaemonOptions) -> Result<Daemon, DaemonError> {
        let reactors = Reactors::start(&ReactorConfig {
            cores: options.cores.clone(),
            idle: options.idle,
        })?;
        let shutdown = Arc::new(ShutdownFlag::default());
        let ctx = DaemonContext::new(
            reactors.handles().to_vec(),
            BdevRegistry::new(),
            options.call_timeout,
            shutdown.clone(),
        );
        let mut d = Daemon {
            options,
            reactors,
            ctx: ctx.clone(),
            modules: Vec::new(),
            shutdown,
        };
        d.register_module(Box::new(ReactorModule::new(ctx.clone())));
        d.register_module(Box::new(BdevModule::new(ctx.clone())));
        d.register_module(Box::new(NvmfModule::new(&ctx)?));
        d.register_module(Box::new(crate::modules::iscsi::IscsiModule::new(&ctx)?));
        d.register_module(Box::new(crate::modules::lvol::LvolModule::new(ctx.clone())));
        Ok(d)
    }

    /// What modules are built with.
    pub fn context(&self) -> DaemonContext {
        self.ctx.clone()
    }

    /// Adds a module (NVMe-oF, iSCSI, ...). Its methods are served and its configuration
    /// section replayed once the daemon starts.
    pub fn register_module(&mut self, module: Box<dyn Module>) {
        self.modules.push(module);
    }

    /// Binds the RPC socket, applies the configuration, starts metrics and the RPC server.
    pub fn start(self) -> Result<RunningDaemon, DaemonError> {
        let Daemon {
            options,
            mut reactors,
            ctx,
            modules,
            shutdown,
        } = self;
        let socket = RpcSocket::bind(&options.rpc_socket)?;
        let core = Arc::new(Core::new(modules, options.config.clone(), ctx)?);
        let applied = match &options.config {
            Some(path) => read_config_file(path)
                .and_then(|f| core.apply_config(&f, &path.display().to_string(), false)),
            None => parse_config(DEFAULT_CONFIG, "the default configuration")
                .and_then(|f| core.apply_config(&f, "the default configuration", false)),
        };
        if let Err(e) = applied {
            // Modules may hold reactor resources: shut them down before the reactors stop.
            shutdown.trigger();
            core.shutdown_modules(Instant::now() + options.shutdown_timeout);
            reactors.stop();
            return Err(DaemonError::Config(e));
        }
        let metrics = match options.metrics {
            Some(addr) => {
                let mut registry = Registry::default();
                for m in core.modules() {
                    m.register_metrics(&mut registry);
                }
                Some(
                    MetricsServer::start(addr, registry, shutdown.clone())
                        .map_err(|source| DaemonError::Metrics { addr, source })?,
                )
            }
            None => None,
        };
        let socket_path = socket.path().to_path_buf();
        let server =
            RpcServer::start(socket, core.clone()).map_err(|source| DaemonError::Thread {
                what: "RPC accept",
                source,
            })?;
        tracing::info!(socket = %socket_path.display(), "JSON-RPC server listening");
        Ok(RunningDaemon {
            options,
            core,
            server: Some(server),
            metrics,
            reactors,
            shutdown,
            socket_path,
        })
    }
}

/// A started daemon.
pub struct RunningDaemon {
    options: DaemonOptions,
    core: Arc<Core>,
    server: Option<RpcServer>,
    metrics: Option<MetricsServer>,
    reactors: Reactors,
    shutdown: Arc<ShutdownFlag>,
    socket_path: PathBuf,
}

impl RunningDaemon {
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Where metrics are served (with the actual port when asked for port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr())
    }

    pub fn context(&self) -> &DaemonContext {
        self.core.context()
    }

    /// What is running and how to reach it, in plain words.
    pub fn banner(&self) -> String {
        let mut s = String::new();
        let o = &self.options;
        s.push_str(&format!(
            "gyred {} is running: {} reactor(s) on core(s) {} (idle: {})\n",
            env!("CARGO_PKG_VERSION"),
            o.cores.len(),
            o.cores,
            o.idle
        ));
        match &o.config {
            Some(p) => s.push_str(&format!("  configuration: {}\n", p.display())),
            None => s.push_str(
                "  configuration: the built-in default (save it with `gyrectl config save PATH`)\n",
            ),
        }
        for b in self.core.context().bdevs().list() {
            s.push_str(&format!(
                "  bdev {}: {}, {} in {}-byte blocks, uuid {}\n",
                b.name,
                b.module,
                Size(b.num_blocks * b.block_size as u64),
                b.block_size,
                b.uuid
            ));
        }
        let sock = self.socket_path.display();
        let flag = if self.socket_path == Path::new(gyre_api::DEFAULT_RPC_SOCKET) {
            String::new()
        } else {
            format!(" --socket {sock}")
        };
        s.push_str(&format!(
            "  control: JSON-RPC 2.0 on {sock}; try `gyrectl{flag} bdev list`\n"
        ));
        if let Some(addr) = self.metrics_addr() {
            s.push_str(&format!("  metrics: http://{addr}/metrics\n"));
        }
        // ---- How to connect: each protocol module (nvmf, iscsi, ...) adds its lines here
        // through `Module::connect_hints`. ----
        for m in self.core.modules() {
            for hint in m.connect_hints() {
                s.push_str(&format!("  {}: {hint}\n", m.name()));
            }
        }
        s.push_str("Stop it with Ctrl-C or SIGTERM.\n");
        s
    }

    /// Sets the shutdown flag (as a signal would).
    pub fn request_shutdown(&self) {
        self.shutdown.trigger();
    }

    /// Blocks until shutdown is requested (a signal or [`RunningDaemon::request_shutdown`]).
    pub fn wait(&self, signalled: &AtomicBool) {
        while !signalled.load(Ordering::SeqCst) {
            if self.shutdown.wait_timeout(Duration::from_millis(50)) {
                return;
            }
        }
    }

    /// Shuts down in order: stop taking RPCs, let running ones finish, shut modules down in
    /// reverse dependency order, stop the reactors, remove the socket. All bounded by the
    /// shutdown timeout.
    pub fn shutdown(mut self) {
        let deadline = Instant::now() + self.options.shutdown_timeout;
        tracing::info!(timeout = ?self.options.shutdown_timeout, "shutting down");
        self.shutdown.trigger();
        if !self.core.wait_idle(deadline) {
            tracing::warn!("RPCs still running at the shutdown deadline");
        }
        let socket = self.server.take().and_then(|s| s.stop(deadline));
        self.core.shutdown_modules(deadline);
        if let Some(m) = self.metrics.take() {
            m.stop();
        }
        self.reactors.stop();
        drop(socket);
        tracing::info!("gyred stopped");
    }
}

/// Runs a daemon until SIGTERM or SIGINT, then shuts it down. A second signal during the
/// shutdown exits the process at once with status 1.
pub fn run(daemon: Daemon) -> Result<(), DaemonError> {
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // Registered first, so it sees the flag as it was before this signal set it.
        signal_hook::flag::register_conditional_shutdown(sig, 1, signalled.clone())
            .map_err(DaemonError::Signals)?;
        signal_hook::flag::register(sig, signalled.clone()).map_err(DaemonError::Signals)?;
    }
    let running = daemon.start()?;
    print!("{}", running.banner());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    running.wait(&signalled);
    running.shutdown();
    Ok(())
}
