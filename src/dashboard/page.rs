//! The dashboard's HTML: the board (a real `<table>`, one row per Project), a Project's page (its
//! log tail, sessions and pending permissions), and the page that says how to log in. Every page
//! is complete without JavaScript (forms post and come back); `app.js` only makes it live.
//!
//! Pure: data in, text out. Every value from outside is escaped.

use std::fmt::Write as _;

use super::view::{Board, Row};

/// Escapes text for HTML content and attribute values.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn head(title: &str, csrf: Option<&str>) -> String {
    let csrf = csrf.map_or(String::new(), |t| {
        format!("<meta name=\"csrf\" content=\"{}\">", esc(t))
    });
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\">{csrf}\
         <title>{}</title><link rel=\"stylesheet\" href=\"/assets/app.css\"></head><body>",
        esc(title)
    )
}

const FOOT: &str = "<script src=\"/assets/app.js\" defer></script></body></html>";

/// The page for a visitor without a session.
pub(super) fn login_needed() -> String {
    format!(
        "{}<main class=\"login\"><h1>opencode-manager</h1>\
         <p>This dashboard needs a login. On the machine the manager runs on, run</p>\
         <pre><code>opencode-manager dashboard</code></pre>\
         <p>and open the URL it prints within 60 seconds. Each URL works once.</p></main></body></html>",
        head("opencode-manager: log in", None)
    )
}

