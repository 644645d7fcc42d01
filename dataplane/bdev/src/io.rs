//! I/O requests, completions and their status.

use std::fmt;

use gyre_reactor::SgList;

/// The operations a bdev may support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum IoOp {
    Read = 0,
    Write = 1,
    Flush = 2,
    WriteZeroes = 3,
    Unmap = 4,
    Reset = 5,
    Compare = 6,
}

impl IoOp {
    pub const ALL: [IoOp; 7] = [
        IoOp::Read,
        IoOp::Write,
        IoOp::Flush,
        IoOp::WriteZeroes,
        IoOp::Unmap,
        IoOp::Reset,
        IoOp::Compare,
    ];

    /// Whether the op moves data through the request's buffers.
    pub fn has_data(self) -> bool {
        matches!(self, IoOp::Read | IoOp::Write | IoOp::Compare)
    }

    /// Whether the op addresses a block range that must lie within the device.
    pub fn has_range(self) -> bool {
        !matches!(self, IoOp::Flush | IoOp::Reset)
    }

    pub fn name(self) -> &'static str {
        match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Flush => "flush",
            IoOp::WriteZeroes => "write_zeroes",
            IoOp::Unmap => "unmap",
            IoOp::Reset => "reset",
            IoOp::Compare => "compare",
        }
    }
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`IoOp`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoTypes(u8);

impl IoTypes {
    pub const NONE: IoTypes = IoTypes(0);

    pub fn all() -> IoTypes {
        IoOp::ALL.iter().fold(IoTypes::NONE, |s, &op| s.with(op))
    }

    pub const fn with(self, op: IoOp) -> IoTypes {
        IoTypes(self.0 | 1 << op as u8)
    }

    pub const fn without(self, op: IoOp) -> IoTypes {
        IoTypes(self.0 & !(1 << op as u8))
    }

    pub const fn supports(self, op: IoOp) -> bool {
        self.0 & (1 << op as u8) != 0
    }

    pub fn iter(self) -> impl Iterator<Item = IoOp> {
        IoOp::ALL.into_iter().filter(move |&op| self.supports(op))
    }
}

/// Per-request flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoFlags {
    /// Force unit access: the write is durable when it completes.
    pub fua: bool,
}

/// Why an I/O failed. Small and `Copy`: built on the I/O path without allocation.
///
/// [`IoError::is_device_failure`] separates failures of the device (a mirror would fail the
/// replica) from failures of the request (the caller's fault; the device is fine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    #[error("blocks {offset}+{count} are outside the device ({num_blocks} blocks)")]
    OutOfRange {
        offset: u64,
        count: u64,
        num_blocks: u64,
    },
    #[error("{0} is not supported by this bdev")]
    Unsupported(IoOp),
    #[error("buffers hold {have} bytes, the request needs {need}")]
    BufferTooSmall { need: u64, have: u64 },
    #[error("a {0} must cover at least one block")]
    Empty(IoOp),
    #[error("data differs at byte {offset} of the request")]
    Miscompare { offset: u64 },
    #[error("no space left to allocate blocks")]
    NoSpace,
    #[error("the request was aborted")]
    Aborted,
    #[error("the bdev is open read-only")]
    ReadOnly,
    #[error("the bdev has been removed")]
    Removed,
    #[error("device I/O error (errno {0})")]
    Device(i32),
}

impl IoError {
    /// True if the failure says the device is unusable, not that the request was wrong.
    pub fn is_device_failure(&self) -> bool {
        matches!(self, IoError::Device(_) | IoError::Removed)
    }
}

pub type IoStatus = Result<(), IoError>;

/// One block I/O. The request owns its buffers while in flight and gives them back in its
/// [`IoCompletion`].
#[derive(Debug)]
pub struct IoRequest {
    pub op: IoOp,
    pub offset_blocks: u64,
    pub num_blocks: u64,
    pub flags: IoFlags,
    /// Data to write or compare, or room for data read. Must hold at least
    /// `num_blocks * block_size` bytes for data ops; unused otherwise.
    pub buf: SgList,
    /// The submitter's own identification of the request, returned untouched.
    pub tag: u64,
    /// Tick at which a channel accepted the request (for latency statistics).
    pub(crate) submitted_at: u64,
}

impl IoRequest {
    pub fn new(op: IoOp, offset_blocks: u64, num_blocks: u64, buf: SgList, tag: u64) -> Self {
        IoRequest {
            op,
            offset_blocks,
            num_blocks,
            flags: IoFlags::default(),
            buf,
            tag,
            submitted_at: 0,
        }
    }

    /// A request without data (flush, reset, write zeroes, unmap).
    pub fn control(op: IoOp, offset_blocks: u64, num_blocks: u64, tag: u64) -> Self {
        Self::new(op, offset_blocks, num_blocks, SgList::new(), tag)
    }
}

/// A finished request, with its status and its buffers.
#[derive(Debug)]
pub struct IoCompletion {
    pub status: IoStatus,
    pub req: IoRequest,
}
