//! The default seccomp profile of a sandbox.
//!
//! Default action *allow*; the syscalls Docker's default profile refuses to unprivileged
//! containers return `EPERM` (ARCHITECTURE decision 3). The profile is compiled once with
//! `seccompiler` (pure Rust, no libseccomp) and the cached BPF is installed in the freshly forked
//! child right before `execve` ([`install`]).
//!
//! Beyond the plain per-syscall list the program:
//! - refuses nested namespaces completely: `unshare`, `setns`, and `clone` with any
//!   `CLONE_NEW*` flag get `EPERM`; `clone3` (whose flags live in memory a filter cannot read)
//!   gets `ENOSYS`, so libc falls back to `clone`, exactly as Docker does;
//! - on x86_64 answers every x32-ABI syscall (nr ≥ 0x4000_0000) with `ENOSYS`, so x32 aliases
//!   of the refused syscalls cannot be used to get around the list;
//! - kills the process for any other architecture (i386 `int 0x80` from a 64-bit process, or a
//!   32-bit binary): seccompiler's architecture check;
//! - allows `personality` only for the default persona, PER_LINUX32, UNAME26,
//!   ADDR_NO_RANDOMIZE (gdb disables ASLR of its inferior with it) and the query 0xffffffff;
//! - allows `ptrace` (debuggers inside the sandbox need it) except of pid 1, the agent, and
//!   `process_vm_readv`/`writev` except of pid 1; io_uring is refused (as in Docker since 25.0;
//!   libuv/tokio-uring fall back to epoll/threads);
//! - refuses `socket(AF_VSOCK, ...)` (host and hypervisor services outside the netns).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use crate::error::{Error, Result};

/// `open_tree_attr` (Linux 6.15); numbers of syscalls added after 5.1 are the same on every
/// architecture. Not yet in libc 0.2.
const SYS_OPEN_TREE_ATTR: i64 = 467;

/// The x32 ABI marks its syscall numbers with this bit (x86_64 only).
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// `CLONE_NEW*` flags that `clone` may not carry. (CLONE_NEWTIME shares its bit with the exit
/// signal in `clone`'s flags and can only be asked for through `unshare`/`clone3`, both refused.)
const CLONE_NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// `personality` values that stay allowed (Docker's list plus ADDR_NO_RANDOMIZE for gdb).
const ALLOWED_PERSONAS: [u64; 6] = [
    0x0000_0000, // PER_LINUX
    0x0000_0008, // PER_LINUX32
    0x0002_0000, // UNAME26
    0x0002_0008, // UNAME26 | PER_LINUX32
    0x0004_0000, // ADDR_NO_RANDOMIZE
    0xffff_ffff, // query the current persona
];

/// Syscalls refused with `EPERM` whatever their arguments (those this architecture has).
pub fn denied_syscalls() -> Vec<(&'static str, i64)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, i64)> = vec![
        // kernel images and modules
        ("kexec_load", libc::SYS_kexec_load),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("delete_module", libc::SYS_delete_module),
        // machine state
        ("reboot", libc::SYS_reboot),
        ("swapon", libc::SYS_swapon),
        ("swapoff", libc::SYS_swapoff),
        ("acct", libc::SYS_acct),
        ("syslog", libc::SYS_syslog),
        ("vhangup", libc::SYS_vhangup),
        ("nfsservctl", libc::SYS_nfsservctl),
        // clocks
        ("settimeofday", libc::SYS_settimeofday),
        ("clock_settime", libc::SYS_clock_settime),
        ("clock_adjtime", libc::SYS_clock_adjtime),
        ("adjtimex", libc::SYS_adjtimex),
        // file handles get around path-based confinement
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("name_to_handle_at", libc::SYS_name_to_handle_at),
        // kernel attack surface
        ("bpf", libc::SYS_bpf),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("keyctl", libc::SYS_keyctl),
        ("add_key", libc::SYS_add_key),
        ("request_key", libc::SYS_request_key),
        ("lookup_dcookie", libc::SYS_lookup_dcookie),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("io_uring_enter", libc::SYS_io_uring_enter),
        ("io_uring_register", libc::SYS_io_uring_register),
        // quotas
        ("quotactl", libc::SYS_quotactl),
        ("quotactl_fd", libc::SYS_quotactl_fd),
        // mounts
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("pivot_root", libc::SYS_pivot_root),
        ("move_mount", libc::SYS_move_mount),
        ("open_tree", libc::SYS_open_tree),
        ("open_tree_attr", SYS_OPEN_TREE_ATTR),
        ("fsopen", libc::SYS_fsopen),
        ("fsconfig", libc::SYS_fsconfig),
        ("fsmount", libc::SYS_fsmount),
        ("fspick", libc::SYS_fspick),
        ("mount_setattr", libc::SYS_mount_setattr),
        // namespaces (`clone` and `clone3` are handled separately)
        ("unshare", libc::SYS_unshare),
        ("setns", libc::SYS_setns),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        ("iopl", libc::SYS_iopl),
        ("ioperm", libc::SYS_ioperm),
        ("uselib", libc::SYS_uselib),
    ]);
    // stime, vm86 and vm86old exist only on 32-bit x86, whose syscalls are refused as a whole.
    v
}

