//! Tree copy: a hard-link farm or a copy (reflink first) with natural ownership, modes,
//! times and xattrs, over several threads.

use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, IoContext, Result};

/// Threads for the /usr hard-link farm: `COPPICE_FARM_THREADS`, else the CPU count (max 4).
pub(super) fn farm_threads() -> usize {
    if let Some(n) = std::env::var("COPPICE_FARM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return n.clamp(1, 64);
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum FileMode {
    /// Regular files are hard links to the source (falls back to a copy per file on EXDEV etc.).
    HardLink,
    /// Regular files are copied (FICLONE reflink when the filesystem can), hard links within
    /// the tree preserved.
    #[default]
    Copy,
}

pub(super) type SkipFn<'a> = &'a (dyn Fn(&Path) -> bool + Sync);

#[derive(Default)]
pub(super) struct TreeOpts<'a> {
    pub(super) mode: FileMode,
    /// Gets the path relative to the source root; true = leave this entry (and below) out.
    pub(super) skip: Option<SkipFn<'a>>,
    /// Owner of everything created, instead of the source's.
    pub(super) owner: Option<(u32, u32)>,
    /// Worker threads (1 = sequential).
    pub(super) threads: usize,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct TreeStats {
    pub(super) dirs: u64,
    pub(super) files: u64,
    pub(super) linked: u64,
    pub(super) symlinks: u64,
    pub(super) skipped: u64,
}

pub(super) struct Shared<'a> {
    src: &'a Path,
    dst: &'a Path,
    opts: &'a TreeOpts<'a>,
    dir_times: Mutex<Vec<(PathBuf, fs::Metadata)>>,
    inodes: Mutex<HashMap<(u64, u64), PathBuf>>,
    stats: Mutex<TreeStats>,
}

/// Visits the directory tree below `start` with `threads` workers sharing one queue of
/// directories (relative paths; `start` is visited first as ""). `visit` handles one
/// directory and pushes the subdirectories to descend into. Stops at the first error.
pub(super) fn par_dirs<F>(threads: usize, visit: F) -> Result<()>
where
    F: Fn(&Path, &mut Vec<PathBuf>) -> Result<()> + Sync,
{
    let queue: Mutex<(Vec<PathBuf>, usize)> = Mutex::new((vec![PathBuf::new()], 0));
    let cv = Condvar::new();
    let error: Mutex<Option<Error>> = Mutex::new(None);
    let work = || {
        loop {
            let rel = {
                let mut q = queue.lock();
                loop {
                    if error.lock().is_some() {
                        q.0.clear();
                    }
                    if let Some(rel) = q.0.pop() {
                        q.1 += 1;
                        break rel;
                    }
                    if q.1 == 0 {
                        cv.notify_all();
                        return;
                    }
                    cv.wait(&mut q);
                }
            };
            let mut subdirs = Vec::new();
            let res = visit(&rel, &mut subdirs);
            let mut q = queue.lock();
            q.1 -= 1;
            match res {
                Ok(()) => q.0.extend(subdirs),
                Err(e) => {
                    error.lock().get_or_insert(e);
                }
            }
            cv.notify_all();
        }
    };
    if threads <= 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(work);
            }
        });
    }
    match error.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Copies the tree `src` to `dst` (which must not exist) per `opts`.
pub(super) fn copy_tree(src: &Path, dst: &Path, opts: &TreeOpts) -> Result<TreeStats> {
    let md = fs::symlink_metadata(src).ctx(|| format!("stat {}", src.display()))?;
    if !md.is_dir() {
        return Err(Error::internal(format!(
            "{} is not a directory",
            src.display()
        )));
    }
    make_dir(dst, &md, opts.owner)?;
    let shared = Shared {
        src,
        dst,
        opts,
        dir_times: Mutex::new(vec![(dst.to_path_buf(), md)]),
        inodes: Mutex::new(HashMap::new()),
        stats: Mutex::new(TreeStats {
            dirs: 1,
            ..TreeStats::default()
        }),
    };
    par_dirs(opts.threads, |rel, subdirs| {
        copy_dir_entries(&shared, rel, subdirs)
    })?;
    // Directory times last: creating entries changed them.
    for (path, md) in shared.dir_times.lock().iter().rev() {
        set_times(path, md);
    }
    Ok(*shared.stats.lock())
}

