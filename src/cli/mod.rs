//! The command line: one subcommand per operation, a human form and `--json` (exactly the reply
//! object the MCP tool returns), and the `daemon` subcommand.
//!
//! The only module that prints for humans. Data goes to stdout, diagnostics and progress to stderr.
//! Exit codes: 0 done, 3 the user must act (`waiting_*`), 2 invalid input, 1 any other failure.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::audit::Door;
use crate::config::{Config, Paths};
use crate::daemon::{self, DaemonOptions};
use crate::error::ErrorCode;
use crate::ops::CallerSettings;
use crate::ops::start::StartArgs;
use crate::protocol::{Envelope, Request};
use crate::reply::Reply;

mod render;
mod service;
use render::render;

#[derive(Debug, Parser)]
#[command(
    name = "opencode-manager",
    version,
    about = "Run many isolated OpenCode coding agents on one machine"
)]
pub struct Cli {
    /// Print the reply object as JSON on stdout (the same object the MCP tools return)
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bootstrap or resume a project: .env, deploy key, clone, then start its OpenCode
    Start(StartCmd),
    /// Show a project's OpenCode process, port, health and model provider
    Status { project: String },
    /// Stop a project's OpenCode (the sandbox stays); --all stops every project
    Stop {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        project: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Stop and start a project's OpenCode again, on the same port
    Restart { project: String },
    /// Stop a project and delete its sandbox and deploy key (refuses to lose unpushed work without --force)
    Destroy {
        project: String,
        #[arg(long)]
        force: bool,
    },
    /// List all projects
    List,
    /// Show the tail of a project's OpenCode log, or of the manager's log
    Logs {
        project: Option<String>,
        #[arg(long, default_value_t = crate::ops::logs::DEFAULT_LINES)]
        lines: usize,
    },
    /// Check the machine: OpenCode, git, ssh, npm, the home, and which resource-limit mechanism applies
    Doctor,
    /// Report the global MCP gateway (port 3005)
    McpStatus,
    /// Restart the global MCP gateway
    McpRestart,
    /// Stop the global MCP gateway (projects keep running)
    StopMcpTool,
    /// Print the audit log: every state-changing call, from any door
    Audit {
        /// Only calls about this project
        #[arg(long)]
        project: Option<String>,
        /// Only calls from this long ago on: 90s, 30m, 12h, 7d
        #[arg(long, value_name = "DURATION", value_parser = parse_since)]
        since: Option<std::time::Duration>,
    },
    /// Print a one-time login URL for the dashboard (valid for 60 seconds)
    Dashboard {
        /// Also open it with xdg-open, where there is one
        #[arg(long)]
        open: bool,
    },
    /// Serve the opencode_* MCP tools over stdio or Streamable HTTP
    Serve(ServeCmd),
    /// Install or remove the systemd unit that runs `daemon --stay` as a service
    #[command(subcommand)]
    Service(service::ServiceCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell) on stdout
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of this command line or of one of its commands, generated from
    /// its definition; or write every page into a directory
    #[command(hide = true)]
    Man(service::ManCmd),
    /// Run the daemon in the foreground (clients start it on demand)
    Daemon {
        /// Keep running when no project runs (for a service unit)
        #[arg(long)]
        stay: bool,
    },
    /// The ACP bridge an ACP agent's instance runs as (started by the daemon, not by hand)
    #[command(hide = true)]
    AcpBridge {
        #[arg(long)]
        kind: String,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        cwd: PathBuf,
        /// The agent's program and arguments
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct ServeCmd {
    /// Transport: stdio (JSON-RPC on stdin/stdout) or http (Streamable HTTP at /mcp)
    #[arg(long, value_enum, default_value_t = ServeMode::Stdio)]
    mode: ServeMode,
    /// HTTP port
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// HTTP address to bind; anything but loopback needs OPENCODE_MANAGER_TOKEN (32+ characters)
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Another host name clients may use in the Host header (repeatable; also `allowed_hosts` in
    /// opencode-manager.toml). The loopback names and the bound address are always allowed
    #[arg(long = "allowed-host", value_name = "NAME")]
    allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ServeMode {
    Stdio,
    Http,
}

#[derive(Debug, Args)]
struct StartCmd {
    project: String,
    /// SSH URL of the repository (git@host:owner/repo.git or ssh://…)
    #[arg(long)]
    git_url: String,
    /// Use this existing private key instead of generating a deploy key
    #[arg(long)]
    ssh_key: Option<PathBuf>,
    /// The coding agent: opencode (default), gemini, opencode-acp, claude, codex, custom (kept from the first start)
    #[arg(long)]
    agent: Option<String>,
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let paths = match Paths::from_env() {
        Ok(paths) => paths,
        Err(err) => return fail(cli.json, ErrorCode::InvalidConfig, &format!("{err:#}")),
    };
    let mut open_url = false;
    let request = match cli.command {
        Command::Daemon { stay } => return runtime.block_on(run_daemon(paths, stay)),
        Command::AcpBridge {
            kind,
            port,
            cwd,
            command,
        } => {
            crate::logs::init_bridge_log();
            let options = crate::acp_bridge::BridgeOptions {
                kind,
                port,
                cwd,
                command,
            };
            return ExitCode::from(runtime.block_on(crate::acp_bridge::run(options)));
        }
        Command::Serve(cmd) => return runtime.block_on(run_serve(paths, cmd)),
        Command::Service(cmd) => return service::run(cmd, &paths, cli.json),
        Command::Completions { shell } => return service::completions(shell),
        Command::Man(cmd) => return service::man_pages(cmd),
        Command::Start(cmd) => Request::Start(StartArgs {
            project_name: cmd.project,
            git_url: cmd.git_url,
            // A relative key path means relative to where the user runs the command, not the daemon.
            user_ssh_key: cmd.ssh_key.map(|p| {
                std::path::absolute(&p)
                    .unwrap_or(p)
                    .to_string_lossy()
                    .into_owned()
            }),
            agent: cmd.agent,
        }),
        Command::Status { project } => Request::Status {
            project_name: project,
        },
        Command::Stop { all: true, .. } => Request::StopAll,
        Command::Stop { project, .. } => Request::Stop {
            project_name: project.unwrap_or_default(),
        },
        Command::Restart { project } => Request::Restart {
            project_name: project,
        },
        Command::Destroy { project, force } => Request::Destroy {
            project_name: project,
            force,
        },
        Command::List => Request::List,
        Command::Doctor => Request::Doctor,
        Command::McpStatus => Request::McpStatus,
        Command::McpRestart => Request::McpRestart,
        Command::StopMcpTool => Request::StopMcpTool,
        Command::Logs { project, lines } => Request::Logs {
            project_name: project,
            lines: Some(lines),
        },
        Command::Audit { project, since } => Request::Audit {
            project_name: project,
            since: since.map(crate::timestamp::ago),
        },
        Command::Dashboard { open } => {
            open_url = open;
            Request::DashboardLogin
        }
    };
    crate::logs::init_client_log();
    let envelope = Envelope {
        request,
        caller: CallerSettings::from_env(),
    };
    let json = cli.json;
    let reply = runtime.block_on(daemon::client::ask(&paths, &envelope, |step| {
        emit_err(&format!("… {step}\n"));
    }));
    print_reply(&reply, json);
    if let (true, Some(url)) = (open_url, &reply.url) {
        open_in_browser(url);
    }
    ExitCode::from(reply.exit_code())
}

/// `--since`: a span such as `30m`.
fn parse_since(raw: &str) -> Result<std::time::Duration, String> {
    crate::timestamp::parse_span(raw).ok_or_else(|| {
        format!("{raw:?} is not a duration; use a number with s, m, h or d (30m, 7d)")
    })
}

/// Hands `url` to `xdg-open`, where there is one; says so where there is none.
#[allow(clippy::disallowed_methods)] // xdg-open for `dashboard --open`, the only program the CLI starts.
fn open_in_browser(url: &str) {
    let opened = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !opened {
        emit_err("warning: xdg-open is not available; open the URL above yourself\n");
    }
}

async fn run_serve(paths: Paths, cmd: ServeCmd) -> ExitCode {
    crate::logs::init_client_log();
    let caller = CallerSettings {
        door: Door::Mcp,
        ..CallerSettings::from_env()
    };
    let result = match cmd.mode {
        ServeMode::Stdio => crate::mcp::serve_stdio(paths, caller).await,
        ServeMode::Http => {
            let cancel = tokio_util::sync::CancellationToken::new();
            let on_signal = cancel.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                on_signal.cancel();
            });
            let configured = match crate::trust::check_home(&paths)
                .map_err(|err| anyhow::anyhow!("the manager home is unsafe: {err} ({})", err.fix))
                .and_then(|()| Config::load(paths.clone()))
            {
                Ok(config) => config.allowed_hosts,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    return ExitCode::from(1);
                }
            };
            let options = crate::mcp::http::HttpOptions {
                host: cmd.host,
                port: cmd.port,
                allowed_hosts: cmd.allowed_hosts.into_iter().chain(configured).collect(),
            };
            crate::mcp::http::serve(paths, caller, options, cancel).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

async fn run_daemon(paths: Paths, stay: bool) -> ExitCode {
    // The home is checked before anything in it is opened, the log and the config included.
    if let Err(err) = crate::trust::ensure_home(&paths) {
        return refused(&daemon::Refused {
            code: ErrorCode::HomeUnsafe,
            message: format!("the manager home is unsafe: {err}"),
            hint: err.fix,
        });
    }
    if let Err(err) = crate::atomic_file::private_dir(&paths.logs_dir())
        .and_then(|()| crate::logs::init_daemon_log(&paths.manager_log()))
    {
        eprintln!("error: opening the daemon log: {err}");
        return ExitCode::from(1);
    }
    let config = match Config::load(paths) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("invalid configuration: {err:#}");
            return refused(&daemon::Refused {
                code: ErrorCode::InvalidConfig,
                message: format!("{err:#}"),
                hint: "fix opencode-manager.toml in the manager home (see docs/cli.md)".into(),
            });
        }
    };
    match daemon::run(config, DaemonOptions { stay }, shutdown_signal()).await {
        Ok(daemon::Exit::AlreadyRunning { pid }) => {
            let who = pid.map_or_else(
                || "another daemon".to_owned(),
                |p| format!("the daemon with pid {p}"),
            );
            eprintln!("error: {who} is already running for this home; this one exits");
            ExitCode::from(daemon::EXIT_ALREADY_RUNNING)
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(refusal) => refused(&refusal),
    }
}

/// Says why the daemon will not start, in the line the client that spawned it looks for in
/// manager.log, and exits with the status that carries the error code.
fn refused(refusal: &daemon::Refused) -> ExitCode {
    let code = serde_json::to_value(refusal.code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    eprintln!(
        "error [{code}]: daemon refused to start: {} | hint: {}",
        refusal.message, refusal.hint
    );
    tracing::error!("daemon refused to start [{code}]: {}", refusal.message);
    ExitCode::from(refusal.exit_status())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn fail(json: bool, code: ErrorCode, message: &str) -> ExitCode {
    let reply = Reply::error(
        code,
        message,
        "see the manager log (opencode-logs/manager.log in the manager home)",
    );
    print_reply(&reply, json);
    ExitCode::from(reply.exit_code())
}

/// Prints a reply: data to stdout, diagnostics to stderr. A closed pipe (`| head -1`) ends the
/// output quietly.
fn print_reply(reply: &Reply, json: bool) {
    let (out, err) = render(reply, json);
    emit_out(&out);
    emit_err(&err);
}

/// Writes to stdout; a reader that went away is not an error worth a panic.
fn emit_out(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    let _ = std::io::stdout().flush();
}

/// Writes to stderr, quietly if nobody reads it.
fn emit_err(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}
