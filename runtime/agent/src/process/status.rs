//! End events shaped like envd's, which come from Go's `os.ProcessState`.

use coppice_envd::process::EndEvent;
use nix::sys::wait::WaitStatus;

/// The end event for a reaped child: `status` is Go's `ProcessState.String()`, `error` is set
/// (same text) when the exit was not clean, as Go's `cmd.Wait` returns an `ExitError` then.
pub fn end_event(status: WaitStatus) -> EndEvent {
    let (exit_code, exited, text) = match status {
        WaitStatus::Exited(_, code) => (code, true, format!("exit status {code}")),
        WaitStatus::Signaled(_, sig, core) => {
            let core = if core { " (core dumped)" } else { "" };
            // Go reports -1 as the exit code of a signalled process.
            (
                -1,
                false,
                format!("signal: {}{core}", signal_name(sig as i32)),
            )
        }
        other => (-1, false, format!("unexpected wait status {other:?}")),
    };
    EndEvent {
        exit_code,
        exited,
        error: (!exited || exit_code != 0).then(|| text.clone()),
        status: text,
    }
}

/// Go's `syscall.Signal.String()` on Linux.
fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "hangup",
        2 => "interrupt",
        3 => "quit",
        4 => "illegal instruction",
        5 => "trace/breakpoint trap",
        6 => "aborted",
        7 => "bus error",
        8 => "floating point exception",
        9 => "killed",
        10 => "user defined signal 1",
        11 => "segmentation fault",
        12 => "user defined signal 2",
        13 => "broken pipe",
        14 => "alarm clock",
        15 => "terminated",
        16 => "stack fault",
        17 => "child exited",
        18 => "continued",
        19 => "stopped (signal)",
        20 => "stopped",
        21 => "stopped (tty input)",
        22 => "stopped (tty output)",
        23 => "urgent I/O condition",
        24 => "CPU time limit exceeded",
        25 => "file size limit exceeded",
        26 => "virtual timer expired",
        27 => "profiling timer expired",
        28 => "window changed",
        29 => "I/O possible",
        30 => "power failure",
        31 => "bad system call",
        n => return format!("signal {n}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    #[test]
    fn statuses_read_like_go() {
        let pid = Pid::from_raw(7);
        let ok = end_event(WaitStatus::Exited(pid, 0));
        assert_eq!((ok.exit_code, ok.exited), (0, true));
        assert_eq!(ok.status, "exit status 0");
        assert_eq!(ok.error, None);

        let failed = end_event(WaitStatus::Exited(pid, 3));
        assert_eq!(failed.exit_code, 3);
        assert_eq!(failed.error.as_deref(), Some("exit status 3"));

        let killed = end_event(WaitStatus::Signaled(pid, Signal::SIGKILL, false));
        assert_eq!((killed.exit_code, killed.exited), (-1, false));
        assert_eq!(killed.status, "signal: killed");
        let term = end_event(WaitStatus::Signaled(pid, Signal::SIGTERM, false));
        assert_eq!(term.status, "signal: terminated");
        let segv = end_event(WaitStatus::Signaled(pid, Signal::SIGSEGV, true));
        assert_eq!(segv.status, "signal: segmentation fault (core dumped)");
    }
}
