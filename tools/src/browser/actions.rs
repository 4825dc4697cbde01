//! The browser tools that act on the page as a person would: click, hover, drag, type, fill a
//! form, pick options, press keys, choose files, answer dialogs, and the coordinate (vision)
//! group. Each settles (waits for a navigation it started) and answers with a fresh snapshot.

use std::sync::Arc;
use std::time::Duration;

use super::page::{Page, cdp_error};
use super::protocol as p;
use super::report::describe;
use super::requests as r;
use super::session::Browser;
use super::{ACTION_SETTLE, FULL, Report, input, keys};
use crate::{Error, Result, Tools};

impl Tools {
    /// The browser and its current tab, ready for input (no dialog open, not crashed).
    async fn for_input(&self, id: &str) -> Result<(Arc<Browser>, Arc<Page>)> {
        let b = self.browser(id).await?;
        let page = b.page().await?;
        page.usable()?;
        Ok((b, page))
    }

    async fn after(&self, b: &Browser, page: &Page, result: String) -> Result<Report> {
        page.settle(ACTION_SETTLE).await;
        describe(b, page, Some(result), FULL).await
    }

    /// Clicks an element of the snapshot.
    pub async fn browser_click(&self, id: &str, req: r::Click) -> Result<Report> {
        let (b, page) = self.for_input(id).await?;
        let node = page.resolve(&req.target)?;
        let button = input::button(req.button.as_deref())?;
        let mods = input::modifiers(req.modifiers.as_deref().unwrap_or_default())?;
        let at = input::center(&b.cdp, &page, node, &req.target).await?;
        let clicks = if req.double_click.unwrap_or(false) {
            2
        } else {
            1
        };
        input::click_at(&b.cdp, &page, at, button, clicks, mods).await?;
        let what = if clicks == 2 {
            "Double-clicked"
        } else {
            "Clicked"
        };
        self.after(
            &b,
            &page,
            format!("{what} {}", label(&req.element, &req.target)),
        )
        .await
    }

    /// Moves the mouse over an element.
    pub async fn browser_hover(&self, id: &str, req: r::Hover) -> Result<Report> {
        let (b, page) = self.for_input(id).await?;
        let node = page.resolve(&req.target)?;
        let (x, y) = input::center(&b.cdp, &page, node, &req.target).await?;
        input::mouse_move(&b.cdp, &page, x, y).await?;
        self.after(
            &b,
            &page,
            format!("Hovered over {}", label(&req.element, &req.target)),
        )
        .await
    }

    /// Drags one element onto another.
    pub async fn browser_drag(&self, id: &str, req: r::Drag) -> Result<Report> {
        let (b, page) = self.for_input(id).await?;
        let from = page.resolve(&req.start_target)?;
        let to = page.resolve(&req.end_target)?;
        let from = input::center(&b.cdp, &page, from, &req.start_target).await?;
        let to = input::center(&b.cdp, &page, to, &req.end_target).await?;
        input::drag(&b.cdp, &page, from, to).await?;
        let result = format!(
            "Dragged {} to {}",
            label(&req.start_element, &req.start_target),
            label(&req.end_element, &req.end_target)
        );
        self.after(&b, &page, result).await
    }

    /// Types text into an editable element (replacing its content), optionally submitting.
    pub async fn browser_type(&self, id: &str, req: r::Type) -> Result<Report> {
        let (b, page) = self.for_input(id).await?;
        let node = page.resolve(&req.target)?;
        if req.slowly.unwrap_or(false) {
            input::center(&b.cdp, &page, node, &req.target).await?;
            b.cdp
                .call(
                    page.session(),
                    &p::Focus {
                        backend_node_id: node,
                    },
                )
                .await
                .map_err(cdp_error)?;
            input::type_slowly(&b.cdp, &page, &req.text).await?;
        } else {
            input::fill(&b.cdp, &page, node, &req.text).await?;
        }
        if req.submit.unwrap_or(false) {
            input::press(&b.cdp, &page, &keys::chord("Enter")?).await?;
        }
        let result = format!("Typed into {}", label(&req.element, &req.target));
        self.after(&b, &page, result).await
    }

