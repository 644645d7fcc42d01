//! Parameters and results of the `iscsi` module's methods (iSCSI target).

use serde::{Deserialize, Serialize};

/// `iscsi_create_portal_group`: the addresses a target is reachable through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePortalGroup {
    /// TargetPortalGroupTag, 1..=65535.
    pub tag: u16,
    /// `127.0.0.1:3260`, `[::1]:3260`; port 0 picks a free port (returned).
    pub portals: Vec<String>,
}

/// Methods that name only a portal or initiator group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRef {
    pub tag: u16,
}

fn any() -> Vec<String> {
    vec!["ANY".to_string()]
}

/// `iscsi_create_initiator_group`: who may log in, from where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateInitiatorGroup {
    pub tag: u16,
    /// Initiator names, or `ANY`.
    pub initiators: Vec<String>,
    /// Networks (`10.0.0.0/8`, `::1`) or `ANY` (default).
    #[serde(default = "any")]
    pub networks: Vec<String>,
}

/// CHAP settings of a target or of discovery.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chap {
    #[serde(default)]
    pub require_chap: bool,
    #[serde(default)]
    pub mutual_chap: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mutual_user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mutual_secret: String,
}

/// One LUN of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunParams {
    pub lun: u16,
    pub bdev_name: String,
}

/// Login redirection of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// `host:port[,tpgt]`.
    pub address: String,
    #[serde(default)]
    pub permanent: bool,
}

/// `iscsi_create_target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTarget {
    /// The target's iSCSI name (`iqn.…`, `eui.…`, `naa.…`).
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default)]
    pub luns: Vec<LunParams>,
    pub portal_groups: Vec<u16>,
    pub initiator_groups: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<Chap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
}

/// Methods that name only a target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRef {
    pub name: String,
}

/// `iscsi_target_add_lun`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddLun {
    pub name: String,
    pub lun: u16,
    pub bdev_name: String,
}

/// `iscsi_target_remove_lun`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveLun {
    pub name: String,
    pub lun: u16,
}

/// `iscsi_target_set_chap`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetTargetChap {
    pub name: String,
    pub chap: Chap,
}

/// A portal group as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortalGroupInfo {
    pub tag: u16,
    pub portals: Vec<String>,
}

/// An initiator group as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitiatorGroupInfo {
    pub tag: u16,
    pub initiators: Vec<String>,
    pub networks: Vec<String>,
}

/// A target as listed (secrets are not shown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub name: String,
    pub alias: Option<String>,
    pub luns: Vec<LunParams>,
    pub portal_groups: Vec<u16>,
    pub initiator_groups: Vec<u16>,
    pub require_chap: bool,
    pub mutual_chap: bool,
    pub redirect: Option<Redirect>,
}

/// `iscsi_disconnect_session`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRef {
    pub tsih: u16,
}

/// A session as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub tsih: u16,
    pub initiator_name: String,
    /// 12 hex digits.
    pub isid: String,
    pub target_name: Option<String>,
    pub discovery: bool,
    pub peer: String,
    pub portal_group_tag: u16,
    pub reactor: usize,
    pub header_digest: bool,
    pub data_digest: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_params_default_and_refuse_unknown_fields() {
        let t: CreateTarget = serde_json::from_str(
            r#"{"name":"iqn.2016-06.io.gyre:t","portal_groups":[1],"initiator_groups":[1]}"#,
        )
        .unwrap();
        assert!(t.luns.is_empty() && t.chap.is_none() && t.redirect.is_none());
        assert!(serde_json::from_str::<CreateTarget>(
            r#"{"name":"x","portal_groups":[1],"initiator_groups":[1],"lun":[]}"#
        )
        .is_err());
        let g: CreateInitiatorGroup =
            serde_json::from_str(r#"{"tag":1,"initiators":["ANY"]}"#).unwrap();
        assert_eq!(g.networks, vec!["ANY"]);
    }
}
