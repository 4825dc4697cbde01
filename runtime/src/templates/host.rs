//! The host-derived template: a hard-link farm of the host's `/usr`, a scrubbed copy of
//! `/etc`, package databases, and the sandbox user's setup.

use std::fs;
use std::path::Path;
use std::time::{Instant, SystemTime};

use super::copy::{FileMode, TreeOpts, copy_file, copy_tree, farm_threads};
use super::rootfs::{dev_of, mkdir_like, mkdir_mode, read_in_root, remove_in_root, write_in_root};
use super::sys::remove_tree;
use super::userland::{
    SANDBOX_GID, SANDBOX_HOME, SANDBOX_HOSTNAME, SANDBOX_UID, SANDBOX_USER, hosts_text,
    sandbox_accounts, sandbox_resolv_conf,
};
use crate::error::{IoContext, Result};

/// Paths under /etc (relative) that never go into a template: secrets and host identity.
/// Entries ending in '/' keep the directory but drop its contents; '*' is a prefix wildcard.
pub const ETC_EXCLUDES: &[&str] = &[
    "shadow",
    "gshadow",
    "shadow-",
    "gshadow-",
    "passwd-",
    "group-",
    "subuid-",
    "subgid-",
    "security/opasswd",
    "ssh/ssh_host_*",
    "ssl/private/",
    "coppice",
    "machine-id",
    "apt/auth.conf",
    "apt/auth.conf.d/",
    "krb5.keytab",
    "ipsec.secrets",
    "ppp/chap-secrets",
    "ppp/pap-secrets",
    "NetworkManager/system-connections/",
    "wireguard/",
    "letsencrypt",
    "docker/key.json",
    ".git",
];

pub(super) fn etc_excluded(rel: &Path) -> bool {
    let rel = rel.to_string_lossy();
    ETC_EXCLUDES.iter().any(|pat| {
        if let Some(dir) = pat.strip_suffix('/') {
            rel.strip_prefix(dir)
                .is_some_and(|rest| rest.starts_with('/'))
        } else if let Some(prefix) = pat.strip_suffix('*') {
            rel.starts_with(prefix)
        } else {
            rel == *pat
        }
    })
}

