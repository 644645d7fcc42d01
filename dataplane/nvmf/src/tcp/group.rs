//! One poll group per reactor: the connections that reactor serves, checked once per iteration
//! through a `gyre_net::PollGroup`, plus (on the first group) the listening sockets.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use gyre_net::{Interest, PollGroup, TcpConnection, TcpListener};
use gyre_reactor::{local, CallError, MessageSender, PollStatus, ReactorHandle};

use crate::config::ListenAddress;
use crate::target::TargetShared;
use crate::tcp::conn::{ConnStatus, TargetConnection};

/// Messages a poll group takes from other threads.
pub(crate) enum GroupMsg {
    /// Start accepting on this socket.
    Listen(TcpListener, ListenAddress),
    Unlisten(ListenAddress),
    /// Serve this accepted connection.
    Adopt {
        socket: TcpConnection,
        peer: SocketAddr,
        listener: ListenAddress,
    },
    /// Close everything.
    Shutdown,
}

/// Tokens above this mark listening sockets in the epoll set.
const LISTENER_TOKEN: u64 = 1 << 63;

struct Group {
    index: usize,
    target: Arc<OnceLock<Weak<TargetShared>>>,
    connections: Arc<AtomicUsize>,
    sockets: PollGroup,
    listeners: Vec<(TcpListener, ListenAddress)>,
    /// Connections by slot; the epoll token is the slot index.
    conns: Vec<Option<TargetConnection>>,
    free: Vec<usize>,
    /// The target is shutting down: no more connections are adopted.
    shutting_down: bool,
}

/// Starts the poll group on `handle`'s reactor; returns the sender that feeds it.
pub(crate) fn start(
    handle: &ReactorHandle,
    index: usize,
    target: Arc<OnceLock<Weak<TargetShared>>>,
    connections: Arc<AtomicUsize>,
    timeout: Duration,
) -> Result<MessageSender<GroupMsg>, CallError> {
    handle.open_channel(
        1024,
        move || {
            let sockets = PollGroup::new().expect("epoll_create1 failed: out of file descriptors");
            let reactor = local().expect("poll groups start on a reactor");
            if let Err(e) = reactor.register_wake_fd(std::os::fd::AsRawFd::as_raw_fd(&sockets)) {
                tracing::warn!(error = %e, "nvmf: poll group cannot wake its reactor");
            }
            let group = Rc::new(RefCell::new(Group {
                index,
                target,
                connections,
                sockets,
                listeners: Vec::new(),
                conns: Vec::new(),
                free: Vec::new(),
                shutting_down: false,
            }));
            let poller = group.clone();
            reactor.register_poller("nvmf-tcp", move || poller.borrow_mut().poll());
            let keep_alive = group.clone();
            reactor.register_timed_poller(
                "nvmf-keep-alive",
                Duration::from_millis(100),
                move || keep_alive.borrow_mut().check_keep_alive(),
            );
            move |msg: GroupMsg| group.borrow_mut().handle(msg)
        },
        timeout,
    )
}

impl Group {
    fn target(&self) -> Option<Arc<TargetShared>> {
        self.target.get().and_then(Weak::upgrade)
    }

    fn handle(&mut self, msg: GroupMsg) {
        match msg {
            GroupMsg::Listen(socket, addr) => {
                let token = LISTENER_TOKEN | self.listeners.len() as u64;
                if let Err(e) = self.sockets.add(&socket, token, Interest::READ) {
                    tracing::error!(%addr, error = %e, "nvmf: cannot poll listener");
                    return;
                }
                self.listeners.push((socket, addr));
                self.renumber_listeners();
            }
            GroupMsg::Unlisten(addr) => {
                if let Some(pos) = self.listeners.iter().position(|(_, a)| *a == addr) {
                    let (socket, _) = self.listeners.remove(pos);
                    let _ = self.sockets.remove(&socket);
                    self.renumber_listeners();
                }
            }
            GroupMsg::Adopt {
                socket,
                peer,
                listener,
            } => self.adopt(socket, peer, listener),
            GroupMsg::Shutdown => {
                self.shutting_down = true;
                for (socket, _) in self.listeners.drain(..) {
                    let _ = self.sockets.remove(&socket);
                }
                for c in self.conns.iter_mut().flatten() {
                    c.close("target shutting down");
                }
            }
        }
    }

