//! Whole login conversations, target and initiator state machines against each other,
//! every PDU going through the wire codec in between.

use super::*;
use crate::framing::{encode_pdu, parse_pdu, Digests, Parsed};
use crate::negotiate::DigestKind;

const IQN_I: &str = "iqn.1993-08.org.debian:01:initiator";
const IQN_T: &str = "iqn.2024-01.io.gyre:disk1";
const INI_SECRET: &[u8] = b"initiator-secret-1";
const TGT_SECRET: &[u8] = b"target-secret-2345";

struct Hooks {
    auth: AuthPolicy,
    discovery: Result<AuthPolicy, LoginStatus>,
    target_creds: Option<(String, Vec<u8>)>,
    lookup_override: Option<TargetLookup>,
    bound: Vec<(Isid, u16, SessionType, Option<String>)>,
    next_tsih: u16,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            auth: AuthPolicy::None,
            discovery: Ok(AuthPolicy::None),
            target_creds: Some(("gyre-target".to_string(), TGT_SECRET.to_vec())),
            lookup_override: None,
            bound: Vec::new(),
            next_tsih: 0x0101,
        }
    }
}

impl ChapCredentials for Hooks {
    fn initiator_secret(&self, _target: Option<&str>, chap_name: &str) -> Option<Vec<u8>> {
        (chap_name == "alice").then(|| INI_SECRET.to_vec())
    }
    fn target_credentials(&self, _target: Option<&str>) -> Option<(String, Vec<u8>)> {
        self.target_creds.clone()
    }
}

impl LoginHooks for Hooks {
    fn resolve_target(&mut self, _initiator: &str, target_name: &str) -> TargetLookup {
        if let Some(l) = &self.lookup_override {
            return l.clone();
        }
        if target_name == IQN_T {
            TargetLookup::Found(TargetInfo {
                portal_group_tag: 7,
                alias: Some("disk one".to_string()),
                auth: self.auth,
            })
        } else {
            TargetLookup::NotFound
        }
    }
    fn discovery_auth(&mut self, _initiator: &str) -> Result<AuthPolicy, LoginStatus> {
        self.discovery
    }
    fn session_exists(&mut self, _initiator: &str, isid: Isid, tsih: u16) -> bool {
        self.bound.iter().any(|b| b.0 == isid && b.1 == tsih)
    }
    fn bind_session(&mut self, b: &SessionBinding<'_>) -> Result<u16, LoginStatus> {
        let tsih = if b.tsih == 0 {
            let t = self.next_tsih;
            self.next_tsih += 1;
            t
        } else {
            b.tsih
        };
        self.bound.push((
            b.isid,
            tsih,
            b.session_type,
            b.target_name.map(str::to_string),
        ));
        Ok(tsih)
    }
}

fn isid() -> Isid {
    Isid([0x80, 0x12, 0x34, 0x56, 0x00, 0x01])
}

fn initiator_config(auth: InitiatorAuth, target: Option<&str>) -> InitiatorLoginConfig {
    InitiatorLoginConfig {
        initiator_name: IQN_I.to_string(),
        initiator_alias: Some("host1".to_string()),
        target_name: target.map(str::to_string),
        auth,
        operational: OperationalConfig {
            header_digest: vec![DigestKind::Crc32c, DigestKind::None],
            data_digest: vec![DigestKind::None],
            initial_r2t: false,
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1 << 20,
            first_burst_length: 1 << 18,
            max_outstanding_r2t: 8,
            ..OperationalConfig::default()
        },
        text_limits: TextLimits::default(),
        isid: isid(),
        tsih: 0,
        cid: 0,
        itt: 0x1000,
        cmd_sn: 100,
        exp_stat_sn: 0,
    }
}

fn target_config() -> TargetLoginConfig {
    TargetLoginConfig {
        operational: OperationalConfig {
            header_digest: vec![DigestKind::None, DigestKind::Crc32c],
            data_digest: vec![DigestKind::None],
            initial_r2t: false,
            max_recv_data_segment_length: 131_072,
            max_burst_length: 512 * 1024,
            first_burst_length: 1 << 20,
            max_outstanding_r2t: 4,
            ..OperationalConfig::default()
        },
        initial_stat_sn: 0x5000,
        command_window: 32,
        ..TargetLoginConfig::default()
    }
}

