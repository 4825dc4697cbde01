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
    /// Create only: false makes requests to its ports carry the traffic access token.
    allow_public_traffic: Option<bool>,
    /// Create only: the Host header its servers see, `${PORT}` standing for the port.
    mask_request_host: Option<String>,
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
                "network.{k} is not supported by this Coppice daemon (only allowOut, denyOut, \
                 allowPublicTraffic, maskRequestHost and allow_internet_access are)"
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

    /// Whether requests to its ports must carry a traffic token, and the Host they carry in
    /// (create only).
    pub(super) fn ingress(&self) -> Result<(bool, Option<String>), E2bError> {
        let mask = self.mask_request_host.clone().filter(|m| !m.is_empty());
        if let Some(m) = &mask {
            let host = m.replace("${PORT}", "80");
            if axum::http::HeaderValue::from_str(&host).is_err()
                || host.contains(char::is_whitespace)
            {
                return Err(bad(format!(
                    "maskRequestHost '{m}' is not a valid Host header (e.g. \"localhost:${{PORT}}\")"
                )));
            }
        }
        Ok((self.allow_public_traffic == Some(false), mask))
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
    matches!((key, v), ("dnsServers", _))
}

pub(super) async fn update_network(
    State(s): St,
    Path(id): Path<String>,
    raw: axum::body::Bytes,
) -> Result<Response, E2bError> {
    let b: E2bNetwork = optional_body(&raw)?;
    b.check()?;
    if b.allow_public_traffic.is_some() || b.mask_request_host.is_some() {
        return Err(bad(
            "allowPublicTraffic and maskRequestHost are set when the sandbox is created",
        ));
    }
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
        assert_eq!(n.ingress().unwrap(), (false, None));
        let n: E2bNetwork = serde_json::from_str(
            r#"{"allowPublicTraffic":false,"maskRequestHost":"localhost:${PORT}"}"#,
        )
        .unwrap();
        assert_eq!(n.policy(None).unwrap(), NetworkPolicy::default());
        assert_eq!(
            n.ingress().unwrap(),
            (true, Some("localhost:${PORT}".into()))
        );
        let n: E2bNetwork = serde_json::from_str(r#"{"maskRequestHost":"a b\n"}"#).unwrap();
        assert!(n.ingress().is_err());
        let n: E2bNetwork = serde_json::from_str(r#"{}"#).unwrap();
        assert!(n.policy(Some(false)).unwrap().air_gapped);
        let n: E2bNetwork =
            serde_json::from_str(r#"{"denyOut":["0.0.0.0/0"],"allowOut":["1.1.1.1"]}"#).unwrap();
        let p = n.policy(None).unwrap();
        assert_eq!(p.allow.len(), 1);
        assert_eq!(p.deny.len(), 1);
    }
}
