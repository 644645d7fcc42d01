//! In-flight request slots and the SQEs built from them.
//!
//! A slot holds everything the kernel may point at while a request is in flight: the request
//! (which owns its data buffers) and the iovec array of a vectored transfer. Slots live in
//! fixed-size boxed chunks, so growing the slab never moves a slot whose address an SQE
//! already carries; the free list is threaded through the slots, so taking and returning one
//! never allocates. The SQE of a slot is rebuilt from its progress (`done`), which is how
//! short transfers are continued and how a request waiting for SQ space is queued later.

use gyre_bdev::{IoOp, IoRequest};
use gyre_reactor::iobuf::SG_INLINE;
use io_uring::{opcode, squeue, types};

use crate::bdev::ZeroMethod;

/// Slots per chunk of the slab.
const CHUNK: usize = 64;
/// Marks the end of the free list.
const NONE: u32 = u32::MAX;
/// The kernel takes at most this many iovecs per vectored transfer; longer lists are sent in
/// several transfers (the rest continues like a short transfer).
const IOV_MAX: usize = 1024;

/// Where an SQE names the file: a slot of the ring's registered file table, or a plain fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileRef {
    Fixed(u32),
    Fd(i32),
}

macro_rules! with_file {
    ($file:expr, $f:ident => $build:expr) => {
        match $file {
            FileRef::Fixed(i) => {
                let $f = types::Fixed(i);
                $build
            }
            FileRef::Fd(fd) => {
                let $f = types::Fd(fd);
                $build
            }
        }
    };
}

/// What a slot's SQE does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Free,
    Read,
    Write,
    Flush,
    /// `fallocate` zeroing or punching the range; the method falls back on refusal.
    Fallocate(ZeroMethod),
    /// Writing zeroes from the ring's zero buffer, `ZERO_BUF` bytes per SQE.
    ZeroWrite,
}

pub(crate) struct Slot {
    pub stage: Stage,
    pub req: Option<IoRequest>,
    /// Byte offset of the request on the device.
    pub offset: u64,
    /// Bytes the request covers.
    pub total: u64,
    /// Bytes already transferred (short transfers continue from here).
    pub done: u64,
    /// Submission order on the channel, for resets.
    pub seq: u64,
    next_free: u32,
    iov: [libc::iovec; SG_INLINE],
    /// Only for requests of more than `SG_INLINE` segments; its capacity is kept for reuse.
    iov_heap: Vec<libc::iovec>,
}

const EMPTY_IOV: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

impl Slot {
    fn new(next_free: u32) -> Self {
        Slot {
            stage: Stage::Free,
            req: None,
            offset: 0,
            total: 0,
            done: 0,
            seq: 0,
            next_free,
            iov: [EMPTY_IOV; SG_INLINE],
            iov_heap: Vec::new(),
        }
    }
}

/// Preallocated slots with a free list. Grows by whole chunks when all are in use.
pub(crate) struct Slab {
    chunks: Vec<Box<[Slot]>>,
    free: u32,
}

impl Slab {
    pub fn with_capacity(n: usize) -> Self {
        let mut s = Slab {
            chunks: Vec::new(),
            free: NONE,
        };
        while s.capacity() < n && s.grow() {}
        s
    }

    pub fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    fn grow(&mut self) -> bool {
        let base = self.capacity();
        if base + CHUNK >= NONE as usize {
            return false;
        }
        let base = base as u32;
        let chunk: Box<[Slot]> = (0..CHUNK as u32)
            .map(|i| {
                Slot::new(if i + 1 < CHUNK as u32 {
                    base + i + 1
                } else {
                    self.free
                })
            })
            .collect();
        self.chunks.push(chunk);
        self.free = base;
        true
    }

    /// A free slot's index; grows the slab if none is free (`None` only at 4 G slots).
    pub fn alloc(&mut self) -> Option<u32> {
        if self.free == NONE && !self.grow() {
            return None;
        }
        let i = self.free;
        let next = self.get_mut(i)?.next_free;
        self.free = next;
        Some(i)
    }

    pub fn release(&mut self, i: u32) {
        let head = self.free;
        if let Some(s) = self.get_mut(i) {
            s.stage = Stage::Free;
            s.next_free = head;
            self.free = i;
        }
    }

    pub fn get_mut(&mut self, i: u32) -> Option<&mut Slot> {
        let i = i as usize;
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    /// The lowest sequence number of the slots in use (only computed while a reset waits).
    pub fn min_active_seq(&self) -> Option<u64> {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .filter(|s| s.stage != Stage::Free)
            .map(|s| s.seq)
            .min()
    }
}

/// What `build_sqe` needs beyond the slot.
pub(crate) struct SqeEnv {
    pub file: FileRef,
    /// The pool whose regions are the ring's registered buffers (index = class).
    pub fixed_pool: Option<u64>,
    pub zero_ptr: *const u8,
    pub zero_len: usize,
    pub zero_index: Option<u16>,
}

/// How the SQE moves data, for the ring's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SqeKind {
    Fixed,
    Plain,
    Vectored,
    Other,
}

