//! A volume as a bdev, and its per-reactor channel.
//!
//! The channel cuts each request at cluster boundaries and looks every piece up in the
//! volume's published map (atomic loads, no lock):
//! - read of an allocated cluster, write to a cluster only this volume references: straight to
//!   the base at the translated block (a request inside one cluster goes down as itself, its
//!   buffers untouched; a request across clusters is carried by pool buffers per piece);
//! - read of an unallocated cluster: zeroes, without I/O;
//! - write to an unallocated or shared cluster: the piece waits while the engine allocates or
//!   copies and makes that durable, then is looked up again;
//! - write-zeroes/unmap of a whole cluster of a thin volume: the cluster is released by the
//!   engine; of part of a cluster: zeroes written in place (after a copy if shared).
//!
//! Requests sent to the base are counted per channel (plain stores by the channel's own
//! reactor) so that the engine can wait for those started before a change: before a snapshot
//! freezes the clusters they write, and before freed clusters are handed out again.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use gyre_bdev::{
    Bdev, BdevError, BdevInfo, IoChannelBackend, IoCompletion, IoError, IoOp, IoRequest, IoStatus,
    IoTypes,
};
use gyre_reactor::{global_pool, local, PoolCache, SgList};

use crate::meta::{VolumeMeta, UNALLOCATED};
use crate::pool::{
    ChannelCounters, Op, PoolShared, PublishedMap, ReplyQueue, VolumeShared, EXCLUSIVE,
};
use crate::LvolError;

/// A volume of a pool, registered as the bdev `<pool>/<volume>`.
pub struct VolumeBdev {
    info: BdevInfo,
    vol: Arc<VolumeShared>,
    pool: Arc<PoolShared>,
}

impl VolumeBdev {
    pub(crate) fn new(
        name: &str,
        v: &VolumeMeta,
        vol: Arc<VolumeShared>,
        pool: Arc<PoolShared>,
    ) -> Result<Arc<Self>, LvolError> {
        let bs = pool.sb.block_size;
        let mut types = IoTypes::NONE.with(IoOp::Read).with(IoOp::Flush);
        if !v.snapshot {
            types = types
                .with(IoOp::Write)
                .with(IoOp::WriteZeroes)
                .with(IoOp::Unmap);
        }
        let info = BdevInfo::new(name, "lvol", bs, v.size_bytes / bs as u64, types)?
            .with_uuid(v.uuid)
            .with_volatile_write_cache(pool.base.info().volatile_write_cache());
        Ok(Arc::new(VolumeBdev { info, vol, pool }))
    }

    pub(crate) fn set_size(&self, bytes: u64) {
        self.info
            .set_num_blocks(bytes / self.info.block_size() as u64);
    }
}

impl Bdev for VolumeBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn create_channel(self: Arc<Self>) -> Result<Box<dyn IoChannelBackend>, BdevError> {
        // The base's backend directly: requests reaching it were checked against the volume
        // and translated inside the pool's clusters, so a second checked channel (with its
        // clock reads and statistics) would only add cost.
        if self.pool.base.info().is_removed() {
            return Err(BdevError::NotFound(
                self.pool.base.info().name().to_string(),
            ));
        }
        let base = self.pool.base.bdev().clone().create_channel()?;
        let (map, generation) = self.vol.current();
        let sb = &self.pool.sb;
        let bs = sb.block_size as u64;
        Ok(Box::new(VolumeChannel {
            base,
            ready: VecDeque::with_capacity(64),
            st: State {
                counters: self.vol.register_channel(local().map(|l| l.handle())),
                vol: self.vol.clone(),
                pool: self.pool.clone(),
                map,
                generation,
                replies: Arc::new(ReplyQueue {
                    queue: Default::default(),
                    waker: local().map(|l| l.handle()),
                }),
                slots: Vec::with_capacity(64),
                parents: Vec::with_capacity(64),
                free_slots: Vec::with_capacity(64),
                waiting: Vec::new(),
                deferred: VecDeque::new(),
                cache: global_pool().ok().map(|p| p.local()),
                block_size: bs,
                cluster_blocks: sb.cluster_size / bs,
                cluster_shift: (sb.cluster_size / bs).trailing_zeros(),
                data_lba: sb.data_offset / bs,
                next_token: 0,
                open_slots: 0,
            },
        }))
    }
}

/// One caller request in progress.
struct Slot {
    tag: u64,
    offset: u64,
    op: IoOp,
    /// Pieces not finished yet.
    remaining: u32,
    status: IoStatus,
    /// Whether the request went down whole (its own buffers) rather than in pieces.
    whole: bool,
}

