//! Writing inside a root filesystem without following its symlinks to the host.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::sys::remove_tree;
use crate::error::{Error, IoContext, Result};

/// `rel` under `rootfs`, refusing `..` and symlinked or missing parent directories.
pub(super) fn in_root(rootfs: &Path, rel: &str) -> Result<PathBuf> {
    let rel = Path::new(rel);
    let mut cur = rootfs.to_path_buf();
    let comps: Vec<Component> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let Component::Normal(c) = c else {
            return Err(Error::internal(format!(
                "bad path in root: {}",
                rel.display()
            )));
        };
        cur.push(c);
        if i + 1 < comps.len() {
            let md = fs::symlink_metadata(&cur).ctx(|| format!("checking {}", cur.display()))?;
            if !md.is_dir() {
                return Err(Error::internal(format!(
                    "{} is not a directory (symlink?)",
                    cur.display()
                )));
            }
        }
    }
    Ok(cur)
}

pub(super) fn read_in_root(rootfs: &Path, rel: &str) -> Result<String> {
    let path = in_root(rootfs, rel)?;
    let md = fs::symlink_metadata(&path).ctx(|| format!("reading {}", path.display()))?;
    if !md.is_file() {
        return Err(Error::internal(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    fs::read_to_string(&path).ctx(|| format!("reading {}", path.display()))
}

pub(super) fn remove_in_root(rootfs: &Path, rel: &str) -> Result<()> {
    let path = in_root(rootfs, rel)?;
    match fs::symlink_metadata(&path) {
        Ok(md) if md.is_dir() => remove_tree(&path),
        Ok(_) => fs::remove_file(&path).ctx(|| format!("removing {}", path.display())),
        Err(_) => Ok(()),
    }
}

/// Replaces `rel` (a file or symlink, never followed) with a new regular file.
pub(super) fn write_in_root(
    rootfs: &Path,
    rel: &str,
    data: &[u8],
    mode: u32,
    owner: (u32, u32),
) -> Result<()> {
    let path = in_root(rootfs, rel)?;
    if let Ok(md) = fs::symlink_metadata(&path) {
        if md.is_dir() {
            return Err(Error::internal(format!(
                "{} is a directory",
                path.display()
            )));
        }
        fs::remove_file(&path).ctx(|| format!("replacing {}", path.display()))?;
    }
    write_new_file(&path, data, mode, Some(owner))
}

pub(super) fn write_new_file(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ctx(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .ctx(|| format!("writing {}", path.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
            .ctx(|| format!("chown {}", path.display()))?;
    }
    f.set_permissions(fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {}", path.display()))?;
    Ok(())
}

pub(super) fn mkdir_mode(path: &Path, mode: u32, uid: u32, gid: u32) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(Error::internal(format!(
                "{} exists and is not a directory",
                path.display()
            )));
        }
        Err(_) => fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .ctx(|| format!("creating {}", path.display()))?,
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .ctx(|| format!("chown {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {}", path.display()))
}

/// Creates `path` with the mode and ownership of `like` on the host, or `default_mode` root-owned.
pub(super) fn mkdir_like(path: &Path, like: &Path, default_mode: u32) -> Result<()> {
    match fs::symlink_metadata(like) {
        Ok(md) if md.is_dir() => mkdir_mode(path, md.mode() & 0o7777, md.uid(), md.gid()),
        _ => mkdir_mode(path, default_mode, 0, 0),
    }
}

pub(super) fn dev_of(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path)
        .ctx(|| format!("stat {}", path.display()))?
        .dev())
}
