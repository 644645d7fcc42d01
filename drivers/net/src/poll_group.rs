//! An epoll set over a reactor's sockets, checked once per iteration.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// What a registered socket wants to hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
}

impl Interest {
    pub const READ: Interest = Interest {
        read: true,
        write: false,
    };
    pub const READ_WRITE: Interest = Interest {
        read: true,
        write: true,
    };

    fn events(self) -> u32 {
        let mut ev = (libc::EPOLLRDHUP | libc::EPOLLERR | libc::EPOLLHUP) as u32;
        if self.read {
            ev |= libc::EPOLLIN as u32;
        }
        if self.write {
            ev |= libc::EPOLLOUT as u32;
        }
        ev
    }
}

/// What a socket is ready for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub readable: bool,
    pub writable: bool,
    /// The peer hung up or the socket has an error; reading tells which.
    pub closed: bool,
}

/// A set of sockets, each with a caller-chosen token, polled without blocking.
#[derive(Debug)]
pub struct PollGroup {
    epoll: OwnedFd,
    events: Vec<libc::epoll_event>,
    members: usize,
}

/// Events taken per `epoll_wait`; more ready sockets are reported by the next poll.
const MAX_EVENTS: usize = 256;

impl PollGroup {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: fd is a fresh descriptor we own.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS],
            members: 0,
        })
    }

    /// Adds a socket (level-triggered: a socket with unread data is reported again).
    pub fn add(&mut self, fd: &impl AsRawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd.as_raw_fd(), token, interest)?;
        self.members += 1;
        Ok(())
    }

    /// Changes what a member wants to hear about (e.g. write readiness while output is stuck).
    pub fn modify(&mut self, fd: &impl AsRawFd, token: u64, interest: Interest) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd.as_raw_fd(), token, interest)
    }

    /// Removes a member. Closing the socket removes it too; this is for sockets that move on.
    pub fn remove(&mut self, fd: &impl AsRawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd.as_raw_fd(), 0, Interest::READ)?;
        self.members = self.members.saturating_sub(1);
        Ok(())
    }

    /// Number of sockets added and not removed.
    pub fn len(&self) -> usize {
        self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members == 0
    }

    /// Reports every ready member to `f` without blocking; returns how many were ready.
    pub fn poll(&mut self, mut f: impl FnMut(u64, Readiness)) -> io::Result<usize> {
        if self.members == 0 {
            return Ok(0);
        }
        // SAFETY: the events array is valid for MAX_EVENTS entries.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                MAX_EVENTS as libc::c_int,
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        for ev in &self.events[..n as usize] {
            let bits = ev.events;
            let token = ev.u64;
            f(
                token,
                Readiness {
                    readable: bits & libc::EPOLLIN as u32 != 0,
                    writable: bits & libc::EPOLLOUT as u32 != 0,
                    closed: bits & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0,
                },
            );
        }
        Ok(n as usize)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: interest.events(),
            u64: token,
        };
        // SAFETY: ev is a valid epoll_event; fd validity is the kernel's to check.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The group's epoll fd is readable while any member is ready: register it as a reactor wake
/// fd so a sleeping reactor wakes for its sockets.
impl AsRawFd for PollGroup {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}
