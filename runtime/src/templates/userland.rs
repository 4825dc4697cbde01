//! The sandbox userland as text, rewritten from the host's (pure, unit-tested): accounts,
//! resolv.conf, the Debian mirror, /etc/hosts.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The sandbox user.
pub const SANDBOX_USER: &str = "user";
/// uid of [`SANDBOX_USER`].
pub const SANDBOX_UID: u32 = 1000;
/// gid of [`SANDBOX_USER`]'s own group.
pub const SANDBOX_GID: u32 = 1000;
/// Home directory of [`SANDBOX_USER`].
pub const SANDBOX_HOME: &str = "/home/user";
/// What a template's `/etc/hostname` says.
pub const SANDBOX_HOSTNAME: &str = "sandbox";

/// The account files of a sandbox root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounts {
    /// `/etc/passwd`.
    pub passwd: String,
    /// `/etc/group`.
    pub group: String,
    /// `/etc/shadow`.
    pub shadow: String,
    /// `/etc/gshadow`.
    pub gshadow: String,
}

pub(super) fn is_system_uid(name: &str, id: u32) -> bool {
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

pub(super) fn host_mirror(host_root: &Path) -> Option<String> {
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
