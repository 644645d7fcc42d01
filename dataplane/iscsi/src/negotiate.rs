//! Operational parameter negotiation (RFC 7143 §6.2, §13): defaults, result functions
//! (min/max for numbers, OR/AND for booleans, first-acceptable for lists), range checks,
//! declarative keys, duplicate detection and the keys that only make sense on a leading
//! connection or in a normal session.
//!
//! One [`Negotiator`] serves both roles: it answers the keys the peer offers from our own
//! [`OperationalConfig`], checks the answers to the keys we offered, and ends with a
//! [`SessionParams`]. The target offers only what it must (its declarations, and values the
//! defaults would get wrong for it); the initiator offers everything it cares about.
//!
//! Policy where RFC 7143 leaves a choice: a malformed or out-of-range value in an offer is
//! answered with `Reject` and the key keeps its default; a malformed declaration or answer is
//! an error that fails the login; a leading-only key on a non-leading connection, and a
//! normal-session key in a discovery session, are answered `Irrelevant`; unknown keys
//! (including every `X-` and `X#` key) are answered `NotUnderstood`.

use crate::text::{
    bool_str, parse_bool, parse_number, TextList, IRRELEVANT, NOT_UNDERSTOOD, REJECT,
};
use thiserror::Error;

/// Discovery or normal session (SessionType key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionType {
    #[default]
    Normal,
    Discovery,
}

impl SessionType {
    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "Normal" => Some(SessionType::Normal),
            "Discovery" => Some(SessionType::Discovery),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            SessionType::Normal => "Normal",
            SessionType::Discovery => "Discovery",
        }
    }
}

/// Which side we play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Target,
    Initiator,
}

/// Digest algorithms (HeaderDigest / DataDigest values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestKind {
    None,
    Crc32c,
}

impl DigestKind {
    fn parse(v: &str) -> Option<Self> {
        match v {
            "None" => Some(DigestKind::None),
            "CRC32C" => Some(DigestKind::Crc32c),
            _ => None,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            DigestKind::None => "None",
            DigestKind::Crc32c => "CRC32C",
        }
    }
}

/// What this side wants and accepts for each operational key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationalConfig {
    /// Acceptable header digests, most preferred first.
    pub header_digest: Vec<DigestKind>,
    pub data_digest: Vec<DigestKind>,
    pub max_connections: u16,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// Largest data segment this side receives (declared to the peer).
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_outstanding_r2t: u16,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    /// We implement error recovery level 0 only; a higher value here is lowered to 0.
    pub error_recovery_level: u8,
}

impl Default for OperationalConfig {
    /// The RFC 7143 defaults.
    fn default() -> Self {
        OperationalConfig {
            header_digest: vec![DigestKind::None],
            data_digest: vec![DigestKind::None],
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            max_recv_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
        }
    }
}

/// The negotiated values of a session and connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    pub session_type: SessionType,
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_connections: u16,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    /// Largest data segment the initiator receives: the target's limit for Data-In etc.
    pub initiator_max_recv_data_segment_length: u32,
    /// Largest data segment the target receives: the initiator's limit for Data-Out etc.
    pub target_max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub default_time2wait: u16,
    pub default_time2retain: u16,
    pub max_outstanding_r2t: u16,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub error_recovery_level: u8,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    pub target_name: Option<String>,
    pub target_alias: Option<String>,
    pub target_portal_group_tag: Option<u16>,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            session_type: SessionType::Normal,
            header_digest: false,
            data_digest: false,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            initiator_max_recv_data_segment_length: 8192,
            target_max_recv_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            initiator_name: String::new(),
            initiator_alias: None,
            target_name: None,
            target_alias: None,
            target_portal_group_tag: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NegotiationError {
    #[error("key {0} was offered or declared twice")]
    Duplicate(String),
    #[error("answer {key}={value} is not a valid result of what we offered")]
    InvalidAnswer { key: String, value: String },
    #[error("declaration {key}={value} is malformed or out of range")]
    InvalidDeclaration { key: String, value: String },
    #[error("key {0} is not valid in this stage or from this side")]
    NotAllowedHere(String),
    #[error("offers still unanswered: {0}")]
    Unanswered(String),
    #[error("FirstBurstLength {first} exceeds MaxBurstLength {max}")]
    FirstBurstExceedsMaxBurst { first: u32, max: u32 },
}

/// The operational keys this negotiator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKey {
    HeaderDigest,
    DataDigest,
    MaxConnections,
    InitialR2T,
    ImmediateData,
    MaxRecvDataSegmentLength,
    MaxBurstLength,
    FirstBurstLength,
    DefaultTime2Wait,
    DefaultTime2Retain,
    MaxOutstandingR2T,
    DataPDUInOrder,
    DataSequenceInOrder,
    ErrorRecoveryLevel,
    TaskReporting,
    /// Markers were removed by RFC 7143; RFC 3720 initiators still offer them.
    IFMarker,
    OFMarker,
    IFMarkInt,
    OFMarkInt,
}

