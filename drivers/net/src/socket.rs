//! Listening and connected TCP sockets in non-blocking mode.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// What a receive found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// This many bytes arrived (never zero).
    Data(usize),
    /// Nothing to read now.
    WouldBlock,
    /// The peer closed its side; nothing more will arrive.
    Closed,
}

/// A listening socket that accepts without blocking.
#[derive(Debug)]
pub struct TcpListener {
    inner: std::net::TcpListener,
}

impl TcpListener {
    /// Binds `addr` (IPv4 or IPv6; port 0 picks a free one) and listens, non-blocking.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let inner = std::net::TcpListener::bind(addr)?;
        inner.set_nonblocking(true)?;
        Ok(Self { inner })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// One waiting connection, already non-blocking with Nagle off, or `None` when none waits.
    pub fn accept(&self) -> io::Result<Option<(TcpConnection, SocketAddr)>> {
        loop {
            match self.inner.accept() {
                Ok((stream, peer)) => return Ok(Some((TcpConnection::from_std(stream)?, peer))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The peer gave up between SYN and accept: not the listener's fault.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsRawFd for TcpListener {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

/// A connected TCP socket in non-blocking mode.
#[derive(Debug)]
pub struct TcpConnection {
    inner: TcpStream,
}

impl TcpConnection {
    /// Takes over a connected stream: non-blocking, Nagle off (PDUs leave as soon as they are
    /// flushed; batching is done by the caller, one send per iteration).
    pub fn from_std(stream: TcpStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        Ok(Self { inner: stream })
    }

    /// Connects with a bound on the time spent (control path: this blocks the caller).
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        Self::from_std(TcpStream::connect_timeout(&addr, timeout)?)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Receives into `buf`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Recv> {
        if buf.is_empty() {
            return Ok(Recv::WouldBlock);
        }
        loop {
            // SAFETY: buf is a valid writable region of buf.len() bytes.
            let n = unsafe {
                libc::recv(
                    self.inner.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            match classify(n) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Receives into several buffers in order (payload straight into its data buffer and the
    /// next headers into the staging buffer, in one call).
    pub fn recv_vectored(&self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<Recv> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(Recv::WouldBlock);
        }
        let count = bufs.len().min(libc::UIO_MAXIOV as usize);
        loop {
            // SAFETY: IoSliceMut is ABI-compatible with iovec on Unix, and each points at a
            // valid writable region.
            let n = unsafe {
                libc::readv(
                    self.inner.as_raw_fd(),
                    bufs.as_ptr().cast::<libc::iovec>(),
                    count as libc::c_int,
                )
            };
            match classify(n) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Sends what it can of `iov` without blocking; returns the bytes taken by the kernel
    /// (0 when the socket buffer is full).
    ///
    /// # Safety
    /// Every iovec must point at readable memory of its length for the duration of the call.
    pub unsafe fn send_iovecs(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        if iov.is_empty() {
            return Ok(0);
        }
        // SAFETY: msghdr is plain data; zero is a valid initial value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr().cast_mut();
        msg.msg_iovlen = iov.len().min(libc::UIO_MAXIOV as usize) as _;
        loop {
            // SAFETY: msg points at iovecs the caller vouches for.
            let n = unsafe {
                libc::sendmsg(
                    self.inner.as_raw_fd(),
                    &msg,
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => return Err(e),
            }
        }
    }

    /// Sends a whole small buffer without blocking (control path: handshakes, errors).
    /// Returns the bytes taken (may be fewer than `buf.len()` when the socket is full).
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        let iov = [libc::iovec {
            iov_base: buf.as_ptr().cast_mut().cast(),
            iov_len: buf.len(),
        }];
        // SAFETY: the iovec points at `buf`, alive for the call.
        unsafe { self.send_iovecs(&iov) }
    }

    /// Shuts both directions down; the peer sees the end of the stream.
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown(std::net::Shutdown::Both);
    }

    /// The underlying stream, for socket options.
    pub fn std(&self) -> &TcpStream {
        &self.inner
    }
}

impl AsRawFd for TcpConnection {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_raw_fd()
    }
}

fn classify(n: isize) -> io::Result<Recv> {
    if n > 0 {
        return Ok(Recv::Data(n as usize));
    }
    if n == 0 {
        return Ok(Recv::Closed);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(Recv::WouldBlock)
    } else {
        Err(e)
    }
}
