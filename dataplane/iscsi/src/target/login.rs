//! The target's answers to the login state machine ([`crate::login::LoginHooks`]): which
//! targets exist and who may see them, CHAP secrets, and the session table (TSIH allocation,
//! reinstatement of a session with the same initiator, ISID and target).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::bhs::{Isid, LoginStatus};
use crate::login::{
    AuthPolicy, ChapCredentials, LoginHooks, SessionBinding, TargetInfo, TargetLookup,
};
use crate::negotiate::SessionType;

use super::config::AuthConfig;
use super::{is_discovery, lock, SessionEntry, SessionInfo, Shared, Target};

/// A session bound by a successful login.
pub(crate) struct BoundSession {
    pub tsih: u16,
    pub target: Option<Arc<Target>>,
    pub kill: Arc<AtomicBool>,
}

/// One connection's view of the target during login.
pub(crate) struct LoginContext<'a> {
    pub shared: &'a Shared,
    pub portal_group_tag: u16,
    pub peer: SocketAddr,
    pub reactor: usize,
    pub bound: Option<BoundSession>,
}

fn policy(a: &AuthConfig) -> AuthPolicy {
    if a.require_chap {
        AuthPolicy::Chap {
            mutual_required: a.mutual_chap,
        }
    } else {
        AuthPolicy::None
    }
}

impl LoginContext<'_> {
    fn auth_of(&self, target: Option<&str>) -> Option<AuthConfig> {
        match target {
            None => Some(lock(&self.shared.discovery_auth).clone()),
            Some(name) => self.shared.target(name).map(|t| lock(&t.cfg).auth.clone()),
        }
    }
}

impl ChapCredentials for LoginContext<'_> {
    fn initiator_secret(&self, target: Option<&str>, chap_name: &str) -> Option<Vec<u8>> {
        let a = self.auth_of(target)?;
        (!a.user.is_empty() && a.user == chap_name).then(|| a.secret.into_bytes())
    }

    fn target_credentials(&self, target: Option<&str>) -> Option<(String, Vec<u8>)> {
        let a = self.auth_of(target)?;
        (!a.mutual_user.is_empty() && !a.mutual_secret.is_empty())
            .then(|| (a.mutual_user, a.mutual_secret.into_bytes()))
    }
}

impl LoginHooks for LoginContext<'_> {
    fn resolve_target(&mut self, initiator_name: &str, target_name: &str) -> TargetLookup {
        let Some(t) = self.shared.target(target_name) else {
            return TargetLookup::NotFound;
        };
        if t.removed.load(Ordering::Acquire) {
            return TargetLookup::Removed;
        }
        let cfg = lock(&t.cfg).clone();
        if let Some(r) = &cfg.redirect {
            return TargetLookup::Redirect {
                address: r.address.clone(),
                permanent: r.permanent,
            };
        }
        if !cfg.portal_groups.contains(&self.portal_group_tag) {
            return TargetLookup::NotFound;
        }
        if !self
            .shared
            .initiator_allowed(&cfg, initiator_name, self.peer.ip())
        {
            return TargetLookup::NotAuthorized;
        }
        TargetLookup::Found(TargetInfo {
            portal_group_tag: self.portal_group_tag,
            alias: cfg.alias.clone(),
            auth: policy(&cfg.auth),
        })
    }

    fn discovery_auth(&mut self, _initiator_name: &str) -> Result<AuthPolicy, LoginStatus> {
        Ok(policy(&lock(&self.shared.discovery_auth)))
    }

    fn session_exists(&mut self, initiator_name: &str, isid: Isid, tsih: u16) -> bool {
        lock(&self.shared.sessions)
            .by_tsih
            .get(&tsih)
            .is_some_and(|s| {
                s.info.isid == isid.0 && s.info.initiator_name.eq_ignore_ascii_case(initiator_name)
            })
    }

    fn bind_session(&mut self, b: &SessionBinding<'_>) -> Result<u16, LoginStatus> {
        if b.tsih != 0 {
            // One connection per session (MaxConnections=1).
            return Err(LoginStatus::TOO_MANY_CONNECTIONS);
        }
        let target = match (b.session_type, b.target_name) {
            (SessionType::Normal, Some(name)) => Some(
                self.shared
                    .target(name)
                    .ok_or(LoginStatus::TARGET_REMOVED)?,
            ),
            (SessionType::Normal, None) => return Err(LoginStatus::MISSING_PARAMETER),
            (SessionType::Discovery, _) => None,
        };
        let mut sessions = lock(&self.shared.sessions);
        if let Some(t) = &target {
            // Reinstatement (RFC 7143 §6.3.5): the older session with the same initiator,
            // ISID and target ends.
            let old: Vec<u16> = sessions
                .by_tsih
                .iter()
                .filter(|(_, s)| {
                    s.info.isid == b.isid.0
                        && s.info.initiator_name.eq_ignore_ascii_case(b.initiator_name)
                        && s.info.target_name.as_deref() == Some(t.name.as_str())
                })
                .map(|(k, _)| *k)
                .collect();
            for k in old {
                if let Some(s) = sessions.by_tsih.remove(&k) {
                    s.kill.store(true, Ordering::Release);
                    tracing::info!(tsih = k, "iscsi: session reinstated; closing the old one");
                }
            }
        }
        let tsih = self
            .shared
            .allocate_tsih(&sessions)
            .ok_or(LoginStatus::OUT_OF_RESOURCES)?;
        let kill = Arc::new(AtomicBool::new(false));
        sessions.by_tsih.insert(
            tsih,
            SessionEntry {
                info: SessionInfo {
                    tsih,
                    initiator_name: b.initiator_name.to_string(),
                    isid: b.isid.0,
                    target_name: target.as_ref().map(|t| t.name.clone()),
                    discovery: is_discovery(b.session_type),
                    peer: self.peer,
                    portal_group_tag: self.portal_group_tag,
                    reactor: self.reactor,
                    header_digest: b.params.header_digest,
                    data_digest: b.params.data_digest,
                },
                kill: kill.clone(),
            },
        );
        self.bound = Some(BoundSession { tsih, target, kill });
        Ok(tsih)
    }
}
