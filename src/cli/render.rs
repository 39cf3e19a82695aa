//! How a reply reads on a terminal: data on stdout, diagnostics (errors, hints, warnings) on
//! stderr; with `--json`, the reply object itself. Pure: it returns the text, `cli` writes it.

use crate::audit::Caller;
use crate::reply::{Reply, Status};

/// The text of a reply: what goes to stdout and what goes to stderr.
pub(super) fn render(reply: &Reply, json: bool) -> (String, String) {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut err = String::new();
    if json {
        match serde_json::to_string_pretty(reply) {
            Ok(text) => out.push_str(&format!("{text}\n")),
            Err(why) => err.push_str(&format!("error: encoding the reply: {why}\n")),
        }
        return (out, err);
    }
    let status = serde_json::to_value(reply.status())
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    if reply.status() == Status::Error {
        let code = reply
            .error
            .and_then(|c| serde_json::to_value(c).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = writeln!(
            err,
            "error [{code}]: {}",
            reply.message.as_deref().unwrap_or("")
        );
        for item in reply.items.iter().flatten() {
            let _ = writeln!(err, "  - {item}");
        }
        if let Some(hint) = &reply.hint {
            let _ = writeln!(err, "hint: {hint}");
        }
        return (out, err);
    }
    if let Some(url) = &reply.url {
        let _ = writeln!(out, "{url}");
        if let Some(message) = &reply.message {
            let _ = writeln!(err, "{message}");
        }
        return (out, err);
    }
    if let Some(entries) = &reply.entries {
        for e in entries {
            let _ = writeln!(out, "{}", audit_line(e));
        }
        return (out, err);
    }
    if let Some(projects) = &reply.projects {
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:<10} {:>6} {:>8}  SANDBOX",
            "PROJECT", "AGENT", "STATUS", "PORT", "PID"
        );
        for p in projects {
            let port = p.opencode_port.map_or("-".into(), |v| v.to_string());
            let pid = p.opencode_pid.map_or("-".into(), |v| v.to_string());
            let _ = writeln!(
                out,
                "{:<24} {:<12} {:<10} {:>6} {:>8}  {}",
                p.name, p.agent, p.status, port, pid, p.sandbox_dir
            );
        }
    } else if let Some(lines) = &reply.lines {
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    } else {
        let _ = writeln!(out, "Status: {status}");
        if let Some(message) = &reply.message {
            let _ = writeln!(out, "\n{message}");
        }
        let mut facts = Vec::new();
        if let Some(oc) = &reply.opencode {
            let pid = oc.pid.map_or("-".into(), |p| p.to_string());
            let port = oc.port.map_or("-".into(), |p| p.to_string());
            facts.push(format!("OpenCode: {} (PID {pid}, Port {port})", oc.status));
        } else if let Some(url) = &reply.opencode_url {
            facts.push(format!(
                "OpenCode: {url} (PID: {})",
                reply.opencode_pid.map_or("-".into(), |p| p.to_string())
            ));
        }
        if let Some(provider) = &reply.provider {
            let model = provider.model.as_deref().unwrap_or("none");
            facts.push(format!(
                "Model: {model} (providers: {})",
                if provider.providers.is_empty() {
                    "none".into()
                } else {
                    provider.providers.join(", ")
                }
            ));
        }
        for (label, value) in [
            ("Agent", &reply.agent),
            ("Sandbox", &reply.sandbox_dir),
            ("Started", &reply.started_at),
            ("Last health check", &reply.last_health_check),
            ("Last exit", &reply.last_exit),
            ("Last error", &reply.last_error),
            ("Env file", &reply.env_path),
            ("Isolation", &reply.isolation),
        ] {
            if let Some(value) = value {
                facts.push(format!("{label}: {value}"));
            }
        }
        if !facts.is_empty() {
            let _ = writeln!(out);
            for fact in facts {
                let _ = writeln!(out, "{fact}");
            }
        }
        for item in reply.items.iter().flatten() {
            let _ = writeln!(out, "  - {item}");
        }
    }
    if let (Some(hint), false) = (&reply.hint, reply.status() == Status::Success) {
        let _ = writeln!(err, "hint: {hint}");
    }
    if let Some(warning) = &reply.warning {
        for line in warning.lines() {
            let _ = writeln!(err, "warning: {line}");
        }
    }
    (out, err)
}

/// One audited call on one line: time, door, caller, action, project, outcome, duration.
fn audit_line(e: &crate::audit::Entry) -> String {
    let word = |v: serde_json::Result<serde_json::Value>| {
        v.ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let caller = match &e.caller {
        Caller::LocalUser { uid } => format!("uid {uid}"),
        Caller::GlobalToken => "global token".to_owned(),
        Caller::ProjectToken { project } => format!("token of {project}"),
        Caller::DashboardSession { uid } => format!("dashboard (uid {uid})"),
        Caller::Unknown => "unknown".to_owned(),
    };
    format!(
        "{}  {:<9} {:<18} {:<30} {:<20} {:<16} {} ms",
        e.time,
        word(serde_json::to_value(e.door)),
        caller,
        e.action,
        e.project.as_deref().unwrap_or("-"),
        e.outcome,
        e.duration_ms
    )
}
