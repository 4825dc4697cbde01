//! Directory watchers: streamed and polled.

use super::*;

/// Reads `WatchDir` messages until `want` returns true for one, failing after 10 s.
async fn wait_for<S>(stream: &mut S, mut want: impl FnMut(&WatchDirResponse) -> bool)
where
    S: futures::Stream<Item = Result<WatchDirResponse, ConnectError>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let msg = stream.next().await.expect("stream ended").unwrap();
            if want(&msg) {
                return;
            }
        }
    })
    .await
    .expect("event did not arrive");
}

fn is_event(msg: &WatchDirResponse, name: &str, kind: EventType) -> bool {
    matches!(msg, WatchDirResponse::Filesystem(ev) if ev.name == name && ev.event_type == kind)
}

#[tokio::test]
async fn watch_dir_streams_events_recursively_until_disconnect() {
    let agent = Agent::launch("root", "warn").await;
    let root = agent.path("");
    let idle_fds = agent.inotify_fds();
    let mut stream = agent
        .client
        .server_stream::<_, WatchDirResponse>(
            &format!("{FS}/WatchDir"),
            &json!({ "path": root, "recursive": true, "includeEntry": true }),
            None,
        )
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first, WatchDirResponse::Start {});
    assert_eq!(agent.inotify_fds(), idle_fds + 1);

    std::fs::write(agent.path("a.txt"), b"1").unwrap();
    wait_for(&mut stream, |m| is_event(m, "a.txt", EventType::Create)).await;
    wait_for(&mut stream, |m| {
        matches!(m, WatchDirResponse::Filesystem(ev)
            if ev.name == "a.txt" && ev.event_type == EventType::Write
                && ev.entry.as_ref().is_some_and(|e| e.size == 1))
    })
    .await;
    std::fs::set_permissions(
        agent.path("a.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    wait_for(&mut stream, |m| is_event(m, "a.txt", EventType::Chmod)).await;
    std::fs::rename(agent.path("a.txt"), agent.path("b.txt")).unwrap();
    wait_for(&mut stream, |m| is_event(m, "a.txt", EventType::Rename)).await;
    wait_for(&mut stream, |m| is_event(m, "b.txt", EventType::Create)).await;
    std::fs::remove_file(agent.path("b.txt")).unwrap();
    wait_for(&mut stream, |m| is_event(m, "b.txt", EventType::Remove)).await;

    // Recursive: a new subdirectory is watched, and `mkdir -p` contents are reported.
    std::fs::create_dir_all(agent.path("s1/s2")).unwrap();
    wait_for(&mut stream, |m| is_event(m, "s1/s2", EventType::Create)).await;
    std::fs::write(agent.path("s1/s2/deep.txt"), b"x").unwrap();
    wait_for(&mut stream, |m| {
        is_event(m, "s1/s2/deep.txt", EventType::Create)
    })
    .await;
    wait_for(&mut stream, |m| {
        is_event(m, "s1/s2/deep.txt", EventType::Write)
    })
    .await;
    // A directory moved within the tree is watched under its new name.
    std::fs::rename(agent.path("s1"), agent.path("t1")).unwrap();
    wait_for(&mut stream, |m| is_event(m, "t1", EventType::Create)).await;
    std::fs::write(agent.path("t1/s2/after.txt"), b"x").unwrap();
    wait_for(&mut stream, |m| {
        is_event(m, "t1/s2/after.txt", EventType::Create)
    })
    .await;

    // The client going away stops the watcher and closes its inotify instance.
    drop(stream);
    for _ in 0..100 {
        if agent.inotify_fds() == idle_fds {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(agent.inotify_fds(), idle_fds);
}

#[tokio::test]
async fn watch_dir_wire_format_keepalive_and_errors() {
    let agent = Agent::launch("root", "warn").await;
    let root = agent.path("");
    // Raw request to set keepalive-ping-interval and read the exact content type.
    let req = Request::post(format!("/{FS}/WatchDir"))
        .header("host", "agent")
        .header("content-type", "application/connect+json")
        .header("connect-protocol-version", "1")
        .header("keepalive-ping-interval", "1")
        .body(full_body(encode_envelope(
            0,
            json!({ "path": root }).to_string().as_bytes(),
        )))
        .unwrap();
    let resp = agent.client.send(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/connect+json");
    let mut body = resp.into_body();
    let mut dec = EnvelopeDecoder::default();
    let mut msgs: Vec<Value> = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while msgs.len() < 2 {
            let frame = body.frame().await.unwrap().unwrap();
            if let Ok(data) = frame.into_data() {
                dec.push(&data);
            }
            while let Some(env) = dec.next_envelope().unwrap() {
                assert_eq!(env.flags, 0);
                msgs.push(serde_json::from_slice(&env.data).unwrap());
            }
        }
    })
    .await
    .expect("start and keepalive");
    assert_eq!(msgs[0], json!({ "start": {} }));
    assert_eq!(msgs[1], json!({ "keepalive": {} }));
    drop(body);

    // `connect-timeout-ms` bounds the stream: it ends with deadline_exceeded.
    let mut stream = agent
        .client
        .server_stream::<_, WatchDirResponse>(
            &format!("{FS}/WatchDir"),
            &json!({ "path": root }),
            Some(500),
        )
        .await
        .unwrap();
    assert_eq!(
        stream.next().await.unwrap().unwrap(),
        WatchDirResponse::Start {}
    );
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("stream ends at its deadline");
    assert_eq!(end.unwrap().unwrap_err().code, Code::DeadlineExceeded);
    assert!(stream.next().await.is_none());

    // Not a directory / missing → unary-style errors before the stream starts.
    std::fs::write(agent.path("f"), b"").unwrap();
    let err = agent
        .client
        .server_stream::<_, WatchDirResponse>(
            &format!("{FS}/WatchDir"),
            &json!({ "path": agent.path("f") }),
            None,
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err.code, Code::InvalidArgument);
    let err = agent
        .client
        .server_stream::<_, WatchDirResponse>(
            &format!("{FS}/WatchDir"),
            &json!({ "path": agent.path("missing") }),
            None,
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err.code, Code::NotFound);
}

#[tokio::test]
async fn polled_watcher_reports_events_since_last_call() {
    let agent = Agent::launch("root", "warn").await;
    let root = agent.path("");
    let w: CreateWatcherResponse = agent
        .call("CreateWatcher", json!({ "path": root, "recursive": true }))
        .await
        .unwrap();
    assert!(!w.watcher_id.is_empty());
    let id = json!({ "watcherId": w.watcher_id });

    let mut seen = Vec::new();
    let poll = async |seen: &mut Vec<(String, EventType)>| {
        let r: GetWatcherEventsResponse = agent.call("GetWatcherEvents", id.clone()).await.unwrap();
        seen.extend(r.events.into_iter().map(|e| (e.name, e.event_type)));
    };
    // inotify can only watch a new directory once it has seen it: wait for that before
    // creating inside it (a file created and deleted before would go unseen, as with envd).
    std::fs::create_dir(agent.path("d")).unwrap();
    for _ in 0..100 {
        poll(&mut seen).await;
        if seen.contains(&("d".to_string(), EventType::Create)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(agent.path("d/x.txt"), b"hi").unwrap();
    std::fs::remove_file(agent.path("d/x.txt")).unwrap();
    for _ in 0..100 {
        poll(&mut seen).await;
        if seen.contains(&("d/x.txt".to_string(), EventType::Remove)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        seen.contains(&("d".to_string(), EventType::Create)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("d/x.txt".to_string(), EventType::Create)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("d/x.txt".to_string(), EventType::Remove)),
        "{seen:?}"
    );

    // Drained: nothing new until something happens.
    let r: GetWatcherEventsResponse = agent.call("GetWatcherEvents", id.clone()).await.unwrap();
    assert!(r.events.is_empty(), "{:?}", r.events);

    let _: Value = agent.call("RemoveWatcher", id.clone()).await.unwrap();
    let err = agent
        .call::<GetWatcherEventsResponse>("GetWatcherEvents", id.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound);
    let err = agent.call::<Value>("RemoveWatcher", id).await.unwrap_err();
    assert_eq!(err.code, Code::NotFound);
}
