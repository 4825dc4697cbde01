//! Bad input: unknown sandboxes and templates, malformed requests, paths outside the sandbox.

use super::*;

#[test]
fn unknown_sandbox_and_template() {
    let Some(_g) = shared() else { return };
    for args in [
        &["sandbox", "info", "nosuchsandbox"][..],
        &["sandbox", "kill", "nosuchsandbox"],
        &["sandbox", "set-timeout", "nosuchsandbox", "1m"],
        &["exec", "nosuchsandbox", "--", "true"],
        &["files", "ls", "nosuchsandbox", "/"],
    ] {
        let out = cli(args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains("not found"), "{args:?}: {out:?}");
    }
    let out = cli(&["sandbox", "create", "--template", "no-such-template"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("template 'no-such-template' not found"),
        "{out:?}"
    );
}

#[test]
fn malformed_create_creates_nothing() {
    let Some(_g) = shared() else { return };
    for (flag, value, says) in [
        ("--memory", "12Q", "unknown size unit"),
        ("--memory", "1M", "at least"),
        ("--pids", "0", "pids"),
        ("--cpus", "0", "cpus"),
        ("--cpus", "-1", ""),
        ("--timeout", "soon", ""),
    ] {
        let out = cli(&["sandbox", "create", "--meta", "e2e=malformed", flag, value]);
        assert_ne!(out.code, 0, "{flag} {value} was accepted: {out:?}");
        assert!(out.stderr.contains(says), "{flag} {value}: {out:?}");
    }
    let list: Value = serde_json::from_str(&cli_ok(&["sandbox", "list", "--json"])).unwrap();
    assert!(
        !list
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["metadata"]["e2e"] == "malformed"),
        "{list}"
    );
}

#[test]
fn exec_errors() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    let out = sb.exec(&["--", "no-such-binary"]);
    assert_eq!(out.code, 127, "{out:?}");
    assert!(out.stderr.contains("no-such-binary"), "{out:?}");
    let out = sb.exec(&["--cwd", "/no/such/dir", "--", "pwd"]);
    assert_eq!(out.code, 127, "{out:?}");
    assert!(out.stderr.contains("/no/such/dir"), "{out:?}");
    let out = sb.exec(&["--user", "nosuchuser", "--", "true"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert_eq!(sb.exec(&["--", "true"]).code, 0);
}

#[test]
fn file_access_stays_inside_the_sandbox() {
    let Some(_g) = shared() else { return };
    let sb = create(&[]);
    let dir = tempfile::tempdir().unwrap();
    let local = |name: &str| dir.path().join(name).to_str().unwrap().to_string();

    // Permissions are the default user's.
    let out = cli(&["files", "get", &sb.id, "/etc/shadow", &local("shadow")]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    assert!(!Path::new(&local("shadow")).exists());

    // `..` never climbs out of the sandbox's root.
    let marker = format!("inside-{}", sb.id);
    sb.root_ok(&format!("echo {marker} > /etc/hostname"));
    cli_ok(&[
        "files",
        "get",
        &sb.id,
        "../../../../etc/hostname",
        &local("hostname"),
    ]);
    assert_eq!(
        std::fs::read_to_string(local("hostname")).unwrap(),
        format!("{marker}\n")
    );
    assert_ne!(
        std::fs::read_to_string("/etc/hostname").unwrap(),
        format!("{marker}\n")
    );

    // A symlink to / resolves to the sandbox's root.
    sb.sh_ok("ln -s / /home/user/root-link");
    let out = cli(&["files", "ls", &sb.id, "/home/user/root-link/work"]);
    assert!(
        out.code != 0 || out.stdout.trim().is_empty(),
        "host /work listed: {out:?}"
    );
    cli_ok(&[
        "files",
        "get",
        &sb.id,
        "/home/user/root-link/etc/hostname",
        &local("via-link"),
    ]);
    assert_eq!(
        std::fs::read_to_string(local("via-link")).unwrap(),
        format!("{marker}\n")
    );
    let root = cli_ok(&["files", "ls", &sb.id, "/home/user/root-link/"]);
    assert!(!root.contains("/work"), "{root}");
    let out = cli(&[
        "files",
        "ls",
        &sb.id,
        &format!("/home/user/root-link{}", path_str(&daemon().state)),
    ]);
    assert!(
        out.code != 0 || out.stdout.trim().is_empty(),
        "state dir listed: {out:?}"
    );
}