    /// Fills in several fields of a form.
    pub async fn browser_fill_form(&self, id: &str, req: r::FillForm) -> Result<Report> {
        let (b, page) = self.for_input(id).await?;
        if req.fields.is_empty() {
            return Err(Error::InvalidArgument("fields is empty".into()));
        }
        for f in &req.fields {
            let node = page.resolve(&f.target)?;
            let failed = |e: Error| Error::InvalidArgument(format!("field \"{}\": {e}", f.name));
            match f.kind.as_str() {
                "textbox" => input::fill(&b.cdp, &page, node, &f.value)
                    .await
                    .map_err(failed)?,
                "checkbox" | "radio" => {
                    let want = match f.value.as_str() {
                        "true" => true,
                        "false" => false,
                        other => {
                            return Err(failed(Error::InvalidArgument(format!(
                                "value '{other}' for a {}: use \"true\" or \"false\"",
                                f.kind
                            ))));
                        }
                    };
                    if input::is_checked(&b.cdp, &page, node)
                        .await
                        .map_err(failed)?
                        != want
                    {
                        let at = input::center(&b.cdp, &page, node, &f.target).await?;
                        input::click_at(&b.cdp, &page, at, "left", 1, 0).await?;
                    }
                }
                "combobox" => {
                    input::select_options(&b.cdp, &page, node, std::slice::from_ref(&f.value))
                        .await
                        .map_err(failed)?;
                }
                "slider" => input::set_range(&b.cdp, &page, node, &f.value)
                    .await
                    .map_err(failed)?,
                other => {
                    return Err(failed(Error::InvalidArgument(format!(
                        "unknown type '{other}': use textbox, checkbox, radio, combobox or slider"
                    ))));
                }
            }
        }
        let names: Vec<&str> = req.fields.iter().map(|f| f.name.as_str()).collect();
        self.after(&b, &page, format!("Filled in {}", names.join(", ")))
            .await
    }

    /// Selects options of a select element.
    pub async fn browser_select_option(&self, id: &str, req: r::SelectOption) -> Result<Report> {
        let (b, page) = self.for_input(id).await?;
        let node = page.resolve(&req.target)?;
        input::select_options(&b.cdp, &page, node, &req.values).await?;
        let result = format!(
            "Selected {:?} in {}",
            req.values,
            label(&req.element, &req.target)
        );
        self.after(&b, &page, result).await
    }

    /// Presses a key or chord.
    pub async fn browser_press_key(&self, id: &str, req: r::PressKey) -> Result<Report> {
        let chord = keys::chord(&req.key)?;
        let (b, page) = self.for_input(id).await?;
        input::press(&b.cdp, &page, &chord).await?;
        self.after(&b, &page, format!("Pressed {}", req.key)).await
    }

    /// Chooses files (sandbox paths) in the open file chooser, or cancels it.
    pub async fn browser_file_upload(&self, id: &str, req: r::FileUpload) -> Result<Report> {
        let b = self.browser(id).await?;
        let page = b.page().await?;
        let Some(input_node) = page.state.lock().file_chooser else {
            return Err(Error::FailedPrecondition(
                "no file chooser is open: click the page's file input first".into(),
            ));
        };
        let files = req.paths.unwrap_or_default();
        if let Some(rel) = files.iter().find(|f| !f.starts_with('/')) {
            return Err(Error::InvalidArgument(format!(
                "'{rel}' is not an absolute path in the sandbox"
            )));
        }
        for f in &files {
            self.stat(id, f).await?;
        }
        b.cdp
            .call(
                page.session(),
                &p::SetFileInputFiles {
                    files: files.clone(),
                    backend_node_id: input_node,
                },
            )
            .await
            .map_err(cdp_error)?;
        page.state.lock().file_chooser = None;
        let result = if files.is_empty() {
            "Cancelled the file chooser".to_string()
        } else {
            format!("Chose {}", files.join(", "))
        };
        self.after(&b, &page, result).await
    }

