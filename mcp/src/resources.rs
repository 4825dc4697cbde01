//! MCP resources: the sandbox list, each sandbox's info, and sandbox files through a
//! resource template. Tools link large outputs here (`resource_link` content) instead of
//! inlining them.
//!
//! - `coppice://sandboxes`: JSON, the live sandboxes and the caller's default sandbox.
//! - `coppice://sandboxes/{id}`: JSON, one sandbox's info.
//! - `coppice://sandboxes/{id}/files/{+path}`: a file by absolute path (without its leading
//!   `/`, percent-encoded where needed): text as text contents, anything else as a blob.

use base64::Engine;
use coppice_envd::Code;
use coppice_runtime::Error;
use rmcp::ErrorData;
use rmcp::model::{Resource, ResourceContents, ResourceTemplate};

/// URI of the sandbox list.
pub const SANDBOXES_URI: &str = "coppice://sandboxes";
/// The file resource template (RFC 6570: `{+path}` keeps its slashes).
pub const FILE_TEMPLATE: &str = "coppice://sandboxes/{id}/files/{+path}";

/// What a `coppice://` URI names.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// `coppice://sandboxes`: the sandbox list.
    Sandboxes,
    /// `coppice://sandboxes/{id}`: one sandbox.
    Sandbox(String),
    /// A sandbox and an absolute path in it.
    File(String, String),
}

/// Parses a `coppice://` resource URI; None when it names nothing we serve.
pub fn parse(uri: &str) -> Option<Target> {
    let rest = uri.strip_prefix(SANDBOXES_URI)?;
    let rest = match rest {
        "" | "/" => return Some(Target::Sandboxes),
        r => r.strip_prefix('/')?,
    };
    let (id, more) = match rest.split_once('/') {
        None => return Some(Target::Sandbox(rest.to_string())),
        Some(split) => split,
    };
    if id.is_empty() {
        return None;
    }
    let path = more.strip_prefix("files/")?;
    let path = percent_decode(path)?;
    let path = format!("/{}", path.trim_start_matches('/'));
    Some(Target::File(id.to_string(), path))
}

/// URI of a sandbox.
pub fn sandbox_uri(id: &str) -> String {
    format!("{SANDBOXES_URI}/{id}")
}

/// URI of a file (absolute `path`) in a sandbox.
pub fn file_uri(id: &str, path: &str) -> String {
    let encoded: String = path
        .trim_start_matches('/')
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{SANDBOXES_URI}/{id}/files/{encoded}")
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// A `resource_link` to a file in a sandbox.
pub fn file_link(id: &str, path: &str, size: u64, mime: Option<&str>) -> Resource {
    let name = path.rsplit('/').next().unwrap_or(path);
    let mut link = Resource::new(file_uri(id, path), name)
        .with_title(path)
        .with_description(format!(
            "{path} in sandbox {id}, {size} bytes; read it with resources/read"
        ))
        .with_size(size);
    if let Some(mime) = mime {
        link = link.with_mime_type(mime);
    }
    link
}

/// The resources listed by `resources/list`: the sandbox list and each live sandbox.
pub fn listed(sandbox_ids: &[String]) -> Vec<Resource> {
    let mut out = vec![
        Resource::new(SANDBOXES_URI, "sandboxes")
            .with_title("Sandboxes")
            .with_description("Live sandboxes, with your default sandbox marked (JSON)")
            .with_mime_type("application/json"),
    ];
    out.extend(sandbox_ids.iter().map(|id| {
        Resource::new(sandbox_uri(id), format!("sandbox {id}"))
            .with_title(format!("Sandbox {id}"))
            .with_description("Template, limits, expiry and address of this sandbox (JSON)")
            .with_mime_type("application/json")
    }));
    out
}

/// The templates listed by `resources/templates/list`.
pub fn templates() -> Vec<ResourceTemplate> {
    vec![
        ResourceTemplate::new(FILE_TEMPLATE, "sandbox file")
            .with_title("File in a sandbox")
            .with_description(
                "A file in a sandbox: id is the sandbox id, path the absolute path without its leading '/' (e.g. home/user/app.py). Text comes back as text, anything else as a base64 blob; at most 16 MiB.",
            ),
    ]
}

/// A file's bytes as resource contents: UTF-8 text as text, anything else as a blob.
pub fn file_contents(uri: &str, path: &str, data: Vec<u8>) -> ResourceContents {
    let ext_mime = mime_by_extension(path);
    let head = &data[..data.len().min(16)];
    let image = coppice_tools::files::image_mime(path, head);
    match String::from_utf8(data) {
        Ok(text) if image.is_none() && !text.contains('\0') => {
            let mime = ext_mime.filter(|m| textual(m)).unwrap_or("text/plain");
            ResourceContents::text(text, uri).with_mime_type(mime)
        }
        result => {
            let data = match result {
                Ok(text) => text.into_bytes(),
                Err(e) => e.into_bytes(),
            };
            let mime = image
                .or(ext_mime.filter(|m| !textual(m)))
                .unwrap_or("application/octet-stream");
            let blob = base64::engine::general_purpose::STANDARD.encode(&data);
            ResourceContents::blob(blob, uri).with_mime_type(mime)
        }
    }
}

fn textual(mime: &str) -> bool {
    mime.starts_with("text/")
        || matches!(
            mime,
            "application/json"
                | "application/x-ndjson"
                | "application/xml"
                | "application/yaml"
                | "application/toml"
                | "image/svg+xml"
        )
}

/// A mime type guessed from a file's extension, for common source, data and media files.
pub fn mime_by_extension(path: &str) -> Option<&'static str> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let (_, ext) = name.rsplit_once('.')?;
    Some(match ext.to_ascii_lowercase().as_str() {
        "txt" | "log" | "text" | "conf" | "cfg" | "ini" => "text/plain",
        "md" | "markdown" => "text/markdown",
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "csv" => "text/csv",
        "tsv" => "text/tab-separated-values",
        "js" | "mjs" | "cjs" => "text/javascript",
        "ts" | "tsx" => "text/x-typescript",
        "py" => "text/x-python",
        "rs" => "text/x-rust",
        "go" => "text/x-go",
        "c" | "h" => "text/x-c",
        "cc" | "cpp" | "hpp" | "cxx" => "text/x-c++",
        "java" => "text/x-java",
        "rb" => "text/x-ruby",
        "sh" | "bash" => "text/x-shellscript",
        "json" => "application/json",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "xml" => "application/xml",
        "yaml" | "yml" => "application/yaml",
        "toml" => "application/toml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        "wasm" => "application/wasm",
        _ => return None,
    })
}

