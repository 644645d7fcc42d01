//! The command line: `run TARGET-URL` for any target (see [`crate::target`]), and `bdev
//! --bdev TYPE:ARGS` (the same as `run bdev:TYPE:ARGS`), sharing the workload, engine and
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
use crate::target::{with_target, Target, TargetOptions, TargetRunner};
use crate::units::{
    parse_duration, parse_nonzero_size, parse_percent, parse_positive_duration, parse_size,
};
use crate::workload::{Limit, RwMode, Workload};

const AFTER_HELP: &str = "\
Targets:
  bdev:malloc:SIZE | bdev:null:SIZE | bdev:uring:PATH[:BLOCKSIZE]
        a bdev created in this process (like SPDK's bdevperf)
  bdev:inject:corrupt=LBA:TYPE:ARGS
        test aid: reads of block LBA come back with their first byte flipped
  iscsi://[USER%SECRET@]HOST[:PORT]/IQN/LUN
        an iSCSI target (port 3260 by default, IPv6 hosts in brackets, CHAP with USER%SECRET),
        one session per connection
  nvmf://HOST:PORT/NQN[?ns=1&hdgst=1&ddgst=1]
        NVMe/TCP (port 4420 by default, IPv6 hosts in brackets), one I/O queue per connection

--verify stamps every written block with its LBA, a write generation and the seed (and fills
the rest from them) and checks every read block that this run wrote: read patterns write the
region once first, write patterns read it back at the end, randrw checks as it goes.

Progress lines go to stderr every second (IOPS, MiB/s, p99); the final report (a table, or one
JSON object with --json, schema in the gyre_perf::report docs) to stdout.
Exit status: 0 on success, 1 if any I/O failed or --verify found a mismatch, 2 on any other
error. Logs: RUST_LOG=info (default warn).";

#[derive(Debug, Parser)]
#[command(
    name = "gyre-perf",
    version,
    about = "Gyre's load generator and verifier: drives a target from pinned, polling reactors and reports IOPS, bandwidth and latency percentiles",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run against a target named by a URL (bdev:..., iscsi://..., nvmf://...).
    Run(RunArgs),
    /// Run against a bdev created in this process (the same as `run bdev:TYPE:ARGS`).
    Bdev(BdevArgs),
}

#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct RunArgs {
    /// The target URL.
    #[arg(value_name = "TARGET")]
    pub target: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct BdevArgs {
    /// The bdev: malloc:SIZE (RAM), null:SIZE (discards writes, reads zeroes),
    /// uring:PATH[:BLOCKSIZE] (a file or block device through io_uring, O_DIRECT), or the test
    /// aid inject:corrupt=LBA:TYPE:ARGS.
    #[arg(long, value_name = "TYPE:ARGS")]
    pub bdev: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Everything but the target.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Block size of bdevs created here: 512 or 4096 (default 4096 for malloc and null;
    /// detected for uring).
    #[arg(long, value_name = "BYTES", value_parser = parse_block_size_arg)]
    pub block_size: Option<u32>,
    /// uring: open without O_DIRECT (through the page cache).
    #[arg(long)]
    pub buffered: bool,
    /// Connections (iSCSI sessions, NVMe/TCP I/O queues), spread over the cores, each with
    /// --qd I/Os in flight (a bdev's channel carries its reactor's share) [default: one per
    /// core].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: Option<u32>,
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
    /// I/Os in flight per connection (per reactor for bdevs).
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
    /// Seed of the random offsets, read/write choices and verify patterns [default: a fixed
    /// seed, so runs repeat].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Start of the region to use (a size: 0, 1M, 4G).
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_size)]
    pub offset: u64,
    /// Length of the region to use [default: to the end of the target].
    #[arg(long, value_name = "SIZE", value_parser = parse_nonzero_size)]
    pub size: Option<u64>,
    /// At most this many I/Os per second in total.
    #[arg(long, value_name = "IOPS", value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Stamp written blocks and check read ones (see below); exit 1 on a mismatch.
    #[arg(long)]
    pub verify: bool,
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
        let mut w = Workload::new(
            self.rw, self.mix, self.bs, self.qd, limit, self.ramp, self.seed,
        )?;
        w.region_offset = self.offset;
        w.region_size = self.size;
        w.rate = self.rate;
        w.verify = self.verify;
        Ok(w)
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

impl CommonArgs {
    /// The workload, engine configuration and target options these arguments describe.
    pub fn resolve(&self) -> Result<(Workload, EngineConfig, TargetOptions)> {
        let workload = self.workload.to_workload()?;
        let mut engine = self.engine.to_config()?;
        if let Some(n) = self.connections {
            engine.connections = n as usize;
        }
        let opts = TargetOptions {
            writable: workload.writes() || workload.verify,
            queue_depth: workload.queue_depth,
            io_size: workload.io_size,
            connections: engine.connections,
            block_size: self.block_size,
            buffered: self.buffered,
        };
        Ok((workload, engine, opts))
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

/// Runs the command; the exit code says whether any I/O failed or verify found a mismatch.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let (url, common) = match &cli.command {
        Command::Run(a) => (a.target.clone(), &a.common),
        Command::Bdev(a) => (format!("bdev:{}", a.bdev), &a.common),
    };
    let (workload, engine, opts) = common.resolve()?;
    with_target(
        &url,
        &opts,
        Runner {
            workload: &workload,
            engine: &engine,
            output: &common.output,
        },
    )
}

/// Runs the workload against whatever target the URL gave.
struct Runner<'a> {
    workload: &'a Workload,
    engine: &'a EngineConfig,
    output: &'a OutputArgs,
}

