//! Templates: immutable root filesystems that sandboxes overlay (ARCHITECTURE decision 4).
//!
//! A template lives in `<state_dir>/templates/<name>/`:
//!
//! ```text
//! <name>/template.json   TemplateInfo (+ build duration and notes)
//! <name>/rootfs/         its one read-only layer (TemplateInfo::layers keeps room for stacks)
//! ```
//!
//! Templates are built in `<root>/.building-<name>-<pid>-<rand>/` and renamed into place
//! atomically (`renameat2`, NOREPLACE or EXCHANGE when replacing), so a template directory is
//! either complete or absent. Layer files keep their natural ownership (root files uid 0, the
//! sandbox user uid 1000): sandboxes see them through idmapped mounts; nothing here chowns to
//! shifted ids.
//!
//! Two builders:
//! - [`TemplateStore::ensure_default`] / [`TemplateStore::build_host`]: from the host's own system
//!   directories, no download: a hard-link farm of `/usr` (copy/reflink when the state dir is on
//!   another filesystem), a scrubbed copy of `/etc`, dpkg/apt state, empty mount points, and the
//!   sandbox user. Nothing from `/root`, `/home`, `/work`, `/var/lib/coppice` or other host data.
//! - [`TemplateStore::build_debootstrap`]: an independent Debian root by `debootstrap
//!   --variant=minbase`, then the same sandbox-user setup.

use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::model::TemplateInfo;

/// Name of the template every fresh host has.
pub const DEFAULT_TEMPLATE: &str = "default";
/// Alias of the default template when it carries ipykernel (see [`TemplateStore::get`]).
pub const PYTHON_TEMPLATE: &str = "python";
/// The sandbox user.
pub const SANDBOX_USER: &str = "user";
pub const SANDBOX_UID: u32 = 1000;
pub const SANDBOX_GID: u32 = 1000;
pub const SANDBOX_HOME: &str = "/home/user";
pub const SANDBOX_HOSTNAME: &str = "sandbox";
/// Mirror and suite used when the host gives no better answer.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
pub const DEFAULT_SUITE: &str = "bookworm";

const ROOTFS: &str = "rootfs";
const INFO_FILE: &str = "template.json";

/// Options of a template build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// Replace a template of the same name (atomically: `renameat2(RENAME_EXCHANGE)`) instead of
    /// failing with AlreadyExists. The old tree is deleted at once and the new one takes the
    /// same layer path: callers must not replace (or remove) a template that running sandboxes
    /// or snapshots still stack on.
    pub replace: bool,
    /// With `replace`: move the replaced template aside (`.retired-<name>-*`, removed by
    /// [`TemplateStore::remove_retired`]) instead of deleting it, so sandboxes still running on
    /// its layer keep working.
    pub keep_replaced: bool,
    /// debootstrap mirror; default: the host's first Debian archive URI, else [`DEFAULT_MIRROR`].
    pub mirror: Option<String>,
    /// debootstrap suite; default [`DEFAULT_SUITE`].
    pub suite: Option<String>,
}

/// What `template.json` holds: the public info plus build facts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TemplateRecord {
    #[serde(flatten)]
    info: TemplateInfo,
    #[serde(default)]
    build_seconds: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
    /// For templates built from the host: [`host_fingerprint`] at build time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host_fingerprint: Option<String>,
}

/// The templates under `<state_dir>/templates`.
#[derive(Debug, Clone)]
pub struct TemplateStore {
    root: PathBuf,
}

