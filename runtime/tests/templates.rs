//! Real template builds (root, real filesystem). The debootstrap build downloads ~100 MB and
//! is ignored by default: `cargo test -p coppice-runtime --test templates -- --ignored`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use coppice_runtime::Error;
use coppice_runtime::templates::{BuildOptions, TemplateStore, size_bytes};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Resolves `path` inside `root` as a chroot would (absolute symlink targets are relative to
/// `root`), returning the host path of the final non-symlink.
fn resolve_in(root: &Path, path: &str) -> PathBuf {
    let mut parts: Vec<String> = path
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    parts.reverse();
    let mut cur: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(p) = parts.pop() {
        match p.as_str() {
            "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let candidate = root.join(cur.iter().chain([&p]).collect::<PathBuf>());
        match fs::symlink_metadata(&candidate) {
            Ok(md) if md.file_type().is_symlink() => {
                hops += 1;
                assert!(hops < 40, "symlink loop at {}", candidate.display());
                let target = fs::read_link(&candidate).unwrap();
                let t = target.to_string_lossy().into_owned();
                if t.starts_with('/') {
                    cur.clear();
                }
                for q in t.split('/').filter(|q| !q.is_empty()).rev() {
                    parts.push(q.to_owned());
                }
            }
            _ => cur.push(p),
        }
    }
    root.join(cur.iter().collect::<PathBuf>())
}

fn du_sb(path: &Path) -> u64 {
    let out = Command::new("du").arg("-sb").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn chroot(rootfs: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("chroot")
        .arg(rootfs)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn no_leftovers(store: &TemplateStore) {
    let stray: Vec<String> = fs::read_dir(store.root())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "left behind: {stray:?}");
}

#[test]
fn default_template_from_host() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let state = tempfile::Builder::new()
        .prefix("coppice-tpl-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let store = TemplateStore::new(state.path()).unwrap();
    assert!(store.list().unwrap().is_empty());

    let t0 = Instant::now();
    let info = store.ensure_default().unwrap();
    let took = t0.elapsed();
    eprintln!(
        "default template built in {:.2} s, {} bytes apparent",
        took.as_secs_f64(),
        info.size_bytes
    );
    assert!(took.as_secs() < 30, "default template took {took:?}");
    assert_eq!(info.name, "default");
    assert_eq!(info.source, "host");
    assert_eq!(
        info.layers,
        vec![state.path().join("templates/default/rootfs")]
    );
    let rootfs = &info.layers[0];

    // Binaries resolve inside the tree (merged /usr links recreated).
    for bin in [
        "/usr/bin/python3",
        "/bin/bash",
        "/bin/sh",
        "/usr/bin/apt-get",
        "/usr/bin/dpkg",
    ] {
        let p = resolve_in(rootfs, bin);
        assert!(p.starts_with(rootfs), "{bin} escapes: {}", p.display());
        assert!(
            fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false),
            "{bin} → {} missing",
            p.display()
        );
    }
    assert_eq!(
        fs::read_link(rootfs.join("bin")).unwrap(),
        fs::read_link("/bin").unwrap()
    );
    // A hard-link farm: same inode as the host's file.
    let host_bash = fs::metadata("/usr/bin/bash").unwrap();
    let tpl_bash = fs::metadata(rootfs.join("usr/bin/bash")).unwrap();
    assert_eq!(
        (tpl_bash.dev(), tpl_bash.ino()),
        (host_bash.dev(), host_bash.ino())
    );
    // /etc is a copy, not links.
    let host_ld = fs::metadata("/etc/ld.so.conf").unwrap();
    assert_ne!(
        fs::metadata(rootfs.join("etc/ld.so.conf")).unwrap().ino(),
        host_ld.ino()
    );

    // Accounts.
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("root:x:0:0:")),
        "{passwd}"
    );
    assert!(
        passwd
            .lines()
            .any(|l| l == "user:x:1000:1000:Sandbox user,,,:/home/user:/bin/bash"),
        "{passwd}"
    );
    for l in passwd.lines() {
        let uid: u32 = l.split(':').nth(2).unwrap().parse().unwrap();
        assert!(
            uid < 1000 || uid == 65534 || l.starts_with("user:"),
            "host user leaked: {l}"
        );
    }
    let group = fs::read_to_string(rootfs.join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l == "user:x:1000:"), "{group}");
    if group.lines().any(|l| l.starts_with("sudo:")) {
        assert!(
            group
                .lines()
                .any(|l| l.starts_with("sudo:") && l.ends_with("user")),
            "{group}"
        );
    }
    let shadow = fs::read_to_string(rootfs.join("etc/shadow")).unwrap();
    let shadow_md = fs::metadata(rootfs.join("etc/shadow")).unwrap();
    assert_eq!(shadow_md.permissions().mode() & 0o777, 0o640);
    assert_eq!(shadow.lines().count(), passwd.lines().count());
    for l in shadow.lines() {
        assert_eq!(l.split(':').nth(1), Some("*"), "shadow secret: {l}");
    }
    for l in fs::read_to_string(rootfs.join("etc/gshadow"))
        .unwrap()
        .lines()
    {
        assert_eq!(l.split(':').nth(1), Some("*"), "gshadow secret: {l}");
    }
    for gone in ["etc/shadow-", "etc/gshadow-", "etc/passwd-", "etc/coppice"] {
        assert!(
            fs::symlink_metadata(rootfs.join(gone)).is_err(),
            "{gone} present"
        );
    }
    let ssh_keys: Vec<_> = fs::read_dir(rootfs.join("etc/ssh"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("ssh_host_"))
                .collect()
        })
        .unwrap_or_default();
    assert!(ssh_keys.is_empty());
    if Path::new("/etc/ssl/private").is_dir() {
        assert_eq!(
            fs::read_dir(rootfs.join("etc/ssl/private"))
                .unwrap()
                .count(),
            0
        );
    }
    assert_eq!(fs::read(rootfs.join("etc/machine-id")).unwrap(), b"");
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/hostname")).unwrap(),
        "sandbox\n"
    );
    assert!(
        fs::read_to_string(rootfs.join("etc/hosts"))
            .unwrap()
            .contains("127.0.0.1\tlocalhost")
    );
    let resolv = fs::read_to_string(rootfs.join("etc/resolv.conf")).unwrap();
    assert!(
        !resolv.lines().any(|l| l.starts_with("nameserver 127.")),
        "{resolv}"
    );
    assert_eq!(
        Path::new("/usr/bin/sudo").exists(),
        rootfs.join("etc/sudoers.d/user").exists()
    );
    // Login shells do not fork `id -u` under bash, and the profile still works in bash and sh.
    let profile = fs::read_to_string(rootfs.join("etc/profile")).unwrap();
    assert!(!profile.contains("[ \"$(id -u)\" -eq 0 ]"), "{profile}");
    for shell in ["bash", "sh"] {
        // bash takes $EUID, dash falls back to `id -u`; both see root here.
        let out = std::process::Command::new(shell)
            .arg("-c")
            .arg(format!(
                ". {}/etc/profile; echo \"$PATH\"",
                rootfs.display()
            ))
            .output()
            .unwrap();
        let path = String::from_utf8_lossy(&out.stdout);
        assert!(path.starts_with("/usr/local/sbin:"), "{shell}: {path}");
    }

    // Home, /root and the other directories.
    let home = fs::metadata(rootfs.join("home/user")).unwrap();
    assert!(home.is_dir());
    assert_eq!((home.uid(), home.gid()), (1000, 1000));
    if Path::new("/etc/skel/.bashrc").exists() {
        let rc = fs::metadata(rootfs.join("home/user/.bashrc")).unwrap();
        assert_eq!((rc.uid(), rc.gid()), (1000, 1000));
    }
    let homes: Vec<_> = fs::read_dir(rootfs.join("home"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(homes, vec!["user"]);
    let root_md = fs::metadata(rootfs.join("root")).unwrap();
    assert_eq!(root_md.permissions().mode() & 0o7777, 0o700);
    for e in fs::read_dir(rootfs.join("root")).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(n == ".bashrc" || n == ".profile", "/root/{n} leaked");
    }
    assert_eq!(
        fs::metadata(rootfs.join("tmp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
    assert_eq!(
        fs::metadata(rootfs.join("var/tmp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
    for d in [
        "proc",
        "sys",
        "dev",
        "run",
        "var/log",
        "var/cache/apt/archives/partial",
    ] {
        assert!(rootfs.join(d).is_dir(), "{d}");
        assert_eq!(
            fs::read_dir(rootfs.join(d)).unwrap().count(),
            0,
            "{d} not empty"
        );
    }
    for absent in ["work", "var/lib/coppice", "opt/.keep-none"] {
        assert!(
            fs::symlink_metadata(rootfs.join(absent)).is_err(),
            "{absent} present"
        );
    }
    assert_eq!(fs::read_dir(rootfs.join("opt")).unwrap().count(), 0);
    assert!(rootfs.join("var/lib/dpkg/status").is_file());
    if Path::new("/var/lib/apt/lists").is_dir() {
        // lists hard-linked, not copied
        for e in fs::read_dir("/var/lib/apt/lists").unwrap().flatten() {
            let md = e.metadata().unwrap();
            if md.is_file() && e.file_name() != "lock" {
                let t = fs::metadata(rootfs.join("var/lib/apt/lists").join(e.file_name())).unwrap();
                assert_eq!(t.ino(), md.ino());
            }
        }
    }

    // Tools work inside (read-only use: nothing written into the hard-linked files).
    let (ok, out) = chroot(
        rootfs,
        &[
            "/usr/bin/python3",
            "-c",
            "import pwd; print(pwd.getpwnam('user').pw_dir)",
        ],
    );
    assert!(ok && out.trim() == "/home/user", "{out}");
    let (ok, out) = chroot(rootfs, &["dpkg", "-s", "coreutils"]);
    assert!(ok && out.contains("Status: install ok installed"), "{out}");
    let (ok, out) = chroot(
        rootfs,
        &[
            "apt-cache",
            "-o",
            "Dir::Cache::pkgcache=",
            "-o",
            "Dir::Cache::srcpkgcache=",
            "policy",
            "bash",
        ],
    );
    assert!(ok && out.contains("Installed:"), "{out}");

    // Size: apparent, hard links once (as du -sb).
    assert_eq!(size_bytes(rootfs.join("etc")), du_sb(&rootfs.join("etc")));
    let t = Instant::now();
    assert_eq!(size_bytes(rootfs), du_sb(rootfs));
    eprintln!(
        "size_bytes of the whole tree: {:.2} s",
        t.elapsed().as_secs_f64()
    );

    // Idempotent, listed, immutable by name.
    let t = Instant::now();
    let again = store.ensure_default().unwrap();
    assert_eq!(again, info);
    assert!(t.elapsed().as_millis() < 500);
    assert_eq!(store.list().unwrap(), vec![info.clone()]);
    assert!(matches!(
        store.build_host("default", &BuildOptions::default()),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(store.get("nope"), Err(Error::TemplateNotFound(_))));
    assert!(matches!(
        store.get("../etc"),
        Err(Error::InvalidArgument(_))
    ));

    // Replace swaps atomically; the old tree is gone afterwards.
    let t = Instant::now();
    let replaced = store
        .build_host(
            "default",
            &BuildOptions {
                replace: true,
                ..Default::default()
            },
        )
        .unwrap();
    eprintln!("rebuild with replace: {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(replaced.layers, info.layers);
    assert!(rootfs.join("usr/bin/bash").is_file());
    no_leftovers(&store);

    let t = Instant::now();
    store.remove("default").unwrap();
    eprintln!("remove: {:.2} s", t.elapsed().as_secs_f64());
    assert!(matches!(
        store.get("default"),
        Err(Error::TemplateNotFound(_))
    ));
    assert!(matches!(
        store.remove("default"),
        Err(Error::TemplateNotFound(_))
    ));
    no_leftovers(&store);
}

#[test]
fn failed_debootstrap_leaves_nothing() {
    if !is_root() || !Path::new("/usr/sbin/debootstrap").exists() {
        eprintln!("skipped: needs root and debootstrap");
        return;
    }
    let state = tempfile::Builder::new()
        .prefix("coppice-tpl-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let store = TemplateStore::new(state.path()).unwrap();
    let mut lines = Vec::new();
    let bad_pkg = store.build_debootstrap(
        "x",
        &["ok".into(), "rm -rf /".into()],
        &BuildOptions::default(),
        &mut |l| lines.push(l.to_owned()),
    );
    assert!(
        matches!(bad_pkg, Err(Error::InvalidArgument(_))),
        "{bad_pkg:?}"
    );
    assert!(lines.is_empty(), "ran something: {lines:?}");
    assert!(matches!(
        store.build_debootstrap("Bad/Name", &[], &BuildOptions::default(), &mut |_| {}),
        Err(Error::InvalidArgument(_))
    ));

    let opts = BuildOptions {
        mirror: Some("file:///nonexistent/debian".into()),
        ..Default::default()
    };
    let err = store
        .build_debootstrap("broken", &[], &opts, &mut |l| lines.push(l.to_owned()))
        .unwrap_err();
    eprintln!("expected failure: {err}");
    assert!(lines.len() > 1, "no progress streamed: {lines:?}");
    assert!(matches!(
        store.get("broken"),
        Err(Error::TemplateNotFound(_))
    ));
    assert_eq!(
        fs::read_dir(store.root()).unwrap().count(),
        0,
        "left something behind"
    );
}

/// Downloads ~100 MB from the Debian mirror. Run by hand:
/// `cargo test -p coppice-runtime --test templates -- --ignored --nocapture`.
#[test]
#[ignore]
fn debootstrap_template() {
    assert!(is_root(), "needs root");
    let state = tempfile::Builder::new()
        .prefix("coppice-tpl-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let store = TemplateStore::new(state.path()).unwrap();
    let mut lines = 0usize;
    let t0 = Instant::now();
    let info = store
        .build_debootstrap(
            "deb",
            &["sudo".into(), "ca-certificates".into()],
            &BuildOptions::default(),
            &mut |l| {
                lines += 1;
                if lines % 50 == 1 || l.starts_with("I: Base system") {
                    eprintln!("[{:6.1}s] {l}", t0.elapsed().as_secs_f64());
                }
            },
        )
        .unwrap();
    eprintln!(
        "debootstrap template built in {:.1} s ({} progress lines, {} bytes)",
        t0.elapsed().as_secs_f64(),
        lines,
        info.size_bytes
    );
    assert!(lines > 20);
    assert_eq!(info.source, "debootstrap");
    assert_eq!(
        info.packages,
        vec!["ca-certificates".to_owned(), "sudo".to_owned()]
    );
    let rootfs = &info.layers[0];
    assert!(resolve_in(rootfs, "/bin/bash").is_file());
    assert!(resolve_in(rootfs, "/usr/bin/sudo").is_file());
    let sudoers = fs::metadata(rootfs.join("etc/sudoers.d/user")).unwrap();
    assert_eq!(sudoers.permissions().mode() & 0o777, 0o440);
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("user:x:1000:1000:"));
    assert!(
        fs::read_to_string(rootfs.join("etc/group"))
            .unwrap()
            .lines()
            .any(|l| l.starts_with("sudo:") && l.ends_with(":user"))
    );
    let home = fs::metadata(rootfs.join("home/user")).unwrap();
    assert_eq!((home.uid(), home.gid()), (1000, 1000));
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/hostname")).unwrap(),
        "sandbox\n"
    );
    let debs = fs::read_dir(rootfs.join("var/cache/apt/archives"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".deb"))
        .count();
    assert_eq!(debs, 0, "apt-get clean did not run");
    // An independent tree: not linked to the host.
    assert_ne!(
        fs::metadata(rootfs.join("usr/bin/bash")).unwrap().ino(),
        fs::metadata("/usr/bin/bash").unwrap().ino()
    );
    // (stderr may warn that the host's hostname does not resolve inside: chroot keeps it)
    let (ok, out) = chroot(
        rootfs,
        &["su", "user", "-c", "sudo -n id -u 2>/dev/null; id -u"],
    );
    assert!(
        ok && out.split_whitespace().collect::<Vec<_>>() == ["0", "1000"],
        "{out}"
    );
    store.remove("deb").unwrap();
    no_leftovers(&store);
}

#[test]
fn stale_build_dirs_are_cleaned_without_crossing_mounts() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let state = tempfile::Builder::new()
        .prefix("coppice-tpl-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let store = TemplateStore::new(state.path()).unwrap();
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = store.root().join(format!(".building-x-{dead}-0a0b0c0d"));
    let live = store
        .root()
        .join(format!(".building-y-{}-0a0b0c0d", std::process::id()));
    fs::create_dir_all(stale.join("rootfs/proc")).unwrap();
    fs::create_dir_all(&live).unwrap();
    // A mount left inside a dead build (as a killed debootstrap could leave /proc).
    let mnt = stale.join("rootfs/proc");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "leftover"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    fs::write(mnt.join("precious"), b"x").unwrap();
    assert_eq!(store.cleanup_partial().unwrap(), 1);
    assert!(!stale.exists());
    assert!(live.exists(), "a build of this process was removed");
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(stale.to_str().unwrap()),
        "mount not detached"
    );
    fs::remove_dir(&live).unwrap();
}

/// A default template built under another host package set is rebuilt by `ensure_default`,
/// and the replaced tree is kept aside (sandboxes may run on it) until `remove_retired`.
#[test]
fn default_template_rebuilt_when_host_packages_change() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let state = tempfile::Builder::new()
        .prefix("coppice-tpl-fp-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let store = TemplateStore::new(state.path()).unwrap();
    let first = store.ensure_default().unwrap();
    let json_path = store.dir("default").join("template.json");
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(
        rec["host_fingerprint"].as_str(),
        Some(coppice_runtime::templates::host_fingerprint().as_str())
    );
    // Pretend it was built before packages were installed: a marker file in the old tree
    // tells the trees apart.
    rec["host_fingerprint"] = "dpkg=older".into();
    std::fs::write(&json_path, serde_json::to_vec(&rec).unwrap()).unwrap();
    let marker = first.layers[0].join("etc/coppice-old-tree");
    std::fs::write(&marker, b"old").unwrap();

    let rebuilt = store.ensure_default().unwrap();
    assert_eq!(rebuilt.layers, first.layers);
    assert!(!marker.exists(), "the default template was not rebuilt");
    let retired: Vec<_> = std::fs::read_dir(store.root())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".retired-default-")
        })
        .collect();
    assert_eq!(retired.len(), 1, "the replaced tree is kept aside");
    assert!(
        retired[0]
            .path()
            .join("rootfs/etc/coppice-old-tree")
            .is_file()
    );
    // Unchanged host: no rebuild.
    assert_eq!(store.ensure_default().unwrap(), rebuilt);
    assert_eq!(store.remove_retired().unwrap(), 1);
    no_leftovers(&store);
    // The python alias names the default template when it carries ipykernel.
    let has_kernel =
        std::path::Path::new("/usr/share/jupyter/kernels/python3/kernel.json").is_file();
    assert_eq!(store.get("python").is_ok(), has_kernel);
}
