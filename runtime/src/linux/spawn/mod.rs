//! Starting a sandbox: the record (pure data, built by the daemon), the steps it expands to
//! (`steps`, pure and golden-tested) and the executor that runs them in order, which runs
//! in the single-threaded `coppice-spawn` helper, never in the tokio daemon (a fork of a
//! multi-threaded process may only call async-signal-safe functions; the helper can do real
//! work in its child).
//!
//! Sequence (helper = host root in a private mount namespace):
//! 1. helper joins the sandbox's netns (owned by the initial user namespace, so root inside
//!    cannot reconfigure its own interfaces), binds the agent's listening socket on the host;
//! 2. clone(NEWUSER|NEWPID|NEWUTS|NEWIPC): the child will be the sandbox's PID 1;
//! 3. helper writes the child's uid/gid maps, puts it into its cgroups, and mounts the root:
//!    an overlay whose layers AND upper are idmapped mounts (the userns's mapping), so files
//!    are stored on disk with natural ownership (0 = root inside) and any layer can be stacked
//!    under any sandbox's uid range;
//! 4. child unshares mount and cgroup namespaces (copying the prepared tree), mounts /proc and
//!    /dev/pts, masks OCI paths, pivots, drops to uid 0 of its userns, sets no_new_privs and
//!    seccomp, and execs the agent with the socket at fd 3.
//!
//! The helper's mount namespace dies with it, so a crash leaves no host mounts behind.

mod exec;
mod plan;
mod restore;
mod restore_exec;
mod steps;
mod sys;

pub use exec::execute;
pub use plan::{
    DEVICES, EXTERNAL_MOUNTS, IdShift, MASKED_DIRS, MASKED_FILES, READONLY_PATHS, RestorePlan,
    SYS_DEVICES_KEPT, SpawnPlan, SpawnResult, TMPFS_TREES,
};
pub use restore::{InheritKeys, criu_restore_args, external_tree, restore_steps};
pub use restore_exec::{copy_tree, criu_errors};
pub use steps::{Mount, Step, Tree, When, render, steps};
