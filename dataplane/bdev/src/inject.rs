//! `inject`: a virtual bdev stacked on another that injects faults for tests: failed requests,
//! corrupted read data, and delayed completions. It claims its base bdev, as every virtual bdev
//! does, and passes everything else through unchanged.
//!
//! The injection settings are atomics read per request, so they can be changed from a test
//! thread while I/O runs on reactors, without locks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gyre_reactor::clock::{duration_to_ticks, ticks};

use crate::bdev::{Bdev, BdevChannel, BdevInfo, IoChannelBackend};
use crate::io::{IoCompletion, IoError, IoOp, IoRequest, IoTypes};
use crate::registry::{BdevDesc, BdevRegistry};
use crate::BdevError;

const NONE: u64 = u64::MAX;

/// What to inject. Shared between the bdev and whoever steers the test.
#[derive(Default)]
pub struct Faults {
    fail_ops: AtomicU8,
    fail_remaining: AtomicU64,
    fail_errno: AtomicI32,
    corrupt_lba: AtomicU64,
    delay_ticks: AtomicU64,
}

impl Faults {
    /// Fails the next `count` requests whose op is in `ops` with `IoError::Device(errno)`.
    pub fn fail(&self, ops: IoTypes, count: u64, errno: i32) {
        self.fail_errno.store(errno, Ordering::Relaxed);
        self.fail_remaining.store(count, Ordering::Relaxed);
        self.fail_ops.store(ops_mask(ops), Ordering::Release);
    }

    /// Flips the first byte of block `lba` in the data of every read that covers it.
    pub fn corrupt_reads_of(&self, lba: Option<u64>) {
        self.corrupt_lba
            .store(lba.unwrap_or(NONE), Ordering::Release);
    }

    /// Holds every completion back for `delay`.
    pub fn delay(&self, delay: Duration) {
        self.delay_ticks
            .store(duration_to_ticks(delay), Ordering::Release);
    }

    /// Stops injecting anything.
    pub fn clear(&self) {
        self.fail_ops.store(0, Ordering::Release);
        self.corrupt_lba.store(NONE, Ordering::Release);
        self.delay_ticks.store(0, Ordering::Release);
    }

    fn should_fail(&self, op: IoOp) -> Option<IoError> {
        if self.fail_ops.load(Ordering::Acquire) & (1 << op as u8) == 0 {
            return None;
        }
        self.fail_remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .ok()
            .map(|_| IoError::Device(self.fail_errno.load(Ordering::Relaxed)))
    }
}

fn ops_mask(ops: IoTypes) -> u8 {
    ops.iter().fold(0, |m, op| m | 1 << op as u8)
}

pub struct InjectBdev {
    info: BdevInfo,
    base: BdevDesc,
    faults: Arc<Faults>,
}

impl InjectBdev {
    /// Opens and claims `base_name` in `registry` and stacks a fault injector named `name` on
    /// it (not yet registered: register it to use it by name).
    pub fn create(
        registry: &BdevRegistry,
        name: &str,
        base_name: &str,
    ) -> Result<Arc<Self>, BdevError> {
        let owner = format!("inject bdev '{name}'");
        let base = registry.open(base_name, true, &owner, None)?;
        base.claim(&owner)?;
        let b = base.info();
        let info = BdevInfo::new(name, "inject", b.block_size(), b.num_blocks(), b.io_types())?
            .with_volatile_write_cache(b.volatile_write_cache());
        let faults = Arc::new(Faults::default());
        faults.clear();
        Ok(Arc::new(InjectBdev { info, base, faults }))
    }

    pub fn faults(&self) -> Arc<Faults> {
        self.faults.clone()
    }
}

impl Bdev for InjectBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn create_channel(self: Arc<Self>) -> Result<Box<dyn IoChannelBackend>, BdevError> {
        let base = self.base.channel()?;
        Ok(Box::new(InjectChannel {
            faults: self.faults.clone(),
            block_size: self.info.block_size() as u64,
            base,
            failed: VecDeque::with_capacity(64),
            delayed: VecDeque::with_capacity(256),
        }))
    }
}

struct InjectChannel {
    faults: Arc<Faults>,
    block_size: u64,
    base: BdevChannel,
    failed: VecDeque<IoCompletion>,
    delayed: VecDeque<(u64, IoCompletion)>,
}

impl IoChannelBackend for InjectChannel {
    fn submit(&mut self, req: IoRequest) {
        match self.faults.should_fail(req.op) {
            Some(e) => self.failed.push_back(IoCompletion {
                status: Err(e),
                req,
            }),
            None => self.base.submit(req),
        }
    }

    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
        let mut n = 0;
        while let Some(c) = self.failed.pop_front() {
            done(c);
            n += 1;
        }
        let corrupt = self.faults.corrupt_lba.load(Ordering::Acquire);
        let delay = self.faults.delay_ticks.load(Ordering::Acquire);
        let bs = self.block_size;
        let delayed = &mut self.delayed;
        n += self.base.poll(|mut c| {
            if corrupt != NONE && c.req.op == IoOp::Read && c.status.is_ok() {
                let r = &c.req;
                if (r.offset_blocks..r.offset_blocks + r.num_blocks).contains(&corrupt) {
                    let at = ((corrupt - r.offset_blocks) * bs) as usize;
                    c.req.buf.for_each_chunk_mut(at, 1, |b| b[0] ^= 0xFF);
                }
            }
            if delay == 0 {
                done(c);
            } else {
                delayed.push_back((ticks() + delay, c));
            }
        });
        let now = ticks();
        while self.delayed.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, c)) = self.delayed.pop_front() {
                done(c);
                n += 1;
            }
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.base.in_flight() + self.failed.len() + self.delayed.len()
    }
}
