//! Transport-independent SCSI block target emulation (SPC-4, SBC-3) over Gyre bdevs.
//!
//! A [`ScsiLun`] (shared, `Send + Sync`) is a logical unit over an open bdev: identity,
//! persistent reservations, unit attentions, mode parameters and ALUA states. Each reactor
//! creates a [`LunChannel`] for it; a transport (iSCSI today, iSER or vhost-scsi later)
//! asks the channel what a CDB will transfer ([`LunChannel::prepare`]), submits the task with
//! its data-out buffers ([`LunChannel::submit`]) and polls completions that carry SCSI
//! status, sense data and the data-in buffers to send without copying
//! ([`LunChannel::poll`]).
//!
//! Wire input is untrusted: every CDB and parameter list is decoded by pure functions
//! ([`cdb::decode`], [`emulate::parse_unmap`], [`emulate::parse_mode_select`],
//! [`pr::parse_pr_out`]) that answer with the sense SPC-4/SBC-3 prescribe, never a panic.

pub mod cdb;
pub mod channel;
pub mod emulate;
pub mod lun;
pub mod pr;
/// The range lock is the bdev's, shared with every other consumer of the bdev.
pub use gyre_bdev::rangelock;
pub mod sense;

pub use cdb::{decode, Cdb, Command, CommandInfo, DataDirection, Limits};
pub use channel::{LunChannel, ScsiCompletion, ScsiStatus, ScsiTask, TaskAttr};
pub use emulate::{encode_lun, report_luns};
pub use lun::{
    AluaState, LunConfig, NexusId, NexusTable, PortGroup, ResetKind, ScsiLun, TmfResponse,
};
pub use sense::{Asc, Sense, SenseBuf, SenseKey};

/// Errors of the control path (creating LUNs and channels, changing their settings).
#[derive(Debug, thiserror::Error)]
pub enum ScsiError {
    #[error(transparent)]
    Bdev(#[from] gyre_bdev::BdevError),
    #[error(transparent)]
    Pool(#[from] gyre_reactor::PoolError),
    #[error("invalid LUN configuration: {0}")]
    InvalidConfig(String),
    #[error("no target port group {0}")]
    UnknownPortGroup(u16),
}
