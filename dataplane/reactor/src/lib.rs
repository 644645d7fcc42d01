//! Gyre's runtime: one pinned reactor thread per core running pollers, lock-free messages
//! between reactors, an idle policy (pure polling or poll-then-sleep), and the memory and
//! buffer pools the I/O path uses without locks or heap allocation.

pub mod clock;
pub mod cores;
pub mod iobuf;
pub mod memory;
pub mod reactor;

pub use cores::{CoreList, CoreListError};
pub use iobuf::{
    global_pool, init_global_pool, BufWaiter, BufferPool, ClassConfig, IoBuf, PoolCache,
    PoolConfig, PoolError, SendIoBuf, SgList,
};
pub use memory::{MemRegion, MemoryError, MemoryKind};
pub use reactor::{
    local, CallError, IdlePolicy, LocalReactor, MessageSender, PollStatus, Poller, PollerId,
    PollerKind, PollerStats, ReactorConfig, ReactorError, ReactorHandle, ReactorLoad, Reactors,
};