pub(super) fn copy_dir_entries(sh: &Shared, rel: &Path, subdirs: &mut Vec<PathBuf>) -> Result<()> {
    let src_dir = sh.src.join(rel);
    let dst_dir = sh.dst.join(rel);
    let mut st = TreeStats::default();
    let mut times = Vec::new();
    let rd = fs::read_dir(&src_dir).ctx(|| format!("reading {}", src_dir.display()))?;
    for entry in rd {
        let entry = entry.ctx(|| format!("reading {}", src_dir.display()))?;
        let name = entry.file_name();
        let child_rel = rel.join(&name);
        if sh.opts.skip.is_some_and(|skip| skip(&child_rel)) {
            st.skipped += 1;
            continue;
        }
        let src = src_dir.join(&name);
        let dst = dst_dir.join(&name);
        let ft = entry
            .file_type()
            .ctx(|| format!("stat {}", src.display()))?;
        // Symlinks are hard-linked too (as `cp -al` does): linkat is ~15x cheaper than
        // creating a symlink inode, and a read-only layer may share it.
        if (ft.is_file() || ft.is_symlink())
            && sh.opts.mode == FileMode::HardLink
            && sh.opts.owner.is_none()
        {
            match fs::hard_link(&src, &dst) {
                Ok(()) => {
                    if ft.is_file() {
                        st.files += 1;
                    } else {
                        st.symlinks += 1;
                    }
                    st.linked += 1;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(path = %src.display(), error = %e, "hard link failed, copying")
                }
            }
        }
        let md = fs::symlink_metadata(&src).ctx(|| format!("stat {}", src.display()))?;
        if md.is_dir() {
            make_dir(&dst, &md, sh.opts.owner)?;
            times.push((dst, md));
            subdirs.push(child_rel);
            st.dirs += 1;
        } else if md.file_type().is_symlink() {
            let target = fs::read_link(&src).ctx(|| format!("reading link {}", src.display()))?;
            std::os::unix::fs::symlink(&target, &dst)
                .ctx(|| format!("creating link {}", dst.display()))?;
            let (uid, gid) = sh.opts.owner.unwrap_or((md.uid(), md.gid()));
            std::os::unix::fs::lchown(&dst, Some(uid), Some(gid))
                .ctx(|| format!("chown {}", dst.display()))?;
            set_times(&dst, &md);
            st.symlinks += 1;
        } else if md.is_file() {
            if md.nlink() > 1 {
                // Keep hard links inside the tree as hard links.
                let key = (md.dev(), md.ino());
                let first = sh.inodes.lock().get(&key).cloned();
                if let Some(first) = first
                    && fs::hard_link(&first, &dst).is_ok()
                {
                    st.files += 1;
                    continue;
                }
                copy_file(&src, &dst, &md, sh.opts.owner)?;
                sh.inodes.lock().entry(key).or_insert(dst);
            } else {
                copy_file(&src, &dst, &md, sh.opts.owner)?;
            }
            st.files += 1;
        } else {
            // sockets, fifos, device nodes: never part of a template
            st.skipped += 1;
        }
    }
    if !times.is_empty() {
        sh.dir_times.lock().extend(times);
    }
    let mut total = sh.stats.lock();
    total.dirs += st.dirs;
    total.files += st.files;
    total.linked += st.linked;
    total.symlinks += st.symlinks;
    total.skipped += st.skipped;
    Ok(())
}

