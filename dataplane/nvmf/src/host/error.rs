//! Errors of the host, as typed values: an NVMe status from the controller, a transport
//! failure (socket, termination request, protocol violation), a timeout, or no connection.
//!
//! [`CommandError`] is what one command completes with; it is `Copy` so the I/O path can hand
//! it out without allocating. [`HostError`] is the control path's wider error.

use std::io;

use gyre_nvme::{DecodeError, Status};

use crate::tcp::pdu::{Fes, PduError};

/// Why a connection stopped carrying commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("the target closed the connection")]
    Closed,
    #[error("socket error: {0}")]
    Socket(io::ErrorKind),
    /// The controller sent a C2HTermReq.
    #[error("the target terminated the connection: FES {fes:#06x}{}, FEI {fei:#x}", fes_name(*fes))]
    TerminatedByTarget { fes: u16, fei: u32 },
    /// The target broke the NVMe/TCP protocol (we sent it an H2CTermReq and closed).
    #[error("protocol violation by the target: {0}")]
    Protocol(&'static str),
    /// A PDU failed the codec's checks (we sent an H2CTermReq and closed).
    #[error("invalid PDU from the target: {0}")]
    Pdu(PduError),
    /// A command or keep-alive got no answer in time; the connection was dropped.
    #[error("the target did not answer in time")]
    Timeout,
    /// The host closed the connection (disconnect, or the association was replaced).
    #[error("the connection was closed by the host")]
    LocalClose,
}

fn fes_name(fes: u16) -> &'static str {
    match Fes::from_u16(fes) {
        Some(Fes::InvalidHeaderField) => " (invalid header field)",
        Some(Fes::PduSequenceError) => " (PDU sequence error)",
        Some(Fes::HeaderDigestError) => " (header digest error)",
        Some(Fes::DataTransferOutOfRange) => " (data transfer out of range)",
        Some(Fes::DataTransferLimitExceeded) => " (data transfer limit exceeded)",
        Some(Fes::UnsupportedParameter) => " (unsupported parameter)",
        None => "",
    }
}

impl From<io::Error> for TransportError {
    fn from(e: io::Error) -> Self {
        TransportError::Socket(e.kind())
    }
}

/// How one command ended when it did not complete with success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The controller completed it with this status (SCT/SC, DNR, More, CRD).
    #[error("NVMe status SCT {:#x} SC {:#04x}{}", .0.sct, .0.sc, if .0.dnr { " (DNR)" } else { "" })]
    Status(Status),
    /// The connection failed while the command was in flight: it may or may not have run.
    #[error("transport error: {0}")]
    Transport(TransportError),
    /// The data of a read arrived with a wrong data digest (the connection stays up).
    #[error("data digest mismatch on received data")]
    DataDigest,
    /// The command got no answer within the queue's I/O timeout.
    #[error("command timed out")]
    Timeout,
    /// The queue was not connected when the command was submitted.
    #[error("not connected")]
    NotConnected,
}

impl CommandError {
    /// Whether retrying the same command (on this or another path) may succeed: false for a
    /// status with DNR set.
    pub fn retryable(&self) -> bool {
        match self {
            CommandError::Status(s) => !s.dnr,
            _ => true,
        }
    }

    /// Whether the path (connection) failed rather than the command: a mirror marks the
    /// replica unreachable instead of failing the request.
    pub fn is_path_error(&self) -> bool {
        !matches!(self, CommandError::Status(_))
    }
}

/// Why a submission was refused (the command never reached the queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitRejection {
    #[error("every command slot is in use")]
    QueueFull,
    #[error("the transfer of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("the buffer holds {have} bytes, the command needs {need}")]
    BufferTooShort { have: usize, need: usize },
    #[error("invalid command: {0}")]
    Invalid(&'static str),
}

/// A refused submission, with the caller's buffer handed back.
#[derive(Debug)]
pub struct SubmitError<B> {
    pub reason: SubmitRejection,
    pub buf: Option<B>,
}

impl<B> std::fmt::Display for SubmitError<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.reason.fmt(f)
    }
}

impl<B: std::fmt::Debug> std::error::Error for SubmitError<B> {}

/// Errors of the control path (connecting, admin commands, discovery, disconnect).
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A command of the control path failed with an NVMe status.
    #[error("{command} failed: NVMe status SCT {:#x} SC {:#04x}{}", .status.sct, .status.sc, if .status.dnr { " (DNR)" } else { "" })]
    Status {
        command: &'static str,
        status: Status,
    },
    /// Connect was refused with Connect Invalid Parameters: the byte offset of the parameter
    /// (IPO) and whether it is in the Connect data (IATTR).
    #[error("Connect refused: invalid parameter at byte {offset} of the {}", if *in_data { "Connect data" } else { "command" })]
    ConnectInvalidParameters { in_data: bool, offset: u16 },
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("not connected")]
    NotConnected,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The target answered with data that does not decode or makes no sense.
    #[error("invalid response to {command}: {reason}")]
    InvalidResponse {
        command: &'static str,
        reason: String,
    },
    #[error("gave up reconnecting after {0} attempts")]
    ReconnectExhausted(u32),
}

impl HostError {
    pub(crate) fn from_command(command: &'static str, e: CommandError) -> Self {
        match e {
            CommandError::Status(status) => HostError::Status { command, status },
            CommandError::Transport(t) => HostError::Transport(t),
            CommandError::DataDigest => HostError::InvalidResponse {
                command,
                reason: "data digest mismatch".into(),
            },
            CommandError::Timeout => HostError::Timeout(command),
            CommandError::NotConnected => HostError::NotConnected,
        }
    }

    pub(crate) fn decode(command: &'static str, e: DecodeError) -> Self {
        HostError::InvalidResponse {
            command,
            reason: e.to_string(),
        }
    }

    /// The NVMe status, when the controller answered with one.
    pub fn status(&self) -> Option<Status> {
        match self {
            HostError::Status { status, .. } => Some(*status),
            HostError::ConnectInvalidParameters { .. } => {
                Some(Status::CONNECT_INVALID_PARAMETERS.with_dnr())
            }
            _ => None,
        }
    }
}
