//! `EntryInfo` from the real filesystem, plus request path checks and user-xattr metadata.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::Metadata;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use coppice_envd::ConnectError;
use coppice_envd::filesystem::{EntryInfo, FileType};

use crate::users::{self, UserIdentity};

/// envd stores `X-Metadata-*` upload headers as xattrs in this namespace.
const METADATA_XATTR_PREFIX: &str = "user.e2b.";

/// Rejects paths no client should send, then resolves against the user's home and cleans
/// `.`/`..` lexically (envd reports absolute, cleaned paths).
pub fn resolve(path: &str, user: &UserIdentity) -> Result<PathBuf, ConnectError> {
    if path.is_empty() {
        return Err(ConnectError::invalid_argument("path is empty"));
    }
    if path.contains('\0') {
        return Err(ConnectError::invalid_argument("path contains a NUL byte"));
    }
    Ok(clean(&users::resolve_path(path, user)))
}

/// Lexical cleanup of an absolute path: drops `.`, applies `..`, never climbs above `/`.
pub fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Base name as envd reports it (`/` for the root).
pub fn base_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".to_string())
}

/// uid/gid → name lookups, cached for one request (ListDir asks for the same few ids).
#[derive(Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    fn user(&mut self, uid: u32) -> String {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| uid.to_string())
            })
            .clone()
    }

    fn group(&mut self, gid: u32) -> String {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
                    .unwrap_or_else(|| gid.to_string())
            })
            .clone()
    }
}

/// The entry at `path`, describing a symlink itself (not its target), as envd does.
pub fn entry_info(path: &Path, names: &mut Names) -> io::Result<EntryInfo> {
    let md = std::fs::symlink_metadata(path)?;
    Ok(entry_from_metadata(path, &md, names))
}

/// Builds an `EntryInfo` from `lstat` data. For a symlink, `type` and `mode` come from the
/// target (envd semantics), `isSymlink` is set and `symlinkTarget` is the resolved target; a
/// dangling link keeps its raw target and type `FILE_TYPE_SYMLINK`.
pub fn entry_from_metadata(path: &Path, md: &Metadata, names: &mut Names) -> EntryInfo {
    let ft = md.file_type();
    let mut entry = EntryInfo {
        name: base_name(path),
        path: path.to_string_lossy().into_owned(),
        size: md.size() as i64,
        permissions: permissions_string(md.mode()),
        owner: names.user(md.uid()),
        group: names.group(md.gid()),
        modified_time: rfc3339(md.mtime(), md.mtime_nsec() as u32),
        ..Default::default()
    };
    if ft.is_symlink() {
        entry.is_symlink = true;
        match std::fs::canonicalize(path).and_then(|t| std::fs::metadata(&t).map(|m| (t, m))) {
            Ok((target, tmd)) => {
                entry.symlink_target = Some(target.to_string_lossy().into_owned());
                entry.file_type = file_type(&tmd);
                entry.mode = tmd.mode() & 0o777;
            }
            Err(_) => {
                entry.symlink_target = std::fs::read_link(path)
                    .ok()
                    .map(|t| t.to_string_lossy().into_owned());
                entry.file_type = FileType::Symlink;
                entry.mode = md.mode() & 0o777;
            }
        }
    } else {
        entry.file_type = file_type(md);
        entry.mode = md.mode() & 0o777;
        entry.metadata = read_metadata(path);
    }
    entry
}

fn file_type(md: &Metadata) -> FileType {
    if md.is_dir() {
        FileType::Directory
    } else if md.is_file() {
        FileType::File
    } else if md.file_type().is_symlink() {
        FileType::Symlink
    } else {
        FileType::Unspecified
    }
}

/// Go's `FileMode.String()` for a raw `st_mode` (envd's `permissions` field), e.g.
/// `-rw-r--r--`, `drwxr-xr-x`, `Lrwxrwxrwx`, `dtrwxrwxrwx`.
pub fn permissions_string(mode: u32) -> String {
    let fmt = mode & libc::S_IFMT;
    let mut s = String::new();
    // Same order as Go's "dalTLDpSugct?".
    if fmt == libc::S_IFDIR {
        s.push('d');
    }
    if fmt == libc::S_IFLNK {
        s.push('L');
    }
    if fmt == libc::S_IFBLK || fmt == libc::S_IFCHR {
        s.push('D');
    }
    if fmt == libc::S_IFIFO {
        s.push('p');
    }
    if fmt == libc::S_IFSOCK {
        s.push('S');
    }
    if mode & libc::S_ISUID != 0 {
        s.push('u');
    }
    if mode & libc::S_ISGID != 0 {
        s.push('g');
    }
    if fmt == libc::S_IFCHR {
        s.push('c');
    }
    if mode & libc::S_ISVTX != 0 {
        s.push('t');
    }
    if s.is_empty() {
        s.push('-');
    }
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        s.push(if mode & (1 << (8 - i)) != 0 { c } else { '-' });
    }
    s
}

