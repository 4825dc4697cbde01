//! Browser tools: a headless Chromium inside the sandbox (started by its agent on the first
//! call), driven over CDP with playwright-mcp's tool set. Each answer describes the page after
//! the action (its URL, title, tabs, an open dialog, and its accessibility snapshot, whose
//! refs the next action takes as `target`). This file holds the page-level tools; element
//! input is in `actions.rs`.

mod actions;
mod cdp;
mod input;
mod keys;
mod page;
mod protocol;
mod report;
pub mod requests;
mod session;
mod snapshot;

use std::time::Duration;

use base64::Engine;
use serde_json::Value;

pub use report::{Image, Report};
pub(crate) use session::Registry;

use self::page::cdp_error;
use self::protocol as p;
use self::report::{Detail, describe};
use self::requests as r;
use self::snapshot::Scope;
use crate::{Error, Result, Tools};

/// How long a navigation may take to load.
const NAVIGATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an action's own navigation may take before the answer goes out anyway.
const ACTION_SETTLE: Duration = Duration::from_secs(10);
/// How long `browser_evaluate` may run before its script is terminated.
const EVALUATE_TIMEOUT: Duration = Duration::from_secs(15);

const FULL: Detail = Detail::Snapshot(Scope {
    root: None,
    depth: None,
});

/// Where the browser's CDP endpoint is, for the HTTP surface's proxy.
pub struct CdpEndpoint {
    /// Chromium's DevTools port on the sandbox's loopback.
    pub port: u16,
    /// The browser target's WebSocket path, `/devtools/browser/<id>`.
    pub ws_path: String,
    /// `Browser.getVersion`'s answer: product, protocolVersion, userAgent, jsVersion.
    pub version: serde_json::Value,
}

impl Tools {
    /// The sandbox's browser's DevTools port and browser target (started if needed), for
    /// external CDP clients such as Playwright's `connect_over_cdp`.
    pub async fn browser_cdp_endpoint(&self, id: &str) -> Result<CdpEndpoint> {
        let b = self.browser(id).await?;
        Ok(CdpEndpoint {
            port: b.agent.port,
            ws_path: b.agent.ws_path.clone(),
            version: serde_json::to_value(&b.version).unwrap_or_default(),
        })
    }

    /// A byte stream to the sandbox's browser's DevTools server (through the agent's loopback
    /// tunnel), and the browser target's WebSocket path: what the CDP endpoint proxies.
    pub async fn browser_devtools_stream(
        &self,
        id: &str,
    ) -> Result<(
        impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        String,
    )> {
        let b = self.browser(id).await?;
        let stream = self.rt.agent(id)?.tunnel(b.agent.port).await?;
        Ok((stream, b.agent.ws_path.clone()))
    }

    /// Loads a URL in the current tab and waits for it to load.
    pub async fn browser_navigate(&self, id: &str, req: r::Navigate) -> Result<Report> {
        let b = self.browser(id).await?;
        let page = b.page().await?;
        let url = normalize_url(&req.url)?;
        navigate(&b.cdp, &page, &url).await?;
        describe(&b, &page, None, FULL).await
    }

    /// Goes back one page in the current tab's history.
    pub async fn browser_navigate_back(&self, id: &str) -> Result<Report> {
        let b = self.browser(id).await?;
        let page = b.page().await?;
        let history = b
            .cdp
            .call(page.session(), &p::GetNavigationHistory {})
            .await
            .map_err(cdp_error)?;
        let Some(entry) = history
            .current_index
            .checked_sub(1)
            .and_then(|i| history.entries.get(i))
        else {
            return Err(Error::FailedPrecondition(
                "there is no previous page in this tab's history".into(),
            ));
        };
        let before = page.state.lock().load;
        b.cdp
            .call(
                page.session(),
                &p::NavigateToHistoryEntry { entry_id: entry.id },
            )
            .await
            .map_err(cdp_error)?;
        page.wait_until(NAVIGATION_TIMEOUT, |st| st.load > before && !st.loading)
            .await;
        describe(&b, &page, None, FULL).await
    }

