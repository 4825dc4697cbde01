//! Where sandbox uppers and snapshot layers live (docs/decisions/0005).
//!
//! With btrfs, each sandbox's overlay upper and work directories live in their own subvolume
//! (`<state>/btrfs/uppers/<id>/{upper,work}`), and a snapshot is a read-only snapshot of that
//! subvolume (`<state>/btrfs/snapshots/<id>`): constant time, whatever the upper holds, where
//! `cp -a` took time in proportion to its files. When the state directory is not on btrfs,
//! the daemon makes (once) a sparse image `<state>/btrfs.img`, formats it with mkfs.btrfs and
//! mounts it at `<state>/btrfs` (at every start unless already mounted; it stays mounted when
//! the daemon stops, because live sandboxes' overlays keep using it). Without btrfs (no
//! mkfs.btrfs, no loop devices, or `storage = "plain"` under `[linux]`) uppers are plain directories and
//! snapshots are copies; the log and each snapshot's metadata say which.
//!
//! Subvolumes are made and removed through the btrfs ioctls (no `btrfs` process per
//! operation): BTRFS_IOC_SUBVOL_CREATE, BTRFS_IOC_SNAP_CREATE_V2 with BTRFS_SUBVOL_RDONLY, and
//! BTRFS_IOC_SNAP_DESTROY, which drops a subvolume at once (the kernel's cleaner frees its
//! extents in the background) instead of an `rm -rf` of every file.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::Config;
use crate::error::{Error, IoContext, Result};

pub use crate::config::StorageMode;

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
/// `struct btrfs_ioctl_vol_args`: fd and a name of up to BTRFS_PATH_NAME_MAX (4087) bytes.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}
/// `struct btrfs_ioctl_vol_args_v2` (4096 bytes; the qgroup/unused union is left zero).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
/// The inode number of every subvolume's root directory (BTRFS_FIRST_FREE_OBJECTID).
const SUBVOL_ROOT_INO: u64 = 256;

nix::ioctl_write_ptr!(
    /// `BTRFS_IOC_SUBVOL_CREATE`: a new empty subvolume, named in `VolArgs`, in directory `fd`.
    ioc_subvol_create,
    BTRFS_IOCTL_MAGIC,
    14,
    VolArgs
);
nix::ioctl_write_ptr!(
    /// `BTRFS_IOC_SNAP_DESTROY`: deletes the subvolume named in `VolArgs` from directory `fd`.
    ioc_snap_destroy,
    BTRFS_IOCTL_MAGIC,
    15,
    VolArgs
);
nix::ioctl_write_ptr!(
    /// `BTRFS_IOC_SNAP_CREATE_V2`: snapshots the subvolume `VolArgsV2::fd` into directory `fd`.
    ioc_snap_create_v2,
    BTRFS_IOCTL_MAGIC,
    23,
    VolArgsV2
);

/// Splits `path` into its opened parent directory and its last component.
fn parent_and_name(path: &Path) -> Result<(File, &OsStr)> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::Internal(format!("{} has no parent", path.display())));
    };
    if name.len() >= 4040 {
        return Err(Error::Internal(format!("{} is too long", path.display())));
    }
    let dir = File::open(parent).ctx(|| format!("opening {}", parent.display()))?;
    Ok((dir, name))
}

fn vol_args(fd: i64, name: &OsStr) -> Box<VolArgs> {
    let mut a = Box::new(VolArgs {
        fd,
        name: [0; 4088],
    });
    a.name[..name.len()].copy_from_slice(name.as_bytes());
    a
}

/// Creates an empty subvolume at `path`.
pub fn create_subvolume(path: &Path) -> Result<()> {
    let (dir, name) = parent_and_name(path)?;
    let args = vol_args(0, name);
    // SAFETY: a valid, fully initialised vol_args for the duration of the call.
    unsafe { ioc_subvol_create(dir.as_raw_fd(), &*args) }
        .map_err(|e| Error::Internal(format!("creating subvolume {}: {e}", path.display())))?;
    Ok(())
}

/// Takes a read-only snapshot of the subvolume `src` at `dest`. btrfs writes out the
/// source's dirty data (delalloc) before it snapshots, so everything written before the
/// call is in the snapshot.
pub fn snapshot_readonly(src: &Path, dest: &Path) -> Result<()> {
    let source = File::open(src).ctx(|| format!("opening {}", src.display()))?;
    let (dir, name) = parent_and_name(dest)?;
    let mut args = Box::new(VolArgsV2 {
        fd: source.as_raw_fd() as i64,
        transid: 0,
        flags: BTRFS_SUBVOL_RDONLY,
        unused: [0; 4],
        name: [0; 4040],
    });
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: a valid, fully initialised vol_args_v2 for the duration of the call.
    unsafe { ioc_snap_create_v2(dir.as_raw_fd(), &*args) }.map_err(|e| {
        Error::Internal(format!(
            "snapshotting {} to {}: {e}",
            src.display(),
            dest.display()
        ))
    })?;
    Ok(())
}