/// A piece of a request inside one cluster.
struct Piece {
    slot: u32,
    /// Block offset of the piece within the caller's request.
    pos: u64,
    lba: u64,
    blocks: u64,
    /// What goes to the base: the caller's request itself (whole), or a request on pool
    /// buffers (pieces), or nothing yet (no buffers were free).
    req: Option<IoRequest>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ask {
    Alloc,
    Release,
}

/// Where finished requests go: straight to the caller inside `poll`, to a queue inside
/// `submit` (which must not complete anything itself).
type Out<'a> = &'a mut dyn FnMut(IoCompletion);

struct VolumeChannel {
    base: Box<dyn IoChannelBackend>,
    /// Requests finished during `submit`, handed over at the next `poll`.
    ready: VecDeque<IoCompletion>,
    st: State,
}

struct State {
    vol: Arc<VolumeShared>,
    pool: Arc<PoolShared>,
    map: Arc<PublishedMap>,
    generation: u64,
    counters: Arc<ChannelCounters>,
    replies: Arc<ReplyQueue>,
    slots: Vec<Slot>,
    /// The caller's request of a slot while its pieces run (pieces mode only). Apart from the
    /// slots so that a slot stays small: it is rewritten for every request.
    parents: Vec<Option<IoRequest>>,
    free_slots: Vec<u32>,
    waiting: Vec<(u64, Ask, Piece)>,
    deferred: VecDeque<Piece>,
    cache: Option<PoolCache>,
    block_size: u64,
    cluster_blocks: u64,
    /// log2 of `cluster_blocks` (both sizes are powers of two): a shift and a mask instead
    /// of 64-bit divisions on every request.
    cluster_shift: u32,
    data_lba: u64,
    next_token: u64,
    open_slots: usize,
}

/// Copies `len` bytes from `src` at `src_at` to `dst` at `dst_at`, whatever the segments.
fn copy_sg(src: &SgList, src_at: usize, dst: &mut SgList, dst_at: usize, len: usize) {
    let mut done = 0;
    src.for_each_chunk(src_at, len, |chunk| {
        let mut used = 0;
        dst.for_each_chunk_mut(dst_at + done, chunk.len(), |d| {
            let n = d.len();
            d.copy_from_slice(&chunk[used..used + n]);
            used += n;
        });
        done += chunk.len();
    });
}

impl State {
    fn slot_of(&mut self, req: &IoRequest, whole: bool) -> u32 {
        let s = Slot {
            tag: req.tag,
            offset: req.offset_blocks,
            op: req.op,
            remaining: 1,
            status: Ok(()),
            whole,
        };
        self.open_slots += 1;
        match self.free_slots.pop() {
            Some(i) => {
                self.slots[i as usize] = s;
                i
            }
            None => {
                self.slots.push(s);
                self.parents.push(None);
                (self.slots.len() - 1) as u32
            }
        }
    }

    #[inline]
    fn refresh(&mut self) {
        let g = self.vol.generation();
        if g != self.generation {
            let (map, g) = self.vol.current();
            self.map = map;
            self.generation = g;
        }
    }

    /// Builds the base request of a piece in pieces mode; false if no buffers are free.
    fn prepare(&mut self, p: &mut Piece) -> bool {
        if p.req.is_some() {
            return true;
        }
        let s = &self.slots[p.slot as usize];
        let op = s.op;
        let tag = (p.slot as u64) << 32 | p.pos;
        if !op.has_data() {
            p.req = Some(IoRequest::control(op, p.lba, p.blocks, tag));
            return true;
        }
        let len = (p.blocks * self.block_size) as usize;
        let Some(mut buf) = self.cache.as_ref().and_then(|c| c.try_alloc(len)) else {
            return false;
        };
        let parent = self.parents[p.slot as usize].as_ref();
        let flags = parent.map(|r| r.flags).unwrap_or_default();
        if op == IoOp::Write {
            if let Some(parent) = parent {
                copy_sg(
                    &parent.buf,
                    (p.pos * self.block_size) as usize,
                    &mut buf,
                    0,
                    len,
                );
            }
        }
        let mut r = IoRequest::new(op, p.lba, p.blocks, buf, tag);
        r.flags = flags;
        p.req = Some(r);
        true
    }

