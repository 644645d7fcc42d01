//! Login state machines (RFC 7143 §6.3, §11.12, §11.13), sans I/O, for both sides.
//!
//! [`TargetLogin`] takes each Login Request (header and data segment) and returns the Login
//! Response to send plus whether the connection continues, enters Full Feature Phase, or must
//! be closed. What depends on the target's configuration and state — which targets exist,
//! who may log in, redirection, CHAP secrets, session identifying (TSIH) and reinstatement —
//! is asked of a [`LoginHooks`] implementation. [`InitiatorLogin`] produces the requests and
//! consumes the responses.
//!
//! Stages: SecurityNegotiation (AuthMethod, CHAP) → LoginOperationalNegotiation (operational
//! keys) → FullFeaturePhase, moved by the T bit with NSG; C-bit continuation in both
//! directions; version 0x00 only; TargetPortalGroupTag in the first response of a normal
//! session; statuses per RFC 7143 §11.13.5.

use crate::bhs::{
    Bhs, BhsBody, Isid, LoginRequest, LoginResponse, LoginStage, LoginStatus, ISCSI_VERSION,
};
use crate::chap::{self, ChapChallenge, ChapError};
use crate::negotiate::{
    is_security_key, NegotiationError, Negotiator, OperationalConfig, Role, SessionParams,
    SessionType,
};
use crate::text::{hex_value, TextError, TextLimits, TextList, TextReassembly, REJECT};
use thiserror::Error;

/// How a target (or the discovery service) wants initiators authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPolicy {
    /// AuthMethod=None only.
    None,
    /// CHAP; the initiator may ask for mutual CHAP, and must when `mutual_required`.
    Chap { mutual_required: bool },
}

/// What the target knows about the TargetName an initiator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetLookup {
    Found(TargetInfo),
    NotFound,
    Removed,
    /// The initiator may not access this target.
    NotAuthorized,
    /// Redirection (status 0x0101 or 0x0102) to `address` (`host:port[,tpgt]`).
    Redirect {
        address: String,
        permanent: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    pub portal_group_tag: u16,
    pub alias: Option<String>,
    pub auth: AuthPolicy,
}

/// CHAP credentials, per target (`Some(target name)`) or for discovery (`None`).
pub trait ChapCredentials {
    /// The secret the initiator calling itself `chap_name` must prove.
    fn initiator_secret(&self, target: Option<&str>, chap_name: &str) -> Option<Vec<u8>>;
    /// The name and secret the target answers a mutual challenge with.
    fn target_credentials(&self, target: Option<&str>) -> Option<(String, Vec<u8>)>;
}

/// What the target is asked when a connection finishes its login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionBinding<'a> {
    pub initiator_name: &'a str,
    pub target_name: Option<&'a str>,
    pub session_type: SessionType,
    pub isid: Isid,
    /// 0 for a new session (or the reinstatement of one with the same ISID), otherwise the
    /// session this connection joins.
    pub tsih: u16,
    pub cid: u16,
    pub params: &'a SessionParams,
}

/// The target's side of the login: configuration lookups and session bookkeeping.
pub trait LoginHooks: ChapCredentials {
    fn resolve_target(&mut self, initiator_name: &str, target_name: &str) -> TargetLookup;
    /// Authentication for discovery sessions, or `Err` to refuse discovery to this initiator.
    fn discovery_auth(&mut self, initiator_name: &str) -> Result<AuthPolicy, LoginStatus>;
    /// First request with a non-zero TSIH: does that session exist for this initiator?
    fn session_exists(&mut self, initiator_name: &str, isid: Isid, tsih: u16) -> bool;
    /// Last step of a successful login: create the session (returning its new non-zero
    /// TSIH, reinstating an older one with the same ISID as RFC 7143 §6.3.5 says) or add
    /// the connection to the session `binding.tsih`.
    fn bind_session(&mut self, binding: &SessionBinding<'_>) -> Result<u16, LoginStatus>;
}

/// Target-side login settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLoginConfig {
    pub operational: OperationalConfig,
    pub text_limits: TextLimits,
    /// StatSN of the first Login Response.
    pub initial_stat_sn: u32,
    /// Commands the initiator may have outstanding (MaxCmdSN - ExpCmdSN + 1).
    pub command_window: u32,
    /// Largest login data segment we accept (RFC 7143: 8192 during login).
    pub max_login_data_segment: u32,
}

impl Default for TargetLoginConfig {
    fn default() -> Self {
        TargetLoginConfig {
            operational: OperationalConfig::default(),
            text_limits: TextLimits::default(),
            initial_stat_sn: 1,
            command_window: 64,
            max_login_data_segment: 8192,
        }
    }
}

/// A PDU to send: header plus data segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginPdu {
    pub bhs: Bhs,
    pub data: Vec<u8>,
}

