//! Sizes, removal, renames (renameat2), unmounts and the processes a build runs.

use parking_lot::Mutex;
use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::copy::{farm_threads, par_dirs};
use crate::error::{Error, IoContext, Result};

/// Apparent size of a tree in bytes (`du -sb`): every entry's size, hard-linked inodes once.
pub fn size_bytes(path: impl AsRef<Path>) -> u64 {
    crate::fsutil::tree_size(path, crate::fsutil::Measure::Apparent)
}

/// Deletes a tree, first detaching anything mounted beneath it (a debootstrap that died with
/// /proc mounted inside its target must not make us recurse into the host's /proc). Removes
/// with several threads: a hard-link farm has ~10^5 entries.
pub(super) fn remove_tree(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(_) => return Ok(()),
        Ok(md) if !md.is_dir() => {
            return fs::remove_file(path).ctx(|| format!("removing {}", path.display()));
        }
        Ok(_) => {}
    }
    unmount_below(path);
    let dirs: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    par_dirs(farm_threads(), |rel, subdirs| {
        let dir = path.join(rel);
        let rd = fs::read_dir(&dir).ctx(|| format!("reading {}", dir.display()))?;
        for e in rd {
            let e = e.ctx(|| format!("reading {}", dir.display()))?;
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                subdirs.push(rel.join(e.file_name()));
            } else {
                let p = e.path();
                fs::remove_file(&p).ctx(|| format!("removing {}", p.display()))?;
            }
        }
        dirs.lock().push(dir);
        Ok(())
    })?;
    // Deepest first, so every directory is empty when its turn comes.
    let mut dirs = dirs.into_inner();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        fs::remove_dir(&d).ctx(|| format!("removing {}", d.display()))?;
    }
    Ok(())
}

#[cfg(target_os = "linux")]
pub(super) fn unmount_below(path: &Path) {
    let Ok(canon) = fs::canonicalize(path) else {
        return;
    };
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(OsStr::from_bytes(&unescape_mountinfo(m))))
        .filter(|m| m.starts_with(&canon))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in mounts {
        if let Ok(c) = CString::new(m.as_os_str().as_bytes()) {
            // SAFETY: valid C string.
            let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            tracing::warn!(mount = %m.display(), rc, "detached a mount left in a template build directory");
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn unmount_below(_path: &Path) {}

pub(super) fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(target_os = "linux")]
pub(super) fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    let f = CString::new(from.as_os_str().as_bytes())?;
    let t = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Atomic rename that fails (EEXIST) if `to` exists.
pub(super) fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        renameat2(from, to, libc::RENAME_NOREPLACE)
    }
    #[cfg(not(target_os = "linux"))]
    {
        // rename(2) of a directory onto a non-empty directory fails; templates are never empty.
        fs::rename(from, to)
    }
}

/// Atomically swaps two paths.
pub(super) fn rename_exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        renameat2(a, b, libc::RENAME_EXCHANGE)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let tmp = a.with_extension("old");
        fs::rename(b, &tmp)?;
        fs::rename(a, b)?;
        fs::rename(&tmp, a)
    }
}

/// Flushes the filesystem holding `path`, so a published template survives a crash whole.
pub(super) fn sync_filesystem(path: &Path) {
    #[cfg(target_os = "linux")]
    if let Ok(f) = File::open(path) {
        use std::os::fd::AsRawFd;
        // SAFETY: valid fd.
        unsafe { libc::syncfs(f.as_raw_fd()) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = path;
}

pub(super) fn empty_dir_except(dir: &Path, keep: &[&str]) -> Result<()> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if keep.iter().any(|k| e.file_name() == OsStr::new(k)) {
            continue;
        }
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&p)?;
        } else {
            fs::remove_file(&p).ctx(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

pub(super) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

/// Runs the command in a private mount namespace, so mounts it makes (debootstrap mounts /proc
/// and /sys in its target) disappear with it, whatever way it ends.
pub(super) fn private_mounts(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: only raw syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let root = c"/";
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// Runs `cmd`, passing each line of its stdout and stderr to `progress` as it comes. On failure
/// the error carries the last lines (and the tail of `log`, if given).
pub(super) fn run_streaming(
    mut cmd: Command,
    what: &str,
    log: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().ctx(|| format!("starting {what}"))?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || forward_lines(out, tx)));
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || forward_lines(err, tx)));
    }
    drop(tx);
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for line in rx {
        progress(&line);
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait().ctx(|| format!("waiting for {what}"))?;
    if status.success() {
        return Ok(());
    }
    let mut msg = format!("{what} failed ({status})");
    if !tail.is_empty() {
        msg.push_str(": ");
        msg.push_str(&tail.iter().cloned().collect::<Vec<_>>().join("\n"));
    }
    if let Some(text) = log.and_then(|l| fs::read_to_string(l).ok()) {
        let lines: Vec<&str> = text.lines().collect();
        msg.push_str("\n--- log tail ---\n");
        msg.push_str(&lines[lines.len().saturating_sub(15)..].join("\n"));
    }
    Err(Error::Unavailable(msg))
}

pub(super) fn forward_lines(r: impl std::io::Read, tx: std::sync::mpsc::Sender<String>) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
    }
}
