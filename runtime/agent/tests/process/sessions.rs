//! Running processes: connect, list, PTYs, timeouts, keepalives, failures, orphans and reuse.

use super::*;

#[tokio::test]
async fn connect_watches_a_running_or_finished_process() {
    let agent = Agent::launch("root", "debug").await;
    let mut first = agent
        .start(json!({
            "process": {"cmd": "/bin/bash", "args": ["-c", "read line; echo got $line; sleep 0.3; echo bye"]},
            "tag": "watched"
        }))
        .await;
    let pid = first.expect_start().await;

    // Two more watchers, by pid and by tag.
    let mut second = agent
        .stream("Connect", json!({"process": {"pid": pid}}), &[])
        .await
        .unwrap();
    assert_eq!(second.expect_start().await, pid);
    let mut third = agent
        .stream("Connect", json!({"process": {"tag": "watched"}}), &[])
        .await
        .unwrap();
    assert_eq!(third.expect_start().await, pid);

    agent
        .unary(
            "SendInput",
            json!({"process": {"pid": pid}, "input": {"stdin": "eAo="}}),
        )
        .await
        .unwrap();
    for watcher in [first, second, third] {
        let out = watcher.collect().await;
        assert_eq!(out.stdout(), "got x\nbye\n");
        assert_eq!(out.end().exit_code, 0);
    }

    // A late Connect gets the start and the retained end.
    let late = agent
        .stream("Connect", json!({"process": {"pid": pid}}), &[])
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(late.pid, pid);
    assert!(late.stdout.is_empty());
    assert_eq!(late.end().status, "exit status 0");

    let Err((status, err)) = agent
        .stream("Connect", json!({"process": {"pid": 999999}}), &[])
        .await
    else {
        panic!("unknown pid must fail")
    };
    assert_eq!((status, err.code), (404, Code::NotFound));
}

