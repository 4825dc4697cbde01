//! coppice-spawn: starts one sandbox from a plan on stdin (JSON `SpawnPlan`) and prints its
//! init's host pid (JSON `SpawnResult`). A separate single-threaded process because the daemon
//! is a multi-threaded tokio server and must never fork.

#[cfg(target_os = "linux")]
fn main() {
    use std::io::Read;

    use coppice_runtime::linux::spawn::{SpawnPlan, execute};

    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        fail(&format!("reading the plan: {e}"));
    }
    let plan: SpawnPlan = match serde_json::from_str(&input) {
        Ok(p) => p,
        Err(e) => fail(&format!("malformed plan: {e}")),
    };
    match execute(&plan) {
        Ok(result) => {
            let out = serde_json::to_string(&result).expect("result serializes");
            // stdout is the reply channel to the daemon.
            println!("{out}");
        }
        Err(e) => fail(&e),
    }
}

#[cfg(target_os = "linux")]
fn fail(msg: &str) -> ! {
    println!("{}", serde_json::json!({ "error": msg }));
    std::process::exit(1)
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("coppice-spawn is the Linux backend's helper");
    std::process::exit(2)
}
