//! Group commit of the per-sandbox nft transactions (sent by linux/nftwire.rs), so a fork fan-out commits once.
//!
//! Every start and teardown of a networked sandbox runs one nftables transaction (its policy
//! chain and map element). A commit costs tens of milliseconds on a busy host whatever its
//! size, and libnftables runs synchronously; when 16 forks start at once those commits queued
//! one by one on tokio's worker threads. Here concurrent scripts are queued and a single
//! blocking worker commits everything queued so far as one transaction, so a fan-out costs a
//! few commits instead of one per sandbox. Scripts of different sandboxes touch different
//! chains and map elements, and the queue keeps their order. When a combined transaction
//! fails (nothing of it applied) each script is run again on its own, so one sandbox's error
//! reaches only its caller.

use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::linux::nftcompile::NftOp;

type Job = (Vec<NftOp>, oneshot::Sender<Result<()>>);

/// Queued scripts, and whether a worker is draining the queue.
static QUEUE: Mutex<(Vec<Job>, bool)> = Mutex::new((Vec::new(), false));

/// Runs `ops` as (part of) one nft transaction; returns once it is committed.
pub async fn run(ops: Vec<NftOp>) -> Result<()> {
    let (tx, rx) = oneshot::channel();
    let start_worker = {
        let mut q = QUEUE.lock().unwrap_or_else(|e| e.into_inner());
        q.0.push((ops, tx));
        !std::mem::replace(&mut q.1, true)
    };
    if start_worker {
        tokio::task::spawn_blocking(drain);
    }
    rx.await
        .map_err(|_| Error::internal("the nft batch worker ended early"))?
}

/// Commits batches until the queue is empty.
fn drain() {
    loop {
        let jobs = {
            let mut q = QUEUE.lock().unwrap_or_else(|e| e.into_inner());
            if q.0.is_empty() {
                q.1 = false;
                return;
            }
            std::mem::take(&mut q.0)
        };
        if jobs.len() > 1 {
            tracing::debug!(
                scripts = jobs.len(),
                "one nft transaction for several sandboxes"
            );
            let all: Vec<NftOp> = jobs
                .iter()
                .flat_map(|(ops, _)| ops.iter().cloned())
                .collect();
            if super::nftwire::run(&all).is_ok() {
                for (_, tx) in jobs {
                    let _ = tx.send(Ok(()));
                }
                continue;
            }
        }
        for (ops, tx) in jobs {
            let _ = tx.send(super::nftwire::run(&ops));
        }
    }
}