/// A byte count as MiB or GiB.
pub(super) fn bytes(n: u64) -> String {
    let mib = n as f64 / (1024.0 * 1024.0);
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

/// Seconds as `3d 4h`, `2h 5m`, `7m 3s` or `12s`.
pub(super) fn span(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn header(board: &Board) -> String {
    let d = &board.daemon;
    let budget = match d.memory_budget {
        Some(limit) => format!("{} of {}", bytes(board.memory_used), bytes(limit)),
        None => format!("{} (no budget)", bytes(board.memory_used)),
    };
    format!(
        "<header><h1>opencode-manager</h1><dl id=\"facts\">\
         <div><dt>Gateway</dt><dd id=\"gateway\" class=\"{}\">{}</dd></div>\
         <div><dt>Daemon</dt><dd id=\"daemon\">{} · up <span id=\"daemon-uptime\">{}</span></dd></div>\
         <div><dt>Limits</dt><dd title=\"{}\">{}</dd></div>\
         <div><dt>Isolation</dt><dd>{}</dd></div>\
         <div><dt>Memory</dt><dd id=\"budget\">{}</dd></div></dl>\
         <p id=\"live\" role=\"status\" aria-live=\"polite\">static view</p></header>",
        if board.gateway.open { "up" } else { "down" },
        esc(&board.gateway.state),
        esc(&d.version),
        span(board.daemon_uptime_secs),
        esc(&d.limits_reason),
        esc(&d.limits),
        esc(&d.isolation),
        esc(&budget),
    )
}

/// The action buttons of a Project: Start or Stop, and Restart. Each is a form, so they work
/// without JavaScript; their accessible names say what they do to which Project.
pub(super) fn actions(row: &Row, csrf: &str) -> String {
    let name = esc(&row.name);
    let button = |action: &str, label: &str| {
        format!(
            "<form method=\"post\" action=\"/project/{name}/{action}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\" class=\"{action}\">{label} {name}</button></form>",
            esc(csrf)
        )
    };
    let running = matches!(row.state, "running" | "starting" | "unhealthy");
    let mut out = String::new();
    if row.wanted || running {
        out.push_str(&button("stop", "Stop"));
    } else {
        out.push_str(&button("start", "Start"));
    }
    out.push_str(&button("restart", "Restart"));
    out
}

fn cell(value: Option<String>) -> String {
    value.map_or_else(|| "—".to_owned(), |v| esc(&v))
}

/// One `<tr>` of the board.
pub(super) fn row(row: &Row, csrf: &str) -> String {
    let memory = match (row.memory_bytes, row.memory_limit) {
        (Some(used), Some(limit)) => Some(format!("{} / {}", bytes(used), bytes(limit))),
        (Some(used), None) => Some(bytes(used)),
        _ => None,
    };
    let exit = match (&row.last_error, &row.last_exit) {
        (Some(error), _) => Some(error.clone()),
        (None, exit) => exit.clone(),
    };
    format!(
        "<tr id=\"row-{n}\" data-project=\"{n}\" data-state=\"{s}\">\
         <th scope=\"row\"><a href=\"/project/{n}\">{n}</a></th>\
         <td data-col=\"agent\">{agent}</td>\
         <td data-col=\"state\"><span class=\"state state-{s}\">{s}</span></td>\
         <td data-col=\"port\">{port}</td><td data-col=\"pid\">{pid}</td>\
         <td data-col=\"uptime\">{uptime}</td><td data-col=\"restarts\">{restarts}</td>\
         <td data-col=\"exit\" class=\"exit\">{exit}</td>\
         <td data-col=\"memory\">{memory}</td><td data-col=\"cpu\">{cpu}</td>\
         <td data-col=\"busy\">{busy}</td><td data-col=\"permissions\">{permissions}</td>\
         <td data-col=\"model\">{model}</td><td data-col=\"isolation\">{isolation}</td>\
         <td data-col=\"actions\" class=\"actions\">{actions}</td></tr>",
        n = esc(&row.name),
        s = row.state,
        agent = esc(&row.agent),
        port = cell(row.port.map(|p| p.to_string())),
        pid = cell(row.pid.map(|p| p.to_string())),
        uptime = cell(row.uptime_secs.map(span)),
        restarts = row.restarts,
        exit = cell(exit),
        memory = cell(memory),
        cpu = cell(row.cpu_percent.map(|c| format!("{c:.0}%"))),
        busy = row.busy_sessions,
        permissions = row.pending_permissions,
        model = cell(row.model.clone()),
        isolation = cell(row.isolation.clone()),
        actions = actions(row, csrf),
    )
}

const COLUMNS: [&str; 15] = [
    "Project",
    "Agent",
    "State",
    "Port",
    "PID",
    "Uptime",
    "Restarts",
    "Last exit",
    "Memory",
    "CPU",
    "Busy",
    "Permissions",
    "Model",
    "Isolation",
    "Actions",
];

/// The board page.
pub(super) fn board(board: &Board, csrf: &str) -> String {
    let mut out = head("opencode-manager", Some(csrf));
    out.push_str(&header(board));
    out.push_str("<main><table id=\"projects\"><caption>Projects</caption><thead><tr>");
    for column in COLUMNS {
        let _ = write!(out, "<th scope=\"col\">{column}</th>");
    }
    out.push_str("</tr></thead><tbody>");
    for r in &board.projects {
        out.push_str(&row(r, csrf));
    }
    out.push_str("</tbody></table>");
    if board.projects.is_empty() {
        out.push_str("<p id=\"empty\">No projects yet: start one with <code>opencode-manager start</code>.</p>");
    }
    out.push_str("</main>");
    out.push_str(FOOT);
    out
}

/// A session of an Instance, as its page lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct SessionItem {
    pub id: String,
    pub title: String,
    /// `busy`, `retry`, or `idle`.
    pub state: String,
}

/// A permission request waiting for an answer.
#[derive(Debug, Clone, serde::Serialize)]
pub(super) struct PermissionItem {
    pub id: String,
    pub session: String,
    /// What the agent asks to do (`bash: echo hi`).
    pub what: String,
}

/// The forms that answer one permission request.
pub(super) fn permission_forms(project: &str, p: &PermissionItem, csrf: &str) -> String {
    let mut out = String::new();
    for (reply, label) in [
        ("once", "Allow once"),
        ("always", "Always"),
        ("reject", "Reject"),
    ] {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/project/{}/permission/{}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <input type=\"hidden\" name=\"reply\" value=\"{reply}\">\
             <button type=\"submit\" class=\"{reply}\" aria-label=\"{label}: {}\">{label}</button></form>",
            esc(project),
            esc(&p.id),
            esc(csrf),
            esc(&p.what),
        );
    }
    out
}

