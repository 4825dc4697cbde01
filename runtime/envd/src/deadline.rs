//! How long the host waits for an agent to answer (docs/security.md). A stopped agent (SIGSTOP,
//! or a tracer holding it) still accepts connections on its socket and reads nothing, so every
//! call to it would hang; these bounds turn that into a prompt `DeadlineExceeded`:
//!
//! - the agent's process is looked at while an answer is awaited: stopped means fail now;
//! - the response head must come within `head` of the request body's end (an upload's time
//!   on the wire does not count; the agent answers it once it has it all).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

use crate::client::BoxBody;
use crate::connect::{Code, ConnectError};

/// How often a pending call looks at the agent's process.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// The bounds of one client's calls.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// Host pid of the agent, whose state is looked at while waiting.
    pub pid: Option<i32>,
    /// From the end of the request body to the response head.
    pub head: Duration,
}

/// Why an agent is not answering, read from `/proc/<pid>/stat` (None: running or gone).
pub fn stopped(pid: i32) -> Option<&'static str> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
    match state {
        'T' => Some("the sandbox's agent is stopped (SIGSTOP)"),
        't' => Some("the sandbox's agent is stopped by a tracer"),
        _ => None,
    }
}

impl Deadline {
    /// Runs `call` (which sends `body`'s wrapper made by [`Deadline::watch_body`]) within the
    /// bounds.
    pub async fn bound<T>(
        &self,
        body_done: Arc<BodyDone>,
        call: impl Future<Output = Result<T, ConnectError>>,
    ) -> Result<T, ConnectError> {
        let head = self.head;
        let pid = self.pid;
        let expired = async move {
            body_done.wait().await;
            tokio::time::sleep(head).await;
            ConnectError::new(
                Code::DeadlineExceeded,
                format!("the sandbox's agent did not answer within {head:?}"),
            )
        };
        let stopped = async move {
            let Some(pid) = pid else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(LOOK_EVERY).await;
                if let Some(why) = stopped(pid) {
                    return ConnectError::new(Code::DeadlineExceeded, why);
                }
            }
        };
        tokio::select! {
            r = call => r,
            e = expired => Err(e),
            e = stopped => Err(e),
        }
    }
}

/// Set once a request body has been sent to its end.
#[derive(Default)]
pub struct BodyDone {
    done: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl BodyDone {
    fn set(&self) {
        self.done.store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_waiters();
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.done.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// `body`, reporting its end to the returned flag (at once for an empty body).
pub fn watch_body(body: BoxBody) -> (BoxBody, Arc<BodyDone>) {
    let done = Arc::new(BodyDone::default());
    if body.is_end_stream() {
        done.set();
        return (body, done);
    }
    let watched = Watched {
        inner: body,
        done: done.clone(),
    };
    (http_body_util::BodyExt::boxed_unsync(watched), done)
}

struct Watched {
    inner: BoxBody,
    done: Arc<BodyDone>,
}

impl Body for Watched {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.done.set();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // A body dropped unfinished (the call failed) must not leave the deadline waiting.
        self.done.set();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::full_body;

    #[test]
    fn process_states() {
        assert_eq!(stopped(std::process::id() as i32), None, "running");
        assert_eq!(stopped(i32::MAX), None, "gone");
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_fails() {
        let d = Deadline {
            pid: None,
            head: Duration::from_millis(50),
        };
        let (_body, done) = watch_body(full_body(Bytes::new()));
        let slow = async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        };
        let e = d.bound(done, slow).await.unwrap_err();
        assert_eq!(e.code, Code::DeadlineExceeded);
        let (_body, done) = watch_body(full_body(Bytes::new()));
        assert_eq!(d.bound(done, async { Ok(7) }).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn the_deadline_starts_when_the_body_is_sent() {
        let d = Deadline {
            pid: None,
            head: Duration::from_millis(50),
        };
        let (body, done) = watch_body(full_body(Bytes::from_static(b"upload")));
        // The body is still unsent after twice the deadline: no expiry yet.
        let call = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let _ = http_body_util::BodyExt::collect(body).await;
            Ok("answered")
        };
        assert_eq!(d.bound(done, call).await.unwrap(), "answered");
    }
}