/// Lays out a root filesystem from the system directories of `host` (normally "/").
pub(super) fn build_host_rootfs(host: &Path, rootfs: &Path, notes: &mut Vec<String>) -> Result<()> {
    let t0 = Instant::now();
    mkdir_like(rootfs, &host.join(""), 0o755)?;
    let same_fs = dev_of(&host.join("usr"))? == dev_of(rootfs)?;
    let usr_mode = if same_fs {
        FileMode::HardLink
    } else {
        FileMode::Copy
    };
    if !same_fs {
        notes.push("state dir is on another filesystem than /usr: /usr was copied (reflink where possible)".into());
    }

    // /usr, and the merged-/usr links (or directories on a non-merged host).
    let usr_stats = copy_tree(
        &host.join("usr"),
        &rootfs.join("usr"),
        &TreeOpts {
            mode: usr_mode,
            threads: farm_threads(),
            ..TreeOpts::default()
        },
    )?;
    for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let src = host.join(top);
        let Ok(md) = fs::symlink_metadata(&src) else {
            continue;
        };
        if md.file_type().is_symlink() {
            let target = fs::read_link(&src).ctx(|| format!("reading {}", src.display()))?;
            std::os::unix::fs::symlink(&target, rootfs.join(top))
                .ctx(|| format!("linking /{top}"))?;
        } else if md.is_dir() {
            copy_tree(
                &src,
                &rootfs.join(top),
                &TreeOpts {
                    mode: usr_mode,
                    ..TreeOpts::default()
                },
            )?;
        }
    }
    let t_usr = t0.elapsed();

    // /etc: a real copy without secrets (its files are rewritten below).
    copy_tree(
        &host.join("etc"),
        &rootfs.join("etc"),
        &TreeOpts {
            skip: Some(&etc_excluded),
            ..TreeOpts::default()
        },
    )?;
    // Keep the shapes of excluded-contents directories (e.g. /etc/ssl/private, 0710 root:ssl-cert).
    for pat in ETC_EXCLUDES.iter().filter_map(|p| p.strip_suffix('/')) {
        let src = host.join("etc").join(pat);
        if src.is_dir() && !src.is_symlink() {
            let dst = rootfs.join("etc").join(pat);
            if fs::symlink_metadata(&dst).is_err() {
                mkdir_like(&dst, &src, 0o755)?;
            }
        }
    }

    // /var: skeleton, dpkg and apt state (lists hard-linked), debconf's database.
    mkdir_like(&rootfs.join("var"), &host.join("var"), 0o755)?;
    for (d, mode) in [
        ("var/backups", 0o755),
        ("var/cache", 0o755),
        ("var/lib", 0o755),
        ("var/local", 0o2775),
        ("var/log", 0o755),
        ("var/mail", 0o2775),
        ("var/opt", 0o755),
        ("var/spool", 0o755),
        ("var/cache/apt", 0o755),
        ("var/cache/apt/archives", 0o755),
        ("var/cache/apt/archives/partial", 0o700),
        ("var/cache/debconf", 0o755),
    ] {
        mkdir_like(&rootfs.join(d), &host.join(d), mode)?;
    }
    mkdir_mode(&rootfs.join("var/tmp"), 0o1777, 0, 0)?;
    for (link, target) in [("var/run", "/run"), ("var/lock", "/run/lock")] {
        std::os::unix::fs::symlink(target, rootfs.join(link)).ctx(|| format!("linking /{link}"))?;
    }
    // dpkg's database is copied, except info/ (~3000 files, 30 MB of file lists and maintainer
    // scripts that dpkg only ever replaces by rename): hard-linked like the apt lists. Copying
    // it would double the build time; a sandbox writing there copies up through the overlay.
    let var_mode = if dev_of(&host.join("var/lib"))? == dev_of(rootfs)? {
        FileMode::HardLink
    } else {
        FileMode::Copy
    };
    for (dir, linked, fresh) in [
        ("var/lib/dpkg", "info", None),
        ("var/lib/apt", "lists", Some("partial")),
    ] {
        let src = host.join(dir);
        if !src.is_dir() {
            continue;
        }
        let skip_linked = |rel: &Path| rel == Path::new(linked);
        copy_tree(
            &src,
            &rootfs.join(dir),
            &TreeOpts {
                skip: Some(&skip_linked),
                threads: farm_threads(),
                ..TreeOpts::default()
            },
        )?;
        let src_linked = src.join(linked);
        if src_linked.is_dir() {
            let skip = |rel: &Path| Some(rel) == fresh.map(Path::new) || rel == Path::new("lock");
            let opts = TreeOpts {
                mode: var_mode,
                skip: Some(&skip),
                threads: farm_threads(),
                ..TreeOpts::default()
            };
            copy_tree(&src_linked, &rootfs.join(dir).join(linked), &opts)?;
            if let Some(fresh) = fresh {
                mkdir_like(
                    &rootfs.join(dir).join(linked).join(fresh),
                    &src_linked.join(fresh),
                    0o700,
                )?;
            }
        }
    }
    for f in ["config.dat", "templates.dat"] {
        // not passwords.dat
        let src = host.join("var/cache/debconf").join(f);
        if let Ok(md) = fs::symlink_metadata(&src)
            && md.is_file()
        {
            copy_file(&src, &rootfs.join("var/cache/debconf").join(f), &md, None)?;
        }
    }

    // Mount points and the other top-level directories.
    for (d, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("home", 0o755),
        ("mnt", 0o755),
        ("media", 0o755),
        ("opt", 0o755),
        ("srv", 0o755),
    ] {
        mkdir_mode(&rootfs.join(d), mode, 0, 0)?;
    }
    tracing::info!(
        usr_seconds = t_usr.as_secs_f64(),
        total_seconds = t0.elapsed().as_secs_f64(),
        files = usr_stats.files,
        linked = usr_stats.linked,
        "host root filesystem laid out"
    );
    Ok(())
}

/// The sandbox-user setup shared by every builder: accounts, home, sudoers, hostname, hosts,
/// resolv.conf (from `host`'s), machine-id.
pub(super) const PROFILE_ID_FORK: &str = "[ \"$(id -u)\" -eq 0 ]";
pub(super) const PROFILE_ID_BASH: &str = "[ \"${EUID:-$(id -u)}\" -eq 0 ]";

