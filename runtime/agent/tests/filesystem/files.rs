//! Files and directories: stat, mkdir, move, list, remove, large transfers, multipart, ownership.

use super::*;

#[tokio::test]
async fn stat_make_dir_move_list_remove() {
    let agent = Agent::launch("root", "warn").await;

    // MakeDir creates parents; a second time is already_exists.
    let d = agent.path("a/b/c");
    let made: EntryResponse = agent.call("MakeDir", json!({ "path": d })).await.unwrap();
    assert_eq!(made.entry.file_type, FileType::Directory);
    assert_eq!(made.entry.path, d);
    assert_eq!(made.entry.name, "c");
    assert_eq!(made.entry.permissions, "drwxr-xr-x");
    let err = agent
        .call::<EntryResponse>("MakeDir", json!({ "path": d }))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::AlreadyExists);

    // Stat of a file: every EntryInfo field.
    let f = agent.path("a/file.txt");
    std::fs::write(&f, b"hello world!").unwrap();
    let raw: Value = agent.call("Stat", json!({ "path": f })).await.unwrap();
    let e = &raw["entry"];
    assert_eq!(e["name"], "file.txt");
    assert_eq!(e["type"], "FILE_TYPE_FILE");
    assert_eq!(e["path"], f.as_str());
    assert_eq!(e["size"], "12");
    assert_eq!(e["mode"], 0o644);
    assert_eq!(e["permissions"], "-rw-r--r--");
    assert_eq!(e["owner"], "root");
    assert_eq!(e["group"], "root");
    let mtime = e["modifiedTime"].as_str().unwrap();
    assert!(mtime.ends_with('Z') && mtime.len() >= 20, "{mtime}");
    assert!(e.get("isSymlink").is_none());

    // Not found, empty and NUL paths.
    let err = agent.stat(&agent.path("nope")).await.unwrap_err();
    assert_eq!(err.code, Code::NotFound);
    assert_eq!(
        agent.stat("").await.unwrap_err().code,
        Code::InvalidArgument
    );
    assert_eq!(
        agent.stat("/tmp/a\0b").await.unwrap_err().code,
        Code::InvalidArgument
    );

    // Stat on a symlink reports the link.
    let link = agent.path("a/link");
    std::os::unix::fs::symlink(&f, &link).unwrap();
    let l = agent.stat(&link).await.unwrap();
    assert!(l.is_symlink);
    assert_eq!(l.symlink_target.as_deref(), Some(f.as_str()));
    assert_eq!(l.file_type, FileType::File);
    assert_eq!(l.path, link);

    // Move renames, creating the destination's parents.
    let moved = agent.path("m/n/moved.txt");
    let r: EntryResponse = agent
        .call("Move", json!({ "source": f, "destination": moved }))
        .await
        .unwrap();
    assert_eq!(r.entry.path, moved);
    assert_eq!(r.entry.size, 12);
    assert_eq!(
        agent.stat(&f).await.unwrap_err().code,
        Code::NotFound,
        "source is gone"
    );
    let err = agent
        .call::<EntryResponse>("Move", json!({ "source": f, "destination": moved }))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound);

    // ListDir with depth; 0 means 1.
    let names = |r: &ListDirResponse| {
        let mut v: Vec<String> = r
            .entries
            .iter()
            .map(|e| e.path.strip_prefix(&agent.path("")).unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let root = agent.path("");
    let d1: ListDirResponse = agent
        .call("ListDir", json!({ "path": root, "depth": 1 }))
        .await
        .unwrap();
    assert_eq!(names(&d1), ["a", "m"]);
    let d0: ListDirResponse = agent
        .call("ListDir", json!({ "path": root }))
        .await
        .unwrap();
    assert_eq!(names(&d0), names(&d1));
    let d3: ListDirResponse = agent
        .call("ListDir", json!({ "path": root, "depth": 3 }))
        .await
        .unwrap();
    assert_eq!(
        names(&d3),
        ["a", "a/b", "a/b/c", "a/link", "m", "m/n", "m/n/moved.txt"]
    );
    let link_entry = d3.entries.iter().find(|e| e.name == "link").unwrap();
    assert!(link_entry.is_symlink);
    let err = agent
        .call::<ListDirResponse>("ListDir", json!({ "path": moved }))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    let err = agent
        .call::<ListDirResponse>("ListDir", json!({ "path": agent.path("nope") }))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound);

    // Remove a file, a symlink (not its target) and a tree; removing nothing is fine (envd).
    let _: Value = agent.call("Remove", json!({ "path": link })).await.unwrap();
    assert!(std::fs::symlink_metadata(&link).is_err());
    let _: Value = agent
        .call("Remove", json!({ "path": moved }))
        .await
        .unwrap();
    assert_eq!(agent.stat(&moved).await.unwrap_err().code, Code::NotFound);
    let _: Value = agent
        .call("Remove", json!({ "path": agent.path("a") }))
        .await
        .unwrap();
    assert_eq!(
        agent.stat(&agent.path("a")).await.unwrap_err().code,
        Code::NotFound
    );
    let _: Value = agent
        .call("Remove", json!({ "path": agent.path("a") }))
        .await
        .unwrap();
}

