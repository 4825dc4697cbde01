//! `coppice snapshot ...` and `coppice sandbox fork|restore|lineage`: requests to
//! the daemon's native snapshot routes.

use clap::{Args, Subcommand};
use coppice_runtime::manager::snapshots::SnapshotKind;
use coppice_tools::snapshots::{CreateSnapshot, ForkSandbox, RestoreSandbox};
use serde_json::{Value, json};

use super::{Daemon, Failure, NO_BODY, SandboxSpec, human_size, key_value, print_value};

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot a running sandbox's files (it is frozen for the copy, then keeps running).
    Create {
        sandbox: String,
        /// A unique name, usable instead of the id.
        #[arg(long)]
        name: Option<String>,
        /// Ask for a memory-state snapshot (needs CRIU >= 4.1; an error where unavailable).
        #[arg(long)]
        memory_state: bool,
        /// Metadata, k=v (repeatable).
        #[arg(long = "meta", value_parser = key_value)]
        meta: Vec<(String, String)>,
        #[arg(long)]
        json: bool,
    },
    /// List snapshots.
    List {
        /// Only snapshots of this sandbox.
        #[arg(long)]
        sandbox: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one snapshot.
    Info {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot (refused while forks or other snapshots stand on it).
    Delete {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

/// `coppice sandbox fork`: from a live sandbox or (with --snapshot) from a snapshot.
#[derive(Args)]
pub struct ForkArgs {
    /// Live sandbox to fork (an implicit snapshot is taken); omit with --snapshot.
    sandbox: Option<String>,
    /// Snapshot (id or name) to fork instead.
    #[arg(long, conflicts_with = "sandbox")]
    snapshot: Option<String>,
    /// Number of forks, 1-100.
    #[arg(long, default_value_t = 1)]
    count: u32,
    #[command(flatten)]
    spec: SandboxSpec,
    #[arg(long)]
    json: bool,
}

pub(super) async fn snapshot(cmd: SnapshotCmd, d: &Daemon) -> Result<i32, Failure> {
    match cmd {
        SnapshotCmd::Create {
            sandbox,
            name,
            memory_state,
            meta,
            json,
        } => {
            let body = CreateSnapshot {
                name,
                kind: Some(match memory_state {
                    true => SnapshotKind::Memory,
                    false => SnapshotKind::Filesystem,
                }),
                metadata: meta.into_iter().collect(),
            };
            let info = d
                .json(
                    "POST",
                    &format!("/api/v1/sandboxes/{sandbox}/snapshots"),
                    Some(&body),
                )
                .await?;
            print_value(&info, json, |v| {
                println!("{}", v["snapshot_id"].as_str().unwrap_or_default())
            });
        }
        SnapshotCmd::List { sandbox, json } => {
            let path = match sandbox {
                Some(s) => format!("/api/v1/snapshots?sandbox_id={s}"),
                None => "/api/v1/snapshots".to_string(),
            };
            let list = d.json("GET", &path, NO_BODY).await?;
            print_value(&list, json, |v| {
                println!(
                    "{:<22} {:<16} {:<11} {:<22} {:>8} {:>5} FORKS",
                    "ID", "NAME", "KIND", "SANDBOX", "SIZE", "DEPTH"
                );
                for s in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<22} {:<16} {:<11} {:<22} {:>8} {:>5} {}",
                        s["snapshot_id"].as_str().unwrap_or(""),
                        s["name"].as_str().unwrap_or("-"),
                        s["kind"].as_str().unwrap_or(""),
                        s["sandbox_id"].as_str().unwrap_or(""),
                        human_size(s["size_bytes"].as_u64().unwrap_or(0)),
                        s["depth"].as_u64().unwrap_or(0),
                        s["dependant_sandboxes"].as_array().map_or(0, Vec::len),
                    );
                }
            });
        }
        SnapshotCmd::Info { id, json } => {
            let info = d
                .json("GET", &format!("/api/v1/snapshots/{id}"), NO_BODY)
                .await?;
            print_value(&info, json, |v| {
                println!("{}", serde_json::to_string_pretty(v).unwrap_or_default())
            });
        }
        SnapshotCmd::Delete { id, json } => {
            d.json("DELETE", &format!("/api/v1/snapshots/{id}"), NO_BODY)
                .await?;
            print_value(&json!({"snapshot_id": id, "deleted": true}), json, |_| {
                println!("deleted {id}")
            });
        }
    }
    Ok(0)
}

/// Prints one fork id per line (errors on stderr); exits 1 when any fork failed.
pub(super) async fn fork(a: ForkArgs, d: &Daemon) -> Result<i32, Failure> {
    let spec = a.spec.create_request();
    let body = ForkSandbox {
        count: Some(a.count),
        memory: spec.memory,
        cpus: spec.cpus,
        pids: spec.pids,
        timeout_secs: spec.timeout_secs,
        env: spec.env,
        metadata: spec.metadata,
        ..Default::default()
    };
    let path = match (&a.sandbox, &a.snapshot) {
        (Some(s), None) => format!("/api/v1/sandboxes/{s}/fork"),
        (None, Some(s)) => format!("/api/v1/snapshots/{s}/fork"),
        _ => {
            return Err(Failure(
                "give a sandbox to fork, or --snapshot ID".into(),
                1,
            ));
        }
    };
    let result = d.json("POST", &path, Some(&body)).await?;
    print_value(&result, a.json, |v| {
        for f in v["forks"].as_array().into_iter().flatten() {
            match f["sandbox"]["id"].as_str() {
                Some(id) => println!("{id}"),
                None => eprintln!(
                    "coppice: fork {} failed: {}",
                    f["index"],
                    f["error"].as_str().unwrap_or("unknown error")
                ),
            }
        }
    });
    Ok(if result["failed"].as_u64().unwrap_or(0) > 0 {
        1
    } else {
        0
    })
}

pub(super) async fn restore(
    id: String,
    snapshot: String,
    json: bool,
    d: &Daemon,
) -> Result<i32, Failure> {
    let info = d
        .json(
            "POST",
            &format!("/api/v1/sandboxes/{id}/restore"),
            Some(&RestoreSandbox {
                snapshot_id: snapshot.clone(),
            }),
        )
        .await?;
    print_value(&info, json, |_| println!("restored {id} to {snapshot}"));
    Ok(0)
}

pub(super) async fn lineage(id: String, json: bool, d: &Daemon) -> Result<i32, Failure> {
    let l = d
        .json("GET", &format!("/api/v1/lineage/{id}"), NO_BODY)
        .await?;
    print_value(&l, json, |v| {
        let line = |n: &Value| {
            format!(
                "{} {}{}",
                n["kind"].as_str().unwrap_or(""),
                n["id"].as_str().unwrap_or(""),
                if n["alive"].as_bool() == Some(true) {
                    ""
                } else {
                    " (gone)"
                }
            )
        };
        for a in v["ancestors"].as_array().into_iter().flatten().rev() {
            println!("  ancestor   {}", line(a));
        }
        println!("* {}", line(&v["node"]));
        for c in v["descendants"].as_array().into_iter().flatten() {
            println!(
                "  descendant {} (of {})",
                line(c),
                c["parent"].as_str().unwrap_or("")
            );
        }
    });
    Ok(0)
}
