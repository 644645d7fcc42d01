//! NVMe/TCP PDUs: pure encode and decode.
