//! `coppice template`: list the installed templates, build a Debian one.

use clap::Subcommand;
use coppice_tools::sandboxes::BuildTemplate;
use futures::StreamExt;
use serde_json::Value;

use super::{Daemon, Failure, NO_BODY, check, human_size, json_body, ndjson_lines, print_value};

#[derive(Subcommand)]
pub enum TemplateCmd {
    /// List templates with their sizes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Build a Debian template with debootstrap, e.g. --packages python3,git.
    Build {
        name: String,
        #[arg(long, value_delimiter = ',')]
        packages: Vec<String>,
        #[arg(long)]
        suite: Option<String>,
        #[arg(long)]
        mirror: Option<String>,
    },
}

pub(super) async fn template(cmd: TemplateCmd, d: &Daemon) -> Result<i32, Failure> {
    match cmd {
        TemplateCmd::List { json } => {
            let list = d.json("GET", "/api/v1/templates", NO_BODY).await?;
            print_value(&list, json, |v| {
                println!("{:<20} {:<12} {:>10}  CREATED", "NAME", "SOURCE", "SIZE");
                for t in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<20} {:<12} {:>10}  {}",
                        t["name"].as_str().unwrap_or(""),
                        t["source"].as_str().unwrap_or(""),
                        human_size(t["size_bytes"].as_u64().unwrap_or(0)),
                        t["created_at"].as_str().unwrap_or("")
                    );
                }
            });
        }
        TemplateCmd::Build {
            name,
            packages,
            suite,
            mirror,
        } => {
            let body = BuildTemplate {
                name,
                packages,
                suite,
                mirror,
            };
            let resp = check(
                d.request("POST", "/api/v1/templates", json_body(&body))
                    .await?,
            )
            .await?;
            let mut lines = ndjson_lines(resp.into_body());
            while let Some(line) = lines.next().await {
                let ev: Value =
                    serde_json::from_slice(&line?).map_err(|e| format!("bad event: {e}"))?;
                match ev["type"].as_str() {
                    Some("progress") => eprintln!("{}", ev["line"].as_str().unwrap_or("")),
                    Some("done") => {
                        println!(
                            "built template {}",
                            ev["template"]["name"].as_str().unwrap_or("")
                        );
                        return Ok(0);
                    }
                    Some("error") => {
                        return Err(Failure(ev["message"].as_str().unwrap_or("").to_string(), 1));
                    }
                    _ => {}
                }
            }
            return Err("the build ended without a result".to_string().into());
        }
    }
    Ok(0)
}
