//! The in-process target: a bdev created from `--bdev TYPE:ARGS` (or the URL `bdev:TYPE:ARGS`),
//! opened once, with one [`BdevChannel`] per reactor.
//!
//! `inject:corrupt=LBA:TYPE:ARGS` is a test aid: the bdev `TYPE:ARGS` under a fault injector
//! that flips the first byte of block `LBA` in every read covering it, so that `--verify` can
//! be shown to catch corruption.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use gyre_bdev::{
    Bdev, BdevChannel, BdevDesc, BdevRegistry, InjectBdev, IoRequest, MallocBdev, NullBdev,
};
use gyre_reactor::SgList;

use super::{Completed, IoSpec, QueuePlan, Target, TargetInfo, TargetOptions, TargetQueue};
use crate::units::parse_nonzero_size;

/// Block size of RAM and null bdevs unless `--block-size` says otherwise.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;

/// A parsed `--bdev` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BdevSpec {
    /// `malloc:SIZE`: a RAM disk.
    Malloc { size: u64 },
    /// `null:SIZE`: reads return zeroes, writes vanish.
    Null { size: u64 },
    /// `uring:PATH[:BLOCKSIZE]`: a file or block device through io_uring.
    Uring {
        path: String,
        block_size: Option<u32>,
    },
    /// `inject:corrupt=LBA:TYPE:ARGS`: reads of block `LBA` come back with its first byte
    /// flipped (a test aid for `--verify`).
    Inject {
        corrupt_lba: u64,
        base: Box<BdevSpec>,
    },
}

impl BdevSpec {
    pub fn parse(s: &str) -> Result<Self> {
        let (kind, rest) = s.split_once(':').with_context(|| {
            format!(
                "invalid --bdev '{s}': expected malloc:SIZE, null:SIZE or uring:PATH[:BLOCKSIZE]"
            )
        })?;
        match kind {
            "inject" => {
                let (fault, base) = rest.split_once(':').with_context(|| {
                    format!("invalid --bdev '{s}': expected inject:corrupt=LBA:TYPE:ARGS")
                })?;
                let lba = fault
                    .strip_prefix("corrupt=")
                    .and_then(|n| n.parse::<u64>().ok())
                    .with_context(|| {
                        format!("invalid --bdev '{s}': expected inject:corrupt=LBA:TYPE:ARGS")
                    })?;
                let base = BdevSpec::parse(base)?;
                if matches!(base, BdevSpec::Inject { .. }) {
                    bail!("invalid --bdev '{s}': inject bdevs do not stack");
                }
                Ok(BdevSpec::Inject {
                    corrupt_lba: lba,
                    base: Box::new(base),
                })
            }
            "malloc" | "null" => {
                let size = parse_nonzero_size(rest)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("invalid --bdev '{s}'"))?;
                Ok(if kind == "malloc" {
                    BdevSpec::Malloc { size }
                } else {
                    BdevSpec::Null { size }
                })
            }
            "uring" => {
                if rest.is_empty() {
                    bail!("invalid --bdev '{s}': uring needs a path");
                }
                // A trailing `:NUMBER` is a block size; any other colon belongs to the path.
                if let Some((path, bs)) = rest.rsplit_once(':') {
                    if !bs.is_empty() && bs.chars().all(|c| c.is_ascii_digit()) {
                        let bs = parse_block_size(bs)
                            .with_context(|| format!("invalid --bdev '{s}'"))?;
                        if path.is_empty() {
                            bail!("invalid --bdev '{s}': uring needs a path");
                        }
                        return Ok(BdevSpec::Uring {
                            path: path.to_string(),
                            block_size: Some(bs),
                        });
                    }
                }
                Ok(BdevSpec::Uring {
                    path: rest.to_string(),
                    block_size: None,
                })
            }
            other => bail!(
                "invalid --bdev '{s}': unknown bdev type '{other}' (use malloc, null, uring or inject)"
            ),
        }
    }

    pub fn module(&self) -> &'static str {
        match self {
            BdevSpec::Malloc { .. } => "malloc",
            BdevSpec::Null { .. } => "null",
            BdevSpec::Uring { .. } => "uring",
            BdevSpec::Inject { .. } => "inject",
        }
    }
}

