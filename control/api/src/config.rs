//! The saved configuration: per module, in dependency order, the calls that rebuild the
//! running state. It is the same object model the RPC uses, by construction.
//!
//! ```json
//! {"version": 1, "modules": [
//!   {"module": "bdev", "config": [
//!     {"method": "bdev_malloc_create", "params": {"name": "m0", "size": "1G"}}]}]}
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The only configuration format version so far.
pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub version: u32,
    #[serde(default)]
    pub modules: Vec<ModuleConfig>,
}

impl ConfigFile {
    pub fn new(modules: Vec<ModuleConfig>) -> Self {
        ConfigFile {
            version: CONFIG_VERSION,
            modules,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleConfig {
    pub module: String,
    #[serde(default)]
    pub config: Vec<ConfigCall>,
}

/// One call: a method and its params, as they would be sent over JSON-RPC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigCall {
    pub method: String,
    #[serde(default)]
    pub params: Value,
}

impl ConfigCall {
    pub fn new(method: impl Into<String>, params: Value) -> Self {
        ConfigCall {
            method: method.into(),
            params,
        }
    }
}