impl TemplateStore {
    /// Opens (creating if needed, mode 0711) `<state_dir>/templates`.
    pub fn new(state_dir: impl AsRef<Path>) -> Result<Self> {
        let root = state_dir.as_ref().join("templates");
        if !root.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(&root)
                .ctx(|| format!("creating {}", root.display()))?;
        }
        Ok(TemplateStore { root })
    }

    /// `<state_dir>/templates`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<name>` (whether or not it exists).
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn exists(&self, name: &str) -> bool {
        validate_name(name).is_ok() && self.dir(name).join(INFO_FILE).is_file()
    }

    /// Every complete template, sorted by name. Unreadable entries are skipped with a warning.
    pub fn list(&self) -> Result<Vec<TemplateInfo>> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(format!("listing {}", self.root.display()))(e)),
        };
        for entry in rd {
            let entry = entry.ctx(|| format!("listing {}", self.root.display()))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if validate_name(&name).is_err() {
                continue; // .building-*, .removing-*, strays
            }
            match self.get(&name) {
                Ok(info) => out.push(info),
                Err(Error::TemplateNotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(template = %name, error = %e, "skipping unreadable template")
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// A template by name. `python` names the default template when no template of that name
    /// exists and the default one carries the Python Jupyter kernel (ipykernel, installed on
    /// the host by scripts/setup.sh), so E2B-style "python" requests get a kernel.
    pub fn get(&self, name: &str) -> Result<TemplateInfo> {
        match self.record(name) {
            Err(Error::TemplateNotFound(_)) if name == PYTHON_TEMPLATE => {
                let info = self.get(DEFAULT_TEMPLATE)?;
                let has_kernel = info.layers.iter().any(|l| {
                    l.join("usr/share/jupyter/kernels/python3/kernel.json")
                        .is_file()
                });
                if has_kernel {
                    Ok(info)
                } else {
                    Err(Error::TemplateNotFound(name.to_owned()))
                }
            }
            other => Ok(other?.info),
        }
    }

    fn record(&self, name: &str) -> Result<TemplateRecord> {
        validate_name(name)?;
        let path = self.dir(name).join(INFO_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::TemplateNotFound(name.to_owned()));
            }
            Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
        };
        let mut rec: TemplateRecord = serde_json::from_slice(&bytes)
            .map_err(|e| Error::internal(format!("corrupt {}: {e}", path.display())))?;
        rec.info.name = name.to_owned();
        Ok(rec)
    }

    /// Removes a template (renamed aside atomically first, then deleted). The caller makes sure
    /// no sandbox still uses its layers.
    pub fn remove(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        let dir = self.dir(name);
        if fs::symlink_metadata(&dir).is_err() {
            return Err(Error::TemplateNotFound(name.to_owned()));
        }
        let aside = self.root.join(format!(
            ".removing-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::rename(&dir, &aside).ctx(|| format!("moving {} aside", dir.display()))?;
        remove_tree(&aside)
    }

    /// Deletes what interrupted builds and removals left (`.building-*`, `.removing-*` of
    /// processes that are gone). Call at daemon start. Returns how many were removed.
    pub fn cleanup_partial(&self) -> Result<usize> {
        let mut n = 0;
        let Ok(rd) = fs::read_dir(&self.root) else {
            return Ok(0);
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with(".building-") || name.starts_with(".removing-")) {
                continue;
            }
            // .building-<name>-<pid>-<rand>
            let pid = name.rsplit('-').nth(1).and_then(|p| p.parse::<i32>().ok());
            let alive = match pid {
                Some(pid) if pid == std::process::id() as i32 => true,
                Some(pid) if pid > 0 => {
                    // SAFETY: kill with signal 0 only checks for existence.
                    let exists = unsafe { libc::kill(pid, 0) } == 0;
                    exists || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
                }
                _ => false,
            };
            if !alive {
                remove_tree(&entry.path())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The template named "default", built from the host's system directories if absent.
    /// Idempotent and safe to race: a concurrent builder's result is returned.
    ///
    /// A default template built when the host had another package set (Debian packages, pip
    /// packages in /usr/local, Jupyter kernelspecs; see [`host_fingerprint`]) is rebuilt, so
    /// packages installed later (e.g. code kernels by scripts/setup.sh) reach new sandboxes.
    /// The old tree is moved aside, not deleted: sandboxes running on it keep working.
    pub fn ensure_default(&self) -> Result<TemplateInfo> {
        let current = host_fingerprint();
        match self.record(DEFAULT_TEMPLATE) {
            Ok(rec) if rec.info.source != "host" => return Ok(rec.info),
            Ok(rec) if rec.host_fingerprint.as_deref() == Some(current.as_str()) => {
                return Ok(rec.info);
            }
            Ok(_) => {
                tracing::info!(
                    "the host's packages changed since the default template was built: rebuilding it"
                );
                let opts = BuildOptions {
                    replace: true,
                    keep_replaced: true,
                    ..Default::default()
                };
                return self.build_host(DEFAULT_TEMPLATE, &opts);
            }
            Err(Error::TemplateNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        match self.build_host(DEFAULT_TEMPLATE, &BuildOptions::default()) {
            Err(Error::AlreadyExists(_)) => self.get(DEFAULT_TEMPLATE),
            other => other,
        }
    }

    /// Deletes templates that a rebuild moved aside (`.retired-*`). Call only when no sandbox
    /// can still be running on them. Returns how many were removed.
    pub fn remove_retired(&self) -> Result<usize> {
        let mut n = 0;
        let Ok(rd) = fs::read_dir(&self.root) else {
            return Ok(0);
        };
        for entry in rd.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".retired-") {
                remove_tree(&entry.path())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Builds a template from the host's system directories (see the module docs).
    pub fn build_host(&self, name: &str, opts: &BuildOptions) -> Result<TemplateInfo> {
        validate_name(name)?;
        self.check_free(name, opts)?;
        let started = Instant::now();
        let staging = self.stage(name)?;
        let rootfs = staging.path.join(ROOTFS);
        let mut notes = Vec::new();
        // Taken before the copy: a package installed meanwhile triggers another rebuild.
        let fingerprint = host_fingerprint();
        build_host_rootfs(Path::new("/"), &rootfs, &mut notes)?;
        setup_sandbox(&rootfs, Path::new("/"), &mut notes)?;
        let info = self.publish(
            staging,
            name,
            "host",
            Vec::new(),
            started,
            notes,
            opts,
            Some(fingerprint),
        )?;
        tracing::info!(
            template = name,
            seconds = started.elapsed().as_secs_f64(),
            "built template from the host"
        );
        Ok(info)
    }

    /// Builds an independent Debian root with `debootstrap --variant=minbase`, streaming
    /// debootstrap's output lines to `progress`. A failed build leaves nothing behind.
    pub fn build_debootstrap(
        &self,
        name: &str,
        packages: &[String],
        opts: &BuildOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<TemplateInfo> {
        validate_name(name)?;
        for p in packages {
            validate_package(p)?;
        }
        let mut packages: Vec<String> = packages.to_vec();
        packages.sort();
        packages.dedup();
        let suite = opts
            .suite
            .clone()
            .unwrap_or_else(|| DEFAULT_SUITE.to_owned());
        validate_suite(&suite)?;
        let mirror = match &opts.mirror {
            Some(m) => m.clone(),
            None => host_mirror(Path::new("/")).unwrap_or_else(|| DEFAULT_MIRROR.to_owned()),
        };
        validate_mirror(&mirror)?;
        let debootstrap = find_program("debootstrap").ok_or_else(|| {
            Error::HostUnsupported(
                "debootstrap is not installed (apt-get install debootstrap)".into(),
            )
        })?;
        self.check_free(name, opts)?;

        let started = Instant::now();
        let staging = self.stage(name)?;
        let rootfs = staging.path.join(ROOTFS);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&rootfs)
            .ctx(|| format!("creating {}", rootfs.display()))?;

        let mut args: Vec<String> = vec!["--variant=minbase".into()];
        if !packages.is_empty() {
            args.push(format!("--include={}", packages.join(",")));
        }
        args.extend([
            suite.clone(),
            rootfs.to_string_lossy().into_owned(),
            mirror.clone(),
        ]);
        progress(&format!("debootstrap {}", args.join(" ")));
        let mut cmd = Command::new(&debootstrap);
        cmd.args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C");
        private_mounts(&mut cmd);
        run_streaming(
            cmd,
            "debootstrap",
            Some(&rootfs.join("debootstrap/debootstrap.log")),
            progress,
        )?;

        progress("apt-get clean");
        let mut clean = Command::new(
            find_program("chroot").unwrap_or_else(|| PathBuf::from("/usr/sbin/chroot")),
        );
        clean
            .arg(&rootfs)
            .args(["apt-get", "clean"])
            .env("LC_ALL", "C");
        private_mounts(&mut clean);
        run_streaming(clean, "apt-get clean", None, progress)?;
        empty_dir_except(&rootfs.join("var/lib/apt/lists"), &["lock", "partial"])?;

        progress("setting up the sandbox user");
        let mut notes = vec![format!("debootstrap {suite} from {mirror}")];
        setup_sandbox(&rootfs, Path::new("/"), &mut notes)?;
        let info = self.publish(
            staging,
            name,
            "debootstrap",
            packages,
            started,
            notes,
            opts,
            None,
        )?;
        progress(&format!(
            "template '{name}' ready in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        Ok(info)
    }

    fn check_free(&self, name: &str, opts: &BuildOptions) -> Result<()> {
        if !opts.replace && fs::symlink_metadata(self.dir(name)).is_ok() {
            return Err(Error::AlreadyExists(format!(
                "template '{name}' (pass replace to rebuild it)"
            )));
        }
        Ok(())
    }

    fn stage(&self, name: &str) -> Result<Staging> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.root)
            .ctx(|| format!("creating {}", self.root.display()))?;
        let path = self.root.join(format!(
            ".building-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .ctx(|| format!("creating {}", path.display()))?;
        Ok(Staging { path, keep: false })
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        mut staging: Staging,
        name: &str,
        source: &str,
        packages: Vec<String>,
        started: Instant,
        notes: Vec<String>,
        opts: &BuildOptions,
        host_fingerprint: Option<String>,
    ) -> Result<TemplateInfo> {
        let replace = opts.replace;
        let dir = self.dir(name);
        let rootfs = staging.path.join(ROOTFS);
        let info = TemplateInfo {
            name: name.to_owned(),
            source: source.to_owned(),
            layers: vec![dir.join(ROOTFS)],
            size_bytes: size_bytes(&rootfs),
            created_at: crate::clock::rfc3339_ms(crate::clock::now_ms()),
            packages,
        };
        let rec = TemplateRecord {
            info: info.clone(),
            build_seconds: started.elapsed().as_secs_f64(),
            notes,
            host_fingerprint,
        };
        let json = serde_json::to_vec_pretty(&rec).map_err(Error::internal)?;
        write_new_file(&staging.path.join(INFO_FILE), &json, 0o644, None)?;
        sync_filesystem(&staging.path);
        match rename_noreplace(&staging.path, &dir) {
            Ok(()) => staging.keep = true,
            Err(e)
                if e.raw_os_error() == Some(libc::EEXIST)
                    || e.raw_os_error() == Some(libc::ENOTEMPTY) =>
            {
                if !replace {
                    return Err(Error::AlreadyExists(format!("template '{name}'")));
                }
                // The staging path now holds the old template; the guard deletes it.
                rename_exchange(&staging.path, &dir)
                    .ctx(|| format!("replacing {}", dir.display()))?;
                if opts.keep_replaced {
                    let aside = self.root.join(format!(
                        ".retired-{name}-{}-{:08x}",
                        std::process::id(),
                        rand::random::<u32>()
                    ));
                    match fs::rename(&staging.path, &aside) {
                        Ok(()) => staging.keep = true,
                        Err(e) => tracing::warn!(
                            "could not keep the replaced template '{name}' for running sandboxes: {e}"
                        ),
                    }
                }
            }
            Err(e) => return Err(Error::io(format!("publishing {}", dir.display()))(e)),
        }
        Ok(info)
    }
}

/// A build directory that is deleted unless published.
struct Staging {
    path: PathBuf,
    keep: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.keep
            && let Err(e) = remove_tree(&self.path)
        {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove a template build directory");
        }
    }
}

/// What a host-built template depends on, cheaply: the dpkg database (size and mtime: any
/// apt install or removal changes it), and the names of pip packages installed into
/// /usr/local and of the Jupyter kernelspecs, which dpkg does not know about.
pub fn host_fingerprint() -> String {
    use std::os::unix::fs::MetadataExt;
    let mut parts = Vec::new();
    match fs::metadata("/var/lib/dpkg/status") {
        Ok(m) => parts.push(format!("dpkg={}:{}.{}", m.len(), m.mtime(), m.mtime_nsec())),
        Err(_) => parts.push("dpkg=none".to_owned()),
    }
    let mut dirs: Vec<PathBuf> = vec![
        "/usr/local/share/jupyter/kernels".into(),
        "/usr/share/jupyter/kernels".into(),
    ];
    if let Ok(rd) = fs::read_dir("/usr/local/lib") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("python") {
                dirs.push(e.path().join("dist-packages"));
                dirs.push(e.path().join("site-packages"));
            }
        }
    }
    dirs.sort();
    for dir in dirs {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        parts.push(format!("{}={}", dir.display(), names.join(",")));
    }
    parts.join(";")
}

// ---------------------------------------------------------------------------------------------
// Validation

/// Template names: `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn validate_name(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "template name '{name}': use 1-63 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )))
    }
}

/// Debian package names: `[a-z0-9][a-z0-9+.-]*` (at most 128 characters).
pub fn validate_package(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'+' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "package name '{name}': Debian package names are a-z, 0-9, '+', '.', '-', starting with a letter or digit"
        )))
    }
}