/// Creates a new directory (which must not exist) with `md`'s mode and owner (or `owner`).
pub(super) fn make_dir(dst: &Path, md: &fs::Metadata, owner: Option<(u32, u32)>) -> Result<()> {
    let (uid, gid) = owner.unwrap_or((md.uid(), md.gid()));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dst)
        .ctx(|| format!("creating {}", dst.display()))?;
    std::os::unix::fs::lchown(dst, Some(uid), Some(gid))
        .ctx(|| format!("chown {}", dst.display()))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
        .ctx(|| format!("chmod {}", dst.display()))
}

/// Copies a regular file: reflink (FICLONE) when possible, else a kernel copy; then owner,
/// mode (after chown, which clears set-id bits), times and extended attributes.
pub(super) fn copy_file(
    src: &Path,
    dst: &Path,
    md: &fs::Metadata,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let mut s = File::open(src).ctx(|| format!("opening {}", src.display()))?;
    let mut d = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dst)
        .ctx(|| format!("creating {}", dst.display()))?;
    if !reflink(&s, &d) {
        std::io::copy(&mut s, &mut d)
            .ctx(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    let (uid, gid) = owner.unwrap_or((md.uid(), md.gid()));
    std::os::unix::fs::fchown(&d, Some(uid), Some(gid))
        .ctx(|| format!("chown {}", dst.display()))?;
    copy_xattrs(&s, &d, dst);
    d.set_permissions(fs::Permissions::from_mode(md.mode() & 0o7777))
        .ctx(|| format!("chmod {}", dst.display()))?;
    let times = fs::FileTimes::new()
        .set_accessed(md.accessed().unwrap_or(SystemTime::UNIX_EPOCH))
        .set_modified(md.modified().unwrap_or(SystemTime::UNIX_EPOCH));
    d.set_times(times)
        .ctx(|| format!("setting times of {}", dst.display()))?;
    Ok(())
}

#[cfg(target_os = "linux")]
pub(super) fn reflink(src: &File, dst: &File) -> bool {
    use std::os::fd::AsRawFd;
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: both are open file descriptors; FICLONE takes the source fd as its argument.
    unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) == 0 }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn reflink(_src: &File, _dst: &File) -> bool {
    false
}

/// Copies the extended attributes of a regular file (file capabilities, ACLs); best effort.
/// (Hard links share them; directories' xattrs are not carried.)
#[cfg(target_os = "linux")]
pub(super) fn copy_xattrs(s: &File, d: &File, dst: &Path) {
    use std::os::fd::AsRawFd;
    let (sfd, dfd) = (s.as_raw_fd(), d.as_raw_fd());
    let mut names = vec![0u8; 1024];
    // SAFETY: buffers are valid for the lengths passed.
    let n = unsafe { libc::flistxattr(sfd, names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return;
    }
    names.truncate(n as usize);
    let mut value = vec![0u8; 4096];
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        // SAFETY: as above.
        let len =
            unsafe { libc::fgetxattr(sfd, cname.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        if len < 0 {
            continue;
        }
        // SAFETY: as above.
        let rc =
            unsafe { libc::fsetxattr(dfd, cname.as_ptr(), value.as_ptr().cast(), len as usize, 0) };
        if rc != 0 {
            tracing::debug!(path = %dst.display(), xattr = %String::from_utf8_lossy(name), "could not copy xattr");
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn copy_xattrs(_s: &File, _d: &File, _dst: &Path) {}

/// Sets access and modification times of `path` (not following symlinks); best effort.
pub(super) fn set_times(path: &Path, md: &fs::Metadata) {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    let ts = [
        libc::timespec {
            tv_sec: md.atime() as _,
            tv_nsec: md.atime_nsec() as _,
        },
        libc::timespec {
            tv_sec: md.mtime() as _,
            tv_nsec: md.mtime_nsec() as _,
        },
    ];
    // SAFETY: valid C string and a two-element timespec array.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
}