fn chap(mutual: bool) -> InitiatorAuth {
    InitiatorAuth::Chap {
        name: "alice".to_string(),
        secret: INI_SECRET.to_vec(),
        mutual: mutual.then(|| MutualChap {
            secret: TGT_SECRET.to_vec(),
            expected_name: Some("gyre-target".to_string()),
        }),
    }
}

/// Sends `pdu` through the codec and returns the header and data as the peer sees them.
fn wire(pdu: &LoginPdu) -> (BhsBody, Vec<u8>) {
    let mut bytes = Vec::new();
    encode_pdu(&pdu.bhs, &[], &pdu.data, Digests::default(), &mut bytes).unwrap();
    let Parsed::Complete(p, used) = parse_pdu(&bytes, Digests::default(), 8192).unwrap() else {
        panic!("incomplete")
    };
    assert_eq!(used, bytes.len());
    (p.bhs.body, p.data.to_vec())
}

#[derive(Debug)]
struct Outcome {
    target: Option<TargetLoginStep>,
    initiator: Option<InitiatorLoginStep>,
    requests: Vec<(LoginRequest, TextList)>,
    responses: Vec<(LoginResponse, TextList)>,
}

fn converse(hooks: &mut Hooks, mut ini: InitiatorLogin, mut tgt: TargetLogin) -> Outcome {
    let mut out = Outcome {
        target: None,
        initiator: None,
        requests: Vec::new(),
        responses: Vec::new(),
    };
    let mut next = ini.start();
    for _ in 0..16 {
        let (BhsBody::LoginRequest(req), data) = wire(&next) else {
            panic!("not a login request")
        };
        out.requests
            .push((req, TextList::parse(&data, &TextLimits::default()).unwrap()));
        let step = tgt.on_request(&req, &data, hooks);
        let (pdu, last) = match &step {
            TargetLoginStep::Continue(p) => (p.clone(), false),
            TargetLoginStep::FullFeature(p, _) | TargetLoginStep::Failed(p, _, _) => {
                (p.clone(), true)
            }
        };
        if last {
            out.target = Some(step);
        }
        let (BhsBody::LoginResponse(resp), data) = wire(&pdu) else {
            panic!("not a login response")
        };
        out.responses.push((
            resp,
            TextList::parse(&data, &TextLimits::default()).unwrap(),
        ));
        match ini.on_response(&resp, &data) {
            InitiatorLoginStep::Send(p) => next = p,
            other => {
                out.initiator = Some(other);
                return out;
            }
        }
    }
    panic!("login did not finish: {out:?}")
}

fn complete(o: &Outcome) -> (&TargetLoginResult, &InitiatorLoginResult) {
    let Some(TargetLoginStep::FullFeature(_, t)) = &o.target else {
        panic!("target: {:?}", o.target)
    };
    let Some(InitiatorLoginStep::Complete(i)) = &o.initiator else {
        panic!("initiator: {:?}", o.initiator)
    };
    (t, i)
}

fn failed_with(o: &Outcome, status: LoginStatus) {
    let Some(TargetLoginStep::Failed(_, s, _)) = &o.target else {
        panic!("target: {:?}", o.target)
    };
    assert_eq!(*s, status);
    assert_eq!(
        o.initiator,
        Some(InitiatorLoginStep::Failed(InitiatorLoginError::Status(
            status
        )))
    );
    let last = &o.responses.last().unwrap().0;
    assert_eq!(last.status, status);
    assert!(!last.transit);
}

