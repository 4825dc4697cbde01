//! Commands and the agent API through the daemon: streaming, env, stdin, signals, PTYs, files, watchers.

use super::*;

#[test]
fn exec_streams_output_as_it_happens() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    let req = json!({ "cmd": ["bash", "-c", "echo first; sleep 2; echo second"] });
    let (status, mut body) = http(
        "POST",
        &format!("/api/v1/sandboxes/{}/exec", sb.id),
        "application/json",
        req.to_string().as_bytes(),
    );
    assert_eq!(status, 200);
    let (mut buf, mut stdout, mut first_at, mut exit) = (Vec::new(), String::new(), None, None);
    while let Some(chunk) = body.chunk() {
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let ev: Value = serde_json::from_slice(&line).unwrap();
            match ev["type"].as_str().unwrap() {
                "stdout" => {
                    stdout.push_str(&String::from_utf8(unb64(&ev["data"])).unwrap());
                    if stdout.contains("first") && first_at.is_none() {
                        first_at = Some(Instant::now());
                    }
                }
                "exit" => exit = Some(ev),
                _ => {}
            }
        }
    }
    let gap = first_at.expect("no 'first' line").elapsed();
    assert_eq!(stdout, "first\nsecond\n");
    assert!(
        gap > Duration::from_secs(1),
        "output was not streamed: first line only {gap:?} before the end"
    );
    assert_eq!(exit.expect("exit event")["exit_code"], 0);
}

#[test]
fn exec_env_cwd_and_exit_codes() {
    let Some(_g) = shared() else { return };
    let sb = create(&["--env", "SANDBOX_WIDE=yes", "--meta", "owner=e2e"]);
    assert_eq!(sb.info()["metadata"]["owner"], "e2e");
    assert_eq!(
        sb.sh_ok("echo $SANDBOX_WIDE; sh -c 'echo nested:$SANDBOX_WIDE'"),
        "yes\nnested:yes\n"
    );
    assert_eq!(
        sb.exec(&["--user", "root", "--", "sh", "-c", "echo $SANDBOX_WIDE"])
            .stdout,
        "yes\n"
    );
    let out = sb.exec(&[
        "--env",
        "ONE_EXEC=1",
        "--",
        "sh",
        "-c",
        "echo $ONE_EXEC-$SANDBOX_WIDE",
    ]);
    assert_eq!(out.stdout, "1-yes\n");
    assert_eq!(
        sb.sh_ok("echo ${ONE_EXEC:-unset}"),
        "unset\n",
        "per-exec env leaked into the next command"
    );

    assert_eq!(sb.exec(&["--cwd", "/tmp", "--", "pwd"]).stdout, "/tmp\n");
    assert_eq!(sb.exec(&["--", "pwd"]).stdout, "/home/user\n");

    assert_eq!(sb.sh("exit 42").code, 42);
    assert_eq!(sb.sh("exit 0").code, 0);
    let out = sb.sh("echo out; echo err >&2; exit 3");
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (3, "out\n", "err\n")
    );
    assert_eq!(sb.sh("kill -9 $$").code, 137);
    let t0 = Instant::now();
    assert_ne!(sb.exec(&["--timeout", "1s", "--", "sleep", "30"]).code, 0);
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "--timeout did not stop the command"
    );
}

#[test]
fn stdin_signals_and_pty_through_the_envd_proxy() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    let id = sb.id.as_str();

    // stdin: cat echoes what is sent, then exits when stdin closes.
    let mut cat = connect_stream(
        id,
        "process.Process/Start",
        json!({ "process": { "cmd": "cat" }, "stdin": true }),
    );
    let pid = cat.started();
    let input = json!({ "process": { "pid": pid }, "input": { "stdin": b64(b"hello stdin\n") } });
    assert_eq!(unary(id, "process.Process/SendInput", input).0, 200);
    assert_eq!(
        unary(
            id,
            "process.Process/CloseStdin",
            json!({ "process": { "pid": pid } })
        )
        .0,
        200
    );
    let (out, _, end) = cat.until_end();
    assert_eq!(String::from_utf8(out).unwrap(), "hello stdin\n");
    assert_eq!(end["exited"], true);
    assert!(end.get("exitCode").is_none(), "cat failed: {end}");

    // Signals, by tag: the process ends by that signal.
    let start = json!({ "process": { "cmd": "sleep", "args": ["60"] }, "tag": "sleeper" });
    let mut sleeper = connect_stream(id, "process.Process/Start", start);
    sleeper.started();
    let (_, list) = unary(id, "process.Process/List", json!({}));
    assert!(
        list["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["tag"] == "sleeper"),
        "{list}"
    );
    let signal = json!({ "process": { "tag": "sleeper" }, "signal": "SIGNAL_SIGTERM" });
    assert_eq!(unary(id, "process.Process/SendSignal", signal).0, 200);
    let (_, _, end) = sleeper.until_end();
    assert_eq!(end["status"], "signal: terminated", "{end}");

    // A PTY of the requested size, driven by pty input.
    let start = json!({ "process": { "cmd": "bash", "args": ["-i"] }, "pty": { "size": { "cols": 100, "rows": 30 } } });
    let mut shell = connect_stream(id, "process.Process/Start", start);
    let pid = shell.started();
    let input =
        json!({ "process": { "pid": pid }, "input": { "pty": b64(b"stty size; tty; exit 3\n") } });
    assert_eq!(unary(id, "process.Process/SendInput", input).0, 200);
    let (out, _, end) = shell.until_end();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("30 100"), "pty size not applied: {out:?}");
    assert!(out.contains("/dev/pts/"), "not a terminal: {out:?}");
    assert_eq!(end["exitCode"], 3, "{end}");
}

