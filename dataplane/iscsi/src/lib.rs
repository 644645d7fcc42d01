//! iSCSI (RFC 7143): PDU codec, login and negotiation, CHAP, the target and the initiator.
//!
//! The wire layer here is pure: bytes in, typed values or a typed error out, no I/O. The
//! target (in `gyred`) and the initiator (for `gyre-perf` and tests) share it, so every
//! piece works in both directions:
//!
//! - [`bhs`]: the 48-byte Basic Header Segment of every opcode; [`lun`]: SAM LUN encodings.
//! - [`framing`]: AHS, digests, padding, PDU layout for a streaming receiver; [`digest`]:
//!   CRC32C, incremental over pool buffers.
//! - [`text`]: `key=value` lists and their reassembly across PDUs.
//! - [`negotiate`]: operational keys, defaults, result functions, [`negotiate::SessionParams`].
//! - [`chap`]: CHAP (RFC 1994) with MD5, both roles.
//! - [`login`]: the login state machines, target and initiator side.
//! - [`sendtargets`]: building and parsing SendTargets responses.
//! - [`initiator`]: the initiator session over a non-blocking socket.
//! - [`target`]: the target: portal and initiator groups, targets and LUNs over `gyre-scsi`,
//!   sessions, and per-reactor poll groups serving connections with zero-copy data.

pub mod bhs;
pub mod chap;
pub mod digest;
pub mod framing;
pub mod initiator;
pub mod login;
pub mod lun;
pub mod negotiate;
pub mod sendtargets;
pub mod target;
pub mod text;

pub use bhs::{Bhs, BhsBody, BhsError, LoginStage, LoginStatus, Opcode};
pub use lun::Lun;
