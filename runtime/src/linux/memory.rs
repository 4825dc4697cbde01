//! Memory snapshots with CRIU: the dump of a running (frozen) sandbox's whole process tree,
//! and what a fork needs to resume it (`spawn/restore.rs`).
//!
//! A snapshot's directory (`<state>/memory/<snapshot>/`) holds CRIU's images (`images/`),
//! copies of the sandbox's tmpfs trees (`tmpfs/`: /tmp, /dev/shm and /run are memory, and
//! their files are part of the processes' state) and `restore.json` ([`DumpInfo`]).
//!
//! What CRIU does not dump, and why (each is rebuilt or handed over by the restore):
//! * the network namespace: it belongs to the host's user namespace (decision in `linux/net`),
//!   which CRIU refuses inside a sandbox's tree; CRIU runs *inside* it instead, so it counts
//!   as the host's, and a fork is restored inside its own fresh one;
//! * the host-made mounts (`EXTERNAL_MOUNTS`);
//! * the agent's socket, log and binary, which live on the host: their CRIU names
//!   ([`InheritKeys`]) let the restore hand over the fork's own;
//! * the host's open connections to the agent: each comes back as a closed connection.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spawn::{
    EXTERNAL_MOUNTS, IdShift, InheritKeys, RestorePlan, SpawnPlan, TMPFS_TREES, criu_restore_args,
    external_tree,
};
use crate::error::{Error, IoContext, Result};

/// What a restore needs to know of the dump besides CRIU's images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpInfo {
    /// CRIU's names of what the restore hands over.
    pub keys: InheritKeys,
    /// The sandbox's first host uid/gid: CRIU recreates its user namespace with that map, so
    /// a fork's idmapped mounts must use it too.
    pub id_base: u32,
    /// Size and modification time (ns) of the agent binary the processes run: a fork of a
    /// snapshot taken with another build would map the wrong code.
    pub agent_size: u64,
    pub agent_mtime_ns: i128,
    /// The agent's envd access token when the snapshot was taken (a fork's agent holds it
    /// until the host sets the fork's own).
    pub access_token: Option<String>,
    /// The sandbox it was taken of and that sandbox's boot id: resumed in place (a pause, a
    /// restore) the sandbox keeps its boot, a fork gets one of its own.
    #[serde(default)]
    pub sandbox_id: String,
    #[serde(default)]
    pub boot_id: String,
}

/// What a memory snapshot needs of its sandbox.
pub struct DumpRequest<'a> {
    pub criu: &'a Path,
    /// Host pid of the sandbox's init (its agent).
    pub pid: i32,
    pub agent_socket: &'a Path,
    pub agent_binary: &'a Path,
    /// The sandbox's freezer cgroup directory: the sandbox is frozen in it by the caller, and
    /// CRIU finds the tree's tasks there and leaves them frozen.
    pub freezer: PathBuf,
    pub access_token: Option<String>,
    /// The sandbox's id and its boot id file.
    pub sandbox_id: &'a str,
    pub boot_id_file: PathBuf,
    /// The snapshot's directory (made here).
    pub dir: PathBuf,
    /// A directory CRIU sees as its /run, where its kernel-feature cache stays between runs.
    pub kdat_dir: PathBuf,
}

/// Dumps the frozen sandbox into `req.dir`; returns the bytes it holds. On failure nothing is
/// left and the error carries CRIU's own reasons; the sandbox is untouched (still frozen for
/// the caller to thaw).
pub fn dump(req: &DumpRequest<'_>) -> Result<u64> {
    let made = dump_into(req);
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&req.dir);
    }
    made
}

