//! Fork fan-out and teardown, parents and forks, lineage across restarts, bad input.

use super::*;

#[test]
fn a_hundred_forks_fan_out_and_tear_down_leaving_nothing() {
    let Some(_g) = exclusive() else { return };
    let d = daemon();
    let parent = create(&[]);
    parent.sh_ok("echo base > /home/user/base");
    // Baselines once the warm pool (one sandbox) has refilled after the parent's create.
    assert!(eventually(Duration::from_secs(20), || {
        host_ifs() == listed_ids().len() + 1 && memory_cgroups() == listed_ids().len() + 1
    }));
    let (ifs0, cgroups0, mounts0) = (host_ifs(), memory_cgroups(), state_mounts());

    let (forks, result) = fork(&[&parent.id, "--count", "100", "--timeout", "10m"]);
    assert_eq!(result["created"], 100, "{result}");
    assert_eq!(forks.len(), 100);
    let implicit = result["snapshot_id"].as_str().unwrap().to_string();
    // Every fork's agent answers, from several threads at once.
    let ids: Vec<String> = forks.iter().map(|f| f.id.clone()).collect();
    std::thread::scope(|s| {
        for chunk in ids.chunks(10) {
            s.spawn(move || {
                for id in chunk {
                    let out = cli(&["exec", id, "--", "cat", "/home/user/base"]);
                    assert_eq!(out.stdout, "base\n", "fork {id}: {out:?}");
                }
            });
        }
    });
    assert_eq!(host_ifs(), ifs0 + 100);
    assert_eq!(memory_cgroups(), cgroups0 + 100);

    // Tear down from several threads; everything of theirs must go.
    std::thread::scope(|s| {
        for chunk in forks.chunks(10) {
            s.spawn(move || {
                for f in chunk {
                    cli_ok(&["sandbox", "kill", &f.id]);
                }
            });
        }
    });
    std::mem::forget(forks); // already killed
    for id in &ids {
        assert!(cgroup_dirs(id).is_empty(), "cgroups of {id} left");
    }
    assert!(
        eventually(Duration::from_secs(20), || {
            host_ifs() == ifs0
                && memory_cgroups() == cgroups0
                && ids
                    .iter()
                    .all(|id| !d.state.join("sandboxes").join(id).exists())
        }),
        "leaked: {} interfaces (was {ifs0}), {} cgroups (was {cgroups0})",
        host_ifs(),
        memory_cgroups()
    );
    assert_eq!(state_mounts(), mounts0, "host mounts under the state dir");
    // Their upper subvolumes went with them.
    for id in &ids {
        assert!(
            !d.state.join("btrfs/uppers").join(id).exists(),
            "upper of {id} left"
        );
    }
    // The implicit snapshot goes with its last fork.
    let layer = d.state.join("snapshots").join(&implicit);
    let subvolume = d.state.join("btrfs/snapshots").join(&implicit);
    assert!(
        // (Only this one: implicit snapshots of earlier tests may still be collected meanwhile.)
        eventually(Duration::from_secs(10), || !layer.exists()
            && !subvolume.exists()
            && !snapshot_ids().contains(&implicit)),
        "implicit snapshot {implicit} left behind"
    );
    assert_eq!(parent.sh_ok("cat /home/user/base"), "base\n");
}

#[test]
fn killing_a_parent_leaves_its_forks_running() {
    let Some(_g) = shared() else { return };
    let parent = create(&[]);
    parent.sh_ok("echo inherited > /home/user/f");
    let (forks, result) = fork(&[&parent.id, "--count", "2"]);
    assert_eq!(forks.len(), 2, "{result}");
    let parent_id = parent.id.clone();
    drop(parent); // kills it
    assert!(!listed_ids().contains(&parent_id));
    for f in &forks {
        assert_eq!(f.sh_ok("cat /home/user/f"), "inherited\n");
        f.sh_ok("echo more >> /home/user/f");
    }
    let lineage: Value =
        serde_json::from_str(&cli_ok(&["sandbox", "lineage", &forks[0].id, "--json"])).unwrap();
    let ancestors = lineage["ancestors"].as_array().unwrap();
    assert_eq!(ancestors[1]["id"], parent_id.as_str());
    assert_eq!(ancestors[1]["alive"], false);
    // The implicit snapshot stays while a fork stands on it, and is refused deletion.
    let snap = result["snapshot_id"].as_str().unwrap();
    let out = cli(&["snapshot", "delete", snap]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("in use"), "{out:?}");
    drop(forks);
    assert!(
        eventually(Duration::from_secs(10), || !snapshot_ids()
            .contains(&snap.to_string())),
        "implicit snapshot not removed after its forks"
    );
}

