//! Tool schemas with only the `format`s JSON Schema defines. schemars marks integers and
//! floats with OpenAPI-style formats (`uint64`, `int32`, `double`, ...); validators such as
//! Ajv (Claude Code's) warn about each unknown one, once per tool per start. The types and
//! `minimum`s that schemars also writes keep the information that matters.

use serde_json::{Map, Value};

/// The formats of JSON Schema 2020-12 (§7.3).
const STANDARD: &[&str] = &[
    "date-time",
    "date",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uuid",
    "uri-template",
    "json-pointer",
    "relative-json-pointer",
    "regex",
];

/// Removes every non-standard `format` keyword from `schema`, at any depth.
pub fn keep_standard(schema: &mut Map<String, Value>) {
    if schema
        .get("format")
        .and_then(Value::as_str)
        .is_some_and(|f| !STANDARD.contains(&f))
    {
        schema.remove("format");
    }
    for (key, value) in schema.iter_mut() {
        // Under `properties` (and `$defs`) the keys are names, and a property may be called
        // "format": only the values are schemas.
        match value {
            Value::Object(inner)
                if matches!(
                    key.as_str(),
                    "properties" | "$defs" | "definitions" | "patternProperties"
                ) =>
            {
                for v in inner.values_mut() {
                    walk(v);
                }
            }
            other => walk(other),
        }
    }
}

fn walk(v: &mut Value) {
    match v {
        Value::Object(o) => keep_standard(o),
        Value::Array(items) => items.iter_mut().for_each(walk),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_standard_formats_stay() {
        let mut s = json!({
            "type": "object",
            "properties": {
                "pids": {"type": ["integer", "null"], "format": "uint64", "minimum": 0},
                "at": {"type": "string", "format": "date-time"},
                "format": {"type": "string"},
                "many": {"type": "array", "items": {"type": "number", "format": "double"}},
                "either": {"anyOf": [{"type": "integer", "format": "int32"}, {"type": "null"}]}
            },
            "$defs": {"Port": {"type": "integer", "format": "uint16"}}
        });
        keep_standard(s.as_object_mut().unwrap());
        let text = s.to_string();
        for gone in ["uint64", "double", "int32", "uint16"] {
            assert!(!text.contains(gone), "{gone} left in {text}");
        }
        assert_eq!(s["properties"]["at"]["format"], "date-time");
        assert_eq!(
            s["properties"]["format"],
            json!({"type": "string"}),
            "a property named format"
        );
        assert_eq!(s["properties"]["pids"]["minimum"], 0);
    }
}