fn validate_suite(suite: &str) -> Result<()> {
    let b = suite.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "suite '{suite}' is not a Debian suite name"
        )))
    }
}

fn validate_mirror(mirror: &str) -> Result<()> {
    let ok = (mirror.starts_with("http://")
        || mirror.starts_with("https://")
        || mirror.starts_with("file:/"))
        && mirror.len() < 1024
        && !mirror
            .bytes()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "mirror '{mirror}' is not an http(s) or file URL"
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Pure text rewrites (unit-tested)

/// The account files of a sandbox root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    pub passwd: String,
    pub group: String,
    pub shadow: String,
    pub gshadow: String,
}

fn is_system_uid(name: &str, id: u32) -> bool {
    id < 1000 || id == 65534 || name == "nobody"
}

/// Rewrites `passwd` and `group` for a sandbox: the system accounts (uid/gid < 1000, and
/// nobody/nogroup) without real human users, plus `user` (1000:1000, /home/user, /bin/bash,
/// member of `sudo` if that group exists). Shadow files are generated afresh with no
/// passwords (`*`: no password login; key-based ssh and sudo NOPASSWD still work).
/// `days` is the shadow "last change" day (days since 1970-01-01).
pub fn sandbox_accounts(passwd: &str, group: &str, days: u64) -> Accounts {
    let mut users: Vec<Vec<&str>> = Vec::new();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 7 || f[0].is_empty() || f[0] == SANDBOX_USER {
            continue;
        }
        let Ok(uid) = f[2].parse::<u32>() else {
            continue;
        };
        if is_system_uid(f[0], uid) && !users.iter().any(|u| u[0] == f[0]) {
            users.push(f);
        }
    }
    let kept: HashSet<&str> = users.iter().map(|u| u[0]).collect();

    let mut out_passwd = String::new();
    for u in &users {
        out_passwd.push_str(&format!("{}:x:{}\n", u[0], u[2..].join(":")));
    }
    out_passwd.push_str(&format!(
        "{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_GID}:Sandbox user,,,:{SANDBOX_HOME}:/bin/bash\n"
    ));

    let mut out_group = String::new();
    let mut out_gshadow = String::new();
    let mut seen = HashSet::new();
    for line in group.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 4 || f[0].is_empty() || f[0] == SANDBOX_USER || !seen.insert(f[0]) {
            continue;
        }
        let Ok(gid) = f[2].parse::<u32>() else {
            continue;
        };
        if !(gid < 1000 || gid == 65534 || f[0] == "nogroup") {
            continue;
        }
        let mut members: Vec<&str> = f[3]
            .split(',')
            .filter(|m| !m.is_empty() && kept.contains(m))
            .collect();
        if f[0] == "sudo" {
            members.push(SANDBOX_USER);
        }
        let members = members.join(",");
        out_group.push_str(&format!("{}:x:{}:{}\n", f[0], gid, members));
        out_gshadow.push_str(&format!("{}:*::{}\n", f[0], members));
    }
    out_group.push_str(&format!("{SANDBOX_USER}:x:{SANDBOX_GID}:\n"));
    out_gshadow.push_str(&format!("{SANDBOX_USER}:*::\n"));

    let mut out_shadow = String::new();
    for name in users.iter().map(|u| u[0]).chain([SANDBOX_USER]) {
        out_shadow.push_str(&format!("{name}:*:{days}:0:99999:7:::\n"));
    }
    Accounts {
        passwd: out_passwd,
        group: out_group,
        shadow: out_shadow,
        gshadow: out_gshadow,
    }
}

