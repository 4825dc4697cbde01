//! A full disk.

use super::*;

/// Unmounts (lazily) on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test]
async fn disk_full_is_507() {
    let agent = Agent::launch("root", "warn").await;
    let small = PathBuf::from(agent.path("small"));
    std::fs::create_dir(&small).unwrap();
    // A 1 MiB tmpfs; skipped where mounting is not allowed.
    if nix::mount::mount(
        Some("tmpfs"),
        &small,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .is_err()
    {
        return;
    }
    let _mount = Mount(small.clone());
    let target = small.join("too-big.bin");
    let (status, body) = agent
        .post_files(
            &format!("path={}", query_escape(target.to_str().unwrap())),
            "application/octet-stream",
            &[],
            pattern_body(4 * 1024 * 1024, Vec::new(), Vec::new()),
        )
        .await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["code"], 507);
}