#[test]
fn large_file_round_trip_and_listing() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (up, down) = (dir.path().join("up.bin"), dir.path().join("down.bin"));
    let mut data = Vec::with_capacity(50 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while data.len() < 50 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&up, &data).unwrap();

    cli_ok(&[
        "files",
        "put",
        &sb.id,
        path_str(&up),
        "/home/user/data/big.bin",
    ]);
    assert_eq!(
        sb.sh_ok("stat -c '%s %U' /home/user/data/big.bin"),
        format!("{} user\n", 50 << 20)
    );
    cli_ok(&[
        "files",
        "get",
        &sb.id,
        "/home/user/data/big.bin",
        path_str(&down),
    ]);
    let back = std::fs::read(&down).unwrap();
    assert!(
        back == data,
        "the downloaded bytes differ ({} vs {} bytes)",
        back.len(),
        data.len()
    );

    let ls: Value = serde_json::from_str(&cli_ok(&[
        "files",
        "ls",
        &sb.id,
        "/home/user/data",
        "--json",
    ]))
    .unwrap();
    let entries = ls.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{ls}");
    assert_eq!(entries[0]["name"], "big.bin");
    assert_eq!(entries[0]["path"], "/home/user/data/big.bin");
    sb.sh_ok("mkdir -p /home/user/data/sub/deeper && touch /home/user/data/sub/deeper/f");
    let deep = cli_ok(&["files", "ls", &sb.id, "/home/user/data", "--depth", "3"]);
    assert!(deep.contains("/home/user/data/sub/deeper/f"), "{deep}");
    let shallow = cli_ok(&["files", "ls", &sb.id, "/home/user/data"]);
    assert!(
        shallow.contains("/home/user/data/sub") && !shallow.contains("deeper"),
        "{shallow}"
    );
}

#[test]
fn filesystem_watchers_through_the_envd_proxy() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    let id = sb.id.as_str();
    sb.sh_ok("mkdir -p /home/user/watched");

    // Polling watcher.
    let (status, created) = unary(
        id,
        "filesystem.Filesystem/CreateWatcher",
        json!({ "path": "/home/user/watched" }),
    );
    assert_eq!(status, 200, "{created}");
    let watcher = created["watcherId"].as_str().unwrap().to_string();
    sb.sh_ok("echo x > /home/user/watched/polled.txt");
    let mut names = Vec::new();
    let seen = eventually(Duration::from_secs(5), || {
        let (_, evs) = unary(
            id,
            "filesystem.Filesystem/GetWatcherEvents",
            json!({ "watcherId": watcher }),
        );
        for ev in evs["events"].as_array().into_iter().flatten() {
            names.push((
                ev["name"].as_str().unwrap_or("").to_string(),
                ev["type"].as_str().unwrap_or("").to_string(),
            ));
        }
        names
            .iter()
            .any(|(n, t)| n == "polled.txt" && t == "EVENT_TYPE_CREATE")
    });
    assert!(seen, "no create event for polled.txt: {names:?}");
    let (status, _) = unary(
        id,
        "filesystem.Filesystem/RemoveWatcher",
        json!({ "watcherId": watcher }),
    );
    assert_eq!(status, 200);

    // Streaming WatchDir.
    let mut watch = connect_stream(
        id,
        "filesystem.Filesystem/WatchDir",
        json!({ "path": "/home/user/watched" }),
    );
    let first = watch.next().expect("start message");
    assert!(first.get("start").is_some(), "{first}");
    sb.sh_ok("echo y > /home/user/watched/streamed.txt");
    loop {
        let msg = watch.next().expect("the watch ended before the event came");
        if msg["filesystem"]["name"] == "streamed.txt" {
            assert_eq!(msg["filesystem"]["type"], "EVENT_TYPE_CREATE", "{msg}");
            break;
        }
    }
}
