//! The modules the core always has: `reactor` and `bdev`.

pub mod bdev;
pub mod reactor;

pub use bdev::BdevModule;
pub use reactor::ReactorModule;
