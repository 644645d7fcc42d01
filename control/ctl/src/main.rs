//! `gyrectl`: every gyred JSON-RPC method as a subcommand, with tables for people and `--json`
//! for scripts.
//!
//! Each area has its own file (`bdev.rs`, `reactor.rs`, `config.rs`); a protocol adds its
//! own (`nvmf.rs`, `iscsi.rs`) with a `Command` enum and a `run` function, and one variant
//! in [`Command`] below.
//!
//! Exit status: 0 on success, 1 when gyred answered with an error, 2 when gyred cannot be
//! reached (or the command line is wrong).

mod bdev;
mod config;
mod iscsi;
mod lvol;
mod nvmf;
mod output;
mod reactor;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use gyre_api::{Client, ClientError};
use serde_json::Value;

use crate::output::Output;

#[derive(Parser, Debug)]
#[command(
    name = "gyrectl",
    version,
    about = "Control a running gyred over JSON-RPC"
)]
pub struct Cli {
    /// gyred's JSON-RPC socket.
    #[arg(long, global = true, default_value = gyre_api::DEFAULT_RPC_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Print gyred's answer as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for an answer.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECS")]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Block devices: create, list, inspect, delete, statistics.
    #[command(subcommand)]
    Bdev(bdev::Command),
    /// Reactors: list and load.
    #[command(subcommand)]
    Reactor(reactor::Command),
    /// NVMe-oF target: subsystems, namespaces, listeners, hosts, ANA states.
    #[command(subcommand)]
    Nvmf(nvmf::Command),
    /// Logical volume pools: create, import, scan, close, list.
    #[command(subcommand)]
    Pool(lvol::PoolCommand),
    /// Logical volumes: create, resize, rename, snapshot, clone, inflate, delete, list.
    #[command(subcommand)]
    Volume(lvol::VolumeCommand),
    /// iSCSI target: portal groups, initiator groups, targets, LUNs, CHAP, sessions.
    #[command(subcommand)]
    Iscsi(iscsi::Command),
    /// Save the running configuration or load a file into the running daemon.
    #[command(subcommand)]
    Config(config::Command),
    /// List every method gyred serves (rpc_get_methods).
    Methods,
    /// Call any method: gyrectl rpc METHOD ['{"param": ...}'].
    Rpc {
        method: String,
        /// Params as a JSON object.
        params: Option<String>,
    },
    /// Print a shell completion script: gyrectl completions bash > /etc/bash_completion.d/gyrectl
    Completions { shell: clap_complete::Shell },
}

/// What a command needs: a lazily opened connection.
pub struct Ctx {
    socket: PathBuf,
    timeout: Duration,
    client: Option<Client>,
}

impl Ctx {
    /// Calls a method on gyred.
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
        if self.client.is_none() {
            self.client = Some(Client::connect(&self.socket, self.timeout)?);
        }
        match self.client.as_mut() {
            Some(c) => c.call(method, params),
            None => Err(ClientError::Closed),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut ctx = Ctx {
        socket: cli.socket.clone(),
        timeout: Duration::from_secs(cli.timeout.max(1)),
        client: None,
    };
    let result = match cli.command {
        Command::Bdev(c) => bdev::run(c, &mut ctx),
        Command::Reactor(c) => reactor::run(c, &mut ctx),
        Command::Nvmf(c) => nvmf::run(c, &mut ctx),
        Command::Iscsi(c) => iscsi::run(c, &mut ctx),
        Command::Pool(c) => lvol::run_pool(c, &mut ctx),
        Command::Volume(c) => lvol::run_volume(c, &mut ctx),
        Command::Config(c) => config::run(c, &mut ctx),
        Command::Methods => ctx
            .call("rpc_get_methods", None)
            .map(|v| Output::new(v, output::methods_table)),
        Command::Rpc { method, params } => {
            let params = match params.as_deref().map(serde_json::from_str::<Value>) {
                None => None,
                Some(Ok(v)) => Some(v),
                Some(Err(e)) => {
                    eprintln!("gyrectl: params are not valid JSON: {e}");
                    return ExitCode::from(2);
                }
            };
            ctx.call(&method, params).map(Output::json_only)
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "gyrectl", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
    };
    match result {
        Ok(out) => {
            out.print(cli.json);
            ExitCode::SUCCESS
        }
        Err(e) => report(e),
    }
}

fn report(e: ClientError) -> ExitCode {
    match e {
        ClientError::Rpc(err) => {
            eprintln!("gyrectl: {} (error {})", err.message, err.code);
            ExitCode::from(1)
        }
        other => {
            eprintln!("gyrectl: {other}");
            ExitCode::from(2)
        }
    }
}