#[test]
fn no_authentication_normal_session() {
    let mut hooks = Hooks::default();
    let o = converse(
        &mut hooks,
        InitiatorLogin::new(initiator_config(InitiatorAuth::None, Some(IQN_T))),
        TargetLogin::new(target_config()),
    );
    let (t, i) = complete(&o);
    assert_eq!(t.params, i.params);
    let p = &t.params;
    assert_eq!(p.session_type, SessionType::Normal);
    // The responder takes the first value of the offerer's list that it accepts.
    assert!(
        p.header_digest,
        "initiator offered CRC32C,None; target accepts both"
    );
    assert!(!p.data_digest);
    assert_eq!(p.target_portal_group_tag, Some(7));
    assert_eq!(p.target_alias.as_deref(), Some("disk one"));
    assert_eq!(p.initiator_alias.as_deref(), Some("host1"));
    assert_eq!(p.max_burst_length, 512 * 1024);
    assert_eq!(p.first_burst_length, 1 << 18);
    assert_eq!(p.max_outstanding_r2t, 4);
    assert!(!p.initial_r2t && p.immediate_data);
    assert_eq!(p.initiator_max_recv_data_segment_length, 262_144);
    assert_eq!(p.target_max_recv_data_segment_length, 131_072);
    assert_eq!((t.tsih, i.tsih), (0x0101, 0x0101));
    assert_eq!(hooks.bound.len(), 1);
    // Sequence numbers: CmdSN is not advanced by login; StatSN counts every response.
    assert_eq!((t.exp_cmd_sn, i.cmd_sn), (100, 100));
    assert_eq!(o.responses.len(), 2);
    assert_eq!(o.responses[0].0.stat_sn, 0x5000);
    assert_eq!(o.responses[1].0.stat_sn, 0x5001);
    assert_eq!((i.exp_stat_sn, t.next_stat_sn), (0x5002, 0x5002));
    assert_eq!(i.max_cmd_sn, 100 + 31);
    // Stage moves: Security(T, NSG=Op) then Op(T, NSG=FFP).
    let (r0, k0) = &o.requests[0];
    assert!(r0.transit && r0.csg == LoginStage::SecurityNegotiation);
    assert_eq!(r0.nsg, LoginStage::LoginOperationalNegotiation);
    assert_eq!(k0.get("AuthMethod"), Some("None"));
    assert_eq!(k0.get("TargetName"), Some(IQN_T));
    // TargetPortalGroupTag comes in the first response.
    assert_eq!(o.responses[0].1.get("TargetPortalGroupTag"), Some("7"));
    let (r1, _) = &o.responses[1];
    assert!(r1.transit && r1.nsg == LoginStage::FullFeaturePhase && r1.tsih == 0x0101);
}

#[test]
fn first_request_bytes() {
    let mut ini = InitiatorLogin::new(initiator_config(chap(false), Some(IQN_T)));
    let pdu = ini.start();
    let b = pdu.bhs.to_bytes();
    assert_eq!(b[0], 0x43, "I bit + Login Request");
    assert_eq!(b[1], 0x00, "T=0 C=0 CSG=0, NSG reserved");
    assert_eq!(&b[2..4], &[0, 0], "Version-max/min");
    assert_eq!(&b[5..8], &(pdu.data.len() as u32).to_be_bytes()[1..]);
    assert_eq!(&b[8..14], &isid().0);
    assert_eq!(&b[14..16], &[0, 0], "TSIH 0");
    assert_eq!(&b[16..20], &0x1000u32.to_be_bytes());
    assert_eq!(&b[24..28], &100u32.to_be_bytes());
    let text = String::from_utf8(pdu.data).unwrap();
    assert_eq!(
        text,
        format!(
            "InitiatorName={IQN_I}\0InitiatorAlias=host1\0SessionType=Normal\0TargetName={IQN_T}\0AuthMethod=CHAP\0"
        )
    );
}

