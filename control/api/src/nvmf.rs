//! Parameters and results of the `nvmf` module's methods (NVMe over Fabrics target).

use serde::{Deserialize, Serialize};

fn default_model() -> String {
    "Gyre NVMe-oF controller".to_string()
}

fn default_max_namespaces() -> u32 {
    32
}

/// `nvmf_create_subsystem`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSubsystem {
    pub nqn: String,
    /// Up to 20 ASCII characters (default: derived from the NQN).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub serial_number: String,
    #[serde(default = "default_model")]
    pub model_number: String,
    #[serde(default)]
    pub allow_any_host: bool,
    /// Host NQNs allowed to connect (unless `allow_any_host`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default = "default_max_namespaces")]
    pub max_namespaces: u32,
}

/// Methods that name only a subsystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsystemRef {
    pub nqn: String,
}

/// `nvmf_subsystem_add_ns`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNamespace {
    pub nqn: String,
    pub bdev_name: String,
    /// 0 or absent: the lowest free NSID.
    #[serde(default)]
    pub nsid: u32,
    /// ANA group; 0 or absent: the NSID.
    #[serde(default)]
    pub ana_group: u32,
    /// 32 hex digits (dashes allowed); default: the bdev's UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nguid: Option<String>,
    /// 16 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eui64: Option<String>,
}

/// `nvmf_subsystem_remove_ns`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveNamespace {
    pub nqn: String,
    pub nsid: u32,
}

/// `nvmf_subsystem_add_listener` / `nvmf_subsystem_remove_listener`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub nqn: String,
    /// `127.0.0.1:4420`, `[::1]:4420`; port 0 picks a free port (returned).
    pub address: String,
}

/// `nvmf_subsystem_add_host` / `nvmf_subsystem_remove_host`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub nqn: String,
    pub host: String,
}

/// `nvmf_subsystem_allow_any_host`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowAnyHost {
    pub nqn: String,
    pub allow: bool,
}

/// `nvmf_subsystem_set_ana_state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetAnaState {
    pub nqn: String,
    pub address: String,
    /// 0 or absent: every group of the subsystem.
    #[serde(default)]
    pub ana_group: u32,
    /// optimized, non_optimized, inaccessible, persistent_loss, change
    pub state: String,
}

/// A namespace in `nvmf_get_subsystems`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamespaceInfo {
    pub nsid: u32,
    pub bdev_name: String,
    pub ana_group: u32,
    pub uuid: String,
    pub nguid: String,
    pub eui64: String,
}

/// A listener and its non-default ANA states in `nvmf_get_subsystems`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerInfo {
    pub address: String,
    /// (group, state) for groups that are not optimized.
    pub ana_states: Vec<(u32, String)>,
}

/// One subsystem in `nvmf_get_subsystems`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubsystemInfo {
    pub nqn: String,
    pub serial_number: String,
    pub model_number: String,
    pub allow_any_host: bool,
    pub hosts: Vec<String>,
    pub max_namespaces: u32,
    pub namespaces: Vec<NamespaceInfo>,
    pub listeners: Vec<ListenerInfo>,
    pub controllers: usize,
}

/// `nvmf_get_controllers`: one subsystem's controllers, or every subsystem's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetControllers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nqn: Option<String>,
}

/// `nvmf_disconnect_controller`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectController {
    pub nqn: String,
    pub cntlid: u16,
}

/// A controller (a host's association) in `nvmf_get_controllers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControllerInfo {
    pub nqn: String,
    pub cntlid: u16,
    pub hostnqn: String,
    /// The host ID as a UUID.
    pub hostid: String,
    /// The listener the host came in through.
    pub address: String,
    pub kato_ms: u32,
    pub io_queues: usize,
    pub ready: bool,
}
