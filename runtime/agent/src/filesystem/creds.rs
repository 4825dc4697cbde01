//! Running filesystem operations with the permissions of the requesting user.
//!
//! The agent runs as root, but envd semantics are "the operation happens as that user": files it
//! creates belong to the user, and the user cannot read or overwrite what they could not in a
//! shell. We get that from the kernel rather than by re-implementing permission checks:
//!
//! - Linux keeps the filesystem uid/gid (`setfsuid`/`setfsgid`) and the supplementary groups
//!   per *thread* (glibc's `setuid`/`setgroups` wrappers broadcast to every thread, but the raw
//!   `setfsuid`/`setfsgid` calls and rustix's `set_thread_groups` do not).
//! - Changing the fsuid from 0 to non-zero drops CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_CHOWN and the
//!   other filesystem capabilities from that thread's effective set, and changing it back to 0
//!   restores them (capabilities(7)). So the thread checks access exactly as the user would.
//!
//! Each operation therefore runs as one closure on a tokio blocking thread: the closure switches
//! that thread's filesystem identity, does its syscalls, and a guard switches it back before the
//! thread returns to the pool. Nothing async runs in between, so no other task can observe the
//! borrowed identity. File descriptors opened this way keep working after the switch back (the
//! kernel checks access at open time), which is how uploads and downloads stream through tokio.

use std::ffi::CString;

use coppice_envd::ConnectError;
use nix::unistd::{Gid, Uid};

use crate::users::UserIdentity;

/// The filesystem identity of a user: uid, primary gid and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsCreds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl FsCreds {
    /// The user's identity, with the supplementary groups /etc/group gives them.
    pub fn for_user(user: &UserIdentity) -> Self {
        let groups = CString::new(user.name.as_str())
            .ok()
            .and_then(|name| nix::unistd::getgrouplist(&name, Gid::from_raw(user.gid)).ok())
            .map(|g| g.into_iter().map(Gid::as_raw).collect())
            .unwrap_or_else(|| vec![user.gid]);
        Self {
            uid: user.uid,
            gid: user.gid,
            groups,
        }
    }
}

/// Runs `f` on a blocking thread whose filesystem identity is `creds` for the duration.
pub async fn run_as<T, F>(creds: FsCreds, f: F) -> Result<T, ConnectError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ConnectError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let _guard = ThreadFsIdentity::switch(&creds)?;
        f()
    })
    .await
    .map_err(|e| ConnectError::internal(format!("filesystem task failed: {e}")))?
}

/// Switches the calling thread's filesystem identity; restores it when dropped.
struct ThreadFsIdentity {
    /// What to restore: `None` when nothing was switched.
    saved: Option<(Uid, Gid, Vec<Gid>)>,
}

impl ThreadFsIdentity {
    fn switch(creds: &FsCreds) -> Result<Self, ConnectError> {
        let (euid, egid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        if creds.uid == euid.as_raw() && creds.gid == egid.as_raw() {
            // Already that user (root asking as root, or an unprivileged dev run).
            return Ok(Self { saved: None });
        }
        let saved_groups = nix::unistd::getgroups().unwrap_or_default();
        let guard = Self {
            saved: Some((euid, egid, saved_groups)),
        };
        let groups: Vec<rustix::thread::Gid> = creds
            .groups
            .iter()
            .map(|g| rustix::thread::Gid::from_raw(*g))
            .collect();
        if let Err(e) = rustix::thread::set_thread_groups(&groups) {
            // Happens in user namespaces with setgroups denied; the uid/gid switch below still
            // applies, only supplementary-group access differs.
            tracing::debug!("set_thread_groups: {e}");
        }
        nix::unistd::setfsgid(Gid::from_raw(creds.gid));
        nix::unistd::setfsuid(Uid::from_raw(creds.uid));
        // setfs[ug]id report failure only by returning the old value; asking again with the
        // same value returns the current one.
        let uid_ok = nix::unistd::setfsuid(Uid::from_raw(creds.uid)).as_raw() == creds.uid;
        let gid_ok = nix::unistd::setfsgid(Gid::from_raw(creds.gid)).as_raw() == creds.gid;
        if !(uid_ok && gid_ok) {
            return Err(ConnectError::new(
                coppice_envd::Code::PermissionDenied,
                format!("the agent cannot act as uid {}", creds.uid),
            ));
        }
        Ok(guard)
    }
}

impl Drop for ThreadFsIdentity {
    fn drop(&mut self) {
        if let Some((uid, gid, groups)) = self.saved.take() {
            // fsuid first: going back to 0 restores the capabilities the rest needs.
            nix::unistd::setfsuid(uid);
            nix::unistd::setfsgid(gid);
            let groups: Vec<rustix::thread::Gid> = groups
                .iter()
                .map(|g| rustix::thread::Gid::from_raw(g.as_raw()))
                .collect();
            if let Err(e) = rustix::thread::set_thread_groups(&groups) {
                tracing::debug!("restoring thread groups: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn identity_is_restored_after_the_closure() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let creds = FsCreds {
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        };
        let seen = run_as(creds, || {
            // setfsuid with the current value returns it.
            Ok(nix::unistd::setfsuid(Uid::from_raw(65534)).as_raw())
        })
        .await
        .unwrap();
        assert_eq!(seen, 65534);
        // Root reads a root-only file again on any blocking thread afterwards.
        for _ in 0..4 {
            let fsuid = tokio::task::spawn_blocking(|| {
                let cur = nix::unistd::setfsuid(Uid::from_raw(0));
                cur.as_raw()
            })
            .await
            .unwrap();
            assert_eq!(fsuid, 0);
        }
    }

    #[tokio::test]
    async fn access_is_checked_as_the_user() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("coppice-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, b"x").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let nobody = FsCreds {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        let s = secret.clone();
        let err = run_as(nobody, move || {
            std::fs::read(&s).map_err(|e| ConnectError::from_io(&e, "read"))
        })
        .await
        .unwrap_err();
        assert_eq!(err.code, coppice_envd::Code::PermissionDenied);
        assert_eq!(std::fs::read(&secret).unwrap(), b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
