//! MCP browser tools that act on the page: click, hover, drag, type, fill a form, select,
//! press keys, upload files, answer dialogs, and the coordinate (vision) group. Names and
//! parameters are playwright-mcp's; each answers with the page after the action.

use coppice_tools::browser::requests as r;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};

use crate::browser_tools::{answer, output_schema};
use crate::in_sandbox::InSandbox;
use crate::session::CoppiceMcp;

#[tool_router(router = browser_input_router, vis = "pub(crate)")]
impl CoppiceMcp {
    /// Click an element of the page snapshot (`target` is its ref); `doubleClick`, `button` (left,
    /// right, middle) and `modifiers` (Alt, Control, ControlOrMeta, Meta, Shift) as needed. Answers
    /// with the page after the click.
    #[tool(
        annotations(
        title = "Click",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_click(
        &self,
        Parameters(a): Parameters<InSandbox<r::Click>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(id.clone(), self.tools().browser_click(&id, a.request).await)
    }

    /// Move the mouse over an element of the page snapshot.
    #[tool(
        annotations(
        title = "Hover",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_hover(
        &self,
        Parameters(a): Parameters<InSandbox<r::Hover>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(id.clone(), self.tools().browser_hover(&id, a.request).await)
    }

    /// Drag one element of the page snapshot (`startTarget`) and drop it on another (`endTarget`).
    #[tool(
        annotations(
        title = "Drag and drop",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_drag(
        &self,
        Parameters(a): Parameters<InSandbox<r::Drag>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(id.clone(), self.tools().browser_drag(&id, a.request).await)
    }

    /// Type text into an editable element (it replaces the field's content); `submit` presses Enter
    /// after, `slowly` types key by key so that every key handler fires.
    #[tool(
        annotations(
        title = "Type text",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_type(
        &self,
        Parameters(a): Parameters<InSandbox<r::Type>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(id.clone(), self.tools().browser_type(&id, a.request).await)
    }

    /// Fill several form fields at once: each {name, type (textbox, checkbox, radio, combobox,
    /// slider), target, value}.
    #[tool(
        annotations(
        title = "Fill form",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_fill_form(
        &self,
        Parameters(a): Parameters<InSandbox<r::FillForm>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_fill_form(&id, a.request).await,
        )
    }

    /// Select options (by value or label) in a select element of the page snapshot.
    #[tool(
        annotations(
        title = "Select option",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_select_option(
        &self,
        Parameters(a): Parameters<InSandbox<r::SelectOption>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_select_option(&id, a.request).await,
        )
    }

    /// Press a key on the keyboard: a character (`a`), a key name (`Enter`, `ArrowLeft`, `Escape`,
    /// `Tab`) or a chord (`Control+a`, `Shift+Tab`).
    #[tool(
        annotations(
        title = "Press a key",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_press_key(
        &self,
        Parameters(a): Parameters<InSandbox<r::PressKey>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_press_key(&id, a.request).await,
        )
    }

    /// Choose files for the open file chooser (click the page's file input first): absolute paths
    /// in the sandbox; omit paths to cancel.
    #[tool(
        annotations(
        title = "Upload files",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_file_upload(
        &self,
        Parameters(a): Parameters<InSandbox<r::FileUpload>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_file_upload(&id, a.request).await,
        )
    }

    /// Accept or dismiss the page's open alert, confirm or prompt dialog (`promptText` answers a
    /// prompt).
    #[tool(
        annotations(
        title = "Handle a dialog",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_handle_dialog(
        &self,
        Parameters(a): Parameters<InSandbox<r::HandleDialog>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_handle_dialog(&id, a.request).await,
        )
    }

    /// Click at viewport coordinates (CSS pixels, as in a screenshot); for pages whose elements the
    /// snapshot cannot name.
    #[tool(
        annotations(
        title = "Click at coordinates",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_mouse_click_xy(
        &self,
        Parameters(a): Parameters<InSandbox<r::MouseClickXy>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_mouse_click_xy(&id, a.request).await,
        )
    }

    /// Move the mouse to viewport coordinates.
    #[tool(
        annotations(
        title = "Move the mouse",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_mouse_move_xy(
        &self,
        Parameters(a): Parameters<InSandbox<r::MouseMoveXy>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_mouse_move_xy(&id, a.request).await,
        )
    }

    /// Drag the mouse from one viewport point to another.
    #[tool(
        annotations(
        title = "Drag by coordinates",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_mouse_drag_xy(
        &self,
        Parameters(a): Parameters<InSandbox<r::MouseDragXy>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_mouse_drag_xy(&id, a.request).await,
        )
    }

    /// Press a mouse button where the mouse is.
    #[tool(
        annotations(
        title = "Mouse button down",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_mouse_down(
        &self,
        Parameters(a): Parameters<InSandbox<r::MouseButton>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools()
                .browser_mouse_button(&id, a.request, true)
                .await,
        )
    }

    /// Release a mouse button where the mouse is.
    #[tool(
        annotations(
        title = "Mouse button up",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_mouse_up(
        &self,
        Parameters(a): Parameters<InSandbox<r::MouseButton>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools()
                .browser_mouse_button(&id, a.request, false)
                .await,
        )
    }

    /// Scroll with the mouse wheel by deltaX and deltaY pixels.
    #[tool(
        annotations(
        title = "Scroll",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = true
        ),
        output_schema = output_schema()
    )]
    async fn browser_mouse_wheel(
        &self,
        Parameters(a): Parameters<InSandbox<r::MouseWheel>>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, String> {
        let id = self.sandbox(a.sandbox_id, &ctx).await?;
        answer(
            id.clone(),
            self.tools().browser_mouse_wheel(&id, a.request).await,
        )
    }
}
