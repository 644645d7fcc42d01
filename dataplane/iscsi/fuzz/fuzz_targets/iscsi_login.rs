//! Arbitrary Login Requests into the target's login state machine, under each
//! authentication policy, with a correct or a wrong CHAP secret. Every request must yield a
//! Login Response that encodes, and a failed or finished login must stay finished.
#![no_main]

use gyre_iscsi::bhs::{Bhs, BhsBody, Isid, LoginRequest, LoginStage, LoginStatus};
use gyre_iscsi::framing::{parse_pdu, Digests, Parsed};
use gyre_iscsi::login::{
    AuthPolicy, ChapCredentials, LoginHooks, SessionBinding, TargetInfo, TargetLogin,
    TargetLoginConfig, TargetLoginStep, TargetLookup,
};
use libfuzzer_sys::fuzz_target;

struct Hooks {
    policy: AuthPolicy,
    next_tsih: u16,
}

impl ChapCredentials for Hooks {
    fn initiator_secret(&self, _t: Option<&str>, name: &str) -> Option<Vec<u8>> {
        (name == "alice").then(|| b"initiator-secret".to_vec())
    }
    fn target_credentials(&self, _t: Option<&str>) -> Option<(String, Vec<u8>)> {
        Some(("target".into(), b"target-secret-123".to_vec()))
    }
}

impl LoginHooks for Hooks {
    fn resolve_target(&mut self, _i: &str, t: &str) -> TargetLookup {
        match t {
            "iqn.2024-01.io.gyre:a" => TargetLookup::Found(TargetInfo {
                portal_group_tag: 1,
                alias: None,
                auth: self.policy,
            }),
            "iqn.2024-01.io.gyre:moved" => TargetLookup::Redirect {
                address: "10.0.0.2:3260,1".into(),
                permanent: false,
            },
            _ => TargetLookup::NotFound,
        }
    }
    fn discovery_auth(&mut self, _i: &str) -> Result<AuthPolicy, LoginStatus> {
        Ok(self.policy)
    }
    fn session_exists(&mut self, _i: &str, _isid: Isid, tsih: u16) -> bool {
        tsih == 1
    }
    fn bind_session(&mut self, _b: &SessionBinding<'_>) -> Result<u16, LoginStatus> {
        self.next_tsih = self.next_tsih.wrapping_add(1).max(1);
        Ok(self.next_tsih)
    }
}

// Input format: one policy byte, then records of either a raw PDU (flag bit 7 set: the
// rest of the record is parsed as wire bytes) or a structured request: flags (T, C, CSG,
// NSG), a TSIH selector, a 2-byte length and that many bytes of text.
fuzz_target!(|data: &[u8]| {
    let Some((&policy, mut rest)) = data.split_first() else {
        return;
    };
    let policy = match policy % 3 {
        0 => AuthPolicy::None,
        1 => AuthPolicy::Chap {
            mutual_required: false,
        },
        _ => AuthPolicy::Chap {
            mutual_required: true,
        },
    };
    let mut hooks = Hooks {
        policy,
        next_tsih: 0,
    };
    let mut login = TargetLogin::new(TargetLoginConfig::default());
    let mut finished = false;
    for _ in 0..32 {
        let Some((&flags, tail)) = rest.split_first() else {
            return;
        };
        let (req, text): (LoginRequest, Vec<u8>) = if flags & 0x80 != 0 {
            match parse_pdu(tail, Digests::default(), 1 << 16) {
                Ok(Parsed::Complete(pdu, used)) => {
                    rest = &tail[used..];
                    match pdu.bhs.body {
                        BhsBody::LoginRequest(r) => (r, pdu.data.to_vec()),
                        _ => continue,
                    }
                }
                _ => return,
            }
        } else {
            if tail.len() < 3 {
                return;
            }
            let tsih = match tail[0] & 3 {
                0 | 1 => 0,
                2 => 1,
                _ => 7,
            };
            let len = usize::from(u16::from_be_bytes([tail[1], tail[2]])).min(tail.len() - 3);
            let text = tail[3..3 + len].to_vec();
            rest = &tail[3 + len..];
            let stage = |v: u8| match v & 3 {
                0 => LoginStage::SecurityNegotiation,
                1 => LoginStage::LoginOperationalNegotiation,
                _ => LoginStage::FullFeaturePhase,
            };
            (
                LoginRequest {
                    transit: flags & 0x40 != 0,
                    continue_: flags & 0x20 != 0,
                    csg: stage(flags >> 2),
                    nsg: stage(flags),
                    version_max: 0,
                    version_min: u8::from(flags & 0x10 != 0 && tail[0] & 0x80 != 0),
                    isid: Isid([0x80, 0, 0, 0, 0, 1]),
                    tsih,
                    itt: 1,
                    cid: 0,
                    cmd_sn: 1,
                    exp_stat_sn: 0,
                },
                text,
            )
        };
        let step = login.on_request(&req, &text, &mut hooks);
        let pdu = match &step {
            TargetLoginStep::Continue(p) => {
                assert!(!finished, "continued after the login ended");
                p
            }
            TargetLoginStep::FullFeature(p, r) => {
                assert!(!finished, "second completion");
                assert!(r.tsih != 0);
                finished = true;
                p
            }
            TargetLoginStep::Failed(p, status, _) => {
                assert!(!status.is_success());
                finished = true;
                p
            }
        };
        let BhsBody::LoginResponse(resp) = pdu.bhs.body else {
            panic!("not a login response");
        };
        assert_eq!(pdu.bhs.data_segment_len as usize, pdu.data.len());
        let again = Bhs::decode(&pdu.bhs.to_bytes()).expect("response decodes");
        assert_eq!(again.body, BhsBody::LoginResponse(resp));
    }
});
