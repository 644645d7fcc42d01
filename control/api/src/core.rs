//! Parameters and results of the methods gyred's core serves itself: `rpc_get_methods`,
//! `save_config`, `load_config`.

use serde::{Deserialize, Serialize};

/// `rpc_get_methods` takes no parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// One parameter of a method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamDescription {
    pub name: String,
    /// `string`, `size`, `integer`, `boolean`, `uuid`, `array`, `object`.
    #[serde(rename = "type")]
    pub ty: String,
    pub required: bool,
    pub description: String,
}

/// One method, as `rpc_get_methods` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodDescription {
    pub name: String,
    pub module: String,
    pub description: String,
    pub params: Vec<ParamDescription>,
}

/// `save_config`: where to write (default: the file gyred was started with).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// `save_config` returns the file it wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaveConfigResult {
    pub path: String,
}

/// `load_config`: apply a configuration file to the running daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadConfig {
    pub path: String,
}

/// `load_config` returns how many calls it applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadConfigResult {
    pub path: String,
    pub calls: usize,
}