/// Deletes the subvolume (or snapshot, read-only or not) at `path`; gone already is fine.
pub fn delete_subvolume(path: &Path) -> Result<()> {
    let (dir, name) = parent_and_name(path)?;
    let args = vol_args(0, name);
    // SAFETY: a valid, fully initialised vol_args for the duration of the call.
    match unsafe { ioc_snap_destroy(dir.as_raw_fd(), &*args) } {
        Ok(_) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(Error::Internal(format!(
            "deleting subvolume {}: {e}",
            path.display()
        ))),
    }
}

/// True when `path` is the root of a btrfs subvolume.
pub fn is_subvolume(path: &Path) -> bool {
    is_btrfs(path)
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && m.ino() == SUBVOL_ROOT_INO)
}

/// True when `path` is a read-only subvolume (snapshot).
pub fn is_readonly_subvolume(path: &Path) -> bool {
    is_subvolume(path)
        && nix::sys::statvfs::statvfs(path)
            .is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
}

/// Whether `path` is on a btrfs filesystem.
pub fn is_btrfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
}

/// Removes a subvolume, or a plain directory tree when it is not one.
pub fn remove_tree_or_subvolume(path: &Path) -> Result<()> {
    if is_subvolume(path) {
        return delete_subvolume(path);
    }
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).ctx(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The storage of one state directory.
#[derive(Debug, Clone)]
pub struct Storage {
    /// `<state>/btrfs` when uppers are subvolumes.
    root: Option<PathBuf>,
    /// How it is set up, for the log and `describe`.
    how: String,
    /// Uppers' disk limits are enforced (btrfs simple quotas, linux/btrfs_quota.rs).
    quotas: bool,
}

impl Storage {
    /// Sets up the storage the configuration asks for (see the module docs). `Auto` falls back
    /// to plain directories with a warning; `Btrfs` fails instead.
    pub fn setup(cfg: &Config) -> Result<Storage> {
        if cfg.linux.storage == StorageMode::Plain {
            let s = Storage {
                root: None,
                how: "plain directories ([linux] storage = \"plain\"); snapshots copy the upper; \
                      no disk limits"
                    .into(),
                quotas: false,
            };
            tracing::info!("sandbox storage: {}", s.how);
            return Ok(s);
        }
        match setup_btrfs(cfg) {
            Ok((root, mut how)) => {
                for sub in ["uppers", "snapshots"] {
                    std::fs::create_dir_all(root.join(sub))
                        .ctx(|| format!("creating {}", root.join(sub).display()))?;
                }
                let quotas = match super::btrfs_quota::enable(&root) {
                    Ok(()) => {
                        how += "; disk limits by btrfs simple quotas";
                        true
                    }
                    Err(e) => {
                        how += &format!("; no disk limits ({e})");
                        false
                    }
                };
                tracing::info!("sandbox storage: {how}");
                Ok(Storage {
                    root: Some(root),
                    how,
                    quotas,
                })
            }
            Err(why) if cfg.linux.storage == StorageMode::Btrfs => Err(Error::HostUnsupported(
                format!("[linux] storage = \"btrfs\" but btrfs is unavailable: {why}"),
            )),
            Err(why) => {
                let how = format!(
                    "plain directories, btrfs is unavailable ({why}); snapshots copy the upper \
                     (cp -a), which takes time in proportion to its files"
                );
                let how = format!("{how}; no disk limits");
                tracing::warn!("sandbox storage: {how}");
                Ok(Storage {
                    root: None,
                    how,
                    quotas: false,
                })
            }
        }
    }

    /// Whether sandbox storage is btrfs subvolumes (else plain directories).
    pub fn is_btrfs(&self) -> bool {
        self.root.is_some()
    }

    /// How sandbox storage is set up, in words (logged at start).
    pub fn describe(&self) -> &str {
        &self.how
    }

    /// `<state>/btrfs/uppers`, with btrfs.
    pub fn uppers_dir(&self) -> Option<PathBuf> {
        self.root.as_ref().map(|r| r.join("uppers"))
    }

    /// `<state>/btrfs/snapshots`, with btrfs.
    pub fn snapshots_dir(&self) -> Option<PathBuf> {
        self.root.as_ref().map(|r| r.join("snapshots"))
    }

    /// The subvolume holding sandbox `id`'s upper and work directories, when it has one.
    pub fn upper_subvolume(&self, id: &str) -> Option<PathBuf> {
        self.uppers_dir()
            .map(|d| d.join(id))
            .filter(|p| p.symlink_metadata().is_ok())
    }

    /// Makes a new sandbox's upper+work subvolume holding at most `disk` bytes; None
    /// without btrfs.
    pub fn create_upper(&self, id: &str, disk: Option<u64>) -> Result<Option<PathBuf>> {
        let Some(dir) = self.uppers_dir() else {
            return Ok(None);
        };
        let sv = dir.join(id);
        if sv.symlink_metadata().is_ok() {
            // A restart of the same id (restore) after a crash between the two.
            remove_tree_or_subvolume(&sv)?;
        }
        create_subvolume(&sv)?;
        if self.quotas
            && let Err(e) = super::btrfs_quota::limit(&sv, disk)
        {
            let _ = delete_subvolume(&sv);
            return Err(e);
        }
        Ok(Some(sv))
    }

    /// Whether disk limits are enforced.
    pub fn has_quotas(&self) -> bool {
        self.quotas
    }

    /// Changes the disk limit of sandbox `id`'s upper (a pooled sandbox handed out).
    pub fn set_disk_limit(&self, id: &str, disk: Option<u64>) -> Result<()> {
        match (self.quotas, self.upper_subvolume(id)) {
            (true, Some(sv)) => super::btrfs_quota::limit(&sv, disk),
            _ => Ok(()),
        }
    }

    /// The read-only snapshot subvolume of snapshot `id`, when it is one.
    pub fn snapshot_subvolume(&self, id: &str) -> Option<PathBuf> {
        self.snapshots_dir()
            .map(|d| d.join(id))
            .filter(|p| p.symlink_metadata().is_ok())
    }

    /// Snapshots sandbox `sandbox`'s upper subvolume (read-only) as snapshot `snap`; returns
    /// the snapshot's upper layer directory.
    pub fn snapshot_upper(&self, sandbox: &str, snap: &str) -> Result<PathBuf> {
        let (Some(src), Some(dir)) = (self.upper_subvolume(sandbox), self.snapshots_dir()) else {
            return Err(Error::Internal(format!(
                "sandbox '{sandbox}' has no btrfs upper to snapshot"
            )));
        };
        let dest = dir.join(snap);
        snapshot_readonly(&src, &dest)?;
        Ok(dest.join("upper"))
    }
}

/// `<state>/btrfs` on btrfs: the state directory's own, an image mounted earlier, or one
/// mounted now (made first if missing). Err says why not.
fn setup_btrfs(cfg: &Config) -> std::result::Result<(PathBuf, String), String> {
    let root = cfg.state_dir.join("btrfs");
    std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    if is_btrfs(&root) {
        let how = if is_btrfs(&cfg.state_dir) {
            "btrfs subvolumes (the state directory is on btrfs)".to_string()
        } else {
            format!(
                "btrfs subvolumes in {} (mounted already)",
                cfg.state_dir.join("btrfs.img").display()
            )
        };
        return Ok((root, how));
    }
    let image = cfg.state_dir.join("btrfs.img");
    if !image.exists() {
        // Made under a temporary name: a crash mid-mkfs leaves no half-made image.
        let partial = cfg.state_dir.join("btrfs.img.partial");
        let _ = std::fs::remove_file(&partial);
        let f =
            File::create(&partial).map_err(|e| format!("creating {}: {e}", partial.display()))?;
        // Sparse: only what the sandboxes write takes space on the host.
        f.set_len(cfg.linux.btrfs_image_gib.max(1) << 30)
            .map_err(|e| format!("sizing {}: {e}", partial.display()))?;
        drop(f);
        let out = Command::new("mkfs.btrfs")
            .args(["-q", "-f"])
            .arg(&partial)
            .output()
            .map_err(|e| {
                let _ = std::fs::remove_file(&partial);
                format!("running mkfs.btrfs: {e} (install btrfs-progs)")
            })?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&partial);
            return Err(format!(
                "mkfs.btrfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        std::fs::rename(&partial, &image).map_err(|e| format!("renaming the image: {e}"))?;
    }
    // util-linux mount sets the loop device up (autoclear: it goes with the last unmount).
    let out = Command::new("mount")
        .args(["-t", "btrfs", "-o", "loop,noatime"])
        .arg(&image)
        .arg(&root)
        .output()
        .map_err(|e| format!("running mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mounting {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if !is_btrfs(&root) {
        return Err(format!("{} is not btrfs after mounting", root.display()));
    }
    Ok((
        root,
        format!(
            "btrfs subvolumes in {} (sparse, {} GiB, loop-mounted at {})",
            image.display(),
            cfg.linux.btrfs_image_gib,
            cfg.state_dir.join("btrfs").display()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_argument_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<VolArgsV2>(), 4096);
        assert_eq!(std::mem::offset_of!(VolArgsV2, name), 56);
    }

    #[test]
    fn storage_modes_parse() {
        let cfg: Config =
            toml::from_str("[linux]\nstorage = \"plain\"\nbtrfs_image_gib = 8\n").unwrap();
        assert_eq!(cfg.linux.storage, StorageMode::Plain);
        assert_eq!(cfg.linux.btrfs_image_gib, 8);
        assert!(toml::from_str::<Config>("[linux]\nstorage = \"zfs\"").is_err());
    }
}