/// JSON as text contents.
pub fn json_contents(
    uri: &str,
    value: &impl serde::Serialize,
) -> Result<ResourceContents, ErrorData> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    Ok(ResourceContents::text(text, uri).with_mime_type("application/json"))
}

/// A URI that names nothing we serve.
pub fn unknown_uri(uri: &str) -> ErrorData {
    ErrorData::resource_not_found(
        format!(
            "no resource '{uri}': Coppice serves {SANDBOXES_URI}, {SANDBOXES_URI}/{{id}} and {FILE_TEMPLATE} (see resources/list and resources/templates/list)"
        ),
        Some(serde_json::json!({ "uri": uri })),
    )
}

/// A failed read as a protocol error, with the next step spelled out.
pub fn read_error(uri: &str, e: Error) -> ErrorData {
    let data = Some(serde_json::json!({ "uri": uri }));
    match e {
        e @ Error::SandboxEnded { .. } => ErrorData::resource_not_found(
            format!("{e}; read {SANDBOXES_URI} for the live sandboxes"),
            data,
        ),
        Error::SandboxNotFound(id) => ErrorData::resource_not_found(
            format!(
                "sandbox '{id}' not found (it was killed or timed out); read {SANDBOXES_URI} for the live sandboxes"
            ),
            data,
        ),
        Error::Agent(c) if c.code == Code::NotFound => ErrorData::resource_not_found(
            format!(
                "{}; check the path with files_list on its directory (file URIs take the absolute path without its leading '/')",
                c.message
            ),
            data,
        ),
        Error::Agent(c) if c.code == Code::PermissionDenied => ErrorData::invalid_params(
            format!(
                "{}; resources read files as the sandbox's user 'user': copy the file somewhere readable with commands_run (user \"root\")",
                c.message
            ),
            data,
        ),
        Error::InvalidArgument(m) => ErrorData::invalid_params(m, data),
        other => ErrorData::internal_error(other.to_string(), data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(parse("coppice://sandboxes"), Some(Target::Sandboxes));
        assert_eq!(parse("coppice://sandboxes/"), Some(Target::Sandboxes));
        assert_eq!(
            parse("coppice://sandboxes/abc"),
            Some(Target::Sandbox("abc".into()))
        );
        assert_eq!(
            parse("coppice://sandboxes/abc/files/home/user/a%20b.txt"),
            Some(Target::File("abc".into(), "/home/user/a b.txt".into()))
        );
        assert_eq!(
            parse("coppice://sandboxes/abc/files//etc/hosts"),
            Some(Target::File("abc".into(), "/etc/hosts".into()))
        );
        assert_eq!(parse("coppice://sandboxes/abc/other"), None);
        assert_eq!(parse("coppice://sandboxesx"), None);
        assert_eq!(parse("file:///etc/hosts"), None);
        assert_eq!(parse("coppice://sandboxes/abc/files/%zz"), None);
        let uri = file_uri("abc", "/home/user/my file?.txt");
        assert_eq!(
            uri,
            "coppice://sandboxes/abc/files/home/user/my%20file%3F.txt"
        );
        assert_eq!(
            parse(&uri),
            Some(Target::File("abc".into(), "/home/user/my file?.txt".into()))
        );
    }

    #[test]
    fn contents_by_kind() {
        let t = file_contents("u", "/a/x.py", b"print(1)\n".to_vec());
        assert!(matches!(
            t,
            ResourceContents::TextResourceContents { mime_type: Some(ref m), .. } if m == "text/x-python"
        ));
        let b = file_contents("u", "/a/x.bin", vec![0, 1, 255]);
        assert!(matches!(
            b,
            ResourceContents::BlobResourceContents { mime_type: Some(ref m), ref blob, .. }
                if m == "application/octet-stream" && blob == "AAH/"
        ));
        let png = file_contents("u", "/a/x", b"\x89PNG\r\n\x1a\n0000".to_vec());
        assert!(matches!(
            png,
            ResourceContents::BlobResourceContents { mime_type: Some(ref m), .. } if m == "image/png"
        ));
        assert_eq!(mime_by_extension("/x/README.MD"), Some("text/markdown"));
        assert_eq!(mime_by_extension("/x/Makefile"), None);
    }
}