const ALL_KEYS: [OpKey; 19] = [
    OpKey::HeaderDigest,
    OpKey::DataDigest,
    OpKey::MaxConnections,
    OpKey::InitialR2T,
    OpKey::ImmediateData,
    OpKey::MaxRecvDataSegmentLength,
    OpKey::MaxBurstLength,
    OpKey::FirstBurstLength,
    OpKey::DefaultTime2Wait,
    OpKey::DefaultTime2Retain,
    OpKey::MaxOutstandingR2T,
    OpKey::DataPDUInOrder,
    OpKey::DataSequenceInOrder,
    OpKey::ErrorRecoveryLevel,
    OpKey::TaskReporting,
    OpKey::IFMarker,
    OpKey::OFMarker,
    OpKey::IFMarkInt,
    OpKey::OFMarkInt,
];

#[derive(Clone, Copy)]
enum NumFn {
    Min,
    Max,
}

impl OpKey {
    pub fn from_name(name: &str) -> Option<OpKey> {
        ALL_KEYS.iter().copied().find(|k| k.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            OpKey::HeaderDigest => "HeaderDigest",
            OpKey::DataDigest => "DataDigest",
            OpKey::MaxConnections => "MaxConnections",
            OpKey::InitialR2T => "InitialR2T",
            OpKey::ImmediateData => "ImmediateData",
            OpKey::MaxRecvDataSegmentLength => "MaxRecvDataSegmentLength",
            OpKey::MaxBurstLength => "MaxBurstLength",
            OpKey::FirstBurstLength => "FirstBurstLength",
            OpKey::DefaultTime2Wait => "DefaultTime2Wait",
            OpKey::DefaultTime2Retain => "DefaultTime2Retain",
            OpKey::MaxOutstandingR2T => "MaxOutstandingR2T",
            OpKey::DataPDUInOrder => "DataPDUInOrder",
            OpKey::DataSequenceInOrder => "DataSequenceInOrder",
            OpKey::ErrorRecoveryLevel => "ErrorRecoveryLevel",
            OpKey::TaskReporting => "TaskReporting",
            OpKey::IFMarker => "IFMarker",
            OpKey::OFMarker => "OFMarker",
            OpKey::IFMarkInt => "IFMarkInt",
            OpKey::OFMarkInt => "OFMarkInt",
        }
    }

    fn index(self) -> usize {
        ALL_KEYS.iter().position(|&k| k == self).unwrap_or(0)
    }

    /// Leading-only (session-wide, fixed by the leading connection's login).
    pub fn leading_only(self) -> bool {
        !matches!(
            self,
            OpKey::HeaderDigest
                | OpKey::DataDigest
                | OpKey::MaxRecvDataSegmentLength
                | OpKey::IFMarker
                | OpKey::OFMarker
                | OpKey::IFMarkInt
                | OpKey::OFMarkInt
        )
    }

    /// Irrelevant when SessionType=Discovery (RFC 7143 §13).
    pub fn irrelevant_in_discovery(self) -> bool {
        matches!(
            self,
            OpKey::MaxConnections
                | OpKey::InitialR2T
                | OpKey::ImmediateData
                | OpKey::MaxBurstLength
                | OpKey::FirstBurstLength
                | OpKey::MaxOutstandingR2T
                | OpKey::DataPDUInOrder
                | OpKey::DataSequenceInOrder
        )
    }

    fn numeric(self) -> Option<(u64, u64, NumFn)> {
        Some(match self {
            OpKey::MaxConnections => (1, 65535, NumFn::Min),
            OpKey::MaxBurstLength | OpKey::FirstBurstLength => (512, 16_777_215, NumFn::Min),
            OpKey::DefaultTime2Wait => (0, 3600, NumFn::Max),
            OpKey::DefaultTime2Retain => (0, 3600, NumFn::Min),
            OpKey::MaxOutstandingR2T => (1, 65535, NumFn::Min),
            OpKey::ErrorRecoveryLevel => (0, 2, NumFn::Min),
            _ => return None,
        })
    }

    /// Boolean keys and whether their result function is OR (else AND).
    fn boolean_is_or(self) -> Option<bool> {
        match self {
            OpKey::InitialR2T | OpKey::DataPDUInOrder | OpKey::DataSequenceInOrder => Some(true),
            OpKey::ImmediateData => Some(false),
            _ => None,
        }
    }
}

/// Security-stage keys (handled by the login state machine, not here).
pub fn is_security_key(name: &str) -> bool {
    name == "AuthMethod" || name.starts_with("CHAP_")
}

const MRDSL_RANGE: (u64, u64) = (512, 16_777_215);

/// Negotiates operational keys for one login (or one text exchange) in either role.
#[derive(Debug, Clone)]
pub struct Negotiator {
    role: Role,
    config: OperationalConfig,
    params: SessionParams,
    leading: bool,
    /// Keys settled in either direction (answered, declared by the peer, or answered by it).
    settled: [bool; ALL_KEYS.len()],
    /// Our offers awaiting an answer, with the value offered.
    pending: Vec<(OpKey, String)>,
    declared_mrdsl: bool,
    /// Unknown keys already answered NotUnderstood (duplicates are errors too).
    unknown_seen: Vec<String>,
}

