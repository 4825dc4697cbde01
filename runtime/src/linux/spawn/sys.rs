//! The raw system calls the executor needs that nix and rustix do not wrap (clone3 without a
//! stack, mount_setattr with an idmap, capget/capset, close_range) and small fd helpers.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Marks every fd from `first` up close-on-exec: one close_range call (Linux 5.11+) rather than
/// a syscall per possible fd on the start path.
pub(super) fn cloexec_from(first: RawFd) {
    // SAFETY: only changes fd flags of this process.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        for fd in first..1024 {
            // SAFETY: as above; fds that are not open just fail.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

pub(super) fn bind_agent_socket(path: &Path) -> Result<OwnedFd, String> {
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| format!("binding agent socket {path:?}: {e}"))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| format!("chmod {path:?}: {e}"))?;
    // Non-blocking as the agent's event loop needs it: a restored agent gets this socket in
    // place of its own and never sets the flag again.
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("agent socket {path:?}: {e}"))?;
    Ok(OwnedFd::from(listener))
}

pub(super) fn open_path(path: &Path, flags: i32) -> Result<OwnedFd, String> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| format!("bad path {path:?}"))?;
    // SAFETY: valid C string; the returned fd is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "opening {path:?}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd was just returned by open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))
}

pub(super) fn dup2(from: RawFd, to: RawFd) -> Result<(), String> {
    // dup2 clears close-on-exec on `to`, except when from == to: then clear it by hand.
    let ret = if from == to {
        // SAFETY: plain fcntl on a descriptor this process owns; no memory is passed.
        unsafe { libc::fcntl(to, libc::F_SETFD, 0) }
    } else {
        // SAFETY: plain dup2 on descriptors this process owns; no memory is passed.
        unsafe { libc::dup2(from, to) }
    };
    if ret < 0 {
        return Err(format!(
            "dup2 {from}->{to}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

pub(super) fn write_file(path: impl AsRef<Path>, contents: &str) -> Result<(), String> {
    let path = path.as_ref();
    std::fs::write(path, contents).map_err(|e| format!("writing {path:?}: {e}"))
}

pub(super) fn cstrings(items: impl IntoIterator<Item = String>) -> Result<Vec<CString>, String> {
    items
        .into_iter()
        .map(|s| CString::new(s).map_err(|_| "NUL byte in an argument or env var".to_string()))
        .collect()
}

/// clone3 without a new stack: fork semantics plus namespace flags. Safe to continue in the
/// child only because the helper is single-threaded.
pub(super) fn clone(flags: u64) -> Result<i32, String> {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
    }
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: clone3 with no stack behaves like fork; the caller is single-threaded.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret < 0 {
        return Err(format!("clone3: {}", std::io::Error::last_os_error()));
    }
    Ok(ret as i32)
}

/// Runs `f` with fsuid/fsgid set to `id` and every permitted capability still effective
/// (changing fsuid away from 0 drops the file capabilities from the effective set).
pub(super) fn with_fs_ids<T>(
    id: u32,
    f: impl FnOnce() -> rustix::io::Result<T>,
) -> rustix::io::Result<T> {
    // SAFETY: plain credential syscalls on the (single-threaded) helper itself.
    unsafe {
        libc::setfsgid(id);
        libc::setfsuid(id);
    }
    raise_effective_caps();
    let out = f();
    // SAFETY: as above; back to host root.
    unsafe {
        libc::setfsuid(0);
        libc::setfsgid(0);
    }
    raise_effective_caps();
    out
}

/// Sets the effective capability set to the permitted one (capget/capset, v3 ABI).
pub(super) fn raise_effective_caps() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: v3 capability structs of the right size for capget/capset.
    unsafe {
        if libc::syscall(
            libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        ) == 0
        {
            for d in &mut data {
                d.effective = d.permitted;
            }
            libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr());
        }
    }
}

pub(super) const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
pub(super) const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// mount_setattr(2) with MOUNT_ATTR_IDMAP. Hand-written: neither rustix nor nix wraps it.
pub(super) fn mount_setattr_idmap(fd: RawFd, attr_set: u64, userns: RawFd) -> std::io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns as u64,
    };
    // SAFETY: valid struct pointer and size; empty path with AT_EMPTY_PATH targets `fd`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as u32,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
