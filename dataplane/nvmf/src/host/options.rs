//! What a host says about itself and how it behaves: identity, digests, queue sizes, timers
//! and the reconnection back-off.

use std::time::Duration;

use super::error::HostError;

/// Exponential back-off between reconnection attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Delay before the first attempt after a loss.
    pub initial_delay: Duration,
    /// The delay doubles after each failed attempt, up to this.
    pub max_delay: Duration,
    /// Give up after this many failed attempts in a row (`None`: never give up).
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// The delay before attempt `n` (0-based) of a series.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// Whether another attempt is allowed after `failed` failures in a row.
    pub fn allows(&self, failed: u32) -> bool {
        self.max_attempts.is_none_or(|max| failed < max)
    }
}

/// Host parameters shared by the admin queue and every I/O queue of a controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostOptions {
    /// Host NQN sent in Connect.
    pub hostnqn: String,
    /// Host Identifier sent in Connect (must not be all zeroes for an NVM subsystem).
    pub hostid: [u8; 16],
    /// Ask for header digests in ICReq.
    pub header_digest: bool,
    /// Ask for data digests in ICReq.
    pub data_digest: bool,
    /// Keep Alive Timeout sent in the admin Connect; keep-alives go out at half of it.
    /// `Duration::ZERO` disables the timer.
    pub keep_alive_timeout: Duration,
    /// Bound on TCP connect, ICReq/ICResp and Fabrics Connect.
    pub connect_timeout: Duration,
    /// Bound on each control-path command (and on CSTS.RDY when CAP.TO says less).
    pub admin_timeout: Duration,
    /// An I/O command without an answer for this long fails its connection (then reconnect).
    pub io_timeout: Option<Duration>,
    /// I/O queues to ask for (Set Features Number of Queues).
    pub io_queues: u16,
    /// Commands an I/O queue keeps in flight (clamped to what the controller allows).
    pub io_queue_depth: u16,
    /// Largest transfer of one command the host issues (further clamped by MDTS).
    pub max_io_size: u32,
    /// Send small writes in the command capsule when the controller's IOCCSZ allows.
    pub in_capsule_data: bool,
    /// Ask the controller to disable SQ flow control on I/O queues (CATTR bit 2), which lets
    /// it skip the response capsule after a successful read (C2HData SUCCESS).
    pub disable_sq_flow_control: bool,
    pub reconnect: ReconnectPolicy,
}

/// The Host NQN Linux derives from a UUID, used when none is given.
pub fn hostnqn_from_uuid(id: &[u8; 16]) -> String {
    let h: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "nqn.2014-08.org.nvmexpress:uuid:{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A random (version 4) UUID from the standard library's randomly keyed hasher, so that the
/// crate needs no random-number dependency for a value made once per controller.
pub fn random_uuid() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for (i, half) in out.chunks_exact_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    out[6] = (out[6] & 0x0F) | 0x40;
    out[8] = (out[8] & 0x3F) | 0x80;
    out
}

impl Default for HostOptions {
    /// A random Host Identifier and the matching UUID-based Host NQN, no digests, KATO 10 s.
    fn default() -> Self {
        let hostid = random_uuid();
        HostOptions {
            hostnqn: hostnqn_from_uuid(&hostid),
            hostid,
            header_digest: false,
            data_digest: false,
            keep_alive_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            admin_timeout: Duration::from_secs(10),
            io_timeout: Some(Duration::from_secs(30)),
            io_queues: 1,
            io_queue_depth: 128,
            max_io_size: 128 * 1024,
            in_capsule_data: true,
            disable_sq_flow_control: true,
            reconnect: ReconnectPolicy::default(),
        }
    }
}

impl HostOptions {
    /// Checks what the wire can carry.
    pub fn validate(&self) -> Result<(), HostError> {
        gyre_nvme::Nqn::new(&self.hostnqn)
            .map_err(|e| HostError::InvalidArgument(format!("host NQN: {e}")))?;
        if self.io_queue_depth < 1 {
            return Err(HostError::InvalidArgument("I/O queue depth 0".into()));
        }
        if self.io_queues == 0 {
            return Err(HostError::InvalidArgument("0 I/O queues".into()));
        }
        if self.max_io_size < 4096 {
            return Err(HostError::InvalidArgument(
                "largest I/O below 4096 bytes".into(),
            ));
        }
        if self.keep_alive_timeout.as_millis() > u32::MAX as u128 {
            return Err(HostError::InvalidArgument("KATO too large".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = ReconnectPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(750),
            max_attempts: Some(3),
        };
        assert_eq!(p.delay(0), Duration::from_millis(100));
        assert_eq!(p.delay(1), Duration::from_millis(200));
        assert_eq!(p.delay(2), Duration::from_millis(400));
        assert_eq!(p.delay(3), Duration::from_millis(750));
        assert_eq!(p.delay(40), Duration::from_millis(750));
        assert!(p.allows(2));
        assert!(!p.allows(3));
        assert!(ReconnectPolicy::default().allows(u32::MAX));
    }

    #[test]
    fn uuid_hostnqn_format() {
        let id = [
            0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
            0xff, 0x00,
        ];
        assert_eq!(
            hostnqn_from_uuid(&id),
            "nqn.2014-08.org.nvmexpress:uuid:11223344-5566-7788-99aa-bbccddeeff00"
        );
        let o = HostOptions::default();
        assert!(o.validate().is_ok());
        assert_ne!(o.hostid, [0u8; 16]);
        assert_eq!(o.hostid[6] >> 4, 4, "UUID version 4");
        assert_ne!(random_uuid(), random_uuid());
        let bad = HostOptions {
            hostnqn: String::new(),
            ..HostOptions::default()
        };
        assert!(bad.validate().is_err());
    }
}
