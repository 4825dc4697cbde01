//! The files tools' requests. Doc comments are the field descriptions every surface's schema
//! shows; defaults are applied by the tool layer.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Read a file: text by lines, images and binaries whole.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFile {
    /// File path; relative paths are relative to /home/user.
    pub path: String,
    /// For text files: 1-based line to start at; default 1.
    #[serde(default)]
    pub offset: Option<u64>,
    /// For text files: number of lines to return; default 2000.
    #[serde(default)]
    pub limit: Option<u64>,
}

/// How `content` is encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Plain text, written as UTF-8.
    #[default]
    Utf8,
    /// Base64 of arbitrary bytes.
    Base64,
}

/// Write a whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFile {
    /// File path; relative paths are relative to /home/user. Missing parent directories are
    /// created; an existing file is replaced.
    pub path: String,
    /// The whole new content of the file.
    pub content: String,
    /// "utf8" (default) or "base64".
    #[serde(default)]
    pub encoding: Encoding,
}

/// Replace exact text in a text file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EditFile {
    /// Text file to edit; relative paths are relative to /home/user.
    pub path: String,
    /// Exact text to replace, including whitespace and indentation. It must occur exactly
    /// once unless replace_all is set.
    pub old_string: String,
    /// Text to put in its place.
    pub new_string: String,
    /// Replace every occurrence instead of requiring exactly one.
    #[serde(default)]
    pub replace_all: bool,
}

/// List a directory, optionally recursively and filtered by a glob.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFiles {
    /// Directory to list; default /home/user.
    #[serde(default)]
    pub path: Option<String>,
    /// Levels to descend: 1 (default) lists the directory itself, 2 also its subdirectories...
    /// At most 10.
    #[serde(default)]
    pub depth: Option<u32>,
    /// Only entries matching this glob: "*.py" matches names; a pattern with "/" such as
    /// "src/**/*.rs" matches paths relative to `path`.
    #[serde(default)]
    pub glob: Option<String>,
    /// Most entries returned; default 1000.
    #[serde(default)]
    pub max_entries: Option<usize>,
}

/// A path, for stat, mkdir and remove.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilePath {
    /// Path; relative paths are relative to /home/user.
    pub path: String,
}

/// Move or rename a file or directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveFile {
    /// Existing file or directory.
    pub source: String,
    /// New path (an existing file there is replaced).
    pub destination: String,
}

/// A grep-like search.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Search {
    /// Extended regular expression, as `grep -E` takes it.
    pub pattern: String,
    /// File or directory to search recursively; default /home/user. `.git` and
    /// `node_modules` are skipped, binary files ignored.
    #[serde(default)]
    pub path: Option<String>,
    /// Only search files whose name matches this glob, e.g. "*.py".
    #[serde(default)]
    pub glob: Option<String>,
    /// Match case-insensitively.
    #[serde(default)]
    pub case_insensitive: bool,
    /// Most matches returned; default 100, at most 1000.
    #[serde(default)]
    pub max_results: Option<usize>,
}
