//! Snapshots (btrfs subvolumes, the plain-storage fallback), forks' isolation, consistency and restore.

use super::*;

#[test]
fn snapshots_are_read_only_btrfs_subvolumes_and_deleting_removes_them() {
    let Some(_g) = shared() else { return };
    let d = daemon();
    let sbx = create(&[]);
    sbx.sh_ok(
        "mkdir -p /home/user/many && for i in $(seq 200); do echo $i > /home/user/many/$i; done",
    );
    // Its upper is a subvolume of its own.
    let upper = d.state.join("btrfs/uppers").join(&sbx.id);
    assert_eq!(nix_statfs_type(&upper), Some(0x9123_683E), "{}", d.log());
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&upper).unwrap()),
        256,
        "the upper is not a subvolume root"
    );
    let snap = snapshot(&sbx, &[]);
    let id = snap["snapshot_id"].as_str().unwrap();
    assert_eq!(
        snap["metadata"]["coppice.storage"], "btrfs-snapshot",
        "{snap}"
    );
    let sv = d.state.join("btrfs/snapshots").join(id);
    assert!(
        is_readonly_subvolume(&sv),
        "{} is not a read-only subvolume",
        sv.display()
    );
    assert_eq!(
        std::fs::read_to_string(sv.join("upper/home/user/many/200")).unwrap(),
        "200\n"
    );
    // No copy was made beside it.
    assert!(!d.state.join("snapshots").join(id).join("layer").exists());
    // Writes after the snapshot stay out of it.
    sbx.sh_ok("echo later > /home/user/many/200");
    assert_eq!(
        std::fs::read_to_string(sv.join("upper/home/user/many/200")).unwrap(),
        "200\n"
    );
    cli_ok(&["snapshot", "delete", id]);
    assert!(!sv.exists(), "the snapshot's subvolume is still there");
    // Killing the sandbox deletes its upper subvolume.
    drop(sbx);
    assert!(
        eventually(Duration::from_secs(10), || !upper.exists()),
        "upper left"
    );
}

