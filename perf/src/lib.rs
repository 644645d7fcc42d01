//! gyre-perf: a load generator in the manner of SPDK's bdevperf.
//!
//! The pieces are independent of the transport so that NVMe/TCP and iSCSI targets can reuse
//! them: a [`workload::Workload`] says what to do; the [`engine`] starts reactors and runs one
//! [`job::Job`] per reactor against a [`target::Target`]; [`report`] turns the jobs' counters and
//! histograms into a table or JSON.

pub mod cli;
pub mod engine;
pub mod job;
pub mod live;
pub mod report;
pub mod rng;
pub mod target;
pub mod units;
pub mod verify;
pub mod workload;