    /// Looks a piece up and sends it on its way.
    #[inline]
    fn start(&mut self, mut p: Piece, base: &mut dyn IoChannelBackend, out: Out<'_>) {
        if !self.prepare(&mut p) {
            self.deferred.push_back(p);
            return;
        }
        self.refresh();
        let cb = self.cluster_blocks;
        let index = p.lba >> self.cluster_shift;
        let within = p.lba & (cb - 1);
        let op = self.slots[p.slot as usize].op;
        let Some(entry) = self.map.entries.get(index as usize) else {
            let e = IoError::OutOfRange {
                offset: p.lba,
                count: p.blocks,
                num_blocks: self.map.entries.len() as u64 * cb,
            };
            return self.finish(p, Err(e), out);
        };
        match op {
            IoOp::Read => {
                let e = entry.load(Ordering::Acquire);
                if e == UNALLOCATED {
                    self.zero_fill(&mut p);
                    self.finish(p, Ok(()), out);
                } else {
                    self.submit_base(p, e & !EXCLUSIVE, within, base, out);
                }
            }
            IoOp::Write | IoOp::WriteZeroes | IoOp::Unmap => {
                if op != IoOp::Write {
                    let e = entry.load(Ordering::Acquire);
                    if e == UNALLOCATED {
                        return self.finish(p, Ok(()), out);
                    }
                    if within == 0 && p.blocks == cb && self.vol.thin {
                        return self.ask(Ask::Release, index, p);
                    }
                }
                let e = entry.load(Ordering::Acquire);
                if e != UNALLOCATED && e & EXCLUSIVE != 0 {
                    if let Some(r) = p.req.as_mut() {
                        if op != IoOp::Write {
                            r.op = IoOp::WriteZeroes;
                        }
                    }
                    self.submit_base(p, e & !EXCLUSIVE, within, base, out);
                } else {
                    self.ask(Ask::Alloc, index, p);
                }
            }
            _ => self.finish(p, Err(IoError::Unsupported(op)), out),
        }
    }

    /// Where a single-cluster read or write may go straight to the base: the translated
    /// block, if the cluster is allocated (read) or referenced by this volume alone (write).
    #[inline]
    fn direct_lba(&mut self, op: IoOp, lba: u64) -> Option<u64> {
        let need = match op {
            IoOp::Read => 0,
            IoOp::Write => EXCLUSIVE,
            _ => return None,
        };
        self.refresh();
        let e = self
            .map
            .entries
            .get((lba >> self.cluster_shift) as usize)?
            .load(Ordering::Acquire);
        if e == UNALLOCATED || e & need != need {
            return None;
        }
        let within = lba & (self.cluster_blocks - 1);
        Some(self.data_lba + (((e & !EXCLUSIVE) as u64) << self.cluster_shift) + within)
    }

    #[inline]
    fn submit_base(
        &mut self,
        mut p: Piece,
        phys: u32,
        within: u64,
        base: &mut dyn IoChannelBackend,
        out: Out<'_>,
    ) {
        let Some(mut req) = p.req.take() else {
            return self.finish(p, Err(IoError::Aborted), out);
        };
        req.offset_blocks = self.data_lba + ((phys as u64) << self.cluster_shift) + within;
        req.tag = (p.slot as u64) << 32 | p.pos;
        // Counted, so that the engine can wait for it before it reuses or freezes clusters.
        ChannelCounters::bump(&self.counters.started);
        base.submit(req);
    }

    fn zero_fill(&mut self, p: &mut Piece) {
        let len = (p.blocks * self.block_size) as usize;
        if self.slots[p.slot as usize].whole {
            if let Some(r) = p.req.as_mut() {
                r.buf.fill(len, 0);
            }
        } else if let Some(parent) = self.parents[p.slot as usize].as_mut() {
            parent
                .buf
                .for_each_chunk_mut((p.pos * self.block_size) as usize, len, |d| d.fill(0));
        }
    }

    fn ask(&mut self, kind: Ask, index: u64, p: Piece) {
        let token = self.next_token;
        self.next_token += 1;
        self.waiting.push((token, kind, p));
        let reply = self.replies.clone();
        let vol = self.vol.id;
        self.pool.submit(match kind {
            Ask::Alloc => Op::Alloc {
                vol,
                index,
                token,
                reply,
            },
            Ask::Release => Op::Release {
                vol,
                index,
                token,
                reply,
            },
        });
    }

    /// A piece is done without the base (its request, if any, is in the piece).
    fn finish(&mut self, p: Piece, status: IoStatus, out: Out<'_>) {
        self.part_done(p.slot, status, p.req, out);
    }

    /// One piece of `slot` finished; `req` is the caller's request in whole mode.
    #[inline]
    fn part_done(&mut self, slot: u32, status: IoStatus, req: Option<IoRequest>, out: Out<'_>) {
        let s = &mut self.slots[slot as usize];
        if s.status.is_ok() {
            s.status = status;
        }
        s.remaining -= 1;
        if s.remaining > 0 {
            return;
        }
        let status = s.status;
        let req = if s.whole {
            req
        } else {
            self.parents[slot as usize].take()
        };
        let Some(mut req) = req else {
            return;
        };
        req.op = s.op;
        req.offset_blocks = s.offset;
        req.tag = s.tag;
        self.free_slots.push(slot);
        self.open_slots -= 1;
        out(IoCompletion { status, req });
    }

