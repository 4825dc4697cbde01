//! Runs nft scripts as one transaction each: the shared objects loaded at start and the
//! resolver's admissions. Through libnftables in-process (dlopen of `libnftables.so.1`, which
//! the `nft` command itself links): ~0.3 ms instead of ~10 ms for an `nft -f` exec. When the
//! library cannot be loaded the `nft` command is used. The loaded library is a process-wide
//! handle (it is never unloaded), not state: every caller gets the same one.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::{Mutex, OnceLock};

use super::net;
use crate::error::{Error, Result};

/// An nftables context from libnftables, used by one thread at a time.
struct LibNft {
    ctx: *mut c_void,
    run: unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int,
    error_buffer: unsafe extern "C" fn(*mut c_void) -> *const c_char,
}

// SAFETY: the context is only used under the Mutex in `libnft()`, one call at a time, and
// libnftables keeps no thread-local state.
unsafe impl Send for LibNft {}

fn libnft() -> Option<&'static Mutex<LibNft>> {
    static LIB: OnceLock<Option<Mutex<LibNft>>> = OnceLock::new();
    LIB.get_or_init(|| {
        // SAFETY: dlopen/dlsym with valid C strings; the library is never unloaded, so the
        // function pointers stay valid for the life of the process. Signatures are those of
        // <nftables/libnftables.h> (stable since libnftables 0.9).
        unsafe {
            let lib = libc::dlopen(c"libnftables.so.1".as_ptr(), libc::RTLD_NOW);
            if lib.is_null() {
                tracing::info!("libnftables.so.1 not found; network policy uses the nft command");
                return None;
            }
            let sym = |name: &CStr| libc::dlsym(lib, name.as_ptr());
            let (new, buffer_output, buffer_error, run, error_buffer) = (
                sym(c"nft_ctx_new"),
                sym(c"nft_ctx_buffer_output"),
                sym(c"nft_ctx_buffer_error"),
                sym(c"nft_run_cmd_from_buffer"),
                sym(c"nft_ctx_get_error_buffer"),
            );
            if [new, buffer_output, buffer_error, run, error_buffer]
                .iter()
                .any(|p| p.is_null())
            {
                return None;
            }
            let new: unsafe extern "C" fn(u32) -> *mut c_void = std::mem::transmute(new);
            let buffer: unsafe extern "C" fn(*mut c_void) -> c_int =
                std::mem::transmute(buffer_output);
            let buffer_err: unsafe extern "C" fn(*mut c_void) -> c_int =
                std::mem::transmute(buffer_error);
            let ctx = new(0);
            if ctx.is_null() {
                return None;
            }
            // Buffer output and errors instead of printing them on our stdout/stderr.
            buffer(ctx);
            buffer_err(ctx);
            Some(Mutex::new(LibNft {
                ctx,
                run: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int,
                >(run),
                error_buffer: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*mut c_void) -> *const c_char,
                >(error_buffer),
            }))
        }
    })
    .as_ref()
}

/// Runs one nft script as one transaction (all of it or none of it).
pub async fn nft_run(script: &str) -> Result<()> {
    let Some(lib) = libnft() else {
        return net::nft_load(script).await;
    };
    let script =
        CString::new(script).map_err(|_| Error::internal("nft script contains a NUL byte"))?;
    let lib = lib.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: ctx is a live context; script is NUL-terminated; the error buffer is a
    // NUL-terminated string owned by the context, copied before the lock is released.
    let (rc, err) = unsafe {
        let rc = (lib.run)(lib.ctx, script.as_ptr());
        let p = (lib.error_buffer)(lib.ctx);
        let err = if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().trim().to_string()
        };
        (rc, err)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::Internal(format!("nft transaction failed: {err}")))
    }
}