/// `storage = "plain"`: a daemon without btrfs keeps working, snapshots are copies and say so.
#[test]
fn plain_storage_fallback_snapshots_by_copying() {
    let Some(_g) = exclusive() else { return };
    let d = daemon();
    d.kill9();
    let dir = tempfile::Builder::new()
        .prefix("coppice-plain-")
        .tempdir()
        .unwrap()
        .keep();
    let (state, socket) = (dir.join("state"), dir.join("coppice.sock"));
    std::fs::write(
        dir.join("config.toml"),
        "pool_size = 0\n[linux]\nstorage = \"plain\"\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "--socket",
        path_str(&socket),
        "serve",
        "--state-dir",
        path_str(&state),
    ])
    .args(["--listen", &format!("127.0.0.1:{port}")])
    .env("COPPICE_CONFIG", dir.join("config.toml"))
    .stdin(std::process::Stdio::null())
    .stdout(std::fs::File::create(dir.join("daemon.log")).unwrap())
    .stderr(std::fs::File::create(dir.join("daemon.err")).unwrap());
    let mut child = spawn_bound_to_process(cmd);
    let run = || -> Result<(), String> {
        let up = eventually(Duration::from_secs(120), || {
            cli_at(&socket, &["sandbox", "list"]).code == 0
        });
        let log = || {
            std::fs::read_to_string(dir.join("daemon.err")).unwrap_or_default()
                + &std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
        };
        if !up {
            return Err(format!("plain daemon did not come up: {}", log()));
        }
        let ok = |args: &[&str]| -> Result<Value, String> {
            let out = cli_at(&socket, args);
            if out.code != 0 {
                return Err(format!("{args:?}: {out:?}"));
            }
            serde_json::from_str(&out.stdout).map_err(|e| format!("{args:?}: {e}: {out:?}"))
        };
        let sbx = ok(&["sandbox", "create", "--json"])?;
        let sid = sbx["id"].as_str().unwrap().to_string();
        let exec = cli_at(
            &socket,
            &["exec", &sid, "--", "sh", "-c", "echo plain > /home/user/f"],
        );
        if exec.code != 0 {
            return Err(format!("exec: {exec:?}"));
        }
        if state.join("btrfs/uppers").join(&sid).exists() || storage_mounts(&state) != 0 {
            return Err("plain storage made btrfs objects".into());
        }
        let snap = ok(&["snapshot", "create", &sid, "--json"])?;
        let snap_id = snap["snapshot_id"].as_str().unwrap().to_string();
        if snap["metadata"]["coppice.storage"] != "copy" {
            return Err(format!("not a copy: {snap}"));
        }
        let layer = state.join("snapshots").join(&snap_id).join("layer");
        if std::fs::read_to_string(layer.join("home/user/f"))
            .ok()
            .as_deref()
            != Some("plain\n")
        {
            return Err(format!("{} lacks the file", layer.display()));
        }
        let forked = ok(&["sandbox", "fork", "--json", "--snapshot", &snap_id])?;
        let fid = forked["forks"][0]["sandbox"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let cat = cli_at(&socket, &["exec", &fid, "--", "cat", "/home/user/f"]);
        cli_at(&socket, &["sandbox", "kill", &fid]);
        cli_at(&socket, &["sandbox", "kill", &sid]);
        if cat.stdout != "plain\n" {
            return Err(format!("fork of a copied snapshot: {cat:?}"));
        }
        let del = cli_at(&socket, &["snapshot", "delete", &snap_id]);
        if del.code != 0 || !eventually(Duration::from_secs(10), || !layer.exists()) {
            return Err(format!("delete: {del:?}"));
        }
        if !log().contains("plain directories") {
            return Err(format!("the log does not say which storage: {}", log()));
        }
        Ok(())
    };
    let result = run();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    d.start();
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn forks_see_the_snapshot_but_not_each_others_writes() {
    let Some(_g) = shared() else { return };
    let parent = create(&["--env", "FROM_PARENT=1"]);
    parent.sh_ok("echo prepared > /home/user/state; mkdir -p /home/user/proj");
    // Overlay specifics must survive the copy: a whiteout (a deleted template file) and an
    // opaque directory (a template directory removed and made again).
    parent
        .root_ok("rm /etc/issue && rm -rf /etc/apt && mkdir /etc/apt && echo mine > /etc/apt/only");
    // A process that keeps counting: the parent must run on through snapshot and fork. It
    // renames each value into place, so a reader never sees the file empty mid-write.
    parent.sh_ok("nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/count.t; mv /tmp/count.t /tmp/count; sleep 0.05; done' >/dev/null 2>&1 &");
    let pid = parent.pid();
    let snap = snapshot(&parent, &["--name", &format!("prep-{}", parent.id)]);
    assert_eq!(snap["kind"], "filesystem");
    assert_eq!(snap["sandbox_id"], parent.id.as_str());
    // A subvolume snapshot's size is counted just after it is taken.
    let counted = || -> u64 {
        let id = snap["snapshot_id"].as_str().unwrap();
        let info: Value =
            serde_json::from_str(&cli_ok(&["snapshot", "info", id, "--json"])).unwrap();
        info["size_bytes"].as_u64().unwrap()
    };
    assert!(
        eventually(Duration::from_secs(10), || counted() > 0),
        "{snap}"
    );

    // Per-fork settings through the API: fork 0 gets its own env, fork 1 its own memory.
    let (code, result) = api(
        "POST",
        "/api/v1/forks",
        Some(json!({
            "snapshot_id": snap["name"], "count": 3, "env": {"COMMON": "c"},
            "forks": [{"env": {"ONLY0": "zero"}}, {"memory": "256M", "timeout_secs": 120}],
        })),
    );
    assert_eq!(code, 200, "{result}");
    let forks = sandboxes_of(&result);
    assert_eq!(forks.len(), 3, "{result}");
    assert_eq!(result["created"], 3);
    assert_eq!(result["implicit_snapshot"], false);

    let mut identities = std::collections::HashSet::new();
    for (i, f) in forks.iter().enumerate() {
        assert_eq!(f.sh_ok("cat /home/user/state"), "prepared\n");
        assert!(
            f.sh("test -e /etc/issue").code != 0,
            "whiteout lost in fork {i}"
        );
        assert_eq!(
            f.sh_ok("ls /etc/apt"),
            "only\n",
            "opaque directory lost in fork {i}"
        );
        f.sh_ok(&format!("echo fork{i} > /home/user/proj/mine-{i}"));
        let id = f.sh_ok("echo $(hostname) $(cat /etc/machine-id)");
        let info = f.info();
        identities.insert((id, info["ip"].as_str().unwrap_or_default().to_string()));
        assert_ne!(info["ip"], parent.info()["ip"]);
        assert_eq!(
            f.sh_ok("echo $FROM_PARENT $COMMON"),
            "1 c\n",
            "env inherited + common"
        );
        // Processes restart in a fork: the parent's counter loop is not running there.
        assert_eq!(
            f.sh("pgrep -f 'echo \\$i'").code,
            1,
            "fork {i} runs the parent's processes"
        );
    }
    assert_eq!(
        identities.len(),
        3,
        "forks share an identity: {identities:?}"
    );
    assert_eq!(forks[0].sh_ok("echo ${ONLY0:-none}"), "zero\n");
    assert_eq!(forks[1].sh_ok("echo ${ONLY0:-none}"), "none\n");
    assert_eq!(forks[1].info()["limits"]["memory_bytes"], 256u64 << 20);
    for (i, f) in forks.iter().enumerate() {
        let listing = f.sh_ok("ls /home/user/proj");
        assert_eq!(
            listing,
            format!("mine-{i}\n"),
            "fork {i} sees a sibling's write"
        );
    }
    assert_eq!(
        parent.sh_ok("ls /home/user/proj"),
        "",
        "the parent sees a fork's write"
    );
    assert!(parent.sh("test -e /etc/issue").code != 0);

    // The parent kept running: same init, its counter still moving.
    assert_eq!(parent.pid(), pid);
    let before: u64 = parent.sh_ok("cat /tmp/count").trim().parse().unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        parent
            .sh_ok("cat /tmp/count")
            .trim()
            .parse::<u64>()
            .unwrap()
            > before
    }));
    // A fork's lineage leads back to the parent.
    let lineage: Value =
        serde_json::from_str(&cli_ok(&["sandbox", "lineage", &forks[2].id, "--json"])).unwrap();
    assert_eq!(lineage["ancestors"][0]["id"], snap["snapshot_id"]);
    assert_eq!(lineage["ancestors"][1]["id"], parent.id.as_str());
    let snap_id = snap["snapshot_id"].as_str().unwrap();
    let info: Value =
        serde_json::from_str(&cli_ok(&["snapshot", "info", snap_id, "--json"])).unwrap();
    assert_eq!(info["dependant_sandboxes"].as_array().unwrap().len(), 3);
    drop(forks);
    cli_ok(&["snapshot", "delete", snap_id]);
}

