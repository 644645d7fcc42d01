//! `gyre_daemon`: the library behind `gyred`.
//!
//! A [`Daemon`] starts the reactors, holds the [`Module`]s (built in: `reactor` and `bdev`;
//! protocol modules are added with [`Daemon::register_module`]), and once started
//! ([`Daemon::start`]) replays its configuration, serves JSON-RPC 2.0 on a Unix socket and,
//! if asked, Prometheus metrics over HTTP. [`run`] adds signal handling for the binary.
//!
//! Configuration is the ordered list of RPC calls that rebuilds the running state, grouped
//! by module (see [`gyre_api::ConfigFile`]): saving asks each module for its calls, loading
//! replays them, so the configuration file and the RPC share one object model.

pub mod config;
pub mod context;
mod core;
pub mod daemon;
mod dispatch;
pub mod metrics;
pub mod module;
pub mod modules;
pub mod server;

pub use context::{DaemonContext, ShutdownFlag};
pub use core::CORE_MODULE;
pub use daemon::{run, Daemon, DaemonError, DaemonOptions, RunningDaemon};
pub use module::{rank, MethodInfo, Module, ParamInfo, RpcError};
