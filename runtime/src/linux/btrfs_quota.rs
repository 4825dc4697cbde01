//! Disk limits of sandbox uppers on btrfs (docs/decisions/0010-disk-quotas.md): btrfs *simple
//! quotas* (Linux ≥ 6.7), turned on once for the storage filesystem, and a limit on each upper
//! subvolume's qgroup. A write past it fails with EDQUOT inside the sandbox; other sandboxes
//! are not affected.
//!
//! Simple quotas charge an extent to the subvolume that wrote it, for as long as it lives: a
//! snapshot of an upper costs its sandbox nothing new, a fork's upper starts empty and pays
//! for what the fork writes, and the data a fork reads from its snapshot stays charged where it
//! was written. (Full qgroups would track sharing exactly, at a cost on every extent change and
//! a much slower subvolume deletion.)
//!
//! Through the ioctls, as the rest of the btrfs code: BTRFS_IOC_QUOTA_CTL with
//! BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA, and BTRFS_IOC_QGROUP_LIMIT on the subvolume's fd
//! (qgroup id 0 = the subvolume of the fd). Debian 12's btrfs-progs (6.2) has no `--simple`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Error, IoContext, Result};

const BTRFS_IOCTL_MAGIC: u8 = 0x94;
const BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA: u64 = 4;
const BTRFS_QGROUP_LIMIT_MAX_RFER: u64 = 1 << 0;
const BTRFS_QGROUP_LIMIT_MAX_EXCL: u64 = 1 << 1;

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args` (qgroupid + `struct btrfs_qgroup_limit`).
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

nix::ioctl_readwrite!(
    /// `BTRFS_IOC_QUOTA_CTL`: the quota command in `QuotaCtlArgs` for the filesystem of `fd`.
    ioc_quota_ctl,
    BTRFS_IOCTL_MAGIC,
    40,
    QuotaCtlArgs
);
nix::ioctl_read!(
    /// `BTRFS_IOC_QGROUP_LIMIT`: sets the limits in `QgroupLimitArgs` (qgroup 0: that of `fd`).
    ioc_qgroup_limit,
    BTRFS_IOCTL_MAGIC,
    43,
    QgroupLimitArgs
);

/// Turns simple quotas on for the btrfs filesystem at `root` (nothing changes when they are
/// on already). Err says why they cannot be.
pub fn enable(root: &Path) -> Result<()> {
    let dir = File::open(root).ctx(|| format!("opening {}", root.display()))?;
    let mut args = QuotaCtlArgs {
        cmd: BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA,
        status: 0,
    };
    // SAFETY: a valid quota_ctl_args for the duration of the call.
    match unsafe { ioc_quota_ctl(dir.as_raw_fd(), &mut args) } {
        Ok(_) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(Error::HostUnsupported(format!(
            "btrfs simple quotas on {} (Linux >= 6.7): {e}",
            root.display()
        ))),
    }
}

/// Limits what the subvolume `subvol` may hold to `bytes` (None: no limit).
pub fn limit(subvol: &Path, bytes: Option<u64>) -> Result<()> {
    let dir = File::open(subvol).ctx(|| format!("opening {}", subvol.display()))?;
    let args = limit_args(bytes);
    // SAFETY: a valid qgroup_limit_args for the duration of the call (the kernel reads it).
    unsafe { ioc_qgroup_limit(dir.as_raw_fd(), &args as *const _ as *mut _) }.map_err(|e| {
        Error::Internal(format!(
            "setting the disk limit of {}: {e}",
            subvol.display()
        ))
    })?;
    Ok(())
}

fn limit_args(bytes: Option<u64>) -> QgroupLimitArgs {
    // Both flags set with u64::MAX clears a limit, as `btrfs qgroup limit none` does.
    let max = bytes.unwrap_or(u64::MAX);
    QgroupLimitArgs {
        qgroupid: 0,
        flags: BTRFS_QGROUP_LIMIT_MAX_RFER | BTRFS_QGROUP_LIMIT_MAX_EXCL,
        max_rfer: max,
        max_excl: max,
        rsv_rfer: 0,
        rsv_excl: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<QuotaCtlArgs>(), 16);
        assert_eq!(std::mem::size_of::<QgroupLimitArgs>(), 48);
        let a = limit_args(Some(64 << 20));
        assert_eq!((a.max_rfer, a.max_excl, a.flags), (64 << 20, 64 << 20, 3));
        assert_eq!(limit_args(None).max_rfer, u64::MAX);
    }
}
