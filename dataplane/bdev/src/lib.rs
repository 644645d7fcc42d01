//! Gyre's block-device layer.
//!
//! A [`Bdev`] describes a device (name, UUID, block size and count, supported I/O types) and
//! creates per-thread I/O channels. Bdevs live in a [`BdevRegistry`]; opening one gives a
//! [`BdevDesc`], which can claim it exclusively (for a virtual bdev stacked on it) and is told
//! when it is removed. Each reactor gets its own [`BdevChannel`] per descriptor: requests go in
//! with [`BdevChannel::submit`] carrying scatter-gather pool buffers, and come back with their
//! status from [`BdevChannel::poll`]. Nothing on that path locks or allocates in steady state.
//!
//! Backends here need no hardware: [`malloc`] (RAM) and [`null`], and the fault injector
//! [`inject`] stacked on another bdev for tests. Files and block devices through io_uring are
//! in the `gyre-uring` driver.

pub mod bdev;
pub mod inject;
pub mod io;
pub mod malloc;
pub mod null;
pub mod rangelock;
pub mod registry;
pub mod stats;
pub mod testing;

pub use bdev::{check_request, Bdev, BdevChannel, BdevInfo, ChannelStats, IoChannelBackend};
pub use inject::{Faults, InjectBdev};
pub use io::{IoCompletion, IoError, IoFlags, IoOp, IoRequest, IoStatus, IoTypes};
pub use malloc::MallocBdev;
pub use null::NullBdev;
pub use rangelock::{RangeGuard, RangeLock, WriteGate};
pub use registry::{BdevDesc, BdevEvent, BdevEventHandler, BdevRegistry, BdevSummary};
pub use stats::{IoStatsSnapshot, KindStats, OpKind};

/// Errors of the bdev control path (creating, opening, claiming, deleting).
#[derive(Debug, thiserror::Error)]
pub enum BdevError {
    #[error("bdev '{0}' not found")]
    NotFound(String),
    #[error("bdev '{0}' already exists")]
    AlreadyExists(String),
    #[error("bdev '{name}' is claimed by {by}")]
    Claimed { name: String, by: String },
    #[error("bdev '{name}' is in use by {}", holders.join(", "))]
    InUse { name: String, holders: Vec<String> },
    #[error("invalid bdev name '{0}': use letters, digits and -_.:/@, at most 255 characters")]
    InvalidName(String),
    #[error("block size {0} is not supported (512 or 4096)")]
    InvalidBlockSize(u32),
    #[error("bdev '{0}' would have no blocks")]
    ZeroSize(String),
    #[error("bdev '{0}' is too large")]
    TooLarge(String),
    #[error("the bdev registry is gone")]
    RegistryGone,
    #[error(transparent)]
    Memory(#[from] gyre_reactor::MemoryError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Backend(String),
}
