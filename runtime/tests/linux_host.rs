//! Host tests of the Linux backend's cgroup and network modules. They need root and change
//! the host (cgroups under `coppice/`, the `coppice0` bridge, the `inet coppice` nft table);
//! without root each test prints why it is skipped and passes.
#![cfg(target_os = "linux")]

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coppice_runtime::linux::cgroup::{self, Placement, SandboxCgroup};
use coppice_runtime::linux::net::{self, NetConfig};
use coppice_runtime::model::Limits;

fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED {test}: needs root (cgroups, netns, bridge, nftables)");
        return false;
    }
    true
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

// ---------------------------------------------------------------- cgroups

/// Spawns `sh -c script` that waits for one line on stdin before running `script`, moves it
/// into the cgroup, then lets it go: everything it runs starts inside the group.
fn spawn_in(cg: &SandboxCgroup, script: &str) -> Child {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("read _go; {script}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    cg.add_pid(child.id() as i32).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    child
}

fn wait_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "child {} still running after {limit:?}",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read(p: &std::path::Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_owned()
}

#[test]
fn cgroup_lifecycle_limits_and_usage() {
    if !root_or_skip("cgroup_lifecycle_limits_and_usage") {
        return;
    }
    let layout = cgroup::detect().unwrap();
    println!("cgroup layout: {layout:?}");
    let name = unique("t-life");
    let cg = layout.create(&name).unwrap();
    for p in cg.paths() {
        assert!(p.is_dir(), "{} missing", p.display());
    }
    assert!(layout.list().contains(&name));

    let mut sleep = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleep.id() as i32;
    cg.add_pid(pid).unwrap();
    assert_eq!(cg.procs(), vec![pid]);
    // Every hierarchy, v1 and unified, holds the process.
    for p in cg.paths() {
        assert!(
            read(&p.join("cgroup.procs"))
                .lines()
                .any(|l| l == pid.to_string()),
            "{}",
            p.display()
        );
    }

    let limits = Limits {
        memory_bytes: Some(64 << 20),
        cpus: Some(0.5),
        pids: Some(32),
        disk_bytes: None,
    };
    cg.apply_limits(&limits).unwrap();
    // What the plan wrote is what the kernel now reports (last write per file wins).
    let plan = cgroup::plan_limits(&layout, &name, &limits);
    assert!(!plan.is_empty());
    for (path, _) in &plan {
        let last = &plan.iter().rev().find(|(p, _)| p == path).unwrap().1;
        assert_eq!(&read(path), last, "{}", path.display());
    }
    if let Placement::V1(_) = &layout.memory {
        let dir = cg.paths()[0].clone();
        assert_eq!(read(&dir.join("memory.limit_in_bytes")), "67108864");
        if layout.memsw {
            assert_eq!(read(&dir.join("memory.memsw.limit_in_bytes")), "67108864");
        }
    }

    // Re-limit a pooled sandbox to "no limits", then limit it again.
    cg.apply_limits(&Limits::default()).unwrap();
    for (path, value) in cgroup::plan_limits(&layout, &name, &Limits::default()) {
        let got = read(&path);
        match value.as_str() {
            "max" => assert_eq!(got, "max", "{}", path.display()),
            // v1 memory reports "unlimited" as a huge page-aligned number.
            "-1" => assert!(
                got == "-1" || got.parse::<u64>().unwrap() > 1 << 60,
                "{}: {got}",
                path.display()
            ),
            v => assert_eq!(got, v),
        }
    }
    cg.apply_limits(&limits).unwrap();

    // Usage figures: a shell holding ~4 MB in a variable is charged to the group (v1 does not
    // move the charges of tasks that join later, so the sleep above may count as 0).
    let mut hold = spawn_in(
        &cg,
        "x=$(head -c 4000000 /dev/zero | tr '\\0' a); echo ready; sleep 30",
    );
    let mut line = [0u8; 6];
    hold.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
    assert_eq!(&line, b"ready\n");
    let mem = cg.memory_usage().unwrap();
    assert!(mem > 4_000_000, "memory usage {mem}");
    let burn = spawn_in(&cg, "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done");
    let mut burn = burn;
    assert!(wait_timeout(&mut burn, Duration::from_secs(20)).success());
    assert!(cg.cpu_usage_ns().unwrap() > 0, "cpu usage");

    cg.freeze().unwrap();
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    println!(
        "frozen sleep stat: {}",
        state.split_whitespace().nth(2).unwrap()
    );
    cg.thaw().unwrap();

    let t = Instant::now();
    cg.kill_all();
    let st = sleep.wait().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    assert_eq!(hold.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert!(cg.procs().is_empty());
    cg.destroy().unwrap();
    println!("kill_all + destroy: {:?}", t.elapsed());
    for p in cg.paths() {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    assert!(!layout.list().contains(&name));
    // Destroying twice is fine.
    cg.destroy().unwrap();
}

#[test]
fn cgroup_memory_hog_is_oom_killed_inside_the_group() {
    if !root_or_skip("cgroup_memory_hog_is_oom_killed_inside_the_group") {
        return;
    }
    let layout = cgroup::detect().unwrap();
    let cg = layout.create(&unique("t-oom")).unwrap();
    cg.apply_limits(&Limits {
        memory_bytes: Some(64 << 20),
        ..Default::default()
    })
    .unwrap();
    // `tail` buffers its whole (newline-free) input: 300 MiB against a 64 MiB limit.
    let mut hog = spawn_in(&cg, "head -c 300M /dev/zero | tail; echo \"status $?\"");
    let st = wait_timeout(&mut hog, Duration::from_secs(60));
    let mut out = String::new();
    hog.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(st.success(), "the shell itself survives: {st:?}");
    assert_eq!(
        out.trim(),
        "status 137",
        "tail was SIGKILLed by the OOM killer"
    );
    let events = match &layout.memory {
        Placement::V2 => read(&cg.paths()[0].join("memory.events")),
        _ => read(&cg.paths()[0].join("memory.oom_control")),
    };
    let kills: u64 = events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(kills >= 1, "{events}");
    cg.destroy().unwrap();
}

#[test]
fn cgroup_pids_limit_stops_a_fork_loop() {
    if !root_or_skip("cgroup_pids_limit_stops_a_fork_loop") {
        return;
    }
    let layout = cgroup::detect().unwrap();
    let cg = layout.create(&unique("t-pids")).unwrap();
    cg.apply_limits(&Limits {
        pids: Some(8),
        ..Default::default()
    })
    .unwrap();
    let mut sh = spawn_in(
        &cg,
        "i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done; echo forked-all; wait",
    );
    std::thread::sleep(Duration::from_millis(500));
    let n = cg.procs().len();
    let pid_dir = cg
        .paths()
        .into_iter()
        .find(|p| p.join("pids.max").exists())
        .unwrap();
    let events = read(&pid_dir.join("pids.events"));
    println!("tasks in group: {n}; pids.events: {events}");
    assert!(n <= 8, "{n} tasks despite pids.max=8");
    let hits: u64 = events
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(hits >= 1, "fork failures counted: {events}");
    cg.kill_all();
    let _ = wait_timeout(&mut sh, Duration::from_secs(5));
    let mut out = String::new();
    sh.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(!out.contains("forked-all"), "all 40 forks succeeded: {out}");
    cg.destroy().unwrap();
    for p in cg.paths() {
        assert!(!p.exists());
    }
}

#[test]
fn cgroup_setup_timing() {
    if !root_or_skip("cgroup_setup_timing") {
        return;
    }
    let layout = cgroup::detect().unwrap();
    let limits = Limits {
        memory_bytes: Some(256 << 20),
        cpus: Some(1.0),
        pids: Some(256),
        disk_bytes: None,
    };
    let (mut create, mut destroy) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let name = unique("t-time");
        let t = Instant::now();
        let cg = layout.create(&name).unwrap();
        cg.apply_limits(&limits).unwrap();
        create.push(t.elapsed());
        let t = Instant::now();
        cg.destroy().unwrap();
        destroy.push(t.elapsed());
    }
    println!(
        "cgroup create+apply_limits median {:?}, destroy (empty) median {:?}",
        median(create),
        median(destroy)
    );
}

// ---------------------------------------------------------------- network

/// One network test at a time: they share the bridge and the nft table.
static NET: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn connect_from(netns: Option<BorrowedFd<'_>>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    connect_within(netns, addr, Duration::from_millis(600))
}

/// For a connection that must succeed: the first packet over a new veth can wait behind the
/// other tests' CPU hogs on a small machine, far longer than a refusal needs.
fn connect_within(
    netns: Option<BorrowedFd<'_>>,
    addr: SocketAddr,
    limit: Duration,
) -> std::io::Result<TcpStream> {
    let f = move || TcpStream::connect_timeout(&addr, limit);
    match netns {
        Some(ns) => net::run_in_netns(ns, f).unwrap(),
        None => f(),
    }
}

fn listen_in(netns: BorrowedFd<'_>) -> TcpListener {
    net::run_in_netns(netns, || TcpListener::bind("0.0.0.0:0").unwrap()).unwrap()
}

/// Runs `sh -c script` inside `netns` (setns before exec) and returns its stdout.
fn sh_in(netns: BorrowedFd<'_>, script: &str) -> String {
    let fd = netns.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    // SAFETY: setns(2) is async-signal-safe; `fd` stays open until the child has exec'd.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The host's first global IPv4 address outside our bridge (e.g. eth0's).
fn host_address(cfg: &NetConfig) -> Option<Ipv4Addr> {
    run(&["ip", "-o", "-4", "addr", "show", "scope", "global"])
        .lines()
        .filter(|l| l.split_whitespace().nth(1) != Some(cfg.bridge.as_str()))
        .find_map(|l| l.split_whitespace().nth(3)?.split('/').next()?.parse().ok())
}

/// A fake "outside" network: a netns behind a host veth, 198.51.100.2 inside, .1 on the host.
struct Outside {
    host_if: String,
    netns: OwnedFd,
}

fn make_outside() -> Outside {
    let netns = net::run_in_netns(
        std::fs::File::open("/proc/self/ns/net").unwrap().as_fd(),
        || {
            // SAFETY: only this short-lived thread's netns changes.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                .unwrap();
            OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").unwrap())
        },
    )
    .unwrap();
    let host_if = format!("cpo{}", std::process::id() % 100_000);
    let peer = format!("{host_if}p");
    let nspath = format!("/proc/{}/fd/{}", std::process::id(), netns.as_raw_fd());
    run(&[
        "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
    ]);
    run(&["ip", "link", "set", &peer, "netns", &nspath]);
    run(&["ip", "addr", "add", "198.51.100.1/30", "dev", &host_if]);
    run(&["ip", "link", "set", &host_if, "up"]);
    sh_in(
        netns.as_fd(),
        &format!(
            "ip link set lo up && ip addr add 198.51.100.2/30 dev {peer} && ip link set {peer} up"
        ),
    );
    Outside { host_if, netns }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn net_host_and_sandboxes() {
    if !root_or_skip("net_host_and_sandboxes") {
        return;
    }
    let _g = NET.lock().await;
    let cfg = NetConfig::default();
    let had_bridge = std::path::Path::new(&format!("/sys/class/net/{}", cfg.bridge)).exists();
    let fwd_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();

    net::ensure_host(&cfg).await.unwrap();
    let t = Instant::now();
    net::ensure_host(&cfg).await.unwrap();
    println!("ensure_host when already set up: {:?}", t.elapsed());
    assert!(net::nft_table_exists("coppice").unwrap());
    assert!(!net::nft_table_exists("coppice-no-such-table").unwrap());
    let ruleset = run(&["nft", "list", "table", "inet", "coppice"]);
    assert!(ruleset.contains("masquerade"), "{ruleset}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );
    let br = run(&["ip", "-o", "-4", "addr", "show", "dev", &cfg.bridge]);
    assert!(br.contains("10.88.0.1/16"), "{br}");

    // Slots unlikely to collide with anything else on this host.
    let base = 60_000 + (std::process::id() % 2_000) * 2;
    let a = net::create(&cfg, base).await.unwrap();
    let b = net::create(&cfg, base + 1).await.unwrap();
    assert_eq!(a.ip, cfg.sandbox_ip(base));
    assert!(net::list_host_ifs().await.unwrap().contains(&a.host_if));

    // Inside A, seen by a real process.
    let inside = sh_in(
        a.netns.as_fd(),
        "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/net/ipv4/ping_group_range; \
         ip -o -4 addr show dev eth0; ip route show default; ip -o link show lo",
    );
    assert!(inside.starts_with("0\n0\t2147483647\n"), "{inside}");
    assert!(inside.contains(&format!("inet {}/16", a.ip)), "{inside}");
    assert!(
        inside.contains("default via 10.88.0.1 dev eth0"),
        "{inside}"
    );
    assert!(
        inside.contains("state UNKNOWN") || inside.contains(",UP"),
        "lo up: {inside}"
    );
    let port = run(&["bridge", "-d", "link", "show", "dev", &a.host_if]);
    assert!(
        port.contains(&format!("master {}", cfg.bridge)) && port.contains("isolated on"),
        "{port}"
    );

    // Host services are unreachable from a sandbox: via the gateway and via eth0's address.
    // Dropped by the base rules, or refused once a daemon has loaded the policy's shared
    // chains (the table outlives daemons): never connected.
    let blocked =
        |e: &std::io::Error| matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::ConnectionRefused);
    let host_l = TcpListener::bind("0.0.0.0:0").unwrap();
    let hp = host_l.local_addr().unwrap().port();
    let e = connect_from(Some(a.netns.as_fd()), (cfg.gateway, hp).into()).unwrap_err();
    assert!(blocked(&e), "dropped or refused, not accepted: {e}");
    match host_address(&cfg) {
        Some(ip) => {
            assert!(
                connect_from(None, (ip, hp).into()).is_ok(),
                "host reaches its own listener"
            );
            let e = connect_from(Some(a.netns.as_fd()), (ip, hp).into()).unwrap_err();
            assert!(blocked(&e), "{ip}: {e}");
        }
        None => println!("no global host address besides the bridge: skipped that check"),
    }

    // B listens; the host reaches it, A does not.
    let b_l = listen_in(b.netns.as_fd());
    let bp = b_l.local_addr().unwrap().port();
    assert!(
        connect_from(None, (b.ip, bp).into()).is_ok(),
        "host -> sandbox"
    );
    assert!(
        connect_from(Some(a.netns.as_fd()), (b.ip, bp).into()).is_err(),
        "A -> B must fail"
    );
    // ...and B reaches A's listener only... not at all either.
    let a_l = listen_in(a.netns.as_fd());
    let ap = a_l.local_addr().unwrap().port();
    assert!(
        connect_from(Some(b.netns.as_fd()), (a.ip, ap).into()).is_err(),
        "B -> A must fail"
    );
    assert!(connect_from(None, (a.ip, ap).into()).is_ok(), "host -> A");

    // Egress: A reaches a fake outside network through forwarding + masquerade.
    let out = make_outside();
    let out_l = listen_in(out.netns.as_fd());
    let op = out_l.local_addr().unwrap().port();
    let s = connect_within(
        Some(a.netns.as_fd()),
        (Ipv4Addr::new(198, 51, 100, 2), op).into(),
        Duration::from_secs(10),
    );
    assert!(s.is_ok(), "sandbox -> outside: {s:?}");
    let (_conn, peer) = out_l.accept().unwrap();
    assert_eq!(
        peer.ip(),
        Ipv4Addr::new(198, 51, 100, 1),
        "masqueraded to the host's address"
    );
    // The outside cannot open connections into the sandbox.
    assert!(
        connect_from(Some(out.netns.as_fd()), (a.ip, ap).into()).is_err(),
        "outside -> A"
    );
    let rules = run(&["nft", "list", "chain", "inet", "coppice", "postrouting"]);
    // The IPv4 rule counted the flow (the IPv6 one, on the same chain, saw nothing).
    assert!(
        rules
            .lines()
            .any(|l| l.contains("ip saddr 10.88.0.0/16") && !l.contains("packets 0 bytes 0")),
        "masquerade counted: {rules}"
    );

    // Reloading the ruleset keeps set elements (room for per-sandbox policy).
    run(&[
        "nft",
        "add",
        "element",
        "inet",
        "coppice",
        "host_services",
        "{ udp . 5353 }",
    ]);
    net::load_ruleset(&cfg).await.unwrap();
    let set = run(&["nft", "list", "set", "inet", "coppice", "host_services"]);
    assert!(set.contains("udp . 5353"), "{set}");
    run(&[
        "nft",
        "delete",
        "element",
        "inet",
        "coppice",
        "host_services",
        "{ udp . 5353 }",
    ]);
    // The fast path notices a table deleted behind our back and loads it again.
    run(&["nft", "delete", "table", "inet", "coppice"]);
    net::ensure_host(&cfg).await.unwrap();
    assert!(net::nft_table_exists("coppice").unwrap());

    // Timing: create() x20.
    let mut times = Vec::new();
    let mut nets = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        nets.push(net::create(&cfg, base + 10 + i).await.unwrap());
        times.push(t.elapsed());
    }
    let t = Instant::now();
    for n in &nets {
        net::destroy(&n.host_if).await.unwrap();
    }
    let destroy_each = t.elapsed() / 20;
    println!(
        "net::create median {:?} (min {:?}, max {:?}); destroy mean {:?}",
        median(times.clone()),
        times.iter().min().unwrap(),
        times.iter().max().unwrap(),
        destroy_each
    );
    drop(nets);

    // A leftover host end (after a crash) is replaced, not an error.
    let again = net::create(&cfg, base).await;
    assert!(again.is_ok(), "{again:?}");
    drop(again);

    // Cleanup.
    run(&["ip", "link", "del", &out.host_if]);
    for h in [&a.host_if, &b.host_if] {
        net::destroy(h).await.unwrap();
        net::destroy(h).await.unwrap(); // already gone: Ok
    }
    let left = net::list_host_ifs().await.unwrap();
    assert!(
        !left.contains(&a.host_if) && !left.contains(&b.host_if),
        "{left:?}"
    );
    if !had_bridge {
        net::remove_host(&cfg).await.unwrap();
        std::fs::write("/proc/sys/net/ipv4/ip_forward", fwd_before.trim()).unwrap();
        assert!(!std::path::Path::new(&format!("/sys/class/net/{}", cfg.bridge)).exists());
    }
}

/// Runs `script` with the `nft` command (in the calling thread's network namespace).
fn nft_load(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft -f failed:\n{script}");
}

#[test]
fn nft_batches_over_netlink() {
    use coppice_runtime::linux::nftcompile::{self, SandboxAddrs};
    use coppice_runtime::linux::nftwire;
    use coppice_runtime::policy::{self, HostContext, NetworkPolicy, Rule};
    if !root_or_skip("nft_batches_over_netlink") {
        return;
    }
    // In a network namespace of this thread's own: the host's table is not touched.
    std::thread::spawn(|| {
        // SAFETY: unshare of the calling thread's network namespace only.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        let ctx = HostContext {
            resolver: Some("10.88.0.1".parse().unwrap()),
            sni_proxy_port: Some(15080),
            sni_proxy6: Some("fd88::1".parse().unwrap()),
            dns_servers: vec!["10.255.255.53".parse().unwrap()],
            ..Default::default()
        };
        nft_load(&nftcompile::nft_shared("coppice", &ctx));
        let mut conn = nftwire::Conn::open().unwrap();
        let addrs = SandboxAddrs {
            ip: Ipv4Addr::new(10, 88, 0, 7),
            ip6: Some("fd88::7".parse().unwrap()),
        };
        let p = NetworkPolicy {
            default: policy::DefaultAction::Deny,
            allow: vec![
                Rule::tcp("198.51.100.0/24", &[443]),
                Rule::cidr("10.9.0.0/16"),
                Rule::cidr("2001:db8::/32"),
            ],
            deny: vec![Rule::cidr("0.0.0.0/0")],
            domains: vec!["api.allowed.test".into()],
            ..Default::default()
        }
        .check()
        .unwrap();
        let ops = nftcompile::apply_ops(5, addrs, &p, &ctx, &[]);
        conn.run(&ops).unwrap();
        let list = |what: &[&str]| {
            let out = Command::new("nft").args(what).output().unwrap();
            assert!(out.status.success(), "nft {what:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        // What the kernel holds, as nft itself decodes it: the same rules as the text form.
        let chain = list(&["list", "chain", "inet", "coppice", "sbx5"]);
        println!("{chain}");
        for want in [
            "ip daddr 198.51.100.0/24 tcp dport 443 accept",
            "ip6 daddr 2001:db8::/32 accept",
            "goto policy_reject",
            "comment \"default deny\"",
        ] {
            assert!(chain.contains(want), "{want:?} in\n{chain}");
        }
        let exempt = list(&["list", "chain", "inet", "coppice", "sbx5_exempt"]);
        println!("{exempt}");
        assert!(exempt.contains("ip daddr 10.9.0.0/16 accept"), "{exempt}");
        assert!(
            exempt.contains("ip daddr 10.88.0.1 tcp dport 15080 accept"),
            "{exempt}"
        );
        assert!(
            exempt.contains("ip6 daddr fd88::1 tcp dport 15080 accept"),
            "{exempt}"
        );
        let map = list(&["list", "map", "inet", "coppice", "sandbox_policy6"]);
        assert!(map.contains("fd88::7 : goto sbx5"), "{map}");
        // Applying again (an update) is valid whatever is already there.
        conn.run(&ops).unwrap();

        // Domain admissions of both families, as the kernel and nft read them back; an update
        // that drops them deletes them in its own transaction.
        let admitted: Vec<nftcompile::ElemKey> = ["198.51.100.41", "2001:db8:10::29"]
            .iter()
            .map(|d| addrs.admission(d.parse().unwrap()).unwrap())
            .collect();
        let adds: Vec<nftcompile::NftOp> = admitted
            .iter()
            .map(|&key| nftcompile::NftOp::AddElem {
                set: key.domain_set().unwrap(),
                key,
                data: nftcompile::ElemData::None,
            })
            .collect();
        conn.run(&adds).unwrap();
        let set4 = || list(&["list", "set", "inet", "coppice", nftcompile::DOMAIN_SET4]);
        let set6 = || list(&["list", "set", "inet", "coppice", nftcompile::DOMAIN_SET6]);
        assert!(set4().contains("10.88.0.7 . 198.51.100.41"), "{}", set4());
        assert!(set6().contains("fd88::7 . 2001:db8:10::29"), "{}", set6());
        conn.run(&nftcompile::apply_ops(5, addrs, &p, &ctx, &admitted))
            .unwrap();
        assert!(!set4().contains("198.51.100.41"), "{}", set4());
        assert!(!set6().contains("2001:db8:10::29"), "{}", set6());

        // A refused op fails the whole batch, names the op, and leaves the socket usable.
        let bad = vec![
            nftcompile::NftOp::FlushChain("sbx5".into()),
            nftcompile::NftOp::DelChain("no-such-chain".into()),
        ];
        let t = Instant::now();
        let err = conn.run(&bad).unwrap_err().to_string();
        assert!(
            err.contains("delete chain inet coppice no-such-chain"),
            "{err}"
        );
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert!(
            list(&["list", "chain", "inet", "coppice", "sbx5"]).contains("tcp dport 443"),
            "the flush in the failed batch did not happen"
        );
        conn.run(&nftcompile::remove_ops(5, addrs)).unwrap();
        let table = list(&["list", "table", "inet", "coppice"]);
        assert!(!table.contains("sbx5"), "{table}");
    })
    .join()
    .unwrap();
}
