//! Starts a real `coppice-agent` for the integration tests: on its own socket in a scratch
//! directory, healthy before it is handed out, killed, reaped and cleaned up on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use coppice_envd::AgentClient;

pub struct Agent {
    pub child: Child,
    pub client: AgentClient,
    /// Scratch directory for the test's files (world-writable, so `user` can work in it); the
    /// agent's socket and log live in its parent.
    pub dir: PathBuf,
}

impl Agent {
    /// `log` is the agent's COPPICE_AGENT_LOG level; its output goes to `agent.log` beside
    /// the socket.
    pub async fn launch(default_user: &str, log: &str) -> Agent {
        static N: AtomicUsize = AtomicUsize::new(0);
        let scratch = std::env::temp_dir().join(format!(
            "coppice-agent-it-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&scratch);
        let dir = scratch.join("work");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let socket = scratch.join("agent.sock");
        let log_file = std::fs::File::create(scratch.join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_coppice-agent"))
            .arg("--listen")
            .arg(&socket)
            .args(["--default-user", default_user])
            .env("COPPICE_AGENT_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("agent binary starts");
        // Owned by `Agent` at once, so a failed start is still killed and reaped on drop.
        let agent = Agent {
            child,
            client: AgentClient::new(&socket),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !agent.client.healthy().await {
            assert!(Instant::now() < deadline, "agent did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        agent
    }

    #[allow(dead_code)] // not every test binary needs it
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(scratch) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(scratch);
        }
    }
}
