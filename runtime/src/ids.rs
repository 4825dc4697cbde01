//! Random identifiers and secrets: sandbox and snapshot ids, access tokens, API tokens. One
//! alphabet, one generator (the thread's CSPRNG), so every surface hands out the same shapes.

use rand::Rng;

/// Lower-case letters and digits: safe in host names, URLs and paths, never a '-' (host-based
/// routing splits `{port}-{id}` on it).
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// `len` characters of [a-z0-9] from the thread's CSPRNG.
pub fn random_alnum(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A sandbox or snapshot id: 20 characters of [a-z0-9], like E2B's.
pub fn new_id() -> String {
    random_alnum(20)
}

/// A sandbox's envd access token: 32 characters of [a-z0-9] (about 165 bits).
pub fn new_token() -> String {
    random_alnum(32)
}

/// A daemon API token: 32 random bytes as 64 hex digits.
pub fn new_api_token() -> String {
    use std::fmt::Write;
    let bytes: [u8; 32] = rand::random();
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let id = new_id();
        assert_eq!(id.len(), 20);
        assert!(id.bytes().all(|b| ALPHABET.contains(&b)), "{id}");
        assert_ne!(id, new_id());
        let token = new_token();
        assert_eq!(token.len(), 32);
        assert!(token.bytes().all(|b| ALPHABET.contains(&b)), "{token}");
        let api = new_api_token();
        assert_eq!(api.len(), 64);
        assert!(
            api.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{api}"
        );
    }
}
