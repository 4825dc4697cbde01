//! E2B network settings (`allow_internet_access`, `network.allowOut`/`denyOut`, `PUT
//! /sandboxes/{id}/network`) mapped onto Coppice's policy; what it cannot honour is refused.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use coppice_runtime::policy::NetworkPolicy;
use coppice_tools::network::e2b_network_policy;
use serde::Deserialize;
use serde_json::Value;

use super::E2bState;
use super::error::{E2bError, bad};
use super::wire::{is_empty_json, optional_body};

type St = State<Arc<E2bState>>;

/// E2B's network object at create time (`SandboxNetworkConfig`) and in `PUT .../network`
/// (`SandboxNetworkUpdateConfig`). IP/CIDR egress rules and allowOut domain names are honoured; every other
/// field is refused when set rather than ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct E2bNetwork {
    #[serde(default)]
    allow_out: Vec<String>,
    #[serde(default)]
    deny_out: Vec<String>,
    /// Update body only (at create it is a top-level field).
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// A domain rather than an IP address or CIDR block: the policy's one test, which also takes
/// `*` patterns and internationalized names (so they get the domain checker's precise error,
/// not "not a CIDR").
use coppice_runtime::policy::looks_like_domain as is_domain;

impl E2bNetwork {
    /// Refuses what this server cannot honour: domain names in denyOut, proxies, transform rules, ...
    fn check(&self) -> Result<(), E2bError> {
        if let Some((k, _)) = self
            .other
            .iter()
            .find(|(k, v)| !is_empty_json(v) && !is_default(k, v))
        {
            return Err(bad(format!(
                "network.{k} is not supported by this Coppice daemon (only allowOut, denyOut \
                 and allow_internet_access are)"
            )));
        }
        // Domain names in allowOut become the policy's `domains`; E2B takes them nowhere else.
        if let Some(d) = self.deny_out.iter().find(|e| is_domain(e)) {
            return Err(bad(format!(
                "denyOut: '{d}' is a domain name; denyOut takes IP addresses and CIDR blocks \
                 (name the allowed domains in allowOut with denyOut [\"0.0.0.0/0\"] instead)"
            )));
        }
        Ok(())
    }

    /// The policy these fields mean (at create, `allow_internet_access` is the top-level
    /// field).
    pub(super) fn policy(
        &self,
        allow_internet_access: Option<bool>,
    ) -> Result<NetworkPolicy, E2bError> {
        self.check()?;
        Ok(e2b_network_policy(
            self.allow_internet_access.or(allow_internet_access),
            &self.allow_out,
            &self.deny_out,
        )?)
    }
}

/// Fields harmless to accept: E2B's defaults, and `dnsServers` (sandboxes always resolve
/// through Coppice's own resolver, which enforces domain rules).
fn is_default(key: &str, v: &Value) -> bool {
    matches!(
        (key, v),
        ("allowPublicTraffic", Value::Bool(true)) | ("dnsServers", _)
    )
}

pub(super) async fn update_network(
    State(s): St,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Response, E2bError> {
    let b: E2bNetwork = optional_body(&raw)?;
    b.check()?;
    s.tools
        .set_network_e2b(&id, b.allow_internet_access, &b.allow_out, &b.deny_out)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_told_apart_from_addresses() {
        assert!(is_domain("example.com"));
        assert!(is_domain("*.example.com"));
        assert!(!is_domain("8.8.8.8"));
        assert!(!is_domain("10.0.0.0/8"));
        assert!(!is_domain("fe80::1"));
        assert!(!is_domain("2001:db8::/32"));
    }

    #[test]
    fn network_fields_map_or_are_refused() {
        let n: E2bNetwork = serde_json::from_str(r#"{"denyOut":["example.com"]}"#).unwrap();
        assert!(n.policy(None).is_err());
        let n: E2bNetwork = serde_json::from_str(
            r#"{"allowOut":["example.com","*.pypi.org"],"denyOut":["0.0.0.0/0"]}"#,
        )
        .unwrap();
        assert_eq!(
            n.policy(None).unwrap().domains,
            vec!["example.com", "*.pypi.org"]
        );
        let n: E2bNetwork = serde_json::from_str(r#"{"egressProxy":{"address":"x"}}"#).unwrap();
        assert!(n.policy(None).is_err());
        let n: E2bNetwork = serde_json::from_str(r#"{"allowPublicTraffic":true}"#).unwrap();
        assert_eq!(n.policy(None).unwrap(), NetworkPolicy::default());
        let n: E2bNetwork = serde_json::from_str(r#"{}"#).unwrap();
        assert!(n.policy(Some(false)).unwrap().air_gapped);
        let n: E2bNetwork =
            serde_json::from_str(r#"{"denyOut":["0.0.0.0/0"],"allowOut":["1.1.1.1"]}"#).unwrap();
        let p = n.policy(None).unwrap();
        assert_eq!(p.allow.len(), 1);
        assert_eq!(p.deny.len(), 1);
    }
}