/// A Project's page.
pub(super) fn project(
    row: &Row,
    log: &[String],
    sessions: &[SessionItem],
    permissions: &[PermissionItem],
    csrf: &str,
) -> String {
    let name = esc(&row.name);
    let mut out = head(&format!("{} · opencode-manager", row.name), Some(csrf));
    let _ = write!(
        out,
        "<header><p><a href=\"/\">← all projects</a></p><h1 id=\"project\" data-project=\"{name}\">{name}</h1>\
         <p id=\"live\" role=\"status\" aria-live=\"polite\">static view</p></header><main>\
         <table id=\"projects\" class=\"single\"><caption>State</caption><thead><tr>"
    );
    for column in COLUMNS {
        let _ = write!(out, "<th scope=\"col\">{column}</th>");
    }
    let _ = write!(
        out,
        "</tr></thead><tbody>{}</tbody></table>",
        self::row(row, csrf)
    );
    out.push_str("<section><h2>Permission requests</h2><ul id=\"permissions\">");
    for p in permissions {
        let _ = write!(
            out,
            "<li data-permission=\"{}\"><span>{}</span> {}</li>",
            esc(&p.id),
            esc(&p.what),
            permission_forms(&row.name, p, csrf)
        );
    }
    out.push_str("</ul>");
    if permissions.is_empty() {
        out.push_str("<p id=\"no-permissions\">None waiting.</p>");
    }
    out.push_str("</section><section><h2>Sessions</h2><table id=\"sessions\"><thead><tr><th scope=\"col\">Session</th><th scope=\"col\">Title</th><th scope=\"col\">State</th></tr></thead><tbody>");
    for s in sessions {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            esc(&s.id),
            esc(&s.title),
            esc(&s.state)
        );
    }
    out.push_str("</tbody></table></section><section><h2>Log</h2><pre id=\"log\" tabindex=\"0\">");
    for line in log {
        out.push_str(&esc(line));
        out.push('\n');
    }
    out.push_str("</pre></section></main>");
    out.push_str(FOOT);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Row {
        Row {
            name: "blog-api".into(),
            agent: "opencode".into(),
            state: "running",
            port: Some(4101),
            pid: Some(77),
            started_at: None,
            uptime_secs: Some(3700),
            restarts: 1,
            last_exit: Some("exited unexpectedly (<script>)".into()),
            last_error: None,
            memory_bytes: Some(300 << 20),
            memory_limit: Some(2 << 30),
            cpu_percent: Some(3.2),
            busy_sessions: 0,
            pending_permissions: 2,
            model: Some("fake/m1".into()),
            isolation: Some("landlock ABI 7".into()),
            wanted: true,
        }
    }

    #[test]
    fn a_row_escapes_what_it_shows_and_names_its_buttons() {
        let html = row(&sample(), "tok\"en");
        assert!(html.contains("exited unexpectedly (&lt;script&gt;)"));
        assert!(!html.contains("<script>"));
        assert!(html.contains(">Stop blog-api</button>"));
        assert!(html.contains(">Restart blog-api</button>"));
        assert!(!html.contains("Start blog-api"));
        assert!(html.contains("value=\"tok&quot;en\""));
        assert!(html.contains("300 MiB / 2.0 GiB"));
        assert!(html.contains("1h 1m"));
    }

    #[test]
    fn spans_and_sizes_read_naturally() {
        assert_eq!(span(12), "12s");
        assert_eq!(span(125), "2m 5s");
        assert_eq!(span(7500), "2h 5m");
        assert_eq!(span(3 * 86_400 + 4 * 3600), "3d 4h");
        assert_eq!(bytes(512 << 20), "512 MiB");
    }
}