#[test]
fn chap_one_way() {
    let mut hooks = Hooks {
        auth: AuthPolicy::Chap {
            mutual_required: false,
        },
        ..Hooks::default()
    };
    let o = converse(
        &mut hooks,
        InitiatorLogin::new(initiator_config(chap(false), Some(IQN_T))),
        TargetLogin::new(target_config()),
    );
    complete(&o);
    // AuthMethod → CHAP_A → CHAP_N/R → operational.
    assert_eq!(o.responses[0].1.get("AuthMethod"), Some("CHAP"));
    assert_eq!(o.requests[1].1.get("CHAP_A"), Some("5"));
    let challenge = &o.responses[1].1;
    assert_eq!(challenge.get("CHAP_A"), Some("5"));
    assert!(challenge.get("CHAP_C").unwrap().starts_with("0x"));
    assert_eq!(challenge.get("CHAP_C").unwrap().len(), 2 + 32);
    let reply = &o.requests[2];
    assert_eq!(reply.1.get("CHAP_N"), Some("alice"));
    assert!(reply.0.transit);
    assert!(reply.1.get("CHAP_C").is_none());
    assert!(o.responses[2].1.get("CHAP_R").is_none());
}

#[test]
fn chap_mutual() {
    let mut hooks = Hooks {
        auth: AuthPolicy::Chap {
            mutual_required: true,
        },
        ..Hooks::default()
    };
    let o = converse(
        &mut hooks,
        InitiatorLogin::new(initiator_config(chap(true), Some(IQN_T))),
        TargetLogin::new(target_config()),
    );
    complete(&o);
    assert!(o.requests[2].1.get("CHAP_C").is_some());
    assert_eq!(o.responses[2].1.get("CHAP_N"), Some("gyre-target"));
    assert!(o.responses[2].1.get("CHAP_R").is_some());
}

#[test]
fn chap_wrong_secret_fails_with_authentication_failure() {
    let mut hooks = Hooks {
        auth: AuthPolicy::Chap {
            mutual_required: false,
        },
        ..Hooks::default()
    };
    let mut cfg = initiator_config(chap(false), Some(IQN_T));
    cfg.auth = InitiatorAuth::Chap {
        name: "alice".into(),
        secret: b"not-the-secret!".to_vec(),
        mutual: None,
    };
    let o = converse(
        &mut hooks,
        InitiatorLogin::new(cfg),
        TargetLogin::new(target_config()),
    );
    failed_with(&o, LoginStatus::AUTHENTICATION_FAILURE);
    assert!(hooks.bound.is_empty());
    // Unknown CHAP name: the same.
    let mut cfg = initiator_config(chap(false), Some(IQN_T));
    cfg.auth = InitiatorAuth::Chap {
        name: "mallory".into(),
        secret: INI_SECRET.to_vec(),
        mutual: None,
    };
    let o = converse(
        &mut hooks,
        InitiatorLogin::new(cfg),
        TargetLogin::new(target_config()),
    );
    failed_with(&o, LoginStatus::AUTHENTICATION_FAILURE);
}

#[test]
fn mutual_chap_with_wrong_target_secret_is_refused_by_initiator() {
    let mut hooks = Hooks {
        auth: AuthPolicy::Chap {
            mutual_required: false,
        },
        target_creds: Some(("gyre-target".into(), b"some-other-secret".to_vec())),
        ..Hooks::default()
    };
    let o = converse(
        &mut hooks,
        InitiatorLogin::new(initiator_config(chap(true), Some(IQN_T))),
        TargetLogin::new(target_config()),
    );
    assert_eq!(
        o.initiator,
        Some(InitiatorLoginStep::Failed(InitiatorLoginError::Chap(
            ChapError::ResponseMismatch
        )))
    );
}

#[test]
fn mutual_required_but_not_requested() {
    let mut hooks = Hooks {
        auth: AuthPolicy::Chap {
            mutual_required: true,
        },
        ..Hooks::default()
    };
    let o = converse(
        &mut hooks,
        InitiatorLogin::new(initiator_config(chap(false), Some(IQN_T))),
        TargetLogin::new(target_config()),
    );
    failed_with(&o, LoginStatus::AUTHENTICATION_FAILURE);
}

#[test]
fn chap_required_but_initiator_offers_none() {
    let mut hooks = Hooks {
        auth: AuthPolicy::Chap {
            mutual_required: false,
        },
        ..Hooks::default()
    };
    let o = converse(
        &mut hooks,
        InitiatorLogin::new(initiator_config(InitiatorAuth::None, Some(IQN_T))),
        TargetLogin::new(target_config()),
    );
    failed_with(&o, LoginStatus::AUTHENTICATION_FAILURE);
}

