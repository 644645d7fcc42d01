//! The `reactor` module: what each reactor does, and how busy it is.

use std::time::Duration;

use gyre_api::core::NoParams;
use gyre_api::reactor::{PollerInfo, ReactorInfo, ReactorStats, StatsParams, StatsResult};
use gyre_reactor::{PollerKind, ReactorLoad};
use serde_json::Value;

use crate::context::DaemonContext;
use crate::module::{parse, rank, to_result, MethodInfo, Module, ParamInfo, RpcError};

/// Longest sampling interval `reactor_stats` accepts.
pub const MAX_SAMPLE: Duration = Duration::from_secs(60);

pub struct ReactorModule {
    ctx: DaemonContext,
}

impl ReactorModule {
    pub fn new(ctx: DaemonContext) -> Self {
        ReactorModule { ctx }
    }

    fn list(&self) -> Vec<ReactorInfo> {
        self.ctx
            .reactors()
            .iter()
            .map(|r| {
                let l = r.load();
                ReactorInfo {
                    index: r.index(),
                    core: r.core(),
                    actual_core: r.actual_core(),
                    busy_fraction: l.busy_fraction(),
                    busy_ns: l.busy_ns,
                    idle_ns: l.idle_ns,
                    iterations: l.iterations,
                    sleeps: l.sleeps,
                }
            })
            .collect()
    }

    fn stats(&self, p: StatsParams) -> Result<StatsResult, RpcError> {
        let before: Vec<ReactorLoad> = self.ctx.reactors().iter().map(|r| r.load()).collect();
        let sample = match p.sample_ms {
            Some(ms) => {
                let d = Duration::from_millis(ms);
                if d.is_zero() || d > MAX_SAMPLE {
                    return Err(RpcError::invalid_param(
                        "sample_ms",
                        format!("must be between 1 and {}", MAX_SAMPLE.as_millis()),
                    ));
                }
                std::thread::sleep(d);
                Some(ms)
            }
            None => None,
        };
        let mut reactors = Vec::new();
        for (i, r) in self.ctx.reactors().iter().enumerate() {
            let now = r.load();
            let l = match sample {
                Some(_) => now.since(&before[i]),
                None => now,
            };
            let pollers = r
                .poller_stats(self.ctx.call_timeout())
                .map_err(|e| RpcError::failed(format!("reactor {}: {e}", r.index())))?
                .into_iter()
                .map(|p| {
                    let (kind, period_us) = match p.kind {
                        PollerKind::Active => ("active", None),
                        PollerKind::Timed(d) => ("timed", Some(d.as_micros() as u64)),
                        PollerKind::EndOfIteration => ("end_of_iteration", None),
                    };
                    PollerInfo {
                        name: p.name,
                        kind: kind.to_string(),
                        period_us,
                        runs: p.runs,
                        busy_runs: p.busy_runs,
                        busy_ns: p.busy_ns,
                        idle_ns: p.idle_ns,
                    }
                })
                .collect();
            reactors.push(ReactorStats {
                index: r.index(),
                core: r.core(),
                busy_fraction: l.busy_fraction(),
                busy_ns: l.busy_ns,
                idle_ns: l.idle_ns,
                iterations: l.iterations,
                sleeps: l.sleeps,
                pollers,
            });
        }
        Ok(StatsResult {
            sample_ms: sample,
            reactors,
        })
    }
}

const METHODS: &[MethodInfo] = &[
    MethodInfo {
        name: "reactor_list",
        description: "List reactors: index, core, busy fraction since start",
        params: &[],
        mutates: false,
    },
    MethodInfo {
        name: "reactor_stats",
        description: "Per-reactor load (since start, or over sample_ms) and per-poller accounting",
        params: &[ParamInfo::optional(
            "sample_ms",
            "integer",
            "measure the load over this many milliseconds (1..60000)",
        )],
        mutates: false,
    },
];

impl Module for ReactorModule {
    fn name(&self) -> &'static str {
        "reactor"
    }

    fn rank(&self) -> u32 {
        rank::REACTOR
    }

    fn methods(&self) -> Vec<MethodInfo> {
        METHODS.to_vec()
    }

    fn handle(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "reactor_list" => {
                let _: NoParams = parse(params)?;
                to_result(&self.list())
            }
            "reactor_stats" => to_result(&self.stats(parse(params)?)?),
            _ => Err(RpcError::internal(format!("reactor: no method {method}"))),
        }
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register_collector(Box::new(crate::metrics::ReactorCollector::new(
            self.ctx.clone(),
        )));
    }
}