/// A block size as bdevs accept it.
pub fn parse_block_size(s: &str) -> Result<u32> {
    match s.trim().parse::<u32>() {
        Ok(bs @ (512 | 4096)) => Ok(bs),
        _ => bail!("block size '{s}' is not supported (512 or 4096)"),
    }
}

/// Options of the bdev target beyond the spec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BdevOptions {
    /// `--block-size`.
    pub block_size: Option<u32>,
    /// Open files without O_DIRECT (uring only).
    pub buffered: bool,
    /// Open for writing.
    pub writable: bool,
}

/// The bdev target. Keeps the registry alive and the bdev open for the whole run.
pub struct BdevTarget {
    info: TargetInfo,
    desc: BdevDesc,
    _registry: BdevRegistry,
}

impl BdevTarget {
    /// The target of a `bdev:` URL (`rest` is what follows `bdev:`).
    pub fn from_spec_text(rest: &str, opts: &TargetOptions) -> Result<Self> {
        let spec = BdevSpec::parse(rest)?;
        Self::create(
            rest,
            &spec,
            &BdevOptions {
                block_size: opts.block_size,
                buffered: opts.buffered,
                writable: opts.writable,
            },
        )
    }

    /// Creates the bdev described by `spec`, registers it and opens it once.
    pub fn create(spec_text: &str, spec: &BdevSpec, opts: &BdevOptions) -> Result<Self> {
        let registry = BdevRegistry::new();
        let (name, direct) = match spec {
            BdevSpec::Inject { corrupt_lba, base } => {
                let base_name = format!("{}0", base.module());
                let (bdev, direct) = create_bdev(spec_text, &base_name, base, opts)?;
                registry
                    .register(bdev)
                    .context("cannot register the bdev")?;
                let inject = InjectBdev::create(&registry, "inject0", &base_name)
                    .context("cannot create the inject bdev")?;
                inject.faults().corrupt_reads_of(Some(*corrupt_lba));
                registry
                    .register(inject)
                    .context("cannot register the inject bdev")?;
                ("inject0".to_string(), direct)
            }
            _ => {
                let name = format!("{}0", spec.module());
                let (bdev, direct) = create_bdev(spec_text, &name, spec, opts)?;
                registry
                    .register(bdev)
                    .context("cannot register the bdev")?;
                (name, direct)
            }
        };
        let desc = registry
            .open(&name, opts.writable, "gyre-perf", None)
            .with_context(|| format!("cannot open bdev {name}"))?;
        let i = desc.info();
        let info = TargetInfo {
            kind: "bdev",
            spec: spec_text.to_string(),
            name: i.name().to_string(),
            module: i.module().to_string(),
            block_size: i.block_size(),
            num_blocks: i.num_blocks(),
            writable: opts.writable,
            direct,
        };
        Ok(BdevTarget {
            info,
            desc,
            _registry: registry,
        })
    }
}

/// Creates (without registering) the bdev `name` of a non-inject `spec`; returns it and, for
/// files, whether it got O_DIRECT.
fn create_bdev(
    spec_text: &str,
    name: &str,
    spec: &BdevSpec,
    opts: &BdevOptions,
) -> Result<(Arc<dyn Bdev>, Option<bool>)> {
    let bdev: Arc<dyn Bdev> = match spec {
        BdevSpec::Malloc { size } => {
            let bs = opts.block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
            MallocBdev::create(name, *size, bs)
                .with_context(|| format!("cannot create malloc bdev of {size} bytes"))?
        }
        BdevSpec::Null { size } => {
            let bs = opts.block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
            NullBdev::create(name, *size, bs)
                .with_context(|| format!("cannot create null bdev of {size} bytes"))?
        }
        BdevSpec::Uring { path, block_size } => {
            let bs = match (block_size, opts.block_size) {
                (Some(a), Some(b)) if *a != b => {
                    bail!("--bdev {spec_text} says block size {a} but --block-size says {b}")
                }
                (a, b) => a.or(b),
            };
            let (bdev, is_direct) = open_uring(name, path, bs, !opts.buffered)?;
            if !opts.buffered && !is_direct {
                tracing::warn!(
                    path = %path,
                    "the filesystem refused O_DIRECT: I/O goes through the page cache"
                );
            }
            return Ok((bdev, Some(is_direct)));
        }
        BdevSpec::Inject { .. } => bail!("invalid --bdev '{spec_text}': inject bdevs do not stack"),
    };
    Ok((bdev, None))
}

