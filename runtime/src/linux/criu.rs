//! Whether this host can take memory-state snapshots: CRIU's version and `criu check`. The
//! backend probes once, when first asked, and keeps the answer.

use std::path::{Path, PathBuf};

use crate::backend::MemorySnapshotSupport;

/// The CRIU to run: the configured one, else the private tree's when it is there, else
/// `criu` on PATH.
pub fn binary(configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_path_buf();
    }
    let private = Path::new(crate::config::DEFAULT_CRIU);
    if private.exists() {
        return private.to_path_buf();
    }
    PathBuf::from("criu")
}

/// Detects CRIU at `criu` (`criu --version`, then `criu check`).
pub fn detect(criu: &Path) -> MemorySnapshotSupport {
    let out = std::process::Command::new(criu).arg("--version").output();
    let version = match out {
        Ok(o) if o.status.success() => parse_criu_version(&String::from_utf8_lossy(&o.stdout)),
        _ => {
            return MemorySnapshotSupport {
                available: false,
                criu_version: None,
                reason: format!(
                    "CRIU is not installed at {} (memory snapshots need CRIU >= 4.1; \
                     scripts/install-criu.sh installs it, `[linux] criu` names another)",
                    criu.display()
                ),
            };
        }
    };
    let Some((major, minor, text)) = version else {
        return MemorySnapshotSupport {
            available: false,
            criu_version: None,
            reason: "`criu --version` printed no version".into(),
        };
    };
    if (major, minor) < (4, 1) {
        return MemorySnapshotSupport {
            available: false,
            criu_version: Some(text.clone()),
            reason: format!(
                "CRIU {text} is too old: memory snapshots need CRIU >= 4.1 (older releases do \
                 not run on this kernel)"
            ),
        };
    }
    let check = std::process::Command::new(criu).arg("check").output();
    if !check.is_ok_and(|o| o.status.success()) {
        return MemorySnapshotSupport {
            available: false,
            criu_version: Some(text.clone()),
            reason: format!("CRIU {text} is installed but `criu check` fails on this kernel"),
        };
    }
    MemorySnapshotSupport {
        available: true,
        criu_version: Some(text.clone()),
        reason: String::new(),
    }
}

/// "Version: 4.1.1" → (4, 1, "4.1.1").
fn parse_criu_version(out: &str) -> Option<(u32, u32, String)> {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("Version:"))?;
    let text = line.split_once(':')?.1.trim().to_string();
    let mut parts = text.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    Some((major, minor, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_versions() {
        assert_eq!(
            parse_criu_version("Version: 3.17.1\n"),
            Some((3, 17, "3.17.1".into()))
        );
        assert_eq!(
            parse_criu_version("Version: 4.1\nGitID: v4.1\n"),
            Some((4, 1, "4.1".into()))
        );
        assert_eq!(parse_criu_version("nothing"), None);
    }
}