/// A successful target-side login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLoginResult {
    pub params: SessionParams,
    pub isid: Isid,
    pub tsih: u16,
    pub cid: u16,
    /// ExpCmdSN after login (the CmdSN the initiator's first command carries).
    pub exp_cmd_sn: u32,
    /// StatSN the next response on this connection carries.
    pub next_stat_sn: u32,
}

/// What the target does after a Login Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetLoginStep {
    /// Send the response and wait for the next request.
    Continue(LoginPdu),
    /// Send the response; the connection is now in Full Feature Phase.
    FullFeature(LoginPdu, Box<TargetLoginResult>),
    /// Send the response (carrying `status`), then close the connection.
    Failed(LoginPdu, LoginStatus, LoginFailure),
}

/// Why a login failed, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LoginFailure {
    #[error("login status {0}")]
    Status(LoginStatus),
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Negotiation(#[from] NegotiationError),
    #[error(transparent)]
    Chap(#[from] ChapError),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TargetAuth {
    NotStarted,
    AwaitChapA,
    AwaitChapResponse(ChapChallenge),
    Done,
}

#[derive(Debug, Clone, Copy)]
struct FirstRequest {
    isid: Isid,
    tsih: u16,
    cid: u16,
}

/// The target side of one connection's login.
#[derive(Debug)]
pub struct TargetLogin {
    config: TargetLoginConfig,
    first: Option<FirstRequest>,
    stage: LoginStage,
    stat_sn: u32,
    responses: u32,
    reassembly: TextReassembly,
    negotiator: Option<Negotiator>,
    initiator_name: String,
    target_name: Option<String>,
    target: Option<TargetInfo>,
    policy: AuthPolicy,
    auth: TargetAuth,
    declared: bool,
    offered: bool,
    done: bool,
    /// Keys a failure response carries (TargetAddress of a redirection).
    fail_keys: TextList,
}

fn status_fail(status: LoginStatus) -> LoginFailure {
    LoginFailure::Status(status)
}

impl TargetLogin {
    pub fn new(config: TargetLoginConfig) -> Self {
        let cap = config.text_limits.max_total_len;
        TargetLogin {
            stat_sn: config.initial_stat_sn,
            config,
            first: None,
            stage: LoginStage::SecurityNegotiation,
            responses: 0,
            reassembly: TextReassembly::new(cap),
            negotiator: None,
            initiator_name: String::new(),
            target_name: None,
            target: None,
            policy: AuthPolicy::None,
            auth: TargetAuth::NotStarted,
            declared: false,
            offered: false,
            done: false,
            fail_keys: TextList::new(),
        }
    }

    /// Largest data segment a Login Request may carry.
    pub fn max_data_segment(&self) -> u32 {
        self.config.max_login_data_segment
    }

    fn response(
        &mut self,
        req: &LoginRequest,
        transit: bool,
        nsg: LoginStage,
        status: LoginStatus,
        tsih: u16,
        keys: &TextList,
    ) -> LoginPdu {
        let data = keys.encode();
        let stat_sn = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        self.responses += 1;
        let window = if transit && nsg == LoginStage::FullFeaturePhase {
            self.config.command_window.max(1)
        } else {
            1
        };
        let csg = if status.is_success() {
            req.csg
        } else {
            LoginStage::SecurityNegotiation
        };
        let resp = LoginResponse {
            transit,
            continue_: false,
            csg,
            // NSG is reserved without T; it decodes as the current stage.
            nsg: if transit { nsg } else { csg },
            version_max: ISCSI_VERSION,
            version_active: ISCSI_VERSION,
            isid: req.isid,
            tsih,
            itt: req.itt,
            stat_sn,
            exp_cmd_sn: req.cmd_sn,
            max_cmd_sn: req.cmd_sn.wrapping_add(window - 1),
            status,
        };
        LoginPdu {
            bhs: Bhs::with_data_len(BhsBody::LoginResponse(resp), data.len() as u32),
            data,
        }
    }

    fn fail(
        &mut self,
        req: &LoginRequest,
        status: LoginStatus,
        why: LoginFailure,
    ) -> TargetLoginStep {
        self.done = true;
        let keys = std::mem::take(&mut self.fail_keys);
        let pdu = self.response(
            req,
            false,
            LoginStage::SecurityNegotiation,
            status,
            0,
            &keys,
        );
        TargetLoginStep::Failed(pdu, status, why)
    }

    /// Handles one Login Request. `data` is its data segment (without padding).
    pub fn on_request(
        &mut self,
        req: &LoginRequest,
        data: &[u8],
        hooks: &mut dyn LoginHooks,
    ) -> TargetLoginStep {
        match self.step(req, data, hooks) {
            Ok(step) => step,
            Err((status, why)) => self.fail(req, status, why),
        }
    }

    fn step(
        &mut self,
        req: &LoginRequest,
        data: &[u8],
        hooks: &mut dyn LoginHooks,
    ) -> Result<TargetLoginStep, (LoginStatus, LoginFailure)> {
        let ierr = |why: LoginFailure| (LoginStatus::INITIATOR_ERROR, why);
        if self.done {
            return Err(ierr(LoginFailure::Protocol("login already finished")));
        }
        if data.len() > self.config.max_login_data_segment as usize {
            return Err(ierr(LoginFailure::Protocol("login data segment too long")));
        }
        match self.first {
            None => {
                // Version 0x00 is the lowest there is, so only Version-min can exclude it.
                if req.version_min > ISCSI_VERSION {
                    return Err((
                        LoginStatus::UNSUPPORTED_VERSION,
                        status_fail(LoginStatus::UNSUPPORTED_VERSION),
                    ));
                }
                self.first = Some(FirstRequest {
                    isid: req.isid,
                    tsih: req.tsih,
                    cid: req.cid,
                });
                self.stage = req.csg;
            }
            Some(f) => {
                if f.isid != req.isid || f.tsih != req.tsih || f.cid != req.cid {
                    return Err(ierr(LoginFailure::Protocol(
                        "ISID, TSIH or CID changed during login",
                    )));
                }
            }
        }
        if req.csg != self.stage {
            return Err(ierr(LoginFailure::Protocol("CSG is not the current stage")));
        }
        if req.csg == LoginStage::FullFeaturePhase {
            return Err(ierr(LoginFailure::Protocol("CSG is FullFeaturePhase")));
        }
        if req.transit && req.continue_ {
            return Err(ierr(LoginFailure::Protocol("T and C both set")));
        }
        if req.transit && req.nsg <= req.csg {
            return Err(ierr(LoginFailure::Protocol("NSG does not move forward")));
        }
        let text = match self.reassembly.push(data, req.continue_) {
            Err(e) => return Err(ierr(e.into())),
            Ok(None) => {
                // More text follows: acknowledge with an empty response in the same stage.
                let pdu = self.response(
                    req,
                    false,
                    req.csg,
                    LoginStatus::SUCCESS,
                    0,
                    &TextList::new(),
                );
                return Ok(TargetLoginStep::Continue(pdu));
            }
            Ok(Some(t)) => t,
        };
        let keys = TextList::parse(&text, &self.config.text_limits).map_err(|e| ierr(e.into()))?;
        let mut out = TextList::new();
        if self.negotiator.is_none() {
            self.first_request(req, &keys, hooks, &mut out)?;
        } else {
            for k in [
                "InitiatorName",
                "TargetName",
                "SessionType",
                "InitiatorAlias",
            ] {
                if keys.contains(k) {
                    return Err(ierr(NegotiationError::Duplicate(k.to_string()).into()));
                }
            }
        }
        // Keys only a target sends.
        for k in [
            "TargetAlias",
            "TargetAddress",
            "TargetPortalGroupTag",
            "SendTargets",
        ] {
            if keys.contains(k) {
                return Err(ierr(NegotiationError::NotAllowedHere(k.to_string()).into()));
            }
        }
        let mut security = TextList::new();
        let mut operational = TextList::new();
        for (k, v) in keys.iter() {
            if is_security_key(k) {
                security.push(k, v);
            } else if !matches!(
                k,
                "InitiatorName" | "TargetName" | "SessionType" | "InitiatorAlias"
            ) {
                operational.push(k, v);
            }
        }
        if self.stage == LoginStage::SecurityNegotiation {
            self.security(&security, hooks, &mut out)?;
        } else if let Some((k, _)) = security.iter().next() {
            return Err(ierr(NegotiationError::NotAllowedHere(k.to_string()).into()));
        }
        let negotiator = self
            .negotiator
            .as_mut()
            .ok_or_else(|| ierr(LoginFailure::Protocol("no negotiator")))?;
        negotiator
            .process(&operational, &mut out)
            .map_err(|e| ierr(e.into()))?;
        if self.stage == LoginStage::LoginOperationalNegotiation && !self.declared {
            self.declared = true;
            negotiator.declare(&mut out);
        }

        if !req.transit {
            let pdu = self.response(req, false, req.csg, LoginStatus::SUCCESS, 0, &out);
            return Ok(TargetLoginStep::Continue(pdu));
        }
        // The initiator wants to move on.
        if self.stage == LoginStage::SecurityNegotiation {
            if self.auth != TargetAuth::Done {
                if self.auth == TargetAuth::NotStarted && self.policy == AuthPolicy::None {
                    self.auth = TargetAuth::Done;
                } else {
                    return Err((
                        LoginStatus::AUTHENTICATION_FAILURE,
                        LoginFailure::Protocol("transit before authentication completed"),
                    ));
                }
            }
            // Always pass through the operational stage so the target can declare its
            // limits and offer what it needs.
            self.stage = LoginStage::LoginOperationalNegotiation;
            let pdu = self.response(
                req,
                true,
                LoginStage::LoginOperationalNegotiation,
                LoginStatus::SUCCESS,
                0,
                &out,
            );
            return Ok(TargetLoginStep::Continue(pdu));
        }
        let negotiator = self
            .negotiator
            .as_mut()
            .ok_or_else(|| ierr(LoginFailure::Protocol("no negotiator")))?;
        if !self.offered {
            self.offered = true;
            if negotiator.target_offers(&mut out) {
                let pdu = self.response(req, false, req.csg, LoginStatus::SUCCESS, 0, &out);
                return Ok(TargetLoginStep::Continue(pdu));
            }
        }
        if negotiator.has_pending() {
            let pdu = self.response(req, false, req.csg, LoginStatus::SUCCESS, 0, &out);
            return Ok(TargetLoginStep::Continue(pdu));
        }
        let params = negotiator.finish().map_err(|e| ierr(e.into()))?;
        let first = self
            .first
            .ok_or_else(|| ierr(LoginFailure::Protocol("no first request")))?;
        let binding = SessionBinding {
            initiator_name: &self.initiator_name,
            target_name: self.target_name.as_deref(),
            session_type: params.session_type,
            isid: first.isid,
            tsih: first.tsih,
            cid: first.cid,
            params: &params,
        };
        let tsih = hooks
            .bind_session(&binding)
            .map_err(|s| (s, status_fail(s)))?;
        if tsih == 0 {
            return Err((
                LoginStatus::TARGET_ERROR,
                LoginFailure::Protocol("session binding returned TSIH 0"),
            ));
        }
        let pdu = self.response(
            req,
            true,
            LoginStage::FullFeaturePhase,
            LoginStatus::SUCCESS,
            tsih,
            &out,
        );
        self.done = true;
        Ok(TargetLoginStep::FullFeature(
            pdu,
            Box::new(TargetLoginResult {
                params,
                isid: first.isid,
                tsih,
                cid: first.cid,
                exp_cmd_sn: req.cmd_sn,
                next_stat_sn: self.stat_sn,
            }),
        ))
    }

    fn first_request(
        &mut self,
        req: &LoginRequest,
        keys: &TextList,
        hooks: &mut dyn LoginHooks,
        out: &mut TextList,
    ) -> Result<(), (LoginStatus, LoginFailure)> {
        let missing = (
            LoginStatus::MISSING_PARAMETER,
            status_fail(LoginStatus::MISSING_PARAMETER),
        );
        let Some(initiator_name) = keys.get("InitiatorName").filter(|n| !n.is_empty()) else {
            return Err(missing);
        };
        let session_type = match keys.get("SessionType") {
            None => SessionType::Normal,
            Some(v) => SessionType::parse(v).ok_or((
                LoginStatus::SESSION_TYPE_NOT_SUPPORTED,
                status_fail(LoginStatus::SESSION_TYPE_NOT_SUPPORTED),
            ))?,
        };
        self.initiator_name = initiator_name.to_string();
        if req.tsih != 0 && !hooks.session_exists(initiator_name, req.isid, req.tsih) {
            return Err((
                LoginStatus::SESSION_DOES_NOT_EXIST,
                status_fail(LoginStatus::SESSION_DOES_NOT_EXIST),
            ));
        }
        let leading = req.tsih == 0;
        let mut negotiator =
            Negotiator::new(Role::Target, self.config.operational.clone(), leading);
        negotiator.set_session_type(session_type);
        {
            let p = negotiator.params_mut();
            p.initiator_name = initiator_name.to_string();
            p.initiator_alias = keys.get("InitiatorAlias").map(str::to_string);
        }
        match session_type {
            SessionType::Discovery => {
                self.policy = hooks
                    .discovery_auth(initiator_name)
                    .map_err(|s| (s, status_fail(s)))?;
            }
            SessionType::Normal => {
                let Some(target_name) = keys.get("TargetName").filter(|n| !n.is_empty()) else {
                    return Err(missing);
                };
                let info = match hooks.resolve_target(initiator_name, target_name) {
                    TargetLookup::Found(info) => info,
                    TargetLookup::NotFound => {
                        return Err((LoginStatus::NOT_FOUND, status_fail(LoginStatus::NOT_FOUND)))
                    }
                    TargetLookup::Removed => {
                        return Err((
                            LoginStatus::TARGET_REMOVED,
                            status_fail(LoginStatus::TARGET_REMOVED),
                        ))
                    }
                    TargetLookup::NotAuthorized => {
                        return Err((
                            LoginStatus::AUTHORIZATION_FAILURE,
                            status_fail(LoginStatus::AUTHORIZATION_FAILURE),
                        ))
                    }
                    TargetLookup::Redirect { address, permanent } => {
                        // A redirection is a (non-success) response carrying TargetAddress.
                        let status = if permanent {
                            LoginStatus::TARGET_MOVED_PERMANENTLY
                        } else {
                            LoginStatus::TARGET_MOVED_TEMPORARILY
                        };
                        self.fail_keys.push("TargetAddress", address);
                        return Err((status, status_fail(status)));
                    }
                };
                self.policy = info.auth;
                out.push("TargetPortalGroupTag", info.portal_group_tag.to_string());
                if let Some(alias) = &info.alias {
                    out.push("TargetAlias", alias.clone());
                }
                let p = negotiator.params_mut();
                p.target_name = Some(target_name.to_string());
                p.target_alias = info.alias.clone();
                p.target_portal_group_tag = Some(info.portal_group_tag);
                self.target_name = Some(target_name.to_string());
                self.target = Some(info);
            }
        }
        if req.csg == LoginStage::LoginOperationalNegotiation && self.policy != AuthPolicy::None {
            // Skipping the security stage is only fine when no authentication is required.
            return Err((
                LoginStatus::AUTHENTICATION_FAILURE,
                LoginFailure::Protocol("security stage skipped but authentication required"),
            ));
        }
        self.negotiator = Some(negotiator);
        Ok(())
    }

    fn security(
        &mut self,
        keys: &TextList,
        hooks: &mut dyn LoginHooks,
        out: &mut TextList,
    ) -> Result<(), (LoginStatus, LoginFailure)> {
        let auth_fail = |why: LoginFailure| (LoginStatus::AUTHENTICATION_FAILURE, why);
        if let Some(methods) = keys.get("AuthMethod") {
            if self.auth != TargetAuth::NotStarted {
                return Err((
                    LoginStatus::INITIATOR_ERROR,
                    NegotiationError::Duplicate("AuthMethod".into()).into(),
                ));
            }
            let want = match self.policy {
                AuthPolicy::None => "None",
                AuthPolicy::Chap { .. } => "CHAP",
            };
            if !methods.split(',').any(|m| m == want) {
                out.push("AuthMethod", REJECT);
                return Err(auth_fail(LoginFailure::Protocol(
                    "no acceptable AuthMethod offered",
                )));
            }
            out.push("AuthMethod", want);
            self.auth = if want == "CHAP" {
                TargetAuth::AwaitChapA
            } else {
                TargetAuth::Done
            };
        }
        let target = self.target_name.clone();
        match std::mem::replace(&mut self.auth, TargetAuth::Done) {
            TargetAuth::AwaitChapA => {
                let Some(algs) = keys.get("CHAP_A") else {
                    self.auth = TargetAuth::AwaitChapA;
                    return Ok(());
                };
                if !chap::offers_md5(algs) {
                    return Err(auth_fail(ChapError::NoSupportedAlgorithm.into()));
                }
                let c = ChapChallenge::generate();
                out.push("CHAP_A", "5");
                out.push("CHAP_I", c.id_value());
                out.push("CHAP_C", c.challenge_value());
                self.auth = TargetAuth::AwaitChapResponse(c);
            }
            TargetAuth::AwaitChapResponse(challenge) => {
                let name = keys
                    .get("CHAP_N")
                    .ok_or(auth_fail(ChapError::Missing("CHAP_N").into()))?;
                let response = keys
                    .get("CHAP_R")
                    .ok_or(auth_fail(ChapError::Missing("CHAP_R").into()))?;
                let response = chap::parse_response(response).map_err(|e| auth_fail(e.into()))?;
                let secret = hooks
                    .initiator_secret(target.as_deref(), name)
                    .ok_or_else(|| auth_fail(ChapError::UnknownName(name.to_string()).into()))?;
                chap::check_secret(&secret).map_err(|e| (LoginStatus::TARGET_ERROR, e.into()))?;
                challenge
                    .verify(&secret, &response)
                    .map_err(|e| auth_fail(e.into()))?;
                let mutual_required = matches!(
                    self.policy,
                    AuthPolicy::Chap {
                        mutual_required: true
                    }
                );
                match (keys.get("CHAP_I"), keys.get("CHAP_C")) {
                    (Some(id), Some(c)) => {
                        let id = chap::parse_identifier(id).map_err(|e| auth_fail(e.into()))?;
                        let peer_challenge =
                            chap::parse_challenge(c).map_err(|e| auth_fail(e.into()))?;
                        if peer_challenge == challenge.challenge {
                            return Err(auth_fail(ChapError::ReflectedChallenge.into()));
                        }
                        let (tname, tsecret) = hooks
                            .target_credentials(target.as_deref())
                            .ok_or(auth_fail(ChapError::MutualUnavailable.into()))?;
                        chap::check_secret(&tsecret)
                            .map_err(|e| (LoginStatus::TARGET_ERROR, e.into()))?;
                        if tsecret == secret {
                            // RFC 7143 §12.1.3: a secret must not serve both directions.
                            return Err(auth_fail(ChapError::MutualUnavailable.into()));
                        }
                        out.push("CHAP_N", tname);
                        out.push(
                            "CHAP_R",
                            hex_value(&chap::chap_response(id, &tsecret, &peer_challenge)),
                        );
                    }
                    (None, None) if !mutual_required => {}
                    (None, None) => return Err(auth_fail(ChapError::MutualUnavailable.into())),
                    _ => {
                        return Err(auth_fail(
                            ChapError::Missing("CHAP_I and CHAP_C together").into(),
                        ))
                    }
                }
            }
            TargetAuth::NotStarted => {
                self.auth = TargetAuth::NotStarted;
                if let Some((k, _)) = keys.iter().find(|(k, _)| k.starts_with("CHAP_")) {
                    return Err((
                        LoginStatus::INITIATOR_ERROR,
                        NegotiationError::NotAllowedHere(k.to_string()).into(),
                    ));
                }
            }
            TargetAuth::Done => {
                if let Some((k, _)) = keys.iter().find(|(k, _)| k.starts_with("CHAP_")) {
                    return Err((
                        LoginStatus::INITIATOR_ERROR,
                        NegotiationError::Duplicate(k.to_string()).into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// How the initiator authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitiatorAuth {
    None,
    Chap {
        name: String,
        secret: Vec<u8>,
        /// Mutual CHAP: the secret the target must prove, and optionally the CHAP name we
        /// expect it to use.
        mutual: Option<MutualChap>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutualChap {
    pub secret: Vec<u8>,
    pub expected_name: Option<String>,
}

/// Initiator-side login settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiatorLoginConfig {
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    /// `None` for a discovery session.
    pub target_name: Option<String>,
    pub auth: InitiatorAuth,
    pub operational: OperationalConfig,
    pub text_limits: TextLimits,
    pub isid: Isid,
    /// 0 to start a session; the session's TSIH to add a connection.
    pub tsih: u16,
    pub cid: u16,
    pub itt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Why the initiator gave up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InitiatorLoginError {
    #[error("target refused the login: {0}")]
    Status(LoginStatus),
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Negotiation(#[from] NegotiationError),
    #[error(transparent)]
    Chap(#[from] ChapError),
    #[error("protocol error from the target: {0}")]
    Protocol(&'static str),
}

/// A successful initiator-side login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiatorLoginResult {
    pub params: SessionParams,
    pub tsih: u16,
    /// CmdSN of the first command (login requests do not advance it).
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub max_cmd_sn: u32,
}

/// What the initiator does after a Login Response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitiatorLoginStep {
    Send(LoginPdu),
    Complete(Box<InitiatorLoginResult>),
    /// The target redirected us (status class 1) to `address`.
    Redirect {
        address: String,
        permanent: bool,
    },
    Failed(InitiatorLoginError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum InitiatorAuthState {
    AwaitAuthMethod,
    AwaitChapChallenge,
    /// Our CHAP_R is sent; for mutual CHAP, the challenge we sent.
    AwaitChapResult(Option<ChapChallenge>),
    Done,
}

/// The initiator side of one connection's login.
#[derive(Debug)]
pub struct InitiatorLogin {
    config: InitiatorLoginConfig,
    stage: LoginStage,
    auth: InitiatorAuthState,
    negotiator: Negotiator,
    reassembly: TextReassembly,
    exp_stat_sn: u32,
    started: bool,
    op_offered: bool,
    tpgt_seen: bool,
    done: bool,
}

impl InitiatorLogin {
    pub fn new(config: InitiatorLoginConfig) -> Self {
        let leading = config.tsih == 0;
        let mut negotiator = Negotiator::new(Role::Initiator, config.operational.clone(), leading);
        let session_type = if config.target_name.is_some() {
            SessionType::Normal
        } else {
            SessionType::Discovery
        };
        negotiator.set_session_type(session_type);
        {
            let p = negotiator.params_mut();
            p.initiator_name = config.initiator_name.clone();
            p.initiator_alias = config.initiator_alias.clone();
            p.target_name = config.target_name.clone();
        }
        InitiatorLogin {
            exp_stat_sn: config.exp_stat_sn,
            reassembly: TextReassembly::new(config.text_limits.max_total_len),
            stage: LoginStage::SecurityNegotiation,
            auth: InitiatorAuthState::AwaitAuthMethod,
            negotiator,
            config,
            started: false,
            op_offered: false,
            tpgt_seen: false,
            done: false,
        }
    }

    fn request(&self, transit: bool, nsg: LoginStage, keys: &TextList) -> LoginPdu {
        let data = keys.encode();
        let req = LoginRequest {
            transit,
            continue_: false,
            csg: self.stage,
            nsg: if transit { nsg } else { self.stage },
            version_max: ISCSI_VERSION,
            version_min: ISCSI_VERSION,
            isid: self.config.isid,
            tsih: self.config.tsih,
            itt: self.config.itt,
            cid: self.config.cid,
            cmd_sn: self.config.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        LoginPdu {
            bhs: Bhs::with_data_len(BhsBody::LoginRequest(req), data.len() as u32),
            data,
        }
    }

    /// The first Login Request.
    pub fn start(&mut self) -> LoginPdu {
        self.started = true;
        let mut keys = TextList::new();
        keys.push("InitiatorName", self.config.initiator_name.clone());
        if let Some(alias) = &self.config.initiator_alias {
            keys.push("InitiatorAlias", alias.clone());
        }
        match &self.config.target_name {
            Some(t) => {
                keys.push("SessionType", "Normal");
                keys.push("TargetName", t.clone());
            }
            None => keys.push("SessionType", "Discovery"),
        }
        match self.config.auth {
            InitiatorAuth::None => {
                keys.push("AuthMethod", "None");
                self.request(true, LoginStage::LoginOperationalNegotiation, &keys)
            }
            InitiatorAuth::Chap { .. } => {
                keys.push("AuthMethod", "CHAP");
                self.request(false, LoginStage::LoginOperationalNegotiation, &keys)
            }
        }
    }

    /// Handles one Login Response (header and data segment).
    pub fn on_response(&mut self, resp: &LoginResponse, data: &[u8]) -> InitiatorLoginStep {
        match self.step(resp, data) {
            Ok(s) => s,
            Err(e) => {
                self.done = true;
                InitiatorLoginStep::Failed(e)
            }
        }
    }

    fn step(
        &mut self,
        resp: &LoginResponse,
        data: &[u8],
    ) -> Result<InitiatorLoginStep, InitiatorLoginError> {
        use InitiatorLoginError as E;
        if self.done || !self.started {
            return Err(E::Protocol("response outside a login"));
        }
        if resp.status.is_redirection() {
            let keys = TextList::parse(data, &self.config.text_limits)?;
            let address = keys
                .get("TargetAddress")
                .ok_or(E::Protocol("redirection without TargetAddress"))?;
            self.done = true;
            return Ok(InitiatorLoginStep::Redirect {
                address: address.to_string(),
                permanent: resp.status == LoginStatus::TARGET_MOVED_PERMANENTLY,
            });
        }
        if !resp.status.is_success() {
            return Err(E::Status(resp.status));
        }
        if resp.version_active != ISCSI_VERSION {
            return Err(E::Protocol("unsupported Version-active"));
        }
        if resp.itt != self.config.itt || resp.isid != self.config.isid {
            return Err(E::Protocol("ITT or ISID does not match"));
        }
        if resp.csg != self.stage {
            return Err(E::Protocol("CSG does not match our stage"));
        }
        if resp.transit && resp.continue_ {
            return Err(E::Protocol("T and C both set"));
        }
        self.exp_stat_sn = resp.stat_sn.wrapping_add(1);
        let Some(text) = self.reassembly.push(data, resp.continue_)? else {
            // The target has more text: ask for it with an empty request.
            return Ok(InitiatorLoginStep::Send(self.request(
                false,
                self.stage,
                &TextList::new(),
            )));
        };
        let keys = TextList::parse(&text, &self.config.text_limits)?;
        let mut out = TextList::new();
        let mut operational = TextList::new();
        for (k, v) in keys.iter() {
            match k {
                "TargetPortalGroupTag" => {
                    if self.tpgt_seen {
                        return Err(NegotiationError::Duplicate(k.to_string()).into());
                    }
                    self.tpgt_seen = true;
                    let tag = crate::text::parse_number(v)
                        .ok()
                        .and_then(|t| u16::try_from(t).ok())
                        .ok_or(E::Protocol("malformed TargetPortalGroupTag"))?;
                    self.negotiator.params_mut().target_portal_group_tag = Some(tag);
                }
                "TargetAlias" => {
                    self.negotiator.params_mut().target_alias = Some(v.to_string());
                }
                k if is_security_key(k) => {}
                _ => operational.push(k, v),
            }
        }
        if self.stage == LoginStage::SecurityNegotiation {
            self.security(&keys, &mut out)?;
        } else if keys.iter().any(|(k, _)| is_security_key(k)) {
            return Err(E::Protocol("security key in the operational stage"));
        }
        self.negotiator.process(&operational, &mut out)?;

        if resp.transit {
            if resp.nsg <= self.stage {
                return Err(E::Protocol("NSG does not move forward"));
            }
            if self.stage == LoginStage::SecurityNegotiation
                && self.auth != InitiatorAuthState::Done
            {
                return Err(E::Protocol(
                    "target moved on before authentication finished",
                ));
            }
            if resp.nsg == LoginStage::FullFeaturePhase {
                if !out.is_empty() {
                    return Err(E::Protocol(
                        "target ended the login with keys left to answer",
                    ));
                }
                let params = self.negotiator.finish()?;
                if resp.tsih == 0 {
                    return Err(E::Protocol("final login response has TSIH 0"));
                }
                if self.config.tsih != 0 && resp.tsih != self.config.tsih {
                    return Err(E::Protocol("TSIH changed for an existing session"));
                }
                if params.session_type == SessionType::Normal && !self.tpgt_seen {
                    return Err(E::Protocol("no TargetPortalGroupTag in a normal session"));
                }
                self.done = true;
                return Ok(InitiatorLoginStep::Complete(Box::new(
                    InitiatorLoginResult {
                        params,
                        tsih: resp.tsih,
                        cmd_sn: self.config.cmd_sn,
                        exp_stat_sn: self.exp_stat_sn,
                        max_cmd_sn: resp.max_cmd_sn,
                    },
                )));
            }
            self.stage = resp.nsg;
        }
        if self.stage == LoginStage::LoginOperationalNegotiation && !self.op_offered {
            self.op_offered = true;
            self.negotiator.initiator_offers(&mut out);
        }
        let (transit, nsg) = match self.stage {
            LoginStage::SecurityNegotiation => {
                (self.auth_transit(), LoginStage::LoginOperationalNegotiation)
            }
            _ => (true, LoginStage::FullFeaturePhase),
        };
        Ok(InitiatorLoginStep::Send(self.request(transit, nsg, &out)))
    }

    /// Whether our next security-stage request asks to move on.
    fn auth_transit(&self) -> bool {
        matches!(
            self.auth,
            InitiatorAuthState::AwaitChapResult(_) | InitiatorAuthState::Done
        )
    }

    fn security(&mut self, keys: &TextList, out: &mut TextList) -> Result<(), InitiatorLoginError> {
        use InitiatorLoginError as E;
        match std::mem::replace(&mut self.auth, InitiatorAuthState::Done) {
            InitiatorAuthState::AwaitAuthMethod => {
                let method = keys.get("AuthMethod");
                match (&self.config.auth, method) {
                    (InitiatorAuth::None, Some("None") | None) => {}
                    (InitiatorAuth::Chap { .. }, Some("CHAP")) => {
                        out.push("CHAP_A", "5");
                        self.auth = InitiatorAuthState::AwaitChapChallenge;
                    }
                    _ => return Err(E::Protocol("target chose an AuthMethod we did not offer")),
                }
            }
            InitiatorAuthState::AwaitChapChallenge => {
                let InitiatorAuth::Chap {
                    name,
                    secret,
                    mutual,
                } = &self.config.auth
                else {
                    return Err(E::Protocol("CHAP state without CHAP configured"));
                };
                let alg = keys.get("CHAP_A").ok_or(ChapError::Missing("CHAP_A"))?;
                if chap::parse_identifier(alg).ok() != Some(chap::CHAP_ALGORITHM_MD5) {
                    return Err(ChapError::NoSupportedAlgorithm.into());
                }
                let id = chap::parse_identifier(
                    keys.get("CHAP_I").ok_or(ChapError::Missing("CHAP_I"))?,
                )?;
                let challenge =
                    chap::parse_challenge(keys.get("CHAP_C").ok_or(ChapError::Missing("CHAP_C"))?)?;
                chap::check_secret(secret)?;
                out.push("CHAP_N", name.clone());
                out.push(
                    "CHAP_R",
                    hex_value(&chap::chap_response(id, secret, &challenge)),
                );
                let ours = match mutual {
                    Some(m) => {
                        chap::check_secret(&m.secret)?;
                        let mut c = ChapChallenge::generate();
                        while c.challenge == challenge {
                            c = ChapChallenge::generate();
                        }
                        out.push("CHAP_I", c.id_value());
                        out.push("CHAP_C", c.challenge_value());
                        Some(c)
                    }
                    None => None,
                };
                self.auth = InitiatorAuthState::AwaitChapResult(ours);
            }
            InitiatorAuthState::AwaitChapResult(ours) => {
                if let (
                    Some(c),
                    InitiatorAuth::Chap {
                        mutual: Some(m), ..
                    },
                ) = (ours, &self.config.auth)
                {
                    let name = keys.get("CHAP_N").ok_or(ChapError::Missing("CHAP_N"))?;
                    if let Some(expected) = &m.expected_name {
                        if name != expected {
                            return Err(ChapError::UnexpectedName {
                                got: name.to_string(),
                                expected: expected.clone(),
                            }
                            .into());
                        }
                    }
                    let r = chap::parse_response(
                        keys.get("CHAP_R").ok_or(ChapError::Missing("CHAP_R"))?,
                    )?;
                    c.verify(&m.secret, &r)?;
                }
            }
            InitiatorAuthState::Done => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
