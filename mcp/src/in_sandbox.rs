//! A tool layer request aimed at a sandbox: `{"sandbox_id": ..., ...the request's fields}`.
//! The request types live in `coppice_tools` with their docs and defaults; MCP adds only the
//! optional sandbox (absent: the session's default one). Written by hand rather than with
//! `#[serde(flatten)]`, which would silently accept unknown fields: here the request keeps
//! its `deny_unknown_fields`, and its schema keeps `additionalProperties: false`.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

const SANDBOX_ID_DOC: &str = "Sandbox to act on; omit to use this session's default sandbox.";

#[derive(Debug)]
pub struct InSandbox<T> {
    pub sandbox_id: Option<String>,
    pub request: T,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for InSandbox<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut fields = Map::<String, Value>::deserialize(d)?;
        let sandbox_id = match fields.remove("sandbox_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "invalid type for sandbox_id: {other}, expected a string"
                )));
            }
        };
        let request = T::deserialize(Value::Object(fields)).map_err(D::Error::custom)?;
        Ok(Self {
            sandbox_id,
            request,
        })
    }
}

impl<T: JsonSchema> JsonSchema for InSandbox<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("{}InSandbox", T::schema_name()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = T::json_schema(generator);
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert(
                "sandbox_id".into(),
                serde_json::json!({
                    "type": ["string", "null"],
                    "description": SANDBOX_ID_DOC,
                    "default": null,
                }),
            );
        }
        schema
    }
}

const TERMINAL_ID_DOC: &str = "Terminal to act on (from terminal_open or terminal_list).";

/// A request aimed at one terminal: `{"sandbox_id"?, "terminal_id", ...the request's fields}`.
#[derive(Debug)]
pub struct InTerminal<T> {
    pub sandbox_id: Option<String>,
    pub terminal_id: String,
    pub request: T,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for InTerminal<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut fields = Map::<String, Value>::deserialize(d)?;
        let terminal_id = match fields.remove("terminal_id") {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "invalid terminal_id: {other}, expected a terminal id string"
                )));
            }
            None => return Err(D::Error::custom("missing field `terminal_id`")),
        };
        let inner = InSandbox::<T>::deserialize(Value::Object(fields)).map_err(D::Error::custom)?;
        Ok(Self {
            sandbox_id: inner.sandbox_id,
            terminal_id,
            request: inner.request,
        })
    }
}

impl<T: JsonSchema> JsonSchema for InTerminal<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("{}InTerminal", T::schema_name()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = InSandbox::<T>::json_schema(generator);
        if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert(
                "terminal_id".into(),
                serde_json::json!({"type": "string", "description": TERMINAL_ID_DOC}),
            );
        }
        if let Some(obj) = schema.as_object_mut() {
            let required = obj
                .entry("required")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Some(list) = required.as_array_mut() {
                list.push(Value::String("terminal_id".into()));
            }
        }
        schema
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Req {
        cmd: String,
        #[serde(default)]
        n: Option<u32>,
    }

    #[test]
    fn takes_the_sandbox_and_refuses_unknown_fields() {
        let ok: InSandbox<Req> =
            serde_json::from_value(serde_json::json!({"sandbox_id": "s1", "cmd": "x"})).unwrap();
        assert_eq!(ok.sandbox_id.as_deref(), Some("s1"));
        assert_eq!((ok.request.cmd.as_str(), ok.request.n), ("x", None));
        let e =
            serde_json::from_value::<InSandbox<Req>>(serde_json::json!({"cmd": "x", "bogus": 1}))
                .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = serde_json::from_value::<InSandbox<Req>>(
            serde_json::json!({"sandbox_id": 3, "cmd": "x"}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("sandbox_id"), "{e}");
    }

    #[test]
    fn terminal_requests_need_a_terminal_id() {
        let ok: InTerminal<Req> =
            serde_json::from_value(serde_json::json!({"terminal_id": "t1", "cmd": "x"})).unwrap();
        assert_eq!((ok.terminal_id.as_str(), ok.sandbox_id), ("t1", None));
        let e =
            serde_json::from_value::<InTerminal<Req>>(serde_json::json!({"cmd": "x"})).unwrap_err();
        assert!(e.to_string().contains("terminal_id"), "{e}");
        let s = schemars::schema_for!(InTerminal<Req>);
        let required = s.get("required").unwrap().as_array().unwrap();
        assert!(required.contains(&Value::String("terminal_id".into())));
    }

    #[test]
    fn the_schema_is_the_requests_plus_sandbox_id() {
        let s = schemars::schema_for!(InSandbox<Req>);
        let mut props: Vec<&String> = s
            .get("properties")
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .collect();
        props.sort();
        assert_eq!(props, ["cmd", "n", "sandbox_id"]);
        assert_eq!(s.get("additionalProperties"), Some(&Value::Bool(false)));
    }
}
