//! MCP tools for files: read, write, edit, list, stat, mkdir, move, remove, search.

use coppice_tools::files::{ContentKind, FileEntry, FileRead, Search, SearchMatch};
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::explain::{About, explain};
use crate::limits::*;
use crate::resources;
use crate::session::CoppiceMcp;

// Arguments. Doc comments become the field descriptions of each tool's input schema.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadFileArgs {
    /// Sandbox to read from; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
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
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Plain text, written as UTF-8.
    #[default]
    Utf8,
    /// Base64 of arbitrary bytes.
    Base64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteFileArgs {
    /// Sandbox to write to; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// File path; relative paths are relative to /home/user. Missing parent directories are
    /// created; an existing file is replaced.
    pub path: String,
    /// The whole new content of the file.
    pub content: String,
    /// "utf8" (default) or "base64".
    #[serde(default)]
    pub encoding: Encoding,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EditFileArgs {
    /// Sandbox of the file; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
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

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFilesArgs {
    /// Sandbox to list; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
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

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathArgs {
    /// Sandbox to act on; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// Path; relative paths are relative to /home/user.
    pub path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveArgs {
    /// Sandbox to act on; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
    /// Existing file or directory.
    pub source: String,
    /// New path (an existing file there is replaced).
    pub destination: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// Sandbox to search; omit to use this session's default sandbox.
    #[serde(default)]
    pub sandbox_id: Option<String>,
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

// Results. Every one is an object that names the sandbox it acted on.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FileReadOutput {
    pub sandbox_id: String,
    #[serde(flatten)]
    pub file: FileRead,
    /// When truncated: the whole file as an MCP resource, also returned as a resource_link
    /// content block (read it with resources/read, at most 16 MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_uri: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FileWriteOutput {
    pub sandbox_id: String,
    /// Absolute path written.
    pub path: String,
    pub bytes: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FileEditOutput {
    pub sandbox_id: String,
    pub path: String,
    pub replacements: usize,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FileListOutput {
    pub sandbox_id: String,
    pub entries: Vec<FileEntry>,
    /// True when max_entries cut the list.
    pub truncated: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FileEntryOutput {
    pub sandbox_id: String,
    pub entry: FileEntry,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct MkdirOutput {
    pub sandbox_id: String,
    pub entry: FileEntry,
    /// False when the directory already existed.
    pub created: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RemoveOutput {
    pub sandbox_id: String,
    pub path: String,
    pub removed: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SearchOutput {
    pub sandbox_id: String,
    pub matches: Vec<SearchMatch>,
    /// True when there were more matches than max_results.
    pub truncated: bool,
    /// grep's complaints (unreadable files and the like), if any.
    pub errors: String,
}

#[tool_router(router = file_router, vis = "pub(crate)")]
impl CoppiceMcp {
    /// Read a file. Text comes back as lines (1-based offset/limit, 2000 lines by default,
    /// next_offset when more follow); PNG, JPEG, GIF and WebP images come back as image
    /// content; other binary files as base64.
    #[tool(
        annotations(
            title = "Read file",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        ),
        output_schema = schema_for_output::<FileReadOutput>()
    )]
    async fn files_read(
        &self,
        Parameters(a): Parameters<ReadFileArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let mut file = self
            .tools()
            .read_file(&id, &a.path, a.offset, a.limit)
            .await
            .map_err(|e| explain(e, About::File))?;
        let image = file.image_base64.take();
        // Too large to inline: link the whole file instead.
        let link = file.truncated.then(|| {
            let mime = file
                .mime_type
                .as_deref()
                .or_else(|| resources::mime_by_extension(&file.path));
            resources::file_link(&id, &file.path, file.size, mime)
        });
        // Binary bytes travel once, in structuredContent; the text block repeats them only when
        // small (a megabyte of base64 is no use in a model's context and doubles the reply).
        let bytes_b64 = file.base64.take();
        let out = FileReadOutput {
            sandbox_id: id,
            resource_uri: link.as_ref().map(|l| l.uri.clone()),
            file,
        };
        let mut value = serde_json::to_value(&out).map_err(|e| e.to_string())?;
        let mut result = match bytes_b64 {
            Some(b64) if b64.len() > INLINE_TEXT_BASE64 => {
                let mut result = CallToolResult::structured(value);
                result.content.push(ContentBlock::text(format!(
                    "{} bytes of binary data, base64-encoded in structuredContent.base64 (too large to repeat here).",
                    out.file.size
                )));
                if let Some(map) = result
                    .structured_content
                    .as_mut()
                    .and_then(|v| v.as_object_mut())
                {
                    map.insert("base64".into(), serde_json::Value::String(b64));
                }
                result
            }
            Some(b64) => {
                if let Some(map) = value.as_object_mut() {
                    map.insert("base64".into(), serde_json::Value::String(b64));
                }
                CallToolResult::structured(value)
            }
            None => CallToolResult::structured(value),
        };
        if let (Some(data), ContentKind::Image) = (image, out.file.kind) {
            let mime = out.file.mime_type.clone().unwrap_or_default();
            result.content.push(ContentBlock::image(data, mime));
        }
        result.content.extend(link.map(ContentBlock::resource_link));
        Ok(result)
    }

    /// Write a file (text, or bytes as base64), creating missing parent directories and
    /// replacing any existing file.
    #[tool(annotations(
        title = "Write file",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn files_write(
        &self,
        Parameters(a): Parameters<WriteFileArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<FileWriteOutput>, String> {
        let data = match a.encoding {
            Encoding::Utf8 => a.content.into_bytes(),
            Encoding::Base64 => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(a.content.trim())
                    .map_err(|e| format!("content is not valid base64 ({e}); send text with encoding \"utf8\" or fix the encoding"))?
            }
        };
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let bytes = data.len() as u64;
        let path = self
            .tools()
            .write_file(&id, &a.path, data)
            .await
            .map_err(|e| explain(e, About::File))?;
        Ok(Json(FileWriteOutput {
            sandbox_id: id,
            path,
            bytes,
        }))
    }

    /// Replace an exact string in a text file. old_string must occur exactly once (add
    /// surrounding lines to make it unique) unless replace_all is set.
    #[tool(annotations(
        title = "Edit file",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn files_edit(
        &self,
        Parameters(a): Parameters<EditFileArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<FileEditOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let (path, replacements) = self
            .tools()
            .edit_file(&id, &a.path, &a.old_string, &a.new_string, a.replace_all)
            .await
            .map_err(|e| explain(e, About::File))?;
        Ok(Json(FileEditOutput {
            sandbox_id: id,
            path,
            replacements,
        }))
    }

    /// List a directory, optionally several levels deep and filtered by a glob.
    #[tool(annotations(
        title = "List files",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn files_list(
        &self,
        Parameters(a): Parameters<ListFilesArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<FileListOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let (entries, truncated) = self
            .tools()
            .list_files(
                &id,
                a.path.as_deref().unwrap_or(""),
                a.depth.unwrap_or(1).clamp(1, 10),
                a.glob.as_deref(),
                a.max_entries.unwrap_or(1000).max(1),
            )
            .await
            .map_err(|e| explain(e, About::File))?;
        Ok(Json(FileListOutput {
            sandbox_id: id,
            entries,
            truncated,
        }))
    }

    /// Size, type, permissions, owner and modification time of a path.
    #[tool(annotations(
        title = "Stat file",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn files_stat(
        &self,
        Parameters(a): Parameters<PathArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<FileEntryOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let entry = self
            .tools()
            .stat(&id, &a.path)
            .await
            .map_err(|e| explain(e, About::File))?;
        Ok(Json(FileEntryOutput {
            sandbox_id: id,
            entry,
        }))
    }

    /// Create a directory and any missing parents (no error if it exists).
    #[tool(annotations(
        title = "Make directory",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn files_mkdir(
        &self,
        Parameters(a): Parameters<PathArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<MkdirOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let (entry, created) = self
            .tools()
            .make_dir(&id, &a.path)
            .await
            .map_err(|e| explain(e, About::File))?;
        Ok(Json(MkdirOutput {
            sandbox_id: id,
            entry,
            created,
        }))
    }

    /// Move or rename a file or directory.
    #[tool(annotations(
        title = "Move file",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn files_move(
        &self,
        Parameters(a): Parameters<MoveArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<FileEntryOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let entry = self
            .tools()
            .move_file(&id, &a.source, &a.destination)
            .await
            .map_err(|e| explain(e, About::File))?;
        Ok(Json(FileEntryOutput {
            sandbox_id: id,
            entry,
        }))
    }

    /// Remove a file, or a directory with everything in it.
    #[tool(annotations(
        title = "Remove file",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn files_remove(
        &self,
        Parameters(a): Parameters<PathArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<RemoveOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        self.tools()
            .remove_file(&id, &a.path)
            .await
            .map_err(|e| explain(e, About::File))?;
        Ok(Json(RemoveOutput {
            sandbox_id: id,
            path: a.path,
            removed: true,
        }))
    }

    /// Search file contents for a regular expression (grep -E), recursively; returns
    /// path, line number and line for each match, capped at max_results.
    #[tool(annotations(
        title = "Search files",
        read_only_hint = true,
        destructive_hint = false,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn files_search(
        &self,
        Parameters(a): Parameters<SearchArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<SearchOutput>, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let res = self
            .tools()
            .search_files(
                &id,
                Search {
                    pattern: a.pattern,
                    path: a.path.unwrap_or_default(),
                    glob: a.glob,
                    case_insensitive: a.case_insensitive,
                    max_results: a.max_results.unwrap_or(100).clamp(1, 1000),
                },
            )
            .await
            .map_err(|e| explain(e, About::File))?;
        Ok(Json(SearchOutput {
            sandbox_id: id,
            matches: res.matches,
            truncated: res.truncated,
            errors: res.errors,
        }))
    }
}