fn login_req(csg: LoginStage, transit: bool, nsg: LoginStage) -> LoginRequest {
    LoginRequest {
        transit,
        continue_: false,
        csg,
        nsg,
        version_max: 0,
        version_min: 0,
        isid: isid(),
        tsih: 0,
        itt: 1,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
    }
}

fn keys(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut l = TextList::new();
    for (k, v) in pairs {
        l.push(*k, *v);
    }
    l.encode()
}

fn response_keys(step: &TargetLoginStep) -> TextList {
    let pdu = match step {
        TargetLoginStep::Continue(p)
        | TargetLoginStep::FullFeature(p, _)
        | TargetLoginStep::Failed(p, _, _) => p,
    };
    TextList::parse(&pdu.data, &TextLimits::default()).unwrap()
}

#[test]
fn reflected_challenge_is_refused() {
    let mut hooks = Hooks {
        auth: AuthPolicy::Chap {
            mutual_required: false,
        },
        ..Hooks::default()
    };
    let mut t = TargetLogin::new(target_config());
    let sec = LoginStage::SecurityNegotiation;
    let op = LoginStage::LoginOperationalNegotiation;
    let s = t.on_request(
        &login_req(sec, false, sec),
        &keys(&[
            ("InitiatorName", IQN_I),
            ("TargetName", IQN_T),
            ("AuthMethod", "CHAP"),
        ]),
        &mut hooks,
    );
    assert!(matches!(s, TargetLoginStep::Continue(_)));
    let s = t.on_request(
        &login_req(sec, false, sec),
        &keys(&[("CHAP_A", "5")]),
        &mut hooks,
    );
    let k = response_keys(&s);
    let id: u8 = k.get("CHAP_I").unwrap().parse().unwrap();
    let c = k.get("CHAP_C").unwrap().to_string();
    let challenge = crate::text::parse_binary(&c).unwrap();
    let r = hex_value(&chap::chap_response(id, INI_SECRET, &challenge));
    // A correct response, but our own challenge sent back for the mutual step.
    let s = t.on_request(
        &login_req(sec, true, op),
        &keys(&[
            ("CHAP_N", "alice"),
            ("CHAP_R", &r),
            ("CHAP_I", "1"),
            ("CHAP_C", &c),
        ]),
        &mut hooks,
    );
    let TargetLoginStep::Failed(_, status, why) = s else {
        panic!("{s:?}")
    };
    assert_eq!(status, LoginStatus::AUTHENTICATION_FAILURE);
    assert_eq!(why, LoginFailure::Chap(ChapError::ReflectedChallenge));
}

#[test]
fn discovery_session() {
    let mut hooks = Hooks::default();
    let o = converse(
        &mut hooks,
        InitiatorLogin::new(initiator_config(InitiatorAuth::None, None)),
        TargetLogin::new(target_config()),
    );
    let (t, i) = complete(&o);
    assert_eq!(t.params.session_type, SessionType::Discovery);
    assert_eq!(i.params, t.params);
    assert_eq!(hooks.bound[0].2, SessionType::Discovery);
    assert!(o.responses[0].1.get("TargetPortalGroupTag").is_none());
    let (_, k0) = &o.requests[0];
    assert_eq!(k0.get("SessionType"), Some("Discovery"));
    assert!(k0.get("TargetName").is_none());
    // Normal-session keys are not even offered in discovery.
    assert!(o.requests[1].1.get("ImmediateData").is_none());

    // Discovery with CHAP.
    let mut hooks = Hooks {
        discovery: Ok(AuthPolicy::Chap {
            mutual_required: false,
        }),
        ..Hooks::default()
    };
    let o = converse(
        &mut hooks,
        InitiatorLogin::new(initiator_config(chap(true), None)),
        TargetLogin::new(target_config()),
    );
    complete(&o);
    // Discovery refused to this initiator.
    let mut hooks = Hooks {
        discovery: Err(LoginStatus::AUTHORIZATION_FAILURE),
        ..Hooks::default()
    };
    let o = converse(
        &mut hooks,
        InitiatorLogin::new(initiator_config(InitiatorAuth::None, None)),
        TargetLogin::new(target_config()),
    );
    failed_with(&o, LoginStatus::AUTHORIZATION_FAILURE);
}

