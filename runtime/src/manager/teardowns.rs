//! At most one teardown per sandbox at a time: a kill and the reaper, or two kills, wait for
//! the one in progress instead of destroying a sandbox twice.

use std::collections::HashSet;
use std::sync::Mutex;

use tokio::sync::Notify;

/// Sandboxes being torn down, so that a kill and the reaper (which sees a dying init as
/// "died"), or two kills, never destroy one sandbox twice at once.
#[derive(Default)]
pub(super) struct Teardowns {
    ids: Mutex<HashSet<String>>,
    done: Notify,
}

/// An id held in [`Teardowns`] until dropped.
pub(super) struct TeardownClaim<'a> {
    teardowns: &'a Teardowns,
    id: String,
}

impl Teardowns {
    /// None when another caller is already tearing `id` down.
    pub(super) fn take(&self, id: &str) -> Option<TeardownClaim<'_>> {
        self.ids
            .lock()
            .expect("teardowns")
            .insert(id.to_string())
            .then(|| TeardownClaim {
                teardowns: self,
                id: id.to_string(),
            })
    }

    pub(super) fn active(&self, id: &str) -> bool {
        self.ids.lock().expect("teardowns").contains(id)
    }

    /// Returns once nobody is tearing `id` down.
    pub(super) async fn wait(&self, id: &str) {
        loop {
            // Registered before the check, so a release in between still wakes us.
            let released = self.done.notified();
            if !self.active(id) {
                return;
            }
            released.await;
        }
    }
}

impl Drop for TeardownClaim<'_> {
    fn drop(&mut self) {
        self.teardowns
            .ids
            .lock()
            .expect("teardowns")
            .remove(&self.id);
        self.teardowns.done.notify_waiters();
    }
}