pub use coppice_envd::time::rfc3339;

/// `user.*` xattrs as metadata (envd's `ReadMetadata`); empty when unsupported or unset.
pub fn read_metadata(path: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(size) = rustix::fs::llistxattr_query(path) else {
        return out;
    };
    if size == 0 {
        return out;
    }
    let mut names = vec![0u8; size];
    let Ok(n) = rustix::fs::llistxattr(path, &mut names[..]) else {
        return out;
    };
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Some(key) = name.strip_prefix(METADATA_XATTR_PREFIX.as_bytes()) else {
            continue;
        };
        let name = OsStr::from_bytes(name);
        let Ok(len) = rustix::fs::lgetxattr_query(path, name) else {
            continue;
        };
        let mut value = vec![0u8; len];
        if let Ok(n) = rustix::fs::lgetxattr(path, name, &mut value[..]) {
            out.insert(
                String::from_utf8_lossy(key).into_owned(),
                String::from_utf8_lossy(&value[..n]).into_owned(),
            );
        }
    }
    out
}

/// Stores metadata as `user.e2b.<key>` xattrs on an open file, replacing what an earlier upload
/// stored (an upload without metadata leaves none, as on E2B).
pub fn write_metadata(fd: impl AsFd, metadata: &BTreeMap<String, String>) -> io::Result<()> {
    let size = rustix::fs::flistxattr_query(fd.as_fd())?;
    if size > 0 {
        let mut names = vec![0u8; size];
        let n = rustix::fs::flistxattr(fd.as_fd(), &mut names[..])?;
        for name in names[..n].split(|b| *b == 0) {
            if name.starts_with(METADATA_XATTR_PREFIX.as_bytes()) {
                rustix::fs::fremovexattr(fd.as_fd(), OsStr::from_bytes(name))?;
            }
        }
    }
    for (k, v) in metadata {
        rustix::fs::fsetxattr(
            fd.as_fd(),
            format!("{METADATA_XATTR_PREFIX}{k}"),
            v.as_bytes(),
            rustix::fs::XattrFlags::empty(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_permission_strings() {
        assert_eq!(permissions_string(libc::S_IFREG | 0o644), "-rw-r--r--");
        assert_eq!(permissions_string(libc::S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(permissions_string(libc::S_IFLNK | 0o777), "Lrwxrwxrwx");
        assert_eq!(permissions_string(libc::S_IFDIR | 0o1777), "dtrwxrwxrwx");
        assert_eq!(permissions_string(libc::S_IFREG | 0o4755), "urwxr-xr-x");
    }

    #[test]
    fn request_paths() {
        let u = UserIdentity {
            name: "user".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/user".into(),
            shell: "/bin/bash".into(),
        };
        assert_eq!(
            resolve("a/../b/./c", &u).unwrap(),
            PathBuf::from("/home/user/b/c")
        );
        assert_eq!(resolve("/../../etc", &u).unwrap(), PathBuf::from("/etc"));
        assert!(resolve("", &u).is_err());
        assert!(resolve("a\0b", &u).is_err());
        assert_eq!(base_name(Path::new("/")), "/");
    }

    #[test]
    fn symlinks_are_reported_as_links() {
        let dir = std::env::temp_dir().join(format!("coppice-entry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), b"hello").unwrap();
        std::os::unix::fs::symlink(dir.join("f"), dir.join("l")).unwrap();
        std::os::unix::fs::symlink(dir.join("nope"), dir.join("dangling")).unwrap();
        let mut names = Names::default();
        let l = entry_info(&dir.join("l"), &mut names).unwrap();
        assert!(l.is_symlink);
        assert_eq!(l.file_type, FileType::File);
        assert_eq!(
            l.symlink_target.as_deref(),
            Some(dir.join("f").to_str().unwrap())
        );
        assert!(l.permissions.starts_with('L'));
        let d = entry_info(&dir.join("dangling"), &mut names).unwrap();
        assert_eq!(d.file_type, FileType::Symlink);
        assert!(d.is_symlink);
        let f = entry_info(&dir.join("f"), &mut names).unwrap();
        assert_eq!(f.size, 5);
        assert!(!f.is_symlink);
        assert_eq!(f.name, "f");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
