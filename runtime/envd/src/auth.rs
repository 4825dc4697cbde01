//! Comparing secrets (bearer tokens, API keys, access tokens, URL signatures) in time that does
//! not depend on where they differ, and envd's URL signature. Written here once because every side needs it: the agent
//! checks access tokens and signatures, the daemon its bearer token and E2B API keys; the
//! comparison is one fold, not worth a dependency.

/// True when `a == b`; the time taken depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// envd's v1 URL signature (the SDKs' `download_url`/`upload_url`): `v1_` + unpadded base64 of
/// `sha256("{path}:{operation}:{username}:{token}[:{expiration}]")`. The agent checks it; the
/// daemon uses it to tell which sandbox a signed URL on its own address belongs to.
pub fn url_signature(path: &str, op: &str, user: &str, token: &str, exp: Option<u64>) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let raw = match exp {
        Some(e) => format!("{path}:{op}:{user}:{token}:{e}"),
        None => format!("{path}:{op}:{user}:{token}"),
    };
    let digest = Sha256::digest(raw.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
