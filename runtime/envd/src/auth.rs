//! Comparing secrets (bearer tokens, API keys, access tokens, URL signatures) in time that does
//! not depend on where they differ. Written here once because every side needs it: the agent
//! checks access tokens and signatures, the daemon its bearer token and E2B API keys; the
//! comparison is one fold, not worth a dependency.

/// True when `a == b`; the time taken depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