/// `/etc/resolv.conf` for a sandbox from the host's. When the host points at a loopback
/// resolver (systemd-resolved, dnsmasq...), which a sandbox in its own network namespace cannot
/// reach, the first non-loopback nameserver of `fallbacks` (e.g. the contents of
/// /run/systemd/resolve/resolv.conf) is used instead. Returns the file and, if it had to
/// change anything, a note saying what.
pub fn sandbox_resolv_conf(host: &str, fallbacks: &[String]) -> (String, Option<String>) {
    fn nameservers(text: &str) -> Vec<std::net::IpAddr> {
        text.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("nameserver")).then(|| w.next()).flatten()
            })
            .filter_map(|a| a.split('%').next().and_then(|a| a.parse().ok()))
            .collect()
    }
    let ns = nameservers(host);
    if !ns.iter().any(|a| a.is_loopback()) && !ns.is_empty() {
        return (host.to_owned(), None);
    }
    let replacement = std::iter::once(host)
        .chain(fallbacks.iter().map(String::as_str))
        .flat_map(nameservers)
        .find(|a| !a.is_loopback() && !a.is_unspecified());
    let mut out = String::from(
        "# Written by coppice: the host's resolv.conf points at a loopback resolver,\n",
    );
    out.push_str("# which is not reachable from a sandbox's network namespace.\n");
    for l in host.lines() {
        let first = l.split_whitespace().next();
        if matches!(first, Some("search" | "domain" | "options")) {
            out.push_str(l);
            out.push('\n');
        }
    }
    let note = match replacement {
        Some(a) => {
            out.push_str(&format!("nameserver {a}\n"));
            format!(
                "resolv.conf: host resolver is loopback; using the host's upstream nameserver {a}"
            )
        }
        None => {
            out.push_str(
                "# No non-loopback nameserver was found on the host: no DNS until one is set.\n",
            );
            "resolv.conf: host resolver is loopback and no upstream nameserver was found; sandbox has no DNS server".to_owned()
        }
    };
    (out, Some(note))
}

/// The first Debian archive URI (`.../debian`, type `deb`) in apt sources, one-line
/// (`sources.list`) or deb822 (`*.sources`) format, in the order given.
pub fn pick_mirror(sources: &[(String, String)]) -> Option<String> {
    fn is_archive(uri: &str) -> bool {
        let uri = uri.trim_end_matches('/');
        (uri.starts_with("http://") || uri.starts_with("https://")) && uri.ends_with("/debian")
    }
    for (file, text) in sources {
        if file.ends_with(".sources") {
            for para in text.split("\n\n") {
                let mut types_deb = false;
                let mut uris = Vec::new();
                let mut enabled = true;
                for line in para.lines() {
                    let Some((k, v)) = line.split_once(':') else {
                        continue;
                    };
                    match k.trim().to_ascii_lowercase().as_str() {
                        "types" => types_deb = v.split_whitespace().any(|t| t == "deb"),
                        "uris" => uris = v.split_whitespace().map(str::to_owned).collect(),
                        "enabled" => enabled = v.trim() != "no",
                        _ => {}
                    }
                }
                if types_deb
                    && enabled
                    && let Some(u) = uris.into_iter().find(|u| is_archive(u))
                {
                    return Some(u.trim_end_matches('/').to_owned());
                }
            }
        } else {
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("");
                let mut w = line.split_whitespace();
                if w.next() != Some("deb") {
                    continue;
                }
                let mut uri = w.next();
                if uri.is_some_and(|u| u.starts_with('[')) {
                    // options: skip words until the one ending in ']'
                    let mut cur = uri;
                    while let Some(c) = cur {
                        if c.ends_with(']') {
                            break;
                        }
                        cur = w.next();
                    }
                    uri = w.next();
                }
                if let Some(u) = uri.filter(|u| is_archive(u)) {
                    return Some(u.trim_end_matches('/').to_owned());
                }
            }
        }
    }
    None
}

fn host_mirror(host_root: &Path) -> Option<String> {
    let mut sources = Vec::new();
    let etc_apt = host_root.join("etc/apt");
    if let Ok(t) = fs::read_to_string(etc_apt.join("sources.list")) {
        sources.push(("sources.list".to_owned(), t));
    }
    if let Ok(rd) = fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let name = f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if (name.ends_with(".list") || name.ends_with(".sources"))
                && let Ok(t) = fs::read_to_string(&f)
            {
                sources.push((name, t));
            }
        }
    }
    pick_mirror(&sources)
}

