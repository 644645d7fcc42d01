//! Typed decode errors. Each maps to the NVMe status a target returns for it
//! ([`DecodeError::status`]); the NVMe/TCP layer maps its own errors to termination requests.

use crate::status::Status;

/// Why an NVMe structure could not be decoded or encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input is shorter than the structure.
    #[error("truncated: need {needed} bytes, got {got}")]
    Truncated { needed: usize, got: usize },
    /// The output buffer is too small for the structure.
    #[error("output buffer too small: need {needed} bytes, got {got}")]
    BufferTooSmall { needed: usize, got: usize },
    /// A field holds a value the structure does not allow. `offset` is the byte offset of the
    /// field within the structure (for a command: within the 64-byte SQE).
    #[error("invalid {field} at byte {offset}")]
    InvalidField { field: &'static str, offset: usize },
    /// An NVMe Qualified Name field is not a valid NUL-terminated NQN.
    #[error("invalid {field} at byte {offset}: {reason}")]
    InvalidNqn {
        field: &'static str,
        offset: usize,
        reason: NqnError,
    },
    /// The command is not of the kind the accessor expects (wrong opcode or fabrics type).
    #[error("unexpected opcode {opcode:#04x}")]
    WrongOpcode { opcode: u8 },
}

/// What is wrong with an NQN field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NqnError {
    #[error("no NUL terminator within the field")]
    Unterminated,
    #[error("empty")]
    Empty,
    #[error("longer than 223 bytes")]
    TooLong,
    #[error("not UTF-8")]
    NotUtf8,
}

impl DecodeError {
    /// The NVMe completion status a controller returns for a command that failed this way.
    pub fn status(&self) -> Status {
        match self {
            DecodeError::Truncated { .. } => Status::DATA_SGL_LENGTH_INVALID.with_dnr(),
            DecodeError::BufferTooSmall { .. } => Status::INTERNAL_ERROR,
            DecodeError::InvalidField { .. } => Status::INVALID_FIELD.with_dnr(),
            DecodeError::InvalidNqn { .. } => Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
            DecodeError::WrongOpcode { .. } => Status::INVALID_OPCODE.with_dnr(),
        }
    }

    /// Byte offset of the offending field, when known.
    pub fn offset(&self) -> Option<usize> {
        match self {
            DecodeError::InvalidField { offset, .. } | DecodeError::InvalidNqn { offset, .. } => {
                Some(*offset)
            }
            _ => None,
        }
    }
}