#[test]
fn a_snapshot_during_concurrent_writes_is_consistent() {
    let Some(_g) = shared() else { return };
    let parent = create(&[]);
    // Writes file N into d/ and only then records N in `last` (atomic rename). In any
    // point-in-time copy, d/ holds exactly 1..=M with M == last or last + 1. Copying a live
    // tree without freezing it would read `last` well after d/ and see last > M.
    let writer = r#"
import os
os.makedirs("/home/user/d", exist_ok=True)
i = 0
while True:
    i += 1
    with open(f"/home/user/d/{i}", "w") as f:
        f.write(str(i))
    with open("/home/user/last.tmp", "w") as f:
        f.write(str(i))
    os.replace("/home/user/last.tmp", "/home/user/last")
"#;
    parent.sh_ok(&format!(
        "cat > /home/user/writer.py <<'EOF'\n{writer}\nEOF\nnohup python3 /home/user/writer.py >/dev/null 2>&1 &"
    ));
    assert!(eventually(Duration::from_secs(10), || {
        parent.sh("test $(ls /home/user/d | wc -l) -gt 2000").code == 0
    }));
    let check = r#"python3 - <<'EOF'
import os
names = sorted(int(n) for n in os.listdir("/home/user/d"))
last = int(open("/home/user/last").read())
m = names[-1]
assert names == list(range(1, m + 1)), "holes in d/"
assert m in (last, last + 1), f"d/ ends at {m} but last says {last}"
print(m)
EOF"#;
    for round in 0..3 {
        let (forks, result) = fork(&[&parent.id]);
        assert_eq!(result["implicit_snapshot"], true);
        let out = forks[0].sh(check);
        assert_eq!(out.code, 0, "round {round}: inconsistent snapshot: {out:?}");
    }
    // The writer was frozen, not killed.
    let n1 = parent.sh_ok("cat /home/user/last");
    assert!(eventually(Duration::from_secs(5), || parent
        .sh_ok("cat /home/user/last")
        != n1));
}