    /// The current tab's accessibility snapshot (or a subtree of it), or saved to a file.
    pub async fn browser_snapshot(&self, id: &str, req: r::Snapshot) -> Result<Report> {
        let b = self.browser(id).await?;
        let page = b.page().await?;
        page.usable()?;
        let root = req.target.as_deref().map(|t| page.resolve(t)).transpose()?;
        let scope = Scope {
            root,
            depth: req.depth.map(|d| d as usize),
        };
        let mut report = describe(&b, &page, None, Detail::Snapshot(scope)).await?;
        if report.crashed {
            // It crashed meanwhile: the snapshot asked for cannot be had.
            return Err(Error::FailedPrecondition(page::CRASHED.into()));
        }
        if let Some(file) = &req.filename {
            let yaml = report.snapshot.take().unwrap_or_default();
            let path = self.write_file(id, file, yaml.into_bytes()).await?;
            report.result = Some(format!("Saved the snapshot to {path}"));
        }
        Ok(report)
    }

    /// The snapshot's lines that match a text or a regex.
    pub async fn browser_find(&self, id: &str, req: r::Find) -> Result<Report> {
        let matcher: Box<dyn Fn(&str) -> bool + Send + Sync> = match (&req.text, &req.regex) {
            (Some(t), None) => {
                let t = t.to_lowercase();
                Box::new(move |line: &str| line.to_lowercase().contains(&t))
            }
            (None, Some(re)) => {
                let re = regex::Regex::new(re)
                    .map_err(|e| Error::InvalidArgument(format!("regex: {e}")))?;
                Box::new(move |line: &str| re.is_match(line))
            }
            _ => {
                return Err(Error::InvalidArgument(
                    "give exactly one of text and regex".into(),
                ));
            }
        };
        let b = self.browser(id).await?;
        let page = b.page().await?;
        let mut report = describe(&b, &page, None, FULL).await?;
        let yaml = report.snapshot.take().unwrap_or_default();
        let hits: Vec<&str> = yaml.lines().filter(|l| matcher(l)).collect();
        report.result = Some(if hits.is_empty() {
            "No element of the page snapshot matches".into()
        } else {
            format!("```yaml\n{}\n```", hits.join("\n"))
        });
        Ok(report)
    }

