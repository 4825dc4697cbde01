//! One mapping from runtime errors to tool error text, with the next step spelled out.

use coppice_envd::Code;
use coppice_runtime::Error;

/// What a failed call was about, for the hint in its error text.
#[derive(Clone, Copy)]
pub(crate) enum About {
    Sandbox,
    Process,
    File,
    Browser,
}

pub(crate) fn explain(e: Error, about: About) -> String {
    match e {
        e @ Error::SandboxEnded { .. } => format!(
            "{e}; call sandbox_list to see live sandboxes, or omit sandbox_id to use your default sandbox"
        ),
        Error::SandboxNotFound(id) => format!(
            "sandbox '{id}' not found (it was killed or timed out); call sandbox_list to see live sandboxes, or omit sandbox_id to use your default sandbox"
        ),
        Error::TemplateNotFound(t) => {
            format!("template '{t}' not found; omit template to use the default one")
        }
        Error::InvalidArgument(m) => m,
        Error::Agent(c) => match (c.code, about) {
            (Code::NotFound, About::Process) => format!(
                "{}; the process has exited or never existed: call commands_list to see running processes",
                c.message
            ),
            (Code::NotFound, _) => format!(
                "{}; check the path with files_list on its directory (relative paths start at /home/user)",
                c.message
            ),
            (Code::PermissionDenied, _) => format!(
                "{}; files tools act as the sandbox's default user 'user': use commands_run with user \"root\" for system paths",
                c.message
            ),
            (Code::AlreadyExists, _) => format!("{}; choose another path", c.message),
            (Code::Unavailable, _) => format!(
                "the sandbox's agent did not answer ({}); the sandbox may have died: check it with sandbox_info, or omit sandbox_id to get a fresh default sandbox",
                c.message
            ),
            (Code::InvalidArgument, About::Process) => {
                format!("{}; check cwd and user (\"user\" or \"root\")", c.message)
            }
            _ => c.message,
        },
        Error::Unavailable(m) => format!("{m}; retry in a moment"),
        other => {
            let _ = about;
            other.to_string()
        }
    }
}
