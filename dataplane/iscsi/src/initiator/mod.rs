//! The iSCSI initiator used by `gyre-perf` and by tests: discovery (SendTargets), login
//! (None, CHAP, mutual CHAP), SCSI commands with immediate, unsolicited and R2T-driven
//! data, NOP-In answers, logout.
//!
//! [`session::InitiatorSession`] is the sans-I/O Full Feature Phase state machine;
//! [`connection::IscsiInitiator`] drives it (and the login state machine) over a
//! non-blocking `gyre-net` socket.

pub mod cdb;
pub mod connection;
pub mod session;

pub use connection::{discover, ConnectOptions, InitiatorError, IscsiInitiator};
pub use session::{
    CommandError, Completion, DataDirection, InitiatorSession, SessionError, SubmitError,
};
