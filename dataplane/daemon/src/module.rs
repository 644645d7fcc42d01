//! What a daemon module is: a named set of JSON-RPC methods with a dependency rank, the calls
//! that rebuild its objects (its part of the saved configuration), and an orderly shutdown.
//!
//! The core registers `reactor` and `bdev`; protocol modules (`nvmf`, `iscsi`, later `lvol`)
//! are registered with [`crate::Daemon::register_module`] before the daemon starts. The core
//! routes each method to the module that lists it, replays saved configurations module by
//! module in rank order, and shuts modules down in the reverse order.

use std::time::Instant;

use gyre_api::{codes, ConfigCall, ErrorObject, ParamsError};
use gyre_bdev::BdevError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Dependency ranks of the known modules: lower ranks are configured first and shut down
/// last. A module that uses objects of another must rank above it.
pub mod rank {
    pub const REACTOR: u32 = 0;
    pub const BDEV: u32 = 100;
    /// Logical volumes, mirrors: bdevs stacked on bdevs of other modules.
    pub const VBDEV: u32 = 200;
    /// NVMe-oF, iSCSI: export bdevs to hosts.
    pub const PROTOCOL: u32 = 300;
}

/// One parameter of a method, for `rpc_get_methods` and `gyrectl`'s help.
#[derive(Debug, Clone, Copy)]
pub struct ParamInfo {
    pub name: &'static str,
    /// `string`, `size`, `integer`, `boolean`, `uuid`, `array`, `object`.
    pub ty: &'static str,
    pub required: bool,
    pub description: &'static str,
}

impl ParamInfo {
    pub const fn required(name: &'static str, ty: &'static str, description: &'static str) -> Self {
        ParamInfo {
            name,
            ty,
            required: true,
            description,
        }
    }

    pub const fn optional(name: &'static str, ty: &'static str, description: &'static str) -> Self {
        ParamInfo {
            name,
            ty,
            required: false,
            description,
        }
    }
}

/// One method a module serves.
#[derive(Debug, Clone, Copy)]
pub struct MethodInfo {
    pub name: &'static str,
    /// One line.
    pub description: &'static str,
    pub params: &'static [ParamInfo],
    /// Whether it changes the configuration. Such calls run one at a time (and never
    /// concurrently with `save_config`); the others run concurrently.
    pub mutates: bool,
}

/// An error a method returns: a JSON-RPC error code, a message for people, optional data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// Invalid params, naming the field.
    pub fn invalid_param(field: &str, message: impl std::fmt::Display) -> Self {
        RpcError::new(codes::INVALID_PARAMS, format!("params.{field}: {message}"))
            .with_data(serde_json::json!({ "field": field }))
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        RpcError::new(codes::NOT_FOUND, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        RpcError::new(codes::INTERNAL_ERROR, message)
    }

    pub fn failed(message: impl Into<String>) -> Self {
        RpcError::new(codes::OPERATION_FAILED, message)
    }

    /// The field named in the data of an invalid-params error, if any.
    pub fn field(&self) -> Option<&str> {
        self.data.as_ref()?.get("field")?.as_str()
    }
}

impl From<RpcError> for ErrorObject {
    fn from(e: RpcError) -> Self {
        ErrorObject {
            code: e.code,
            message: e.message,
            data: e.data,
        }
    }
}

impl From<ParamsError> for RpcError {
    fn from(e: ParamsError) -> Self {
        let data = if e.field.is_empty() {
            None
        } else {
            Some(serde_json::json!({ "field": e.field }))
        };
        RpcError {
            code: codes::INVALID_PARAMS,
            message: e.to_string(),
            data,
        }
    }
}

impl From<BdevError> for RpcError {
    fn from(e: BdevError) -> Self {
        let msg = e.to_string();
        match e {
            BdevError::NotFound(_) => RpcError::new(codes::NOT_FOUND, msg),
            BdevError::AlreadyExists(_) => RpcError::new(codes::ALREADY_EXISTS, msg),
            BdevError::Claimed { by, .. } => {
                RpcError::new(codes::IN_USE, msg).with_data(serde_json::json!({ "holders": [by] }))
            }
            BdevError::InUse { holders, .. } => RpcError::new(codes::IN_USE, msg)
                .with_data(serde_json::json!({ "holders": holders })),
            BdevError::InvalidName(_) => RpcError::invalid_param("name", msg),
            BdevError::InvalidBlockSize(_) => RpcError::invalid_param("block_size", msg),
            BdevError::ZeroSize(_) | BdevError::TooLarge(_) => RpcError::invalid_param("size", msg),
            BdevError::RegistryGone
            | BdevError::Memory(_)
            | BdevError::Io { .. }
            | BdevError::Backend(_) => RpcError::failed(msg),
        }
    }
}

/// Decodes a method's params (see [`gyre_api::parse_params`]).
pub fn parse<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    Ok(gyre_api::parse_params(params)?)
}

/// Encodes a method's result.
pub fn to_result<T: Serialize>(v: &T) -> Result<Value, RpcError> {
    serde_json::to_value(v).map_err(|e| RpcError::internal(format!("cannot encode result: {e}")))
}

/// A daemon module. Methods run on control threads (never on a reactor): whatever they change
/// on a reactor they change by message (`ReactorHandle::call` with a timeout).
pub trait Module: Send + Sync + 'static {
    /// Short name, also the key of its section in the configuration file (`bdev`, `nvmf`).
    fn name(&self) -> &'static str;

    /// Dependency rank (see [`rank`]).
    fn rank(&self) -> u32;

    /// The methods it serves.
    fn methods(&self) -> Vec<MethodInfo>;

    /// Serves one call of one of its methods.
    fn handle(&self, method: &str, params: Value) -> Result<Value, RpcError>;

    /// Checks a call's params without doing anything (used to check a whole configuration
    /// file before applying any of it). Decode them into the method's params type here.
    fn validate(&self, _method: &str, _params: &Value) -> Result<(), RpcError> {
        Ok(())
    }

    /// Undoes a call this module applied (a `*_create` is undone by deleting what it made),
    /// when a later call of the same configuration file failed.
    fn undo(&self, call: &ConfigCall) -> Result<(), RpcError> {
        Err(RpcError::internal(format!(
            "module '{}' cannot undo {}",
            self.name(),
            call.method
        )))
    }

    /// The name of the object a call creates or changes, for messages (default: `params.name`).
    fn object_name(&self, _method: &str, params: &Value) -> Option<String> {
        params.get("name")?.as_str().map(str::to_string)
    }

    /// The calls that rebuild this module's objects, in the order they must be replayed.
    fn save_config(&self) -> Vec<ConfigCall> {
        Vec::new()
    }

    /// Lines telling a user how to reach what this module serves ("NVMe/TCP: connect to
    /// 127.0.0.1:4420 ..."), printed at startup.
    fn connect_hints(&self) -> Vec<String> {
        Vec::new()
    }

    /// Adds the module's own metrics (connection counts, errors per protocol) to the
    /// Prometheus registry: typically a [`prometheus_client::collector::Collector`] that reads
    /// the module's state at scrape time. Called once, before the metrics endpoint starts.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}

    /// Stops accepting work, drains or fails in-flight I/O and flushes caches, by `deadline`.
    fn shutdown(&self, _deadline: Instant) {}
}
