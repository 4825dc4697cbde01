//! coppice-spawn: the Linux backend's spawn server. The daemon starts one `coppice-spawn
//! --serve` with a control socket on stdin; the server forks a single-threaded helper per
//! sandbox start (the daemon is a multi-threaded tokio server and must never fork). Protocol:
//! `coppice_runtime::linux::spawner`.

#[cfg(target_os = "linux")]
fn main() {
    use std::os::fd::{FromRawFd, OwnedFd};

    if std::env::args().nth(1).as_deref() != Some("--serve") {
        eprintln!(
            "usage: coppice-spawn --serve (started by `coppice serve`, control socket on stdin)"
        );
        std::process::exit(2);
    }
    // SAFETY: the daemon hands the control socket over as stdin; nothing else uses fd 0.
    let control = unsafe { OwnedFd::from_raw_fd(0) };
    if let Err(e) = coppice_runtime::linux::spawner::serve(control) {
        eprintln!("coppice-spawn: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("coppice-spawn is the Linux backend's helper");
    std::process::exit(2)
}
