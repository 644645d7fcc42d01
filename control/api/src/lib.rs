//! JSON-RPC request and response types shared by gyred and gyrectl.
//!
//! - [`jsonrpc`]: the JSON-RPC 2.0 envelope (ids, requests, responses, error objects) and the
//!   error codes gyred uses, including its own application codes.
//! - [`framing`]: splitting a byte stream into JSON values (requests are sent back to back on
//!   a Unix socket, with or without newlines in between).
//! - [`params`]: decoding a method's `params` into its typed parameters, naming the field that
//!   is wrong when it fails.
//! - [`size`]: sizes as users write them (`"512M"`, `"1G"`, `4096`).
//! - [`bdev`], [`reactor`], [`core`], [`nvmf`], [`iscsi`]: the parameters and results of every
//!   method.
//! - [`config`]: the saved configuration, an ordered list of calls per module.
//! - [`client`]: a small blocking client over the Unix socket.
//!
//! Every parameter struct refuses unknown fields, so a typo is an error and not a silently
//! ignored option.

pub mod bdev;
pub mod client;
pub mod config;
pub mod core;
pub mod framing;
pub mod iscsi;
pub mod jsonrpc;
pub mod lvol;
pub mod nvmf;
pub mod params;
pub mod reactor;
pub mod size;

pub use client::{Client, ClientError};
pub use config::{ConfigCall, ConfigFile, ModuleConfig};
pub use jsonrpc::{codes, ErrorObject, Id};
pub use params::{parse_params, ParamsError};
pub use size::Size;

/// Where gyred listens for JSON-RPC unless told otherwise.
pub const DEFAULT_RPC_SOCKET: &str = "/var/tmp/gyred.sock";
