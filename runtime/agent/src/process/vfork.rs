//! Starting a child without copying the agent: `clone(CLONE_VM | CLONE_VFORK)`, the way glibc's
//! `posix_spawn` does it, but with the credential switch `posix_spawn` cannot do.
//!
//! Why: a `fork` (what std's `Command` falls back to whenever there is a `pre_exec` hook, a uid
//! or groups to set) copies the agent's page tables, then both sides take copy-on-write faults
//! until the child execs, and the exec tears the copy down again. Measured on the 2-core CI
//! host, that was about a third of the sandbox's CPU for `exec true` (~1.2 ms in all).
//!
//! With `CLONE_VM` the child runs on the agent's memory (on a stack of its own) and the calling
//! thread is suspended until the child has called `execve` or exited. So the child may only
//! make raw system calls on data prepared beforehand: no allocation, no locks, no libc function
//! that keeps process-wide state (glibc's `setuid`/`setgroups` broadcast to "all threads" and
//! would reach the agent's threads; raw `syscall`s are used instead). Signal handlers are reset
//! in the child before signals are unblocked: a handler of the agent running in the child
//! would run on the agent's memory.
//!
//! What the child does, in std's `Command` order: stdio `dup2`s, `chdir`, SIGPIPE back to its
//! default, new session (and the PTY as controlling terminal), `oom_score_adj` reset, empty
//! signal mask, groups/gid/uid, then `execve` through the candidates of a PATH search that
//! follows glibc's `execvp` (ENOEXEC scripts run with `/bin/sh`, EACCES remembered).

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

/// Everything the child needs, prepared (allocated) by the parent.
pub struct SpawnPlan {
    /// Paths to try in order (one when the program names a path, else one per PATH entry).
    candidates: Vec<CString>,
    /// Kept alive for the pointer arrays below.
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const c_char>,
    /// `["/bin/sh", <candidate>, argv[1..]..., NULL]`: slot 1 is filled in by the child when a
    /// candidate fails with ENOEXEC (glibc's `execvp` runs such files as shell scripts).
    script_ptrs: Vec<*const c_char>,
    cwd: CString,
    /// Descriptors that become the child's 0, 1 and 2.
    pub stdio: [RawFd; 3],
    /// Make stdin the controlling terminal (PTY sessions).
    pub controlling_tty: bool,
    /// uid, gid and supplementary groups to switch to; None keeps the agent's.
    pub credentials: Option<(u32, u32, Vec<libc::gid_t>)>,
}

const SH: &CStr = c"/bin/sh";

impl SpawnPlan {
    /// `program` is searched in the PATH of `env` when it has no '/', as `execvp` would.
    pub fn new<'a>(
        program: &str,
        args: impl IntoIterator<Item = &'a str>,
        env: impl IntoIterator<Item = (&'a str, &'a str)>,
        cwd: &Path,
    ) -> io::Result<SpawnPlan> {
        let cstr = |s: &[u8]| {
            CString::new(s).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "nul byte in a command argument",
                )
            })
        };
        let program_c = cstr(program.as_bytes())?;
        let mut argv = vec![program_c.clone()];
        for a in args {
            argv.push(cstr(a.as_bytes())?);
        }
        let mut path_var = None;
        let mut envp = Vec::new();
        for (k, v) in env {
            if k == "PATH" {
                path_var = Some(v.to_string());
            }
            let mut kv = Vec::with_capacity(k.len() + v.len() + 1);
            kv.extend_from_slice(k.as_bytes());
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp.push(cstr(&kv)?);
        }
        let candidates = candidates(program, path_var.as_deref())?;
        let argv_ptrs = null_terminated(&argv);
        let envp_ptrs = null_terminated(&envp);
        let mut script_ptrs = vec![SH.as_ptr(), std::ptr::null()];
        script_ptrs.extend(argv.iter().skip(1).map(|a| a.as_ptr()));
        script_ptrs.push(std::ptr::null());
        Ok(SpawnPlan {
            candidates,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
            script_ptrs,
            cwd: cstr(cwd.as_os_str().as_bytes())?,
            stdio: [0, 1, 2],
            controlling_tty: false,
            credentials: None,
        })
    }
}

