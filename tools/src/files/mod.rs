//! Files in a sandbox, shaped for agents: text with line ranges, binary as base64, images
//! recognised; writes that create parents; exact-string edits; listing with depth and glob;
//! stat, mkdir, move, remove; and a grep-like search.
//!
//! Everything goes through the sandbox's agent as its default user (relative paths are
//! relative to that user's home): `GET`/`POST /files` for content, `filesystem.Filesystem`
//! for metadata. Search runs `grep` inside the sandbox (see [`Tools::search_files`]).

mod requests;
pub use requests::{
    EditFile, Encoding, FilePath, ListFiles, MoveFile, ReadFile, Search, WriteFile,
};

use base64::Engine;
use bytes::Bytes;
use coppice_envd::client::full_body;
use coppice_envd::filesystem::{
    EntryInfo, EntryResponse, FileType, HttpError, ListDirRequest, ListDirResponse, MoveRequest,
    PathRequest, WriteInfo,
};
use coppice_envd::{Code, ConnectError};
use futures::StreamExt;
use http_body::Body as _;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};

use crate::commands::{Exec, ExecEvent, Signal};
use crate::{Error, Result, Tools};

/// Largest file `read_file` and `edit_file` load.
pub const MAX_READ_BYTES: u64 = 16 << 20;
/// Largest binary file returned inline as base64.
pub const MAX_BINARY_BYTES: u64 = 1 << 20;
/// Largest image returned as image content.
pub const MAX_IMAGE_BYTES: u64 = 5 << 20;
/// Cap on the text returned by one read.
pub const MAX_TEXT_BYTES: usize = 256 << 10;
/// Lines returned when the caller gives no limit.
pub const DEFAULT_LINE_LIMIT: u64 = 2000;

/// What kind of content a read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentKind {
    /// UTF-8 text, returned by lines.
    Text,
    /// Anything else, returned as base64.
    Binary,
    /// An image an MCP client can show (png, jpeg, gif, webp).
    Image,
}

/// The result of reading a file.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileRead {
    /// Absolute path in the sandbox.
    pub path: String,
    /// Text, binary or image.
    pub kind: ContentKind,
    /// File size in bytes.
    pub size: u64,
    /// For images: image/png, image/jpeg, image/gif or image/webp.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// For text: the requested lines, exactly as stored (no line numbers added).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// For text: 1-based number of the first line returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_line: Option<u64>,
    /// For text: number of the last line returned (start_line - 1 when none were).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_line: Option<u64>,
    /// For text: lines in the whole file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_lines: Option<u64>,
    /// For text: when more lines follow, the offset to pass to read them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u64>,
    /// For binary files: the content, base64-encoded. (Images travel as image content.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// For images: the base64 data (the MCP surface moves it into an image content block).
    #[serde(skip)]
    pub image_base64: Option<String>,
    /// True when the content returned is not the whole file because a cap cut it: more text
    /// follows than one read returns (see next_offset), or a binary file (over 1 MiB) or an
    /// image (over 5 MiB) is too large to return inline, so no content came back.
    pub truncated: bool,
}

/// A file or directory.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileEntry {
    /// Absolute path in the sandbox.
    pub path: String,
    /// The last component of the path.
    pub name: String,
    /// "file", "dir" or "symlink".
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Like `ls -l`: "-rw-r--r--".
    pub permissions: String,
    /// Owning user's name.
    pub owner: String,
    /// Last modification, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
    /// Where a symlink points.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

impl From<EntryInfo> for FileEntry {
    fn from(e: EntryInfo) -> Self {
        let kind = if e.is_symlink || e.file_type == FileType::Symlink {
            "symlink"
        } else if e.file_type == FileType::Directory {
            "dir"
        } else {
            "file"
        };
        FileEntry {
            path: e.path,
            name: e.name,
            kind: kind.into(),
            size: e.size.max(0) as u64,
            permissions: e.permissions,
            owner: e.owner,
            modified: e.modified_time,
            symlink_target: e.symlink_target,
        }
    }
}

