//! Lifetimes and recovery: timeouts, the reaper, a killed daemon or spawn server.

use super::*;

#[test]
fn ttl_reaping_and_set_timeout() {
    let Some(_g) = shared() else { return };
    let (short, extended) = (create(&["--timeout", "2s"]), create(&["--timeout", "2s"]));
    let t0 = Instant::now();
    let before: Value = extended.info();
    let after: Value = serde_json::from_str(&cli_ok(&[
        "sandbox",
        "set-timeout",
        &extended.id,
        "10m",
        "--json",
    ]))
    .unwrap();
    assert!(
        after["expires_at"].as_str() > before["expires_at"].as_str(),
        "{before} -> {after}"
    );

    assert!(
        eventually(Duration::from_secs(6), || !listed_ids().contains(&short.id)),
        "not reaped"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "reaped only after {:?}",
        t0.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(3), || cgroup_dirs(&short.id).is_empty()),
        "cgroups left"
    );
    assert_eq!(cli(&["sandbox", "info", &short.id]).code, 2);

    // Past the original expiry (set before t0) and a reaper tick: it must still be there.
    std::thread::sleep((t0 + Duration::from_secs(3)).saturating_duration_since(Instant::now()));
    assert!(
        listed_ids().contains(&extended.id),
        "set-timeout did not extend"
    );
    assert_eq!(extended.sh_ok("echo alive"), "alive\n");
}

#[test]
fn recovery_after_the_daemon_is_killed() {
    let Some(_g) = exclusive() else { return };
    let d = daemon();
    let (kept, lost) = (create(&[]), create(&[]));
    kept.sh_ok("echo persisted > /home/user/marker");
    let lost_pid = lost.pid();

    let old_servers = spawn_servers();
    d.kill9();
    assert!(
        eventually(Duration::from_secs(5), || spawn_servers()
            .iter()
            .all(|pid| !old_servers.contains(pid))),
        "the spawn server outlived its daemon: {old_servers:?}"
    );
    // SAFETY: kill(2) of the lost sandbox's init; its namespace dies with it.
    assert_eq!(unsafe { libc::kill(lost_pid, libc::SIGKILL) }, 0);
    assert!(eventually(Duration::from_secs(5), || !Path::new(&format!(
        "/proc/{lost_pid}"
    ))
    .exists()));
    d.start();

    let ids = listed_ids();
    assert!(
        ids.contains(&kept.id),
        "the live sandbox was not recovered: {ids:?}"
    );
    assert!(
        !ids.contains(&lost.id),
        "the dead sandbox is still listed: {ids:?}"
    );
    assert_eq!(kept.sh_ok("cat /home/user/marker"), "persisted\n");
    assert_eq!(kept.info()["state"], "running");
    assert!(
        cgroup_dirs(&lost.id).is_empty(),
        "cgroups of the dead sandbox: {:?}",
        cgroup_dirs(&lost.id)
    );
    let dir = d.state.join("sandboxes").join(&lost.id);
    assert!(
        eventually(Duration::from_secs(10), || !dir.exists()),
        "{} left behind",
        dir.display()
    );
    // A new sandbox still works after the restart.
    assert_eq!(create(&[]).sh_ok("echo new"), "new\n");
}

/// Pids of running `coppice-spawn --serve` processes (one per daemon, one daemon per host).
fn spawn_servers() -> Vec<i32> {
    processes(|argv| {
        argv[0].ends_with("coppice-spawn") && argv.get(1).is_some_and(|a| a == "--serve")
    })
    .into_iter()
    .map(|(pid, _)| pid)
    .collect()
}

#[test]
fn a_killed_spawn_server_is_replaced() {
    let Some(_g) = exclusive() else { return };
    daemon();
    let servers = spawn_servers();
    assert_eq!(servers.len(), 1, "one spawn server per daemon: {servers:?}");
    // SAFETY: kill(2) of the daemon's spawn server, the failure this test is about.
    assert_eq!(unsafe { libc::kill(servers[0], libc::SIGKILL) }, 0);
    assert!(
        eventually(Duration::from_secs(5), || !spawn_servers()
            .contains(&servers[0])),
        "the killed server is still running"
    );
    // The pool holds at most one sandbox started before the kill: the second is new.
    for _ in 0..2 {
        assert_eq!(create(&[]).sh_ok("echo up"), "up\n");
    }
    let now = spawn_servers();
    assert!(
        now.len() == 1 && now[0] != servers[0],
        "a new server: {servers:?} -> {now:?}"
    );
}
