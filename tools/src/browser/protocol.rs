//! The CDP methods the browser tools use, typed: parameters as the struct, the result as its
//! `Response`. Names follow the protocol (`Page.navigate` is [`Navigate`]); fields are camelCase
//! on the wire. Only what is called is declared.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cdp::Command;

macro_rules! command {
    ($name:ident, $method:literal, $response:ty) => {
        impl Command for $name {
            const METHOD: &'static str = $method;
            type Response = $response;
        }
    };
}

/// An answer with nothing in it that is read.
#[derive(Debug, Deserialize)]
pub struct Empty {}

// ---- Target ----

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateTarget {
    pub url: String,
}
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetCreated {
    pub target_id: String,
}
command!(CreateTarget, "Target.createTarget", TargetCreated);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachToTarget {
    pub target_id: String,
    pub flatten: bool,
}
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attached {
    pub session_id: String,
}
command!(AttachToTarget, "Target.attachToTarget", Attached);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseTarget {
    pub target_id: String,
}
command!(CloseTarget, "Target.closeTarget", Empty);

#[derive(Serialize)]
pub struct GetTargets {}
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Targets {
    pub target_infos: Vec<TargetInfo>,
}
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetInfo {
    pub target_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub url: String,
}
command!(GetTargets, "Target.getTargets", Targets);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetTargetInfo {
    pub target_id: String,
}
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetInfoAnswer {
    pub target_info: TargetInfo,
}
command!(GetTargetInfo, "Target.getTargetInfo", TargetInfoAnswer);

#[derive(Serialize)]
pub struct SetDiscoverTargets {
    pub discover: bool,
}
command!(SetDiscoverTargets, "Target.setDiscoverTargets", Empty);

// ---- Browser ----

#[derive(Serialize)]
pub struct GetVersion {}
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Version {
    pub protocol_version: String,
    pub product: String,
    pub user_agent: String,
    #[serde(default)]
    pub js_version: String,
}
command!(GetVersion, "Browser.getVersion", Version);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SetDownloadBehavior {
    pub behavior: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_path: Option<String>,
    pub events_enabled: bool,
}
command!(SetDownloadBehavior, "Browser.setDownloadBehavior", Empty);

// ---- domains' enable ----

#[derive(Serialize)]
pub struct PageEnable {}
command!(PageEnable, "Page.enable", Empty);
#[derive(Serialize)]
pub struct RuntimeEnable {}
command!(RuntimeEnable, "Runtime.enable", Empty);
#[derive(Serialize)]
pub struct NetworkEnable {}
command!(NetworkEnable, "Network.enable", Empty);
#[derive(Serialize)]
pub struct DomEnable {}
command!(DomEnable, "DOM.enable", Empty);
#[derive(Serialize)]
pub struct LogEnable {}
command!(LogEnable, "Log.enable", Empty);

// ---- Page ----

#[derive(Serialize)]
pub struct Navigate {
    pub url: String,
}
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Navigated {
    #[serde(default)]
    pub loader_id: Option<String>,
    #[serde(default)]
    pub error_text: Option<String>,
}
command!(Navigate, "Page.navigate", Navigated);

#[derive(Serialize)]
pub struct GetNavigationHistory {}
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NavigationHistory {
    pub current_index: usize,
    pub entries: Vec<HistoryEntry>,
}
#[derive(Debug, Deserialize)]
pub struct HistoryEntry {
    pub id: i64,
}
command!(
    GetNavigationHistory,
    "Page.getNavigationHistory",
    NavigationHistory
);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NavigateToHistoryEntry {
    pub entry_id: i64,
}
command!(NavigateToHistoryEntry, "Page.navigateToHistoryEntry", Empty);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureScreenshot {
    pub format: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip: Option<Viewport>,
    pub capture_beyond_viewport: bool,
}
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Viewport {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    pub scale: f64,
}
#[derive(Debug, Deserialize)]
pub struct Data {
    pub data: String,
}
command!(CaptureScreenshot, "Page.captureScreenshot", Data);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrintToPdf {
    pub print_background: bool,
}
command!(PrintToPdf, "Page.printToPDF", Data);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HandleJavaScriptDialog {
    pub accept: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_text: Option<String>,
}
command!(HandleJavaScriptDialog, "Page.handleJavaScriptDialog", Empty);

#[derive(Serialize)]
pub struct SetInterceptFileChooserDialog {
    pub enabled: bool,
}
command!(
    SetInterceptFileChooserDialog,
    "Page.setInterceptFileChooserDialog",
    Empty
);

