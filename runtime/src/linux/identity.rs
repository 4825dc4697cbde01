//! What makes a sandbox itself inside: its hostname files and machine-id (kept by a restore,
//! new for a fork) and its boot id (new at every start).

use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// The sandbox's own /etc/hostname and /etc/hosts, written into its upper layer (on disk with
/// natural ownership, root = the sandbox's root) so that tools resolving the hostname work.
pub(super) fn write_identity(upper: &Path, hostname: &str, id: &str) -> Result<()> {
    let etc = upper.join("etc");
    std::fs::create_dir_all(&etc).ctx(|| format!("creating {}", etc.display()))?;
    // Derived from the id: every sandbox (and every fork) has its own, a restore keeps it.
    std::fs::write(etc.join("machine-id"), format!("{}\n", machine_id(id)))
        .ctx(|| "writing /etc/machine-id")?;
    std::fs::write(etc.join("hostname"), format!("{hostname}\n"))
        .ctx(|| "writing /etc/hostname")?;
    std::fs::write(etc.join("hosts"), crate::templates::hosts_text(hostname))
        .ctx(|| "writing /etc/hosts")
}

/// A machine-id (32 hex digits, systemd's format) from a sandbox id: 128-bit FNV-1a.
pub fn machine_id(id: &str) -> String {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in id.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    format!("{h:032x}")
}

/// A fresh boot id (a random UUID, as the kernel's) for this start of the sandbox, or the
/// one it `keeps` (resumed in place), in a read-only file the spawn plan shows as
/// `/proc/sys/kernel/random/boot_id`: SDK code tells sandboxes and their restarts apart by it.
pub(super) fn write_boot_id(dir: &Path, keeps: Option<&str>) -> Result<PathBuf> {
    let path = dir.join("boot_id");
    if let Some(id) = keeps {
        return write_read_only(&path, id);
    }
    let b: [u8; 16] = rand::random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let id = format!(
        "{}-{}-4{}-{:x}{}-{}\n",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        8 | (b[8] & 0x3),
        &hex[17..20],
        &hex[20..32]
    );
    write_read_only(&path, &id)
}

fn write_read_only(path: &Path, text: &str) -> Result<PathBuf> {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, text).ctx(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o444))
        .ctx(|| format!("making {} read-only", path.display()))?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_per_sandbox_and_stable() {
        let a = machine_id("aaaaaaaaaaaaaaaaaaaa");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, machine_id("aaaaaaaaaaaaaaaaaaaa"), "a restore keeps it");
        assert_ne!(a, machine_id("aaaaaaaaaaaaaaaaaaab"), "a fork gets its own");
    }
}
