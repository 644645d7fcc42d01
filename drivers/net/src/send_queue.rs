//! Outgoing bytes of one connection, queued as iovecs and sent in one `sendmsg` per flush.

use std::collections::VecDeque;
use std::io;

use crate::socket::TcpConnection;

/// Cookie for an entry whose completion nobody needs to hear about.
pub const NO_COOKIE: u32 = u32::MAX;

/// Where a flush left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushOutcome {
    /// Everything queued is in the kernel.
    Empty,
    /// The socket is full; wait for write readiness and flush again.
    Blocked,
}

/// A fixed-capacity queue of byte ranges to send, in order.
///
/// The queue never owns or copies payload: it holds pointers to memory the protocol keeps
/// alive (request slots and their pool buffers) until that entry's cookie comes back from
/// [`SendQueue::flush`]. It allocates only when created.
#[derive(Debug)]
pub struct SendQueue {
    iov: VecDeque<libc::iovec>,
    cookies: VecDeque<u32>,
    capacity: usize,
    queued_bytes: usize,
}

/// The kernel takes at most this many iovecs per call.
const MAX_IOV_PER_SEND: usize = libc::UIO_MAXIOV as usize;

impl SendQueue {
    pub fn with_capacity(entries: usize) -> Self {
        Self {
            iov: VecDeque::with_capacity(entries),
            cookies: VecDeque::with_capacity(entries),
            capacity: entries,
            queued_bytes: 0,
        }
    }

    /// Entries that can still be pushed.
    pub fn room(&self) -> usize {
        self.capacity - self.iov.len()
    }

    pub fn is_empty(&self) -> bool {
        self.iov.is_empty()
    }

    /// Bytes queued and not yet sent.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Queues `len` bytes at `ptr`; `cookie` (unless [`NO_COOKIE`]) is reported by the flush
    /// that sends the last of them. Empty ranges are skipped (their cookie fires at once on the
    /// next flush, in order). Returns false, queuing nothing, when the queue is full.
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay valid and unchanged until the cookie is reported or the queue
    /// is cleared.
    pub unsafe fn push(&mut self, ptr: *const u8, len: usize, cookie: u32) -> bool {
        if self.iov.len() == self.capacity {
            return false;
        }
        self.iov.push_back(libc::iovec {
            iov_base: ptr.cast_mut().cast(),
            iov_len: len,
        });
        self.cookies.push_back(cookie);
        self.queued_bytes += len;
        true
    }

    /// Sends as much as the socket takes, reporting the cookie of every entry fully sent.
    pub fn flush(
        &mut self,
        conn: &TcpConnection,
        mut sent: impl FnMut(u32),
    ) -> io::Result<FlushOutcome> {
        loop {
            if self.queued_bytes == 0 {
                // Only empty ranges (if anything) are left: they are "sent" as they stand.
                self.retire(0, &mut sent);
                return Ok(FlushOutcome::Empty);
            }
            let front = self.iov.make_contiguous();
            let count = front.len().min(MAX_IOV_PER_SEND);
            let offered: usize = front[..count].iter().map(|v| v.iov_len).sum();
            // SAFETY: every iovec was pushed under push's contract.
            let n = unsafe { conn.send_iovecs(&front[..count])? };
            self.queued_bytes -= n;
            self.retire(n, &mut sent);
            if n < offered {
                // The kernel took less than offered: the socket buffer is full.
                return Ok(FlushOutcome::Blocked);
            }
        }
    }

    /// Drops `n` sent bytes from the front: entries wholly sent report their cookie, the entry
    /// the send stopped inside is trimmed.
    fn retire(&mut self, mut n: usize, sent: &mut impl FnMut(u32)) {
        while let Some(first) = self.iov.front_mut() {
            if first.iov_len <= n {
                n -= first.iov_len;
                self.iov.pop_front();
                if let Some(c) = self.cookies.pop_front() {
                    if c != NO_COOKIE {
                        sent(c);
                    }
                }
            } else {
                if n > 0 {
                    // SAFETY: advancing within the range pushed.
                    first.iov_base = unsafe { first.iov_base.cast::<u8>().add(n).cast() };
                    first.iov_len -= n;
                }
                break;
            }
        }
    }

    /// Forgets everything queued (the connection is going away). Returns the cookies that
    /// will never be reported, so their owners can be released.
    pub fn clear(&mut self, mut dropped: impl FnMut(u32)) {
        self.iov.clear();
        self.queued_bytes = 0;
        for c in self.cookies.drain(..) {
            if c != NO_COOKIE {
                dropped(c);
            }
        }
    }
}
