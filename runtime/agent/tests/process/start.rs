//! Starting processes: output, exit codes, env, cwd, users, stdin and signals.

use super::*;

#[tokio::test]
async fn start_streams_output_and_exit_codes() {
    let agent = Agent::launch("root", "debug").await;

    let ok = agent.run("echo hi").await;
    assert!(ok.pid > 0);
    assert_eq!(ok.stdout(), "hi\n");
    assert_eq!(
        ok.end_json,
        r#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#
    );
    assert!(ok.stream_error.is_none());

    let failed = agent.run("echo oops >&2; exit 3").await;
    assert_eq!(String::from_utf8_lossy(&failed.stderr), "oops\n");
    assert!(failed.stdout.is_empty());
    let end = failed.end();
    assert_eq!((end.exit_code, end.exited), (3, true));
    assert_eq!(end.status, "exit status 3");
    assert_eq!(end.error.as_deref(), Some("exit status 3"));

    // Large output arrives complete and in order.
    let big = agent.run("seq 1 100000").await;
    let expected: String = (1..=100000).map(|i| format!("{i}\n")).collect();
    assert_eq!(big.stdout(), expected);

    // The shared client works against the agent as well.
    let mut stream = agent
        .client
        .server_stream::<_, ProcessEventMessage>(
            "process.Process/Start",
            &json!({"process": {"cmd": "/bin/echo", "args": ["via", "client"]}}),
            Some(60_000),
        )
        .await
        .unwrap();
    use futures::StreamExt;
    let mut events = Vec::new();
    while let Some(msg) = stream.next().await {
        events.push(msg.unwrap().event);
    }
    assert!(matches!(events[0], ProcessEvent::Start { .. }));
    assert!(matches!(events.last(), Some(ProcessEvent::End(e)) if e.exited && e.exit_code == 0));
}

#[tokio::test]
async fn output_streams_before_the_process_ends() {
    let agent = Agent::launch("root", "debug").await;
    let started = Instant::now();
    let mut events = agent
        .start(json!({"process": {"cmd": "/bin/bash", "args": ["-c", "echo first; sleep 2; echo second >&2"]}}))
        .await;
    events.expect_start().await;
    match events.event().await {
        ProcessEvent::Data(coppice_envd::process::DataEvent::Stdout(b)) => {
            assert_eq!(b, b"first\n")
        }
        other => panic!("expected stdout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "first output must not wait for the process to end"
    );
    let rest = events.collect().await;
    assert_eq!(String::from_utf8_lossy(&rest.stderr), "second\n");
    assert_eq!(rest.end().exit_code, 0);
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn env_vars_layer_sandbox_and_request() {
    let agent = Agent::launch("root", "debug").await;
    // Sandbox-wide env, as the host sets it through /init.
    let req = Request::post("/init")
        .header("host", "agent")
        .header("content-type", "application/json")
        .body(coppice_envd::client::full_body(
            r#"{"envVars":{"SANDBOX_VAR":"from-sandbox","BOTH":"sandbox"}}"#,
        ))
        .unwrap();
    assert!(agent.client.send(req).await.unwrap().status().is_success());

    let out = agent
        .start(json!({"process": {
            "cmd": "/bin/bash",
            "args": ["-c", "echo $SANDBOX_VAR $BOTH $REQ_VAR $HOME $USER $LOGNAME; echo $PATH"],
            "envs": {"BOTH": "request", "REQ_VAR": "r"}
        }}))
        .await
        .collect()
        .await;
    let stdout = out.stdout();
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next().unwrap(),
        "from-sandbox request r /root root root"
    );
    assert!(lines.next().unwrap().contains("/usr/bin"));
}

#[tokio::test]
async fn cwd_defaults_to_home_and_bad_cwd_is_rejected() {
    let agent = Agent::launch("root", "debug").await;
    assert_eq!(agent.run("pwd").await.stdout(), "/root\n");

    let out = agent
        .start(json!({"process": {"cmd": "/bin/pwd", "cwd": "/tmp"}}))
        .await
        .collect()
        .await;
    assert_eq!(out.stdout(), "/tmp\n");

    let Err((status, err)) = agent
        .stream(
            "Start",
            json!({"process": {"cmd": "/bin/pwd", "cwd": "/no/such/dir"}}),
            &[],
        )
        .await
    else {
        panic!("a bad cwd must fail")
    };
    assert_eq!(status, 400);
    assert_eq!(err.code, Code::InvalidArgument);
    assert_eq!(err.message, "cwd '/no/such/dir' does not exist");
}

#[tokio::test]
async fn runs_as_the_default_user_or_root_when_asked() {
    ensure_user_exists();
    let agent = Agent::launch("user", "debug").await;
    let script = json!({"process": {"cmd": "/bin/bash", "args": ["-c", "id -un; id -u; id -G; echo $HOME; pwd"]}});

    let as_default = agent
        .stream("Start", script.clone(), &[])
        .await
        .unwrap()
        .collect()
        .await;
    let user = nix::unistd::User::from_name("user").unwrap().unwrap();
    let home = user.dir.display().to_string();
    let stdout = as_default.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "user");
    assert_eq!(lines[1], user.uid.to_string());
    assert!(
        !lines[2].split(' ').any(|g| g == "0"),
        "root's groups must be dropped: {}",
        lines[2]
    );
    assert_eq!(lines[3], home);
    assert_eq!(lines[4], home);

    let as_user = agent
        .stream("Start", script.clone(), &[("authorization", USER)])
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(as_user.stdout(), as_default.stdout());

    let as_root = agent
        .stream("Start", script, &[("authorization", ROOT)])
        .await
        .unwrap()
        .collect()
        .await;
    let stdout = as_root.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(&lines[..2], ["root", "0"]);
    assert_eq!(lines[3], "/root");
}

