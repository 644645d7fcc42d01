//! Logical volumes: thin-provisioned pools with snapshots, clones and resize (work in progress).
