//! The NVMe/TCP transport (NVMe/TCP Transport Specification 1.x).

pub mod conn;
pub mod digest;
pub mod group;
pub mod pdu;
#[cfg(test)]
mod pdu_tests;
