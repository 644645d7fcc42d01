//! The command line: one subcommand per kind of target, sharing the workload, engine and
//! output options.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use gyre_reactor::{CoreList, IdlePolicy};

use crate::engine::{self, EngineConfig};
use crate::report::{progress_line, Report};
use crate::target::bdev::{BdevOptions, BdevSpec, BdevTarget};
use crate::target::Target;
use crate::units::{parse_duration, parse_nonzero_size, parse_percent, parse_positive_duration};
use crate::workload::{Limit, RwMode, Workload};

#[derive(Debug, Parser)]
#[command(
    name = "gyre-perf",
    version,
    about = "Gyre's load generator: drives a target from pinned, polling reactors and reports IOPS, bandwidth and latency percentiles",
    after_help = "Progress lines go to stderr every second; the final report (a table, or one JSON object with --json) to stdout.\nThe exit status is 0 on success, 1 if any I/O failed, 2 on any other error.\nLogs: RUST_LOG=info (default warn)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run against a bdev created in this process (like SPDK's bdevperf).
    Bdev(BdevArgs),
}

#[derive(Debug, Args)]
pub struct BdevArgs {
    /// The bdev: malloc:SIZE (RAM), null:SIZE (discards writes, reads zeroes), or
    /// uring:PATH[:BLOCKSIZE] (a file or block device through io_uring, O_DIRECT).
    #[arg(long, value_name = "TYPE:ARGS")]
    pub bdev: String,
    /// Block size of the bdev: 512 or 4096 (default 4096 for malloc and null; detected for
    /// uring).
    #[arg(long, value_name = "BYTES", value_parser = parse_block_size_arg)]
    pub block_size: Option<u32>,
    /// uring: open without O_DIRECT (through the page cache).
    #[arg(long)]
    pub buffered: bool,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Options shared by every target.
#[derive(Debug, Args)]
pub struct WorkloadArgs {
    /// Access pattern.
    #[arg(long, value_enum)]
    pub rw: RwMode,
    /// Percentage of reads for randrw [default: 70].
    #[arg(long, value_name = "PCT", value_parser = parse_percent)]
    pub mix: Option<u8>,
    /// Bytes per I/O (4k, 128k, 1M; a multiple of the block size).
    #[arg(long, value_name = "SIZE", default_value = "4k", value_parser = parse_nonzero_size)]
    pub bs: u64,
    /// I/Os in flight per reactor.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub qd: u32,
    /// How long to measure (10s, 500ms, 2m) [default: 10s unless --ios].
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration, conflicts_with = "ios")]
    pub time: Option<Duration>,
    /// Measure this many I/Os in total (shared out over the reactors) instead of a time.
    #[arg(long, value_name = "N")]
    pub ios: Option<u64>,
    /// Warm-up before measuring; its I/O is not counted.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub ramp: Duration,
    /// Seed of the random offsets and read/write choices [default: a fixed seed, so runs
    /// repeat].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

/// Where and how the reactors run.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Cores to run reactors on, one job each: 1, 0-1, 1,3 or a hex mask 0x3 [default: 1, or
    /// 0 on a single-core machine].
    #[arg(long, value_name = "LIST", value_parser = parse_cores)]
    pub cores: Option<CoreList>,
    /// Idle policy of the reactors: poll (busy-poll, for benchmarks) or hybrid[:SPIN]
    /// (poll, then sleep; for tests and shared machines).
    #[arg(long, value_name = "POLICY", default_value = "poll", value_parser = parse_idle)]
    pub idle: IdlePolicy,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// No progress lines.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn parse_cores(s: &str) -> Result<CoreList, String> {
    s.parse::<CoreList>().map_err(|e| e.to_string())
}

pub fn parse_idle(s: &str) -> Result<IdlePolicy, String> {
    s.parse::<IdlePolicy>()
}

/// Core 1 if this process may use it (core 0 usually takes the interrupts and the rest of the
/// system), else the first core it may use.
pub fn default_cores() -> Result<CoreList> {
    let available =
        CoreList::first_available(usize::MAX).context("no core is available to this process")?;
    let core = if available.cores().contains(&1) {
        1
    } else {
        available.cores()[0]
    };
    CoreList::new(vec![core]).context("no core is available to this process")
}

pub fn parse_block_size_arg(s: &str) -> Result<u32, String> {
    crate::target::bdev::parse_block_size(s).map_err(|e| e.to_string())
}

impl WorkloadArgs {
    pub fn to_workload(&self) -> Result<Workload> {
        let limit = match (self.time, self.ios) {
            (_, Some(n)) => Limit::Ios(n),
            (Some(t), None) => Limit::Time(t),
            (None, None) => Limit::Time(Duration::from_secs(10)),
        };
        Workload::new(
            self.rw, self.mix, self.bs, self.qd, limit, self.ramp, self.seed,
        )
    }
}

impl EngineArgs {
    pub fn to_config(&self) -> Result<EngineConfig> {
        let cores = match &self.cores {
            Some(c) => c.clone(),
            None => default_cores()?,
        };
        Ok(EngineConfig::new(cores, self.idle))
    }
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the command; the exit code says whether any I/O failed.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Bdev(args) => {
            let workload = args.workload.to_workload()?;
            let engine = args.engine.to_config()?;
            let spec = BdevSpec::parse(&args.bdev)?;
            let target = BdevTarget::create(
                &args.bdev,
                &spec,
                &BdevOptions {
                    block_size: args.block_size,
                    buffered: args.buffered,
                    writable: workload.writes(),
                },
            )?;
            run_target(Arc::new(target), &workload, &engine, &args.output)
        }
    }
}