#[tokio::test]
async fn files_50mb_round_trips_stream_without_buffering() {
    let agent = Agent::launch("root", "warn").await;
    let baseline = agent.peak_rss_kib();

    // application/octet-stream, streamed from a generator.
    let raw = agent.path("big/raw.bin");
    let (status, body) = agent
        .post_files(
            &format!("path={}", query_escape(&raw)),
            "application/octet-stream",
            &[],
            pattern_body(MB50, Vec::new(), Vec::new()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let info: Vec<WriteInfo> = serde_json::from_value(body).unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].path, raw);
    assert_eq!(info[0].name, "raw.bin");
    assert_eq!(info[0].kind, "file");
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), MB50 as u64);
    assert_download_matches(&agent, &raw, MB50).await;

    // multipart/form-data with `?path=`, the part streamed between its headers and trailer.
    let mp = agent.path("big/multipart.bin");
    let boundary = "coppice-boundary-7d1f";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{mp}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let (status, body) = agent
        .post_files(
            &format!("path={}", query_escape(&mp)),
            &format!("multipart/form-data; boundary={boundary}"),
            &[],
            pattern_body(MB50, head.into_bytes(), tail.into_bytes()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body[0]["path"], mp.as_str());
    assert_download_matches(&agent, &mp, MB50).await;

    // Two 50 MB uploads and downloads later the agent never held a file in memory.
    let peak = agent.peak_rss_kib();
    assert!(
        peak < 25 * 1024,
        "agent peak RSS {peak} KiB (baseline {baseline} KiB)"
    );
}