#[test]
fn lookup_failures_and_redirection() {
    let cases = [
        (TargetLookup::NotFound, LoginStatus::NOT_FOUND),
        (TargetLookup::Removed, LoginStatus::TARGET_REMOVED),
        (
            TargetLookup::NotAuthorized,
            LoginStatus::AUTHORIZATION_FAILURE,
        ),
    ];
    for (lookup, status) in cases {
        let mut hooks = Hooks {
            lookup_override: Some(lookup),
            ..Hooks::default()
        };
        let o = converse(
            &mut hooks,
            InitiatorLogin::new(initiator_config(InitiatorAuth::None, Some(IQN_T))),
            TargetLogin::new(target_config()),
        );
        failed_with(&o, status);
    }
    let mut hooks = Hooks {
        lookup_override: Some(TargetLookup::Redirect {
            address: "[fd00::2]:3260,2".into(),
            permanent: false,
        }),
        ..Hooks::default()
    };
    let o = converse(
        &mut hooks,
        InitiatorLogin::new(initiator_config(InitiatorAuth::None, Some(IQN_T))),
        TargetLogin::new(target_config()),
    );
    assert_eq!(
        o.responses[0].0.status,
        LoginStatus::TARGET_MOVED_TEMPORARILY
    );
    assert_eq!(
        o.initiator,
        Some(InitiatorLoginStep::Redirect {
            address: "[fd00::2]:3260,2".into(),
            permanent: false
        })
    );
}

#[test]
fn first_request_errors() {
    let sec = LoginStage::SecurityNegotiation;
    let op = LoginStage::LoginOperationalNegotiation;
    let status_of = |req: LoginRequest, data: Vec<u8>, hooks: &mut Hooks| {
        match TargetLogin::new(target_config()).on_request(&req, &data, hooks) {
            TargetLoginStep::Failed(pdu, s, _) => {
                // Every response decodes back to itself (the fuzzer once found one
                // that did not).
                assert_eq!(Bhs::decode(&pdu.bhs.to_bytes()), Ok(pdu.bhs));
                let BhsBody::LoginResponse(r) = pdu.bhs.body else {
                    panic!()
                };
                assert_eq!(r.status, s);
                assert_eq!(r.itt, req.itt);
                s
            }
            other => panic!("{other:?}"),
        }
    };
    let mut hooks = Hooks::default();
    // Missing InitiatorName.
    assert_eq!(
        status_of(
            login_req(sec, true, op),
            keys(&[("TargetName", IQN_T)]),
            &mut hooks
        ),
        LoginStatus::MISSING_PARAMETER
    );
    // Normal session without TargetName.
    assert_eq!(
        status_of(
            login_req(sec, true, op),
            keys(&[("InitiatorName", IQN_I)]),
            &mut hooks
        ),
        LoginStatus::MISSING_PARAMETER
    );
    // Version 1 only.
    let mut v = login_req(sec, true, op);
    v.version_min = 1;
    v.version_max = 2;
    assert_eq!(
        status_of(v, keys(&[("InitiatorName", IQN_I)]), &mut hooks),
        LoginStatus::UNSUPPORTED_VERSION
    );
    // Unknown session type.
    assert_eq!(
        status_of(
            login_req(sec, true, op),
            keys(&[("InitiatorName", IQN_I), ("SessionType", "Weird")]),
            &mut hooks
        ),
        LoginStatus::SESSION_TYPE_NOT_SUPPORTED
    );
    // A connection for a session that does not exist.
    let mut r = login_req(sec, true, op);
    r.tsih = 0x4242;
    assert_eq!(
        status_of(
            r,
            keys(&[("InitiatorName", IQN_I), ("TargetName", IQN_T)]),
            &mut hooks
        ),
        LoginStatus::SESSION_DOES_NOT_EXIST
    );
    // CSG FullFeaturePhase in a Login Request.
    assert_eq!(
        status_of(
            login_req(LoginStage::FullFeaturePhase, false, sec),
            keys(&[("InitiatorName", IQN_I)]),
            &mut hooks
        ),
        LoginStatus::INITIATOR_ERROR
    );
    // T and C together.
    let mut r = login_req(sec, true, op);
    r.continue_ = true;
    assert_eq!(
        status_of(r, keys(&[("InitiatorName", IQN_I)]), &mut hooks),
        LoginStatus::INITIATOR_ERROR
    );
    // NSG not after CSG.
    assert_eq!(
        status_of(
            login_req(op, true, op),
            keys(&[("InitiatorName", IQN_I), ("TargetName", IQN_T)]),
            &mut hooks
        ),
        LoginStatus::INITIATOR_ERROR
    );
    // Malformed text.
    assert_eq!(
        status_of(
            login_req(sec, true, op),
            b"InitiatorName".to_vec(),
            &mut hooks
        ),
        LoginStatus::INITIATOR_ERROR
    );
    // Skipping security while CHAP is required.
    let mut chap_hooks = Hooks {
        auth: AuthPolicy::Chap {
            mutual_required: false,
        },
        ..Hooks::default()
    };
    assert_eq!(
        status_of(
            login_req(op, true, LoginStage::FullFeaturePhase),
            keys(&[("InitiatorName", IQN_I), ("TargetName", IQN_T)]),
            &mut chap_hooks
        ),
        LoginStatus::AUTHENTICATION_FAILURE
    );
    // A key only targets send.
    assert_eq!(
        status_of(
            login_req(sec, true, op),
            keys(&[
                ("InitiatorName", IQN_I),
                ("TargetName", IQN_T),
                ("TargetPortalGroupTag", "1")
            ]),
            &mut hooks
        ),
        LoginStatus::INITIATOR_ERROR
    );
}