fn dump_into(req: &DumpRequest<'_>) -> Result<u64> {
    let images = req.dir.join("images");
    std::fs::create_dir_all(&images).ctx(|| format!("creating {}", images.display()))?;
    let root = PathBuf::from(format!("/proc/{}/root", req.pid));
    for (name, at) in TMPFS_TREES {
        copy_tree(&root.join(at), &req.dir.join("tmpfs").join(name))?;
    }
    let keys = inherit_keys(req)?;
    let mut args: Vec<String> = vec![
        "dump".into(),
        "--tree".into(),
        req.pid.to_string(),
        "--images-dir".into(),
        images.display().to_string(),
        "--log-file".into(),
        "dump.log".into(),
        "--leave-running".into(),
        "--freeze-cgroup".into(),
        req.freezer.display().to_string(),
        // Connections are dumped so that the dump succeeds; forks get them closed.
        "--tcp-established".into(),
        "--skip-in-flight".into(),
        "--network-lock".into(),
        "skip".into(),
        "--file-locks".into(),
        // Deleted files still open (a process's scratch files) are kept up to this size.
        "--ghost-limit".into(),
        "64M".into(),
    ];
    for (key, at) in EXTERNAL_MOUNTS {
        args.push("--external".into());
        args.push(format!("mnt[/{at}]:{key}"));
    }
    for key in [&keys.log, &keys.agent] {
        args.push("--external".into());
        args.push(key.clone());
    }
    for key in &keys.connections {
        let ino = key.trim_start_matches("socket:[").trim_end_matches(']');
        args.push("--external".into());
        args.push(format!("unix[{ino}]"));
    }
    run_in_netns_of(req.criu, &args, req.pid, &req.kdat_dir)?;
    let meta = std::fs::metadata(req.agent_binary)
        .ctx(|| format!("reading {}", req.agent_binary.display()))?;
    let info = DumpInfo {
        keys,
        id_base: id_base_of(req.pid)?,
        agent_size: meta.len(),
        agent_mtime_ns: mtime_ns(&meta),
        access_token: req.access_token.clone(),
        sandbox_id: req.sandbox_id.to_string(),
        boot_id: std::fs::read_to_string(&req.boot_id_file).unwrap_or_default(),
    };
    let path = req.dir.join("restore.json");
    std::fs::write(&path, serde_json::to_vec(&info).map_err(Error::internal)?)
        .ctx(|| format!("writing {}", path.display()))?;
    Ok(crate::fsutil::tree_size(
        &req.dir,
        crate::fsutil::Measure::Apparent,
    ))
}

/// The host uid that uid 0 of `pid`'s user namespace maps to (a memory fork keeps its
/// snapshot's, so it is read, not derived from the slot).
fn id_base_of(pid: i32) -> Result<u32> {
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map"))
        .ctx(|| "reading the sandbox's uid map")?;
    map.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error::Internal(format!("unexpected uid map {map:?}")))
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128
}

/// CRIU's names of the agent's socket, log, binary and the host's connections to it.
fn inherit_keys(req: &DumpRequest<'_>) -> Result<InheritKeys> {
    let pid = req.pid;
    let link = |fd: &str| {
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .map(|l| l.display().to_string())
            .ctx(|| format!("reading the agent's fd {fd}"))
    };
    let listener = link("3")?;
    let listener_ino = listener
        .trim_start_matches("socket:[")
        .trim_end_matches(']')
        .to_string();
    let log = file_key(
        &format!("/proc/{pid}/fdinfo/2"),
        Path::new(&format!("/proc/{pid}/fd/2")),
    )?;
    // The mapped executable's mount is the one its open file reports.
    let exe = std::fs::File::open(format!("/proc/{pid}/exe")).ctx(|| "opening the agent's exe")?;
    let agent = file_key(
        &format!("/proc/self/fdinfo/{}", exe.as_raw_fd()),
        Path::new(&format!("/proc/{pid}/exe")),
    )?;
    // Accepted connections carry the listener's path in the namespace's socket table.
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/unix"))
        .ctx(|| "reading the sandbox's unix sockets")?;
    let agent_path = req.agent_socket.display().to_string();
    let accepted: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.len() >= 8 && cols[7] == agent_path && cols[6] != listener_ino)
                .then(|| cols[6].to_string())
        })
        .collect();
    // Only those the agent holds (not a connection still queued, which CRIU skips).
    let mut connections = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ctx(|| "listing the agent's fds")? {
        let Ok(entry) = entry else { continue };
        if let Ok(l) = std::fs::read_link(entry.path()) {
            let l = l.display().to_string();
            let ino = l.trim_start_matches("socket:[").trim_end_matches(']');
            if accepted.iter().any(|a| a == ino) && !connections.contains(&l) {
                connections.push(l);
            }
        }
    }
    Ok(InheritKeys {
        listener,
        log,
        agent,
        connections,
    })
}

/// `file[<mnt_id>:<inode>]` (hex), CRIU's name of an external file.
fn file_key(fdinfo: &str, path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let info = std::fs::read_to_string(fdinfo).ctx(|| format!("reading {fdinfo}"))?;
    let mnt: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Error::Internal(format!("no mnt_id in {fdinfo}")))?;
    let ino = std::fs::metadata(path)
        .ctx(|| format!("stat {}", path.display()))?
        .ino();
    Ok(format!("file[{mnt:x}:{ino:x}]"))
}

