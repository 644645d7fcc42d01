//! Parameters and results of the `reactor` module's methods.

use serde::{Deserialize, Serialize};

/// `reactor_list` returns one per reactor: its load since it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReactorInfo {
    pub index: usize,
    pub core: usize,
    /// Where its thread found itself after pinning.
    pub actual_core: Option<usize>,
    /// Share of time in iterations that did work, in [0, 1].
    pub busy_fraction: f64,
    pub busy_ns: u64,
    pub idle_ns: u64,
    pub iterations: u64,
    pub sleeps: u64,
}

/// `reactor_stats`: with `sample_ms`, measures the load over that interval (at most 60 s)
/// instead of since start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_ms: Option<u64>,
}

/// One poller's accounting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollerInfo {
    pub name: String,
    /// `active`, `timed` or `end_of_iteration`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_us: Option<u64>,
    pub runs: u64,
    pub busy_runs: u64,
    pub busy_ns: u64,
    pub idle_ns: u64,
}

/// One reactor in `reactor_stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReactorStats {
    pub index: usize,
    pub core: usize,
    pub busy_fraction: f64,
    pub busy_ns: u64,
    pub idle_ns: u64,
    pub iterations: u64,
    pub sleeps: u64,
    /// Totals since the poller was registered (not limited to the sample).
    pub pollers: Vec<PollerInfo>,
}

/// The result of `reactor_stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsResult {
    /// The sampling interval, or none for totals since start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_ms: Option<u64>,
    pub reactors: Vec<ReactorStats>,
}
