//! A small blocking JSON-RPC client over gyred's Unix socket, for gyrectl and tests.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::framing::{next_value, Frame};
use crate::jsonrpc::{ErrorObject, Id, Request, Response};

/// Largest response the client accepts.
const MAX_RESPONSE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (no file, or a stale one).
    #[error("no gyred listening on {}: is it running? start it with `gyred`", path.display())]
    NotRunning {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot reach gyred on {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("gyred did not answer within {0:?}")]
    Timeout(Duration),
    #[error("connection to gyred failed: {0}")]
    Io(#[from] io::Error),
    #[error("gyred closed the connection before answering")]
    Closed,
    /// The daemon answered with an error.
    #[error("{}", .0.message)]
    Rpc(ErrorObject),
    #[error("unexpected answer from gyred: {0}")]
    BadResponse(String),
}

/// A connection to gyred.
pub struct Client {
    stream: UnixStream,
    path: PathBuf,
    buf: Vec<u8>,
    next_id: u64,
    timeout: Duration,
}

impl Client {
    /// Connects to the socket at `path`; calls wait at most `timeout` for their answer.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                path: path.to_path_buf(),
                source,
            },
            _ => ClientError::Connect {
                path: path.to_path_buf(),
                source,
            },
        })?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Client {
            stream,
            path: path.to_path_buf(),
            buf: Vec::new(),
            next_id: 1,
            timeout,
        })
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Calls `method` and returns its result, or the daemon's error as [`ClientError::Rpc`].
    pub fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = Request {
            jsonrpc: "2.0",
            method,
            params: params.as_ref(),
            id: Some(Id::from(id)),
        };
        let bytes =
            serde_json::to_vec(&req).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        self.send_raw(&bytes)?;
        let v = self.read_value()?;
        let resp: Response =
            serde_json::from_value(v).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        if resp.id != Id::from(id) {
            return Err(ClientError::BadResponse(format!(
                "answer to request {:?}, expected {id}",
                resp.id
            )));
        }
        match (resp.result, resp.error) {
            (_, Some(e)) => Err(ClientError::Rpc(e)),
            (Some(r), None) => Ok(r),
            (None, None) => Err(ClientError::BadResponse("neither result nor error".into())),
        }
    }

    /// Calls `method` with typed params and decodes its typed result.
    pub fn call_typed<P: Serialize, R: DeserializeOwned>(
        &mut self,
        method: &str,
        params: &P,
    ) -> Result<R, ClientError> {
        let p =
            serde_json::to_value(params).map_err(|e| ClientError::BadResponse(e.to_string()))?;
        let r = self.call(method, Some(p))?;
        serde_json::from_value(r).map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    /// Sends bytes as they are (tests send malformed requests this way).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).map_err(|e| self.map_io(e))
    }

    /// Reads the next JSON value the daemon sends.
    pub fn read_value(&mut self) -> Result<Value, ClientError> {
        let mut chunk = [0u8; 8192];
        loop {
            match next_value(&self.buf) {
                Frame::Value(v, used) => {
                    self.buf.drain(..used);
                    return Ok(v);
                }
                Frame::Invalid(e) => return Err(ClientError::BadResponse(e)),
                Frame::Incomplete => {}
            }
            if self.buf.len() > MAX_RESPONSE {
                return Err(ClientError::BadResponse("response too large".into()));
            }
            let n = self.stream.read(&mut chunk).map_err(|e| self.map_io(e))?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn map_io(&self, e: io::Error) -> ClientError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ClientError::Timeout(self.timeout)
            }
            _ => ClientError::Io(e),
        }
    }
}
