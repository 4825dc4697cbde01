//! Output as progress notifications: one per chunk, the text cut to a size every client
//! shows, labelled with its stream.

use rmcp::RoleServer;
use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::service::Peer;

/// Most bytes of one chunk a notification repeats (the result holds everything).
const NOTE_TEXT_BYTES: usize = 8192;

/// Sends `[label] text` as progress `progress` on `token`; a client that went away is only
/// logged.
pub(crate) async fn notify_output(
    peer: &Peer<RoleServer>,
    token: &ProgressToken,
    progress: f64,
    label: &str,
    text: &str,
) {
    let mut cut = text.len().min(NOTE_TEXT_BYTES);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let ellipsis = if cut < text.len() { "…" } else { "" };
    let note = ProgressNotificationParam::new(token.clone(), progress)
        .with_message(format!("[{label}] {}{ellipsis}", &text[..cut]));
    if let Err(e) = peer.notify_progress(note).await {
        tracing::debug!("progress notification not sent: {e}");
    }
}
