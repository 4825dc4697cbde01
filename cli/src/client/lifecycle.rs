//! `coppice sandbox pause|resume|events`: a sandbox's pause tiers and its lifecycle log.

use clap::Args;
use coppice_runtime::model::PauseKind;
use coppice_tools::lifecycle::{PauseSandbox, ResumeSandbox};

use super::{Daemon, Failure, NO_BODY, print_value};

#[derive(Args)]
pub struct PauseArgs {
    id: String,
    /// Keep only its files: its processes stop and a resume boots it afresh (default: keep
    /// its memory, checkpointed to disk where the host has CRIU).
    #[arg(long)]
    filesystem: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ResumeArgs {
    id: String,
    /// Its new lifetime, e.g. 10m (default: the daemon's).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<std::time::Duration>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct EventsArgs {
    id: String,
    #[arg(long)]
    json: bool,
}

pub(super) async fn pause(a: PauseArgs, d: &Daemon) -> Result<i32, Failure> {
    let body = PauseSandbox {
        kind: if a.filesystem {
            PauseKind::Filesystem
        } else {
            PauseKind::Memory
        },
    };
    let info = d
        .json(
            "POST",
            &format!("/api/v1/sandboxes/{}/pause", a.id),
            Some(&body),
        )
        .await?;
    print_value(&info, a.json, |_| println!("paused {}", a.id));
    Ok(0)
}

pub(super) async fn resume(a: ResumeArgs, d: &Daemon) -> Result<i32, Failure> {
    let body = ResumeSandbox {
        timeout_secs: a.timeout.map(|t| t.as_secs_f64()),
    };
    let v = d
        .json(
            "POST",
            &format!("/api/v1/sandboxes/{}/resume", a.id),
            Some(&body),
        )
        .await?;
    print_value(&v, a.json, |v| {
        let how = match v["resumed"].as_str() {
            Some("thawed") => "from memory",
            Some("restored") => "from its checkpoint",
            _ => "already running",
        };
        println!("resumed {} ({how})", a.id)
    });
    Ok(0)
}

pub(super) async fn events(a: EventsArgs, d: &Daemon) -> Result<i32, Failure> {
    let v = d
        .json(
            "GET",
            &format!("/api/v1/sandboxes/{}/events", a.id),
            NO_BODY,
        )
        .await?;
    print_value(&v, a.json, |v| {
        for e in v.as_array().into_iter().flatten() {
            let at = e["at_ms"].as_i64().unwrap_or(0);
            println!(
                "{} {:<14} {}",
                coppice_runtime::clock::rfc3339_ms(at),
                e["kind"].as_str().unwrap_or(""),
                e["detail"].as_str().unwrap_or("")
            );
        }
    });
    Ok(0)
}
