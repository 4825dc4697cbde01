//! Code contexts: each is one kernel (language, cwd) whose state persists across executions.
//! Executions in a context run one at a time; contexts run in parallel.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::error::Error;
use crate::kernel::{Kernel, KernelSpec, Launcher};
use crate::wire::{ContextInfo, ExecuteRequest, OutputLine, errors};

/// Where kernelspecs are looked for, highest precedence first (Jupyter's data path without
/// asking `jupyter --paths`, which may not be installed). `JUPYTER_PATH` entries come first.
pub fn kernelspec_dirs(home: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var("JUPYTER_PATH")
        .ok()
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("kernels"))
                .collect()
        })
        .unwrap_or_default();
    dirs.push(home.join(".local/share/jupyter/kernels"));
    dirs.push("/usr/local/share/jupyter/kernels".into());
    dirs.push("/usr/share/jupyter/kernels".into());
    dirs
}

/// Every kernelspec installed, by name (earlier directories win).
pub fn find_kernelspecs(dirs: &[PathBuf]) -> BTreeMap<String, KernelSpec> {
    let mut out = BTreeMap::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if out.contains_key(&name) {
                continue;
            }
            let path = entry.path();
            let Ok(bytes) = std::fs::read(path.join("kernel.json")) else {
                continue;
            };
            match serde_json::from_slice(&bytes) {
                Ok(spec) => {
                    out.insert(
                        name.clone(),
                        KernelSpec {
                            name,
                            dir: path,
                            spec,
                        },
                    );
                }
                Err(e) => tracing::warn!(kernelspec = %path.display(), "unreadable: {e}"),
            }
        }
    }
    out
}

/// E2B's language aliases, lower-cased.
pub fn normalize_language(language: &str) -> String {
    match language.trim().to_ascii_lowercase().as_str() {
        "" | "python3" | "py" => "python".into(),
        "js" => "javascript".into(),
        "ts" => "typescript".into(),
        "sh" => "bash".into(),
        other => other.to_string(),
    }
}

/// The kernelspec for a language: one whose `language` matches (python3 preferred for
/// python), else one named like the language.
pub fn spec_for<'a>(
    specs: &'a BTreeMap<String, KernelSpec>,
    language: &str,
) -> Option<&'a KernelSpec> {
    if language == "python"
        && let Some(s) = specs.get("python3")
    {
        return Some(s);
    }
    let by_language = |language: &str| {
        specs
            .values()
            .find(|s| s.spec.language.eq_ignore_ascii_case(language))
    };
    by_language(language)
        .or_else(|| specs.get(language))
        // Deno's one kernel runs both (its kernelspec says typescript).
        .or_else(|| match language {
            "javascript" => by_language("typescript"),
            "typescript" => by_language("javascript"),
            _ => None,
        })
}

enum Slot {
    /// Not started yet (default contexts start on first use).
    Empty,
    Running(Box<Kernel>),
    /// The kernel died; executions fail until the context is restarted.
    Dead(String),
}

struct Context {
    info: ContextInfo,
    spec: KernelSpec,
    /// Default contexts (one per language) are created implicitly and not listed.
    is_default: bool,
    slot: tokio::sync::Mutex<Slot>,
    /// The kernel's pid (0: none), readable while an execution holds `slot`.
    pid: AtomicU32,
}

/// The contexts of one sandbox.
pub struct Contexts {
    launcher: Arc<dyn Launcher>,
    /// Kernel connection files and logs (root-owned, not under the user's home).
    run_dir: PathBuf,
    default_cwd: PathBuf,
    home: PathBuf,
    map: Mutex<HashMap<String, Arc<Context>>>,
}

/// The id of the default context of a language (`default` for Python, as E2B's server).
fn default_id(language: &str) -> String {
    if language == "python" {
        "default".into()
    } else {
        format!("default-{language}")
    }
}