/// One line that matched a search.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SearchMatch {
    /// Absolute path of the file.
    pub path: String,
    /// 1-based line number.
    pub line: u64,
    /// The matching line (cut at 500 characters).
    pub text: String,
}

/// Search results.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SearchResult {
    /// The matches, in grep's order.
    pub matches: Vec<SearchMatch>,
    /// True when there were more matches than max_results (narrow the pattern or path).
    pub truncated: bool,
    /// grep's complaints (unreadable files and the like), if any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub errors: String,
}

fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A `/files` error body (`{"code":404,"message":...}`) as a typed error.
fn files_error(status: http::StatusCode, body: &[u8]) -> Error {
    let message = serde_json::from_slice::<HttpError>(body)
        .map(|e| e.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    Error::Agent(ConnectError::new(
        Code::from_http_status(status.as_u16()),
        message,
    ))
}

/// Recognises the four image formats every MCP client renders.
pub fn image_mime(path: &str, head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some("image/png");
    }
    if head.starts_with(b"\xFF\xD8\xFF") {
        return Some("image/jpeg");
    }
    if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        return Some("image/gif");
    }
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        return Some("image/webp");
    }
    // An extension alone counts only when the content does not say otherwise (empty files).
    if !head.is_empty() {
        return None;
    }
    let lower = path.to_ascii_lowercase();
    let ext = lower.rsplit('.').next().unwrap_or_default();
    match ext {
        "png" => Some("image/png"),
        "jpg" | "jpeg" => Some("image/jpeg"),
        "gif" => Some("image/gif"),
        "webp" => Some("image/webp"),
        _ => None,
    }
}

/// Lines of a text file, as one read returns them.
struct Lines {
    text: String,
    start: u64,
    end: u64,
    total: u64,
    next: Option<u64>,
    /// [`MAX_TEXT_BYTES`] stopped the read before `limit` lines.
    capped: bool,
}

/// Lines `offset..offset+limit` (1-based) of `text`, capped at [`MAX_TEXT_BYTES`].
fn slice_lines(text: &str, offset: u64, limit: u64) -> Lines {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let total = lines.len() as u64;
    let start = offset.max(1);
    let mut out = String::new();
    let mut end = start - 1;
    let mut capped = false;
    for line in lines.iter().skip((start - 1) as usize).take(limit as usize) {
        if !out.is_empty() && out.len() + line.len() > MAX_TEXT_BYTES {
            capped = true;
            break;
        }
        out.push_str(line);
        end += 1;
    }
    if out.len() > MAX_TEXT_BYTES {
        // One enormous line: cut it at a character boundary.
        let mut cut = MAX_TEXT_BYTES;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("\n[... line cut at 256 KiB ...]\n");
        capped = true;
    }
    Lines {
        text: out,
        start,
        end,
        total,
        next: (end < total).then_some(end + 1),
        capped,
    }
}

