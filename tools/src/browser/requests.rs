//! The browser tools' requests, with playwright-mcp's names and parameters so that prompts
//! and agents written for it work unchanged. `target` is a ref from the latest snapshot
//! (`e12`; playwright-mcp's older `ref` is accepted too); `element` is the human-readable
//! description a client shows when asking permission, and is not used to find anything.

use schemars::JsonSchema;
use serde::Deserialize;

/// No parameters.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// Parameters of browser_navigate.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Navigate {
    /// The URL to navigate to (the sandbox's own servers are on localhost).
    pub url: String,
}

/// Parameters of browser_snapshot.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Only this element's subtree (a ref from an earlier snapshot).
    #[serde(default, alias = "ref")]
    pub target: Option<String>,
    /// Save the snapshot to this file in the sandbox instead of returning it.
    #[serde(default)]
    pub filename: Option<String>,
    /// Levels of the tree to include below the top (default: all).
    #[serde(default)]
    pub depth: Option<u32>,
}

/// Parameters of browser_find.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Find {
    /// Text to look for in the snapshot's lines (case-insensitive).
    #[serde(default)]
    pub text: Option<String>,
    /// A regular expression to match the snapshot's lines against instead.
    #[serde(default)]
    pub regex: Option<String>,
}

/// Parameters of browser_click.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Click {
    /// Human-readable element description used to obtain permission to interact with it.
    #[serde(default)]
    pub element: Option<String>,
    /// Exact target element reference from the page snapshot.
    #[serde(alias = "ref")]
    pub target: String,
    /// Double-click instead of a single click.
    #[serde(default)]
    pub double_click: Option<bool>,
    /// left (default), right or middle.
    #[serde(default)]
    pub button: Option<String>,
    /// Modifier keys held during the click: Alt, Control, ControlOrMeta, Meta, Shift.
    #[serde(default)]
    pub modifiers: Option<Vec<String>>,
}

/// Parameters of browser_hover.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hover {
    /// Human-readable element description used to obtain permission to interact with it.
    #[serde(default)]
    pub element: Option<String>,
    /// Exact target element reference from the page snapshot.
    #[serde(alias = "ref")]
    pub target: String,
}

/// Parameters of browser_drag.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Drag {
    /// Human-readable description of the source element.
    #[serde(default)]
    pub start_element: Option<String>,
    /// Exact source element reference from the page snapshot.
    #[serde(alias = "startRef")]
    pub start_target: String,
    /// Human-readable description of the target element.
    #[serde(default)]
    pub end_element: Option<String>,
    /// Exact target element reference from the page snapshot.
    #[serde(alias = "endRef")]
    pub end_target: String,
}

/// Parameters of browser_type.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Type {
    /// Human-readable element description used to obtain permission to interact with it.
    #[serde(default)]
    pub element: Option<String>,
    /// Exact target element reference from the page snapshot.
    #[serde(alias = "ref")]
    pub target: String,
    /// Text to type into the element (it replaces what the field holds).
    pub text: String,
    /// Press Enter after typing.
    #[serde(default)]
    pub submit: Option<bool>,
    /// Type one key at a time (fires every key handler) instead of filling the field at once.
    #[serde(default)]
    pub slowly: Option<bool>,
}

/// One field of a form.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FormField {
    /// Human-readable field name.
    pub name: String,
    /// textbox, checkbox, radio, combobox or slider.
    #[serde(rename = "type")]
    pub kind: String,
    /// Exact target field reference from the page snapshot.
    #[serde(alias = "ref")]
    pub target: String,
    /// The value: text for a textbox, "true"/"false" for a checkbox or radio, an option's
    /// text for a combobox, a number for a slider.
    pub value: String,
}

/// Parameters of browser_fill_form.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FillForm {
    /// Fields to fill in, in order.
    pub fields: Vec<FormField>,
}

/// Parameters of browser_select_option.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectOption {
    /// Human-readable element description used to obtain permission to interact with it.
    #[serde(default)]
    pub element: Option<String>,
    /// Exact target element reference from the page snapshot.
    #[serde(alias = "ref")]
    pub target: String,
    /// Values (or labels) of the options to select; several for a multiple select.
    pub values: Vec<String>,
}

/// Parameters of browser_press_key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PressKey {
    /// Key to press, e.g. `ArrowLeft`, `a`, `Enter`, `Control+a`.
    pub key: String,
}

/// Parameters of browser_file_upload.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileUpload {
    /// Absolute paths in the sandbox of the files to choose; omit to cancel the chooser.
    #[serde(default)]
    pub paths: Option<Vec<String>>,
}

