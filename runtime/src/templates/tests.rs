//! Unit tests of the template builders' pure parts and the tree copier.

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

use super::copy::{FileMode, TreeOpts, copy_tree};
use super::host::etc_excluded;
use super::sys::{remove_tree, size_bytes, unescape_mountinfo};
use super::userland::{pick_mirror, sandbox_accounts, sandbox_resolv_conf};
use super::validate::{validate_mirror, validate_name, validate_package, validate_suite};

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
        !a.shadow.contains("alice") && !a.gshadow.contains("alice") && !a.gshadow.contains("bob")
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
    let upstream = "nameserver 127.0.0.1\nnameserver 192.168.1.1\nnameserver 1.1.1.1\n".to_owned();
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
    // SAFETY: geteuid takes no arguments and always succeeds.
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