/// Builds the SQE for the remaining part of the slot's work.
pub(crate) fn build_sqe(slot: &mut Slot, env: &SqeEnv) -> (squeue::Entry, SqeKind) {
    let off = slot.offset + slot.done;
    let remaining = slot.total.saturating_sub(slot.done);
    let file = env.file;
    match slot.stage {
        Stage::Free => (opcode::Nop::new().build(), SqeKind::Other),
        Stage::Flush => (
            with_file!(file, f => opcode::Fsync::new(f)
                .flags(types::FsyncFlags::DATASYNC)
                .build()),
            SqeKind::Other,
        ),
        Stage::Fallocate(method) => {
            let mode = method.fallocate_mode().unwrap_or(0);
            (
                with_file!(file, f => opcode::Fallocate::new(f, remaining)
                    .offset(off)
                    .mode(mode)
                    .build()),
                SqeKind::Other,
            )
        }
        Stage::ZeroWrite => {
            let len = remaining.min(env.zero_len as u64) as u32;
            match env.zero_index {
                Some(index) => (
                    with_file!(file, f => opcode::WriteFixed::new(f, env.zero_ptr, len, index)
                        .offset(off)
                        .build()),
                    SqeKind::Fixed,
                ),
                None => (
                    with_file!(file, f => opcode::Write::new(f, env.zero_ptr, len)
                        .offset(off)
                        .build()),
                    SqeKind::Plain,
                ),
            }
        }
        Stage::Read | Stage::Write => build_rw(slot, env, off, remaining),
    }
}

fn build_rw(slot: &mut Slot, env: &SqeEnv, off: u64, remaining: u64) -> (squeue::Entry, SqeKind) {
    let write = slot.stage == Stage::Write;
    let Some(req) = slot.req.as_mut() else {
        return (opcode::Nop::new().build(), SqeKind::Other);
    };
    let rw_flags = if write && req.flags.fua {
        libc::RWF_DSYNC
    } else {
        0
    };
    let segs = req.buf.segments_mut();
    // Find where the untransferred part starts.
    let mut skip = slot.done as usize;
    let mut first = 0;
    while first < segs.len() && skip >= segs[first].len() {
        skip -= segs[first].len();
        first += 1;
    }
    let head_len = segs.get(first).map_or(0, |s| s.len() - skip) as u64;
    if head_len >= remaining && head_len > 0 {
        // One segment: a plain or (for registered pool buffers) fixed transfer.
        let seg = &mut segs[first];
        // SAFETY: skip < seg.len() <= its capacity.
        let ptr = unsafe { seg.as_mut_ptr().add(skip) };
        let len = remaining as u32; // <= one segment's length, a u32
        let fixed = env.fixed_pool == Some(seg.pool_id());
        let index = seg.class() as u16;
        let entry = match (write, fixed) {
            (false, true) => with_file!(env.file, f => opcode::ReadFixed::new(f, ptr, len, index)
                .offset(off)
                .build()),
            (true, true) => with_file!(env.file, f => opcode::WriteFixed::new(f, ptr, len, index)
                .offset(off)
                .rw_flags(rw_flags)
                .build()),
            (false, false) => with_file!(env.file, f => opcode::Read::new(f, ptr, len)
                .offset(off)
                .build()),
            (true, false) => with_file!(env.file, f => opcode::Write::new(f, ptr, len)
                .offset(off)
                .rw_flags(rw_flags)
                .build()),
        };
        return (
            entry,
            if fixed {
                SqeKind::Fixed
            } else {
                SqeKind::Plain
            },
        );
    }
    // Several segments: gather them into the slot's iovecs.
    let want = (segs.len() - first).min(IOV_MAX);
    let iov: &mut [libc::iovec] = if want <= SG_INLINE {
        &mut slot.iov[..]
    } else {
        slot.iov_heap.clear();
        slot.iov_heap.resize(want, EMPTY_IOV);
        &mut slot.iov_heap[..]
    };
    let mut n = 0;
    let mut left = remaining;
    for seg in segs[first..].iter_mut() {
        if left == 0 || n == iov.len() {
            break;
        }
        let take = ((seg.len() - skip) as u64).min(left);
        if take > 0 {
            iov[n] = libc::iovec {
                // SAFETY: skip < seg.len() when take > 0.
                iov_base: unsafe { seg.as_mut_ptr().add(skip) }.cast(),
                iov_len: take as usize,
            };
            n += 1;
            left -= take;
        }
        skip = 0;
    }
    let iov_ptr = iov.as_ptr();
    let entry = if write {
        with_file!(env.file, f => opcode::Writev::new(f, iov_ptr, n as u32)
            .offset(off)
            .rw_flags(rw_flags)
            .build())
    } else {
        with_file!(env.file, f => opcode::Readv::new(f, iov_ptr, n as u32)
            .offset(off)
            .build())
    };
    (entry, SqeKind::Vectored)
}