    #[inline]
    fn base_completion(&mut self, mut c: IoCompletion, out: Out<'_>) {
        let slot = (c.req.tag >> 32) as u32;
        let pos = c.req.tag & 0xFFFF_FFFF;
        let Some(s) = self.slots.get(slot as usize) else {
            return;
        };
        if s.op != IoOp::Flush {
            ChannelCounters::bump(&self.counters.completed);
        }
        if s.whole {
            // A whole request is one piece: it is done, and goes back as the same completion
            // with the caller's fields restored (no copy into a new one).
            c.req.op = s.op;
            c.req.offset_blocks = s.offset;
            c.req.tag = s.tag;
            if c.status.is_ok() {
                c.status = s.status;
            }
            self.free_slots.push(slot);
            self.open_slots -= 1;
            return out(c);
        }
        if s.op == IoOp::Read && c.status.is_ok() {
            let bs = self.block_size as usize;
            let len = c.req.num_blocks as usize * bs;
            if let Some(parent) = self.parents[slot as usize].as_mut() {
                copy_sg(&c.req.buf, 0, &mut parent.buf, pos as usize * bs, len);
            }
        }
        // The pool buffers of the piece go back with `c`.
        self.part_done(slot, c.status, None, out);
    }
}

impl IoChannelBackend for VolumeChannel {
    fn submit(&mut self, mut req: IoRequest) {
        let st = &mut self.st;
        let ready = &mut self.ready;
        let out = &mut |c| ready.push_back(c);
        if st.pool.base.info().is_removed() {
            let slot = st.slot_of(&req, true);
            return st.part_done(slot, Err(IoError::Removed), Some(req), out);
        }
        if req.op == IoOp::Flush {
            // Metadata is durable before any write that depends on it completes, so a flush
            // of the base makes every completed write durable.
            let slot = st.slot_of(&req, true);
            let mut req = req;
            req.tag = (slot as u64) << 32;
            self.base.submit(req);
            return;
        }
        let shift = st.cluster_shift;
        let first = req.offset_blocks >> shift;
        let last = (req.offset_blocks + req.num_blocks.max(1) - 1) >> shift;
        if first == last {
            // The steady state: a read of an allocated cluster or a write to one only this
            // volume references goes down as itself, translated in place. Requests are large
            // (inline scatter-gather list), and every hand-over by value is a copy of it.
            if let Some(lba) = st.direct_lba(req.op, req.offset_blocks) {
                let slot = st.slot_of(&req, true);
                req.offset_blocks = lba;
                req.tag = (slot as u64) << 32;
                ChannelCounters::bump(&st.counters.started);
                self.base.submit(req);
                return;
            }
            let slot = st.slot_of(&req, true);
            let p = Piece {
                slot,
                pos: 0,
                lba: req.offset_blocks,
                blocks: req.num_blocks,
                req: Some(req),
            };
            st.start(p, &mut *self.base, out);
            return;
        }
        let slot = st.slot_of(&req, false);
        let (lba, end) = (req.offset_blocks, req.offset_blocks + req.num_blocks);
        st.slots[slot as usize].remaining = (last - first + 1) as u32;
        st.parents[slot as usize] = Some(req);
        let mut at = lba;
        while at < end {
            let stop = (((at >> shift) + 1) << shift).min(end);
            let p = Piece {
                slot,
                pos: at - lba,
                lba: at,
                blocks: stop - at,
                req: None,
            };
            st.start(p, &mut *self.base, out);
            at = stop;
        }
    }

    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
        let mut n = 0;
        let mut out = |c| {
            n += 1;
            done(c)
        };
        while let Some(c) = self.ready.pop_front() {
            out(c);
        }
        let st = &mut self.st;
        while let Some((token, status)) = st.replies.queue.pop() {
            let Some(i) = st.waiting.iter().position(|(t, _, _)| *t == token) else {
                continue;
            };
            let (_, kind, p) = st.waiting.swap_remove(i);
            match (kind, status) {
                (Ask::Alloc, Ok(())) => st.start(p, &mut *self.base, &mut out),
                (_, status) => st.finish(p, status, &mut out),
            }
        }
        for _ in 0..st.deferred.len() {
            match st.deferred.pop_front() {
                Some(p) => st.start(p, &mut *self.base, &mut out),
                None => break,
            }
        }
        self.base.poll(&mut |c| st.base_completion(c, &mut out));
        n
    }

    fn in_flight(&self) -> usize {
        self.st.open_slots + self.ready.len()
    }
}

impl Drop for VolumeChannel {
    fn drop(&mut self) {
        self.st.vol.unregister_channel(&self.st.counters);
    }
}
