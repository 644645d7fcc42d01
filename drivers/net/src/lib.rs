//! Non-blocking TCP sockets for reactors.
//!
//! A reactor owns one [`PollGroup`] per protocol: an epoll set over its connections that it
//! checks once per iteration (one `epoll_wait` with a zero timeout, however many connections
//! it holds), then reads only the connections that are ready. The poll group's own fd becomes
//! readable whenever any member is ready, so a reactor in hybrid idle mode registers it as a
//! wake fd and sleeps until a host sends something.
//!
//! Outgoing PDUs are queued as `iovec`s pointing at memory the protocol keeps alive (request
//! slots, pool buffers) in a [`SendQueue`], and everything queued during an iteration leaves
//! with one `sendmsg` per connection. Entries carry a cookie that is handed back once the
//! entry's last byte is in the kernel, which is when the protocol may reuse that memory.

mod poll_group;
mod send_queue;
mod socket;

pub use poll_group::{Interest, PollGroup, Readiness};
pub use send_queue::{FlushOutcome, SendQueue, NO_COOKIE};
pub use socket::{Recv, TcpConnection, TcpListener};
