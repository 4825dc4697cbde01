//! Share tokens: derived from the daemon's secret and the terminal, never stored, so a daemon
//! restarted with the same secret honours the links it handed out and a guessed terminal id
//! grants nothing.

use sha2::{Digest, Sha256};

use super::terminal::Role;

/// The token for `role` on terminal `tid` of sandbox `sandbox`: 40 hex digits (160 bits).
pub fn derive(secret: &str, sandbox: &str, tid: &str, role: Role) -> String {
    let role = match role {
        Role::Writer => "writer",
        Role::Viewer => "viewer",
    };
    let mut h = Sha256::new();
    for part in [secret, sandbox, tid, role] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize()[..20]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `given` is `expected`, compared in constant time (timing leaks no prefix).
pub fn equal(expected: &str, given: &str) -> bool {
    coppice_envd::auth::constant_time_eq(expected.as_bytes(), given.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_terminals_get_distinct_tokens() {
        let w = derive("s", "sb", "t1", Role::Writer);
        assert_eq!(w.len(), 40);
        assert_eq!(w, derive("s", "sb", "t1", Role::Writer));
        assert_ne!(w, derive("s", "sb", "t1", Role::Viewer));
        assert_ne!(w, derive("s", "sb", "t2", Role::Writer));
        assert_ne!(w, derive("s2", "sb", "t1", Role::Writer));
        assert!(equal(&w, &w.clone()) && !equal(&w, &w[1..]));
    }
}
