//! A seeded random workload against a bdev channel, checked against a byte model.
//!
//! Requests never overlap in flight (a disk gives no order between overlapping requests), so
//! the model is updated when a write, write-zeroes or unmap is submitted and every read is
//! compared with it when it completes. Buffers come from the global pool (registered with the
//! ring: single-segment requests take the fixed path, long ones have several 128 KiB
//! segments) and from a private pool of small segments (never registered: plain and vectored
//! paths); some are longer than the request, to check only the prefix moves.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gyre_bdev::{BdevChannel, IoCompletion, IoFlags, IoOp, IoRequest};
use gyre_reactor::{global_pool, BufferPool, ClassConfig, PoolCache, PoolConfig, SgList};

/// xorshift64*: deterministic and dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A temporary file removed on drop.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    /// Creates `dir/gyre-uring-<tag>-<pid>-<n>` filled with `content`.
    pub fn create(dir: &Path, tag: &str, content: &[u8]) -> TempFile {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let path = dir.join(format!(
            "gyre-uring-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, content).expect("create temp file");
        TempFile { path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct WorkStats {
    pub reads: u64,
    pub writes: u64,
    pub fua_writes: u64,
    pub flushes: u64,
    pub write_zeroes: u64,
    pub unmaps: u64,
    pub resets: u64,
    pub multi_segment: u64,
    pub oversized_buffers: u64,
    pub max_in_flight: usize,
    pub bytes_verified: u64,
}

struct InFlight {
    op: IoOp,
    range: Option<(u64, u64)>,
    /// Bytes past the request in the buffer, filled with this marker before a read.
    slack_marker: Option<u8>,
}

pub struct Config {
    pub seed: u64,
    pub ops: u64,
    pub queue_depth: usize,
    /// Largest request, in blocks.
    pub max_blocks: u64,
    /// Percent weights: read, write, flush, write-zeroes, unmap, reset.
    pub mix: [u64; 6],
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 0x5eed,
            ops: 1500,
            queue_depth: 32,
            max_blocks: 48,
            mix: [40, 33, 5, 9, 9, 4],
        }
    }
}

pub struct Workload {
    cfg: Config,
    rng: Rng,
    pub model: Vec<u8>,
    bs: u64,
    num_blocks: u64,
    in_flight: BTreeMap<u64, InFlight>,
    next_tag: u64,
    issued: u64,
    global: PoolCache,
    small: PoolCache,
    _small_pool: BufferPool,
    pub stats: WorkStats,
}

impl Workload {
    /// `model` is the device's current content.
    pub fn new(cfg: Config, model: Vec<u8>, block_size: u32) -> Workload {
        let small_pool = BufferPool::new(&PoolConfig {
            classes: vec![
                ClassConfig {
                    size: 4096,
                    count: 512,
                },
                ClassConfig {
                    size: 8192,
                    count: 1024,
                },
            ],
            prefer_hugepages: false,
        })
        .expect("small pool");
        let bs = block_size as u64;
        Workload {
            rng: Rng::new(cfg.seed),
            num_blocks: model.len() as u64 / bs,
            model,
            bs,
            cfg,
            in_flight: BTreeMap::new(),
            next_tag: 1,
            issued: 0,
            global: global_pool().expect("global pool").local(),
            small: small_pool.local(),
            _small_pool: small_pool,
            stats: WorkStats::default(),
        }
    }

    pub fn finished(&self) -> bool {
        self.issued >= self.cfg.ops && self.in_flight.is_empty()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Polls completions and tops the queue up. Returns whether anything happened.
    pub fn step(&mut self, ch: &mut BdevChannel) -> Result<bool, String> {
        let mut done: Vec<IoCompletion> = Vec::new();
        ch.poll(|c| done.push(c));
        let mut progressed = !done.is_empty();
        for c in done {
            self.on_complete(c)?;
        }
        while self.issued < self.cfg.ops && self.in_flight.len() < self.cfg.queue_depth {
            if !self.issue(ch) {
                break;
            }
            progressed = true;
        }
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.in_flight.len());
        Ok(progressed)
    }

    fn overlaps(&self, start: u64, n: u64) -> bool {
        self.in_flight.values().any(|f| match f.range {
            Some((s, c)) => start < s + c && s < start + n,
            None => false,
        })
    }

    fn pick_op(&mut self) -> IoOp {
        let total: u64 = self.cfg.mix.iter().sum();
        let mut r = self.rng.below(total);
        let ops = [
            IoOp::Read,
            IoOp::Write,
            IoOp::Flush,
            IoOp::WriteZeroes,
            IoOp::Unmap,
            IoOp::Reset,
        ];
        for (i, w) in self.cfg.mix.iter().enumerate() {
            if r < *w {
                return ops[i];
            }
            r -= w;
        }
        IoOp::Read
    }

    /// Buffers for `len` bytes; sometimes longer than needed, sometimes of small segments.
    fn buffers(&mut self, len: usize) -> Option<SgList> {
        let extra = if self.rng.below(5) == 0 {
            self.stats.oversized_buffers += 1;
            self.bs as usize * (1 + self.rng.below(3) as usize)
        } else {
            0
        };
        let sg = if self.rng.below(2) == 0 {
            self.global.try_alloc(len + extra)
        } else {
            self.small.try_alloc(len + extra)
        }?;
        Some(sg)
    }

    fn issue(&mut self, ch: &mut BdevChannel) -> bool {
        let op = self.pick_op();
        let tag = self.next_tag;
        let req = match op {
            IoOp::Flush | IoOp::Reset => IoRequest::control(op, 0, 0, tag),
            _ => {
                let n = 1 + self.rng.below(self.cfg.max_blocks);
                let mut start = self.rng.below(self.num_blocks - n + 1);
                let mut tries = 0;
                while self.overlaps(start, n) {
                    tries += 1;
                    if tries > 8 {
                        return false;
                    }
                    start = self.rng.below(self.num_blocks - n + 1);
                }
                let off = (start * self.bs) as usize;
                let len = (n * self.bs) as usize;
                match op {
                    IoOp::Read | IoOp::Write => {
                        let Some(mut sg) = self.buffers(len) else {
                            return false;
                        };
                        if sg.num_segments() > 1 {
                            let mut used = 0;
                            let mut segs = 0;
                            for s in sg.segments() {
                                if used < len {
                                    segs += 1;
                                    used += s.len();
                                }
                            }
                            if segs > 1 {
                                self.stats.multi_segment += 1;
                            }
                        }
                        let mut marker = None;
                        if op == IoOp::Write {
                            let mut data = vec![0u8; len];
                            self.rng.fill(&mut data);
                            assert!(sg.copy_from_slice(&data));
                            self.model[off..off + len].copy_from_slice(&data);
                        } else {
                            let m = (self.rng.next() | 1) as u8;
                            let total = sg.len();
                            sg.fill(total, m);
                            marker = Some(m);
                        }
                        let mut req = IoRequest::new(op, start, n, sg, tag);
                        if op == IoOp::Write && self.rng.below(4) == 0 {
                            req.flags = IoFlags { fua: true };
                            self.stats.fua_writes += 1;
                        }
                        self.in_flight.insert(
                            tag,
                            InFlight {
                                op,
                                range: Some((start, n)),
                                slack_marker: marker,
                            },
                        );
                        self.next_tag += 1;
                        self.issued += 1;
                        ch.submit(req);
                        return true;
                    }
                    _ => {
                        self.model[off..off + len].fill(0);
                        self.in_flight.insert(
                            tag,
                            InFlight {
                                op,
                                range: Some((start, n)),
                                slack_marker: None,
                            },
                        );
                        self.next_tag += 1;
                        self.issued += 1;
                        ch.submit(IoRequest::control(op, start, n, tag));
                        return true;
                    }
                }
            }
        };
        self.in_flight.insert(
            tag,
            InFlight {
                op,
                range: None,
                slack_marker: None,
            },
        );
        self.next_tag += 1;
        self.issued += 1;
        ch.submit(req);
        true
    }

    fn on_complete(&mut self, c: IoCompletion) -> Result<(), String> {
        let tag = c.req.tag;
        let f = self
            .in_flight
            .remove(&tag)
            .ok_or_else(|| format!("completion for unknown or finished tag {tag}"))?;
        if f.op != c.req.op {
            return Err(format!("tag {tag}: op {} came back as {}", f.op, c.req.op));
        }
        if let Err(e) = c.status {
            return Err(format!("tag {tag} ({}) failed: {e}", f.op));
        }
        match f.op {
            IoOp::Read => {
                self.stats.reads += 1;
                let (start, n) = f.range.unwrap_or((0, 0));
                let off = (start * self.bs) as usize;
                let len = (n * self.bs) as usize;
                let mut got = vec![0u8; c.req.buf.len()];
                assert!(c.req.buf.copy_to_slice(&mut got));
                if got[..len] != self.model[off..off + len] {
                    let at = got[..len]
                        .iter()
                        .zip(&self.model[off..off + len])
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    return Err(format!(
                        "tag {tag}: read of blocks {start}+{n} differs from the model at byte {at}"
                    ));
                }
                if let Some(m) = f.slack_marker {
                    if got[len..].iter().any(|&b| b != m) {
                        return Err(format!("tag {tag}: read wrote past the request"));
                    }
                }
                self.stats.bytes_verified += len as u64;
            }
            IoOp::Write => self.stats.writes += 1,
            IoOp::Flush => self.stats.flushes += 1,
            IoOp::WriteZeroes => self.stats.write_zeroes += 1,
            IoOp::Unmap => self.stats.unmaps += 1,
            IoOp::Reset => {
                self.stats.resets += 1;
                if let Some((&older, _)) = self.in_flight.range(..tag).next() {
                    return Err(format!(
                        "reset {tag} completed before request {older} submitted earlier"
                    ));
                }
            }
            IoOp::Compare => return Err("compare was never submitted".into()),
        }
        Ok(())
    }

    /// Checks every op kind ran and that the queue was really deep.
    pub fn check_coverage(&self) -> Result<(), String> {
        let s = &self.stats;
        let ok = s.reads > 0
            && s.writes > 0
            && s.flushes > 0
            && s.write_zeroes > 0
            && s.unmaps > 0
            && s.resets > 0
            && s.multi_segment > 0
            && s.max_in_flight >= 16;
        if ok {
            Ok(())
        } else {
            Err(format!("workload did not cover everything: {s:?}"))
        }
    }
}

/// Runs `w` to completion on the calling thread, bounded by `timeout`.
pub fn run_plain(
    w: &mut Workload,
    ch: &mut BdevChannel,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    while !w.finished() {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "workload timed out with {} requests in flight",
                w.in_flight()
            ));
        }
        if !w.step(ch)? {
            std::thread::yield_now();
        }
    }
    Ok(())
}

/// Random initial content of `len` bytes.
pub fn random_content(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// The file's content as read through the page cache (an independent path).
pub fn file_content(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read back the file")
}

/// Asserts the file matches the model, reporting the first differing block.
pub fn assert_file_matches(path: &Path, model: &[u8], bs: usize) {
    let got = file_content(path);
    assert_eq!(got.len(), model.len(), "file size changed");
    if got != model {
        let at = got.iter().zip(model).position(|(a, b)| a != b).unwrap_or(0);
        panic!("file differs from the model in block {}", at / bs);
    }
}