fn null_terminated(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The paths `execvp` would try for `program` with this PATH (glibc: unset PATH is the
/// default search path, an empty entry is the current directory).
fn candidates(program: &str, path: Option<&str>) -> io::Result<Vec<CString>> {
    let nul = |_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte in the program path");
    if program.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    if program.contains('/') {
        return Ok(vec![CString::new(program).map_err(nul)?]);
    }
    path.unwrap_or("/bin:/usr/bin")
        .split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            CString::new(format!("{}/{program}", dir.trim_end_matches('/'))).map_err(nul)
        })
        .collect()
}

/// Shared between the parent and the child (same memory): the child's failure, if any.
struct ChildCtx<'a> {
    plan: &'a SpawnPlan,
    script_ptrs: *mut *const c_char,
    /// errno of the step that failed; 0 while none has.
    errno: AtomicI32,
}

/// The child's stack, reused: a spawn holds this lock until the child has exec'd or exited
/// (CLONE_VFORK), so only one child at a time ever runs on it.
static STACK: Mutex<Option<ChildStack>> = Mutex::new(None);
const STACK_SIZE: usize = 256 << 10;

struct ChildStack {
    base: *mut c_void,
}

// SAFETY: the mapping is only used while STACK's lock is held.
unsafe impl Send for ChildStack {}

impl ChildStack {
    fn map() -> io::Result<ChildStack> {
        // SAFETY: a fresh anonymous mapping, with a guard page at its low end.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            libc::mprotect(base, page_size(), libc::PROT_NONE);
            Ok(ChildStack { base })
        }
    }

    fn top(&self) -> *mut c_void {
        // 16-byte aligned (the mapping is page-aligned and the size a multiple of 16).
        self.base.wrapping_byte_add(STACK_SIZE)
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as usize } else { 4096 }
}

/// Starts the child described by `plan`; returns its pid once it has exec'd. When the child
/// cannot start (bad cwd, exec failure, ...) it has already been reaped and the error is
/// returned. The caller must keep any concurrent `waitpid(-1)` from reaping the child before
/// this returns (the agent's reaper registry lock does).
pub fn spawn(plan: &SpawnPlan) -> io::Result<u32> {
    let mut stack = STACK.lock().unwrap_or_else(|p| p.into_inner());
    if stack.is_none() {
        *stack = Some(ChildStack::map()?);
    }
    let top = stack.as_ref().expect("mapped above").top();
    let mut script_ptrs = plan.script_ptrs.clone();
    let ctx = ChildCtx {
        plan,
        script_ptrs: script_ptrs.as_mut_ptr(),
        errno: AtomicI32::new(0),
    };
    // Every signal blocked across the clone, so that none is handled in the child before it
    // has reset the agent's handlers.
    // SAFETY: an all-zero sigset_t is a valid value, filled in by pthread_sigmask below.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: fills a local set and swaps it in as this thread's mask, saving the old one.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: the child runs `child_main` on its own stack and only makes raw system calls on
    // `ctx`, which outlives it (CLONE_VFORK: this thread waits until the child execs or exits).
    let pid = unsafe {
        libc::clone(
            child_main,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &ctx as *const ChildCtx as *mut c_void,
        )
    };
    let clone_err = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    drop(stack);
    if pid < 0 {
        return Err(clone_err);
    }
    match ctx.errno.load(Ordering::SeqCst) {
        0 => Ok(pid as u32),
        errno => {
            // It has exited (127) already; collect it so it does not linger as a zombie.
            let mut status = 0;
            // SAFETY: waits for our own child.
            while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
            Err(io::Error::from_raw_os_error(errno))
        }
    }
}

/// The child. Runs on the agent's memory: raw system calls only, no allocation, no panics.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `ChildCtx`, alive until this process execs or exits.
    let ctx = unsafe { &*(arg as *const ChildCtx) };
    // SAFETY: see the module docs; each call is a system call on prepared data.
    let errno = unsafe { child_setup_and_exec(ctx) };
    ctx.errno.store(errno.max(1), Ordering::SeqCst);
    // SAFETY: leaves without running any of the agent's exit handlers.
    unsafe { libc::_exit(127) }
}

