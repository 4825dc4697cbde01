//! `filesystem.Filesystem` messages in protobuf-JSON form. Field set follows envd's
//! `filesystem.proto` plus `EntryInfo.is_symlink = 12` from SDK 2.63.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wire::{i64_string, is_false, is_zero_i64, is_zero_u32};

/// Connect service name of the filesystem API, the path prefix of its RPCs.
pub const SERVICE: &str = "filesystem.Filesystem";

/// Kind of a filesystem entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileType {
    /// Neither a regular file, a directory nor a symlink (a socket, device, fifo).
    #[default]
    #[serde(rename = "FILE_TYPE_UNSPECIFIED")]
    Unspecified,
    /// A regular file.
    #[serde(rename = "FILE_TYPE_FILE")]
    File,
    /// A directory.
    #[serde(rename = "FILE_TYPE_DIRECTORY")]
    Directory,
    /// A dangling symlink; a link to a file or directory takes its target's type.
    #[serde(rename = "FILE_TYPE_SYMLINK")]
    Symlink,
}

/// A file, directory or symlink as envd describes it in `Stat`, `ListDir` and watch events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryInfo {
    /// Last path component.
    pub name: String,
    /// Kind of entry; for a symlink, the kind of its target.
    #[serde(rename = "type")]
    pub file_type: FileType,
    /// Absolute path.
    pub path: String,
    /// Size in bytes (an int64, so a JSON string on the wire).
    #[serde(default, with = "i64_string", skip_serializing_if = "is_zero_i64")]
    pub size: i64,
    /// Permission bits (`mode & 0o777`); for a symlink, its target's.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub mode: u32,
    /// Go's `FileMode.String()` of the raw mode, e.g. `-rw-r--r--`.
    #[serde(default)]
    pub permissions: String,
    /// Owning user's name (or numeric uid when it has none).
    #[serde(default)]
    pub owner: String,
    /// Owning group's name (or numeric gid when it has none).
    #[serde(default)]
    pub group: String,
    /// RFC 3339 timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_time: Option<String>,
    /// For a symlink, the resolved target (the raw link text when dangling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    /// User metadata from the entry's `user.*` xattrs; empty for a symlink.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Whether the entry itself is a symlink.
    #[serde(default, skip_serializing_if = "is_false")]
    pub is_symlink: bool,
}

/// A request that names one path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathRequest {
    /// Absolute path, or relative to the user's home.
    pub path: String,
}

/// Request of `Stat`: the path to describe.
pub type StatRequest = PathRequest;
/// Request of `MakeDir`: the directory to create, parents included.
pub type MakeDirRequest = PathRequest;
/// Request of `Remove`: the file or directory to remove.
pub type RemoveRequest = PathRequest;

/// Response of `Stat`, `MakeDir` and `Move`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryResponse {
    /// The entry after the call.
    pub entry: EntryInfo,
}

/// Request of `Move`: rename `source` to `destination`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRequest {
    /// Path to move.
    pub source: String,
    /// Path it moves to.
    pub destination: String,
}

/// Request of `ListDir`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDirRequest {
    /// Directory to list.
    pub path: String,
    /// 0 is treated as 1, as envd does.
    #[serde(default)]
    pub depth: u32,
}

/// Reply to `ListDir`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDirResponse {
    /// Entries found, down to the requested depth.
    #[serde(default)]
    pub entries: Vec<EntryInfo>,
}

/// What happened to a watched path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// Not set; never sent by a correct server.
    #[serde(rename = "EVENT_TYPE_UNSPECIFIED")]
    Unspecified,
    /// The entry was created.
    #[serde(rename = "EVENT_TYPE_CREATE")]
    Create,
    /// The file was written to.
    #[serde(rename = "EVENT_TYPE_WRITE")]
    Write,
    /// The entry was removed.
    #[serde(rename = "EVENT_TYPE_REMOVE")]
    Remove,
    /// The entry was renamed or moved away.
    #[serde(rename = "EVENT_TYPE_RENAME")]
    Rename,
    /// Its permissions or attributes changed.
    #[serde(rename = "EVENT_TYPE_CHMOD")]
    Chmod,
}

/// One change seen by a directory watcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesystemEvent {
    /// Relative to the watched directory.
    pub name: String,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The entry after the change, when `include_entry` was asked for (never for a removal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<EntryInfo>,
}

/// Request of `WatchDir` and `CreateWatcher`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchDirRequest {
    /// Directory to watch.
    pub path: String,
    /// Watch subdirectories too.
    #[serde(default)]
    pub recursive: bool,
    /// Attach an `EntryInfo` to each event.
    #[serde(default)]
    pub include_entry: bool,
    /// Allow watching a directory on a network filesystem, refused otherwise.
    #[serde(default)]
    pub allow_network_mounts: bool,
}

/// Server-streamed `WatchDir` messages (a oneof).
// Short-lived and moved once per event; boxing would only complicate construction.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WatchDirResponse {
    /// First message: the watch is set up.
    Start {},
    /// A change in the watched directory.
    Filesystem(FilesystemEvent),
    /// Sent to keep the stream open; carries nothing.
    Keepalive {},
}

/// Request of `CreateWatcher`: the same fields as `WatchDir`.
pub type CreateWatcherRequest = WatchDirRequest;

/// Names one watcher created by `CreateWatcher`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatcherIdRequest {
    /// Id the server gave the watcher.
    pub watcher_id: String,
}

/// Reply to `CreateWatcher`: the new watcher's id.
pub type CreateWatcherResponse = WatcherIdRequest;
/// Request of `GetWatcherEvents`: the watcher to drain.
pub type GetWatcherEventsRequest = WatcherIdRequest;
/// Request of `RemoveWatcher`: the watcher to stop.
pub type RemoveWatcherRequest = WatcherIdRequest;

/// Reply to `GetWatcherEvents`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetWatcherEventsResponse {
    /// Events queued since the previous call.
    #[serde(default)]
    pub events: Vec<FilesystemEvent>,
}

/// One entry of the `POST /files` response array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteInfo {
    /// Last path component of the written file.
    pub name: String,
    /// Always `"file"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Absolute path of the written file.
    pub path: String,
    /// Metadata stored on the file with the upload.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Error body of the plain HTTP routes (`/files`): `{"code":404,"message":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpError {
    /// HTTP status code, repeated in the body.
    pub code: u16,
    /// Human-readable error message.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_info_wire_form() {
        let e = EntryInfo {
            name: "a.txt".into(),
            file_type: FileType::File,
            path: "/home/user/a.txt".into(),
            size: 12,
            mode: 0o644,
            permissions: "-rw-r--r--".into(),
            owner: "user".into(),
            group: "user".into(),
            modified_time: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "FILE_TYPE_FILE");
        assert_eq!(v["size"], "12");
        assert_eq!(v["modifiedTime"], "2026-01-01T00:00:00Z");
        let back: EntryInfo = serde_json::from_str(&v.to_string().replace("\"12\"", "12")).unwrap();
        assert_eq!(back.size, 12);
    }

    #[test]
    fn watch_messages() {
        let m = WatchDirResponse::Filesystem(FilesystemEvent {
            name: "a.txt".into(),
            event_type: EventType::Write,
            entry: None,
        });
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"filesystem":{"name":"a.txt","type":"EVENT_TYPE_WRITE"}}"#
        );
        assert_eq!(
            serde_json::to_string(&WatchDirResponse::Start {}).unwrap(),
            r#"{"start":{}}"#
        );
        let r: WatcherIdRequest = serde_json::from_str(r#"{"watcherId":"w1"}"#).unwrap();
        assert_eq!(r.watcher_id, "w1");
    }
}
