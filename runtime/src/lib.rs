//! Coppice runtime: sandboxes and their lifecycle.
