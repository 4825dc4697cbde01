//! A sandbox's limits: what a request asks for, filled in from the configured defaults and
//! checked against the maxima (docs/security.md). Pure: the host's sizes come in as data.

use crate::error::{Error, Result};
use crate::model::{Limits, parse_size};

/// The host's sizes the maxima default to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostSize {
    /// Total RAM in bytes (`u64::MAX` when unknown).
    pub memory_bytes: u64,
    /// CPUs this process may run on.
    pub cpus: f64,
}

impl HostSize {
    /// This host: MemTotal and the CPUs this process may run on.
    pub fn current() -> Self {
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(u64::MAX, |kib| kib * 1024);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        Self { memory_bytes, cpus }
    }
}

/// The most one sandbox may have: the configured maxima, the host's size where unset.
pub fn maxima(configured: &Limits, host: HostSize) -> Limits {
    Limits {
        memory_bytes: Some(configured.memory_bytes.unwrap_or(host.memory_bytes)),
        cpus: Some(configured.cpus.unwrap_or(host.cpus)),
        pids: configured.pids,
        disk_bytes: configured.disk_bytes,
    }
}

/// What all sandboxes together get (their parent cgroup): the host's RAM less the reserve.
pub fn all_sandboxes(host: HostSize, reserve: &str, max_pids: Option<u64>) -> Result<Limits> {
    let reserve = parse_size(reserve)
        .map_err(|e| Error::InvalidArgument(format!("host_reserve_memory: {e}")))?;
    Ok(Limits {
        memory_bytes: Some(host.memory_bytes.saturating_sub(reserve).max(64 << 20)),
        cpus: None,
        // Room for many sandboxes at their maximum, under the kernel's own ceiling.
        pids: max_pids.map(|p| (p.saturating_mul(64)).min(1 << 22)),
        disk_bytes: None,
    })
}

/// The host-wide ceilings a new sandbox is admitted under (admission control).
#[derive(Debug, Clone, Copy)]
pub struct Ceilings {
    /// Most sandboxes callers may own at once (pooled ones not counted).
    pub sandboxes: usize,
    /// Sum of the memory limits of all sandboxes; None: only the parent cgroup's cap.
    pub committed_memory: Option<u64>,
}

/// Whether one more sandbox with `memory` may start beside `live` sandboxes whose memory
/// limits add up to `committed`; a refusal says which ceiling (429 on every surface).
pub fn admission(live: usize, committed: u64, memory: u64, c: Ceilings) -> Result<()> {
    if live >= c.sandboxes {
        return Err(Error::ResourceExhausted(format!(
            "this host runs {live} sandboxes, its ceiling (max_sandboxes = {}): kill one or retry later",
            c.sandboxes
        )));
    }
    if let Some(top) = c.committed_memory
        && committed.saturating_add(memory) > top
    {
        return Err(Error::ResourceExhausted(format!(
            "the sandboxes' memory limits would add up to {}M, above this host's ceiling of {}M \
             (max_committed_memory): ask for less memory, kill a sandbox or retry later",
            committed.saturating_add(memory) >> 20,
            top >> 20
        )));
    }
    Ok(())
}

/// Whether a new sandbox may start with `free` bytes left on the state filesystem.
pub fn disk_admission(free: u64, reserve: &str) -> Result<()> {
    let reserve =
        parse_size(reserve).map_err(|e| Error::InvalidArgument(format!("disk_reserve: {e}")))?;
    if free < reserve {
        return Err(Error::Unavailable(format!(
            "the host's sandbox storage has {}M free, below its reserve of {}M (disk_reserve): \
             kill sandboxes or delete snapshots to make room",
            free >> 20,
            reserve >> 20
        )));
    }
    Ok(())
}

/// A byte limit (`what`: memory or disk) between 16M and its maximum, or a 400 saying which.
fn check_bytes(what: &str, value: Option<u64>, max: Option<u64>) -> Result<()> {
    let Some(v) = value else { return Ok(()) };
    if v < 16 << 20 {
        return Err(Error::InvalidArgument(format!(
            "{what} limit must be at least 16M"
        )));
    }
    if let Some(top) = max.filter(|&top| v > top) {
        return Err(Error::InvalidArgument(format!(
            "{what} limit {}M is above the maximum of {}M (max_limits.{what}_bytes)",
            v >> 20,
            top >> 20
        )));
    }
    Ok(())
}

