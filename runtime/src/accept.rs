//! Accepting sandboxes' connections to the daemon's own services (the resolver's TCP port,
//! the domain check proxy, exposed ports): a cap on open connections per source address, so
//! one sandbox cannot take the daemon's descriptors, and a pause instead of a busy retry
//! when the daemon is out of them anyway. (nftables caps the same per sandbox before they
//! reach the daemon: linux/net.rs.)

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Open connections per source address, bounded.
pub struct PerSource {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection's place; freed when dropped.
pub struct Slot {
    owner: Arc<PerSource>,
    ip: IpAddr,
}

impl PerSource {
    /// A bound of `max` open connections per source address.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection from `ip`, or None when it has `max` open.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The next connection. Errors are logged and retried; those that say the daemon is out of
/// descriptors or memory wait first (retrying at once would spin on the same error).
pub async fn next(listener: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                let exhausted = matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                if exhausted {
                    tracing::warn!("{what}: accepting: {e}; pausing 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                } else {
                    tracing::debug!("{what}: accepting: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_source_and_frees_on_drop() {
        let caps = PerSource::new(2);
        let a: IpAddr = "10.88.0.2".parse().unwrap();
        let b: IpAddr = "10.88.0.3".parse().unwrap();
        let one = caps.take(a).unwrap();
        let _two = caps.take(a).unwrap();
        assert!(caps.take(a).is_none(), "a third from the same source");
        assert!(caps.take(b).is_some(), "another source is not affected");
        drop(one);
        assert!(caps.take(a).is_some(), "a freed place is reusable");
    }
}
