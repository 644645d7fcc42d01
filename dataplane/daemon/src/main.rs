//! `gyred`: the Gyre daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use gyre_daemon::{Daemon, DaemonOptions};
use gyre_reactor::{CoreList, IdlePolicy};

#[derive(Parser, Debug)]
#[command(
    name = "gyred",
    version,
    about = "Gyre's storage daemon: reactors, block devices and (soon) NVMe-oF and iSCSI targets, \
             controlled over JSON-RPC"
)]
struct Args {
    /// Configuration file to start from (also where `save_config` writes by default).
    /// Without it, gyred starts on a built-in default with a 1 GiB RAM bdev.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Cores to run reactors on, e.g. 0-1, 2,3 or 0x3 (default: the first two available).
    #[arg(long, value_name = "LIST")]
    cores: Option<CoreList>,
    /// What reactors do when idle: poll (lowest latency, owns the cores) or hybrid (poll,
    /// then sleep; hybrid:SPIN sets the spin time, e.g. hybrid:50us).
    #[arg(long, default_value = "hybrid", value_name = "MODE")]
    idle: IdlePolicy,
    /// Unix socket for JSON-RPC.
    #[arg(long, default_value = gyre_api::DEFAULT_RPC_SOCKET, value_name = "PATH")]
    rpc_socket: PathBuf,
    /// Log filter: error, warn, info, debug, trace, or a tracing filter such as
    /// info,gyre_daemon=debug (default: $RUST_LOG, else info).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9100.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Seconds the shutdown may take (running RPCs, then modules) before gyred exits anyway.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    shutdown_timeout: u64,
}

fn main() {
    let args = Args::parse();
    let filter = args
        .log_level
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let filter = match tracing_subscriber::EnvFilter::try_new(&filter) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("gyred: bad --log-level '{filter}': {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(args) {
        eprintln!("gyred: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let cores = match args.cores {
        Some(c) => c,
        None => DaemonOptions::default_cores()?,
    };
    let mut options = DaemonOptions::new(cores);
    options.idle = args.idle;
    options.rpc_socket = args.rpc_socket;
    options.config = args.config;
    options.metrics = args.metrics;
    options.shutdown_timeout = Duration::from_secs(args.shutdown_timeout);
    // The built-in modules (reactor, bdev, nvmf) are registered by Daemon::new; further
    // protocol modules register here with daemon.register_module(..).
    let daemon = Daemon::new(options)?;
    gyre_daemon::run(daemon)?;
    Ok(())
}
