//! The TCP listener's bearer token when none is configured (docs/security.md): made at the
//! daemon's first start and kept in `<state>/api-token`, readable by root only, so that a
//! local user who can reach 127.0.0.1 is not thereby allowed to run code in every sandbox.
//! Root reads it from the file or with `coppice token` (over the root-only unix socket).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The file's name in the state directory.
pub const FILE: &str = "api-token";

/// The configured token, or the state dir's (created on first use, 0600 in a 0700 dir).
pub fn load_or_create(configured: Option<&str>, state_dir: &Path) -> anyhow::Result<String> {
    if let Some(t) = configured.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(t.to_string());
    }
    std::fs::create_dir_all(state_dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", state_dir.display()))?;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))?;
    let path = state_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            return Ok(t.trim().to_string());
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("reading {}: {e}", path.display()),
    }
    let token = new_token();
    // Written beside and renamed: a crash never leaves a half-written token.
    let tmp = state_dir.join(format!(".{FILE}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", tmp.display()))?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    tracing::info!("made the API token {} (root only)", path.display());
    Ok(token)
}

use coppice_runtime::ids::new_api_token as new_token;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = load_or_create(None, &state).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(load_or_create(None, &state).unwrap(), a);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state.join(FILE)), 0o600);
        assert_eq!(mode(&state), 0o700);
        assert_eq!(load_or_create(Some(" set "), &state).unwrap(), "set");
    }
}