    /// Listener tokens are their index; keep them dense after a removal.
    fn renumber_listeners(&mut self) {
        for (i, (socket, _)) in self.listeners.iter().enumerate() {
            let _ = self
                .sockets
                .modify(socket, LISTENER_TOKEN | i as u64, Interest::READ);
        }
    }

    /// Serves an accepted connection; the acceptor has already counted it in `connections`,
    /// so a connection refused here is uncounted again.
    fn adopt(&mut self, socket: TcpConnection, peer: SocketAddr, listener: ListenAddress) {
        let Some(target) = self.target() else {
            return;
        };
        if self.shutting_down {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        if let Err(e) = self.sockets.add(&socket, slot as u64, Interest::READ) {
            tracing::warn!(%peer, error = %e, "nvmf: cannot poll connection; dropping it");
            self.free.push(slot);
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let id = target.next_connection_id.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%peer, %listener, id, reactor = self.index, "nvmf: connection accepted");
        self.conns[slot] = Some(TargetConnection::new(id, socket, peer, listener, target));
    }

    fn accept_all(&mut self, which: usize) {
        let Some(target) = self.target() else {
            return;
        };
        let Some(addr) = self.listeners.get(which).map(|(_, a)| *a) else {
            return;
        };
        loop {
            let accepted = match self.listeners.get(which) {
                Some((socket, _)) => socket.accept(),
                None => return,
            };
            let (conn, peer) = match accepted {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "nvmf: accept failed");
                    break;
                }
            };
            let dest = target.least_loaded_group();
            // Count it now so a burst of connections spreads out.
            target.groups[dest]
                .connections
                .fetch_add(1, Ordering::Relaxed);
            if dest == self.index {
                self.adopt(conn, peer, addr);
            } else if let Err(GroupMsg::Adopt { socket, .. }) =
                target.groups[dest].sender.send(GroupMsg::Adopt {
                    socket: conn,
                    peer,
                    listener: addr,
                })
            {
                target.groups[dest]
                    .connections
                    .fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(%peer, "nvmf: poll group queue full; refusing connection");
                socket.shutdown();
            }
        }
    }

    fn poll(&mut self) -> PollStatus {
        let mut busy = false;
        // Readiness first: read and start work on every connection that has input.
        let mut ready_listeners = 0u64;
        let conns = &mut self.conns;
        let polled = self.sockets.poll(|token, readiness| {
            if token & LISTENER_TOKEN != 0 {
                ready_listeners |= 1 << (token & 63);
            } else if let Some(Some(c)) = conns.get_mut(token as usize) {
                c.on_ready(readiness);
            }
        });
        match polled {
            Ok(n) => busy |= n > 0,
            Err(e) => tracing::warn!(error = %e, "nvmf: epoll_wait failed"),
        }
        let mut i = 0;
        while ready_listeners != 0 {
            if ready_listeners & 1 != 0 {
                self.accept_all(i);
            }
            ready_listeners >>= 1;
            i += 1;
        }
        // Then completions, events and output on every connection; close the finished.
        for slot in 0..self.conns.len() {
            let Some(conn) = self.conns[slot].as_mut() else {
                continue;
            };
            match conn.progress(&mut self.sockets, slot as u64) {
                ConnStatus::Busy => busy = true,
                ConnStatus::Idle => {}
                ConnStatus::Finished => {
                    if let Some(c) = self.conns[slot].take() {
                        let _ = self.sockets.remove(c.socket());
                        tracing::info!(id = c.id(), peer = %c.peer(), "nvmf: connection closed");
                    }
                    self.free.push(slot);
                    self.connections.fetch_sub(1, Ordering::Relaxed);
                    busy = true;
                }
            }
        }
        if busy {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    fn check_keep_alive(&mut self) -> PollStatus {
        for c in self.conns.iter_mut().flatten() {
            c.check_keep_alive();
        }
        PollStatus::Idle
    }
}
