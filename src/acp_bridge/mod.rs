//! The ACP bridge: the process an ACP agent's Instance is (`opencode-manager acp-bridge`). It
//! starts the agent as its child on pipes, is its only ACP client (the `agent-client-protocol`
//! crate), and serves the agent's sessions on the Instance's port with the part of OpenCode's
//! HTTP API the manager uses (`server`), keeping its own bounded record of each session's turns
//! (`record`).
//!
//! The launcher starts the bridge like `opencode serve`: detached, in its own process group,
//! confined by Landlock with an empty capability bounding set, under the Instance's limits, its
//! stderr the Project's log. The agent inherits all of it, so the Supervisor, the Gateway, the
//! dashboard and a later daemon (which adopts a running bridge like any Instance) need not know
//! which agent runs. Parsing what the agent writes happens here, confined with it, never in the
//! daemon. The bridge says it listens only once the agent has answered `initialize`; it exits
//! when the agent does (with its exit code) or on SIGTERM.

mod record;
mod server;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use agent_client_protocol::schema::ProtocolVersion;
use agent_client_protocol::v1::schema::{
    ContentBlock, Implementation, InitializeRequest, RequestPermissionOutcome,
    RequestPermissionRequest, RequestPermissionResponse, SessionNotification, SessionUpdate,
};
use agent_client_protocol::v1::{ConnectionTo, Responder};
use agent_client_protocol::{Agent, ByteStreams, Client};
use tokio::sync::{broadcast, oneshot};

use crate::agent::AgentKind;
use record::Record;

/// How the launcher starts the bridge.
#[derive(Debug, Clone)]
pub(crate) struct BridgeOptions {
    pub kind: String,
    pub port: u16,
    pub cwd: PathBuf,
    /// The agent's program and its arguments.
    pub command: Vec<String>,
}

/// What the handlers share with the HTTP side: the record, the parked permission answers, and
/// the event stream the dashboard follows. Std mutexes: held for one map operation each.
#[derive(Default)]
struct Shared {
    record: Mutex<Record>,
    responders: Mutex<HashMap<String, Responder<RequestPermissionResponse>>>,
    events: Option<broadcast::Sender<String>>,
}

impl Shared {
    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn responders(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Responder<RequestPermissionResponse>>> {
        self.responders.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the Instance's `/event` followers that sessions or permissions changed.
    fn publish(&self, kind: &str) {
        if let Some(events) = &self.events {
            let _ = events.send(format!("{{\"type\":\"{kind}\"}}"));
        }
    }

    /// Withdraws permission requests (their turn ended or was aborted): each is answered
    /// `cancelled`, as ACP asks of a client.
    fn withdraw(&self, ids: &[String]) {
        let mut responders = self.responders();
        for id in ids {
            if let Some(responder) = responders.remove(id) {
                let _ = responder.respond(RequestPermissionResponse::new(
                    RequestPermissionOutcome::Cancelled,
                ));
            }
        }
    }
}

/// The running bridge, as the HTTP side sees it.
pub(crate) struct Bridge {
    kind: AgentKind,
    cwd: PathBuf,
    /// The agent's own name and version, from `initialize`.
    agent: (String, String),
    cx: ConnectionTo<Agent>,
    shared: Arc<Shared>,
    /// `Basic <base64 of opencode:password>`, as OpenCode checks it.
    authorization: String,
}

/// Runs the bridge until its agent exits or it is asked to stop; returns the exit code.
pub(crate) async fn run(options: BridgeOptions) -> u8 {
    match serve(options).await {
        Ok(code) => code,
        Err(why) => {
            tracing::error!("acp bridge: {why}");
            1
        }
    }
}

async fn serve(options: BridgeOptions) -> Result<u8, String> {
    let kind = AgentKind::parse(&options.kind).map_err(|e| e.message)?;
    let password = std::env::var("OPENCODE_SERVER_PASSWORD")
        .map_err(|_| "OPENCODE_SERVER_PASSWORD is not set".to_owned())?;
    let (program, args) = options
        .command
        .split_first()
        .ok_or("no agent command after --")?;
    // The agent gets everything the Instance got, but not the password of its own API.
    #[allow(clippy::disallowed_methods)]
    // The bridge starts its one agent, inside its own confinement.
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(&options.cwd)
        .env_remove("OPENCODE_SERVER_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("starting {program}: {err}"))?;
    tracing::info!(
        pid = child.id(),
        "acp bridge started the {kind} agent: {program}"
    );
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("the agent's pipes are missing".into());
    };
    let (events, _) = broadcast::channel(64);
    let shared = Arc::new(Shared {
        events: Some(events),
        record: Mutex::new(Record::new(
            crate::secrets::random_hex(4).expose().to_owned(),
        )),
        ..Shared::default()
    });
    let (cx, stop) = connect(stdin, stdout, shared.clone()).await?;

    let init = tokio::select! {
        answered = cx
            .send_request(
                InitializeRequest::new(ProtocolVersion::V1)
                    .client_info(Implementation::new("opencode-manager", crate::version())),
            )
            .block_task() => answered.map_err(|err| format!("the agent did not answer initialize: {err}"))?,
        status = child.wait() => return Err(format!("the agent exited before it answered initialize ({})", describe(status))),
    };
    let agent = init
        .agent_info
        .as_ref()
        .map_or((kind.to_string(), String::new()), |i| {
            (i.name.clone(), i.version.clone())
        });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port))
        .await
        .map_err(|err| format!("listening on 127.0.0.1:{}: {err}", options.port))?;
    use base64::Engine as _;
    let authorization = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("opencode:{password}"))
    );
    let bridge = Arc::new(Bridge {
        kind,
        cwd: options.cwd.clone(),
        agent: agent.clone(),
        cx,
        shared,
        authorization,
    });
    tracing::info!(
        "acp bridge listening on http://127.0.0.1:{} ({} {} over ACP)",
        options.port,
        agent.0,
        agent.1
    );
    let app = server::router(bridge);
    let served = axum::serve(listener, app);
    let code = tokio::select! {
        result = served => {
            tracing::error!("acp bridge: the HTTP server ended: {result:?}");
            1
        }
        status = child.wait() => {
            let described = describe(status);
            tracing::warn!("acp bridge: the {kind} agent exited ({described})");
            exit_code(&described)
        }
        () = terminated() => {
            tracing::info!("acp bridge: stopping");
            0
        }
    };
    let _ = stop.send(());
    Ok(code)
}

