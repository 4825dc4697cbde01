//! RFC 3339 timestamps, written and read one way on every side (the agent's file entries, the
//! daemon's sandbox and event times, E2B's list filters), through chrono.

use chrono::{DateTime, SecondsFormat, Utc};

/// UTC with 0, 3, 6 or 9 fractional digits, as protobuf-JSON timestamps are written
/// (`1970-01-01T00:00:00Z`, `2026-01-01T00:00:00.500Z`); None outside years 1–9999.
pub fn rfc3339(secs: i64, nanos: u32) -> Option<String> {
    let t = DateTime::<Utc>::from_timestamp(secs, nanos)?;
    let year = chrono::Datelike::year(&t);
    (1..=9999)
        .contains(&year)
        .then(|| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// Unix milliseconds as UTC with exactly three fractional digits (`2026-11-23T14:31:28.123Z`);
/// times before 1970 are written as the epoch.
pub fn rfc3339_ms(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms.max(0))
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// RFC 3339 with any UTC offset (`Z`, `+00:00`, `-01:00`; the Python SDK sends offsets, JS
/// `Z`) to unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_protobuf_style() {
        assert_eq!(rfc3339(0, 0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_767_225_600, 500_000_000).unwrap(),
            "2026-01-01T00:00:00.500Z"
        );
        assert_eq!(
            rfc3339(951_782_400 + 86_399, 1).unwrap(),
            "2000-02-29T23:59:59.000000001Z"
        );
        assert_eq!(rfc3339(-86_400, 0).unwrap(), "1969-12-31T00:00:00Z");
        assert_eq!(rfc3339(300_000_000_000, 0), None);
    }

    #[test]
    fn milliseconds() {
        assert_eq!(rfc3339_ms(1_767_225_600_123), "2026-01-01T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_767_225_600_000), "2026-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(-5), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn reads_any_offset() {
        let z = parse_rfc3339_ms("2026-11-23T17:40:12.446Z").unwrap();
        assert_eq!(rfc3339_ms(z), "2026-11-23T17:40:12.446Z");
        assert_eq!(parse_rfc3339_ms("2026-11-23T17:40:12.446+00:00"), Some(z));
        assert_eq!(parse_rfc3339_ms("2026-11-23T19:40:12.446+02:00"), Some(z));
        assert_eq!(parse_rfc3339_ms("2026-11-23T16:40:12.446-01:00"), Some(z));
        assert_eq!(
            parse_rfc3339_ms("2026-11-23T17:40:12.446123+00:00"),
            Some(z)
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }
}
