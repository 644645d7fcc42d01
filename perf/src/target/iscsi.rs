//! iSCSI targets: `iscsi://[USER%SECRET@]HOST[:PORT]/IQN/LUN`.
//!
//! The control thread logs in once to read the LUN's capacity and identity. Each reactor then
//! opens its share of `--connections` sessions (distinct ISIDs), clears the UNIT ATTENTION a
//! new I_T nexus reports, and drives them through the initiator's zero-copy data path: READ(16)
//! and WRITE(16) with the job's pool buffers, payload straight between socket and buffer.
//! Queue depth per session is `--qd`; the target's CmdSN window bounds it further (commands
//! beyond the window wait in the session until the target opens it).

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use gyre_bdev::{IoError, IoOp};
use gyre_iscsi::bhs::Isid;
use gyre_iscsi::initiator::cdb;
use gyre_iscsi::initiator::{
    CommandStatus, ConnectOptions, DataDirection, DataPathConnection, IscsiInitiator,
};
use gyre_iscsi::login::{InitiatorAuth, InitiatorLoginConfig};
use gyre_iscsi::negotiate::OperationalConfig;
use gyre_iscsi::text::TextLimits;
use gyre_iscsi::Lun;
use gyre_reactor::SgList;

use super::{Completed, IoSpec, QueuePlan, Target, TargetInfo, TargetOptions, TargetQueue};

/// The port of iSCSI portals unless the URL says otherwise.
pub const DEFAULT_PORT: u16 = 3260;
/// Our initiator name.
pub const INITIATOR_NAME: &str = "iqn.2016-06.io.gyre:perf";
/// Bound on connecting, logging in and logging out.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed `iscsi://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiUrl {
    /// CHAP name and secret.
    pub chap: Option<(String, String)>,
    /// Host as written (brackets removed from IPv6 addresses).
    pub host: String,
    pub port: u16,
    pub iqn: String,
    pub lun: u64,
}

impl IscsiUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| {
            anyhow::anyhow!(
                "invalid iSCSI URL '{url}': {why} (expected iscsi://[USER%SECRET@]HOST[:PORT]/IQN/LUN)"
            )
        };
        let rest = url
            .strip_prefix("iscsi://")
            .ok_or_else(|| bad("it must start with iscsi://"))?;
        let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no target name"))?;
        let (chap, hostport) = match authority.rsplit_once('@') {
            Some((cred, hp)) => {
                let (user, secret) = cred
                    .split_once('%')
                    .ok_or_else(|| bad("credentials are USER%SECRET"))?;
                if user.is_empty() || secret.is_empty() {
                    return Err(bad("empty CHAP user or secret"));
                }
                (Some((user.to_string(), secret.to_string())), hp)
            }
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in the host"))?;
            let port = match after {
                "" => DEFAULT_PORT,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| bad("bad port"))?,
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
                None => (hostport.to_string(), DEFAULT_PORT),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if port == 0 {
            return Err(bad("port 0"));
        }
        let (iqn, lun) = path
            .rsplit_once('/')
            .ok_or_else(|| bad("no LUN after the target name"))?;
        if iqn.is_empty() || iqn.contains('/') {
            return Err(bad("bad target name"));
        }
        let lun: u64 = lun.parse().map_err(|_| bad("the LUN is not a number"))?;
        if lun > 0x3fff {
            return Err(bad("LUN beyond 16383"));
        }
        Ok(IscsiUrl {
            chap,
            host,
            port,
            iqn: iqn.to_string(),
            lun,
        })
    }

    pub fn portal(&self) -> Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", self.host))?
            .next()
            .with_context(|| format!("{} has no address", self.host))
    }

    /// The URL without the secret, for reports.
    pub fn redacted(&self) -> String {
        let user = self
            .chap
            .as_ref()
            .map(|(u, _)| format!("{u}%***@"))
            .unwrap_or_default();
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "iscsi://{user}{host}:{}/{}/{}",
            self.port, self.iqn, self.lun
        )
    }
}

/// The iSCSI target, shared by the reactors.
pub struct IscsiTarget {
    info: TargetInfo,
    url: IscsiUrl,
    portal: SocketAddr,
    lun: Lun,
    io_size: u64,
}

