//! An initiator connection over a non-blocking `gyre-net` socket: login, then the
//! [`InitiatorSession`] state machine fed by `recv` and drained by `send`.
//!
//! [`IscsiInitiator::poll`] does one non-blocking round (send what is queued, read what has
//! arrived) and never waits, so `gyre-perf` can drive many connections from a reactor. The
//! blocking helpers (`connect`, `command`, `read`, `discover`, ...) loop on `poll` with a
//! deadline, sleeping briefly when nothing moves; they are for tests and tools.

use super::cdb::{self, Capacity, Cdb, InquiryData};
use super::session::{
    CommandError, Completion, DataDirection, InitiatorSession, SessionError, SubmitError,
};
use crate::bhs::BhsBody;
use crate::framing::{encode_pdu, parse_pdu, Digests, FramingError, Parsed};
use crate::login::{
    InitiatorAuth, InitiatorLogin, InitiatorLoginConfig, InitiatorLoginError, InitiatorLoginStep,
};
use crate::lun::Lun;
use crate::negotiate::SessionParams;
use crate::sendtargets::{self, DiscoveredTarget, SendTargetsError};
use crate::text::{TextError, TextLimits, TextList};
use gyre_net::{Recv, TcpConnection};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum InitiatorError {
    #[error("transport: {0}")]
    Io(#[from] io::Error),
    #[error("the target closed the connection")]
    Closed,
    #[error("timed out")]
    Timeout,
    #[error("login failed: {0}")]
    Login(#[from] InitiatorLoginError),
    #[error("redirected to {0}")]
    Redirected(String),
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    SendTargets(#[from] SendTargetsError),
    #[error("unexpected reply: {0}")]
    Unexpected(&'static str),
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub portal: SocketAddr,
    pub login: InitiatorLoginConfig,
    /// Commands outstanding at once (task slots).
    pub queue_depth: u16,
    /// Bound on connecting and logging in.
    pub timeout: Duration,
}

/// One logged-in connection (single-connection session).
pub struct IscsiInitiator {
    conn: TcpConnection,
    session: InitiatorSession,
    rxbuf: Box<[u8]>,
}

const RX_CHUNK: usize = 256 * 1024;

fn send_all(conn: &TcpConnection, mut buf: &[u8], deadline: Instant) -> Result<(), InitiatorError> {
    while !buf.is_empty() {
        let n = conn.send(buf)?;
        buf = &buf[n..];
        if n == 0 {
            if Instant::now() > deadline {
                return Err(InitiatorError::Timeout);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    Ok(())
}

/// Runs a login over `conn` and returns its result.
fn login(
    conn: &TcpConnection,
    config: InitiatorLoginConfig,
    deadline: Instant,
) -> Result<crate::login::InitiatorLoginResult, InitiatorError> {
    let mut state = InitiatorLogin::new(config);
    let mut pdu = state.start();
    let mut rx: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let mut out = Vec::new();
        encode_pdu(&pdu.bhs, &[], &pdu.data, Digests::default(), &mut out)?;
        send_all(conn, &out, deadline)?;
        // Login PDUs are at most 8192 bytes of data unless declared otherwise; allow more
        // from targets that send larger login responses.
        let (resp, data) = loop {
            if let Parsed::Complete(p, n) = parse_pdu(&rx, Digests::default(), 1 << 16)? {
                let BhsBody::LoginResponse(r) = p.bhs.body else {
                    return Err(InitiatorError::Unexpected("a non-login PDU during login"));
                };
                let data = p.data.to_vec();
                rx.drain(..n);
                break (r, data);
            }
            match conn.recv(&mut chunk)? {
                Recv::Data(n) => rx.extend_from_slice(&chunk[..n]),
                Recv::Closed => return Err(InitiatorError::Closed),
                Recv::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(InitiatorError::Timeout);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        };
        match state.on_response(&resp, &data) {
            InitiatorLoginStep::Send(next) => pdu = next,
            InitiatorLoginStep::Complete(r) => return Ok(*r),
            InitiatorLoginStep::Redirect { address, .. } => {
                return Err(InitiatorError::Redirected(address))
            }
            InitiatorLoginStep::Failed(e) => return Err(e.into()),
        }
    }
}

impl IscsiInitiator {
    /// Connects to the portal and logs in (blocking, bounded by `opts.timeout`).
    pub fn connect(opts: ConnectOptions) -> Result<Self, InitiatorError> {
        let deadline = Instant::now() + opts.timeout;
        let conn = TcpConnection::connect(opts.portal, opts.timeout)?;
        let r = login(&conn, opts.login, deadline)?;
        let session = InitiatorSession::new(
            r.params,
            r.cmd_sn,
            r.exp_stat_sn,
            r.max_cmd_sn,
            opts.queue_depth,
        );
        Ok(IscsiInitiator {
            conn,
            session,
            rxbuf: vec![0u8; RX_CHUNK].into_boxed_slice(),
        })
    }

    /// The socket, the negotiated parameters, (CmdSN, ExpStatSN, MaxCmdSN) and the queue
    /// depth, for [`super::datapath::DataPathConnection`]. Fails unless the connection is
    /// quiet (nothing outstanding, sent or received in part).
    #[allow(clippy::type_complexity)]
    pub(crate) fn into_parts(
        self,
    ) -> Result<(TcpConnection, SessionParams, (u32, u32, u32), u16), InitiatorError> {
        if !self.session.is_quiet() {
            return Err(InitiatorError::Unexpected(
                "the connection is busy and cannot change drivers",
            ));
        }
        let seq = self.session.sequence_numbers();
        let qd = u16::try_from(self.session.queue_depth()).unwrap_or(u16::MAX);
        let params = self.session.params().clone();
        Ok((self.conn, params, seq, qd))
    }

    pub fn session(&mut self) -> &mut InitiatorSession {
        &mut self.session
    }

    /// One non-blocking round: flush queued PDUs, then read and process what arrived.
    /// Returns whether anything moved.
    pub fn poll(&mut self) -> Result<bool, InitiatorError> {
        let mut progressed = false;
        if !self.session.pending_tx().is_empty() {
            let n = self.conn.send(self.session.pending_tx())?;
            self.session.consume_tx(n);
            progressed |= n > 0;
        }
        loop {
            match self.conn.recv(&mut self.rxbuf) {
                Ok(Recv::Data(n)) => {
                    progressed = true;
                    self.session.receive(&self.rxbuf[..n])?;
                    if n < self.rxbuf.len() {
                        break;
                    }
                }
                Ok(Recv::WouldBlock) => break,
                Ok(Recv::Closed) => {
                    self.session.abort_all();
                    return Err(InitiatorError::Closed);
                }
                Err(e) => {
                    self.session.abort_all();
                    return Err(e.into());
                }
            }
        }
        if !self.session.pending_tx().is_empty() {
            let n = self.conn.send(self.session.pending_tx())?;
            self.session.consume_tx(n);
            progressed |= n > 0;
        }
        Ok(progressed)
    }

    /// Polls until `done` says so or the time is up.
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&mut InitiatorSession) -> bool,
    ) -> Result<(), InitiatorError> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&mut self.session) {
                return Ok(());
            }
            if !self.poll()? {
                if Instant::now() > deadline {
                    return Err(InitiatorError::Timeout);
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    /// Runs one command to completion. The completion's result says how the command ended.
    pub fn command(
        &mut self,
        lun: Lun,
        cdb: &Cdb,
        direction: DataDirection,
        buffer: Vec<u8>,
        timeout: Duration,
    ) -> Result<Completion, InitiatorError> {
        const SYNC_TAG: u64 = u64::MAX;
        self.session
            .submit(lun, cdb.as_slice(), direction, buffer, SYNC_TAG)?;
        let mut found = None;
        let r = self.run_until(timeout, |s| {
            while let Some(c) = s.next_completion() {
                if c.user_tag == SYNC_TAG {
                    found = Some(c);
                }
            }
            found.is_some()
        });
        match (r, found) {
            (_, Some(c)) => Ok(c),
            (Err(InitiatorError::Timeout), None) => {
                // Without task management the command cannot be taken back: the
                // connection is no longer usable.
                self.session.abort_all();
                Err(InitiatorError::Timeout)
            }
            (Err(e), None) => Err(e),
            (Ok(()), None) => Err(InitiatorError::Unexpected("no completion")),
        }
    }

    fn data_command(
        &mut self,
        lun: Lun,
        cdb: &Cdb,
        direction: DataDirection,
        buffer: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, InitiatorError> {
        let mut c = self.command(lun, cdb, direction, buffer, timeout)?;
        // A UNIT ATTENTION (e.g. power on or reset, reported to the first command of a new
        // I_T nexus) is not about this command: retry a few times, as initiators do.
        let mut retries = 0;
        while retries < 3 && is_unit_attention(&c.result) {
            retries += 1;
            c = self.command(lun, cdb, direction, c.buffer, timeout)?;
        }
        c.result?;
        let mut buf = c.buffer;
        if direction == DataDirection::Read && c.residual > 0 {
            let keep = buf.len().saturating_sub(c.residual as usize);
            buf.truncate(keep);
        }
        Ok(buf)
    }

    /// READ(16) of `blocks` blocks of `block_size` bytes (READ(10) when `use10`).
    pub fn read(
        &mut self,
        lun: Lun,
        lba: u64,
        blocks: u32,
        block_size: u32,
        use10: bool,
        timeout: Duration,
    ) -> Result<Vec<u8>, InitiatorError> {
        let cdb = if use10 {
            cdb::read10(lba, blocks).ok_or(InitiatorError::Unexpected("READ(10) range"))?
        } else {
            cdb::read16(lba, blocks)
        };
        let len = blocks as usize * block_size as usize;
        self.data_command(lun, &cdb, DataDirection::Read, vec![0u8; len], timeout)
    }

    /// WRITE(16) (or WRITE(10)) of `data`, a whole number of blocks.
    pub fn write(
        &mut self,
        lun: Lun,
        lba: u64,
        data: Vec<u8>,
        block_size: u32,
        use10: bool,
        timeout: Duration,
    ) -> Result<(), InitiatorError> {
        let blocks = u32::try_from(data.len() / block_size.max(1) as usize)
            .map_err(|_| InitiatorError::Unexpected("write too large"))?;
        let cdb = if use10 {
            cdb::write10(lba, blocks).ok_or(InitiatorError::Unexpected("WRITE(10) range"))?
        } else {
            cdb::write16(lba, blocks)
        };
        self.data_command(lun, &cdb, DataDirection::Write, data, timeout)?;
        Ok(())
    }

    pub fn inquiry(&mut self, lun: Lun, timeout: Duration) -> Result<InquiryData, InitiatorError> {
        let d = self.data_command(
            lun,
            &cdb::inquiry(None, 96),
            DataDirection::Read,
            vec![0u8; 96],
            timeout,
        )?;
        cdb::parse_inquiry(&d).ok_or(InitiatorError::Unexpected("short INQUIRY data"))
    }

    pub fn report_luns(&mut self, timeout: Duration) -> Result<Vec<Lun>, InitiatorError> {
        let d = self.data_command(
            Lun::default(),
            &cdb::report_luns(4096),
            DataDirection::Read,
            vec![0u8; 4096],
            timeout,
        )?;
        cdb::parse_report_luns(&d).ok_or(InitiatorError::Unexpected("short REPORT LUNS data"))
    }

    pub fn read_capacity16(
        &mut self,
        lun: Lun,
        timeout: Duration,
    ) -> Result<Capacity, InitiatorError> {
        let d = self.data_command(
            lun,
            &cdb::read_capacity16(32),
            DataDirection::Read,
            vec![0u8; 32],
            timeout,
        )?;
        cdb::parse_read_capacity16(&d).ok_or(InitiatorError::Unexpected("short READ CAPACITY data"))
    }

    /// Sends a text request and waits for the whole (possibly continued) response.
    pub fn text(&mut self, text: &TextList, timeout: Duration) -> Result<TextList, InitiatorError> {
        self.session.send_text(&text.encode())?;
        let mut got = None;
        self.run_until(timeout, |s| {
            got = s.take_text_response();
            got.is_some()
        })?;
        let data = got.ok_or(InitiatorError::Unexpected("no text response"))?;
        Ok(TextList::parse(
            &data,
            &TextLimits {
                max_total_len: 1 << 20,
                ..TextLimits::default()
            },
        )?)
    }

    /// Logs the session out and closes the connection.
    pub fn logout(mut self, timeout: Duration) -> Result<(), InitiatorError> {
        self.session.logout()?;
        self.run_until(timeout, |s| s.logged_out())?;
        self.conn.shutdown();
        Ok(())
    }
}

/// CHECK CONDITION with sense key UNIT ATTENTION (fixed or descriptor format sense).
fn is_unit_attention(r: &Result<(), CommandError>) -> bool {
    let Err(CommandError::Scsi { status: 2, sense }) = r else {
        return false;
    };
    let key = match sense.first().map(|b| b & 0x7f) {
        Some(0x70) | Some(0x71) => sense.get(2).map(|k| k & 0x0f),
        Some(0x72) | Some(0x73) => sense.get(1).map(|k| k & 0x0f),
        _ => None,
    };
    key == Some(0x06)
}

/// Discovery: log in to `portal` with a discovery session, ask `SendTargets=All`, log out.
pub fn discover(
    portal: SocketAddr,
    initiator_name: &str,
    auth: InitiatorAuth,
    timeout: Duration,
) -> Result<Vec<DiscoveredTarget>, InitiatorError> {
    let login = InitiatorLoginConfig {
        initiator_name: initiator_name.to_string(),
        initiator_alias: None,
        target_name: None,
        auth,
        operational: Default::default(),
        text_limits: TextLimits::default(),
        isid: crate::bhs::Isid([0x80, 0x47, 0x59, 0x52, 0x00, 0x01]),
        tsih: 0,
        cid: 0,
        itt: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
    };
    let mut ini = IscsiInitiator::connect(ConnectOptions {
        portal,
        login,
        queue_depth: 1,
        timeout,
    })?;
    let mut q = TextList::new();
    q.push("SendTargets", "All");
    let reply = ini.text(&q, timeout)?;
    let targets = sendtargets::parse_response(&reply)?;
    ini.logout(timeout)?;
    Ok(targets)
}