#[test]
fn operational_stage_directly_and_continuation_and_duplicates() {
    let mut hooks = Hooks::default();
    let op = LoginStage::LoginOperationalNegotiation;
    let ffp = LoginStage::FullFeaturePhase;
    let mut t = TargetLogin::new(target_config());
    // The first request is split over two PDUs with the C bit.
    let text = keys(&[
        ("InitiatorName", IQN_I),
        ("TargetName", IQN_T),
        ("MaxBurstLength", "65536"),
        ("HeaderDigest", "CRC32C"),
    ]);
    let (a, b) = text.split_at(20);
    let mut r = login_req(op, false, op);
    r.continue_ = true;
    let s = t.on_request(&r, a, &mut hooks);
    let TargetLoginStep::Continue(p) = &s else {
        panic!("{s:?}")
    };
    assert!(p.data.is_empty());
    let s = t.on_request(&login_req(op, false, op), b, &mut hooks);
    let k = response_keys(&s);
    assert_eq!(k.get("MaxBurstLength"), Some("65536"));
    assert_eq!(k.get("HeaderDigest"), Some("CRC32C"));
    assert_eq!(k.get("MaxRecvDataSegmentLength"), Some("131072"));
    assert_eq!(k.get("TargetPortalGroupTag"), Some("7"));
    // Offering a key again is a protocol error.
    let mut t2 = TargetLogin::new(target_config());
    t2.on_request(&login_req(op, false, op), &text, &mut hooks);
    let s = t2.on_request(
        &login_req(op, true, ffp),
        &keys(&[("MaxBurstLength", "65536")]),
        &mut hooks,
    );
    assert!(
        matches!(
            s,
            TargetLoginStep::Failed(_, LoginStatus::INITIATOR_ERROR, _)
        ),
        "{s:?}"
    );
    // So is repeating InitiatorName.
    let mut t3 = TargetLogin::new(target_config());
    t3.on_request(&login_req(op, false, op), &text, &mut hooks);
    let s = t3.on_request(
        &login_req(op, true, ffp),
        &keys(&[("InitiatorName", IQN_I)]),
        &mut hooks,
    );
    assert!(matches!(
        s,
        TargetLoginStep::Failed(_, LoginStatus::INITIATOR_ERROR, _)
    ));
    // Security keys in the operational stage.
    let mut t4 = TargetLogin::new(target_config());
    t4.on_request(&login_req(op, false, op), &text, &mut hooks);
    let s = t4.on_request(
        &login_req(op, true, ffp),
        &keys(&[("AuthMethod", "None")]),
        &mut hooks,
    );
    assert!(matches!(
        s,
        TargetLoginStep::Failed(_, LoginStatus::INITIATOR_ERROR, _)
    ));
    // The original login completes: FirstBurstLength default 65536 fits MaxBurstLength 65536.
    let s = t.on_request(&login_req(op, true, ffp), &[], &mut hooks);
    let TargetLoginStep::FullFeature(p, res) = s else {
        panic!("{s:?}")
    };
    let BhsBody::LoginResponse(r) = p.bhs.body else {
        panic!()
    };
    assert!(r.transit && r.nsg == ffp && r.tsih != 0);
    assert!(res.params.header_digest);
    assert_eq!(res.params.max_burst_length, 65536);
}