impl Negotiator {
    /// `leading`: this connection starts a new session (TSIH 0).
    pub fn new(role: Role, config: OperationalConfig, leading: bool) -> Self {
        let mut config = config;
        config.error_recovery_level = 0;
        let mut params = SessionParams::default();
        match role {
            Role::Target => {
                params.target_max_recv_data_segment_length = config.max_recv_data_segment_length
            }
            Role::Initiator => {
                params.initiator_max_recv_data_segment_length = config.max_recv_data_segment_length
            }
        }
        Negotiator {
            role,
            config,
            params,
            leading,
            settled: [false; ALL_KEYS.len()],
            pending: Vec::new(),
            declared_mrdsl: false,
            unknown_seen: Vec::new(),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    pub fn params_mut(&mut self) -> &mut SessionParams {
        &mut self.params
    }

    pub fn set_session_type(&mut self, t: SessionType) {
        self.params.session_type = t;
    }

    /// True while some of our offers have not been answered.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn settled(&self, k: OpKey) -> bool {
        self.settled[k.index()]
    }

    fn settle(&mut self, k: OpKey) {
        self.settled[k.index()] = true;
    }

    fn irrelevant(&self, k: OpKey) -> bool {
        (k.leading_only() && !self.leading)
            || (self.params.session_type == SessionType::Discovery && k.irrelevant_in_discovery())
    }

    /// Processes the peer's operational keys (security and login keys already removed), and
    /// appends our responses to `out`.
    pub fn process(&mut self, keys: &TextList, out: &mut TextList) -> Result<(), NegotiationError> {
        // FirstBurstLength is answered after MaxBurstLength so it can be capped by it.
        let first_pass = keys.iter().filter(|(k, _)| *k != "FirstBurstLength");
        let second_pass = keys.iter().filter(|(k, _)| *k == "FirstBurstLength");
        for (k, v) in first_pass.chain(second_pass) {
            self.process_one(k, v, out)?;
        }
        Ok(())
    }

    fn process_one(
        &mut self,
        key: &str,
        value: &str,
        out: &mut TextList,
    ) -> Result<(), NegotiationError> {
        let Some(k) = OpKey::from_name(key) else {
            if self.unknown_seen.iter().any(|s| s == key) {
                return Err(NegotiationError::Duplicate(key.to_string()));
            }
            self.unknown_seen.push(key.to_string());
            if !matches!(value, NOT_UNDERSTOOD | IRRELEVANT | REJECT) {
                out.push(key, NOT_UNDERSTOOD);
            }
            return Ok(());
        };
        if let Some(pos) = self.pending.iter().position(|(p, _)| *p == k) {
            let (_, offered) = self.pending.remove(pos);
            self.settle(k);
            return self.accept_answer(k, &offered, value);
        }
        if k == OpKey::MaxRecvDataSegmentLength {
            return self.peer_declares_mrdsl(value);
        }
        if self.settled(k) {
            return Err(NegotiationError::Duplicate(key.to_string()));
        }
        self.settle(k);
        if matches!(value, NOT_UNDERSTOOD | IRRELEVANT | REJECT) {
            // A response value where an offer was expected: nothing to answer.
            return Ok(());
        }
        let answer = self.respond(k, value);
        out.push(key, answer);
        Ok(())
    }

    fn peer_declares_mrdsl(&mut self, value: &str) -> Result<(), NegotiationError> {
        let k = OpKey::MaxRecvDataSegmentLength;
        if self.settled(k) {
            return Err(NegotiationError::Duplicate(k.name().to_string()));
        }
        self.settle(k);
        let v = parse_number(value)
            .ok()
            .filter(|v| (MRDSL_RANGE.0..=MRDSL_RANGE.1).contains(v))
            .ok_or_else(|| NegotiationError::InvalidDeclaration {
                key: k.name().to_string(),
                value: value.to_string(),
            })? as u32;
        match self.role {
            Role::Target => self.params.initiator_max_recv_data_segment_length = v,
            Role::Initiator => self.params.target_max_recv_data_segment_length = v,
        }
        Ok(())
    }

    /// Our answer to the peer's offer `k=value`; applies the result.
    fn respond(&mut self, k: OpKey, value: &str) -> String {
        if self.irrelevant(k) {
            return IRRELEVANT.to_string();
        }
        match k {
            OpKey::HeaderDigest | OpKey::DataDigest => {
                let ours = if k == OpKey::HeaderDigest {
                    &self.config.header_digest
                } else {
                    &self.config.data_digest
                };
                let chosen = value
                    .split(',')
                    .filter_map(DigestKind::parse)
                    .find(|d| ours.contains(d));
                match chosen {
                    Some(d) => {
                        self.set_digest(k, d);
                        d.as_str().to_string()
                    }
                    None => REJECT.to_string(),
                }
            }
            OpKey::TaskReporting => {
                if value.split(',').any(|v| v == "RFC3720") {
                    "RFC3720".to_string()
                } else {
                    REJECT.to_string()
                }
            }
            OpKey::IFMarker | OpKey::OFMarker => match parse_bool(value) {
                Ok(_) => "No".to_string(),
                Err(_) => REJECT.to_string(),
            },
            OpKey::IFMarkInt | OpKey::OFMarkInt => IRRELEVANT.to_string(),
            _ => {
                if let Some(is_or) = k.boolean_is_or() {
                    let Ok(offer) = parse_bool(value) else {
                        return REJECT.to_string();
                    };
                    let ours = self.config_bool(k);
                    let result = if is_or { offer || ours } else { offer && ours };
                    self.set_bool(k, result);
                    return bool_str(result).to_string();
                }
                let Some((lo, hi, f)) = k.numeric() else {
                    return NOT_UNDERSTOOD.to_string();
                };
                let Some(offer) = parse_number(value).ok().filter(|v| (lo..=hi).contains(v)) else {
                    return REJECT.to_string();
                };
                let ours = self.config_num(k);
                let mut result = match f {
                    NumFn::Min => offer.min(ours),
                    NumFn::Max => offer.max(ours),
                };
                if k == OpKey::FirstBurstLength {
                    result = result.min(u64::from(self.params.max_burst_length));
                }
                self.set_num(k, result);
                result.to_string()
            }
        }
    }

    fn accept_answer(
        &mut self,
        k: OpKey,
        offered: &str,
        answer: &str,
    ) -> Result<(), NegotiationError> {
        let bad = || NegotiationError::InvalidAnswer {
            key: k.name().to_string(),
            value: answer.to_string(),
        };
        if matches!(answer, NOT_UNDERSTOOD | IRRELEVANT | REJECT) {
            // The key keeps its default.
            return Ok(());
        }
        match k {
            OpKey::HeaderDigest | OpKey::DataDigest => {
                let d = DigestKind::parse(answer).ok_or_else(bad)?;
                if !offered.split(',').any(|o| o == answer) {
                    return Err(bad());
                }
                self.set_digest(k, d);
            }
            OpKey::TaskReporting | OpKey::IFMarker | OpKey::OFMarker => {}
            OpKey::IFMarkInt | OpKey::OFMarkInt | OpKey::MaxRecvDataSegmentLength => {}
            _ => {
                if let Some(is_or) = k.boolean_is_or() {
                    let ours = parse_bool(offered).map_err(|_| bad())?;
                    let theirs = parse_bool(answer).map_err(|_| bad())?;
                    // When our offer dominates the function (Yes for OR, No for AND) the
                    // answer cannot change the result.
                    let result = if is_or {
                        ours || theirs
                    } else {
                        ours && theirs
                    };
                    self.set_bool(k, result);
                    return Ok(());
                }
                let Some((lo, hi, f)) = k.numeric() else {
                    return Ok(());
                };
                let ours = parse_number(offered).map_err(|_| bad())?;
                let theirs = parse_number(answer).map_err(|_| bad())?;
                let consistent = (lo..=hi).contains(&theirs)
                    && match f {
                        NumFn::Min => theirs <= ours,
                        NumFn::Max => theirs >= ours,
                    };
                if !consistent {
                    return Err(bad());
                }
                self.set_num(k, theirs);
            }
        }
        Ok(())
    }

    fn set_digest(&mut self, k: OpKey, d: DigestKind) {
        let on = d == DigestKind::Crc32c;
        if k == OpKey::HeaderDigest {
            self.params.header_digest = on;
        } else {
            self.params.data_digest = on;
        }
    }

    fn config_bool(&self, k: OpKey) -> bool {
        match k {
            OpKey::InitialR2T => self.config.initial_r2t,
            OpKey::ImmediateData => self.config.immediate_data,
            OpKey::DataPDUInOrder => self.config.data_pdu_in_order,
            _ => self.config.data_sequence_in_order,
        }
    }

    fn set_bool(&mut self, k: OpKey, v: bool) {
        match k {
            OpKey::InitialR2T => self.params.initial_r2t = v,
            OpKey::ImmediateData => self.params.immediate_data = v,
            OpKey::DataPDUInOrder => self.params.data_pdu_in_order = v,
            _ => self.params.data_sequence_in_order = v,
        }
    }

    fn config_num(&self, k: OpKey) -> u64 {
        let c = &self.config;
        match k {
            OpKey::MaxConnections => c.max_connections.into(),
            OpKey::MaxBurstLength => c.max_burst_length.into(),
            OpKey::FirstBurstLength => c.first_burst_length.into(),
            OpKey::DefaultTime2Wait => c.default_time2wait.into(),
            OpKey::DefaultTime2Retain => c.default_time2retain.into(),
            OpKey::MaxOutstandingR2T => c.max_outstanding_r2t.into(),
            _ => c.error_recovery_level.into(),
        }
    }

    fn set_num(&mut self, k: OpKey, v: u64) {
        let p = &mut self.params;
        // Values were range-checked against the key's limits, which fit these types.
        match k {
            OpKey::MaxConnections => p.max_connections = v as u16,
            OpKey::MaxBurstLength => p.max_burst_length = v as u32,
            OpKey::FirstBurstLength => p.first_burst_length = v as u32,
            OpKey::DefaultTime2Wait => p.default_time2wait = v as u16,
            OpKey::DefaultTime2Retain => p.default_time2retain = v as u16,
            OpKey::MaxOutstandingR2T => p.max_outstanding_r2t = v as u16,
            _ => p.error_recovery_level = v as u8,
        }
    }

    fn offer(&mut self, k: OpKey, value: String, out: &mut TextList) {
        if self.settled(k) || self.pending.iter().any(|(p, _)| *p == k) {
            return;
        }
        out.push(k.name(), value.clone());
        self.pending.push((k, value));
    }

    fn digest_list(list: &[DigestKind]) -> String {
        let v: Vec<&str> = list.iter().map(|d| d.as_str()).collect();
        if v.is_empty() {
            "None".to_string()
        } else {
            v.join(",")
        }
    }

    /// Declares our MaxRecvDataSegmentLength once (both roles declare it).
    pub fn declare(&mut self, out: &mut TextList) {
        if !self.declared_mrdsl {
            self.declared_mrdsl = true;
            out.push(
                OpKey::MaxRecvDataSegmentLength.name(),
                self.config.max_recv_data_segment_length.to_string(),
            );
        }
    }

    /// Initiator: every key it cares about, offered at the start of the operational stage.
    pub fn initiator_offers(&mut self, out: &mut TextList) {
        let c = self.config.clone();
        self.offer(
            OpKey::HeaderDigest,
            Self::digest_list(&c.header_digest),
            out,
        );
        self.offer(OpKey::DataDigest, Self::digest_list(&c.data_digest), out);
        self.declare(out);
        self.offer(
            OpKey::DefaultTime2Wait,
            c.default_time2wait.to_string(),
            out,
        );
        self.offer(
            OpKey::DefaultTime2Retain,
            c.default_time2retain.to_string(),
            out,
        );
        self.offer(OpKey::ErrorRecoveryLevel, "0".to_string(), out);
        if self.params.session_type == SessionType::Discovery {
            return;
        }
        if self.leading {
            self.offer(OpKey::MaxConnections, c.max_connections.to_string(), out);
            self.offer(OpKey::InitialR2T, bool_str(c.initial_r2t).into(), out);
            self.offer(OpKey::ImmediateData, bool_str(c.immediate_data).into(), out);
            self.offer(OpKey::MaxBurstLength, c.max_burst_length.to_string(), out);
            self.offer(
                OpKey::FirstBurstLength,
                c.first_burst_length.min(c.max_burst_length).to_string(),
                out,
            );
            self.offer(
                OpKey::MaxOutstandingR2T,
                c.max_outstanding_r2t.to_string(),
                out,
            );
            self.offer(
                OpKey::DataPDUInOrder,
                bool_str(c.data_pdu_in_order).into(),
                out,
            );
            self.offer(
                OpKey::DataSequenceInOrder,
                bool_str(c.data_sequence_in_order).into(),
                out,
            );
        }
    }

    /// Target: offers for keys the initiator left at a default the target cannot live with.
    /// Returns true if anything was offered (the target then waits for the answers).
    pub fn target_offers(&mut self, out: &mut TextList) -> bool {
        let before = self.pending.len();
        let c = self.config.clone();
        if !c.header_digest.contains(&DigestKind::None) {
            self.offer(
                OpKey::HeaderDigest,
                Self::digest_list(&c.header_digest),
                out,
            );
        }
        if !c.data_digest.contains(&DigestKind::None) {
            self.offer(OpKey::DataDigest, Self::digest_list(&c.data_digest), out);
        }
        let normal_leading = self.leading && self.params.session_type == SessionType::Normal;
        if normal_leading {
            if !c.immediate_data && self.params.immediate_data {
                self.offer(OpKey::ImmediateData, "No".into(), out);
            }
            if u64::from(self.params.max_burst_length) > u64::from(c.max_burst_length) {
                self.offer(OpKey::MaxBurstLength, c.max_burst_length.to_string(), out);
            }
            let max_burst = self.params.max_burst_length.min(c.max_burst_length);
            let want_first = c.first_burst_length.min(max_burst);
            if self.params.first_burst_length > want_first {
                self.offer(OpKey::FirstBurstLength, want_first.to_string(), out);
            }
            if self.params.max_outstanding_r2t > c.max_outstanding_r2t {
                self.offer(
                    OpKey::MaxOutstandingR2T,
                    c.max_outstanding_r2t.to_string(),
                    out,
                );
            }
            if self.params.max_connections > c.max_connections {
                self.offer(OpKey::MaxConnections, c.max_connections.to_string(), out);
            }
        }
        self.pending.len() > before
    }

    /// The final values, once every offer is answered.
    pub fn finish(&self) -> Result<SessionParams, NegotiationError> {
        if !self.pending.is_empty() {
            let names: Vec<&str> = self.pending.iter().map(|(k, _)| k.name()).collect();
            return Err(NegotiationError::Unanswered(names.join(",")));
        }
        let mut params = self.params.clone();
        if !self.declared_mrdsl {
            // The peer only knows what we declared; undeclared means the default.
            match self.role {
                Role::Target => params.target_max_recv_data_segment_length = 8192,
                Role::Initiator => params.initiator_max_recv_data_segment_length = 8192,
            }
        }
        let p = &params;
        if p.session_type == SessionType::Normal && p.first_burst_length > p.max_burst_length {
            return Err(NegotiationError::FirstBurstExceedsMaxBurst {
                first: p.first_burst_length,
                max: p.max_burst_length,
            });
        }
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(pairs: &[(&str, &str)]) -> TextList {
        let mut l = TextList::new();
        for (k, v) in pairs {
            l.push(*k, *v);
        }
        l
    }

    fn target(config: OperationalConfig) -> Negotiator {
        Negotiator::new(Role::Target, config, true)
    }

    /// Offers one key to a target with `config`; returns its answer and the resulting params.
    fn answer(
        config: OperationalConfig,
        key: &str,
        value: &str,
    ) -> (Option<String>, SessionParams) {
        let mut t = target(config);
        let mut out = TextList::new();
        t.process(&list(&[(key, value)]), &mut out).unwrap();
        (out.get(key).map(str::to_string), t.params().clone())
    }

    #[test]
    fn defaults_are_rfc7143() {
        let p = SessionParams::default();
        assert!(!p.header_digest && !p.data_digest);
        assert_eq!(p.max_connections, 1);
        assert!(p.initial_r2t && p.immediate_data);
        assert_eq!(p.initiator_max_recv_data_segment_length, 8192);
        assert_eq!(
            (p.max_burst_length, p.first_burst_length),
            (262_144, 65_536)
        );
        assert_eq!((p.default_time2wait, p.default_time2retain), (2, 20));
        assert_eq!(p.max_outstanding_r2t, 1);
        assert!(p.data_pdu_in_order && p.data_sequence_in_order);
        assert_eq!(p.error_recovery_level, 0);
    }

    #[test]
    fn numeric_result_functions_and_ranges() {
        let cfg = OperationalConfig {
            max_burst_length: 1 << 20,
            first_burst_length: 1 << 18,
            max_outstanding_r2t: 4,
            default_time2wait: 5,
            default_time2retain: 10,
            max_connections: 4,
            ..OperationalConfig::default()
        };
        // (key, offer, expected answer, "Reject" when out of range or malformed)
        let table: &[(&str, &str, &str)] = &[
            ("MaxBurstLength", "262144", "262144"),
            ("MaxBurstLength", "16777215", "1048576"),
            ("MaxBurstLength", "511", "Reject"),
            ("MaxBurstLength", "16777216", "Reject"),
            ("MaxBurstLength", "lots", "Reject"),
            ("MaxBurstLength", "0x100000", "1048576"),
            ("FirstBurstLength", "65536", "65536"),
            ("FirstBurstLength", "16777215", "262144"),
            ("MaxOutstandingR2T", "16", "4"),
            ("MaxOutstandingR2T", "0", "Reject"),
            ("MaxOutstandingR2T", "65536", "Reject"),
            ("DefaultTime2Wait", "2", "5"),
            ("DefaultTime2Wait", "3600", "3600"),
            ("DefaultTime2Wait", "3601", "Reject"),
            ("DefaultTime2Retain", "20", "10"),
            ("DefaultTime2Retain", "0", "0"),
            ("ErrorRecoveryLevel", "2", "0"),
            ("ErrorRecoveryLevel", "3", "Reject"),
            ("MaxConnections", "8", "4"),
            ("MaxConnections", "0", "Reject"),
        ];
        for (k, offer, expect) in table {
            let (got, _) = answer(cfg.clone(), k, offer);
            assert_eq!(got.as_deref(), Some(*expect), "{k}={offer}");
        }
        let (_, p) = answer(cfg.clone(), "MaxBurstLength", "16777215");
        assert_eq!(p.max_burst_length, 1 << 20);
        let (_, p) = answer(cfg.clone(), "MaxBurstLength", "bogus");
        assert_eq!(
            p.max_burst_length, 262_144,
            "rejected value keeps the default"
        );
        let (_, p) = answer(cfg, "DefaultTime2Wait", "7");
        assert_eq!(p.default_time2wait, 7);
    }

    #[test]
    fn boolean_result_functions() {
        // (key, ours, offer, result)
        let table = [
            ("InitialR2T", false, "No", "No"),
            ("InitialR2T", false, "Yes", "Yes"),
            ("InitialR2T", true, "No", "Yes"),
            ("ImmediateData", true, "Yes", "Yes"),
            ("ImmediateData", false, "Yes", "No"),
            ("ImmediateData", true, "No", "No"),
            ("DataPDUInOrder", true, "No", "Yes"),
            ("DataSequenceInOrder", false, "No", "No"),
        ];
        for (k, ours, offer, result) in table {
            let cfg = OperationalConfig {
                initial_r2t: ours,
                immediate_data: ours,
                data_pdu_in_order: ours,
                data_sequence_in_order: ours,
                ..OperationalConfig::default()
            };
            let (got, p) = answer(cfg, k, offer);
            assert_eq!(
                got.as_deref(),
                Some(result),
                "{k}: ours {ours}, offer {offer}"
            );
            let value = match k {
                "InitialR2T" => p.initial_r2t,
                "ImmediateData" => p.immediate_data,
                "DataPDUInOrder" => p.data_pdu_in_order,
                _ => p.data_sequence_in_order,
            };
            assert_eq!(bool_str(value), result);
        }
        let (got, _) = answer(OperationalConfig::default(), "InitialR2T", "yes");
        assert_eq!(got.as_deref(), Some("Reject"));
    }

    #[test]
    fn digests_pick_first_acceptable_of_offerers_list() {
        let both = OperationalConfig {
            header_digest: vec![DigestKind::Crc32c, DigestKind::None],
            data_digest: vec![DigestKind::None],
            ..OperationalConfig::default()
        };
        let (got, p) = answer(both.clone(), "HeaderDigest", "CRC32C,None");
        assert_eq!((got.as_deref(), p.header_digest), (Some("CRC32C"), true));
        let (got, p) = answer(both.clone(), "HeaderDigest", "None,CRC32C");
        assert_eq!((got.as_deref(), p.header_digest), (Some("None"), false));
        let (got, _) = answer(both.clone(), "DataDigest", "CRC32C");
        assert_eq!(got.as_deref(), Some("Reject"));
        let (got, _) = answer(both, "HeaderDigest", "MD5,CRC32C");
        assert_eq!(got.as_deref(), Some("CRC32C"));
    }

    #[test]
    fn declarative_unknown_vendor_and_obsolete_keys() {
        let mut t = target(OperationalConfig {
            max_recv_data_segment_length: 65536,
            ..OperationalConfig::default()
        });
        let mut out = TextList::new();
        t.process(
            &list(&[
                ("MaxRecvDataSegmentLength", "262144"),
                ("X-com.example.Foo", "1"),
                ("X#vendor", "2"),
                ("FancyNewKey", "3"),
                ("IFMarker", "No"),
                ("OFMarkInt", "2048~8192"),
                ("TaskReporting", "ResponseFence,RFC3720"),
            ]),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out.get("MaxRecvDataSegmentLength"),
            None,
            "declarations are not answered"
        );
        assert_eq!(out.get("X-com.example.Foo"), Some("NotUnderstood"));
        assert_eq!(out.get("X#vendor"), Some("NotUnderstood"));
        assert_eq!(out.get("FancyNewKey"), Some("NotUnderstood"));
        assert_eq!(out.get("IFMarker"), Some("No"));
        assert_eq!(out.get("OFMarkInt"), Some("Irrelevant"));
        assert_eq!(out.get("TaskReporting"), Some("RFC3720"));
        t.declare(&mut out);
        assert_eq!(out.get("MaxRecvDataSegmentLength"), Some("65536"));
        let p = t.finish().unwrap();
        assert_eq!(p.initiator_max_recv_data_segment_length, 262_144);
        assert_eq!(p.target_max_recv_data_segment_length, 65_536);
        for bad in ["511", "16777216", "x"] {
            let mut t = target(OperationalConfig::default());
            assert!(matches!(
                t.process(
                    &list(&[("MaxRecvDataSegmentLength", bad)]),
                    &mut TextList::new()
                ),
                Err(NegotiationError::InvalidDeclaration { .. })
            ));
        }
    }

    #[test]
    fn duplicates_are_errors() {
        for key in ["MaxBurstLength", "MaxRecvDataSegmentLength", "X-foo"] {
            let mut t = target(OperationalConfig::default());
            let mut out = TextList::new();
            t.process(&list(&[(key, "4096")]), &mut out).unwrap();
            assert_eq!(
                t.process(&list(&[(key, "4096")]), &mut out),
                Err(NegotiationError::Duplicate(key.to_string()))
            );
        }
    }

    #[test]
    fn leading_only_and_discovery_irrelevance() {
        let mut t = Negotiator::new(Role::Target, OperationalConfig::default(), false);
        let mut out = TextList::new();
        t.process(
            &list(&[("MaxConnections", "2"), ("HeaderDigest", "None")]),
            &mut out,
        )
        .unwrap();
        assert_eq!(out.get("MaxConnections"), Some("Irrelevant"));
        assert_eq!(out.get("HeaderDigest"), Some("None"));
        let mut t = target(OperationalConfig::default());
        t.set_session_type(SessionType::Discovery);
        let mut out = TextList::new();
        t.process(
            &list(&[("ImmediateData", "Yes"), ("ErrorRecoveryLevel", "0")]),
            &mut out,
        )
        .unwrap();
        assert_eq!(out.get("ImmediateData"), Some("Irrelevant"));
        assert_eq!(out.get("ErrorRecoveryLevel"), Some("0"));
    }

    #[test]
    fn first_burst_capped_by_max_burst_in_any_order() {
        let cfg = OperationalConfig {
            max_burst_length: 1 << 20,
            first_burst_length: 1 << 20,
            ..OperationalConfig::default()
        };
        let mut t = target(cfg.clone());
        let mut out = TextList::new();
        t.process(
            &list(&[("FirstBurstLength", "262144"), ("MaxBurstLength", "131072")]),
            &mut out,
        )
        .unwrap();
        assert_eq!(out.get("MaxBurstLength"), Some("131072"));
        assert_eq!(out.get("FirstBurstLength"), Some("131072"));
        assert!(t.finish().is_ok());

        // The initiator lowers MaxBurstLength below the default FirstBurstLength and says
        // nothing about the latter: the target offers a compatible FirstBurstLength.
        let mut t = target(cfg);
        let mut out = TextList::new();
        t.process(&list(&[("MaxBurstLength", "4096")]), &mut out)
            .unwrap();
        assert_eq!(
            t.finish(),
            Err(NegotiationError::FirstBurstExceedsMaxBurst {
                first: 65536,
                max: 4096
            })
        );
        let mut offers = TextList::new();
        assert!(t.target_offers(&mut offers));
        assert_eq!(offers.get("FirstBurstLength"), Some("4096"));
        assert!(matches!(t.finish(), Err(NegotiationError::Unanswered(_))));
        t.process(&list(&[("FirstBurstLength", "4096")]), &mut TextList::new())
            .unwrap();
        assert_eq!(t.finish().unwrap().first_burst_length, 4096);
    }

    #[test]
    fn initiator_and_target_agree() {
        let icfg = OperationalConfig {
            header_digest: vec![DigestKind::Crc32c, DigestKind::None],
            data_digest: vec![DigestKind::Crc32c, DigestKind::None],
            initial_r2t: false,
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1 << 20,
            first_burst_length: 1 << 18,
            max_outstanding_r2t: 8,
            ..OperationalConfig::default()
        };
        let tcfg = OperationalConfig {
            header_digest: vec![DigestKind::Crc32c, DigestKind::None],
            data_digest: vec![DigestKind::None],
            initial_r2t: false,
            max_recv_data_segment_length: 131_072,
            max_burst_length: 512 * 1024,
            first_burst_length: 1 << 20,
            max_outstanding_r2t: 4,
            ..OperationalConfig::default()
        };
        let mut ini = Negotiator::new(Role::Initiator, icfg, true);
        let mut tgt = Negotiator::new(Role::Target, tcfg, true);
        let mut offers = TextList::new();
        ini.initiator_offers(&mut offers);
        let mut answers = TextList::new();
        tgt.process(&offers, &mut answers).unwrap();
        tgt.declare(&mut answers);
        assert!(!tgt.target_offers(&mut answers));
        let mut back = TextList::new();
        ini.process(&answers, &mut back).unwrap();
        assert!(back.is_empty(), "{back:?}");
        let (a, b) = (ini.finish().unwrap(), tgt.finish().unwrap());
        assert_eq!(a, b);
        assert!(a.header_digest && !a.data_digest);
        assert!(!a.initial_r2t);
        assert_eq!(a.max_burst_length, 512 * 1024);
        assert_eq!(a.first_burst_length, 1 << 18);
        assert_eq!(a.max_outstanding_r2t, 4);
        assert_eq!(a.initiator_max_recv_data_segment_length, 262_144);
        assert_eq!(a.target_max_recv_data_segment_length, 131_072);
    }

    #[test]
    fn initiator_checks_answers() {
        let mut ini = Negotiator::new(Role::Initiator, OperationalConfig::default(), true);
        let mut offers = TextList::new();
        ini.initiator_offers(&mut offers);
        assert_eq!(offers.get("MaxBurstLength"), Some("262144"));
        // A min() answer above the offer, an OR answer of No to Yes (fine: result is Yes),
        // and a digest we never offered.
        let bad = [
            ("MaxBurstLength", "300000"),
            ("HeaderDigest", "CRC32C"),
            ("ErrorRecoveryLevel", "1"),
            ("DefaultTime2Wait", "1"),
        ];
        for (k, v) in bad {
            let mut i = ini.clone();
            assert!(
                matches!(
                    i.process(&list(&[(k, v)]), &mut TextList::new()),
                    Err(NegotiationError::InvalidAnswer { .. })
                ),
                "{k}={v}"
            );
        }
        let mut i = ini.clone();
        i.process(&list(&[("InitialR2T", "No")]), &mut TextList::new())
            .unwrap();
        assert!(i.params().initial_r2t);
        // Answers that keep the default.
        let mut i = ini;
        i.process(&list(&[("MaxConnections", "Reject")]), &mut TextList::new())
            .unwrap();
        assert_eq!(i.params().max_connections, 1);
    }
}