fn login_config(url: &IscsiUrl, isid_index: u16) -> InitiatorLoginConfig {
    let auth = match &url.chap {
        Some((name, secret)) => InitiatorAuth::Chap {
            name: name.clone(),
            secret: secret.as_bytes().to_vec(),
            mutual: None,
        },
        None => InitiatorAuth::None,
    };
    let i = isid_index.to_be_bytes();
    InitiatorLoginConfig {
        initiator_name: INITIATOR_NAME.to_string(),
        initiator_alias: Some("gyre-perf".into()),
        target_name: Some(url.iqn.clone()),
        auth,
        operational: OperationalConfig {
            initial_r2t: false,
            immediate_data: true,
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1 << 20,
            first_burst_length: 262_144,
            max_outstanding_r2t: 4,
            ..OperationalConfig::default()
        },
        text_limits: TextLimits::default(),
        // Random-qualifier ISIDs ("GYP" + connection number): each connection is its own
        // session.
        isid: Isid([0x80, 0x47, 0x59, 0x50, i[0], i[1]]),
        tsih: 0,
        cid: 0,
        itt: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
    }
}

impl IscsiTarget {
    /// Logs in once to learn the LUN's size and identity.
    pub fn connect(url_text: &str, opts: &TargetOptions) -> Result<Self> {
        let url = IscsiUrl::parse(url_text)?;
        let portal = url.portal()?;
        let lun = Lun::from_index(url.lun as u16);
        let mut ini = IscsiInitiator::connect(ConnectOptions {
            portal,
            login: login_config(&url, 0xffff),
            queue_depth: 1,
            timeout: CONTROL_TIMEOUT,
        })
        .with_context(|| format!("cannot log in to {}", url.redacted()))?;
        let cap = ini
            .read_capacity16(lun, CONTROL_TIMEOUT)
            .with_context(|| format!("READ CAPACITY(16) of LUN {} failed", url.lun))?;
        let inq = ini.inquiry(lun, CONTROL_TIMEOUT).ok();
        let _ = ini.logout(CONTROL_TIMEOUT);
        if cap.block_size == 0 || !cap.block_size.is_power_of_two() {
            bail!(
                "LUN {} has an unsupported block size {}",
                url.lun,
                cap.block_size
            );
        }
        if opts.io_size > u64::from(u32::MAX) {
            bail!("--bs {} is too large for one SCSI command", opts.io_size);
        }
        let module = inq
            .map(|i| format!("{} {}", i.vendor.trim(), i.product.trim()))
            .unwrap_or_else(|| "iscsi".into());
        let info = TargetInfo {
            kind: "iscsi",
            spec: url.redacted(),
            name: format!("{} LUN {}", url.iqn, url.lun),
            module,
            block_size: cap.block_size,
            num_blocks: cap.blocks,
            writable: opts.writable,
            direct: None,
        };
        Ok(IscsiTarget {
            info,
            portal,
            lun,
            io_size: opts.io_size,
            url,
        })
    }

    /// Opens one data-path session (blocking; control path).
    fn open_connection(&self, index: usize, queue_depth: u32) -> Result<DataPathConnection> {
        let qd =
            u16::try_from(queue_depth).context("--qd is too large for iSCSI (65535 at most)")?;
        let isid = u16::try_from(index).context("too many connections")?;
        let mut ini = IscsiInitiator::connect(ConnectOptions {
            portal: self.portal,
            login: login_config(&self.url, isid),
            queue_depth: qd,
            timeout: CONTROL_TIMEOUT,
        })
        .with_context(|| {
            format!(
                "connection {index}: cannot log in to {}",
                self.url.redacted()
            )
        })?;
        // A new I_T nexus may be told UNIT ATTENTION (power on, reset) by its first command:
        // take it here rather than as an I/O error.
        for _ in 0..3 {
            let c = ini
                .command(
                    self.lun,
                    &cdb::test_unit_ready(),
                    DataDirection::None,
                    Vec::new(),
                    CONTROL_TIMEOUT,
                )
                .with_context(|| format!("connection {index}: TEST UNIT READY failed"))?;
            if c.result.is_ok() {
                break;
            }
        }
        DataPathConnection::from_initiator(ini, self.io_size as usize)
            .with_context(|| format!("connection {index}: cannot start the data path"))
    }
}

impl Target for IscsiTarget {
    type Queue = IscsiQueue;

    fn info(&self) -> &TargetInfo {
        &self.info
    }

    fn open_queue(&self, plan: &QueuePlan) -> Result<IscsiQueue> {
        let mut conns = Vec::with_capacity(plan.connection_count());
        for index in plan.connections.clone() {
            let c = self.open_connection(index, plan.queue_depth)?;
            if let Some(local) = gyre_reactor::local() {
                local
                    .register_wake_fd(c.raw_fd())
                    .map_err(|e| anyhow::anyhow!("cannot watch the socket: {e}"))?;
            }
            conns.push(c);
        }
        let slots = conns.len() * plan.queue_depth as usize;
        Ok(IscsiQueue {
            failed: vec![false; conns.len()],
            conns,
            queue_depth: plan.queue_depth as u64,
            lun: self.lun,
            block_size: u64::from(self.info.block_size),
            refused: VecDeque::with_capacity(slots),
        })
    }
}