    /// Runs a JavaScript function in the page (on an element with a target).
    pub async fn browser_evaluate(&self, id: &str, req: r::Evaluate) -> Result<Report> {
        let b = self.browser(id).await?;
        let page = b.page().await?;
        page.usable()?;
        let call = async {
            match &req.target {
                Some(t) => {
                    let node = page.resolve(t)?;
                    let f = format!("function() {{ return ({})(this); }}", req.function);
                    input::call_on(&b.cdp, &page, node, &f, vec![]).await
                }
                None => {
                    let eval = p::Evaluate {
                        expression: format!("({})()", req.function),
                        await_promise: true,
                        return_by_value: true,
                    };
                    let call = b.cdp.call_within(
                        page.session(),
                        &eval,
                        EVALUATE_TIMEOUT + Duration::from_secs(5),
                    );
                    // A dialog the script opens holds it until answered.
                    let done = tokio::select! {
                        r = call => r.map_err(cdp_error)?,
                        _ = page.until_dialog() => return Ok(None),
                    };
                    if let Some(ex) = done.exception_details {
                        return Err(Error::InvalidArgument(format!(
                            "the page threw: {}",
                            input::exception_text(&ex)
                        )));
                    }
                    Ok(done
                        .result
                        .value
                        .or(done.result.unserializable_value.map(Value::String)))
                }
            }
        };
        let value = match tokio::time::timeout(EVALUATE_TIMEOUT, call).await {
            Ok(v) => v?,
            Err(_) => {
                // A script that never returns holds the page's only thread: end it.
                let _ = b.cdp.call(page.session(), &p::TerminateExecution {}).await;
                return Err(Error::FailedPrecondition(format!(
                    "the function did not return within {} s and was terminated; the page \
                     stays usable",
                    EVALUATE_TIMEOUT.as_secs()
                )));
            }
        };
        let text = match value {
            None => "undefined".to_string(),
            Some(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
        };
        page.settle(ACTION_SETTLE).await;
        describe(&b, &page, Some(text), FULL).await
    }

    /// A PNG or JPEG of the viewport, the full page or an element.
    pub async fn browser_take_screenshot(&self, id: &str, req: r::Screenshot) -> Result<Report> {
        let format = match req.kind.as_deref().unwrap_or("png") {
            "png" => "png",
            "jpeg" | "jpg" => "jpeg",
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown image type '{other}': use png or jpeg"
                )));
            }
        };
        let b = self.browser(id).await?;
        let page = b.page().await?;
        page.usable()?;
        let clip = match &req.target {
            Some(t) => {
                let node = page.resolve(t)?;
                let (x, y, w, h) = element_box(&b, &page, node, t).await?;
                Some(p::Viewport {
                    x,
                    y,
                    width: w,
                    height: h,
                    scale: 1.0,
                })
            }
            None => None,
        };
        let full = req.full_page.unwrap_or(false) && clip.is_none();
        let shot = b
            .cdp
            .call(
                page.session(),
                &p::CaptureScreenshot {
                    format: format.into(),
                    quality: (format == "jpeg").then_some(80),
                    clip,
                    capture_beyond_viewport: full || clip.is_some(),
                },
            )
            .await
            .map_err(cdp_error)?;
        let what = if full {
            "the full page"
        } else if clip.is_some() {
            "the element"
        } else {
            "the viewport"
        };
        let mut result = format!("Took a screenshot of {what}");
        if let Some(file) = &req.filename {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&shot.data)
                .map_err(Error::internal)?;
            let path = self.write_file(id, file, bytes).await?;
            result.push_str(&format!(", saved to {path}"));
        }
        let mut report = describe(&b, &page, Some(result), Detail::Page).await?;
        report.image = Some(Image {
            mime_type: format!("image/{format}"),
            data: shot.data,
        });
        Ok(report)
    }

    /// Prints the page to a PDF file in the sandbox.
    pub async fn browser_pdf_save(&self, id: &str, req: r::PdfSave) -> Result<Report> {
        let b = self.browser(id).await?;
        let page = b.page().await?;
        page.usable()?;
        let pdf = b
            .cdp
            .call(
                page.session(),
                &p::PrintToPdf {
                    print_background: true,
                },
            )
            .await
            .map_err(cdp_error)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&pdf.data)
            .map_err(Error::internal)?;
        let file = req.filename.unwrap_or_else(|| {
            format!(
                "/tmp/page-{}.pdf",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0)
            )
        });
        let size = bytes.len();
        let path = self.write_file(id, &file, bytes).await?;
        describe(
            &b,
            &page,
            Some(format!("Saved the page as PDF to {path} ({size} bytes)")),
            Detail::Page,
        )
        .await
    }

    /// The tab's console messages at a level and above.
    pub async fn browser_console_messages(
        &self,
        id: &str,
        req: r::ConsoleMessages,
    ) -> Result<Report> {
        let rank = |level: &str| match level {
            "error" => Some(0),
            "warning" => Some(1),
            "info" => Some(2),
            "debug" => Some(3),
            _ => None,
        };
        let wanted = req.level.as_deref().unwrap_or("info");
        let max = rank(wanted).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown level '{wanted}': use error, warning, info or debug"
            ))
        })?;
        let b = self.browser(id).await?;
        let page = b.page().await?;
        let lines: Vec<String> = {
            let st = page.state.lock();
            st.console
                .iter()
                .filter(|m| req.all.unwrap_or(false) || m.load == st.load)
                .filter(|m| rank(m.level).is_some_and(|r| r <= max))
                .map(|m| {
                    let at = m
                        .location
                        .as_deref()
                        .map(|l| format!(" @ {l}"))
                        .unwrap_or_default();
                    format!("[{}] {}{at}", m.level.to_uppercase(), m.text)
                })
                .collect()
        };
        let result = if lines.is_empty() {
            "No console messages".to_string()
        } else {
            lines.join("\n")
        };
        describe(&b, &page, Some(result), Detail::Page).await
    }

    /// The tab's requests since its last navigation.
    pub async fn browser_network_requests(
        &self,
        id: &str,
        req: r::NetworkRequests,
    ) -> Result<Report> {
        let filter = req
            .filter
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
            .map_err(|e| Error::InvalidArgument(format!("filter: {e}")))?;
        let b = self.browser(id).await?;
        let page = b.page().await?;
        let lines: Vec<String> = {
            let st = page.state.lock();
            st.requests
                .iter()
                .filter(|q| q.load == st.load)
                .filter(|q| filter.as_ref().is_none_or(|f| f.is_match(&q.url)))
                .filter(|q| {
                    let static_kind = matches!(
                        q.resource.as_str(),
                        "Image" | "Font" | "Stylesheet" | "Script" | "Media"
                    );
                    let ok = q.failure.is_none() && q.status.is_some_and(|s| s < 400);
                    req.include_static.unwrap_or(false) || !(static_kind && ok)
                })
                .map(|q| {
                    let outcome = match (&q.failure, q.status) {
                        (Some(f), _) => format!("[FAILED] {f}"),
                        (None, Some(s)) => {
                            format!("[{s}] {}", q.status_text).trim_end().to_string()
                        }
                        (None, None) => "[pending]".into(),
                    };
                    format!("[{}] {} => {outcome}", q.method, q.url)
                })
                .collect()
        };
        let result = if lines.is_empty() {
            "No requests".to_string()
        } else {
            lines.join("\n")
        };
        describe(&b, &page, Some(result), Detail::Page).await
    }

    /// Waits for a time, or for a text to appear or go.
    pub async fn browser_wait_for(&self, id: &str, req: r::WaitFor) -> Result<Report> {
        let b = self.browser(id).await?;
        let page = b.page().await?;
        let limit = Duration::from_secs_f64(req.time.unwrap_or(30.0).clamp(0.0, 300.0));
        let result = match (&req.text, &req.text_gone) {
            (None, None) => {
                if req.time.is_none() {
                    return Err(Error::InvalidArgument("give time, text or textGone".into()));
                }
                tokio::time::sleep(limit).await;
                format!("Waited for {} s", limit.as_secs_f64())
            }
            (text, gone) => {
                let (needle, present) = match (text, gone) {
                    (Some(t), _) => (t.clone(), true),
                    (None, Some(g)) => (g.clone(), false),
                    _ => unreachable!(),
                };
                let began = std::time::Instant::now();
                loop {
                    page.usable()?;
                    let has = b
                        .cdp
                        .call(
                            page.session(),
                            &p::Evaluate {
                                expression: format!(
                                    "!!(document.body && document.body.innerText.includes({}))",
                                    serde_json::to_string(&needle).unwrap_or_default()
                                ),
                                await_promise: false,
                                return_by_value: true,
                            },
                        )
                        .await
                        .map_err(cdp_error)?
                        .result
                        .value
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false);
                    if has == present {
                        break;
                    }
                    if began.elapsed() >= limit {
                        return Err(Error::FailedPrecondition(format!(
                            "the text \"{needle}\" {} within {} s",
                            if present {
                                "did not appear"
                            } else {
                                "was still there"
                            },
                            limit.as_secs_f64()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if present {
                    format!("Waited for text \"{needle}\" to appear")
                } else {
                    format!("Waited for text \"{needle}\" to disappear")
                }
            }
        };
        describe(&b, &page, Some(result), FULL).await
    }

    /// Sets the viewport's size.
    pub async fn browser_resize(&self, id: &str, req: r::Resize) -> Result<Report> {
        if !(1..=10_000).contains(&req.width) || !(1..=10_000).contains(&req.height) {
            return Err(Error::InvalidArgument(
                "width and height are 1..=10000 CSS pixels".into(),
            ));
        }
        let b = self.browser(id).await?;
        let page = b.page().await?;
        b.cdp
            .call(
                page.session(),
                &p::SetDeviceMetricsOverride {
                    width: req.width,
                    height: req.height,
                    device_scale_factor: 1.0,
                    mobile: false,
                },
            )
            .await
            .map_err(cdp_error)?;
        let result = format!("Resized the viewport to {}x{}", req.width, req.height);
        describe(&b, &page, Some(result), FULL).await
    }

    /// Lists, opens, closes or selects tabs.
    pub async fn browser_tabs(&self, id: &str, req: r::Tabs) -> Result<Report> {
        let b = self.browser(id).await?;
        let (result, page) = match req.action.as_str() {
            "list" => (None, b.page().await?),
            "new" => {
                let url = match &req.url {
                    Some(u) => normalize_url(u)?,
                    None => "about:blank".into(),
                };
                let page = b.new_tab(&url).await?;
                page.settle(NAVIGATION_TIMEOUT).await;
                (Some(format!("Opened a new tab at {url}")), page)
            }
            "select" => {
                let index = req
                    .index
                    .ok_or_else(|| Error::InvalidArgument("select needs the tab's index".into()))?;
                let page = b.select(index)?;
                let _ = b.cdp.call(page.session(), &p::BringToFront {}).await;
                (Some(format!("Selected tab {index}")), page)
            }
            "close" => {
                let (pages, current) = b.tabs();
                let index = req.index.unwrap_or(current);
                let page = pages.get(index).cloned().ok_or_else(|| {
                    Error::InvalidArgument(format!("no tab {index}: there are {}", pages.len()))
                })?;
                b.cdp
                    .call(
                        None,
                        &p::CloseTarget {
                            target_id: page.target_id.clone(),
                        },
                    )
                    .await
                    .map_err(cdp_error)?;
                // The browser reports the tab gone; wait for that so the list is current.
                let target = page.target_id.clone();
                for _ in 0..50 {
                    if b.tabs().0.iter().all(|p| p.target_id != target) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (Some(format!("Closed tab {index}")), b.page().await?)
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown action '{other}': use list, new, close or select"
                )));
            }
        };
        let mut report = describe(&b, &page, result, Detail::Page).await?;
        if report.result.is_none() {
            report.result = Some(
                report
                    .tabs
                    .iter()
                    .map(|t| {
                        let current = if t.current { " (current)" } else { "" };
                        format!("- {}:{current} [{}]({})", t.index, t.title, t.url)
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        }
        Ok(report)
    }

    /// Ends the browser.
    pub async fn browser_close(&self, id: &str) -> Result<Report> {
        self.end_browser(id).await?;
        Ok(Report {
            result: Some("Closed the browser; the next browser call starts a new one".into()),
            ..Default::default()
        })
    }
}

/// A URL as typed: `localhost:3000/x` and `example.org` get a scheme, as in an address bar.
fn normalize_url(url: &str) -> Result<String> {
    let url = url.trim();
    if url.is_empty() {
        return Err(Error::InvalidArgument("url is empty".into()));
    }
    if url.contains("://") || url.starts_with("about:") || url.starts_with("data:") {
        return Ok(url.to_string());
    }
    if url.starts_with("localhost") || url.starts_with("127.") {
        return Ok(format!("http://{url}"));
    }
    Ok(format!("https://{url}"))
}

/// Loads `url` in `page` and waits for its load event (a same-document jump has none).
async fn navigate(cdp: &cdp::Cdp, page: &page::Page, url: &str) -> Result<()> {
    {
        let st = page.state.lock();
        if let Some(d) = &st.dialog {
            return Err(Error::FailedPrecondition(format!(
                "a \"{}\" dialog is open (\"{}\"): answer it with browser_handle_dialog first",
                d.kind, d.message
            )));
        }
    }
    // A crashed tab's renderer is made anew by the navigation.
    let before = {
        let mut st = page.state.lock();
        st.crashed = false;
        st.load
    };
    let nav = cdp
        .call_within(
            page.session(),
            &p::Navigate { url: url.into() },
            NAVIGATION_TIMEOUT,
        )
        .await
        .map_err(|e| match e {
            cdp::CdpError::Timeout { .. } => Error::FailedPrecondition(format!(
                "navigation to {url} timed out after {} s",
                NAVIGATION_TIMEOUT.as_secs()
            )),
            other => cdp_error(other),
        })?;
    if let Some(err) = nav.error_text.filter(|e| !e.is_empty()) {
        return Err(Error::FailedPrecondition(format!(
            "navigation to {url} failed: {err}"
        )));
    }
    if nav.loader_id.is_none() {
        return Ok(());
    }
    let loaded = page
        .wait_until(NAVIGATION_TIMEOUT, |st| {
            (st.load > before && !st.loading) || st.crashed || st.dialog.is_some()
        })
        .await;
    if !loaded {
        return Err(Error::FailedPrecondition(format!(
            "{url} did not finish loading within {} s (the page stays as far as it got)",
            NAVIGATION_TIMEOUT.as_secs()
        )));
    }
    Ok(())
}

/// An element's box in page coordinates (for a screenshot's clip).
async fn element_box(
    b: &session::Browser,
    page: &page::Page,
    node: i64,
    target: &str,
) -> Result<(f64, f64, f64, f64)> {
    input::center(&b.cdp, page, node, target).await?;
    let rect = input::call_on(
        &b.cdp,
        page,
        node,
        "function() { const r = this.getBoundingClientRect(); \
           return [r.x + scrollX, r.y + scrollY, r.width, r.height]; }",
        vec![],
    )
    .await?
    .and_then(|v| serde_json::from_value::<[f64; 4]>(v).ok())
    .ok_or_else(|| Error::internal("no box for the element"))?;
    if rect[2] <= 0.0 || rect[3] <= 0.0 {
        return Err(Error::FailedPrecondition(format!(
            "element {target} has an empty box"
        )));
    }
    Ok((rect[0], rect[1], rect[2], rect[3]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_a_scheme_as_in_an_address_bar() {
        assert_eq!(
            normalize_url("localhost:3000/x").unwrap(),
            "http://localhost:3000/x"
        );
        assert_eq!(normalize_url("example.org").unwrap(), "https://example.org");
        assert_eq!(
            normalize_url("http://10.0.0.1/").unwrap(),
            "http://10.0.0.1/"
        );
        assert!(normalize_url(" ").is_err());
    }
}