/// `asked` with the defaults filled in, or a 400 naming the bound it breaks.
pub fn effective(asked: &Limits, defaults: &Limits, max: &Limits) -> Result<Limits> {
    let limits = Limits {
        memory_bytes: asked.memory_bytes.or(defaults.memory_bytes),
        cpus: asked.cpus.or(defaults.cpus),
        pids: asked.pids.or(defaults.pids),
        disk_bytes: asked.disk_bytes.or(defaults.disk_bytes),
    };
    check_bytes("memory", limits.memory_bytes, max.memory_bytes)?;
    check_bytes("disk", limits.disk_bytes, max.disk_bytes)?;
    if let Some(c) = limits.cpus {
        if !(c.is_finite() && c > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "cpus must be a positive number, got {c}"
            )));
        }
        if let Some(top) = max.cpus.filter(|&top| c > top) {
            return Err(Error::InvalidArgument(format!(
                "cpus {c} is above the maximum of {top} (max_limits.cpus)"
            )));
        }
    }
    if let Some(p) = limits.pids {
        if p < 8 {
            return Err(Error::InvalidArgument(
                "pids limit must be at least 8".into(),
            ));
        }
        if let Some(top) = max.pids.filter(|&top| p > top) {
            return Err(Error::InvalidArgument(format!(
                "pids {p} is above the maximum of {top} (max_limits.pids)"
            )));
        }
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostSize = HostSize {
        memory_bytes: 8 << 30,
        cpus: 2.0,
    };

    fn lim(memory_bytes: Option<u64>, cpus: Option<f64>, pids: Option<u64>) -> Limits {
        Limits {
            memory_bytes,
            cpus,
            pids,
            disk_bytes: None,
        }
    }

    #[test]
    fn defaults_fill_in_and_maxima_refuse() {
        let defaults = lim(Some(512 << 20), Some(1.0), Some(256));
        let max = maxima(&lim(None, None, Some(32768)), HOST);
        assert_eq!(max, lim(Some(8 << 30), Some(2.0), Some(32768)));
        assert_eq!(
            effective(&Limits::default(), &defaults, &max).unwrap(),
            defaults
        );
        let err = |asked: Limits| effective(&asked, &defaults, &max).unwrap_err().to_string();
        let e = err(lim(Some(1 << 40), None, None));
        assert!(e.contains("above the maximum of 8192M"), "{e}");
        let e = err(lim(None, Some(1000.0), None));
        assert!(e.contains("maximum of 2"), "{e}");
        let e = err(lim(None, None, Some(1_000_000)));
        assert!(e.contains("maximum of 32768"), "{e}");
        assert!(err(lim(None, Some(f64::NAN), None)).contains("positive"));
        assert!(err(lim(Some(1 << 20), None, None)).contains("at least 16M"));
        assert!(err(lim(None, None, Some(2))).contains("at least 8"));
        let e = err(lim(Some(1 << 40), None, None));
        assert!(!e.contains('/'), "no host paths: {e}");
    }

    #[test]
    fn admission_ceilings() {
        let c = Ceilings {
            sandboxes: 2,
            committed_memory: Some(1 << 30),
        };
        assert!(admission(1, 256 << 20, 512 << 20, c).is_ok());
        let e = admission(2, 0, 1, c).unwrap_err();
        assert!(
            matches!(e, Error::ResourceExhausted(_)) && e.to_string().contains("max_sandboxes = 2")
        );
        let e = admission(1, 768 << 20, 512 << 20, c)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1280M, above this host's ceiling of 1024M"),
            "{e}"
        );
        let open = Ceilings {
            sandboxes: 10,
            committed_memory: None,
        };
        assert!(admission(1, u64::MAX, u64::MAX, open).is_ok());
    }

    #[test]
    fn a_full_disk_refuses_new_sandboxes() {
        assert!(disk_admission(3 << 30, "2G").is_ok());
        let e = disk_admission(1 << 30, "2G").unwrap_err().to_string();
        assert!(e.contains("1024M free, below its reserve of 2048M"), "{e}");
        let defaults = lim(Some(512 << 20), None, None);
        let asked = Limits {
            disk_bytes: Some(1 << 20),
            ..Default::default()
        };
        let e = effective(&asked, &defaults, &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("at least 16M"), "{e}");
    }

    #[test]
    fn all_sandboxes_leave_the_reserve() {
        let all = all_sandboxes(HOST, "1G", Some(32768)).unwrap();
        assert_eq!(all.memory_bytes, Some(7 << 30));
        assert_eq!(all.pids, Some(1 << 21));
        assert!(all_sandboxes(HOST, "lots", None).is_err());
    }
}