/// A reactor's sessions. Slot tags `c*qd .. (c+1)*qd` go to session `c`.
pub struct IscsiQueue {
    conns: Vec<DataPathConnection>,
    /// Whether each session's failure was reported already.
    failed: Vec<bool>,
    queue_depth: u64,
    lun: Lun,
    block_size: u64,
    /// I/Os the session refused (it failed), completed at the next poll.
    refused: VecDeque<Completed>,
}

fn io_status(s: CommandStatus) -> Result<(), IoError> {
    match s {
        CommandStatus::Good => Ok(()),
        CommandStatus::ConnectionLost => Err(IoError::Aborted),
        // EIO: the target reported a failure (details in the warning logged once per
        // session).
        _ => Err(IoError::Device(5)),
    }
}

impl TargetQueue for IscsiQueue {
    #[inline]
    fn submit(&mut self, io: IoSpec, buf: SgList) {
        let c = (io.tag / self.queue_depth.max(1)) as usize;
        let blocks = io.num_blocks as u32;
        let (cdb, dir) = match io.op {
            IoOp::Read => (cdb::read16(io.offset_blocks, blocks), DataDirection::Read),
            _ => (cdb::write16(io.offset_blocks, blocks), DataDirection::Write),
        };
        let len = (io.num_blocks * self.block_size) as usize;
        let Some(conn) = self.conns.get_mut(c) else {
            self.refused.push_back(Completed {
                tag: io.tag,
                buf,
                status: Err(IoError::Aborted),
            });
            return;
        };
        if let Err((_, buf)) = conn.submit(self.lun, cdb.as_slice(), dir, buf, len, io.tag) {
            self.refused.push_back(Completed {
                tag: io.tag,
                buf,
                status: Err(IoError::Aborted),
            });
        }
    }

    #[inline]
    fn poll<F: FnMut(Completed)>(&mut self, mut done: F) -> usize {
        let mut n = 0;
        while let Some(c) = self.refused.pop_front() {
            done(c);
            n += 1;
        }
        for (i, conn) in self.conns.iter_mut().enumerate() {
            let mut first_bad = None;
            let r = conn.poll(|c| {
                if !c.status.is_good() && first_bad.is_none() {
                    first_bad = Some(c.status);
                }
                done(Completed {
                    tag: c.tag,
                    buf: c.buf,
                    status: io_status(c.status),
                })
            });
            match r {
                Ok(k) => n += k,
                Err(e) => {
                    if !self.failed[i] {
                        self.failed[i] = true;
                        tracing::warn!(connection = i, error = %e, "iSCSI session failed");
                    }
                }
            }
            if let Some(s) = first_bad {
                if !self.failed[i] {
                    self.failed[i] = true;
                    tracing::warn!(connection = i, status = ?s, "iSCSI command failed");
                }
            }
        }
        n
    }

    fn close(&mut self) {
        for conn in &mut self.conns {
            if let Some(local) = gyre_reactor::local() {
                let _ = local.unregister_wake_fd(conn.raw_fd());
            }
            if !conn.is_failed() {
                let _ = conn.logout(Duration::from_secs(2), |_| {});
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iscsi_urls() {
        let u = IscsiUrl::parse("iscsi://127.0.0.1/iqn.2016-06.io.gyre:malloc0/0").unwrap();
        assert_eq!(
            u,
            IscsiUrl {
                chap: None,
                host: "127.0.0.1".into(),
                port: 3260,
                iqn: "iqn.2016-06.io.gyre:malloc0".into(),
                lun: 0
            }
        );
        let u = IscsiUrl::parse("iscsi://alice%s3cr%et@[::1]:3261/iqn.x:y/3").unwrap();
        assert_eq!(u.chap, Some(("alice".into(), "s3cr%et".into())));
        assert_eq!((u.host.as_str(), u.port, u.lun), ("::1", 3261, 3));
        assert_eq!(u.redacted(), "iscsi://alice%***@[::1]:3261/iqn.x:y/3");
        let u = IscsiUrl::parse("iscsi://host.example:1234/iqn.a/1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("host.example", 1234));
        for bad in [
            "iscsi://",
            "iscsi://h",
            "iscsi://h/iqn",
            "iscsi://h/iqn/x",
            "iscsi://h/iqn/99999",
            "iscsi://h:0/iqn/1",
            "iscsi://h:x/iqn/1",
            "iscsi://[::1/iqn/1",
            "iscsi://u@h/iqn/1",
            "iscsi://%s@h/iqn/1",
            "iscsi:///iqn/1",
            "iscsi://h//1",
            "http://h/iqn/1",
        ] {
            assert!(IscsiUrl::parse(bad).is_err(), "'{bad}' should be rejected");
        }
    }
}
