//! The Linux backend's [`Storage`]: writable layers as btrfs subvolumes (a snapshot is a
//! read-only subvolume snapshot, constant time) or plain directories (a snapshot is a copy,
//! `<state>/snapshots/<id>/layer`); docs/decisions/0005.

use std::path::{Path, PathBuf};

use super::backend::LinuxBackend;
use super::btrfs::remove_tree_or_subvolume;
use crate::backend::{SnapshotMethod, Storage};
use crate::error::{Error, IoContext, Result};

impl LinuxBackend {
    /// Where copied snapshot layers live.
    fn copies_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("snapshots")
    }
}

impl Storage for LinuxBackend {
    fn upper_dir(&self, sandbox: &str) -> PathBuf {
        LinuxBackend::upper_dir(self, sandbox)
    }

    fn has_disk_limits(&self) -> bool {
        LinuxBackend::has_disk_limits(self)
    }

    fn free_bytes(&self) -> Option<u64> {
        self.free_storage_bytes()
    }

    fn total_bytes(&self) -> Option<u64> {
        nix::sys::statvfs::statvfs(&self.cfg.state_dir)
            .ok()
            .map(|s| s.blocks() * s.fragment_size())
    }

    fn snapshot_method(&self, sandbox: &str) -> SnapshotMethod {
        match self.storage.upper_subvolume(sandbox) {
            Some(_) => SnapshotMethod::Snapshot,
            None => SnapshotMethod::Copy,
        }
    }

    fn snapshot_upper(&self, sandbox: &str, snap: &str) -> Result<PathBuf> {
        match self.snapshot_method(sandbox) {
            SnapshotMethod::Snapshot => self.storage.snapshot_upper(sandbox, snap),
            SnapshotMethod::Copy => {
                let dir = self.copies_dir().join(snap);
                std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
                let layer = dir.join("layer");
                copy_layer(&LinuxBackend::upper_dir(self, sandbox), &layer)?;
                Ok(layer)
            }
        }
    }

    fn layer_path(&self, snap: &str) -> PathBuf {
        match self.storage.snapshot_subvolume(snap) {
            Some(sv) => sv.join("upper"),
            None => self.copies_dir().join(snap).join("layer"),
        }
    }

    fn remove_layer_now(&self, snap: &str) {
        if let Some(sv) = self.storage.snapshot_subvolume(snap)
            && let Err(e) = remove_tree_or_subvolume(&sv)
        {
            tracing::warn!(snapshot = %snap, "{e}");
        }
        let _ = std::fs::remove_dir_all(self.copies_dir().join(snap));
    }

    fn remove_layer(&self, snap: &str) {
        // A subvolume goes in one ioctl (the kernel frees its extents in the background).
        if let Some(sv) = self.storage.snapshot_subvolume(snap)
            && let Err(e) = remove_tree_or_subvolume(&sv)
        {
            tracing::warn!(snapshot = %snap, "{e}");
        }
        let dir = self.copies_dir().join(snap);
        // Renamed aside at once (the id is free again), deleted off the request path.
        let aside = self.copies_dir().join(format!(".removing-{snap}"));
        match std::fs::rename(&dir, &aside) {
            Ok(()) => {
                std::thread::spawn(move || {
                    if let Err(e) = std::fs::remove_dir_all(&aside) {
                        tracing::warn!("removing {}: {e}", aside.display());
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("moving {} aside: {e}", dir.display()),
        }
    }

    fn remove_unknown_layers(&self, keep: &dyn Fn(&str) -> bool) {
        if let Ok(entries) = std::fs::read_dir(self.copies_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep(&name) || name.starts_with(".removing-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        if let Some(dir) = self.storage.snapshots_dir()
            && let Ok(entries) = std::fs::read_dir(dir)
        {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep(&name) {
                    tracing::info!(snapshot = %name, "removing a snapshot subvolume without a row");
                    let _ = remove_tree_or_subvolume(&e.path());
                }
            }
        }
    }
}

/// Copies a sandbox's upper into a new layer directory, preserving everything overlay reads
/// from a lower: owners, modes, times, hard links, xattrs (`trusted.overlay.opaque` marks
/// opaque directories; required, not best effort) and device nodes (whiteouts are 0/0
/// character devices). `--reflink=auto` shares extents where the filesystem can.
fn copy_layer(src: &Path, dest: &Path) -> Result<()> {
    let out = std::process::Command::new("cp")
        .args([
            "-a",
            "--preserve=xattr",
            "--reflink=auto",
            "--no-target-directory",
        ])
        .arg(src)
        .arg(dest)
        .stdin(std::process::Stdio::null())
        .output()
        .ctx(|| "running cp")?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "copying {} to {}: {}",
            src.display(),
            dest.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