/// The crate's client connection over the agent's pipes, run as its own task. Agent requests are
/// answered from elsewhere: a permission request is recorded and its responder parked until the
/// Gateway or the dashboard answers it.
async fn connect(
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
    shared: Arc<Shared>,
) -> Result<(ConnectionTo<Agent>, oneshot::Sender<()>), String> {
    use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};
    let (handle_tx, handle_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let on_update = shared.clone();
    let on_permission = shared;
    let builder = Client
        .v1()
        .name("opencode-manager")
        .on_receive_notification(
            async move |n: SessionNotification, _cx| {
                if let SessionUpdate::AgentMessageChunk(chunk) = &n.update
                    && let ContentBlock::Text(text) = &chunk.content
                {
                    on_update.record().append(
                        &n.session_id.0,
                        &text.text,
                        crate::timestamp::now_millis(),
                    );
                }
                Ok(())
            },
            agent_client_protocol::on_receive_notification!(),
        )
        .on_receive_request(
            async move |request: RequestPermissionRequest, responder, _cx| {
                park_permission(&on_permission, &request, responder);
                Ok(())
            },
            agent_client_protocol::on_receive_request!(),
        );
    let main = async move |cx: ConnectionTo<Agent>| {
        let _ = handle_tx.send(cx.clone());
        tokio::select! {
            _ = stop_rx => {}
            () = cx.incoming_closed() => {}
        }
        Ok(())
    };
    tokio::spawn(builder.connect_with(
        ByteStreams::new(stdin.compat_write(), stdout.compat()),
        main,
    ));
    handle_rx
        .await
        .map_err(|_| "the ACP connection ended at once".to_owned())
        .map(|cx| (cx, stop_tx))
}

/// Records a permission request and parks its responder; one for an unknown session is refused.
fn park_permission(
    shared: &Shared,
    request: &RequestPermissionRequest,
    responder: Responder<RequestPermissionResponse>,
) {
    let word = |value: serde_json::Value| value.as_str().unwrap_or("").to_owned();
    let options = request
        .options
        .iter()
        .map(|o| {
            (
                o.option_id.0.to_string(),
                word(serde_json::to_value(o.kind).unwrap_or_default()),
            )
        })
        .collect();
    let fields = &request.tool_call.fields;
    let kind = fields
        .kind
        .map(|k| word(serde_json::to_value(k).unwrap_or_default()))
        .unwrap_or_else(|| "tool".into());
    let title = fields.title.clone().unwrap_or_else(|| "a tool".into());
    let id = {
        let mut record = shared.record();
        let Some(session) = record.ours(&request.session_id.0).map(str::to_owned) else {
            drop(record);
            let _ = responder.respond(RequestPermissionResponse::new(
                RequestPermissionOutcome::Cancelled,
            ));
            return;
        };
        record.ask(session, kind, title, options)
    };
    shared.responders().insert(id, responder);
    shared.publish("permission.asked");
}

/// Resolves on SIGTERM or SIGINT (the Instance's stop).
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            _ => "unknown exit".into(),
        },
        Err(err) => format!("exit status unknown: {err}"),
    }
}

/// The bridge exits as its agent did: its code, or 128 + the signal that killed it.
fn exit_code(described: &str) -> u8 {
    let number = |prefix: &str| {
        described
            .strip_prefix(prefix)
            .and_then(|n| n.parse::<u8>().ok())
    };
    number("exit code ")
        .or_else(|| number("killed by signal ").map(|s| 128u8.saturating_add(s)))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_exits_as_its_agent_did() {
        assert_eq!(exit_code("exit code 0"), 0);
        assert_eq!(exit_code("exit code 7"), 7);
        assert_eq!(exit_code("killed by signal 9"), 137);
        assert_eq!(exit_code("exit status unknown: x"), 1);
    }
}
