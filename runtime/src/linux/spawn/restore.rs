//! A sandbox resumed from a memory snapshot, as steps: the helper builds the same root as a
//! start (the overlay at the root, the host-made mounts under `stage/x`), then runs CRIU,
//! which recreates the processes, their namespaces and their own mounts (proc, devpts, the
//! masks) and binds the host-made ones in (`EXTERNAL_MOUNTS`). CRIU runs inside the fork's
//! network namespace, so the restored processes are in it (the namespace is the host's, see
//! `linux/net`), and inside the fork's cgroups, so they are counted there from the start.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::plan::{
    EXTERNAL_MOUNTS, INHERIT_AGENT_FD, INHERIT_FIRST_DEAD_FD, INHERIT_LISTENER_FD, INHERIT_LOG_FD,
    RestorePlan, SpawnPlan,
};
use super::steps::{Mount, Step, Tree, When, root_tree};

/// Where the host-made mounts of a restore are built: not in the root, so that CRIU's bind of
/// the root brings none of them twice, and in the helper's own /run (a private tmpfs that
/// others may traverse): CRIU opens them as the restored sandbox's root, which may not pass
/// the daemon's private directories.
pub fn external_tree(_stage: &Path) -> PathBuf {
    PathBuf::from("/run/coppice-mounts")
}

fn boot_id_copy(tree: &Path) -> PathBuf {
    tree.join("boot-id")
}

/// The steps of resuming `plan` from `restore`.
pub fn restore_steps(plan: &SpawnPlan, restore: &RestorePlan) -> Vec<Step> {
    let mut out = vec![Step::PrivateMountNamespace];
    if let Some(netns) = &plan.netns {
        out.push(Step::JoinNetns(netns.clone()));
    }
    // CRIU keeps its kernel-feature cache in /run when it is a tmpfs (each run re-probes
    // otherwise); this /run is the helper's own, in its private mount namespace.
    out.push(Step::Mount(Mount {
        source: Some("tmpfs".into()),
        target: "/run".into(),
        fstype: Some("tmpfs"),
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        data: Some("size=1m,mode=711".into()),
        when: When::Always,
    }));
    out.extend([
        Step::BindAgentSocket(plan.agent_socket.clone()),
        Step::OpenAgent(plan.agent_binary.clone()),
        Step::OpenLog(plan.log_file.clone()),
        Step::OwnLog(plan.id_base),
        Step::OomScoreAdj(-998),
        Step::UsernsForIdmap,
    ]);
    let map = format!("0 {} {}\n", plan.id_base, plan.id_count);
    for file in ["uid_map", "gid_map"] {
        out.push(Step::WriteIdMap {
            file,
            map: map.clone(),
        });
    }
    let tree = external_tree(&plan.stage_dir);
    out.push(Step::Mkdir {
        path: tree.clone(),
        parents: false,
    });
    root_tree(plan, &Tree::Flat(&tree), &mut out);
    // The boot id too, out of the daemon's private directory.
    out.push(Step::CopyTree {
        from: plan.boot_id_file.clone(),
        to: boot_id_copy(&tree),
    });
    for (from, to) in &restore.tmpfs_copies {
        out.push(Step::CopyTree {
            from: from.clone(),
            to: to.clone(),
        });
        if let Some(shift) = restore.owner_shift {
            out.push(Step::ShiftOwners {
                path: to.clone(),
                shift,
            });
        }
    }
    let kdat = PathBuf::from("/run/criu.kdat");
    out.push(Step::CopyTree {
        from: restore.kdat_cache.clone(),
        to: kdat.clone(),
    });
    out.extend(plan.cgroup_procs.iter().cloned().map(Step::JoinCgroupSelf));
    out.push(Step::Criu);
    out.push(Step::KeepKdat {
        from: kdat,
        to: restore.kdat_cache.clone(),
    });
    out.push(Step::SetRestoredHostname(plan.hostname.clone()));
    out
}

/// CRIU's `restore` arguments for a fork: images read from `images` (shared by all forks),
/// its log and pid file in `work`, the root and the host-made mounts from `plan`, and the keys
/// (from the dump) of what the helper hands over.
pub fn criu_restore_args(
    plan: &SpawnPlan,
    images: &Path,
    work: &Path,
    keys: &InheritKeys,
) -> Vec<String> {
    let tree = external_tree(&plan.stage_dir);
    let mut args: Vec<String> = [
        "restore",
        "--images-dir",
        &images.display().to_string(),
        "--work-dir",
        &work.display().to_string(),
        "--log-file",
        "restore.log",
        "--root",
        &plan.root_dir.display().to_string(),
        "--restore-detached",
        "--pidfile",
        &work.join("pid").display().to_string(),
        // The helper already put itself into the fork's cgroups.
        "--manage-cgroups=ignore",
        // A fork shares no connection with its parent, and TCP repair (which would restore
        // one) needs CAP_NET_ADMIN over the host-owned network namespace: established TCP
        // comes back closed; listening sockets listen again.
        "--tcp-close",
        "--network-lock",
        "skip",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (key, at) in EXTERNAL_MOUNTS {
        // The boot id is this start's own file; the rest is built under the tree.
        let from = match *key {
            "boot-id" => boot_id_copy(&tree),
            _ => Tree::Flat(&tree).at(at),
        };
        args.push("--external".into());
        args.push(format!("mnt[{key}]:{}", from.display()));
    }
    let mut inherit = |fd: i32, key: &str| {
        args.push("--inherit-fd".into());
        args.push(format!("fd[{fd}]:{key}"));
    };
    inherit(INHERIT_LISTENER_FD, &keys.listener);
    inherit(INHERIT_LOG_FD, &keys.log);
    inherit(INHERIT_AGENT_FD, &keys.agent);
    for (i, key) in keys.connections.iter().enumerate() {
        inherit(INHERIT_FIRST_DEAD_FD + i as i32, key);
    }
    args
}

/// CRIU's names, from the dump, of what a restore is handed instead of reopening it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InheritKeys {
    /// The agent's listening socket (`socket:[inode]`).
    pub listener: String,
    /// The agent's log, its stderr (`file[mnt_id:inode]`).
    pub log: String,
    /// The agent's executable (`file[mnt_id:inode]`).
    pub agent: String,
    /// The host's connections to the agent (`socket:[inode]` each).
    pub connections: Vec<String>,
}