/// Parameters of browser_handle_dialog.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HandleDialog {
    /// Accept the dialog (false: dismiss it).
    pub accept: bool,
    /// Text to answer a prompt dialog with.
    #[serde(default)]
    pub prompt_text: Option<String>,
}

/// Parameters of browser_evaluate.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Evaluate {
    /// A JavaScript function: `() => { ... }`, or `(element) => { ... }` with a target.
    pub function: String,
    /// Human-readable element description used to obtain permission to interact with it.
    #[serde(default)]
    pub element: Option<String>,
    /// Exact target element reference from the page snapshot; it is passed to the function.
    #[serde(default, alias = "ref")]
    pub target: Option<String>,
}

/// Parameters of browser_take_screenshot.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Screenshot {
    /// png (default) or jpeg.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Also save the image to this file in the sandbox.
    #[serde(default)]
    pub filename: Option<String>,
    /// Human-readable element description used to obtain permission to screenshot it.
    #[serde(default)]
    pub element: Option<String>,
    /// Only this element (a ref from the page snapshot).
    #[serde(default, alias = "ref")]
    pub target: Option<String>,
    /// The whole scrollable page instead of the viewport.
    #[serde(default)]
    pub full_page: Option<bool>,
}

/// Parameters of browser_console_messages.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleMessages {
    /// Least severe level to list: error, warning, info (default) or debug.
    #[serde(default)]
    pub level: Option<String>,
    /// Messages since the browser started, not only since the last navigation.
    #[serde(default)]
    pub all: Option<bool>,
}

/// Parameters of browser_network_requests.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequests {
    /// Include successful static resources (images, fonts, scripts, stylesheets).
    #[serde(default, rename = "static")]
    pub include_static: Option<bool>,
    /// Only requests whose URL matches this regular expression.
    #[serde(default)]
    pub filter: Option<String>,
}

/// Parameters of browser_wait_for.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WaitFor {
    /// Seconds to wait (alone), or at most (with text or textGone; default 30).
    #[serde(default)]
    pub time: Option<f64>,
    /// Wait until this text appears on the page.
    #[serde(default)]
    pub text: Option<String>,
    /// Wait until this text is gone from the page.
    #[serde(default)]
    pub text_gone: Option<String>,
}

/// Parameters of browser_resize.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    /// Viewport width in CSS pixels.
    pub width: u32,
    /// Viewport height in CSS pixels.
    pub height: u32,
}

/// Parameters of browser_tabs.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tabs {
    /// list, new, close or select.
    pub action: String,
    /// Tab index for close (default: the current one) and select.
    #[serde(default)]
    pub index: Option<usize>,
    /// URL to open in a new tab (default about:blank).
    #[serde(default)]
    pub url: Option<String>,
}

/// Parameters of browser_mouse_click_xy.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MouseClickXy {
    /// X coordinate in CSS pixels of the viewport.
    pub x: f64,
    /// Y coordinate in CSS pixels of the viewport.
    pub y: f64,
    /// left (default), right or middle.
    #[serde(default)]
    pub button: Option<String>,
    /// Clicks (2 for a double click).
    #[serde(default)]
    pub click_count: Option<u32>,
    /// Milliseconds between press and release.
    #[serde(default)]
    pub delay: Option<u64>,
}

/// Parameters of browser_mouse_move_xy.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MouseMoveXy {
    /// X coordinate in CSS pixels of the viewport.
    pub x: f64,
    /// Y coordinate in CSS pixels of the viewport.
    pub y: f64,
}

/// Parameters of browser_mouse_drag_xy.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MouseDragXy {
    /// Start X coordinate in CSS pixels of the viewport.
    pub start_x: f64,
    /// Start Y coordinate.
    pub start_y: f64,
    /// End X coordinate.
    pub end_x: f64,
    /// End Y coordinate.
    pub end_y: f64,
}

/// Parameters of browser_mouse_down and browser_mouse_up.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MouseButton {
    /// left (default), right or middle.
    #[serde(default)]
    pub button: Option<String>,
}

/// Parameters of browser_mouse_wheel.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MouseWheel {
    /// Horizontal scroll in pixels.
    pub delta_x: f64,
    /// Vertical scroll in pixels.
    pub delta_y: f64,
}

/// Parameters of browser_pdf_save.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PdfSave {
    /// File in the sandbox to save the PDF to (default /tmp/page-<time>.pdf).
    #[serde(default)]
    pub filename: Option<String>,
}