/// Runs CRIU inside the network namespace of `pid` and a private mount namespace of its own
/// whose /run is `run` (CRIU keeps its kernel-feature cache there when it is a tmpfs).
fn run_in_netns_of(criu: &Path, args: &[String], pid: i32, run: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(run).ctx(|| format!("creating {}", run.display()))?;
    let run = std::ffi::CString::new(run.as_os_str().as_bytes()).map_err(Error::internal)?;
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .ctx(|| "opening the sandbox's network namespace")?;
    let ns_fd = netns.as_raw_fd();
    let mut cmd = std::process::Command::new(criu);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only raw system calls between fork and exec (async-signal-safe), no allocation.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 || libc::unshare(libc::CLONE_NEWNS) != 0
            {
                return fail();
            }
            let private = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                private,
                std::ptr::null(),
            ) != 0
                || libc::mount(
                    run.as_ptr(),
                    c"/run".as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
            {
                return fail();
            }
            Ok(())
        })
    };
    let out = cmd.output().ctx(|| format!("running {}", criu.display()))?;
    drop(netns);
    if out.status.success() {
        return Ok(());
    }
    let images = args
        .iter()
        .position(|a| a == "--images-dir")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_default();
    Err(Error::FailedPrecondition(format!(
        "CRIU could not take the memory snapshot: {}",
        super::spawn::criu_errors(&images.join("dump.log"))
    )))
}

/// `cp -a` of `from` to `to` (its parent made here); a missing `from` copies nothing.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
    }
    super::spawn::copy_tree(from, to).map_err(Error::Internal)
}

/// Reads a memory snapshot's [`DumpInfo`] and checks that this host can resume it.
pub fn read_info(dir: &Path, agent_binary: &Path) -> Result<DumpInfo> {
    let path = dir.join("restore.json");
    let bytes = std::fs::read(&path).map_err(|e| {
        Error::FailedPrecondition(format!(
            "the memory snapshot's images are missing ({}: {e})",
            path.display()
        ))
    })?;
    let info: DumpInfo = serde_json::from_slice(&bytes).map_err(Error::internal)?;
    let meta =
        std::fs::metadata(agent_binary).ctx(|| format!("reading {}", agent_binary.display()))?;
    if meta.len() != info.agent_size || mtime_ns(&meta) != info.agent_mtime_ns {
        return Err(Error::FailedPrecondition(
            "the memory snapshot was taken with another build of coppice-agent (its \
             processes would resume in the wrong code); fork it as a filesystem snapshot or \
             take a new memory snapshot"
                .into(),
        ));
    }
    Ok(info)
}

/// The restore part of a fork's spawn plan: `plan` resumes the snapshot in `dir`, with CRIU's
/// log and pid file in `work` (made here).
/// Where a fork in another uid range reads the images of snapshot directory `dir` from
/// (removed once it has started: [`remove_images_view`]).
fn images_view(dir: &Path, sandbox: &str) -> PathBuf {
    dir.join("views").join(sandbox)
}

/// Removes the images view a restore of `sandbox` from snapshot directory `dir` used.
pub fn remove_images_view(dir: &Path, sandbox: &str) {
    let view = images_view(dir, sandbox);
    if let Err(e) = std::fs::remove_dir_all(&view)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("removing {}: {e}", view.display());
    }
}

pub fn restore_plan(
    plan: &SpawnPlan,
    criu: &Path,
    dir: &Path,
    info: &DumpInfo,
    work: &Path,
    kdat_dir: &Path,
) -> Result<RestorePlan> {
    std::fs::create_dir_all(work).ctx(|| format!("creating {}", work.display()))?;
    let tree = external_tree(&plan.stage_dir);
    // A fork in another uid range than the snapshot's: CRIU reads a view of the images with
    // the host ids moved to the fork's range (linux/criu_ids.rs).
    let owner_shift = (info.id_base != plan.id_base).then_some(IdShift {
        from: info.id_base,
        to: plan.id_base,
        count: plan.id_count,
    });
    let images = match &owner_shift {
        Some(shift) => {
            let view = images_view(dir, &plan.id);
            super::criu_ids::shifted_images(&dir.join("images"), &view, shift)?;
            view
        }
        None => dir.join("images"),
    };
    Ok(RestorePlan {
        criu: criu.to_path_buf(),
        args: criu_restore_args(plan, &images, work, &info.keys),
        tmpfs_copies: TMPFS_TREES
            .iter()
            .map(|(name, at)| {
                (
                    dir.join("tmpfs").join(name),
                    super::spawn::Tree::Flat(&tree).at(at),
                )
            })
            .collect(),
        pidfile: work.join("pid"),
        log: work.join("restore.log"),
        kdat_cache: kdat_dir.join("criu.kdat"),
        dead_connections: info.keys.connections.len(),
        owner_shift,
    })
}
