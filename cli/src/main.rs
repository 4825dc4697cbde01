//! `coppice`: the daemon (`coppice serve`) and a CLI that talks to it over its unix socket.

mod api_token;
mod client;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "coppice", version, about = "Coppice: agent-native sandboxes")]
struct Cli {
    /// The daemon's control socket.
    #[arg(
        long,
        global = true,
        env = "COPPICE_SOCKET",
        default_value = "/run/coppice/coppice.sock"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (embedded defaults; a TOML file and flags override them).
    Serve(serve::ServeArgs),
    /// Create, list, inspect and kill sandboxes.
    #[command(subcommand)]
    Sandbox(client::SandboxCmd),
    /// Run a command in a sandbox; streams its output and exits with its exit code.
    Exec(client::ExecArgs),
    /// Copy files in and out of a sandbox, list directories.
    #[command(subcommand)]
    Files(client::FilesCmd),
    /// Snapshot sandboxes (immutable layers to fork from or restore to); list, delete.
    #[command(subcommand)]
    Snapshot(client::snapshots::SnapshotCmd),
    /// List and build templates.
    #[command(subcommand)]
    Template(client::templates::TemplateCmd),
    /// Show and change a sandbox's network policy.
    #[command(subcommand)]
    Network(client::network::NetworkCmd),
    /// Run code in a sandbox's persistent Jupyter kernel (Python by default); prints output
    /// and results, exits 1 when the code raised.
    RunCode(client::RunCodeArgs),
    /// Collaborative terminals: open, list, kill, and attach this tty to one.
    #[command(subcommand)]
    Terminal(client::terminal::TerminalCmd),
    /// Print the bearer token of the daemon's TCP listener (MCP over HTTP and the native API
    /// need it in `Authorization: Bearer`; the unix socket does not).
    Token,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve(args) => serve::run(args, cli.socket),
        other => client::run(other, cli.socket),
    };
    std::process::exit(code);
}
