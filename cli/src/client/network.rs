//! `coppice network get|set ID`: a sandbox's network policy.

use clap::Subcommand;
use coppice_runtime::policy::NetworkPolicy;

use super::{Daemon, Failure, NO_BODY, print_value};

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Show a sandbox's network policy.
    Get {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Replace a sandbox's network policy while it runs (atomic; connections the new policy
    /// does not permit are cut). POLICY is JSON text, a file holding it, or - for stdin, e.g.
    /// '{"default":"deny","allow":[{"cidr":"198.51.100.0/24","protocol":"tcp","ports":[443]}]}'.
    Set {
        id: String,
        policy: String,
        #[arg(long)]
        json: bool,
    },
}

/// A policy given on the command line: inline JSON, `-` (stdin) or a file name.
pub(super) fn read_policy(arg: &str) -> Result<NetworkPolicy, Failure> {
    let text = if arg.trim_start().starts_with('{') {
        arg.to_string()
    } else if arg == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| Failure(format!("reading the policy from stdin: {e}"), 2))?
    } else {
        std::fs::read_to_string(arg).map_err(|e| {
            Failure(
                format!("reading the policy file {arg}: {e} (give JSON text, a file or -)"),
                2,
            )
        })?
    };
    serde_json::from_str(&text).map_err(|e| Failure(format!("not a network policy: {e}"), 2))
}

pub(super) async fn run(cmd: NetworkCmd, d: &Daemon) -> Result<i32, Failure> {
    let (value, json) = match cmd {
        NetworkCmd::Get { id, json } => (
            d.json("GET", &format!("/api/v1/sandboxes/{id}/network"), NO_BODY)
                .await?,
            json,
        ),
        NetworkCmd::Set { id, policy, json } => {
            let body = read_policy(&policy)?;
            (
                d.json(
                    "PUT",
                    &format!("/api/v1/sandboxes/{id}/network"),
                    Some(&body),
                )
                .await?,
                json,
            )
        }
    };
    print_value(&value, json, |v| {
        println!(
            "{}",
            serde_json::to_string_pretty(&v["policy"]).unwrap_or_default()
        )
    });
    Ok(0)
}