#[test]
fn lineage_survives_a_daemon_restart() {
    let Some(_g) = exclusive() else { return };
    let d = daemon();
    let root = create(&[]);
    root.sh_ok("echo gen0 > /home/user/g");
    let s1 = snapshot(&root, &[]);
    let (mut gen1, _) = fork(&["--snapshot", s1["snapshot_id"].as_str().unwrap()]);
    let gen1 = gen1.remove(0);
    gen1.sh_ok("echo gen1 >> /home/user/g");
    let s2 = snapshot(&gen1, &["--meta", "step=2"]);
    assert_eq!(s2["parent_snapshot_id"], s1["snapshot_id"]);
    let (mut gen2, _) = fork(&["--snapshot", s2["snapshot_id"].as_str().unwrap()]);
    let gen2 = gen2.remove(0);

    d.kill9();
    d.start();

    // The btrfs image is mounted once (the restart found it mounted), and the snapshots'
    // subvolumes are still there.
    assert_eq!(storage_mounts(&d.state), 1, "btrfs image mounted again");
    for s in [&s1, &s2] {
        let sv = d
            .state
            .join("btrfs/snapshots")
            .join(s["snapshot_id"].as_str().unwrap());
        assert!(
            is_readonly_subvolume(&sv),
            "{} after the restart",
            sv.display()
        );
    }
    assert_eq!(gen2.sh_ok("cat /home/user/g"), "gen0\ngen1\n");
    let lineage: Value =
        serde_json::from_str(&cli_ok(&["sandbox", "lineage", &gen2.id, "--json"])).unwrap();
    let chain: Vec<&str> = lineage["ancestors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        chain,
        [
            s2["snapshot_id"].as_str().unwrap(),
            gen1.id.as_str(),
            s1["snapshot_id"].as_str().unwrap(),
            root.id.as_str()
        ]
    );
    let down: Value =
        serde_json::from_str(&cli_ok(&["sandbox", "lineage", &root.id, "--json"])).unwrap();
    let descendants: Vec<&str> = down["descendants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert!(descendants.contains(&gen2.id.as_str()), "{down}");
    let info: Value = serde_json::from_str(&cli_ok(&[
        "snapshot",
        "info",
        s2["snapshot_id"].as_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(info["metadata"]["step"], "2");
    assert_eq!(info["dependant_sandboxes"], json!([gen2.id]));
    // Deletion rules still hold after the restart, and forking still works.
    assert_ne!(
        cli(&["snapshot", "delete", s1["snapshot_id"].as_str().unwrap()]).code,
        0
    );
    let (gen2b, _) = fork(&["--snapshot", s2["snapshot_id"].as_str().unwrap()]);
    assert_eq!(gen2b[0].sh_ok("cat /home/user/g"), "gen0\ngen1\n");
}

#[test]
fn bad_input_is_refused_and_creates_nothing() {
    let Some(_g) = shared() else { return };
    let marker = format!("bad-{}", std::process::id());
    let meta = format!("test={marker}");
    let sbx = create(&[]);
    let snaps_of = |id: &str| -> usize {
        let v: Value =
            serde_json::from_str(&cli_ok(&["snapshot", "list", "--sandbox", id, "--json"]))
                .unwrap();
        v.as_array().unwrap().len()
    };

    let out = cli(&[
        "sandbox",
        "fork",
        "--snapshot",
        "nosuchsnapshot",
        "--meta",
        &meta,
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("snapshot 'nosuchsnapshot' not found"),
        "{out:?}"
    );
    for count in ["0", "101"] {
        let out = cli(&[
            "sandbox", "fork", &sbx.id, "--count", count, "--meta", &meta,
        ]);
        assert_ne!(out.code, 0);
        assert!(
            out.stderr.contains("count must be between 1 and 100"),
            "{out:?}"
        );
    }
    let out = cli(&[
        "sandbox", "fork", &sbx.id, "--memory", "1K", "--meta", &meta,
    ]);
    assert!(out.stderr.contains("memory limit"), "{out:?}");
    assert_eq!(
        snaps_of(&sbx.id),
        0,
        "a refused fork left an implicit snapshot"
    );

    // Memory state (CRIU, installed by setup.sh): the CLI and the API take it and say so;
    // runtime/tests/memory tests what forks of it resume, and the refusal without CRIU.
    let out = cli(&["snapshot", "create", &sbx.id, "--memory-state", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let mem: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(mem["kind"], "memory", "{mem}");
    let (code, again) = api(
        "POST",
        &format!("/api/v1/sandboxes/{}/snapshots", sbx.id),
        Some(json!({"kind": "memory"})),
    );
    assert_eq!(code, 201, "{again}");
    assert_eq!(again["kind"], "memory");
    for s in [&mem, &again] {
        let id = s["snapshot_id"].as_str().unwrap();
        assert_eq!(cli(&["snapshot", "delete", id]).code, 0);
    }
    assert_eq!(snaps_of(&sbx.id), 0);

    // Names are unique and checked.
    let name = format!("n{}", std::process::id());
    snapshot(&sbx, &["--name", &name]);
    let out = cli(&["snapshot", "create", &sbx.id, "--name", &name]);
    assert!(out.stderr.contains("already exists"), "{out:?}");
    let out = cli(&["snapshot", "create", &sbx.id, "--name", "bad/name"]);
    assert!(out.stderr.contains("must be 1-64 characters"), "{out:?}");
    assert_eq!(snaps_of(&sbx.id), 1);
    let out = cli(&["snapshot", "delete", "nosuchsnapshot"]);
    assert_eq!(out.code, 2, "{out:?}");

    // Forking or snapshotting a dead sandbox.
    let dead = sbx.id.clone();
    drop(sbx);
    let out = cli(&["sandbox", "fork", &dead, "--meta", &meta]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("not found"), "{out:?}");
    let out = cli(&["snapshot", "create", &dead]);
    assert_eq!(out.code, 2, "{out:?}");
    // Nothing was created by any of it.
    let list: Value = serde_json::from_str(&cli_ok(&["sandbox", "list", "--json"])).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|s| s["metadata"]["test"] != marker.as_str()),
        "a refused fork created a sandbox"
    );
    // The named snapshot outlives its sandbox and can be deleted once nothing stands on it.
    cli_ok(&["snapshot", "delete", &name]);
}
