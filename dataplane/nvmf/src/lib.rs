//! NVMe over Fabrics: the target (subsystems, controllers, namespaces, discovery, ANA) with its
//! TCP transport, and the NVMe/TCP host.
//!
//! The target's control path ([`NvmfTarget`]) creates subsystems, exports bdevs as namespaces
//! and opens listeners; connections are served by one poll group per reactor, each connection
//! for its whole life on the reactor it was given when accepted (the least loaded one).

pub mod config;
/// The NVMe/TCP host (initiator): controllers, I/O queue pairs with reconnect, discovery.
pub mod host;
pub mod target;
pub mod tcp;

pub use config::{
    validate_nqn, AnaState, ListenAddress, NamespaceConfig, SubsystemConfig, DEFAULT_PORT,
    DISCOVERY_NQN,
};
pub use target::{ControllerInfo, NvmfTarget, Subsystem, TransportOptions, TransportStats};

/// Errors of the target's control path.
#[derive(Debug, thiserror::Error)]
pub enum NvmfError {
    #[error("no reactors to run the target on")]
    NoReactors,
    #[error("{0}")]
    InvalidConfig(String),
    #[error("subsystem '{0}' already exists")]
    SubsystemExists(String),
    #[error("subsystem '{0}' not found")]
    SubsystemNotFound(String),
    #[error("subsystem '{nqn}' already has NSID {nsid}")]
    NsidInUse { nqn: String, nsid: u32 },
    #[error("subsystem '{0}' has no free NSID")]
    NoFreeNsid(String),
    #[error("subsystem '{nqn}' has no namespace {nsid}")]
    NamespaceNotFound { nqn: String, nsid: u32 },
    #[error("subsystem '{nqn}' already listens on {addr}")]
    ListenerExists { nqn: String, addr: String },
    #[error("subsystem '{nqn}' does not listen on {addr}")]
    ListenerNotFound { nqn: String, addr: String },
    #[error("host '{host}' is already allowed on subsystem '{nqn}'")]
    HostExists { nqn: String, host: String },
    #[error("host '{host}' is not in the allowed list of subsystem '{nqn}'")]
    HostNotFound { nqn: String, host: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Bdev(#[from] gyre_bdev::BdevError),
    #[error("subsystem '{nqn}' has no controller {cntlid}")]
    ControllerNotFound { nqn: String, cntlid: u16 },
    #[error("reactor: {0}")]
    Reactor(String),
}