#[tokio::test]
async fn files_details_multi_part_gzip_metadata_and_errors() {
    let agent = Agent::launch("root", "warn").await;

    // Several parts without `?path=`: each filename is its target.
    let a = agent.path("multi/a.txt");
    let b = agent.path("multi/deep/b.txt");
    let boundary = "xyzzy";
    let body = multipart(
        boundary,
        &[(a.as_str(), &b"alpha"[..]), (b.as_str(), &b"beta"[..])],
    );
    let (status, resp) = agent
        .post_files(
            "",
            &format!("multipart/form-data; boundary={boundary}"),
            &[],
            full_body(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let paths: Vec<&str> = resp
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, [a.as_str(), b.as_str()]);
    assert_eq!(std::fs::read(&a).unwrap(), b"alpha");
    assert_eq!(std::fs::read(&b).unwrap(), b"beta");

    // Overwrite truncates.
    let body = multipart(boundary, &[(a.as_str(), &b"A"[..])]);
    let (status, _) = agent
        .post_files(
            &format!("path={}", query_escape(&a)),
            &format!("multipart/form-data; boundary={boundary}"),
            &[],
            full_body(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(std::fs::read(&a).unwrap(), b"A");

    // gzip octet-stream, with metadata headers stored as user xattrs (tmpfs may lack them).
    let gz = agent.path("gz.txt");
    let mut enc = async_compression::tokio::bufread::GzipEncoder::new(&b"compressed hello"[..]);
    let mut compressed = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut enc, &mut compressed)
        .await
        .unwrap();
    let (status, resp) = agent
        .post_files(
            &format!("path={}", query_escape(&gz)),
            "application/octet-stream",
            &[("content-encoding", "gzip"), ("x-metadata-origin", "test")],
            full_body(compressed),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    assert_eq!(std::fs::read(&gz).unwrap(), b"compressed hello");
    assert_eq!(resp[0]["metadata"]["origin"], "test");
    let xattrs_work = xattr_supported(&gz);
    if xattrs_work {
        let e = agent.stat(&gz).await.unwrap();
        assert_eq!(e.metadata.get("origin").map(String::as_str), Some("test"));
    }

    // Errors: JSON with an integer code.
    let resp = agent
        .get_files(&format!("path={}", query_escape(&agent.path("none"))))
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["code"], 404);
    assert!(body["message"].is_string());
    let resp = agent
        .get_files(&format!("path={}", query_escape(&agent.path("multi"))))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (status, resp) = agent
        .post_files("", "application/octet-stream", &[], full_body(&b"x"[..]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(resp["code"], 400);
    // Writing over a directory.
    let (status, _) = agent
        .post_files(
            &format!("path={}", query_escape(&agent.path("multi"))),
            "application/octet-stream",
            &[],
            full_body(&b"x"[..]),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

fn xattr_supported(path: &str) -> bool {
    rustix::fs::setxattr(path, "user.probe", b"1", rustix::fs::XattrFlags::empty()).is_ok()
}

#[tokio::test]
async fn default_user_owns_writes_and_relative_paths_use_home() {
    let (uid, home) = ensure_user();
    let agent = Agent::launch("user", "warn").await;
    let home_s = home.to_string_lossy().into_owned();
    let tag = format!("coppice-it-{}", std::process::id());

    // Relative upload lands in the home directory, owned by the user with new parents.
    let rel = format!("{tag}/sub/r.txt");
    let (status, resp) = agent
        .post_files(
            &format!("path={}", query_escape(&rel)),
            "application/octet-stream",
            &[],
            full_body(&b"relative"[..]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    let abs = home.join(&rel);
    assert_eq!(resp[0]["path"], abs.to_str().unwrap());
    assert_eq!(std::fs::read(&abs).unwrap(), b"relative");
    assert_eq!(std::fs::metadata(&abs).unwrap().uid(), uid);
    assert_eq!(std::fs::metadata(home.join(&tag)).unwrap().uid(), uid);

    // Multipart relative filename, and Stat/MakeDir/ListDir with relative paths.
    let boundary = "b0undary";
    let body = multipart(boundary, &[(format!("{tag}/m.txt").as_str(), &b"mp"[..])]);
    let (status, _) = agent
        .post_files(
            "",
            &format!("multipart/form-data; boundary={boundary}"),
            &[],
            full_body(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        std::fs::metadata(home.join(&tag).join("m.txt"))
            .unwrap()
            .uid(),
        uid
    );
    let e = agent.stat(&format!("{tag}/m.txt")).await.unwrap();
    assert_eq!(e.path, format!("{home_s}/{tag}/m.txt"));
    assert_eq!(e.owner, "user");
    let made: EntryResponse = agent
        .call("MakeDir", json!({ "path": format!("{tag}/dir") }))
        .await
        .unwrap();
    assert_eq!(made.entry.owner, "user");
    assert_eq!(
        std::fs::metadata(home.join(&tag).join("dir"))
            .unwrap()
            .uid(),
        uid
    );
    let listed: ListDirResponse = agent
        .call("ListDir", json!({ "path": "~/".to_string() + &tag }))
        .await
        .unwrap();
    assert_eq!(listed.entries.len(), 3);

    // The user cannot write into or read from root's private places; root (asked for) can.
    let secret = agent.path("secret.txt");
    std::fs::write(&secret, b"top").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let resp = agent
        .get_files(&format!("path={}", query_escape(&secret)))
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = agent
        .get_files(&format!("path={}&username=root", query_escape(&secret)))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, _) = agent
        .post_files(
            "path=/root/coppice-denied.txt",
            "application/octet-stream",
            &[],
            full_body(&b"x"[..]),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!Path::new("/root/coppice-denied.txt").exists());
    let err = agent
        .call::<EntryResponse>("MakeDir", json!({ "path": "/root/coppice-denied" }))
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::PermissionDenied);
    // As root (Basic auth), the same directory is created and owned by root.
    let made = agent
        .call_as("root", "MakeDir", json!({ "path": agent.path("rootdir") }))
        .await
        .unwrap();
    assert_eq!(made["entry"]["owner"], "root");
    assert_eq!(std::fs::metadata(agent.path("rootdir")).unwrap().uid(), 0);

    std::fs::remove_dir_all(home.join(&tag)).unwrap();
}
