//! Isolation from the host and between sandboxes, and the limits that hold a sandbox in.

use super::*;

#[test]
fn isolation_from_the_host() {
    let Some(_g) = shared() else { return };
    let d = daemon();
    let sb = create(&[]);

    let cmdline = sb.sh_ok("cat /proc/1/cmdline");
    assert_eq!(cmdline.split('\0').next(), Some("coppice-agent"));

    // Only the sandbox's own processes are visible.
    let ps = sb.sh_ok("ps -eo pid=,args=");
    assert!(
        ps.lines()
            .next()
            .unwrap()
            .trim()
            .starts_with("1 coppice-agent"),
        "{ps}"
    );
    assert!(ps.lines().count() <= 4, "unexpected processes inside: {ps}");
    for host_thing in ["coppice serve", "cargo", "sandbox-"] {
        assert!(
            !ps.contains(host_thing),
            "host process visible inside: {ps}"
        );
    }
    let me = std::process::id();
    assert_ne!(
        sb.sh(&format!("cat /proc/{me}/cmdline")).code,
        0,
        "the test process is visible inside"
    );

    // Host files outside the template are not there, not even for root inside.
    let state = path_str(&d.state);
    let probe = format!(
        "test -e /work || test -e /root/.rustup || test -e /root/.cargo || test -e {state}"
    );
    assert_ne!(
        sb.exec(&["--user", "root", "--", "sh", "-c", &probe]).code,
        0,
        "host files visible"
    );
    assert!(
        Path::new("/root/.rustup").exists(),
        "the probe above must look for something real"
    );
    let home = sb.root_ok("ls -A /root");
    assert!(
        !home.contains(".rustup") && !home.contains(".cargo"),
        "host /root visible: {home}"
    );
}

#[test]
fn sandboxes_are_isolated_from_each_other() {
    let Some(_g) = shared() else { return };
    let (a, b) = (create(&[]), create(&[]));

    a.sh_ok("echo secret > /home/user/a-only && echo tmp > /tmp/a-tmp");
    assert_eq!(a.sh_ok("cat /home/user/a-only"), "secret\n");
    assert_ne!(b.sh("cat /home/user/a-only").code, 0, "B sees A's home");
    assert_ne!(b.sh("cat /tmp/a-tmp").code, 0, "B sees A's /tmp");

    // A long-running process in A is visible in A only.
    a.sh_ok("setsid sleep 987 </dev/null >/dev/null 2>&1 &");
    assert!(
        a.sh_ok("ps -eo args=").contains("sleep 987"),
        "A's own process is missing"
    );
    assert!(
        !b.sh_ok("ps -eo args=").contains("sleep 987"),
        "B sees A's process"
    );

    let (ha, hb) = (a.sh_ok("hostname"), b.sh_ok("hostname"));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(ha, hb);
    assert_ne!(ha.trim(), host.trim());
    assert_eq!(ha.trim(), a.info()["hostname"].as_str().unwrap());
}

#[test]
fn root_inside_is_unprivileged_outside() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    assert_eq!(sb.exec(&["--user", "root", "--", "id", "-u"]).stdout, "0\n");
    assert_eq!(sb.sh_ok("id -u"), "1000\n");
    assert_eq!(sb.sh_ok("echo $HOME"), "/home/user\n");

    let status = std::fs::read_to_string(format!("/proc/{}/status", sb.pid())).unwrap();
    let host_uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap();
    assert!(
        host_uid >= 100_000,
        "root inside is uid {host_uid} on the host"
    );

    // Root inside owns the sandbox's root filesystem; changes stay in the sandbox.
    let name = format!("coppice-e2e-{}", sb.id);
    sb.root_ok(&format!(
        "echo '#!/bin/sh\necho hi' > /usr/local/bin/{name} && chmod +x /usr/local/bin/{name}"
    ));
    assert_eq!(sb.sh_ok(&name), "hi\n");
    assert!(
        !Path::new("/usr/local/bin").join(&name).exists(),
        "a sandbox wrote to the host's /usr"
    );
    assert!(
        sb.sh_ok("dpkg -l bash")
            .lines()
            .any(|l| l.starts_with("ii  bash "))
    );
    if sb.sh("command -v pip").code == 0 {
        assert!(sb.sh_ok("pip --version").starts_with("pip "));
    }
    // The default user cannot.
    assert_ne!(sb.sh("touch /usr/local/bin/nope").code, 0);
}

// ---------------------------------------------------------------------------------------------
// Limits.

#[test]
fn memory_limit_kills_the_hog_not_the_sandbox() {
    let Some(_g) = shared() else { return };
    let sb = create(&["--memory", "64M"]);
    let out = sb.exec(&[
        "--",
        "python3",
        "-c",
        "b = bytearray(200 << 20); print('survived')",
    ]);
    assert_eq!(
        out.code, 137,
        "a 200 MB allocation under a 64 MB limit was not OOM-killed: {out:?}"
    );
    assert!(!out.stdout.contains("survived"));
    assert_eq!(
        sb.exec(&["--", "true"]).code,
        0,
        "the sandbox died with the hog"
    );
    let limit = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/coppice/{}/memory.limit_in_bytes",
        sb.id
    ));
    assert_eq!(limit.unwrap().trim(), (64u64 << 20).to_string());
}

#[test]
fn pids_limit_stops_a_fork_loop() {
    let Some(_g) = shared() else { return };
    let sb = create(&["--pids", "64"]);
    let out = sb.sh("bash -c 'for i in $(seq 200); do sleep 2 & done; wait' 2>&1");
    assert!(
        out.stdout.contains("Resource temporarily unavailable") || out.stdout.contains("fork"),
        "200 processes under a limit of 64: {out:?}"
    );
    assert!(
        eventually(Duration::from_secs(10), || sb.exec(&["--", "true"]).code
            == 0),
        "sandbox unusable"
    );
    let max = std::fs::read_to_string(format!("/sys/fs/cgroup/pids/coppice/{}/pids.max", sb.id));
    assert_eq!(max.unwrap().trim(), "64");
}

#[test]
fn cpu_quota_throttles_a_busy_loop() {
    let Some(_g) = shared() else { return };
    let sb = create(&["--cpus", "0.2"]);
    let usage = || -> u64 {
        let path = format!("/sys/fs/cgroup/cpuacct/coppice/{}/cpuacct.usage", sb.id);
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (cpu0, t0) = (usage(), Instant::now());
    let out = sb.exec(&["--", "timeout", "1.5", "sh", "-c", "while :; do :; done"]);
    let (cpu, wall) = (usage() - cpu0, t0.elapsed());
    assert_eq!(out.code, 124, "{out:?}");
    let share = cpu as f64 / wall.as_nanos() as f64;
    assert!(
        share < 0.4,
        "0.2 CPU used {share:.2} of a core over {wall:?}"
    );
    assert!(share > 0.05, "the loop hardly ran ({share:.2})");
}
