//! The JSON-RPC server on a Unix socket.
//!
//! One thread accepts; each connection gets its own thread, so a client that sends garbage or
//! stops halfway through a request delays nobody else. Reads time out regularly so that every
//! thread notices shutdown; a request that stalls half-sent for [`STALL_TIMEOUT`], or grows
//! past [`MAX_REQUEST`], ends its connection. Replies are written with a timeout, so a client
//! that does not read cannot hold a thread forever.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gyre_api::framing::{next_value, Frame};
use gyre_api::jsonrpc::Response;
use gyre_api::{codes, ErrorObject, Id};
use serde_json::Value;

use crate::core::Core;
use crate::dispatch::handle_message;

/// Largest request (or batch) accepted, in bytes.
pub const MAX_REQUEST: usize = 1 << 20;
/// How long a half-sent request may stall before the connection is closed.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once; more are told so and closed.
pub const MAX_CONNECTIONS: usize = 64;
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another gyred is already listening on {0}")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; remove it or choose another --rpc-socket")]
    NotASocket(PathBuf),
    #[error("cannot listen on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The bound socket. Removes its file when dropped, if the file is still ours.
pub struct RpcSocket {
    listener: UnixListener,
    path: PathBuf,
    ino: u64,
}

impl RpcSocket {
    /// Binds `path` with mode 0600. A stale socket file (nobody accepts on it) is replaced;
    /// a live one is refused.
    pub fn bind(path: &Path) -> Result<RpcSocket, SocketError> {
        let io_err = |source| SocketError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Ok(meta) = fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(SocketError::NotASocket(path.to_path_buf()));
            }
            match UnixStream::connect(path) {
                Ok(_) => return Err(SocketError::InUse(path.to_path_buf())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "replacing a stale socket file");
                    fs::remove_file(path).map_err(io_err)?;
                }
                Err(e) => return Err(io_err(e)),
            }
        }
        // Create the socket with no access for group and others from the start (the umask
        // is process-wide, but nothing else creates files while the daemon starts).
        // SAFETY: umask has no preconditions.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(io_err)?;
        let ino = fs::metadata(path).map_err(io_err)?.ino();
        listener.set_nonblocking(true).map_err(io_err)?;
        Ok(RpcSocket {
            listener,
            path: path.to_path_buf(),
            ino,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RpcSocket {
    fn drop(&mut self) {
        if fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The running server: the accepting thread and the live connection threads.
pub(crate) struct RpcServer {
    accept_thread: Option<JoinHandle<RpcSocket>>,
    connections: Arc<AtomicUsize>,
}

impl RpcServer {
    pub(crate) fn start(socket: RpcSocket, core: Arc<Core>) -> io::Result<RpcServer> {
        let connections = Arc::new(AtomicUsize::new(0));
        let conns = connections.clone();
        let accept_thread = std::thread::Builder::new()
            .name("rpc-accept".into())
            .spawn(move || accept_loop(socket, core, conns))?;
        Ok(RpcServer {
            accept_thread: Some(accept_thread),
            connections,
        })
    }

    /// Stops accepting (the shutdown flag must be set) and waits for connection threads to
    /// finish their current request, until `deadline`. Returns the socket (removed on drop).
    pub(crate) fn stop(mut self, deadline: Instant) -> Option<RpcSocket> {
        let socket = self.accept_thread.take().and_then(|t| t.join().ok());
        while self.connections.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        socket
    }
}

fn wait_readable(fd: std::os::fd::RawFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
}

fn accept_loop(socket: RpcSocket, core: Arc<Core>, connections: Arc<AtomicUsize>) -> RpcSocket {
    use std::os::fd::AsRawFd;
    let mut next_conn = 0u64;
    while !core.context().shutdown().is_set() {
        wait_readable(socket.listener.as_raw_fd(), POLL_INTERVAL);
        let stream = match socket.listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
        };
        next_conn += 1;
        let id = next_conn;
        if connections.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            tracing::warn!(conn = id, "too many RPC connections; refusing one");
            refuse(stream, "too many connections; try again later");
            continue;
        }
        connections.fetch_add(1, Ordering::SeqCst);
        let c = core.clone();
        let counter = connections.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("rpc-conn-{id}"))
            .spawn(move || {
                tracing::info!(conn = id, "RPC client connected");
                let why = serve_connection(stream, &c);
                tracing::info!(conn = id, reason = why, "RPC client disconnected");
                counter.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            connections.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(error = %e, "cannot start a connection thread");
        }
    }
    socket
}

fn refuse(mut stream: UnixStream, why: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let resp = Response::failure(Id::Null, ErrorObject::new(codes::INTERNAL_ERROR, why));
    if let Ok(bytes) = serde_json::to_vec(&resp) {
        let _ = stream.write_all(&bytes);
    }
}

fn send(stream: &mut UnixStream, v: &Value) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(v).map_err(io::Error::other)?;
    bytes.push(b'\n');
    stream.write_all(&bytes)
}

/// Serves one connection until it closes; returns why it ended.
fn serve_connection(mut stream: UnixStream, core: &Core) -> &'static str {
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(POLL_INTERVAL)).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return "socket setup failed";
    }
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut last_progress = Instant::now();
    loop {
        // Serve every complete message already received.
        loop {
            match next_value(&buf) {
                Frame::Value(msg, used) => {
                    buf.drain(..used);
                    let Some(_running) = core.begin_request() else {
                        let resp = Response::failure(
                            Id::Null,
                            ErrorObject::new(codes::SHUTTING_DOWN, "gyred is shutting down"),
                        );
                        let _ = send(&mut stream, &serde_json::to_value(resp).unwrap_or_default());
                        return "shutdown";
                    };
                    if let Some(reply) = handle_message(core, msg) {
                        if send(&mut stream, &reply).is_err() {
                            return "write failed";
                        }
                    }
                }
                Frame::Invalid(e) => {
                    let resp = Response::failure(
                        Id::Null,
                        ErrorObject::new(codes::PARSE_ERROR, format!("parse error: {e}")),
                    );
                    let _ = send(&mut stream, &serde_json::to_value(resp).unwrap_or_default());
                    return "parse error";
                }
                Frame::Incomplete => break,
            }
        }
        if buf.len() > MAX_REQUEST {
            let resp = Response::failure(
                Id::Null,
                ErrorObject::new(
                    codes::INVALID_REQUEST,
                    format!("request larger than {MAX_REQUEST} bytes"),
                ),
            );
            let _ = send(&mut stream, &serde_json::to_value(resp).unwrap_or_default());
            return "request too large";
        }
        if core.context().shutdown().is_set() {
            return "shutdown";
        }
        match stream.read(&mut chunk) {
            Ok(0) => return "closed by client",
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                last_progress = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                let partial = buf.iter().any(|b| !b.is_ascii_whitespace());
                if partial && last_progress.elapsed() > STALL_TIMEOUT {
                    return "request stalled";
                }
                if !partial {
                    buf.clear();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return "read failed",
        }
    }
}
