//! MCP tools for files: read, write, edit, list, stat, mkdir, move, remove, search.

use coppice_tools::files::{
    ContentKind, EditFile, Encoding, FileEntry, FilePath, FileRead, ListFiles, MoveFile, ReadFile,
    Search, SearchMatch, WriteFile,
};
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::Serialize;

use crate::explain::{About, explain};
use crate::in_sandbox::InSandbox;
use crate::limits::*;
use crate::resources;
use crate::session::CoppiceMcp;

// Arguments: the tool layer's requests and the sandbox they act on.
pub type ReadFileArgs = InSandbox<ReadFile>;
pub type WriteFileArgs = InSandbox<WriteFile>;
pub type EditFileArgs = InSandbox<EditFile>;
pub type ListFilesArgs = InSandbox<ListFiles>;
pub type PathArgs = InSandbox<FilePath>;
pub type MoveArgs = InSandbox<MoveFile>;
pub type SearchArgs = InSandbox<Search>;

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
            .read_file(&id, &a.request.path, a.request.offset, a.request.limit)
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
        let data = match a.request.encoding {
            Encoding::Utf8 => a.request.content.into_bytes(),
            Encoding::Base64 => {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD
                    .decode(a.request.content.trim())
                    .map_err(|e| format!("content is not valid base64 ({e}); send text with encoding \"utf8\" or fix the encoding"))?
            }
        };
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        let bytes = data.len() as u64;
        let path = self
            .tools()
            .write_file(&id, &a.request.path, data)
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
            .edit_file(
                &id,
                &a.request.path,
                &a.request.old_string,
                &a.request.new_string,
                a.request.replace_all,
            )
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
            .list_files(&id, &a.request)
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
            .stat(&id, &a.request.path)
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
            .make_dir(&id, &a.request.path)
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
            .move_file(&id, &a.request.source, &a.request.destination)
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
            .remove_file(&id, &a.request.path)
            .await
            .map_err(|e| explain(e, About::File))?;
        Ok(Json(RemoveOutput {
            sandbox_id: id,
            path: a.request.path,
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
            .search_files(&id, a.request)
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
