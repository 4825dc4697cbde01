//! Sizes and places the MCP surface bounds itself by; a leaf every transport and tool group
//! reads.

/// Largest MCP message accepted, over stdio and as an HTTP request body.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

/// Method of the request that stands in for an oversized one.
pub const OVERSIZED_METHOD: &str = "coppice/oversized_request";

/// Largest base64 a files_read text block repeats (structuredContent always has it).
pub(crate) const INLINE_TEXT_BASE64: usize = 64 << 10;
