//! NVMe data structures (NVMe Base Specification 2.x, the NVM Command Set and the NVMe over
//! Fabrics additions): submission and completion queue entries, status codes, fabrics commands,
//! controller properties, identify structures, log pages, features and asynchronous events.
//!
//! Pure: bytes in, typed values or a typed [`DecodeError`] out; encoders write into buffers the
//! caller provides. Command and completion parse/encode never allocate, so the I/O path of a
//! target, a host, a PCIe driver or a fuzzer can share them. Everything on the wire is
//! little-endian.

pub mod aer;
pub mod command;
pub mod completion;
pub mod error;
pub mod fabrics;
pub mod features;
pub mod identify;
pub mod log;
pub mod properties;
pub mod sgl;
pub mod status;
mod wire;

pub use wire::{ascii_padded, ascii_trimmed};

pub use aer::{AsyncEvent, AsyncEventConfig, AsyncEventType};
pub use command::{
    AbortCommand, AdminOpcode, Command, DsmCommand, DsmRange, Fuse, GetLogPageCommand,
    IdentifyCommand, IoOpcode, RwCommand, WriteZeroesCommand, SQE_SIZE,
};
pub use completion::{Completion, CQE_SIZE};
pub use error::DecodeError;
pub use fabrics::{
    ConnectCommand, ConnectData, ConnectResponse, DisconnectCommand, FabricsType, Nqn,
    PropertyGetCommand, PropertySetCommand, PropertySize,
};
pub use features::{FeatureId, FeatureSelect, GetFeaturesCommand, SetFeaturesCommand};
pub use identify::{
    ActiveNamespaceList, Cns, IdentifyController, IdentifyNamespace, IdentifyNamespaceIndependent,
    IdentifyNvmController, LbaFormat, NsIdDescriptor, NsIdDescriptorList,
};
pub use properties::{Cap, Cc, Csts, Version};
pub use sgl::{SglDescriptor, SglKind};
pub use status::{Status, StatusCodeType};