    /// Accepts or dismisses the open dialog.
    pub async fn browser_handle_dialog(&self, id: &str, req: r::HandleDialog) -> Result<Report> {
        let b = self.browser(id).await?;
        let page = b.page().await?;
        let Some(dialog) = page.state.lock().dialog.clone() else {
            return Err(Error::FailedPrecondition("no dialog is open".into()));
        };
        b.cdp
            .call(
                page.session(),
                &p::HandleJavaScriptDialog {
                    accept: req.accept,
                    prompt_text: req.prompt_text.clone(),
                },
            )
            .await
            .map_err(cdp_error)?;
        page.wait_until(Duration::from_secs(5), |st| st.dialog.is_none())
            .await;
        page.state.lock().dialog = None;
        let how = if req.accept { "Accepted" } else { "Dismissed" };
        let result = format!(
            "{how} the \"{}\" dialog \"{}\"",
            dialog.kind, dialog.message
        );
        self.after(&b, &page, result).await
    }

    /// Clicks at viewport coordinates.
    pub async fn browser_mouse_click_xy(&self, id: &str, req: r::MouseClickXy) -> Result<Report> {
        let (b, page) = self.for_input(id).await?;
        let button = input::button(req.button.as_deref())?;
        input::mouse_move(&b.cdp, &page, req.x, req.y).await?;
        for n in 1..=req.click_count.unwrap_or(1).clamp(1, 3) {
            input::mouse_button(&b.cdp, &page, button, true, n, 0).await?;
            if let Some(ms) = req.delay {
                tokio::time::sleep(Duration::from_millis(ms.min(5000))).await;
            }
            input::mouse_button(&b.cdp, &page, button, false, n, 0).await?;
        }
        self.after(&b, &page, format!("Clicked at ({}, {})", req.x, req.y))
            .await
    }

    /// Moves the mouse to viewport coordinates.
    pub async fn browser_mouse_move_xy(&self, id: &str, req: r::MouseMoveXy) -> Result<Report> {
        let (b, page) = self.for_input(id).await?;
        input::mouse_move(&b.cdp, &page, req.x, req.y).await?;
        self.after(
            &b,
            &page,
            format!("Moved the mouse to ({}, {})", req.x, req.y),
        )
        .await
    }

    /// Drags between viewport coordinates.
    pub async fn browser_mouse_drag_xy(&self, id: &str, req: r::MouseDragXy) -> Result<Report> {
        let (b, page) = self.for_input(id).await?;
        let (from, to) = ((req.start_x, req.start_y), (req.end_x, req.end_y));
        input::drag(&b.cdp, &page, from, to).await?;
        let result = format!("Dragged from {from:?} to {to:?}");
        self.after(&b, &page, result).await
    }

    /// Presses or releases a mouse button where the mouse is.
    pub async fn browser_mouse_button(
        &self,
        id: &str,
        req: r::MouseButton,
        down: bool,
    ) -> Result<Report> {
        let (b, page) = self.for_input(id).await?;
        let button = input::button(req.button.as_deref())?;
        input::mouse_button(&b.cdp, &page, button, down, 1, 0).await?;
        let what = if down { "Pressed" } else { "Released" };
        self.after(&b, &page, format!("{what} the {button} mouse button"))
            .await
    }

    /// Scrolls with the mouse wheel.
    pub async fn browser_mouse_wheel(&self, id: &str, req: r::MouseWheel) -> Result<Report> {
        let (b, page) = self.for_input(id).await?;
        input::wheel(&b.cdp, &page, req.delta_x, req.delta_y).await?;
        let result = format!("Scrolled by ({}, {})", req.delta_x, req.delta_y);
        self.after(&b, &page, result).await
    }
}

/// How an answer names an element: its description when given, and its ref.
fn label(element: &Option<String>, target: &str) -> String {
    match element {
        Some(e) if !e.trim().is_empty() => format!("{e} ({target})"),
        _ => target.to_string(),
    }
}
