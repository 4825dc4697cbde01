//! `GET /files` (download) and `POST /files` (upload), envd's plain HTTP routes.
//!
//! Both stream: downloads through `ReaderStream`, uploads chunk by chunk into the file, so a
//! large file never sits in the agent's memory. Files are opened with the requesting user's
//! filesystem identity (see `filesystem::creds`), so uploads create user-owned files and
//! directories and a user cannot read or overwrite what they could not in a shell.
//!
//! `X-Metadata-<key>` upload headers are stored as `user.e2b.<key>` xattrs, as envd does, and read
//! back into `EntryInfo.metadata` by Stat/ListDir. The access token and URL signatures are checked
//! in `auth.rs`.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_compression::tokio::bufread::GzipDecoder;
use axum::Router;
use axum::body::{Body, BodyDataStream};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use coppice_envd::filesystem::{HttpError, WriteInfo};
use coppice_envd::{Code, ConnectError};
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::env::Env;
use crate::filesystem::{FsCreds, caller, chown_like_envd, create_dirs, entry, run_as};

/// Read size for downloads: large enough for throughput, small against the agent's RSS.
const DOWNLOAD_CHUNK: usize = 64 * 1024;

pub fn router() -> Router<Arc<Env>> {
    Router::new()
        .route("/files", axum::routing::get(get_file).post(post_files))
        // Uploads are streamed to disk; axum's 2 MB default limit is for buffered extractors.
        .layer(DefaultBodyLimit::disable())
}

#[derive(Debug, Default, Deserialize)]
struct FilesQuery {
    path: Option<String>,
    username: Option<String>,
}

/// A `/files` error: JSON `{"code":<status>,"message":...}`.
#[derive(Debug)]
struct FilesError {
    status: StatusCode,
    message: String,
}

impl FilesError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<ConnectError> for FilesError {
    fn from(e: ConnectError) -> Self {
        let status = match e.code {
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists => {
                StatusCode::BAD_REQUEST
            }
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            // Disk or quota full: the SDKs raise NotEnoughSpaceException on 507.
            Code::ResourceExhausted => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.message)
    }
}