#[derive(Serialize)]
pub struct BringToFront {}
command!(BringToFront, "Page.bringToFront", Empty);

// ---- Runtime ----

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluate {
    pub expression: String,
    pub await_promise: bool,
    pub return_by_value: bool,
}
/// What `Runtime.evaluate` and `Runtime.callFunctionOn` answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluated {
    pub result: RemoteObject,
    #[serde(default)]
    pub exception_details: Option<Value>,
}
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteObject {
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default)]
    pub unserializable_value: Option<String>,
    #[serde(default)]
    pub object_id: Option<String>,
}
command!(Evaluate, "Runtime.evaluate", Evaluated);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallFunctionOn {
    pub function_declaration: String,
    pub object_id: String,
    pub arguments: Vec<CallArgument>,
    pub await_promise: bool,
    pub return_by_value: bool,
}
#[derive(Serialize)]
pub struct CallArgument {
    pub value: Value,
}
command!(CallFunctionOn, "Runtime.callFunctionOn", Evaluated);

#[derive(Serialize)]
pub struct TerminateExecution {}
command!(TerminateExecution, "Runtime.terminateExecution", Empty);

// ---- DOM ----

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolveNode {
    pub backend_node_id: i64,
}
#[derive(Debug, Deserialize)]
pub struct Resolved {
    pub object: RemoteObject,
}
command!(ResolveNode, "DOM.resolveNode", Resolved);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScrollIntoViewIfNeeded {
    pub backend_node_id: i64,
}
command!(ScrollIntoViewIfNeeded, "DOM.scrollIntoViewIfNeeded", Empty);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GetContentQuads {
    pub backend_node_id: i64,
}
#[derive(Debug, Deserialize)]
pub struct Quads {
    pub quads: Vec<Vec<f64>>,
}
command!(GetContentQuads, "DOM.getContentQuads", Quads);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Focus {
    pub backend_node_id: i64,
}
command!(Focus, "DOM.focus", Empty);

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SetFileInputFiles {
    pub files: Vec<String>,
    pub backend_node_id: i64,
}
command!(SetFileInputFiles, "DOM.setFileInputFiles", Empty);

// ---- Accessibility ----

#[derive(Serialize)]
pub struct GetFullAxTree {}
#[derive(Debug, Deserialize)]
pub struct AxTree {
    pub nodes: Vec<AxNode>,
}
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AxNode {
    pub node_id: String,
    #[serde(default)]
    pub ignored: bool,
    #[serde(default)]
    pub role: Option<AxValue>,
    #[serde(default)]
    pub name: Option<AxValue>,
    #[serde(default)]
    pub value: Option<AxValue>,
    #[serde(default)]
    pub properties: Vec<AxProperty>,
    #[serde(default)]
    pub child_ids: Vec<String>,
    #[serde(default, rename = "backendDOMNodeId")]
    pub backend_dom_node_id: Option<i64>,
}
#[derive(Debug, Clone, Deserialize)]
pub struct AxValue {
    #[serde(default)]
    pub value: Option<Value>,
}
#[derive(Debug, Clone, Deserialize)]
pub struct AxProperty {
    pub name: String,
    pub value: AxValue,
}
command!(GetFullAxTree, "Accessibility.getFullAXTree", AxTree);

// ---- Input ----

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DispatchMouseEvent {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub x: f64,
    pub y: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub button: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buttons: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub click_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modifiers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_x: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_y: Option<f64>,
}
command!(DispatchMouseEvent, "Input.dispatchMouseEvent", Empty);

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DispatchKeyEvent {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub key: String,
    pub code: String,
    pub windows_virtual_key_code: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub modifiers: u32,
}
command!(DispatchKeyEvent, "Input.dispatchKeyEvent", Empty);

#[derive(Serialize)]
pub struct InsertText {
    pub text: String,
}
command!(InsertText, "Input.insertText", Empty);

#[derive(Serialize)]
pub struct SetInterceptDrags {
    pub enabled: bool,
}
command!(SetInterceptDrags, "Input.setInterceptDrags", Empty);

#[derive(Serialize)]
pub struct DispatchDragEvent {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub x: f64,
    pub y: f64,
    pub data: Value,
}
command!(DispatchDragEvent, "Input.dispatchDragEvent", Empty);

// ---- Emulation ----

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SetDeviceMetricsOverride {
    pub width: u32,
    pub height: u32,
    pub device_scale_factor: f64,
    pub mobile: bool,
}
command!(
    SetDeviceMetricsOverride,
    "Emulation.setDeviceMetricsOverride",
    Empty
);
