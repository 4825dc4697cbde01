//! A sandbox's browser as the tools hold it: the agent starts Chromium (`POST /browser`), the
//! daemon opens one CDP connection to it through the agent's loopback tunnel, attaches to
//! every tab (those the page or another CDP client opens too) and routes each tab's events to
//! it. One per sandbox, made on the first browser call and again after a crash or a close.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Deserialize;

use super::cdp::Cdp;
use super::page::{Page, cdp_error};
use super::protocol as p;
use crate::{Error, Result, Tools};

/// What the agent says of the browser it runs.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct AgentBrowser {
    pub port: u16,
    pub ws_path: String,
}

pub(crate) struct Browser {
    pub cdp: Cdp,
    pub agent: AgentBrowser,
    pub version: p::Version,
    tabs: Mutex<Tabs>,
}

#[derive(Default)]
struct Tabs {
    pages: Vec<Arc<Page>>,
    current: usize,
}

/// The browsers of all sandboxes, and a lock per sandbox so that one start runs at a time.
#[derive(Default)]
pub(crate) struct Registry {
    browsers: Mutex<HashMap<String, Arc<Browser>>>,
    starting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Browser {
    /// The current tab (a new one when the page closed them all).
    pub async fn page(&self) -> Result<Arc<Page>> {
        {
            let tabs = self.tabs.lock();
            if let Some(page) = tabs.pages.get(tabs.current) {
                return Ok(page.clone());
            }
        }
        self.new_tab("about:blank").await
    }

    /// Every tab, in order, and which is current.
    pub fn tabs(&self) -> (Vec<Arc<Page>>, usize) {
        let tabs = self.tabs.lock();
        (tabs.pages.clone(), tabs.current)
    }

    pub async fn new_tab(&self, url: &str) -> Result<Arc<Page>> {
        let created = self
            .cdp
            .call(None, &p::CreateTarget { url: url.into() })
            .await
            .map_err(cdp_error)?;
        let page = self.adopt(&created.target_id).await?;
        self.select_page(&page);
        Ok(page)
    }

    /// Attaches to a tab unless it is known already.
    async fn adopt(&self, target_id: &str) -> Result<Arc<Page>> {
        if let Some(p) = self.find(target_id) {
            return Ok(p);
        }
        let page = Page::attach(&self.cdp, target_id).await?;
        let mut tabs = self.tabs.lock();
        if let Some(p) = tabs.pages.iter().find(|p| p.target_id == target_id) {
            return Ok(p.clone());
        }
        tabs.pages.push(page.clone());
        Ok(page)
    }

    fn find(&self, target_id: &str) -> Option<Arc<Page>> {
        let tabs = self.tabs.lock();
        tabs.pages
            .iter()
            .find(|p| p.target_id == target_id)
            .cloned()
    }

    pub fn select_page(&self, page: &Arc<Page>) {
        let mut tabs = self.tabs.lock();
        if let Some(i) = tabs.pages.iter().position(|p| Arc::ptr_eq(p, page)) {
            tabs.current = i;
        }
    }

    pub fn select(&self, index: usize) -> Result<Arc<Page>> {
        let mut tabs = self.tabs.lock();
        let page = tabs.pages.get(index).cloned().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "no tab {index}: there are {} (browser_tabs with action \"list\" shows them)",
                tabs.pages.len()
            ))
        })?;
        tabs.current = index;
        Ok(page)
    }

    fn forget(&self, target_id: &str) {
        let mut tabs = self.tabs.lock();
        let Some(i) = tabs.pages.iter().position(|p| p.target_id == target_id) else {
            return;
        };
        tabs.pages.remove(i);
        if tabs.current > i || tabs.current >= tabs.pages.len() {
            tabs.current = tabs.current.saturating_sub(1);
        }
    }

    /// Follows the browser's events: tabs opening and closing, each tab's own events.
    fn follow(self: &Arc<Self>) {
        let mut events = self.cdp.events();
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let e = match events.recv().await {
                    Ok(e) => e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("browser events: {n} dropped");
                        continue;
                    }
                    Err(_) => return,
                };
                let Some(me) = me.upgrade() else { return };
                match (e.method.as_str(), &e.session_id) {
                    ("Target.targetCreated", None) => {
                        let info = &e.params["targetInfo"];
                        if info["type"] == "page"
                            && let Some(id) = info["targetId"].as_str()
                        {
                            let id = id.to_string();
                            tokio::spawn(async move {
                                if let Err(err) = me.adopt(&id).await {
                                    tracing::debug!("new tab {id}: {err}");
                                }
                            });
                        }
                    }
                    ("Target.targetDestroyed", None) => {
                        if let Some(id) = e.params["targetId"].as_str() {
                            me.forget(id);
                        }
                    }
                    (_, Some(session)) => {
                        let page = {
                            let tabs = me.tabs.lock();
                            tabs.pages
                                .iter()
                                .find(|p| &p.session_id == session)
                                .cloned()
                        };
                        if let Some(page) = page {
                            page.on_event(&e);
                        }
                    }
                    _ => {}
                }
            }
        });
    }
}