pub(super) fn setup_sandbox(rootfs: &Path, host: &Path, notes: &mut Vec<String>) -> Result<()> {
    let etc = rootfs.join("etc");
    let passwd = read_in_root(rootfs, "etc/passwd")?;
    let group = read_in_root(rootfs, "etc/group")?;
    let days = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 86400;
    let acc = sandbox_accounts(&passwd, &group, days);
    let shadow_gid = acc
        .group
        .lines()
        .find_map(|l| {
            l.strip_prefix("shadow:x:")
                .and_then(|r| r.split(':').next()?.parse::<u32>().ok())
        })
        .unwrap_or(0);
    write_in_root(rootfs, "etc/passwd", acc.passwd.as_bytes(), 0o644, (0, 0))?;
    write_in_root(rootfs, "etc/group", acc.group.as_bytes(), 0o644, (0, 0))?;
    write_in_root(
        rootfs,
        "etc/shadow",
        acc.shadow.as_bytes(),
        0o640,
        (0, shadow_gid),
    )?;
    write_in_root(
        rootfs,
        "etc/gshadow",
        acc.gshadow.as_bytes(),
        0o640,
        (0, shadow_gid),
    )?;
    write_in_root(rootfs, "etc/subuid", b"", 0o644, (0, 0))?;
    write_in_root(rootfs, "etc/subgid", b"", 0o644, (0, 0))?;
    for backup in [
        "passwd-", "group-", "shadow-", "gshadow-", "subuid-", "subgid-",
    ] {
        remove_in_root(rootfs, &format!("etc/{backup}"))?;
    }

    // /root and /home/user (with /etc/skel), natural ownership.
    mkdir_mode(&rootfs.join("root"), 0o700, 0, 0)?;
    for (dot, base) in [(".bashrc", "dot.bashrc"), (".profile", "dot.profile")] {
        let src = rootfs.join("usr/share/base-files").join(base);
        if let Ok(md) = fs::symlink_metadata(&src)
            && md.is_file()
            && fs::symlink_metadata(rootfs.join("root").join(dot)).is_err()
        {
            copy_file(&src, &rootfs.join("root").join(dot), &md, Some((0, 0)))?;
        }
    }
    mkdir_mode(&rootfs.join("home"), 0o755, 0, 0)?;
    let home = rootfs.join(SANDBOX_HOME.trim_start_matches('/'));
    if fs::symlink_metadata(&home).is_ok() {
        remove_tree(&home)?;
    }
    let skel = etc.join("skel");
    if fs::symlink_metadata(&skel).is_ok_and(|m| m.is_dir()) {
        copy_tree(
            &skel,
            &home,
            &TreeOpts {
                owner: Some((SANDBOX_UID, SANDBOX_GID)),
                ..TreeOpts::default()
            },
        )?;
    }
    mkdir_mode(&home, 0o755, SANDBOX_UID, SANDBOX_GID)?;

    // Passwordless sudo when sudo is installed.
    let has_sudo = ["usr/bin/sudo", "bin/sudo"]
        .iter()
        .any(|p| fs::symlink_metadata(rootfs.join(p)).is_ok());
    if has_sudo {
        if fs::symlink_metadata(etc.join("sudoers.d")).is_err() {
            mkdir_mode(&etc.join("sudoers.d"), 0o755, 0, 0)?;
        }
        write_in_root(
            rootfs,
            "etc/sudoers.d/user",
            format!("{SANDBOX_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n").as_bytes(),
            0o440,
            (0, 0),
        )?;
    }

    // Every command the tools run is a login shell (`bash -l -c`, as E2B's SDKs do), and
    // Debian's /etc/profile forks `id -u` for each one: about a millisecond per command.
    // bash knows its EUID already; other shells still ask `id`.
    if let Ok(profile) = read_in_root(rootfs, "etc/profile")
        && profile.contains(PROFILE_ID_FORK)
    {
        let fast = profile.replace(PROFILE_ID_FORK, PROFILE_ID_BASH);
        write_in_root(rootfs, "etc/profile", fast.as_bytes(), 0o644, (0, 0))?;
    }

    write_in_root(
        rootfs,
        "etc/hostname",
        format!("{SANDBOX_HOSTNAME}\n").as_bytes(),
        0o644,
        (0, 0),
    )?;
    write_in_root(
        rootfs,
        "etc/hosts",
        hosts_text("sandbox").as_bytes(),
        0o644,
        (0, 0),
    )?;
    let host_resolv = fs::read_to_string(host.join("etc/resolv.conf")).unwrap_or_default();
    let fallbacks: Vec<String> = [
        "run/systemd/resolve/resolv.conf",
        "run/NetworkManager/no-stub-resolv.conf",
    ]
    .iter()
    .filter_map(|p| fs::read_to_string(host.join(p)).ok())
    .collect();
    let (resolv, note) = sandbox_resolv_conf(&host_resolv, &fallbacks);
    write_in_root(rootfs, "etc/resolv.conf", resolv.as_bytes(), 0o644, (0, 0))?;
    notes.extend(note);
    write_in_root(rootfs, "etc/machine-id", b"", 0o444, (0, 0))?;
    // E2B's base template runs `python`: where only python3 exists, `python` is python3, as
    // Debian's python-is-python3 makes it.
    let python = rootfs.join("usr/bin/python");
    if fs::symlink_metadata(&python).is_err() && rootfs.join("usr/bin/python3").exists() {
        std::os::unix::fs::symlink("python3", &python)
            .ctx(|| format!("linking {}", python.display()))?;
    }
    // Accounts live in files only: a host's "systemd" NSS source would make every user lookup
    // in the sandbox load libnss_systemd and probe userdb directories that do not exist there.
    write_in_root(
        rootfs,
        "etc/nsswitch.conf",
        NSSWITCH.as_bytes(),
        0o644,
        (0, 0),
    )?;
    Ok(())
}

pub(super) const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\ngshadow: files\n\
hosts: files dns\nnetworks: files\nprotocols: files\nservices: files\nethers: files\nrpc: files\n\
netgroup: files\n";
