//! The sandbox network: what a sandbox can and cannot reach.

use super::*;

#[test]
fn network_blocks_host_and_neighbours_but_not_the_host_to_sandbox() {
    let Some(_g) = shared() else { return };
    let (a, b) = (create(&[]), create(&[]));
    let b_ip = b.info()["ip"]
        .as_str()
        .expect("sandbox has an IP")
        .to_string();
    assert!(a.info()["ip"].is_string());

    // A host service on every address: not reachable from a sandbox.
    let host = TcpListener::bind("0.0.0.0:0").unwrap();
    host.set_nonblocking(true).unwrap();
    let port = host.local_addr().unwrap().port();
    let mut host_ips = vec!["10.88.0.1".to_string(), "127.0.0.1".to_string()];
    let addrs = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&addrs.stdout).lines() {
        let cidr = line
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .unwrap_or("");
        let ip = cidr.split('/').next().unwrap_or("").to_string();
        if !ip.is_empty() && !host_ips.contains(&ip) {
            host_ips.push(ip);
        }
    }
    for ip in &host_ips {
        let out = a.sh(&format!(
            "timeout 3 bash -c 'echo hi > /dev/tcp/{ip}/{port}'"
        ));
        assert_ne!(out.code, 0, "sandbox reached the host's {ip}:{port}");
    }
    assert!(
        host.accept().is_err(),
        "the host listener got a connection from a sandbox"
    );

    // A server in B: B itself and the host reach it, A does not.
    b.sh_ok("setsid python3 -m http.server 8123 --bind 0.0.0.0 </dev/null >/dev/null 2>&1 &");
    let up = eventually(Duration::from_secs(10), || {
        b.sh("curl -sf -o /dev/null http://127.0.0.1:8123/").code == 0
    });
    assert!(up, "the server in B did not start");
    let addr = format!("{b_ip}:8123").parse().unwrap();
    let mut conn =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("host -> sandbox");
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    let _ = conn.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.0 200"), "{reply:?}");
    let out = a.sh(&format!("curl -s -m 3 -o /dev/null http://{b_ip}:8123/"));
    assert_ne!(out.code, 0, "sandbox A reached sandbox B's server");
    let out = a.sh(&format!(
        "timeout 3 bash -c 'echo hi > /dev/tcp/{b_ip}/8123'"
    ));
    assert_ne!(out.code, 0, "sandbox A reached sandbox B's port");
}