impl IntoResponse for FilesError {
    fn into_response(self) -> Response {
        let body = HttpError {
            code: self.status.as_u16(),
            message: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// The caller's identity for `/files` (`?username=`, else the default user). An unknown user
/// is 401, as in envd.
fn files_caller(
    state: &Env,
    headers: &HeaderMap,
    q: &FilesQuery,
) -> Result<(crate::users::UserIdentity, FsCreds), FilesError> {
    caller(state, headers, q.username.as_deref())
        .map_err(|e| FilesError::new(StatusCode::UNAUTHORIZED, e.message))
}

async fn get_file(
    State(state): State<Arc<Env>>,
    Query(q): Query<FilesQuery>,
    headers: HeaderMap,
) -> Result<Response, FilesError> {
    let (user, creds) = files_caller(&state, &headers, &q)?;
    let path = entry::resolve(q.path.as_deref().unwrap_or_default(), &user)?;
    let p = path.clone();
    let (file, len) = run_as(creds, move || {
        // O_NONBLOCK so a FIFO cannot hang the open; it has no effect on regular files.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&p)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    ConnectError::not_found(format!("path '{}' does not exist", p.display()))
                }
                _ => ConnectError::from_io(&e, &format!("opening '{}'", p.display())),
            })?;
        let md = file
            .metadata()
            .map_err(|e| ConnectError::from_io(&e, &p.display().to_string()))?;
        if md.is_dir() {
            return Err(ConnectError::invalid_argument(format!(
                "path '{}' is a directory",
                p.display()
            )));
        }
        if !md.is_file() {
            return Err(ConnectError::invalid_argument(format!(
                "path '{}' is not a regular file",
                p.display()
            )));
        }
        // procfs and sysfs report sizes that are not their content's (0, or a page): those
        // files are read to their end instead, and sent without a length (as `cat` reads them).
        let len = (!sizes_are_not_lengths(&file)).then_some(md.len());
        Ok((file, len))
    })
    .await?;
    let file = tokio::fs::File::from_std(file);
    let body = match len {
        // `take` keeps the body consistent with Content-Length if the file grows meanwhile.
        Some(len) => Body::from_stream(ReaderStream::with_capacity(file.take(len), DOWNLOAD_CHUNK)),
        None => Body::from_stream(ReaderStream::with_capacity(file, DOWNLOAD_CHUNK)),
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if let Ok(v) = HeaderValue::from_str(&content_disposition(&entry::base_name(&path))) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// Whether `file` is on a filesystem whose `st_size` is not its content's length: procfs,
/// sysfs, cgroupfs, debugfs, tracefs, securityfs, configfs.
fn sizes_are_not_lengths(file: &std::fs::File) -> bool {
    const PSEUDO: [i64; 8] = [
        0x9fa0,      // proc
        0x6265_6572, // sysfs
        0x0027_e0eb, // cgroup (v1)
        0x6367_7270, // cgroup2
        0x6462_6720, // debugfs
        0x7472_6163, // tracefs
        0x7363_6673, // securityfs
        0x6265_6570, // configfs
    ];
    rustix::fs::fstatfs(file).is_ok_and(|s| PSEUDO.contains(&{ s.f_type }))
}

/// `inline; filename=<base>`, quoted or RFC 5987-encoded only when the name needs it (as Go's
/// `mime.FormatMediaType` does).
fn content_disposition(name: &str) -> String {
    let is_token = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
    if !name.is_empty() && name.chars().all(is_token) {
        format!("inline; filename={name}")
    } else if name.chars().all(|c| c.is_ascii() && !c.is_ascii_control()) {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("inline; filename=\"{escaped}\"")
    } else {
        let mut enc = String::new();
        for b in name.bytes() {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                enc.push(b as char);
            } else {
                enc.push_str(&format!("%{b:02X}"));
            }
        }
        format!("inline; filename*=utf-8''{enc}")
    }
}

async fn post_files(
    State(state): State<Arc<Env>>,
    Query(q): Query<FilesQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, FilesError> {
    let mut data = body.into_data_stream();
    let res = receive(&state, &q, &headers, &mut data).await;
    if res.is_err() {
        // Read (and discard) the rest of the upload before answering: a client still sending
        // when the connection closes never sees the error (e.g. 507 on a full disk).
        while let Some(Ok(_)) = data.next().await {}
    }
    res.map(|written| axum::Json(written).into_response())
}

/// Receives an upload into files, returning what was written.
async fn receive(
    state: &Env,
    q: &FilesQuery,
    headers: &HeaderMap,
    data: &mut BodyDataStream,
) -> Result<Vec<WriteInfo>, FilesError> {
    let (user, creds) = files_caller(state, headers, q)?;
    let metadata = metadata_headers(headers);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let query_path = q.path.as_deref().filter(|p| !p.is_empty());

    let mut written: Vec<WriteInfo> = Vec::new();
    if media_type.starts_with("multipart/") {
        let boundary = multer::parse_boundary(content_type)
            .map_err(|e| FilesError::new(StatusCode::BAD_REQUEST, format!("bad multipart: {e}")))?;
        let mut form = multer::Multipart::new(&mut *data, boundary);
        loop {
            let field = form.next_field().await.map_err(|e| {
                FilesError::new(StatusCode::BAD_REQUEST, format!("error reading form: {e}"))
            })?;
            let Some(field) = field else { break };
            if field.name() != Some("file") {
                continue; // envd ignores other parts
            }
            // Single-file writes name the target in `?path=`; multi-file writes name each part.
            let Some(raw) = query_path.or(field.file_name()) else {
                return Err(FilesError::new(
                    StatusCode::BAD_REQUEST,
                    "a file part has no filename and there is no path parameter",
                ));
            };
            let path = entry::resolve(raw, &user)?;
            if written.iter().any(|w| Path::new(&w.path) == path) {
                return Err(FilesError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "you cannot upload multiple files to the same path '{}' in one upload request",
                        path.display()
                    ),
                ));
            }
            write_file(&creds, &path, &metadata, field).await?;
            written.push(write_info(path, &metadata));
        }
    } else if media_type == "application/octet-stream" {
        let Some(raw) = query_path else {
            return Err(FilesError::new(
                StatusCode::BAD_REQUEST,
                "path query parameter is required for raw body upload",
            ));
        };
        let path = entry::resolve(raw, &user)?;
        let gzip = headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
        if gzip {
            let reader = StreamReader::new((&mut *data).map_err(std::io::Error::other));
            let decoded = ReaderStream::new(GzipDecoder::new(reader));
            write_file(&creds, &path, &metadata, decoded).await?;
        } else {
            write_file(&creds, &path, &metadata, data).await?;
        }
        written.push(write_info(path, &metadata));
    } else {
        return Err(FilesError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "unsupported content type: {content_type}, expected multipart/form-data or application/octet-stream"
            ),
        ));
    }
    Ok(written)
}

