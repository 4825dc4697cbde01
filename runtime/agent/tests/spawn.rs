//! How `process.Process/Start` starts a child (the agent's vfork-style spawner, see
//! `src/process/vfork.rs`): the PATH search of the child's environment, scripts, errors,
//! the state a child starts in (signals, session, descriptors, OOM score) and the cached user
//! lookups seeing passwd changes. The real agent binary on a unix socket, real processes.
//! Tests run as root.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use coppice_envd::ConnectError;
use coppice_envd::process::{DataEvent, ProcessEvent, ProcessEventMessage};
use futures::StreamExt;
use serde_json::{Value, json};

mod common;
use common::Agent;

impl Agent {
    /// Runs a Start request to its end: (stdout, stderr, exit code), or the start error.
    async fn run_as(
        &self,
        process: Value,
        user: &str,
    ) -> Result<(String, String, i32), ConnectError> {
        let mut stream = self
            .client
            .server_stream_as::<_, ProcessEventMessage>(
                "process.Process/Start",
                &json!({ "process": process, "stdin": false }),
                Some(30_000),
                user,
            )
            .await?;
        let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
        while let Some(msg) = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the process ends")
        {
            match msg?.event {
                ProcessEvent::Data(DataEvent::Stdout(d)) => out.extend(d),
                ProcessEvent::Data(DataEvent::Stderr(d)) => err.extend(d),
                ProcessEvent::End(end) => code = Some(end.exit_code),
                _ => {}
            }
        }
        Ok((
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
            code.expect("an end event"),
        ))
    }

    async fn run(&self, process: Value) -> Result<(String, String, i32), ConnectError> {
        self.run_as(process, "").await
    }
}

fn write_file(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A line of /proc/<pid>/status as printed by `cat` started through the agent.
fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("{name} in {status}"))
        .trim()
}

#[tokio::test]
async fn programs_are_searched_in_the_path_of_the_childs_environment() {
    let agent = Agent::launch("root", "warn").await;
    let bin = agent.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    write_file(
        &bin.join("hello-tool"),
        "#!/bin/sh\necho tool says $1\n",
        0o755,
    );
    let path = format!("/nonexistent:{}:/usr/bin:/bin", bin.display());

    let (out, _, code) = agent
        .run(json!({"cmd": "hello-tool", "args": ["hi"], "envs": {"PATH": path}}))
        .await
        .unwrap();
    assert_eq!((out.as_str(), code), ("tool says hi\n", 0));

    // Not in the agent's own PATH: the request's PATH is what counts.
    let err = agent
        .run(json!({"cmd": "hello-tool", "args": ["hi"]}))
        .await
        .unwrap_err();
    assert!(
        err.message
            .starts_with("error starting process 'hello-tool hi'")
            && err.message.contains("No such file or directory"),
        "{}",
        err.message
    );

    // An executable earlier in PATH wins; a relative path with a '/' is not searched.
    let (out, _, _) = agent
        .run(json!({"cmd": "true", "envs": {"PATH": path}}))
        .await
        .unwrap();
    assert_eq!(out, "");
    let (out, _, _) = agent
        .run(json!({"cmd": "./bin/hello-tool", "args": ["rel"], "cwd": agent.dir}))
        .await
        .unwrap();
    assert_eq!(out, "tool says rel\n");
}

#[tokio::test]
async fn scripts_without_an_interpreter_line_run_with_sh_and_bad_files_fail() {
    let agent = Agent::launch("root", "warn").await;
    let script = agent.dir.join("plain-script");
    write_file(&script, "echo from sh: $0 $1\n", 0o755);
    let (out, _, code) = agent
        .run(json!({"cmd": script, "args": ["arg"]}))
        .await
        .unwrap();
    assert_eq!(out, format!("from sh: {} arg\n", script.display()));
    assert_eq!(code, 0);

    let not_exec = agent.dir.join("not-executable");
    write_file(&not_exec, "echo never\n", 0o644);
    let err = agent.run(json!({"cmd": not_exec})).await.unwrap_err();
    assert!(err.message.contains("Permission denied"), "{}", err.message);

    // In a PATH search a non-executable match is skipped; with nothing else found the
    // error is EACCES, as execvp reports it.
    let path = format!("{}:/nonexistent", agent.dir.display());
    let err = agent
        .run(json!({"cmd": "not-executable", "envs": {"PATH": path}}))
        .await
        .unwrap_err();
    assert!(err.message.contains("Permission denied"), "{}", err.message);

    // The agent keeps working after failed starts (no stuck child, no leaked lock).
    let (out, _, _) = agent
        .run(json!({"cmd": "/bin/echo", "args": ["fine"]}))
        .await
        .unwrap();
    assert_eq!(out, "fine\n");
}