#[tokio::test]
async fn stdin_takes_input_and_closes() {
    let agent = Agent::launch("root", "debug").await;
    let mut cat = agent
        .start(json!({"process": {"cmd": "/bin/cat"}, "tag": "cat"}))
        .await;
    let pid = cat.expect_start().await;
    agent
        .unary(
            "SendInput",
            json!({"process": {"pid": pid}, "input": {"stdin": "aGVsbG8K"}}),
        )
        .await
        .unwrap();
    cat.wait_for_output("hello\n").await;
    // By tag as well.
    agent
        .unary(
            "SendInput",
            json!({"process": {"tag": "cat"}, "input": {"stdin": "YWdhaW4K"}}),
        )
        .await
        .unwrap();
    cat.wait_for_output("again\n").await;
    agent
        .unary("CloseStdin", json!({"process": {"pid": pid}}))
        .await
        .unwrap();
    let rest = cat.collect().await;
    assert_eq!(rest.end().exit_code, 0);
    assert!(rest.end().exited);

    // stdin: false gives the process EOF at once.
    let out = agent
        .start(json!({"process": {"cmd": "/bin/cat"}, "stdin": false}))
        .await
        .collect()
        .await;
    assert_eq!(out.end().status, "exit status 0");

    let err = agent
        .unary(
            "SendInput",
            json!({"process": {"pid": 999999}, "input": {"stdin": "YQ=="}}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound);
}

#[tokio::test]
async fn stream_input_writes_each_envelope_as_it_arrives() {
    let agent = Agent::launch("root", "debug").await;
    let mut cat = agent.start(json!({"process": {"cmd": "/bin/cat"}})).await;
    let pid = cat.expect_start().await;

    // A chunked request body fed over time, like Python's client sends it.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = Request::post("/process.Process/StreamInput")
        .header("host", "agent")
        .header("content-type", STREAM_CONTENT_TYPE)
        .header("connect-protocol-version", "1")
        .body(http_body_util::BodyExt::boxed_unsync(body))
        .unwrap();
    let client = agent.client.clone();
    let call = tokio::spawn(async move { client.send(req).await });

    let envelope = |v: Value| Ok(Frame::data(encode_envelope(0, v.to_string().as_bytes())));
    tx.send(envelope(json!({"start": {"process": {"pid": pid}}})))
        .await
        .unwrap();
    tx.send(envelope(json!({"data": {"input": {"stdin": "YQ=="}}})))
        .await
        .unwrap();
    // The input reaches the process while the request body is still open.
    cat.wait_for_output("a").await;
    tx.send(envelope(json!({"keepalive": {}}))).await.unwrap();
    tx.send(envelope(json!({"data": {"input": {"stdin": "Yg=="}}})))
        .await
        .unwrap();
    cat.wait_for_output("b").await;
    drop(tx);

    let resp = call.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], STREAM_CONTENT_TYPE);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let mut decoder = EnvelopeDecoder::default();
    decoder.push(&body);
    let first = decoder.next_envelope().unwrap().unwrap();
    assert_eq!((first.flags, &first.data[..]), (0, &b"{}"[..]));
    let end = decoder.next_envelope().unwrap().unwrap();
    assert!(end.is_end_stream());
    assert_eq!(&end.data[..], b"{}");

    agent
        .unary("CloseStdin", json!({"process": {"pid": pid}}))
        .await
        .unwrap();
    assert_eq!(cat.collect().await.end().exit_code, 0);
}

#[tokio::test]
async fn signals_reach_the_process_group() {
    let agent = Agent::launch("root", "debug").await;
    let mut sleeper = agent
        .start(json!({"process": {"cmd": "/bin/sleep", "args": ["30"]}}))
        .await;
    let pid = sleeper.expect_start().await;
    agent
        .unary(
            "SendSignal",
            json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGTERM"}),
        )
        .await
        .unwrap();
    let out = sleeper.collect().await;
    assert_eq!(
        out.end_json,
        r#"{"event":{"end":{"exitCode":-1,"status":"signal: terminated","error":"signal: terminated"}}}"#
    );

    // SIGKILL takes the shell's children with it.
    let mut shell = agent
        .start(json!({"process": {"cmd": "/bin/bash", "args": ["-c", "sleep 30 & echo $!; wait"]}}))
        .await;
    let pid = shell.expect_start().await;
    let text = shell.wait_for_output("\n").await;
    let grandchild: u32 = text.trim().parse().unwrap();
    assert!(proc_exists(grandchild));
    agent
        .unary(
            "SendSignal",
            json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await
        .unwrap();
    let out = shell.collect().await;
    assert_eq!(out.end().status, "signal: killed");
    assert!(!out.end().exited);
    eventually("the backgrounded sleep is killed and reaped", || {
        !proc_exists(grandchild)
    })
    .await;

    let err = agent
        .unary(
            "SendSignal",
            json!({"process": {"pid": 999999}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound);
    assert_eq!(err.message, "process with pid 999999 not found");
}
