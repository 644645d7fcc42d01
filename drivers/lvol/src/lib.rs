//! Logical volumes: thin-provisioned pools with snapshots, clones and resize.

pub mod meta;