/// A sandbox's `/etc/hosts`: loopback names and `hostname` on 127.0.1.1, as Debian writes it.
/// Templates carry it with the placeholder name "sandbox"; each sandbox gets its own at start.
pub fn hosts_text(hostname: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Host template

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

fn etc_excluded(rel: &Path) -> bool {
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
fn build_host_rootfs(host: &Path, rootfs: &Path, notes: &mut Vec<String>) -> Result<()> {
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

/// Threads for the /usr hard-link farm: `COPPICE_FARM_THREADS`, else the CPU count (max 4).
fn farm_threads() -> usize {
    if let Some(n) = std::env::var("COPPICE_FARM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return n.clamp(1, 64);
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// The sandbox-user setup shared by every builder: accounts, home, sudoers, hostname, hosts,
/// resolv.conf (from `host`'s), machine-id.
const PROFILE_ID_FORK: &str = "[ \"$(id -u)\" -eq 0 ]";
const PROFILE_ID_BASH: &str = "[ \"${EUID:-$(id -u)}\" -eq 0 ]";

fn setup_sandbox(rootfs: &Path, host: &Path, notes: &mut Vec<String>) -> Result<()> {
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

const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\ngshadow: files\n\
hosts: files dns\nnetworks: files\nprotocols: files\nservices: files\nethers: files\nrpc: files\n\
netgroup: files\n";

// ---------------------------------------------------------------------------------------------
// Writing inside a root filesystem without following its symlinks to the host

/// `rel` under `rootfs`, refusing `..` and symlinked or missing parent directories.
fn in_root(rootfs: &Path, rel: &str) -> Result<PathBuf> {
    let rel = Path::new(rel);
    let mut cur = rootfs.to_path_buf();
    let comps: Vec<Component> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let Component::Normal(c) = c else {
            return Err(Error::internal(format!(
                "bad path in root: {}",
                rel.display()
            )));
        };
        cur.push(c);
        if i + 1 < comps.len() {
            let md = fs::symlink_metadata(&cur).ctx(|| format!("checking {}", cur.display()))?;
            if !md.is_dir() {
                return Err(Error::internal(format!(
                    "{} is not a directory (symlink?)",
                    cur.display()
                )));
            }
        }
    }
    Ok(cur)
}

fn read_in_root(rootfs: &Path, rel: &str) -> Result<String> {
    let path = in_root(rootfs, rel)?;
    let md = fs::symlink_metadata(&path).ctx(|| format!("reading {}", path.display()))?;
    if !md.is_file() {
        return Err(Error::internal(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    fs::read_to_string(&path).ctx(|| format!("reading {}", path.display()))
}

fn remove_in_root(rootfs: &Path, rel: &str) -> Result<()> {
    let path = in_root(rootfs, rel)?;
    match fs::symlink_metadata(&path) {
        Ok(md) if md.is_dir() => remove_tree(&path),
        Ok(_) => fs::remove_file(&path).ctx(|| format!("removing {}", path.display())),
        Err(_) => Ok(()),
    }
}

/// Replaces `rel` (a file or symlink, never followed) with a new regular file.
fn write_in_root(
    rootfs: &Path,
    rel: &str,
    data: &[u8],
    mode: u32,
    owner: (u32, u32),
) -> Result<()> {
    let path = in_root(rootfs, rel)?;
    if let Ok(md) = fs::symlink_metadata(&path) {
        if md.is_dir() {
            return Err(Error::internal(format!(
                "{} is a directory",
                path.display()
            )));
        }
        fs::remove_file(&path).ctx(|| format!("replacing {}", path.display()))?;
    }
    write_new_file(&path, data, mode, Some(owner))
}

fn write_new_file(path: &Path, data: &[u8], mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ctx(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .ctx(|| format!("writing {}", path.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
            .ctx(|| format!("chown {}", path.display()))?;
    }
    f.set_permissions(fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {}", path.display()))?;
    Ok(())
}

fn mkdir_mode(path: &Path, mode: u32, uid: u32, gid: u32) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(Error::internal(format!(
                "{} exists and is not a directory",
                path.display()
            )));
        }
        Err(_) => fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .ctx(|| format!("creating {}", path.display()))?,
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .ctx(|| format!("chown {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {}", path.display()))
}

/// Creates `path` with the mode and ownership of `like` on the host, or `default_mode` root-owned.
fn mkdir_like(path: &Path, like: &Path, default_mode: u32) -> Result<()> {
    match fs::symlink_metadata(like) {
        Ok(md) if md.is_dir() => mkdir_mode(path, md.mode() & 0o7777, md.uid(), md.gid()),
        _ => mkdir_mode(path, default_mode, 0, 0),
    }
}

fn dev_of(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path)
        .ctx(|| format!("stat {}", path.display()))?
        .dev())
}

// ---------------------------------------------------------------------------------------------
// Tree copy: hard-link farm or copy (reflink first), natural ownership, modes, times, xattrs

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum FileMode {
    /// Regular files are hard links to the source (falls back to a copy per file on EXDEV etc.).
    HardLink,
    /// Regular files are copied (FICLONE reflink when the filesystem can), hard links within
    /// the tree preserved.
    #[default]
    Copy,
}

type SkipFn<'a> = &'a (dyn Fn(&Path) -> bool + Sync);

#[derive(Default)]
struct TreeOpts<'a> {
    mode: FileMode,
    /// Gets the path relative to the source root; true = leave this entry (and below) out.
    skip: Option<SkipFn<'a>>,
    /// Owner of everything created, instead of the source's.
    owner: Option<(u32, u32)>,
    /// Worker threads (1 = sequential).
    threads: usize,
}

#[derive(Debug, Default, Clone, Copy)]
struct TreeStats {
    dirs: u64,
    files: u64,
    linked: u64,
    symlinks: u64,
    skipped: u64,
}

struct Shared<'a> {
    src: &'a Path,
    dst: &'a Path,
    opts: &'a TreeOpts<'a>,
    dir_times: Mutex<Vec<(PathBuf, fs::Metadata)>>,
    inodes: Mutex<HashMap<(u64, u64), PathBuf>>,
    stats: Mutex<TreeStats>,
}

/// Visits the directory tree below `start` with `threads` workers sharing one queue of
/// directories (relative paths; `start` is visited first as ""). `visit` handles one
/// directory and pushes the subdirectories to descend into. Stops at the first error.
fn par_dirs<F>(threads: usize, visit: F) -> Result<()>
where
    F: Fn(&Path, &mut Vec<PathBuf>) -> Result<()> + Sync,
{
    let queue: Mutex<(Vec<PathBuf>, usize)> = Mutex::new((vec![PathBuf::new()], 0));
    let cv = Condvar::new();
    let error: Mutex<Option<Error>> = Mutex::new(None);
    let work = || {
        loop {
            let rel = {
                let mut q = queue.lock();
                loop {
                    if error.lock().is_some() {
                        q.0.clear();
                    }
                    if let Some(rel) = q.0.pop() {
                        q.1 += 1;
                        break rel;
                    }
                    if q.1 == 0 {
                        cv.notify_all();
                        return;
                    }
                    cv.wait(&mut q);
                }
            };
            let mut subdirs = Vec::new();
            let res = visit(&rel, &mut subdirs);
            let mut q = queue.lock();
            q.1 -= 1;
            match res {
                Ok(()) => q.0.extend(subdirs),
                Err(e) => {
                    error.lock().get_or_insert(e);
                }
            }
            cv.notify_all();
        }
    };
    if threads <= 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(work);
            }
        });
    }
    match error.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Copies the tree `src` to `dst` (which must not exist) per `opts`.
fn copy_tree(src: &Path, dst: &Path, opts: &TreeOpts) -> Result<TreeStats> {
    let md = fs::symlink_metadata(src).ctx(|| format!("stat {}", src.display()))?;
    if !md.is_dir() {
        return Err(Error::internal(format!(
            "{} is not a directory",
            src.display()
        )));
    }
    make_dir(dst, &md, opts.owner)?;
    let shared = Shared {
        src,
        dst,
        opts,
        dir_times: Mutex::new(vec![(dst.to_path_buf(), md)]),
        inodes: Mutex::new(HashMap::new()),
        stats: Mutex::new(TreeStats {
            dirs: 1,
            ..TreeStats::default()
        }),
    };
    par_dirs(opts.threads, |rel, subdirs| {
        copy_dir_entries(&shared, rel, subdirs)
    })?;
    // Directory times last: creating entries changed them.
    for (path, md) in shared.dir_times.lock().iter().rev() {
        set_times(path, md);
    }
    Ok(*shared.stats.lock())
}

fn copy_dir_entries(sh: &Shared, rel: &Path, subdirs: &mut Vec<PathBuf>) -> Result<()> {
    let src_dir = sh.src.join(rel);
    let dst_dir = sh.dst.join(rel);
    let mut st = TreeStats::default();
    let mut times = Vec::new();
    let rd = fs::read_dir(&src_dir).ctx(|| format!("reading {}", src_dir.display()))?;
    for entry in rd {
        let entry = entry.ctx(|| format!("reading {}", src_dir.display()))?;
        let name = entry.file_name();
        let child_rel = rel.join(&name);
        if sh.opts.skip.is_some_and(|skip| skip(&child_rel)) {
            st.skipped += 1;
            continue;
        }
        let src = src_dir.join(&name);
        let dst = dst_dir.join(&name);
        let ft = entry
            .file_type()
            .ctx(|| format!("stat {}", src.display()))?;
        // Symlinks are hard-linked too (as `cp -al` does): linkat is ~15x cheaper than
        // creating a symlink inode, and a read-only layer may share it.
        if (ft.is_file() || ft.is_symlink())
            && sh.opts.mode == FileMode::HardLink
            && sh.opts.owner.is_none()
        {
            match fs::hard_link(&src, &dst) {
                Ok(()) => {
                    if ft.is_file() {
                        st.files += 1;
                    } else {
                        st.symlinks += 1;
                    }
                    st.linked += 1;
                    continue;
                }
                Err(e) => {
                    tracing::debug!(path = %src.display(), error = %e, "hard link failed, copying")
                }
            }
        }
        let md = fs::symlink_metadata(&src).ctx(|| format!("stat {}", src.display()))?;
        if md.is_dir() {
            make_dir(&dst, &md, sh.opts.owner)?;
            times.push((dst, md));
            subdirs.push(child_rel);
            st.dirs += 1;
        } else if md.file_type().is_symlink() {
            let target = fs::read_link(&src).ctx(|| format!("reading link {}", src.display()))?;
            std::os::unix::fs::symlink(&target, &dst)
                .ctx(|| format!("creating link {}", dst.display()))?;
            let (uid, gid) = sh.opts.owner.unwrap_or((md.uid(), md.gid()));
            std::os::unix::fs::lchown(&dst, Some(uid), Some(gid))
                .ctx(|| format!("chown {}", dst.display()))?;
            set_times(&dst, &md);
            st.symlinks += 1;
        } else if md.is_file() {
            if md.nlink() > 1 {
                // Keep hard links inside the tree as hard links.
                let key = (md.dev(), md.ino());
                let first = sh.inodes.lock().get(&key).cloned();
                if let Some(first) = first
                    && fs::hard_link(&first, &dst).is_ok()
                {
                    st.files += 1;
                    continue;
                }
                copy_file(&src, &dst, &md, sh.opts.owner)?;
                sh.inodes.lock().entry(key).or_insert(dst);
            } else {
                copy_file(&src, &dst, &md, sh.opts.owner)?;
            }
            st.files += 1;
        } else {
            // sockets, fifos, device nodes: never part of a template
            st.skipped += 1;
        }
    }
    if !times.is_empty() {
        sh.dir_times.lock().extend(times);
    }
    let mut total = sh.stats.lock();
    total.dirs += st.dirs;
    total.files += st.files;
    total.linked += st.linked;
    total.symlinks += st.symlinks;
    total.skipped += st.skipped;
    Ok(())
}

/// Creates a new directory (which must not exist) with `md`'s mode and owner (or `owner`).
fn make_dir(dst: &Path, md: &fs::Metadata, owner: Option<(u32, u32)>) -> Result<()> {
    let (uid, gid) = owner.unwrap_or((md.uid(), md.gid()));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dst)
        .ctx(|| format!("creating {}", dst.display()))?;
    std::os::unix::fs::lchown(dst, Some(uid), Some(gid))
        .ctx(|| format!("chown {}", dst.display()))?;
    fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
        .ctx(|| format!("chmod {}", dst.display()))
}

/// Copies a regular file: reflink (FICLONE) when possible, else a kernel copy; then owner,
/// mode (after chown, which clears set-id bits), times and extended attributes.
fn copy_file(src: &Path, dst: &Path, md: &fs::Metadata, owner: Option<(u32, u32)>) -> Result<()> {
    let mut s = File::open(src).ctx(|| format!("opening {}", src.display()))?;
    let mut d = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dst)
        .ctx(|| format!("creating {}", dst.display()))?;
    if !reflink(&s, &d) {
        std::io::copy(&mut s, &mut d)
            .ctx(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    let (uid, gid) = owner.unwrap_or((md.uid(), md.gid()));
    std::os::unix::fs::fchown(&d, Some(uid), Some(gid))
        .ctx(|| format!("chown {}", dst.display()))?;
    copy_xattrs(&s, &d, dst);
    d.set_permissions(fs::Permissions::from_mode(md.mode() & 0o7777))
        .ctx(|| format!("chmod {}", dst.display()))?;
    let times = fs::FileTimes::new()
        .set_accessed(md.accessed().unwrap_or(SystemTime::UNIX_EPOCH))
        .set_modified(md.modified().unwrap_or(SystemTime::UNIX_EPOCH));
    d.set_times(times)
        .ctx(|| format!("setting times of {}", dst.display()))?;
    Ok(())
}

#[cfg(target_os = "linux")]
fn reflink(src: &File, dst: &File) -> bool {
    use std::os::fd::AsRawFd;
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: both are open file descriptors; FICLONE takes the source fd as its argument.
    unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn reflink(_src: &File, _dst: &File) -> bool {
    false
}

/// Copies the extended attributes of a regular file (file capabilities, ACLs); best effort.
/// (Hard links share them; directories' xattrs are not carried.)
#[cfg(target_os = "linux")]
fn copy_xattrs(s: &File, d: &File, dst: &Path) {
    use std::os::fd::AsRawFd;
    let (sfd, dfd) = (s.as_raw_fd(), d.as_raw_fd());
    let mut names = vec![0u8; 1024];
    // SAFETY: buffers are valid for the lengths passed.
    let n = unsafe { libc::flistxattr(sfd, names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return;
    }
    names.truncate(n as usize);
    let mut value = vec![0u8; 4096];
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        // SAFETY: as above.
        let len =
            unsafe { libc::fgetxattr(sfd, cname.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        if len < 0 {
            continue;
        }
        // SAFETY: as above.
        let rc =
            unsafe { libc::fsetxattr(dfd, cname.as_ptr(), value.as_ptr().cast(), len as usize, 0) };
        if rc != 0 {
            tracing::debug!(path = %dst.display(), xattr = %String::from_utf8_lossy(name), "could not copy xattr");
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn copy_xattrs(_s: &File, _d: &File, _dst: &Path) {}

/// Sets access and modification times of `path` (not following symlinks); best effort.
fn set_times(path: &Path, md: &fs::Metadata) {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    let ts = [
        libc::timespec {
            tv_sec: md.atime() as _,
            tv_nsec: md.atime_nsec() as _,
        },
        libc::timespec {
            tv_sec: md.mtime() as _,
            tv_nsec: md.mtime_nsec() as _,
        },
    ];
    // SAFETY: valid C string and a two-element timespec array.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
}

// ---------------------------------------------------------------------------------------------
// Sizes, removal, renames, processes

/// Apparent size of a tree in bytes (`du -sb`): every entry's size, hard-linked inodes once.
pub fn size_bytes(path: impl AsRef<Path>) -> u64 {
    crate::fsutil::tree_size(path, crate::fsutil::Measure::Apparent)
}

/// Deletes a tree, first detaching anything mounted beneath it (a debootstrap that died with
/// /proc mounted inside its target must not make us recurse into the host's /proc). Removes
/// with several threads: a hard-link farm has ~10^5 entries.
fn remove_tree(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(_) => return Ok(()),
        Ok(md) if !md.is_dir() => {
            return fs::remove_file(path).ctx(|| format!("removing {}", path.display()));
        }
        Ok(_) => {}
    }
    unmount_below(path);
    let dirs: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    par_dirs(farm_threads(), |rel, subdirs| {
        let dir = path.join(rel);
        let rd = fs::read_dir(&dir).ctx(|| format!("reading {}", dir.display()))?;
        for e in rd {
            let e = e.ctx(|| format!("reading {}", dir.display()))?;
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                subdirs.push(rel.join(e.file_name()));
            } else {
                let p = e.path();
                fs::remove_file(&p).ctx(|| format!("removing {}", p.display()))?;
            }
        }
        dirs.lock().push(dir);
        Ok(())
    })?;
    // Deepest first, so every directory is empty when its turn comes.
    let mut dirs = dirs.into_inner();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        fs::remove_dir(&d).ctx(|| format!("removing {}", d.display()))?;
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn unmount_below(path: &Path) {
    let Ok(canon) = fs::canonicalize(path) else {
        return;
    };
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(OsStr::from_bytes(&unescape_mountinfo(m))))
        .filter(|m| m.starts_with(&canon))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in mounts {
        if let Ok(c) = CString::new(m.as_os_str().as_bytes()) {
            // SAFETY: valid C string.
            let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            tracing::warn!(mount = %m.display(), rc, "detached a mount left in a template build directory");
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn unmount_below(_path: &Path) {}

fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(target_os = "linux")]
fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    let f = CString::new(from.as_os_str().as_bytes())?;
    let t = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Atomic rename that fails (EEXIST) if `to` exists.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        renameat2(from, to, libc::RENAME_NOREPLACE)
    }
    #[cfg(not(target_os = "linux"))]
    {
        // rename(2) of a directory onto a non-empty directory fails; templates are never empty.
        fs::rename(from, to)
    }
}

/// Atomically swaps two paths.
fn rename_exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        renameat2(a, b, libc::RENAME_EXCHANGE)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let tmp = a.with_extension("old");
        fs::rename(b, &tmp)?;
        fs::rename(a, b)?;
        fs::rename(&tmp, a)
    }
}

/// Flushes the filesystem holding `path`, so a published template survives a crash whole.
fn sync_filesystem(path: &Path) {
    #[cfg(target_os = "linux")]
    if let Ok(f) = File::open(path) {
        use std::os::fd::AsRawFd;
        // SAFETY: valid fd.
        unsafe { libc::syncfs(f.as_raw_fd()) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = path;
}

fn empty_dir_except(dir: &Path, keep: &[&str]) -> Result<()> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if keep.iter().any(|k| e.file_name() == OsStr::new(k)) {
            continue;
        }
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&p)?;
        } else {
            fs::remove_file(&p).ctx(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0))
}

/// Runs the command in a private mount namespace, so mounts it makes (debootstrap mounts /proc
/// and /sys in its target) disappear with it, whatever way it ends.
fn private_mounts(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: only raw syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let root = c"/";
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// Runs `cmd`, passing each line of its stdout and stderr to `progress` as it comes. On failure
/// the error carries the last lines (and the tail of `log`, if given).
fn run_streaming(
    mut cmd: Command,
    what: &str,
    log: Option<&Path>,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().ctx(|| format!("starting {what}"))?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || forward_lines(out, tx)));
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || forward_lines(err, tx)));
    }
    drop(tx);
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for line in rx {
        progress(&line);
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait().ctx(|| format!("waiting for {what}"))?;
    if status.success() {
        return Ok(());
    }
    let mut msg = format!("{what} failed ({status})");
    if !tail.is_empty() {
        msg.push_str(": ");
        msg.push_str(&tail.iter().cloned().collect::<Vec<_>>().join("\n"));
    }
    if let Some(text) = log.and_then(|l| fs::read_to_string(l).ok()) {
        let lines: Vec<&str> = text.lines().collect();
        msg.push_str("\n--- log tail ---\n");
        msg.push_str(&lines[lines.len().saturating_sub(15)..].join("\n"));
    }
    Err(Error::Unavailable(msg))
}