#[test]
fn target_offers_what_the_defaults_get_wrong() {
    let mut hooks = Hooks::default();
    let op = LoginStage::LoginOperationalNegotiation;
    let ffp = LoginStage::FullFeaturePhase;
    let mut cfg = target_config();
    cfg.operational.max_burst_length = 131_072;
    cfg.operational.first_burst_length = 16_384;
    cfg.operational.immediate_data = false;
    let mut t = TargetLogin::new(cfg);
    // An initiator that offers nothing at all and asks for FFP at once.
    let s = t.on_request(
        &login_req(op, true, ffp),
        &keys(&[("InitiatorName", IQN_I), ("TargetName", IQN_T)]),
        &mut hooks,
    );
    let TargetLoginStep::Continue(p) = &s else {
        panic!("{s:?}")
    };
    let BhsBody::LoginResponse(r) = p.bhs.body else {
        panic!()
    };
    assert!(!r.transit, "target waits for answers to its offers");
    let k = response_keys(&s);
    assert_eq!(k.get("MaxBurstLength"), Some("131072"));
    assert_eq!(k.get("FirstBurstLength"), Some("16384"));
    assert_eq!(k.get("ImmediateData"), Some("No"));
    let s = t.on_request(
        &login_req(op, true, ffp),
        &keys(&[
            ("MaxBurstLength", "131072"),
            ("FirstBurstLength", "16384"),
            ("ImmediateData", "No"),
        ]),
        &mut hooks,
    );
    let TargetLoginStep::FullFeature(_, res) = s else {
        panic!("{s:?}")
    };
    assert_eq!(res.params.max_burst_length, 131_072);
    assert_eq!(res.params.first_burst_length, 16_384);
    assert!(!res.params.immediate_data);
}

#[test]
fn second_connection_joins_existing_session() {
    let mut hooks = Hooks::default();
    let o = converse(
        &mut hooks,
        InitiatorLogin::new(initiator_config(InitiatorAuth::None, Some(IQN_T))),
        TargetLogin::new(target_config()),
    );
    let (t, _) = complete(&o);
    let tsih = t.tsih;
    let mut cfg = initiator_config(InitiatorAuth::None, Some(IQN_T));
    cfg.tsih = tsih;
    cfg.cid = 1;
    let o = converse(
        &mut hooks,
        InitiatorLogin::new(cfg),
        TargetLogin::new(target_config()),
    );
    let (t2, i2) = complete(&o);
    assert_eq!((t2.tsih, i2.tsih, t2.cid), (tsih, tsih, 1));
    // Leading-only keys were not offered on the second connection.
    assert!(o.requests[1].1.get("MaxBurstLength").is_none());
}
