//! `gyrectl reactor ...`

use clap::Subcommand;
use gyre_api::reactor::StatsParams;
use gyre_api::ClientError;
use serde_json::Value;

use crate::output::{field, table, Output};
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Reactors and how busy they have been since start.
    List,
    /// Load (since start, or over --sample-ms) and per-poller accounting.
    Stats {
        /// Measure over this many milliseconds.
        #[arg(long)]
        sample_ms: Option<u64>,
    },
}

pub fn run(cmd: Command, ctx: &mut Ctx) -> Result<Output, ClientError> {
    Ok(match cmd {
        Command::List => Output::new(ctx.call("reactor_list", None)?, list_table),
        Command::Stats { sample_ms } => {
            let p = serde_json::to_value(StatsParams { sample_ms })
                .map_err(|e| ClientError::BadResponse(e.to_string()))?;
            Output::new(ctx.call("reactor_stats", Some(p))?, stats_table)
        }
    })
}

fn percent(v: &Value) -> String {
    v.get("busy_fraction")
        .and_then(Value::as_f64)
        .map(|f| format!("{:.1}%", f * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn list_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                field(r, "index"),
                field(r, "core"),
                percent(r),
                field(r, "iterations"),
                field(r, "sleeps"),
            ]
        })
        .collect();
    table(&["REACTOR", "CORE", "BUSY", "ITERATIONS", "SLEEPS"], &rows)
}

fn stats_table(v: &Value) -> String {
    let mut out = String::new();
    if let Some(ms) = v.get("sample_ms").and_then(Value::as_u64) {
        out.push_str(&format!("load over the last {ms} ms\n"));
    }
    for r in v
        .get("reactors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "reactor {} on core {}: {} busy\n",
            field(r, "index"),
            field(r, "core"),
            percent(r)
        ));
        let rows: Vec<Vec<String>> = r
            .get("pollers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                let n = |k: &str| p.get(k).and_then(Value::as_u64).unwrap_or(0);
                vec![
                    format!("  {}", field(p, "name")),
                    field(p, "kind"),
                    n("runs").to_string(),
                    n("busy_runs").to_string(),
                    format!("{:.3}", n("busy_ns") as f64 / 1e9),
                ]
            })
            .collect();
        if !rows.is_empty() {
            out.push_str(&table(
                &["  POLLER", "KIND", "RUNS", "BUSY RUNS", "BUSY (s)"],
                &rows,
            ));
        }
    }
    out
}
