//! NVMe over Fabrics: the target (subsystems, controllers, namespaces, discovery, ANA) with its
//! TCP transport, and the NVMe/TCP host.

pub mod tcp;
