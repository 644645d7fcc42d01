//! `malloc`: a RAM disk in one memory region (hugepages when available). Reads and writes are
//! memory copies done at submission; completions are handed back on the next poll.

use std::collections::VecDeque;
use std::sync::Arc;

use gyre_reactor::{MemRegion, MemoryKind, SgList};

use crate::bdev::{Bdev, BdevInfo, IoChannelBackend};
use crate::io::{IoCompletion, IoError, IoOp, IoRequest, IoStatus, IoTypes};
use crate::BdevError;

pub struct MallocBdev {
    info: BdevInfo,
    mem: MemRegion,
}

impl MallocBdev {
    pub fn create(name: &str, size_bytes: u64, block_size: u32) -> Result<Arc<Self>, BdevError> {
        let num_blocks = size_bytes / block_size.max(1) as u64;
        let info = BdevInfo::new(name, "malloc", block_size, num_blocks, IoTypes::all())?;
        let len = usize::try_from(info.size_bytes())
            .map_err(|_| BdevError::TooLarge(name.to_string()))?;
        let mem = MemRegion::allocate(len, true)?;
        tracing::debug!(bdev = name, memory = %mem.kind(), "malloc bdev memory mapped");
        Ok(Arc::new(MallocBdev { info, mem }))
    }

    pub fn memory_kind(&self) -> MemoryKind {
        self.mem.kind()
    }

    fn execute(&self, req: &mut IoRequest) -> IoStatus {
        let bs = self.info.block_size() as usize;
        // The channel checked the range, so these fit in the region.
        let off = req.offset_blocks as usize * bs;
        let len = req.num_blocks as usize * bs;
        let base = self.mem.as_ptr();
        match req.op {
            IoOp::Read => {
                let mut pos = off;
                req.buf.for_each_chunk_mut(0, len, |dst| {
                    // SAFETY: [pos, pos + dst.len()) lies inside the region. Concurrent writers
                    // to the same blocks give undefined block contents, as on any disk.
                    unsafe {
                        std::ptr::copy_nonoverlapping(base.add(pos), dst.as_mut_ptr(), dst.len())
                    };
                    pos += dst.len();
                });
                Ok(())
            }
            IoOp::Write => {
                let mut pos = off;
                req.buf.for_each_chunk(0, len, |src| {
                    // SAFETY: as above.
                    unsafe {
                        std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(pos), src.len())
                    };
                    pos += src.len();
                });
                Ok(())
            }
            IoOp::Compare => compare(&req.buf, len, |pos, n| {
                // SAFETY: as above.
                unsafe { std::slice::from_raw_parts(base.add(off + pos), n) }
            }),
            IoOp::WriteZeroes | IoOp::Unmap => {
                // SAFETY: as above. Unmapped blocks read back as zeroes.
                unsafe { std::ptr::write_bytes(base.add(off), 0, len) };
                Ok(())
            }
            IoOp::Flush | IoOp::Reset => Ok(()),
        }
    }
}

/// Compares the first `len` bytes of `buf` against `expected(pos, n)`; reports the first
/// differing byte.
pub(crate) fn compare<'a>(
    buf: &SgList,
    len: usize,
    expected: impl Fn(usize, usize) -> &'a [u8],
) -> IoStatus {
    let mut pos = 0;
    let mut mismatch = None;
    buf.for_each_chunk(0, len, |chunk| {
        if mismatch.is_none() && chunk != expected(pos, chunk.len()) {
            let at = chunk
                .iter()
                .zip(expected(pos, chunk.len()))
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            mismatch = Some(pos + at);
        }
        pos += chunk.len();
    });
    match mismatch {
        Some(at) => Err(IoError::Miscompare { offset: at as u64 }),
        None => Ok(()),
    }
}

impl Bdev for MallocBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn create_channel(self: Arc<Self>) -> Result<Box<dyn IoChannelBackend>, BdevError> {
        Ok(Box::new(MallocChannel {
            bdev: self,
            done: VecDeque::with_capacity(256),
        }))
    }
}

struct MallocChannel {
    bdev: Arc<MallocBdev>,
    done: VecDeque<IoCompletion>,
}

impl IoChannelBackend for MallocChannel {
    fn submit(&mut self, mut req: IoRequest) {
        let status = self.bdev.execute(&mut req);
        self.done.push_back(IoCompletion { status, req });
    }

    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
        // Only what was queued before this poll: a completion handler that resubmits does
        // not keep us here forever.
        let n = self.done.len();
        for _ in 0..n {
            if let Some(c) = self.done.pop_front() {
                done(c);
            }
        }
        n
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}