impl Tools {
    /// The sandbox's browser, started (or started again) when there is none.
    pub(crate) async fn browser(&self, id: &str) -> Result<Arc<Browser>> {
        if let Some(b) = self.live_browser(id) {
            return Ok(b);
        }
        let lock = self
            .browsers
            .starting
            .lock()
            .entry(id.to_string())
            .or_default()
            .clone();
        let _one_start = lock.lock().await;
        if let Some(b) = self.live_browser(id) {
            return Ok(b);
        }
        let browser = self.connect_browser(id).await?;
        self.browsers
            .browsers
            .lock()
            .insert(id.to_string(), browser.clone());
        Ok(browser)
    }

    /// The sandbox's browser while its connection lives; a dead one is dropped here.
    fn live_browser(&self, id: &str) -> Option<Arc<Browser>> {
        let mut map = self.browsers.browsers.lock();
        match map.get(id) {
            Some(b) if !b.cdp.is_closed() => Some(b.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    async fn connect_browser(&self, id: &str) -> Result<Arc<Browser>> {
        let agent = self.agent_browser(id, http::Method::POST).await?;
        let Some(agent) = agent else {
            return Err(Error::internal("the agent returned no browser"));
        };
        let tunnel = self.rt.agent(id)?.tunnel(agent.port).await?;
        let cdp = Cdp::connect(tunnel, &agent.ws_path)
            .await
            .map_err(Error::Unavailable)?;
        let version = cdp.call(None, &p::GetVersion {}).await.map_err(cdp_error)?;
        let browser = Arc::new(Browser {
            cdp: cdp.clone(),
            agent,
            version,
            tabs: Mutex::new(Tabs::default()),
        });
        browser.follow();
        // Downloads land in the profile, under the sandbox's limits.
        let _ = cdp
            .call(
                None,
                &p::SetDownloadBehavior {
                    behavior: "allowAndName",
                    download_path: Some("/tmp/.coppice-browser/profile/Downloads".into()),
                    events_enabled: true,
                },
            )
            .await;
        cdp.call(None, &p::SetDiscoverTargets { discover: true })
            .await
            .map_err(cdp_error)?;
        let targets = cdp.call(None, &p::GetTargets {}).await.map_err(cdp_error)?;
        for t in targets.target_infos.iter().filter(|t| t.kind == "page") {
            browser.adopt(&t.target_id).await?;
        }
        Ok(browser)
    }

    /// `POST /browser` (start if needed) or `DELETE /browser` (end it) on the agent.
    async fn agent_browser(&self, id: &str, method: http::Method) -> Result<Option<AgentBrowser>> {
        self.agent_json(id, method, "/browser", None, |_, _, body| {
            let text = String::from_utf8_lossy(body).trim().to_string();
            Error::FailedPrecondition(format!("the sandbox's browser could not start: {text}"))
        })
        .await
    }

    /// Ends the sandbox's browser (all its tabs); the next browser call starts a fresh one.
    pub(crate) async fn end_browser(&self, id: &str) -> Result<bool> {
        let had = self.browsers.browsers.lock().remove(id).is_some();
        self.agent_browser(id, http::Method::DELETE).await?;
        Ok(had)
    }
}
