//! Which user a request runs as, and that user's identity from the sandbox's /etc/passwd.

use std::path::PathBuf;

use axum::http::HeaderMap;
use base64::Engine;
use coppice_envd::ConnectError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdentity {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: PathBuf,
}

/// The user named by `Authorization: Basic base64("user:")`, else `username` (for /files),
/// else the default user.
pub fn requested_user(headers: &HeaderMap, username: Option<&str>, default: &str) -> String {
    if let Some(name) = username.filter(|u| !u.is_empty()) {
        return name.to_string();
    }
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|s| s.split(':').next().map(str::to_string))
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Looks a user up in the sandbox's passwd database.
pub fn lookup(name: &str) -> Result<UserIdentity, ConnectError> {
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| ConnectError::internal(format!("looking up user '{name}': {e}")))?
        .ok_or_else(|| ConnectError::invalid_argument(format!("user '{name}' does not exist")))?;
    Ok(UserIdentity {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
        shell: user.shell,
    })
}

/// Resolves a request path: relative paths are relative to the user's home; `~` expands.
pub fn resolve_path(path: &str, user: &UserIdentity) -> PathBuf {
    if let Some(rest) = path.strip_prefix("~/") {
        return user.home.join(rest);
    }
    if path == "~" || path.is_empty() {
        return user.home.clone();
    }
    let p = PathBuf::from(path);
    if p.is_absolute() {
        p
    } else {
        user.home.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_names_the_user() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Basic cm9vdDo=".parse().unwrap()); // "root:"
        assert_eq!(requested_user(&h, None, "user"), "root");
        assert_eq!(requested_user(&HeaderMap::new(), None, "user"), "user");
        assert_eq!(requested_user(&h, Some("alice"), "user"), "alice");
    }

    #[test]
    fn relative_paths_resolve_against_home() {
        let u = UserIdentity {
            name: "user".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/user".into(),
            shell: "/bin/bash".into(),
        };
        assert_eq!(resolve_path("a.txt", &u), PathBuf::from("/home/user/a.txt"));
        assert_eq!(resolve_path("/etc/x", &u), PathBuf::from("/etc/x"));
        assert_eq!(resolve_path("~/d", &u), PathBuf::from("/home/user/d"));
    }
}