impl TargetRunner for Runner<'_> {
    type Output = ExitCode;
    fn run<T: Target>(self, target: Arc<T>) -> Result<ExitCode> {
        run_target(target, self.workload, self.engine, self.output)
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
    }
    if let Some(v) = report.verify.as_ref().filter(|v| v.mismatches > 0) {
        eprintln!(
            "gyre-perf: verify: {} block(s) did not hold what was written{}",
            v.mismatches,
            v.first_mismatch
                .as_ref()
                .map(|m| format!("; first: {}", m.message))
                .unwrap_or_default()
        );
    }
    Ok(if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
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
        let Command::Bdev(a) = cli.command else {
            panic!("bdev")
        };
        assert_eq!(a.bdev, "malloc:1G");
        let a = a.common;
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
        let Command::Bdev(BdevArgs { common: a, .. }) = cli.command else {
            panic!("bdev")
        };
        let w = a.workload.to_workload().unwrap();
        assert!(!w.verify);
        assert_eq!((w.region_offset, w.region_size, w.rate), (0, None, None));
        assert_eq!(w.io_size, 4096);
        assert_eq!(w.queue_depth, 32);
        assert_eq!(w.limit, Limit::Time(Duration::from_secs(10)));
        assert_eq!(w.ramp, Duration::ZERO);
        assert_eq!(w.read_pct, 100);
        assert_eq!(a.engine.idle, IdlePolicy::Poll);
        assert!(!a.output.json);
        let cli = parse(&["bdev", "--bdev", "null:1G", "--rw", "read", "--ios", "100"]).unwrap();
        let Command::Bdev(BdevArgs { common: a, .. }) = cli.command else {
            panic!("bdev")
        };
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
            &["--rw", "read", "--rate", "0"],
            &["--rw", "read", "--connections", "0"],
            &["--rw", "read", "--size", "0"],
            &[],
        ] {
            let args: Vec<&str> = base.iter().chain(extra.iter()).copied().collect();
            assert!(parse(&args).is_err(), "{args:?} should be rejected");
        }
        // Parsed but invalid as a workload.
        for extra in [&["--mix", "50"][..], &["--qd", "0"]] {
            let mut args = vec!["bdev", "--bdev", "m:1", "--rw", "read"];
            args.extend_from_slice(extra);
            let cli = parse(&args).unwrap();
            let Command::Bdev(BdevArgs { common: a, .. }) = cli.command else {
                panic!("bdev")
            };
            assert!(a.workload.to_workload().is_err(), "{args:?}");
        }
    }

    #[test]
    fn a_url_and_the_new_workload_options() {
        let cli = parse(&[
            "run",
            "iscsi://alice%secret@[::1]:3261/iqn.2016-06.io.gyre:malloc0/0",
            "--rw",
            "randrw",
            "--verify",
            "--offset",
            "1M",
            "--size",
            "64M",
            "--rate",
            "5000",
            "--connections",
            "4",
            "--cores",
            "0-1",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("run")
        };
        assert_eq!(
            a.target,
            "iscsi://alice%secret@[::1]:3261/iqn.2016-06.io.gyre:malloc0/0"
        );
        let (w, e, o) = a.common.resolve().unwrap();
        assert!(w.verify && o.writable);
        assert_eq!((w.region_offset, w.region_size), (1 << 20, Some(64 << 20)));
        assert_eq!(w.rate, Some(5000));
        assert_eq!((e.connections, o.connections), (4, 4));
        let cli = parse(&["run", "bdev:null:1G", "--rw", "read", "--cores", "0-1"]).unwrap();
        let Command::Run(a) = cli.command else {
            panic!("run")
        };
        let (w, e, o) = a.common.resolve().unwrap();
        assert_eq!(e.connections, 2, "one per core by default");
        assert!(!o.writable && !w.verify);
    }

    #[test]
    fn help_renders() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let err = parse(&["bdev", "--help"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
    }
}
