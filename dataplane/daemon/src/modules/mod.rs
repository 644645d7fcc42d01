//! The modules the core always has: `reactor`, `bdev` and `nvmf`.

pub mod bdev;
pub mod iscsi;
pub mod lvol;
pub mod nvmf;
pub mod reactor;

pub use bdev::BdevModule;
pub use nvmf::NvmfModule;
pub use reactor::ReactorModule;