#[tokio::test]
async fn list_shows_running_processes_with_tags_and_survives_disconnects() {
    let agent = Agent::launch("root", "debug").await;
    let mut events = agent
        .start(json!({
            "process": {"cmd": "/bin/sleep", "args": ["30"], "envs": {"K": "V"}},
            "tag": "sleeper"
        }))
        .await;
    let pid = events.expect_start().await;
    // The client goes away; the process must keep running.
    drop(events);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let list = agent.unary("List", json!({})).await.unwrap();
    let procs = list["processes"].as_array().unwrap();
    let entry = procs
        .iter()
        .find(|p| p["pid"] == pid)
        .expect("listed while running");
    assert_eq!(entry["tag"], "sleeper");
    assert_eq!(
        entry["config"],
        json!({"cmd": "/bin/sleep", "args": ["30"], "envs": {"K": "V"}})
    );
    assert!(proc_exists(pid));

    agent
        .unary(
            "SendSignal",
            json!({"process": {"tag": "sleeper"}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await
        .unwrap();
    let agent_ref = &agent;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = agent_ref.unary("List", json!({})).await.unwrap();
        if !list["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == pid)
        {
            break;
        }
        assert!(Instant::now() < deadline, "killed process still listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn pty_sessions_take_input_and_resize() {
    let agent = Agent::launch("root", "debug").await;
    let mut shell = agent
        .start(json!({
            "process": {
                "cmd": "/bin/bash",
                "args": ["--norc", "--noprofile", "-i"],
                "envs": {"TERM": "xterm-256color", "PS1": "$ "}
            },
            "pty": {"size": {"cols": 80, "rows": 24}}
        }))
        .await;
    let pid = shell.expect_start().await;
    let input = |text: &str| {
        use base64::Engine;
        json!({"process": {"pid": pid}, "input": {"pty": base64::engine::general_purpose::STANDARD.encode(text)}})
    };

    agent
        .unary("SendInput", input("tty; echo result=$((6*7))\n"))
        .await
        .unwrap();
    let text = shell.wait_for_output("result=42").await;
    assert!(text.contains("/dev/pts/"), "stdin is a terminal: {text}");

    agent
        .unary(
            "Update",
            json!({"process": {"pid": pid}, "pty": {"size": {"cols": 100, "rows": 40}}}),
        )
        .await
        .unwrap();
    agent
        .unary("SendInput", input("echo size=$(stty size)\n"))
        .await
        .unwrap();
    shell.wait_for_output("size=40 100").await;

    // Stdin input and CloseStdin are for pipes, not PTYs.
    let err = agent
        .unary(
            "SendInput",
            json!({"process": {"pid": pid}, "input": {"stdin": "YQ=="}}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::Internal);

    agent.unary("SendInput", input("exit 5\n")).await.unwrap();
    let out = shell.collect().await;
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    assert_eq!(out.end().exit_code, 5);
}

#[tokio::test]
async fn connect_timeout_kills_the_process() {
    let agent = Agent::launch("root", "debug").await;
    let started = Instant::now();
    let mut events = agent
        .stream(
            "Start",
            json!({"process": {"cmd": "/bin/bash", "args": ["-c", "sleep 30 & sleep 30"]}}),
            &[("connect-timeout-ms", "1000")],
        )
        .await
        .unwrap();
    let pid = events.expect_start().await;
    let out = events.collect().await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.end().status, "signal: killed");
    assert_eq!(out.end().exit_code, -1);
    // The SDKs raise their timeout error from this.
    assert_eq!(
        out.stream_error.as_ref().map(|e| e.code),
        Some(Code::DeadlineExceeded)
    );
    assert!(!proc_exists(pid));

    // 0 means no limit.
    let out = agent
        .stream(
            "Start",
            json!({"process": {"cmd": "/bin/sleep", "args": ["1.2"]}}),
            &[("connect-timeout-ms", "0")],
        )
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(out.end().exit_code, 0);
    assert!(out.stream_error.is_none());
}

#[tokio::test]
async fn keepalives_fill_silences() {
    let agent = Agent::launch("root", "debug").await;
    let out = agent
        .stream(
            "Start",
            json!({"process": {"cmd": "/bin/sleep", "args": ["2.5"]}}),
            &[("keepalive-ping-interval", "1")],
        )
        .await
        .unwrap()
        .collect()
        .await;
    assert!(out.keepalives >= 1, "got {} keepalives", out.keepalives);
    assert_eq!(out.end().exit_code, 0);
}

#[tokio::test]
async fn a_missing_binary_fails_the_start() {
    let agent = Agent::launch("root", "debug").await;
    let Err((status, err)) = agent
        .stream(
            "Start",
            json!({"process": {"cmd": "/no/such/binary", "args": ["x"]}}),
            &[],
        )
        .await
    else {
        panic!("exec of a missing binary must fail")
    };
    assert_eq!(status, 400);
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(
        err.message
            .starts_with("error starting process '/no/such/binary x'"),
        "{}",
        err.message
    );
    // The agent is fine afterwards.
    assert_eq!(agent.run("echo still here").await.stdout(), "still here\n");
}

#[tokio::test]
async fn orphans_are_reaped() {
    let agent = Agent::launch("root", "debug").await;
    // The shell exits at once; its background sleep is orphaned and comes to the agent.
    let out = agent.run("sleep 2 & echo $!").await;
    let orphan: u32 = out.stdout().trim().parse().unwrap();
    assert_eq!(out.end().exit_code, 0);
    let (_, ppid) = proc_state(orphan).expect("the orphan is still sleeping");
    assert_eq!(ppid, agent.pid(), "orphans are reparented to the agent");
    eventually("the orphan is reaped, not left a zombie", || {
        !proc_exists(orphan)
    })
    .await;
    // No zombies are left among the agent's children.
    let zombies: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| proc_state(*pid) == Some(('Z', agent.pid())))
        .collect();
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");
}

#[tokio::test]
async fn connect_timeout_on_connect_ends_only_the_stream() {
    let agent = Agent::launch("root", "debug").await;
    let mut events = agent
        .start(json!({"process": {"cmd": "/bin/sleep", "args": ["30"]}}))
        .await;
    let pid = events.expect_start().await;
    let watched = agent
        .stream(
            "Connect",
            json!({"process": {"pid": pid}}),
            &[("connect-timeout-ms", "500")],
        )
        .await
        .unwrap()
        .collect()
        .await;
    assert!(watched.end.is_none());
    assert_eq!(
        watched.stream_error.map(|e| e.code),
        Some(Code::DeadlineExceeded)
    );
    // The process is untouched.
    assert!(proc_exists(pid));
    agent
        .unary(
            "SendSignal",
            json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await
        .unwrap();
    let out = events.collect().await;
    assert_eq!(out.end().status, "signal: killed");
    assert!(out.stream_error.is_none());
}

#[tokio::test]
async fn idle_connections_are_reused_and_a_killed_agent_fails_cleanly() {
    let mut agent = Agent::launch("root", "warn").await;
    let socket = agent.client.socket().to_path_buf();
    let pooled = || coppice_envd::client::idle_connections(&socket);
    eventually("the health check's connection is idle", || pooled() == 1).await;
    // Sequential calls, from the client and from a new client for the same agent, go on the
    // one idle connection: there is never a second one.
    for _ in 0..5 {
        assert_eq!(agent.run("true").await.end.unwrap().exit_code, 0);
        assert!(agent.unary("List", json!({})).await.is_ok());
        assert!(coppice_envd::AgentClient::new(&socket).healthy().await);
        eventually("the connection is idle again", || pooled() == 1).await;
    }
    // While a stream holds a connection, another call opens a second one; both end up idle.
    let events = agent.start(json!({"process": {"cmd": "/bin/sleep", "args": ["0.3"]}}));
    let events = events.await;
    assert!(agent.unary("List", json!({})).await.is_ok());
    assert_eq!(events.collect().await.end.unwrap().exit_code, 0);
    eventually("both connections idle", || pooled() == 2).await;

    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let t0 = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), agent.unary("List", json!({})))
        .await
        .expect("a call to a dead agent returns instead of hanging")
        .unwrap_err();
    assert_eq!(err.code, Code::Unavailable, "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(pooled(), 0, "closed connections are dropped");
}