/// Shell-style glob: `*` and `?` within a path segment, `**` across segments, `[a-z]`,
/// `[!x]`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') if p.get(1) == Some(&'*') => {
                let rest = &p[2..];
                let rest = rest.strip_prefix(&['/']).unwrap_or(rest);
                (0..=t.len()).any(|i| (i == 0 || t[i - 1] == '/') && go(rest, &t[i..]))
                    || (0..=t.len()).any(|i| go(&p[2..], &t[i..]))
            }
            Some('*') => (0..=t.len())
                .take_while(|&i| i == 0 || t[i - 1] != '/')
                .any(|i| go(&p[1..], &t[i..])),
            Some('?') => !t.is_empty() && t[0] != '/' && go(&p[1..], &t[1..]),
            Some('[') => {
                let Some(close) = p.iter().skip(2).position(|&c| c == ']').map(|i| i + 2) else {
                    return !t.is_empty() && t[0] == '[' && go(&p[1..], &t[1..]);
                };
                let Some(&c) = t.first() else { return false };
                let (negate, set) = match p[1] {
                    '!' | '^' => (true, &p[2..close]),
                    _ => (false, &p[1..close]),
                };
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= set[i] <= c && c <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == c;
                        i += 1;
                    }
                }
                hit != negate && go(&p[close + 1..], &t[1..])
            }
            Some(&c) => t.first() == Some(&c) && go(&p[1..], &t[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    go(&p, &t)
}

impl Tools {
    /// Downloads up to `cap` bytes of a file; returns them with the file's full size.
    async fn download(&self, id: &str, path: &str, cap: u64) -> Result<(Vec<u8>, u64)> {
        let agent = self.rt.agent(id)?;
        let req = http::Request::get(format!("/files?path={}", encode_query(path)))
            .header(http::header::HOST, "agent")
            .body(full_body(Bytes::new()))
            .map_err(Error::internal)?;
        let resp = agent.send(req).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(files_error(status, &bytes));
        }
        let size = body.size_hint().exact().unwrap_or(0);
        let mut data = Vec::with_capacity(size.min(cap) as usize);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Error::Unavailable(format!("reading {path}: {e}")))?;
            if let Ok(chunk) = frame.into_data() {
                let room = cap.saturating_sub(data.len() as u64) as usize;
                data.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if data.len() as u64 >= cap {
                    break;
                }
            }
        }
        let size = size.max(data.len() as u64);
        Ok((data, size))
    }

    /// Uploads `data` to `path`, creating parent directories; returns the absolute path.
    pub async fn write_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<String> {
        if path.is_empty() {
            return Err(Error::InvalidArgument("path is empty".into()));
        }
        let agent = self.rt.agent(id)?;
        let req = http::Request::post(format!("/files?path={}", encode_query(path)))
            .header(http::header::HOST, "agent")
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .body(full_body(data))
            .map_err(Error::internal)?;
        let resp = agent.send(req).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        if !status.is_success() {
            return Err(files_error(status, &bytes));
        }
        let written: Vec<WriteInfo> = serde_json::from_slice(&bytes)
            .map_err(|e| Error::internal(format!("bad /files answer: {e}")))?;
        Ok(written
            .into_iter()
            .next()
            .map(|w| w.path)
            .unwrap_or_else(|| path.to_string()))
    }

    /// Reads a file: text (lines `offset..offset+limit`, 1-based), an image, or binary.
    /// Binary files and images too large to return inline come back without content and
    /// with `truncated` set (read them whole with [`Tools::read_file_bytes`]).
    pub async fn read_file(
        &self,
        id: &str,
        path: &str,
        offset: Option<u64>,
        limit: Option<u64>,
    ) -> Result<FileRead> {
        let (path, data) = self.read_file_bytes(id, path).await?;
        let size = data.len() as u64;
        let mut read = FileRead {
            path,
            kind: ContentKind::Text,
            size,
            mime_type: None,
            text: None,
            start_line: None,
            end_line: None,
            total_lines: None,
            next_offset: None,
            base64: None,
            image_base64: None,
            truncated: false,
        };
        let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
        if let Some(mime) = image_mime(&read.path, &data[..data.len().min(16)]) {
            read.kind = ContentKind::Image;
            read.mime_type = Some(mime.into());
            if size > MAX_IMAGE_BYTES {
                read.truncated = true;
            } else {
                read.image_base64 = Some(b64(&data));
            }
            return Ok(read);
        }
        match std::str::from_utf8(&data) {
            Ok(text) if !text.contains('\0') => {
                let lines = slice_lines(
                    text,
                    offset.unwrap_or(1),
                    limit.unwrap_or(DEFAULT_LINE_LIMIT).max(1),
                );
                // Cut by a cap, not by the range the caller asked for.
                read.truncated = lines.capped || (limit.is_none() && lines.next.is_some());
                read.text = Some(lines.text);
                read.start_line = Some(lines.start);
                read.end_line = Some(lines.end);
                read.total_lines = Some(lines.total);
                read.next_offset = lines.next;
            }
            _ => {
                read.kind = ContentKind::Binary;
                if size > MAX_BINARY_BYTES {
                    read.truncated = true;
                } else {
                    read.base64 = Some(b64(&data));
                }
            }
        }
        Ok(read)
    }

    /// The whole content of a file of at most [`MAX_READ_BYTES`], with its absolute path.
    pub async fn read_file_bytes(&self, id: &str, path: &str) -> Result<(String, Vec<u8>)> {
        // Stat and download go to the agent together (one round trip instead of two): it
        // resolves a relative path for both alike (against the same user's home); the stat
        // still decides what to report.
        let (entry, downloaded) = tokio::join!(
            self.stat(id, path),
            self.download(id, path, MAX_READ_BYTES + 1)
        );
        let entry = entry?;
        if entry.kind == "dir" {
            return Err(Error::InvalidArgument(format!(
                "'{}' is a directory; list it with files_list",
                entry.path
            )));
        }
        let (data, size) = downloaded?;
        if size > MAX_READ_BYTES {
            return Err(Error::InvalidArgument(format!(
                "'{}' is {size} bytes, over the {MAX_READ_BYTES}-byte read limit; read parts of it with commands_run (sed -n, head, tail, xxd) or search it with files_search",
                entry.path
            )));
        }
        Ok((entry.path, data))
    }

    /// Replaces `old` with `new` in a text file: exactly once unless `replace_all`.
    /// Returns the absolute path and the number of replacements.
    pub async fn edit_file(
        &self,
        id: &str,
        path: &str,
        old: &str,
        new: &str,
        replace_all: bool,
    ) -> Result<(String, usize)> {
        if old.is_empty() {
            return Err(Error::InvalidArgument(
                "old_string is empty; to create or overwrite a file use files_write".into(),
            ));
        }
        if old == new {
            return Err(Error::InvalidArgument(
                "old_string and new_string are the same; nothing to change".into(),
            ));
        }
        let entry = self.stat(id, path).await?;
        let (data, size) = self.download(id, &entry.path, MAX_READ_BYTES + 1).await?;
        if size > MAX_READ_BYTES {
            return Err(Error::InvalidArgument(format!(
                "'{}' is over {MAX_READ_BYTES} bytes; edit it with commands_run (sed, patch)",
                entry.path
            )));
        }
        let text = String::from_utf8(data).map_err(|_| {
            Error::InvalidArgument(format!(
                "'{}' is not UTF-8 text; only text files can be edited",
                entry.path
            ))
        })?;
        let count = text.matches(old).count();
        if count == 0 {
            return Err(Error::InvalidArgument(format!(
                "old_string was not found in '{}'; read the file with files_read and copy the exact text, including whitespace and indentation",
                entry.path
            )));
        }
        if count > 1 && !replace_all {
            return Err(Error::InvalidArgument(format!(
                "old_string occurs {count} times in '{}'; include more surrounding lines to make it unique, or set replace_all to change every occurrence",
                entry.path
            )));
        }
        let edited = if replace_all {
            text.replace(old, new)
        } else {
            text.replacen(old, new, 1)
        };
        let path = self
            .write_file(id, &entry.path, edited.into_bytes())
            .await?;
        Ok((path, count))
    }

    /// Metadata of one path.
    pub async fn stat(&self, id: &str, path: &str) -> Result<FileEntry> {
        let resp: EntryResponse = self
            .rt
            .agent(id)?
            .unary(
                "filesystem.Filesystem/Stat",
                &PathRequest { path: path.into() },
            )
            .await?;
        Ok(resp.entry.into())
    }

    /// Lists a directory down to `depth` levels (default 1, at most 10); `glob` filters by
    /// name (or by the path relative to `path` when it contains a '/'). Returns the entries
    /// and whether `max_entries` (default 1000) cut the list.
    pub async fn list_files(&self, id: &str, req: &ListFiles) -> Result<(Vec<FileEntry>, bool)> {
        let path = req.path.as_deref().unwrap_or("");
        let depth = req.depth.unwrap_or(1).clamp(1, 10);
        let glob = req.glob.as_deref();
        let max_entries = req.max_entries.unwrap_or(1000).max(1);
        let resp: ListDirResponse = self
            .rt
            .agent(id)?
            .unary(
                "filesystem.Filesystem/ListDir",
                &ListDirRequest {
                    path: path.into(),
                    depth: depth.max(1),
                },
            )
            .await?;
        let root = self
            .stat(id, path)
            .await
            .map(|e| e.path)
            .unwrap_or_default();
        let mut entries: Vec<FileEntry> = resp
            .entries
            .into_iter()
            .map(FileEntry::from)
            .filter(|e| match glob {
                None | Some("") => true,
                Some(g) if g.contains('/') => {
                    let rel = e
                        .path
                        .strip_prefix(&root)
                        .unwrap_or(&e.path)
                        .trim_start_matches('/');
                    glob_match(g, rel)
                }
                Some(g) => glob_match(g, &e.name),
            })
            .collect();
        let truncated = entries.len() > max_entries;
        entries.truncate(max_entries);
        Ok((entries, truncated))
    }

    /// Creates a directory and its parents. Returns it and whether it was newly created.
    pub async fn make_dir(&self, id: &str, path: &str) -> Result<(FileEntry, bool)> {
        let res: std::result::Result<EntryResponse, ConnectError> = self
            .rt
            .agent(id)?
            .unary(
                "filesystem.Filesystem/MakeDir",
                &PathRequest { path: path.into() },
            )
            .await;
        match res {
            Ok(r) => Ok((r.entry.into(), true)),
            Err(e) if e.code == Code::AlreadyExists => Ok((self.stat(id, path).await?, false)),
            Err(e) => Err(e.into()),
        }
    }

    /// Moves or renames a file or directory; returns where it is now.
    pub async fn move_file(&self, id: &str, source: &str, destination: &str) -> Result<FileEntry> {
        let resp: EntryResponse = self
            .rt
            .agent(id)?
            .unary(
                "filesystem.Filesystem/Move",
                &MoveRequest {
                    source: source.into(),
                    destination: destination.into(),
                },
            )
            .await?;
        Ok(resp.entry.into())
    }

    /// Removes a file, or a directory with everything in it.
    pub async fn remove_file(&self, id: &str, path: &str) -> Result<()> {
        let _: serde_json::Value = self
            .rt
            .agent(id)?
            .unary(
                "filesystem.Filesystem/Remove",
                &PathRequest { path: path.into() },
            )
            .await?;
        Ok(())
    }

    /// A grep-like search. It runs `grep -rnHIE` inside the sandbox (as argv, no shell): native
    /// speed over large trees, the user's own permissions, and one round trip instead of a
    /// request per file. `.git` and `node_modules` are skipped; binary files are ignored.
    /// grep is killed as soon as `max_results` + 1 matches have been seen.
    pub async fn search_files(&self, id: &str, req: Search) -> Result<SearchResult> {
        if req.pattern.is_empty() {
            return Err(Error::InvalidArgument("pattern is empty".into()));
        }
        let max_results = req.max_results.unwrap_or(100).clamp(1, 1000);
        let mut cmd: Vec<String> = vec!["grep".into(), "-rnHIE".into(), "--null".into()];
        if req.case_insensitive {
            cmd.push("-i".into());
        }
        cmd.extend([
            "--exclude-dir=.git".into(),
            "--exclude-dir=node_modules".into(),
        ]);
        if let Some(g) = req.glob.as_deref().filter(|g| !g.is_empty()) {
            cmd.push(format!("--include={g}"));
        }
        cmd.extend(["--".into(), req.pattern.clone()]);
        cmd.push(match req.path.as_deref() {
            None | Some("") => ".".into(),
            Some(p) => p.into(),
        });
        let mut events = Box::pin(
            self.exec(
                id,
                Exec {
                    cmd,
                    timeout_secs: Some(60.0),
                    ..Default::default()
                },
            )
            .await?,
        );
        let mut pid = 0;
        let mut pending: Vec<u8> = Vec::new();
        let mut errors = Vec::new();
        let mut matches = Vec::new();
        let mut truncated = false;
        let mut exit = None;
        while let Some(ev) = events.next().await {
            match ev? {
                ExecEvent::Start { pid: p } => pid = p,
                ExecEvent::Stdout { data } => {
                    pending.extend_from_slice(&data);
                    while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=nl).collect();
                        if let Some(m) = parse_grep_line(&line[..line.len() - 1]) {
                            matches.push(m);
                        }
                    }
                    if matches.len() > max_results {
                        truncated = true;
                        matches.truncate(max_results);
                        let _ = self.signal_process(id, pid, Signal::Sigkill).await;
                        break;
                    }
                }
                ExecEvent::Stderr { data } => {
                    if errors.len() < 4096 {
                        errors.extend_from_slice(&data);
                    }
                }
                ExecEvent::Exit { exit_code, .. } => exit = Some(exit_code),
            }
        }
        let errors = String::from_utf8_lossy(&errors).trim().to_string();
        if exit == Some(2) && matches.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "grep failed: {errors}; check the pattern (extended regex, as grep -E) and the path"
            )));
        }
        Ok(SearchResult {
            matches,
            truncated,
            errors,
        })
    }
}

