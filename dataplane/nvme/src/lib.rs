//! NVMe data structures (NVMe Base Specification 2.x and the NVMe over Fabrics additions):
//! submission and completion queue entries, status codes, fabrics commands, properties, identify
//! structures, log pages and features. Pure: bytes in, typed values or a typed error out.