/// Opens a file or block device through the io_uring driver; returns the bdev and whether
/// it got O_DIRECT.
fn open_uring(
    name: &str,
    path: &str,
    block_size: Option<u32>,
    direct: bool,
) -> Result<(Arc<dyn Bdev>, bool)> {
    let opts = gyre_uring::UringOptions { block_size, direct };
    let bdev = gyre_uring::UringBdev::open(name, std::path::Path::new(path), &opts)
        .with_context(|| format!("cannot open {path} through io_uring"))?;
    let is_direct = bdev.is_direct();
    Ok((bdev, is_direct))
}

impl Target for BdevTarget {
    type Queue = BdevQueue;

    fn info(&self) -> &TargetInfo {
        &self.info
    }

    fn open_queue(&self, _plan: &QueuePlan) -> Result<BdevQueue> {
        // One channel per reactor carries every "connection" of the plan.
        let ch = self
            .desc
            .channel()
            .with_context(|| format!("cannot create an I/O channel to {}", self.info.name))?;
        Ok(BdevQueue { ch })
    }
}

/// A reactor's channel to the bdev.
pub struct BdevQueue {
    ch: BdevChannel,
}

impl TargetQueue for BdevQueue {
    #[inline]
    fn submit(&mut self, io: IoSpec, buf: SgList) {
        self.ch.submit(IoRequest::new(
            io.op,
            io.offset_blocks,
            io.num_blocks,
            buf,
            io.tag,
        ));
    }

    #[inline]
    fn poll<F: FnMut(Completed)>(&mut self, mut done: F) -> usize {
        self.ch.poll(|c| {
            done(Completed {
                tag: c.req.tag,
                buf: c.req.buf,
                status: c.status,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bdev_specs() {
        assert_eq!(
            BdevSpec::parse("malloc:1G").unwrap(),
            BdevSpec::Malloc { size: 1 << 30 }
        );
        assert_eq!(
            BdevSpec::parse("null:64M").unwrap(),
            BdevSpec::Null { size: 64 << 20 }
        );
        assert_eq!(
            BdevSpec::parse("uring:/var/tmp/x.img").unwrap(),
            BdevSpec::Uring {
                path: "/var/tmp/x.img".into(),
                block_size: None
            }
        );
        assert_eq!(
            BdevSpec::parse("uring:/dev/nvme0n1:512").unwrap(),
            BdevSpec::Uring {
                path: "/dev/nvme0n1".into(),
                block_size: Some(512)
            }
        );
        assert_eq!(
            BdevSpec::parse("uring:/weird:name").unwrap(),
            BdevSpec::Uring {
                path: "/weird:name".into(),
                block_size: None
            }
        );
        assert_eq!(
            BdevSpec::parse("inject:corrupt=5:malloc:1M").unwrap(),
            BdevSpec::Inject {
                corrupt_lba: 5,
                base: Box::new(BdevSpec::Malloc { size: 1 << 20 })
            }
        );
        for bad in [
            "malloc",
            "malloc:",
            "malloc:0",
            "malloc:1X",
            "null:-1",
            "uring:",
            "uring::4096",
            "uring:/x:1000",
            "nvme:/x",
            "inject:corrupt=x:malloc:1M",
            "inject:malloc:1M",
            "inject:corrupt=1:inject:corrupt=2:malloc:1M",
            "",
        ] {
            assert!(BdevSpec::parse(bad).is_err(), "'{bad}' should be rejected");
        }
    }

    #[test]
    fn block_sizes() {
        assert_eq!(parse_block_size("512").unwrap(), 512);
        assert_eq!(parse_block_size("4096").unwrap(), 4096);
        assert!(parse_block_size("1024").is_err());
        assert!(parse_block_size("x").is_err());
    }

    #[test]
    fn creates_and_opens_ram_bdevs() {
        let spec = BdevSpec::parse("malloc:1M").unwrap();
        let t = BdevTarget::create(
            "malloc:1M",
            &spec,
            &BdevOptions {
                block_size: Some(512),
                writable: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(t.info().block_size, 512);
        assert_eq!(t.info().num_blocks, 2048);
        assert_eq!(t.info().module, "malloc");
        let spec = BdevSpec::parse("uring:/nonexistent/gyre-perf-test").unwrap();
        assert!(BdevTarget::create("uring:/nonexistent", &spec, &BdevOptions::default()).is_err());
    }
}