/// The stage a write-zeroes or unmap starts in, or continues with after a refusal.
pub(crate) fn zero_stage(method: ZeroMethod) -> Stage {
    match method {
        ZeroMethod::WriteZeroes => Stage::ZeroWrite,
        m => Stage::Fallocate(m),
    }
}

/// The op a slot serves (write-zeroes when the request is gone, which cannot happen in use).
pub(crate) fn slot_op(slot: &Slot) -> IoOp {
    slot.req.as_ref().map_or(IoOp::WriteZeroes, |r| r.op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gyre_reactor::{BufferPool, ClassConfig, PoolConfig};

    fn pool() -> BufferPool {
        BufferPool::new(&PoolConfig {
            classes: vec![
                ClassConfig {
                    size: 4096,
                    count: 64,
                },
                ClassConfig {
                    size: 8192,
                    count: 64,
                },
            ],
            prefer_hugepages: false,
        })
        .unwrap()
    }

    fn env(fixed_pool: Option<u64>) -> SqeEnv {
        SqeEnv {
            file: FileRef::Fixed(3),
            fixed_pool,
            zero_ptr: std::ptr::null(),
            zero_len: 4096,
            zero_index: None,
        }
    }

    #[test]
    fn slab_reuses_slots_and_grows_without_moving_them() {
        let mut s = Slab::with_capacity(10);
        assert_eq!(s.capacity(), CHUNK);
        let first: Vec<u32> = (0..CHUNK).map(|_| s.alloc().unwrap()).collect();
        let addr = s.get_mut(0).unwrap() as *mut Slot as usize;
        for &i in &first {
            s.get_mut(i).unwrap().stage = Stage::Read;
        }
        let more = s.alloc().unwrap();
        assert_eq!(s.capacity(), 2 * CHUNK);
        assert_eq!(s.get_mut(0).unwrap() as *mut Slot as usize, addr);
        s.get_mut(more).unwrap().stage = Stage::Read;
        s.get_mut(more).unwrap().seq = 1;
        s.get_mut(5).unwrap().seq = 7;
        for &i in &first {
            if i != 5 {
                s.release(i);
            }
        }
        assert_eq!(s.min_active_seq(), Some(1));
        s.release(more);
        assert_eq!(s.min_active_seq(), Some(7));
        s.release(5);
        assert_eq!(s.min_active_seq(), None);
        let again = s.alloc().unwrap();
        assert_eq!(again, 5, "the last freed slot is reused first");
    }

    #[test]
    fn builds_fixed_plain_and_vectored_sqes_from_progress() {
        let p = pool();
        let cache = p.local();
        let mut slot = Slot::new(NONE);
        // 3 segments of 8 KiB (largest class): vectored.
        let sg = cache.try_alloc(3 * 8192).unwrap();
        assert_eq!(sg.num_segments(), 3);
        slot.req = Some(IoRequest::new(IoOp::Read, 0, 6, sg, 0));
        slot.stage = Stage::Read;
        slot.total = 3 * 8192;
        slot.offset = 4096;
        let (_, kind) = build_sqe(&mut slot, &env(None));
        assert_eq!(kind, SqeKind::Vectored);
        assert_eq!(slot.iov[0].iov_len, 8192);
        assert_eq!(slot.iov[2].iov_len, 8192);
        // After a short transfer of 12 KiB the rest starts 4 KiB into segment 1.
        slot.done = 12288;
        let (_, kind) = build_sqe(&mut slot, &env(None));
        assert_eq!(kind, SqeKind::Vectored);
        let segs = slot.req.as_ref().unwrap().buf.segments();
        assert_eq!(
            slot.iov[0].iov_base as usize,
            segs[1].as_ptr() as usize + 4096
        );
        assert_eq!(slot.iov[0].iov_len, 4096);
        assert_eq!(slot.iov[1].iov_len, 8192);
        // Only the last segment remains: a single transfer, fixed when the pool is registered.
        slot.done = 16384;
        assert_eq!(build_sqe(&mut slot, &env(None)).1, SqeKind::Plain);
        assert_eq!(build_sqe(&mut slot, &env(Some(p.id()))).1, SqeKind::Fixed);
        // A request using only a prefix of one segment is a single transfer too.
        slot.done = 0;
        slot.total = 4096;
        assert_eq!(build_sqe(&mut slot, &env(Some(p.id()))).1, SqeKind::Fixed);
    }

    #[test]
    fn long_lists_use_the_heap_iovecs() {
        let p = pool();
        let cache = p.local();
        let mut sg = cache.try_alloc(8192 * 6).unwrap();
        for s in sg.segments_mut() {
            s.set_len(4096);
        }
        let mut slot = Slot::new(NONE);
        slot.req = Some(IoRequest::new(IoOp::Write, 0, 6, sg, 0));
        slot.stage = Stage::Write;
        slot.total = 6 * 4096;
        let (_, kind) = build_sqe(&mut slot, &env(None));
        assert_eq!(kind, SqeKind::Vectored);
        assert_eq!(slot.iov_heap.len(), 6);
        assert!(slot.iov_heap.iter().all(|v| v.iov_len == 4096));
    }
}
