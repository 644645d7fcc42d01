//! The NVMe/TCP transport (NVMe/TCP Transport Specification 1.x).

pub mod pdu;