/// Runs `workload` against any target and prints the report.
pub fn run_target<T: Target>(
    target: Arc<T>,
    workload: &Workload,
    engine: &EngineConfig,
    output: &OutputArgs,
) -> Result<ExitCode> {
    let info = target.info().clone();
    if !output.json {
        println!("{}", Report::header(&info, workload, engine));
    }
    let quiet = output.quiet;
    let outcome = engine::run(target, workload, engine, |p| {
        if !quiet {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{}", progress_line(p));
        }
    })?;
    let report = Report::new(&info, workload, engine, &outcome);
    if output.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if report.total.errors > 0 {
        eprintln!(
            "gyre-perf: {} I/O(s) failed{}",
            report.total.errors,
            report
                .first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("gyre-perf").chain(args.iter().copied()))
    }

    #[test]
    fn parses_a_full_command_line() {
        let cli = parse(&[
            "bdev",
            "--bdev",
            "malloc:1G",
            "--rw",
            "randrw",
            "--mix",
            "30%",
            "--bs",
            "128k",
            "--qd",
            "8",
            "--time",
            "2s",
            "--ramp",
            "500ms",
            "--cores",
            "0x3",
            "--idle",
            "hybrid",
            "--json",
            "--seed",
            "7",
        ])
        .unwrap();
        let Command::Bdev(a) = cli.command;
        assert_eq!(a.bdev, "malloc:1G");
        let w = a.workload.to_workload().unwrap();
        assert_eq!(w.rw, RwMode::Randrw);
        assert_eq!(w.read_pct, 30);
        assert_eq!(w.io_size, 128 << 10);
        assert_eq!(w.queue_depth, 8);
        assert_eq!(w.limit, Limit::Time(Duration::from_secs(2)));
        assert_eq!(w.ramp, Duration::from_millis(500));
        assert_eq!(w.seed, 7);
        let e = a.engine.to_config().unwrap();
        assert_eq!(e.cores.cores(), &[0, 1]);
        assert_eq!(e.idle, IdlePolicy::hybrid());
        assert!(a.output.json);
    }

    #[test]
    fn defaults() {
        let cli = parse(&["bdev", "--bdev", "null:1G", "--rw", "randread"]).unwrap();
        let Command::Bdev(a) = cli.command;
        let w = a.workload.to_workload().unwrap();
        assert_eq!(w.io_size, 4096);
        assert_eq!(w.queue_depth, 32);
        assert_eq!(w.limit, Limit::Time(Duration::from_secs(10)));
        assert_eq!(w.ramp, Duration::ZERO);
        assert_eq!(w.read_pct, 100);
        assert_eq!(a.engine.idle, IdlePolicy::Poll);
        assert!(!a.output.json);
        let cli = parse(&["bdev", "--bdev", "null:1G", "--rw", "read", "--ios", "100"]).unwrap();
        let Command::Bdev(a) = cli.command;
        assert_eq!(a.workload.to_workload().unwrap().limit, Limit::Ios(100));
    }

    #[test]
    fn core_lists() {
        for (s, want) in [
            ("1", vec![1]),
            ("0-1", vec![0, 1]),
            ("1,3", vec![1, 3]),
            ("0x3", vec![0, 1]),
            ("0xA", vec![1, 3]),
        ] {
            assert_eq!(parse_cores(s).unwrap().cores(), want.as_slice(), "{s}");
        }
        for bad in ["", "x", "3-1", "1,1", "0x", "0x0", "-1"] {
            assert!(parse_cores(bad).is_err(), "'{bad}' should be rejected");
        }
    }

    #[test]
    fn rejects_bad_command_lines() {
        let base = ["bdev", "--bdev", "malloc:1G"];
        for extra in [
            &["--rw", "sideways"][..],
            &["--rw", "read", "--bs", "0"],
            &["--rw", "read", "--bs", "4q"],
            &["--rw", "randrw", "--mix", "101"],
            &["--rw", "read", "--time", "0s"],
            &["--rw", "read", "--time", "1s", "--ios", "5"],
            &["--rw", "read", "--cores", "1-0"],
            &["--rw", "read", "--idle", "sleepy"],
            &["--rw", "read", "--qd", "-1"],
            &[],
        ] {
            let args: Vec<&str> = base.iter().chain(extra.iter()).copied().collect();
            assert!(parse(&args).is_err(), "{args:?} should be rejected");
        }
        // Parsed but invalid as a workload.
        let cli = parse(&["bdev", "--bdev", "m:1", "--rw", "read", "--mix", "50"]).unwrap();
        let Command::Bdev(a) = cli.command;
        assert!(a.workload.to_workload().is_err());
        let cli = parse(&["bdev", "--bdev", "m:1", "--rw", "read", "--qd", "0"]).unwrap();
        let Command::Bdev(a) = cli.command;
        assert!(a.workload.to_workload().is_err());
    }

    #[test]
    fn help_renders() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let err = parse(&["bdev", "--help"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
    }
}