fn target_arch() -> Result<TargetArch> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| {
        Error::HostUnsupported(format!(
            "seccomp profile for {}: {e}",
            std::env::consts::ARCH
        ))
    })
}

fn seccomp_err(what: &str) -> impl FnOnce(seccompiler::BackendError) -> Error + '_ {
    move |e| Error::internal(format!("compiling the seccomp profile ({what}): {e}"))
}

/// Compiles the default profile for the architecture this binary runs on.
///
/// Compiling costs a few hundred microseconds; callers should compile once and keep the
/// program (or use [`default_profile_ref`], which caches it for the process).
pub fn default_profile() -> Result<BpfProgram> {
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in denied_syscalls() {
        rules.insert(nr, Vec::new());
    }

    // clone: refused when any namespace flag is set (one rule per flag; rules are OR-ed).
    let clone_rules = CLONE_NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )
            .map_err(seccomp_err("clone condition"))?;
            SeccompRule::new(vec![cond]).map_err(seccomp_err("clone rule"))
        })
        .collect::<Result<Vec<_>>>()?;
    rules.insert(libc::SYS_clone, clone_rules);

    // personality: refused unless the persona is one of the allowed ones (conditions AND-ed).
    let persona_conds = ALLOWED_PERSONAS
        .iter()
        .map(|&p| {
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, p)
                .map_err(seccomp_err("personality condition"))
        })
        .collect::<Result<Vec<_>>>()?;
    rules.insert(
        libc::SYS_personality,
        vec![SeccompRule::new(persona_conds).map_err(seccomp_err("personality rule"))?],
    );

    // The agent (pid 1): no ptrace of it and no reading or writing its memory, whatever the
    // caller's capabilities (arg: the pid, as seen in the sandbox's pid namespace).
    let pid_one = |arg: u8| -> Result<Vec<SeccompRule>> {
        let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 1)
            .map_err(seccomp_err("pid 1 condition"))?;
        Ok(vec![
            SeccompRule::new(vec![cond]).map_err(seccomp_err("pid 1 rule"))?,
        ])
    };
    rules.insert(libc::SYS_ptrace, pid_one(1)?);
    rules.insert(libc::SYS_process_vm_readv, pid_one(0)?);
    rules.insert(libc::SYS_process_vm_writev, pid_one(0)?);

    // socket(AF_VSOCK): a way to the hypervisor or host services that bypasses the network
    // namespace and its policy.
    let vsock = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_VSOCK as u64,
    )
    .map_err(seccomp_err("vsock condition"))?;
    rules.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![vsock]).map_err(seccomp_err("vsock rule"))?],
    );

    let arch = target_arch()?;
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, eperm, arch)
        .map_err(seccomp_err("filter"))?;
    let body: BpfProgram = filter.try_into().map_err(seccomp_err("bpf"))?;

    let mut prog = prelude(arch);
    prog.extend(body);
    if prog.len() > usize::from(u16::MAX) || prog.len() > 4096 {
        return Err(Error::internal(format!(
            "seccomp profile too long: {} instructions",
            prog.len()
        )));
    }
    Ok(prog)
}

