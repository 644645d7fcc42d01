//! The NVMe/TCP transport (NVMe/TCP Transport Specification 1.x).

pub mod conn;
pub mod group;
pub mod pdu;
pub mod wire;