impl Contexts {
    /// An empty set: kernels start through `launcher`, keep their connection files and logs in
    /// `run_dir`, and run in `home` unless a context names another cwd.
    pub fn new(launcher: Arc<dyn Launcher>, run_dir: PathBuf, home: PathBuf) -> Self {
        Self {
            launcher,
            run_dir,
            default_cwd: home.clone(),
            home,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn specs(&self) -> BTreeMap<String, KernelSpec> {
        find_kernelspecs(&kernelspec_dirs(&self.home))
    }

    fn resolve_spec(&self, language: &str) -> Result<KernelSpec, Error> {
        let specs = self.specs();
        spec_for(&specs, language).cloned().ok_or_else(|| {
            let mut langs: Vec<String> = specs
                .values()
                .map(|s| s.spec.language.to_ascii_lowercase())
                .collect();
            langs.sort();
            langs.dedup();
            Error::UnknownLanguage(if langs.is_empty() {
                format!(
                    "no kernel for language '{language}': this sandbox's template has no Jupyter kernels installed"
                )
            } else {
                format!(
                    "no kernel for language '{language}' in this sandbox; installed: {}",
                    langs.join(", ")
                )
            })
        })
    }

    /// Creates a context and starts its kernel.
    pub async fn create(
        &self,
        language: Option<&str>,
        cwd: Option<&str>,
    ) -> Result<ContextInfo, Error> {
        let language = normalize_language(language.unwrap_or("python"));
        let spec = self.resolve_spec(&language)?;
        let cwd = match cwd.filter(|c| !c.is_empty()) {
            None => self.default_cwd.clone(),
            Some(c) if Path::new(c).is_absolute() => PathBuf::from(c),
            Some(c) => self.home.join(c),
        };
        if !cwd.is_dir() {
            return Err(Error::BadRequest(format!(
                "cwd '{}' is not a directory in the sandbox",
                cwd.display()
            )));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let ctx = Arc::new(Context {
            info: ContextInfo {
                id: id.clone(),
                language,
                cwd: cwd.display().to_string(),
            },
            spec,
            is_default: false,
            slot: tokio::sync::Mutex::new(Slot::Empty),
            pid: AtomicU32::new(0),
        });
        {
            let mut slot = ctx.slot.lock().await;
            let k = self.start(&ctx).await?;
            self.record_pid(&ctx, k.pid);
            *slot = Slot::Running(Box::new(k));
        }
        self.map.lock().insert(id, ctx.clone());
        Ok(ctx.info.clone())
    }

    async fn start(&self, ctx: &Context) -> Result<Kernel, Error> {
        std::fs::create_dir_all(&self.run_dir)
            .map_err(|e| Error::Start(format!("creating {}: {e}", self.run_dir.display())))?;
        Kernel::start(
            self.launcher.as_ref(),
            &ctx.spec,
            Path::new(&ctx.info.cwd),
            &self.run_dir,
            &ctx.info.id,
        )
        .await
    }

    /// Every context, as E2B's interpreter lists them: the default Python one (registered,
    /// started on its first execution, when the template has a Python kernel), the other
    /// default ones used so far, and those made with `create`.
    pub fn list_all(&self) -> Vec<ContextInfo> {
        // E2B's default contexts; JavaScript only where a kernel for it is installed.
        let _ = self.context_for(None, Some("python"));
        let _ = self.context_for(None, Some("javascript"));
        self.list(true)
    }

    /// The contexts created with `create` (`all`: also the default ones registered so far).
    pub fn list(&self, all: bool) -> Vec<ContextInfo> {
        let mut out: Vec<ContextInfo> = self
            .map
            .lock()
            .values()
            .filter(|c| all || !c.is_default)
            .map(|c| c.info.clone())
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn get(&self, id: &str) -> Result<Arc<Context>, Error> {
        self.map
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// Kills the context's kernel (waiting for a running execution to be interrupted) and
    /// starts a fresh one: all state is lost.
    pub async fn restart(&self, id: &str) -> Result<ContextInfo, Error> {
        let ctx = self.get(id)?;
        let mut slot = self.lock_interrupting(&ctx).await;
        if let Slot::Running(k) = &*slot {
            k.kill(self.launcher.as_ref());
        }
        *slot = Slot::Empty;
        let k = self.start(&ctx).await?;
        self.record_pid(&ctx, k.pid);
        *slot = Slot::Running(Box::new(k));
        Ok(ctx.info.clone())
    }

    /// Connects afresh to every running kernel (after a resume from a memory snapshot, whose
    /// TCP connections come back closed); a kernel that does not answer is marked dead.
    pub async fn reconnect_all(&self) {
        let all: Vec<Arc<Context>> = self.map.lock().values().cloned().collect();
        for ctx in all {
            // One executing when the snapshot was taken waits for a reply that never comes:
            // a restart (or its interrupt) frees it; the others are reconnected.
            let Ok(mut slot) = ctx.slot.try_lock() else {
                continue;
            };
            if let Slot::Running(k) = &mut *slot
                && let Err(e) = k.reconnect().await
            {
                k.kill(self.launcher.as_ref());
                *slot = Slot::Dead(format!("the kernel did not answer after the resume: {e}"));
            }
        }
    }

    /// Removes a context and kills its kernel.
    pub async fn remove(&self, id: &str) -> Result<(), Error> {
        let ctx = self
            .map
            .lock()
            .remove(id)
            .ok_or_else(|| Error::NotFound(id.into()))?;
        let slot = self.lock_interrupting(&ctx).await;
        if let Slot::Running(k) = &*slot {
            k.kill(self.launcher.as_ref());
        }
        Ok(())
    }

    /// Takes the context's lock; if an execution holds it, kills the kernel so it lets go.
    async fn lock_interrupting<'a>(&self, ctx: &'a Context) -> tokio::sync::MutexGuard<'a, Slot> {
        if let Ok(g) = ctx.slot.try_lock() {
            return g;
        }
        // The running execution sees the kernel die and releases the lock.
        if let Some(pid) = self.pid_of(ctx) {
            self.launcher.signal(pid, libc::SIGKILL);
        }
        ctx.slot.lock().await
    }

    fn pid_of(&self, ctx: &Context) -> Option<u32> {
        Some(ctx.pid.load(Ordering::Relaxed)).filter(|p| *p != 0)
    }

    /// Starts the default context of a language ahead of time (pool warm-up).
    pub async fn warm(&self, language: &str) -> Result<(), Error> {
        let ctx = self.context_for(None, Some(language))?;
        let mut slot = ctx.slot.lock().await;
        if matches!(*slot, Slot::Empty) {
            let k = self.start(&ctx).await?;
            self.record_pid(&ctx, k.pid);
            *slot = Slot::Running(Box::new(k));
        }
        Ok(())
    }

    fn record_pid(&self, ctx: &Context, pid: u32) {
        ctx.pid.store(pid, Ordering::Relaxed);
    }

    /// The context an execution runs in: the named one, or the default one of the language
    /// (created, not started, if new).
    fn context_for(
        &self,
        context_id: Option<&str>,
        language: Option<&str>,
    ) -> Result<Arc<Context>, Error> {
        match (
            context_id.filter(|c| !c.is_empty()),
            language.filter(|l| !l.is_empty()),
        ) {
            (Some(_), Some(_)) => Err(Error::BadRequest(
                "give either context_id or language, not both (a context has its own language)"
                    .into(),
            )),
            (Some(id), None) => self.get(id),
            (None, language) => {
                let language = normalize_language(language.unwrap_or("python"));
                let id = default_id(&language);
                if let Some(c) = self.map.lock().get(&id) {
                    return Ok(c.clone());
                }
                let spec = self.resolve_spec(&language)?;
                let ctx = Arc::new(Context {
                    info: ContextInfo {
                        id: id.clone(),
                        language,
                        cwd: self.default_cwd.display().to_string(),
                    },
                    spec,
                    is_default: true,
                    slot: tokio::sync::Mutex::new(Slot::Empty),
                    pid: AtomicU32::new(0),
                });
                Ok(self.map.lock().entry(id).or_insert(ctx).clone())
            }
        }
    }

    /// Validates the request and starts the execution; output lines arrive on the returned
    /// channel, `end_of_execution` last. Dropping the receiver interrupts the kernel.
    pub fn execute(
        self: &Arc<Self>,
        req: ExecuteRequest,
    ) -> Result<mpsc::Receiver<OutputLine>, Error> {
        let ctx = self.context_for(req.context_id.as_deref(), req.language.as_deref())?;
        let timeout = match req.timeout {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 => Some(Duration::from_secs_f64(t)),
            Some(t) => {
                return Err(Error::BadRequest(format!(
                    "timeout must be a positive number of seconds, got {t}"
                )));
            }
        };
        let (tx, rx) = mpsc::channel(256);
        let this = self.clone();
        tokio::spawn(async move {
            let mut slot = ctx.slot.lock().await;
            if matches!(*slot, Slot::Empty) {
                match this.start(&ctx).await {
                    Ok(k) => {
                        this.record_pid(&ctx, k.pid);
                        *slot = Slot::Running(Box::new(k));
                    }
                    Err(e) => {
                        let _ = tx
                            .send(OutputLine::Error {
                                name: errors::KERNEL_START.into(),
                                value: e.to_string(),
                                traceback: String::new(),
                            })
                            .await;
                        let _ = tx.send(OutputLine::EndOfExecution).await;
                        return;
                    }
                }
            }
            let env = req.env_vars.clone().unwrap_or_default();
            let outcome = match &mut *slot {
                Slot::Running(k) => {
                    k.execute(
                        this.launcher.as_ref(),
                        &ctx.info.language,
                        &req.code,
                        &env,
                        timeout,
                        &tx,
                    )
                    .await
                }
                Slot::Dead(how) => Err(Error::Died(how.clone())),
                Slot::Empty => unreachable!("started above"),
            };
            match outcome {
                Ok(()) => {}
                Err(Error::Died(how)) => {
                    if let Slot::Running(k) = &*slot {
                        k.kill(this.launcher.as_ref());
                    }
                    *slot = Slot::Dead(how.clone());
                    let _ = tx
                        .send(OutputLine::Error {
                            name: errors::KERNEL_DIED.into(),
                            value: format!(
                                "the kernel of context '{}' died ({how}); its state is lost: restart the context (POST /contexts/{}/restart, or code_context_restart) to run code in it again",
                                ctx.info.id, ctx.info.id
                            ),
                            traceback: String::new(),
                        })
                        .await;
                }
                Err(e) => {
                    let _ = tx
                        .send(OutputLine::Error {
                            name: "ExecutionError".into(),
                            value: e.to_string(),
                            traceback: String::new(),
                        })
                        .await;
                }
            }
            let _ = tx.send(OutputLine::EndOfExecution).await;
        });
        Ok(rx)
    }

    /// Kills every kernel (agent shutdown).
    pub fn shutdown(&self) {
        for ctx in self.map.lock().values() {
            if let Ok(slot) = ctx.slot.try_lock()
                && let Slot::Running(k) = &*slot
            {
                k.kill(self.launcher.as_ref());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, name: &str, language: &str) {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let json = serde_json::json!({
            "argv": ["/bin/true", "-f", "{connection_file}"],
            "display_name": name,
            "language": language,
        });
        std::fs::write(d.join("kernel.json"), json.to_string()).unwrap();
    }

    #[test]
    fn kernelspecs_resolve_by_language_and_alias() {
        let root = std::env::temp_dir().join(format!("coppice-kspec-{}", std::process::id()));
        let (a, b) = (root.join("a"), root.join("b"));
        spec(&a, "python3", "python");
        spec(&a, "bash", "bash");
        spec(&b, "python3", "python-shadowed");
        spec(&b, "ir", "R");
        std::fs::create_dir_all(b.join("broken")).unwrap();
        std::fs::write(b.join("broken/kernel.json"), "{").unwrap();
        let specs = find_kernelspecs(&[a.clone(), b.clone()]);
        assert_eq!(
            specs.keys().collect::<Vec<_>>(),
            vec!["bash", "ir", "python3"]
        );
        assert_eq!(specs["python3"].spec.language, "python", "earlier dirs win");
        let lang = |l: &str| spec_for(&specs, &normalize_language(l)).map(|s| s.name.clone());
        assert_eq!(lang("").as_deref(), Some("python3"));
        assert_eq!(lang("Python3").as_deref(), Some("python3"));
        assert_eq!(lang("sh").as_deref(), Some("bash"));
        assert_eq!(lang("r").as_deref(), Some("ir"));
        assert_eq!(lang("js"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