/// The default profile, compiled on first use and kept for the life of the process.
pub fn default_profile_ref() -> Result<&'static BpfProgram> {
    static PROFILE: OnceLock<std::result::Result<BpfProgram, String>> = OnceLock::new();
    PROFILE
        .get_or_init(|| default_profile().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Internal(e.clone()))
}

// Classic BPF opcodes (linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JMP_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
#[cfg(target_arch = "x86_64")]
const BPF_JMP_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Hand-written instructions run before seccompiler's program: answers that seccompiler's
/// per-syscall, single-action model cannot express (`ENOSYS` for clone3 and the x32 ABI).
/// Only jumps forward within itself or to its own end, so seccompiler's relative jumps stay valid.
fn prelude(arch: TargetArch) -> BpfProgram {
    let enosys = libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA);
    let audit_arch: u32 = match arch {
        TargetArch::x86_64 => 0xc000_003e,  // AUDIT_ARCH_X86_64
        TargetArch::aarch64 => 0xc000_00b7, // AUDIT_ARCH_AARCH64
        TargetArch::riscv64 => 0xc000_00f3, // AUDIT_ARCH_RISCV64
    };
    let mut checks: Vec<sock_filter> = vec![stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR)];
    #[cfg(target_arch = "x86_64")]
    checks.extend([
        jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, enosys),
    ]);
    checks.extend([
        jump(BPF_JMP_JEQ_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(BPF_RET_K, enosys),
    ]);

    let mut prog = vec![
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
        // Another architecture: skip to seccompiler's program, whose own check kills it.
        jump(BPF_JMP_JEQ_K, audit_arch, 0, checks.len() as u8),
    ];
    prog.extend(checks);
    prog
}

/// Installs `prog` on the calling thread, setting `no_new_privs` first (seccompiler does both).
///
/// Meant for a freshly forked, single-threaded child right before `execve`: no allocation
/// happens on success; on failure only the error is built.
pub fn install(prog: &BpfProgram) -> Result<()> {
    seccompiler::apply_filter(prog).map_err(|e| match e {
        seccompiler::Error::Prctl(source) => Error::Io {
            context: "prctl(PR_SET_NO_NEW_PRIVS)".into(),
            source,
        },
        seccompiler::Error::Seccomp(source) => Error::Io {
            context: "seccomp(SECCOMP_SET_MODE_FILTER)".into(),
            source,
        },
        other => Error::internal(format!("installing the seccomp profile: {other}")),
    })
}