#[test]
fn restore_rolls_a_sandbox_back_in_place() {
    let Some(_g) = shared() else { return };
    let sbx = create(&["--env", "KEEP=yes"]);
    sbx.sh_ok("echo v1 > /home/user/file");
    let before = sbx.info();
    let machine_id = sbx.sh_ok("cat /etc/machine-id");
    let snap = snapshot(&sbx, &[]);
    let snap_id = snap["snapshot_id"].as_str().unwrap();
    sbx.sh_ok("echo v2 > /home/user/file; echo new > /home/user/added");
    sbx.root_ok("rm /etc/hostname.bak 2>/dev/null; rm -f /etc/issue.net");

    let out = cli_ok(&["sandbox", "restore", &sbx.id, snap_id, "--json"]);
    let after: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["ip"], before["ip"]);
    assert_eq!(after["hostname"], before["hostname"]);
    assert_ne!(after["pid"], before["pid"], "processes restart on restore");
    assert_eq!(sbx.sh_ok("cat /home/user/file"), "v1\n");
    assert!(sbx.sh("test -e /home/user/added").code != 0);
    assert_eq!(sbx.sh_ok("test -e /etc/issue.net && echo back"), "back\n");
    assert_eq!(sbx.sh_ok("cat /etc/machine-id"), machine_id);
    assert_eq!(sbx.sh_ok("echo $KEEP"), "yes\n", "env survives a restore");
    assert_eq!(
        sbx.sh_ok("hostname"),
        format!("{}\n", before["hostname"].as_str().unwrap())
    );
    // Restore again after more changes, and a second snapshot stacked on the restored state.
    sbx.sh_ok("echo v3 > /home/user/file");
    let snap2 = snapshot(&sbx, &[]);
    assert_eq!(snap2["parent_snapshot_id"], snap["snapshot_id"]);
    assert_eq!(
        snap2["depth"].as_u64(),
        snap["depth"].as_u64().map(|d| d + 1)
    );
    sbx.sh_ok("echo v4 > /home/user/file");
    cli_ok(&[
        "sandbox",
        "restore",
        &sbx.id,
        snap2["snapshot_id"].as_str().unwrap(),
    ]);
    assert_eq!(sbx.sh_ok("cat /home/user/file"), "v3\n");

    // Its services answer at its address at once (the host's neighbour entry for its IP
    // still holds: the restarted eth0 has the slot's MAC).
    assert_eq!(serves_at(&sbx, 8000), "v3\n");

    // Only its own snapshots: another sandbox's is refused, and that sandbox is untouched.
    let other = create(&[]);
    let out = cli(&["sandbox", "restore", &other.id, snap_id]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("restores only its own snapshots"),
        "{out:?}"
    );
    assert_eq!(other.sh_ok("echo alive"), "alive\n");
}

/// Starts a web server in the sandbox's /home/user and fetches `file` from the host at the
/// sandbox's address (10 s at most).
fn serves_at(sbx: &Sandbox, port: u16) -> String {
    sbx.sh_ok(&format!(
        "cd /home/user && (nohup python3 -m http.server {port} >/dev/null 2>&1 &); \
         for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/{port}) 2>/dev/null && break; sleep 0.05; done"
    ));
    let ip = sbx.info()["ip"].as_str().unwrap().to_string();
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .expect("connecting to the sandbox's address");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /file HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out)
        .expect("the sandbox's server answers");
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

#[test]
fn pause_keeps_memory_or_files_and_resume_brings_it_back() {
    let Some(_g) = shared() else { return };
    let sbx = create(&[]);
    sbx.sh_ok("echo kept > /home/user/file");
    let pid = sbx.info()["pid"].clone();

    // A memory pause: frozen; a resume is a thaw of the same processes.
    let paused: Value =
        serde_json::from_str(&cli_ok(&["sandbox", "pause", &sbx.id, "--json"])).unwrap();
    assert_eq!(paused["state"], "paused");
    let again = cli(&["sandbox", "pause", &sbx.id]);
    assert!(
        again.code != 0 && again.stderr.contains("already paused"),
        "{again:?}"
    );
    assert!(sbx.sh("true").code != 0, "a paused sandbox runs nothing");
    let back: Value =
        serde_json::from_str(&cli_ok(&["sandbox", "resume", &sbx.id, "--json"])).unwrap();
    assert_eq!(back["resumed"], "thawed");
    assert_eq!(back["pid"], pid);
    let running: Value =
        serde_json::from_str(&cli_ok(&["sandbox", "resume", &sbx.id, "--json"])).unwrap();
    assert_eq!(running["resumed"], "was_running");

    // A filesystem pause: the processes stop; a resume boots afresh on the same files, at
    // the same address.
    cli_ok(&["sandbox", "pause", &sbx.id, "--filesystem"]);
    assert!(
        eventually(Duration::from_secs(10), || cgroup_dirs(&sbx.id).is_empty()),
        "a filesystem pause keeps no processes"
    );
    let back: Value =
        serde_json::from_str(&cli_ok(&["sandbox", "resume", &sbx.id, "--json"])).unwrap();
    assert_eq!(back["resumed"], "restored");
    assert_ne!(back["pid"], pid);
    assert_eq!(back["ip"], sbx.info()["ip"]);
    assert_eq!(sbx.sh_ok("cat /home/user/file"), "kept\n");
    assert_eq!(serves_at(&sbx, 8001), "kept\n");

    let events: Value =
        serde_json::from_str(&cli_ok(&["sandbox", "events", &sbx.id, "--json"])).unwrap();
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .filter(|k| matches!(*k, "paused" | "resumed"))
        .collect();
    assert_eq!(kinds, ["paused", "resumed", "paused", "resumed"]);

    // Bad input: an unknown sandbox.
    for verb in ["pause", "resume"] {
        let out = cli(&["sandbox", verb, "nosuchsandbox"]);
        assert!(
            out.code != 0 && out.stderr.contains("nosuchsandbox"),
            "{out:?}"
        );
    }
}
