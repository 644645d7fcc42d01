//! `null`: reads return zeroes, writes are discarded. Measures the stack above the device.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::bdev::{Bdev, BdevInfo, IoChannelBackend};
use crate::io::{IoCompletion, IoError, IoOp, IoRequest, IoStatus, IoTypes};
use crate::BdevError;

pub struct NullBdev {
    info: BdevInfo,
}

impl NullBdev {
    pub fn create(name: &str, size_bytes: u64, block_size: u32) -> Result<Arc<Self>, BdevError> {
        let num_blocks = size_bytes / block_size.max(1) as u64;
        let info = BdevInfo::new(name, "null", block_size, num_blocks, IoTypes::all())?;
        Ok(Arc::new(NullBdev { info }))
    }

    fn execute(&self, req: &mut IoRequest) -> IoStatus {
        let len = (req.num_blocks * self.info.block_size() as u64) as usize;
        match req.op {
            IoOp::Read => {
                req.buf.fill(len, 0);
                Ok(())
            }
            IoOp::Compare => {
                let mut pos = 0u64;
                let mut bad = None;
                req.buf.for_each_chunk(0, len, |c| {
                    if bad.is_none() {
                        if let Some(i) = c.iter().position(|&b| b != 0) {
                            bad = Some(pos + i as u64);
                        }
                    }
                    pos += c.len() as u64;
                });
                bad.map_or(Ok(()), |offset| Err(IoError::Miscompare { offset }))
            }
            IoOp::Write | IoOp::Flush | IoOp::WriteZeroes | IoOp::Unmap | IoOp::Reset => Ok(()),
        }
    }
}

impl Bdev for NullBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn create_channel(self: Arc<Self>) -> Result<Box<dyn IoChannelBackend>, BdevError> {
        Ok(Box::new(NullChannel {
            bdev: self,
            done: VecDeque::with_capacity(256),
        }))
    }
}

struct NullChannel {
    bdev: Arc<NullBdev>,
    done: VecDeque<IoCompletion>,
}

impl IoChannelBackend for NullChannel {
    fn submit(&mut self, mut req: IoRequest) {
        let status = self.bdev.execute(&mut req);
        self.done.push_back(IoCompletion { status, req });
    }

    fn poll(&mut self, done: &mut dyn FnMut(IoCompletion)) -> usize {
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