/// Installs `filter` on the calling thread WITHOUT setting `no_new_privs`, so setuid
/// binaries (sudo) still elevate afterwards. The kernel allows this to a caller with
/// CAP_SYS_ADMIN in its user namespace (the sandbox's root, before it execs the agent). No
/// allocation: meant for a freshly forked child right before `execve`.
pub fn install_keeping_privs(filter: &[seccompiler::sock_filter]) -> std::io::Result<()> {
    let len =
        u16::try_from(filter.len()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let prog = libc::sock_fprog {
        len,
        // Same layout (code, jt, jf, k) in both crates.
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `filter`, valid for the call; the kernel copies it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the instructions seccompiler and the prelude emit.
    fn run(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let ins = &prog[pc];
            pc += 1;
            match ins.code {
                0x20 => {
                    let o = ins.k as usize;
                    acc = u32::from_ne_bytes(data[o..o + 4].try_into().unwrap());
                }
                0x54 => acc &= ins.k,         // ALU AND K
                0x05 => pc += ins.k as usize, // JA
                0x06 => return ins.k,         // RET K
                c @ (0x15 | 0x25 | 0x35) => {
                    let t = match c {
                        0x15 => acc == ins.k,
                        0x25 => acc > ins.k,
                        _ => acc >= ins.k,
                    };
                    pc += if t { ins.jt } else { ins.jf } as usize;
                }
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

    fn native() -> u32 {
        match target_arch().unwrap() {
            TargetArch::x86_64 => 0xc000_003e,
            TargetArch::aarch64 => 0xc000_00b7,
            TargetArch::riscv64 => 0xc000_00f3,
        }
    }

    fn call(prog: &[sock_filter], nr: i64, a0: u64) -> u32 {
        run(prog, native(), nr as u32, [a0, 0, 0, 0, 0, 0])
    }

    #[test]
    fn compiles_and_decides() {
        let p = default_profile().unwrap();
        assert!(p.len() < 4096, "{} instructions", p.len());
        for (name, nr) in denied_syscalls() {
            assert_eq!(call(&p, nr, 0), EPERM, "{name} should be refused");
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_ptrace,
        ] {
            assert_eq!(call(&p, nr, 0), ALLOW, "syscall {nr} should be allowed");
        }
        // clone: a plain fork/thread is fine, any namespace flag is refused
        let thread =
            (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_FILES | libc::CLONE_THREAD) as u64;
        assert_eq!(call(&p, libc::SYS_clone, thread), ALLOW);
        assert_eq!(call(&p, libc::SYS_clone, libc::SIGCHLD as u64), ALLOW);
        for f in CLONE_NAMESPACE_FLAGS {
            assert_eq!(
                call(&p, libc::SYS_clone, f | libc::SIGCHLD as u64),
                EPERM,
                "clone {f:#x}"
            );
        }
        assert_eq!(call(&p, libc::SYS_clone3, 0), ENOSYS);
        // personality
        for ok in ALLOWED_PERSONAS {
            assert_eq!(
                call(&p, libc::SYS_personality, ok),
                ALLOW,
                "persona {ok:#x}"
            );
        }
        assert_eq!(call(&p, libc::SYS_personality, 0x0040_0000), EPERM); // READ_IMPLIES_EXEC
        // ptrace and process_vm_*: any pid but the agent's (1)
        let with = |nr: i64, args: [u64; 6]| run(&p, native(), nr as u32, args);
        let attach = libc::PTRACE_ATTACH as u64;
        assert_eq!(with(libc::SYS_ptrace, [attach, 1, 0, 0, 0, 0]), EPERM);
        assert_eq!(with(libc::SYS_ptrace, [attach, 42, 0, 0, 0, 0]), ALLOW);
        assert_eq!(call(&p, libc::SYS_process_vm_writev, 1), EPERM);
        assert_eq!(call(&p, libc::SYS_process_vm_readv, 1), EPERM);
        assert_eq!(call(&p, libc::SYS_process_vm_readv, 42), ALLOW);
        // sockets: every family but vsock
        assert_eq!(call(&p, libc::SYS_socket, libc::AF_VSOCK as u64), EPERM);
        assert_eq!(call(&p, libc::SYS_socket, libc::AF_INET as u64), ALLOW);
        assert_eq!(call(&p, libc::SYS_socket, libc::AF_UNIX as u64), ALLOW);
        // another architecture is killed
        assert_eq!(
            run(&p, 0x4000_0003, 1, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(call(&p, (X32_SYSCALL_BIT + 272) as i64, 0), ENOSYS); // x32 unshare
            assert_eq!(call(&p, (X32_SYSCALL_BIT + 1) as i64, 0), ENOSYS);
        }
    }

    #[test]
    fn cached_profile_is_the_same() {
        assert_eq!(default_profile_ref().unwrap(), &default_profile().unwrap());
    }

    /// Installs the profile in a forked child (pre_exec) and runs real commands under it.
    #[test]
    fn installed_profile_refuses_namespaces() {
        use std::os::unix::process::CommandExt;
        use std::process::Command;

        let prog = default_profile_ref().unwrap();
        let script = "unshare -U true 2>&1; echo \"unshare=$?\"; true; echo \"true=$?\"; \
                      ls / >/dev/null; echo \"ls=$?\"; mount -t tmpfs t /mnt 2>&1; echo \"mount=$?\"; \
                      /usr/bin/python3 -c 'import threading; t = threading.Thread(target=print); \
                      t.start(); t.join()' && echo threads=ok";
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script]);
        // SAFETY: the hook only makes raw syscalls (prctl, seccomp) on memory prepared before fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                install(prog).map_err(|_| std::io::Error::other("seccomp install failed"))
            });
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("unshare=1"), "{text}");
        assert!(text.contains("Operation not permitted"), "{text}");
        assert!(text.contains("true=0"), "{text}");
        assert!(text.contains("ls=0"), "{text}");
        assert!(!text.contains("mount=0"), "{text}");
        // glibc's pthread_create falls back from clone3 (ENOSYS) to clone
        assert!(text.contains("threads=ok"), "{text}");
    }
}
