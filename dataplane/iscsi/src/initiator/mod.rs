//! The iSCSI initiator used by `gyre-perf` and by tests: discovery (SendTargets), login
//! (None, CHAP, mutual CHAP), SCSI commands with immediate, unsolicited and R2T-driven
//! data, NOP-In answers, logout.
//!
//! [`session::InitiatorSession`] is the sans-I/O Full Feature Phase state machine;
//! [`connection::IscsiInitiator`] drives it (and the login state machine) over a
//! non-blocking `gyre-net` socket, with blocking helpers for tests and tools.
//! [`datapath::DataPathConnection`] is the zero-copy data path a logged-in connection turns
//! into for load generation: data straight between the socket and pool buffers.

pub mod cdb;
pub mod connection;
pub mod datapath;
pub mod session;

pub use connection::{discover, ConnectOptions, InitiatorError, IscsiInitiator};
pub use datapath::{
    CommandStatus, DataCompletion, DataPathConnection, DataPathError, DataPathStats,
    DataSubmitError,
};
pub use session::{
    CommandError, Completion, DataDirection, InitiatorSession, SessionError, SubmitError,
};
