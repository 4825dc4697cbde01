//! Which user a request runs as, and that user's identity from the sandbox's /etc/passwd.
//!
//! Lookups are cached: every process start, file call and watch resolves a user, and going
//! through NSS each time re-reads nsswitch.conf, /etc/passwd and /etc/group (~15 system calls
//! and the parsing). The cache is valid while those three files are unchanged (device, inode,
//! size, mtime and ctime), so `useradd`, `usermod` or an edit inside the sandbox is seen by the
//! next request. Only users that exist are cached; a miss always asks NSS again.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::Mutex;

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

/// Files whose contents decide what `lookup` and `groups` answer.
const NSS_FILES: [&std::ffi::CStr; 3] = [c"/etc/passwd", c"/etc/group", c"/etc/nsswitch.conf"];

/// Identity of one version of a file: changes whenever the file is written or replaced.
type FileStamp = Option<(u64, u64, u64, i64, u32, i64, u32)>;

fn stamps() -> [FileStamp; 3] {
    NSS_FILES.map(|path| {
        rustix::fs::stat(path).ok().map(|st| {
            (
                st.st_dev,
                st.st_ino,
                st.st_size as u64,
                st.st_mtime,
                st.st_mtime_nsec as u32,
                st.st_ctime,
                st.st_ctime_nsec as u32,
            )
        })
    })
}

#[derive(Default)]
struct Cache {
    stamps: [FileStamp; 3],
    users: HashMap<String, UserIdentity>,
    /// Supplementary groups by (user name, primary gid).
    groups: HashMap<(String, u32), Vec<u32>>,
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

/// Reads the cache as of `now` (the files' current stamps), emptying it if they changed.
fn cached<T>(now: &[FileStamp; 3], f: impl FnOnce(&Cache) -> Option<T>) -> Option<T> {
    let mut guard = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let cache = guard.get_or_insert_with(Cache::default);
    if cache.stamps != *now {
        *cache = Cache {
            stamps: *now,
            ..Default::default()
        };
    }
    f(cache)
}

/// Stores an answer read after the files had the stamps `before`; dropped if they changed
/// meanwhile (the next call reads again).
fn remember(before: &[FileStamp; 3], f: impl FnOnce(&mut Cache)) {
    let mut guard = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(cache) = guard.as_mut()
        && cache.stamps == *before
    {
        f(cache)
    }
}

/// Looks a user up in the sandbox's passwd database (cached while it is unchanged).
pub fn lookup(name: &str) -> Result<UserIdentity, ConnectError> {
    let now = stamps();
    if let Some(user) = cached(&now, |c| c.users.get(name).cloned()) {
        return Ok(user);
    }
    let user = lookup_nss(name)?;
    remember(&now, |c| {
        c.users.insert(name.to_string(), user.clone());
    });
    Ok(user)
}

/// The user's groups from /etc/group, including the primary one (cached like `lookup`).
pub fn groups(user: &UserIdentity) -> Vec<u32> {
    let now = stamps();
    let key = (user.name.clone(), user.gid);
    if let Some(groups) = cached(&now, |c| c.groups.get(&key).cloned()) {
        return groups;
    }
    let gid = nix::unistd::Gid::from_raw(user.gid);
    let Some(groups) = CString::new(user.name.as_str())
        .ok()
        .and_then(|name| nix::unistd::getgrouplist(&name, gid).ok())
        .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect::<Vec<_>>())
    else {
        return vec![user.gid];
    };
    remember(&now, |c| {
        c.groups.insert(key, groups.clone());
    });
    groups
}

fn lookup_nss(name: &str) -> Result<UserIdentity, ConnectError> {
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
    fn lookups_are_cached_and_match_nss() {
        let root = lookup("root").unwrap();
        assert_eq!(root.uid, 0);
        assert_eq!(lookup("root").unwrap(), root);
        assert_eq!(lookup_nss("root").unwrap(), root);
        assert!(groups(&root).contains(&0));
        let missing = lookup("no-such-user-coppice").unwrap_err();
        assert_eq!(
            missing.message,
            "user 'no-such-user-coppice' does not exist"
        );
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