#[tokio::test]
async fn children_start_clean_signals_session_descriptors_and_oom_score() {
    let agent = Agent::launch("root", "warn").await;
    // The host protects the agent (-998) where it may; either way its children start at 500,
    // above it. Raising needs no privilege, so this works on any host.
    std::fs::write(format!("/proc/{}/oom_score_adj", agent.pid()), "100").unwrap();

    let (status, _, _) = agent
        .run(json!({"cmd": "/bin/cat", "args": ["/proc/self/status"]}))
        .await
        .unwrap();
    // No blocked signals and no handlers inherited; ignored signals stay ignored (as across
    // fork+exec), except SIGPIPE, which Rust ignores in the agent and std resets for children.
    let agent_status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let mask = |s: &str| u64::from_str_radix(s, 16).unwrap();
    let sigpipe = 1 << (libc::SIGPIPE - 1);
    assert_ne!(mask(status_field(&agent_status, "SigIgn")) & sigpipe, 0);
    assert_eq!(
        mask(status_field(&status, "SigIgn")),
        mask(status_field(&agent_status, "SigIgn")) & !sigpipe
    );
    assert_eq!(status_field(&status, "SigBlk"), "0000000000000000");
    assert_eq!(status_field(&status, "SigCgt"), "0000000000000000");

    // Own session: the process is its session's leader.
    let (stat, _, _) = agent
        .run(json!({"cmd": "/bin/cat", "args": ["/proc/self/stat"]}))
        .await
        .unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let pid: u32 = stat.split(' ').next().unwrap().parse().unwrap();
    assert_eq!(fields[3], pid.to_string(), "session id is the pid: {stat}");

    let (oom, _, _) = agent
        .run(json!({"cmd": "/bin/cat", "args": ["/proc/self/oom_score_adj"]}))
        .await
        .unwrap();
    assert_eq!(oom, "500\n");

    // Only stdin, stdout and stderr are passed on (ls itself opens the directory as fd 3), plus
    // whatever the agent itself inherited without close-on-exec from whoever launched it (in
    // this test: the test runner's descriptors); none of the agent's own sockets and pipes.
    // The agent's descriptors are read before and after the run, so one that comes or goes
    // meanwhile (other tests run in the same process) is judged by either reading.
    let before = inheritable_fds(agent.pid());
    let (fds, _, _) = agent
        .run(json!({"cmd": "/bin/ls", "args": ["/proc/self/fd"]}))
        .await
        .unwrap();
    let after = inheritable_fds(agent.pid());
    let mut got: BTreeSet<i32> = fds
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .filter(|&fd| fd > 2)
        .collect();
    let must: BTreeSet<i32> = before.intersection(&after).copied().collect();
    let may: BTreeSet<i32> = before.union(&after).copied().collect();
    // ls's own directory descriptor: the lowest number the inherited ones left free (not always
    // 3: under `cargo test --workspace` the runner passes on cargo's jobserver descriptors).
    let own = (3..).find(|fd| !may.contains(fd)).unwrap();
    assert!(
        got.remove(&own),
        "ls's directory fd {own} missing from {fds}"
    );
    assert!(
        must.is_subset(&got) && got.is_subset(&may),
        "child fds {got:?}; agent's inheritable fds before {before:?}, after {after:?}"
    );
}

/// The descriptors above 2 that `pid` holds without close-on-exec.
fn inheritable_fds(pid: u32) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let Ok(fd) = entry.unwrap().file_name().to_str().unwrap().parse::<i32>() else {
            continue;
        };
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| i32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap_or(libc::O_CLOEXEC);
        if fd > 2 && flags & libc::O_CLOEXEC == 0 {
            out.insert(fd);
        }
    }
    out
}

#[tokio::test]
async fn concurrent_starts_each_get_their_own_output() {
    let agent = Agent::launch("root", "warn").await;
    let runs = (0..40).map(|i| {
        let agent = &agent;
        async move {
            let (out, _, code) = agent
                .run(json!({"cmd": "/bin/sh", "args": ["-c", format!("echo run {i}; exit {}", i % 3)]}))
                .await
                .unwrap();
            assert_eq!(out, format!("run {i}\n"));
            assert_eq!(code, i % 3);
        }
    });
    futures::future::join_all(runs).await;
}

/// Users are looked up through a cache; adding, changing and removing a user is seen at once.
#[tokio::test]
async fn user_lookups_see_passwd_changes() {
    const NAME: &str = "coppice-spawn-t";
    let _ = Command::new("userdel").arg(NAME).status();
    let agent = Agent::launch("root", "warn").await;
    let id = json!({"cmd": "/usr/bin/id", "args": ["-u"]});
    let err = agent.run_as(id.clone(), NAME).await.unwrap_err();
    assert_eq!(err.message, format!("user '{NAME}' does not exist"));

    let ok = |s: &[&str]| {
        assert!(
            Command::new(s[0]).args(&s[1..]).status().unwrap().success(),
            "{s:?}"
        );
    };
    ok(&["useradd", "-M", "-d", "/tmp", "-u", "43210", NAME]);
    let (out, _, _) = agent.run_as(id.clone(), NAME).await.unwrap();
    assert_eq!(out, "43210\n");

    ok(&["usermod", "-u", "43211", NAME]);
    let (out, _, _) = agent.run_as(id.clone(), NAME).await.unwrap();
    assert_eq!(out, "43211\n");

    ok(&["groupadd", "-f", "coppice-spawn-g"]);
    ok(&["usermod", "-aG", "coppice-spawn-g", NAME]);
    let (groups, _, _) = agent
        .run_as(json!({"cmd": "/usr/bin/id", "args": ["-Gn"]}), NAME)
        .await
        .unwrap();
    assert!(
        groups.split_whitespace().any(|g| g == "coppice-spawn-g"),
        "{groups}"
    );

    ok(&["userdel", NAME]);
    let _ = Command::new("groupdel").arg("coppice-spawn-g").status();
    let err = agent.run_as(id, NAME).await.unwrap_err();
    assert_eq!(err.message, format!("user '{NAME}' does not exist"));
}