fn forward_lines(r: impl std::io::Read, tx: std::sync::mpsc::Sender<String>) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "default",
            "a",
            "0",
            "py3.11",
            "my_template-2",
            &"a".repeat(63),
        ] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Default",
            ".hidden",
            "-x",
            "_x",
            "a/b",
            "..",
            "a b",
            "é",
            &"a".repeat(64),
            ".building-x",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn packages() {
        for ok in ["python3", "g++", "libc6-dev", "python3.11", "0ad", "r"] {
            assert!(validate_package(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Python3",
            "-x",
            "+x",
            "a b",
            "a,b",
            "a;rm -rf /",
            "pkg=1.0",
            "pkg:amd64",
            "$(x)",
        ] {
            assert!(validate_package(bad).is_err(), "{bad}");
        }
        assert!(validate_mirror("http://deb.debian.org/debian").is_ok());
        assert!(validate_mirror("ftp://x").is_err());
        assert!(validate_mirror("http://x y").is_err());
        assert!(validate_suite("bookworm").is_ok());
        assert!(validate_suite("../x").is_err());
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
_apt:x:42:65534::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
alice:x:1000:1000:Alice,,,:/home/alice:/bin/zsh
bob:x:1001:1001::/home/bob:/bin/bash
user:x:999:999::/x:/bin/sh
systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin
broken line
";
    const GROUP: &str = "root:x:0:
adm:x:4:alice,daemon
sudo:x:27:alice,bob
shadow:x:42:
users:x:100:alice
nogroup:x:65534:
alice:x:1000:
bob:x:1001:
user:x:999:
";

    #[test]
    fn accounts_rewrite() {
        let a = sandbox_accounts(PASSWD, GROUP, 20000);
        assert_eq!(
            a.passwd,
            "root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
_apt:x:42:65534::/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin
user:x:1000:1000:Sandbox user,,,:/home/user:/bin/bash
"
        );
        assert_eq!(
            a.group,
            "root:x:0:
adm:x:4:daemon
sudo:x:27:user
shadow:x:42:
users:x:100:
nogroup:x:65534:
user:x:1000:
"
        );
        assert!(a.shadow.starts_with("root:*:20000:0:99999:7:::\n"));
        assert!(a.shadow.ends_with("user:*:20000:0:99999:7:::\n"));
        assert_eq!(a.shadow.lines().count(), 6);
        assert!(
            !a.shadow.contains("alice")
                && !a.gshadow.contains("alice")
                && !a.gshadow.contains("bob")
        );
        assert!(a.gshadow.contains("sudo:*::user\n") && a.gshadow.ends_with("user:*::\n"));
        // No sudo group → no membership, still a user
        let b = sandbox_accounts("root:x:0:0:root:/root:/bin/bash\n", "root:x:0:\n", 1);
        assert_eq!(b.group, "root:x:0:\nuser:x:1000:\n");
        // idempotent on its own output
        let c = sandbox_accounts(&a.passwd, &a.group, 20000);
        assert_eq!(c, a);
    }

    #[test]
    fn resolv_conf() {
        let host = "nameserver 10.0.0.2\nsearch corp\n";
        assert_eq!(sandbox_resolv_conf(host, &[]), (host.to_owned(), None));
        let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
        let upstream =
            "nameserver 127.0.0.1\nnameserver 192.168.1.1\nnameserver 1.1.1.1\n".to_owned();
        let (text, note) = sandbox_resolv_conf(stub, &[upstream]);
        assert!(
            text.contains("nameserver 192.168.1.1\n")
                && !text.contains("127.0.0.53")
                && !text.contains("1.1.1.1")
        );
        assert!(text.contains("search lan\n") && text.contains("options edns0"));
        assert!(note.unwrap().contains("192.168.1.1"));
        let (text, note) = sandbox_resolv_conf("nameserver ::1\n", &[]);
        assert!(!text.lines().any(|l| l.starts_with("nameserver")));
        assert!(note.unwrap().contains("no upstream"));
    }

    #[test]
    fn mirrors() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://deb.debian.org/debian-security\n";
        let srcs = vec![
            (
                "google.list".to_owned(),
                "deb https://packages.cloud.google.com/apt cloud-sdk main\n".to_owned(),
            ),
            ("debian.sources".to_owned(), deb822.to_owned()),
        ];
        assert_eq!(
            pick_mirror(&srcs).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let one = vec![(
            "sources.list".to_owned(),
            "# deb http://x/debian\ndeb-src http://y/debian bookworm main\ndeb [arch=amd64 signed-by=/k] http://mirror.example/debian/ bookworm main\n"
                .to_owned(),
        )];
        assert_eq!(
            pick_mirror(&one).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(pick_mirror(&[]), None);
    }

    #[test]
    fn etc_excludes() {
        for ex in [
            "shadow",
            "ssh/ssh_host_ed25519_key",
            "ssl/private/snakeoil.key",
            "coppice",
            "machine-id",
            "gshadow-",
        ] {
            assert!(etc_excluded(Path::new(ex)), "{ex}");
        }
        for inc in [
            "passwd",
            "ssl/private",
            "ssh/ssh_config",
            "ssl/certs/ca.pem",
            "coppice.conf",
            "shadows",
        ] {
            assert!(!etc_excluded(Path::new(inc)), "{inc}");
        }
    }

    /// Copy and hard-link modes on a small tree: modes (incl. set-id), owners, symlinks,
    /// hard links inside the tree, skipped entries, directory times.
    #[test]
    fn tree_copy_modes() {
        use std::os::unix::fs::symlink;
        let root = unsafe { libc::geteuid() } == 0;
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("a/file"), b"hello").unwrap();
        fs::set_permissions(src.join("a/file"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(src.join("a/file"), src.join("a/b/link")).unwrap();
        symlink("../file", src.join("a/b/sym")).unwrap();
        fs::write(src.join("secret"), b"x").unwrap();
        fs::set_permissions(src.join("a/b"), fs::Permissions::from_mode(0o1777)).unwrap();
        if root {
            std::os::unix::fs::lchown(src.join("a/b"), Some(1234), Some(4321)).unwrap();
        }
        let old = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        File::open(src.join("a"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let skip = |rel: &Path| rel == Path::new("secret");

        for mode in [FileMode::Copy, FileMode::HardLink] {
            let dst = t.path().join(format!("{mode:?}"));
            let opts = TreeOpts {
                mode,
                skip: Some(&skip),
                threads: 2,
                ..TreeOpts::default()
            };
            let st = copy_tree(&src, &dst, &opts).unwrap();
            assert_eq!(st.skipped, 1);
            assert!(!dst.join("secret").exists());
            assert_eq!(fs::read(dst.join("a/b/sym")).unwrap(), b"hello");
            assert_eq!(
                fs::read_link(dst.join("a/b/sym")).unwrap(),
                Path::new("../file")
            );
            let f = fs::metadata(dst.join("a/file")).unwrap();
            let l = fs::metadata(dst.join("a/b/link")).unwrap();
            assert_eq!(f.mode() & 0o7777, 0o4755);
            assert_eq!(f.ino(), l.ino(), "hard links inside the tree are kept");
            let same_as_src = f.ino() == fs::metadata(src.join("a/file")).unwrap().ino();
            assert_eq!(same_as_src, mode == FileMode::HardLink);
            let b = fs::metadata(dst.join("a/b")).unwrap();
            assert_eq!(b.mode() & 0o7777, 0o1777);
            if root {
                assert_eq!((b.uid(), b.gid()), (1234, 4321));
            }
            assert_eq!(
                fs::metadata(dst.join("a")).unwrap().modified().unwrap(),
                old
            );
            // the skipped one-byte "secret" is the only difference
            assert_eq!(size_bytes(&dst), size_bytes(&src) - 1);
            remove_tree(&dst).unwrap();
            assert!(!dst.exists());
        }
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), b"/a b");
        assert_eq!(unescape_mountinfo("/plain"), b"/plain");
    }
}
