//! Exposed inbound ports: for each `expose` entry of a sandbox's network policy the daemon
//! listens on the host (`expose_bind`, loopback by default) and relays every connection to
//! that port on the sandbox's bridge address. The connection to the sandbox starts on the
//! host, so the bridge's forward chain (which refuses every new connection into the bridge)
//! stays closed to everything else: only listed ports are reachable from outside.
//!
//! A removed entry closes its listener and the connections relayed through it.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::error::{Error, Result};
use crate::policy::{Expose, Protocol};

/// One open listener: sandbox port → host address.
struct Listener {
    host: SocketAddr,
    /// Accept loop and its relays (aborting the task ends them all).
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Aborts the accept loop and waits until its task is dropped, so the port is closed (and
    /// every relayed connection reset) when this returns, not at the runtime's next turn.
    async fn shut(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An exposed port as reported in sandbox info.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExposedPort {
    /// The port inside the sandbox.
    pub port: u16,
    /// "tcp".
    pub protocol: String,
    /// Where it is reachable on the host, e.g. "127.0.0.1:41234".
    pub host: String,
}

/// Every sandbox's listeners.
pub struct Exposer {
    bind: IpAddr,
    open: Mutex<HashMap<String, HashMap<u16, Listener>>>,
}

impl Exposer {
    /// No listeners yet; they will listen on the IP address `bind` (else `InvalidArgument`).
    pub fn new(bind: &str) -> Result<Exposer> {
        let bind = bind.trim().parse().map_err(|_| {
            Error::InvalidArgument(format!(
                "expose_bind '{bind}' is not an IP address (e.g. 127.0.0.1 or 0.0.0.0)"
            ))
        })?;
        Ok(Exposer {
            bind,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Makes sandbox `id`'s listeners exactly `wanted` (relaying to `target`, its bridge
    /// address) and returns `wanted` with every host port filled in. Kept entries keep their
    /// listener (and port); new ones are bound before anything is closed, so a failure (a
    /// host port in use) changes nothing.
    pub async fn sync(&self, id: &str, target: IpAddr, wanted: &[Expose]) -> Result<Vec<Expose>> {
        let current: HashMap<u16, SocketAddr> = self
            .open
            .lock()
            .get(id)
            .map(|m| m.iter().map(|(p, l)| (*p, l.host)).collect())
            .unwrap_or_default();
        let mut fresh: HashMap<u16, Listener> = HashMap::new();
        let mut resolved = Vec::with_capacity(wanted.len());
        for e in wanted {
            let keep = current
                .get(&e.port)
                .filter(|h| e.host_port.is_none_or(|p| p == h.port()));
            let host = match keep {
                Some(h) => *h,
                None => {
                    let addr = SocketAddr::new(self.bind, e.host_port.unwrap_or(0));
                    let listener = TcpListener::bind(addr).await.map_err(|err| {
                        Error::FailedPrecondition(format!(
                            "cannot expose port {} on {addr}: {err} (ask for another host_port \
                             or omit it to let the daemon pick one)",
                            e.port
                        ))
                    })?;
                    let host = listener
                        .local_addr()
                        .map_err(Error::io("reading the listener's address"))?;
                    let task = tokio::spawn(relay(listener, SocketAddr::new(target, e.port)));
                    fresh.insert(e.port, Listener { host, task });
                    host
                }
            };
            resolved.push(Expose {
                port: e.port,
                protocol: Some(Protocol::Tcp),
                host_port: Some(host.port()),
            });
        }
        let removed: Vec<Listener> = {
            let mut open = self.open.lock();
            let mine = open.entry(id.to_string()).or_default();
            let gone: Vec<u16> = mine
                .keys()
                .filter(|port| {
                    !resolved.iter().any(|r| r.port == **port) || fresh.contains_key(port)
                })
                .copied()
                .collect();
            let removed = gone.iter().filter_map(|p| mine.remove(p)).collect();
            mine.extend(fresh);
            if mine.is_empty() {
                open.remove(id);
            }
            removed
        };
        for l in removed {
            l.shut().await;
        }
        Ok(resolved)
    }

    /// Closes every listener of sandbox `id` (it is gone).
    pub async fn close(&self, id: &str) {
        let removed = self.open.lock().remove(id).unwrap_or_default();
        for (_, l) in removed {
            l.shut().await;
        }
    }

    /// Sandbox `id`'s open listeners, by sandbox port.
    pub fn ports(&self, id: &str) -> Vec<ExposedPort> {
        let mut out: Vec<ExposedPort> = self
            .open
            .lock()
            .get(id)
            .map(|m| {
                m.iter()
                    .map(|(port, l)| ExposedPort {
                        port: *port,
                        protocol: "tcp".into(),
                        host: l.host.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|p| p.port);
        out
    }
}

/// Accepts connections and relays each to `target` until either side closes. The relays live
/// in this task's JoinSet, so aborting the task ends them too.
async fn relay(listener: TcpListener, target: SocketAddr) {
    let mut relays = JoinSet::new();
    loop {
        tokio::select! {
            (mut inbound, _) = crate::accept::next(&listener, "exposed port") => {
                relays.spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return; // nothing listens in the sandbox: the caller sees EOF
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn exp(port: u16, host_port: Option<u16>) -> Expose {
        Expose {
            port,
            protocol: None,
            host_port,
        }
    }

    /// Whether connecting to `port` is refused within 2 s. Not at once: another test of this
    /// binary that spawns a process holds a copy of every fd (this listener's too) between its
    /// fork and exec, and while that copy lives the port still takes connections into its
    /// backlog. CLOEXEC closes it at the exec.
    async fn refused_soon(port: u16) -> bool {
        for _ in 0..200 {
            match TcpStream::connect(("127.0.0.1", port)).await {
                Err(_) => return true,
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
        false
    }

    /// Real sockets on loopback: an "inside" echo server, exposed, updated and removed.
    #[tokio::test]
    async fn relays_keeps_and_closes() {
        let inside = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inside_port = inside.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = inside.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = c.read(&mut buf).await {
                        if n == 0 || c.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let x = Exposer::new("127.0.0.1").unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let got = x.sync("sbx", lo, &[exp(inside_port, None)]).await.unwrap();
        let host_port = got[0].host_port.unwrap();
        assert_ne!(host_port, inside_port);
        let mut c = TcpStream::connect(("127.0.0.1", host_port)).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(x.ports("sbx")[0].host, format!("127.0.0.1:{host_port}"));

        // Same entry again: same port, the open connection lives on.
        let again = x.sync("sbx", lo, &[exp(inside_port, None)]).await.unwrap();
        assert_eq!(again[0].host_port, Some(host_port));
        c.write_all(b"pong").await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");

        // A host port in use fails and changes nothing.
        let busy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let busy_port = busy.local_addr().unwrap().port();
        let e = x
            .sync("sbx", lo, &[exp(1, Some(busy_port))])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("cannot expose port 1"), "{e}");
        assert_eq!(x.ports("sbx").len(), 1);

        // Removal closes the listener and the relayed connection.
        x.sync("sbx", lo, &[]).await.unwrap();
        assert!(x.ports("sbx").is_empty());
        assert!(
            refused_soon(host_port).await,
            "port {host_port} still accepts"
        );
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), c.read(&mut buf))
            .await
            .expect("relay closed");
        assert!(matches!(n, Ok(0) | Err(_)));
        assert!(Exposer::new("localhost").is_err());
    }
}
