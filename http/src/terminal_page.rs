//! `GET /terminals/{tid}?token=…`: the terminal in a browser (xterm.js 6 bundled at build
//! time, see build.rs) attached over the terminal's WebSocket, with who else is attached.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use coppice_runtime::Error;
use coppice_tools::terminals::Role;
use serde::Deserialize;

use crate::guard::ShareTokenOnly;
use crate::{ApiError, AppState};

mod assets {
    include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));
}

const PAGE: &str = include_str!("terminal_page.html");

#[derive(Deserialize)]
pub(crate) struct PageQuery {
    token: Option<String>,
}

/// The page. A share token decides the role; a request that passed the daemon's bearer check
/// (or came over the unix socket) gets a writer page.
pub(crate) async fn page(
    State(t): AppState,
    Path(tid): Path<String>,
    Query(q): Query<PageQuery>,
    share_only: Option<Extension<ShareTokenOnly>>,
) -> Result<Response, ApiError> {
    let share = match q.token.as_deref() {
        Some(token) => {
            let (term, role) = t.terminal_by_token(&tid, token).ok_or_else(|| {
                Error::PermissionDenied(format!("the token does not open terminal '{tid}'"))
            })?;
            t.share_terminal(&term.sandbox, &tid, role)?
        }
        None if share_only.is_some() => {
            return Err(Error::PermissionDenied("a share token is required".into()).into());
        }
        None => {
            let sandbox = t
                .find_terminal(&tid)
                .ok_or_else(|| Error::TerminalNotFound {
                    sandbox: "any".into(),
                    terminal: tid.clone(),
                })?
                .sandbox
                .clone();
            t.share_terminal(&sandbox, &tid, Role::Writer)?
        }
    };
    if assets::XTERM_JS.is_none() {
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            "this Coppice binary was built without xterm.js: run scripts/setup.sh (it installs \
             npm @xterm/xterm into /opt/coppice-web) and rebuild",
        )
            .into_response());
    }
    let role = match share.role {
        Role::Writer => "writer",
        Role::Viewer => "viewer",
    };
    let html = PAGE
        .replace("{{TERMINAL}}", &html_escape(&tid))
        .replace("{{ROLE}}", role)
        .replace("{{WS_PATH}}", &html_escape(&share.ws_path));
    Ok((
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(html),
    )
        .into_response())
}

/// The bundled scripts and styles.
pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "xterm.js" => (assets::XTERM_JS, "text/javascript"),
        "xterm.css" => (assets::XTERM_CSS, "text/css"),
        "addon-fit.js" => (assets::FIT_JS, "text/javascript"),
        _ => (None, ""),
    };
    match body {
        Some(b) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            b,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