/// `path\0line:text` (grep --null -n) into a match.
fn parse_grep_line(line: &[u8]) -> Option<SearchMatch> {
    let nul = line.iter().position(|&b| b == 0)?;
    let path = String::from_utf8_lossy(&line[..nul]).into_owned();
    let rest = &line[nul + 1..];
    let colon = rest.iter().position(|&b| b == b':')?;
    let lineno = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    let mut text = String::from_utf8_lossy(&rest[colon + 1..]).into_owned();
    if text.chars().count() > 500 {
        text = text.chars().take(500).collect::<String>() + "…";
    }
    Some(SearchMatch {
        path,
        line: lineno,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.rs", "main.rs"));
        assert!(!glob_match("*.rs", "src/main.rs"));
        assert!(glob_match("src/*.rs", "src/main.rs"));
        assert!(glob_match("**/*.rs", "a/b/c.rs"));
        assert!(glob_match("**/*.rs", "c.rs"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("[a-c]x", "bx"));
        assert!(!glob_match("[!a-c]x", "bx"));
        assert!(!glob_match("*.py", "main.rs"));
    }

    #[test]
    fn line_slices() {
        let l = slice_lines("a\nb\nc\n", 2, 1);
        assert_eq!(
            (l.text.as_str(), l.start, l.end, l.total, l.next, l.capped),
            ("b\n", 2, 2, 3, Some(3), false)
        );
        let l = slice_lines("a\nb", 1, 10);
        assert_eq!((l.text.as_str(), l.end, l.next), ("a\nb", 2, None));
        let l = slice_lines("a\n", 5, 10);
        assert_eq!((l.text.as_str(), l.start, l.end), ("", 5, 4));
        let big = "x".repeat(1000) + "\n";
        let l = slice_lines(&big.repeat(300), 1, 2000);
        assert!(l.capped && l.end == 261 && l.next == Some(262));
    }

    #[test]
    fn images_by_magic_or_extension() {
        assert_eq!(
            image_mime("x.bin", b"\x89PNG\r\n\x1a\n...."),
            Some("image/png")
        );
        assert_eq!(image_mime("x.png", b"hello"), None);
        assert_eq!(image_mime("x.jpg", b""), Some("image/jpeg"));
        assert_eq!(
            image_mime("x.webp", b"RIFF\0\0\0\0WEBPVP8 "),
            Some("image/webp")
        );
    }

    #[test]
    fn grep_lines() {
        let m = parse_grep_line(b"./a:b.txt\x0012:hello: world").unwrap();
        assert_eq!(
            (m.path.as_str(), m.line, m.text.as_str()),
            ("./a:b.txt", 12, "hello: world")
        );
    }
}
