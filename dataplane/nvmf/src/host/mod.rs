//! The NVMe/TCP host (initiator): what gyre-perf uses to load a remote target and what
//! replicated volumes will use to reach replicas on other nodes.
//!
//! Layers, bottom up:
//!
//! - [`queue::QueuePair`]: one NVMe/TCP connection (admin or I/O queue) as a poll-driven state
//!   machine. Commands occupy preallocated slots (CID = slot index); `poll` flushes queued PDUs
//!   with one `sendmsg`, receives, lands C2HData straight into the caller's buffers, answers
//!   R2Ts with H2CData sent from those buffers, and hands back completions. It uses the shared
//!   PDU codec ([`crate::tcp::pdu`]) and never allocates per command.
//! - [`Controller`]: an association — the admin queue with its blocking control-path commands
//!   (Connect, properties, Identify, features, log pages), keep-alive at KATO/2 from its poll,
//!   reconnection with back-off, and a clean shutdown. Its [`ControllerLink`] (cheap, `Send`)
//!   is what I/O queues connect through, on any thread.
//! - [`IoQueue`]: an I/O queue pair with typed Read/Write/Flush/Write Zeroes/Deallocate
//!   submissions over pool buffers; when its connection is lost it fails what was in flight with
//!   a transport error and, when polled afterwards, reconnects with exponential back-off (to the
//!   same controller, or to the new association when the target restarted).
//! - [`discover`]: the discovery log of a discovery controller, paged and consistent.

pub mod buffer;
pub mod controller;
pub mod discovery;
pub mod error;
pub mod io;
pub mod options;
pub mod queue;
#[cfg(test)]
mod queue_tests;

pub use buffer::DataBuffer;
pub use controller::{Controller, ControllerInfo, ControllerLink, NamespaceInfo};
pub use discovery::{discover, discover_paged, read_discovery_log, DiscoveryEntry, DiscoveryLog};
pub use error::{CommandError, HostError, SubmitError, SubmitRejection, TransportError};
pub use io::{IoCompletion, IoQueue, Namespace, QueueState};
pub use options::{hostnqn_from_uuid, random_uuid, HostOptions, ReconnectPolicy};
pub use queue::{QueueConfig, QueuePair, Transfer};
