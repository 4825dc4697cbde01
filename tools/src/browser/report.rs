//! What every browser tool answers, in playwright-mcp's sections: `### Result`, `### Open tabs`
//! (with more than one), `### Page` (URL, title, console counts), `### Modal state` (an open
//! dialog or file chooser), `### Snapshot` (the page after the action), and an image for
//! screenshots.

use schemars::JsonSchema;
use serde::Serialize;

use super::page::Page;
use super::protocol as p;
use super::session::Browser;
use super::snapshot::Scope;
use crate::Result;

/// An image the answer carries (MCP image content).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Image {
    /// image/png or image/jpeg.
    pub mime_type: String,
    /// Base64.
    pub data: String,
}

/// One tab.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Tab {
    /// Its place in the tab list (browser_tabs takes it).
    pub index: usize,
    /// Whether the tools act on it.
    pub current: bool,
    /// The page's title.
    pub title: String,
    /// The page's URL.
    pub url: String,
}

/// A browser tool's answer.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
pub struct Report {
    /// What the tool did or found.
    pub result: Option<String>,
    /// Every tab.
    pub tabs: Vec<Tab>,
    /// The current tab's URL.
    pub url: String,
    /// The current tab's title.
    pub title: String,
    /// Whether the current tab's renderer crashed.
    pub crashed: bool,
    /// Console errors since the page loaded.
    pub console_errors: usize,
    /// Console warnings since the page loaded.
    pub console_warnings: usize,
    /// An open dialog or file chooser that holds the page.
    pub modal: Vec<String>,
    /// The page's accessibility snapshot after the action.
    pub snapshot: Option<String>,
    /// A screenshot: image content of the answer, not repeated in its structured form.
    #[serde(skip)]
    #[schemars(skip)]
    pub image: Option<Image>,
}

impl Report {
    /// The answer as the text an agent reads.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        if let Some(r) = &self.result {
            out.push_str("### Result\n");
            out.push_str(r.trim_end());
            out.push_str("\n\n");
        }
        if self.tabs.len() > 1 {
            out.push_str("### Open tabs\n");
            for t in &self.tabs {
                let current = if t.current { " (current)" } else { "" };
                out.push_str(&format!(
                    "- {}:{current} [{}]({})\n",
                    t.index, t.title, t.url
                ));
            }
            out.push('\n');
        }
        if !self.url.is_empty() {
            out.push_str("### Page\n");
            out.push_str(&format!(
                "- Page URL: {}\n- Page Title: {}\n",
                self.url, self.title
            ));
            if self.crashed {
                out.push_str("- Page status: crashed\n");
            }
            if self.console_errors + self.console_warnings > 0 {
                out.push_str(&format!(
                    "- Console: {} errors, {} warnings\n",
                    self.console_errors, self.console_warnings
                ));
            }
            out.push('\n');
        }
        if !self.modal.is_empty() {
            out.push_str("### Modal state\n");
            for m in &self.modal {
                out.push_str(&format!("- {m}\n"));
            }
            out.push('\n');
        }
        if let Some(s) = &self.snapshot {
            out.push_str("### Snapshot\n```yaml\n");
            out.push_str(s);
            out.push_str("```\n");
        }
        out.trim_end().to_string() + "\n"
    }
}

/// How much of the page an answer describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// Page, tabs and modal state.
    Page,
    /// And the snapshot.
    Snapshot(Scope),
}

/// Describes `page` of `browser` after an action whose outcome is `result`.
pub(crate) async fn describe(
    browser: &Browser,
    page: &Page,
    result: Option<String>,
    detail: Detail,
) -> Result<Report> {
    let (pages, current) = browser.tabs();
    let mut tabs = Vec::with_capacity(pages.len());
    for (index, tab) in pages.iter().enumerate() {
        let info = target_info(browser, &tab.target_id).await;
        tabs.push(Tab {
            index,
            current: index == current,
            title: info.as_ref().map(|i| i.title.clone()).unwrap_or_default(),
            url: info.map(|i| i.url).unwrap_or_default(),
        });
    }
    let info = target_info(browser, &page.target_id).await;
    let (crashed, errors, warnings, modal) = {
        let st = page.state.lock();
        let this_load = st.console.iter().filter(|m| m.load == st.load);
        let errors = this_load.clone().filter(|m| m.level == "error").count();
        let warnings = this_load.filter(|m| m.level == "warning").count();
        let mut modal = Vec::new();
        if let Some(d) = &st.dialog {
            modal.push(format!(
                "[\"{}\" dialog with message \"{}\"]: can be handled by browser_handle_dialog",
                d.kind, d.message
            ));
        }
        if st.file_chooser.is_some() {
            modal.push("[File chooser]: can be handled by browser_file_upload".into());
        }
        (st.crashed, errors, warnings, modal)
    };
    let snapshot = match detail {
        Detail::Snapshot(scope) if modal.is_empty() && !crashed => {
            Some(page.snapshot(&browser.cdp, scope).await?)
        }
        _ => None,
    };
    Ok(Report {
        result,
        tabs,
        url: info.as_ref().map(|i| i.url.clone()).unwrap_or_default(),
        title: info.map(|i| i.title).unwrap_or_default(),
        crashed,
        console_errors: errors,
        console_warnings: warnings,
        modal,
        snapshot,
        image: None,
    })
}

async fn target_info(browser: &Browser, target_id: &str) -> Option<p::TargetInfo> {
    browser
        .cdp
        .call(
            None,
            &p::GetTargetInfo {
                target_id: target_id.into(),
            },
        )
        .await
        .ok()
        .map(|t| t.target_info)
}