fn write_info(path: PathBuf, metadata: &BTreeMap<String, String>) -> WriteInfo {
    WriteInfo {
        name: entry::base_name(&path),
        kind: "file".to_string(),
        path: path.to_string_lossy().into_owned(),
        metadata: metadata.clone(),
    }
}

/// `X-Metadata-<key>: <value>` headers (header names arrive lowercased).
fn metadata_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let key = name.as_str().strip_prefix("x-metadata-")?;
            let value = value.to_str().ok()?;
            (!key.is_empty()).then(|| (key.to_string(), value.to_string()))
        })
        .collect()
}

/// Creates (or truncates) `path` as the user, with parent directories, then streams `data`
/// into it. A read error on the request is 400; a write error is 507 on a full disk, else 500.
async fn write_file<S, E>(
    creds: &FsCreds,
    path: &Path,
    metadata: &BTreeMap<String, String>,
    mut data: S,
) -> Result<(), FilesError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    let p = path.to_path_buf();
    let md = metadata.clone();
    let owner = creds.clone();
    let file = run_as(creds.clone(), move || {
        if let Some(parent) = p.parent() {
            create_dirs(parent, &owner)?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o666)
            .open(&p)
            .map_err(|e| ConnectError::from_io(&e, &format!("opening '{}'", p.display())))?;
        chown_like_envd(&p, &owner);
        if let Err(e) = entry::write_metadata(&file, &md) {
            tracing::warn!("storing metadata on {}: {e}", p.display());
        }
        Ok(file)
    })
    .await?;
    let write_err = |e: std::io::Error| {
        FilesError::from(ConnectError::from_io(
            &e,
            &format!("writing '{}'", path.display()),
        ))
    };
    let mut file = tokio::fs::File::from_std(file);
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|e| {
            FilesError::new(
                StatusCode::BAD_REQUEST,
                format!("error reading request body: {e}"),
            )
        })?;
        file.write_all(&chunk).await.map_err(write_err)?;
    }
    // tokio's File finishes writes in the background; flush surfaces their errors (ENOSPC).
    file.flush().await.map_err(write_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disposition_quoting() {
        assert_eq!(content_disposition("a.txt"), "inline; filename=a.txt");
        assert_eq!(
            content_disposition("a b.txt"),
            "inline; filename=\"a b.txt\""
        );
        assert_eq!(
            content_disposition("é.txt"),
            "inline; filename*=utf-8''%C3%A9.txt"
        );
    }

    #[test]
    fn metadata_from_headers() {
        let mut h = HeaderMap::new();
        h.insert("X-Metadata-Owner", "alice".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        let m = metadata_headers(&h);
        assert_eq!(m.len(), 1);
        assert_eq!(m["owner"], "alice");
    }
}
