//! The start of a fixed record, step by step: a change to the order of namespace, mount or
//! credential operations shows up here as a diff to review.

use std::path::PathBuf;

use super::{Step, render, steps};
use crate::linux::spawn::SpawnPlan;

fn plan() -> SpawnPlan {
    SpawnPlan {
        id: "sbx1".into(),
        hostname: "sbx1".into(),
        id_base: 200_000,
        id_count: 65_536,
        layers: vec!["/l/top".into(), "/l/base".into()],
        fs_dir: "/s/fs".into(),
        root_dir: "/s/root".into(),
        stage_dir: "/s/stage".into(),
        netns: Some("/proc/9/fd/7".into()),
        cgroup_procs: vec!["/cg/a/cgroup.procs".into(), "/cg/b/cgroup.procs".into()],
        agent_binary: "/bin/agent".into(),
        agent_args: vec!["--x".into()],
        agent_socket: "/s/agent.sock".into(),
        log_file: "/s/agent.log".into(),
        env: vec![("PATH".into(), "/usr/bin".into())],
        tmpfs_size: "256m".into(),
        no_new_privs: true,
        seccomp: true,
        nofile: 4096,
        boot_id_file: "/s/boot_id".into(),
        restore: None,
    }
}

#[test]
fn a_fixed_record_starts_in_this_order() {
    let got = render(&steps(&plan()));
    let want = include_str!("steps_golden.txt");
    assert_eq!(
        got, want,
        "steps changed; review, then update steps_golden.txt:\n{got}"
    );
}

#[test]
fn without_no_new_privs_seccomp_keeps_privileges_and_no_netns_joins_nothing() {
    let mut p = plan();
    p.no_new_privs = false;
    p.netns = None;
    let s = steps(&p);
    assert!(!s.contains(&Step::NoNewPrivs));
    assert!(s.contains(&Step::Seccomp { keep_privs: true }));
    assert!(!s.iter().any(|s| matches!(s, Step::JoinNetns(_))));
    p.seccomp = false;
    assert!(!steps(&p).iter().any(|s| matches!(s, Step::Seccomp { .. })));
}

#[test]
fn the_child_runs_only_after_release_and_ends_in_exec() {
    let s = steps(&plan());
    let at = |want: &Step| s.iter().position(|x| x == want).unwrap();
    let (clone, release, wait) = (
        at(&Step::Clone),
        at(&Step::ReleaseChild),
        at(&Step::WaitForRelease),
    );
    assert!(clone < release && release + 1 == wait);
    // Credentials drop after the pivot, seccomp after no_new_privs, exec last.
    assert!(at(&Step::PivotRoot(PathBuf::from("/s/root"))) < at(&Step::BecomeRoot));
    assert!(at(&Step::NoNewPrivs) < at(&Step::Seccomp { keep_privs: false }));
    assert!(matches!(s.last(), Some(Step::Exec { .. })));
    // The helper's own steps (ids, cgroups, mounts of the root) all precede the release.
    for (i, step) in s.iter().enumerate() {
        if matches!(
            step,
            Step::WriteIdMap { .. } | Step::JoinCgroup(_) | Step::Overlay { .. }
        ) {
            assert!(clone < i && i < release, "{step:?} at {i}");
        }
    }
}

/// The same record resumed from a memory snapshot: the helper's mounts side by side under
/// its own /run, CRIU with every descriptor it inherits, then the fork's hostname.
#[test]
fn a_fixed_record_resumes_in_this_order() {
    use crate::linux::spawn::{InheritKeys, RestorePlan, criu_restore_args, restore_steps};
    let p = plan();
    let keys = InheritKeys {
        listener: "socket:[11]".into(),
        log: "file[2a:b]".into(),
        agent: "file[3c:d]".into(),
        connections: vec!["socket:[12]".into()],
    };
    let args = criu_restore_args(&p, "/m/images".as_ref(), "/s/criu".as_ref(), &keys);
    let restore = RestorePlan {
        criu: "/c/criu".into(),
        args: args.clone(),
        tmpfs_copies: vec![("/m/tmpfs/tmp".into(), "/run/coppice-mounts/tmp".into())],
        pidfile: "/s/criu/pid".into(),
        log: "/s/criu/restore.log".into(),
        kdat_cache: "/s/kdat/criu.kdat".into(),
        dead_connections: 1,
        // A fork in another uid range than its snapshot's.
        owner_shift: Some(crate::linux::spawn::IdShift {
            from: 100_000,
            to: p.id_base,
            count: p.id_count,
        }),
    };
    let got = format!(
        "{}criu {}\n",
        render(&restore_steps(&p, &restore)),
        args.join(" ")
    );
    let want = include_str!("steps_restore_golden.txt");
    assert_eq!(
        got, want,
        "restore steps changed; review, then update steps_restore_golden.txt:\n{got}"
    );
}
