//! Sizes and places the MCP surface bounds itself by; a leaf every transport and tool group
//! reads.

/// Largest MCP message accepted, over stdio and as an HTTP request body.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// Method of the request that stands in for an oversized one.
pub const OVERSIZED_METHOD: &str = "coppice/oversized_request";

/// Default per-stream cap of commands_run output.
pub(crate) const DEFAULT_MAX_OUTPUT: usize = 64 << 10;
/// Upper bound on caller-chosen output caps.
pub(crate) const MAX_OUTPUT_CAP: usize = 4 << 20;
/// Largest base64 a files_read text block repeats (structuredContent always has it).
pub(crate) const INLINE_TEXT_BASE64: usize = 64 << 10;
/// commands_run output beyond the cap is saved in the sandbox up to this many bytes per
/// stream (head and tail beyond that).
pub(crate) const SAVED_OUTPUT_BYTES: usize = 8 << 20;
/// Where commands_run saves output that was too long to return.
pub(crate) const SAVED_OUTPUT_DIR: &str = "/tmp/coppice-output";
