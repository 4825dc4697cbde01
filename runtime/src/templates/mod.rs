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

mod copy;
mod host;
mod rootfs;
mod sys;
#[cfg(test)]
mod tests;
mod userland;
mod validate;

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use self::host::ETC_EXCLUDES;
use self::host::{build_host_rootfs, setup_sandbox};
use self::rootfs::write_new_file;
pub use self::sys::size_bytes;
use self::sys::{
    empty_dir_except, find_program, private_mounts, remove_tree, rename_exchange, rename_noreplace,
    run_streaming, sync_filesystem,
};
use self::userland::host_mirror;
pub use self::userland::{
    Accounts, SANDBOX_GID, SANDBOX_HOME, SANDBOX_HOSTNAME, SANDBOX_UID, SANDBOX_USER, hosts_text,
    pick_mirror, sandbox_accounts, sandbox_resolv_conf,
};
use self::validate::{validate_mirror, validate_suite};
pub use self::validate::{validate_name, validate_package};
use crate::error::{Error, IoContext, Result};
use crate::model::TemplateInfo;

/// Name of the template every fresh host has.
pub const DEFAULT_TEMPLATE: &str = "default";
/// Alias of the default template when it carries ipykernel (see [`TemplateStore::get`]).
pub const PYTHON_TEMPLATE: &str = "python";
/// Suite used when the build names none.
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
    /// debootstrap mirror; default: the host's first Debian archive URI (its apt sources).
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

    /// Whether `name` is a valid name of a complete template here.
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
            None => host_mirror(Path::new("/")).ok_or_else(|| {
                Error::InvalidArgument(
                    "no Debian mirror: the host's apt sources name none; give one with --mirror"
                        .into(),
                )
            })?,
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