/// Returns the errno of the step that failed (on success it never returns).
unsafe fn child_setup_and_exec(ctx: &ChildCtx) -> c_int {
    let plan = ctx.plan;
    let errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL)
    };
    // SAFETY: (the whole function) raw system calls on descriptors, strings and arrays the
    // parent prepared; glibc's wrappers used here are thin syscall wrappers (errno lands in the
    // suspended parent thread's TLS, which it does not read).
    unsafe {
        // Handlers of the agent must not run here: back to SIG_DFL (ignored signals stay
        // ignored, as across a fork+exec), before any signal is unblocked.
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut sa) != 0 {
                continue;
            }
            if sig == libc::SIGPIPE
                || (sa.sa_sigaction != libc::SIG_DFL && sa.sa_sigaction != libc::SIG_IGN)
            {
                // SIGPIPE: Rust ignores it in the agent; children get the default, as std does.
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        for (target, &fd) in plan.stdio.iter().enumerate() {
            let target = target as c_int;
            if fd == target {
                // Already in place: just make it survive the exec.
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return errno();
                }
            } else if libc::dup2(fd, target) < 0 {
                return errno();
            }
        }
        if libc::chdir(plan.cwd.as_ptr()) < 0 {
            return errno();
        }
        // Own session and process group: signals and timeouts reach the whole tree, and a PTY
        // can become the controlling terminal.
        if libc::setsid() < 0 {
            return errno();
        }
        if plan.controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            return errno();
        }
        // The agent is protected from the OOM killer; its children must not be (done while
        // still root).
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            libc::write(
                fd,
                super::spawn::CHILD_OOM_SCORE_ADJ.as_ptr() as *const c_void,
                super::spawn::CHILD_OOM_SCORE_ADJ.len(),
            );
            libc::close(fd);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const libc::sigset_t,
            std::ptr::null_mut::<libc::sigset_t>(),
            std::mem::size_of::<libc::c_ulong>(),
        ) < 0
        {
            return errno();
        }
        // Credentials last: once uid is dropped, setgroups/setgid are no longer allowed. Raw
        // syscalls: glibc's wrappers would apply the change to every thread of the agent.
        if let Some((uid, gid, groups)) = &plan.credentials
            && (libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) < 0
                || libc::syscall(libc::SYS_setgid, *gid) < 0
                || libc::syscall(libc::SYS_setuid, *uid) < 0)
        {
            return errno();
        }
        // execvp's search: EACCES is remembered and reported if nothing runs; "not here"
        // errors move on; any other error stops the search.
        let mut seen_eacces = false;
        let mut last = libc::ENOENT;
        for cand in &plan.candidates {
            // execve allocates a new mm before it finds a path missing (`true` started from
            // PATH misses three times: alloc_bprm was 5% of the agent's profile per exec);
            // access answers the same ENOENT/ENOTDIR for the price of a lookup.
            if libc::access(cand.as_ptr(), libc::F_OK) < 0
                && let e @ (libc::ENOENT | libc::ENOTDIR) = errno()
            {
                last = e;
                continue;
            }
            libc::execve(
                cand.as_ptr(),
                plan.argv_ptrs.as_ptr(),
                plan.envp_ptrs.as_ptr(),
            );
            let e = errno();
            if e == libc::ENOEXEC {
                *ctx.script_ptrs.add(1) = cand.as_ptr();
                libc::execve(SH.as_ptr(), ctx.script_ptrs, plan.envp_ptrs.as_ptr());
                return errno();
            }
            match e {
                libc::EACCES => seen_eacces = true,
                libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => return e,
            }
            last = e;
        }
        if seen_eacces { libc::EACCES } else { last }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_search_candidates_follow_execvp() {
        let c = |p, path| {
            candidates(p, path)
                .unwrap()
                .into_iter()
                .map(|c| c.into_string().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(c("./x", Some("/a")), ["./x"]);
        assert_eq!(c("/bin/ls", None), ["/bin/ls"]);
        assert_eq!(
            c("ls", Some("/a:/b/::/c")),
            ["/a/ls", "/b/ls", "./ls", "/c/ls"]
        );
        assert_eq!(c("ls", None), ["/bin/ls", "/usr/bin/ls"]);
        assert_eq!(
            candidates("", Some("/a")).unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
    }
}
