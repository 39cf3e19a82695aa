//! `opencode-mcp-tool-servers.json`, kept current in the original's format (the Node tool's `servers` list) for
//! tools that read it: one entry per Project with a usable `.env`, `active` while its Instance runs.
//!
//! The file holds the Instances' passwords, as the original's did, so it is written 0600 and
//! atomically, and only when its content changes. `added_at` is kept from the previous file. The
//! Gateway task calls it on every snapshot change; it reads the `.env` cache, never a `.env`.

use serde_json::{Value, json};

use crate::ops::Manager;
use crate::snapshot::Snapshot;

/// The file as last written (or read, the first time), so it is rewritten only on change.
#[derive(Debug, Default)]
pub(crate) struct Servers {
    last: Option<Value>,
}

impl Servers {
    /// Rewrites the file (off the async threads) if the Projects, their ports, their status or
    /// their passwords changed.
    pub(crate) async fn update(&mut self, manager: &Manager, snapshot: &Snapshot) {
        let path = manager.config().paths.servers_config();
        let previous = match self.last.take() {
            Some(previous) => previous,
            None => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    std::fs::read_to_string(path)
                        .ok()
                        .and_then(|t| serde_json::from_str(&t).ok())
                        .unwrap_or(Value::Null)
                })
                .await
                .unwrap_or(Value::Null)
            }
        };
        let file = render(manager, snapshot, &previous);
        if file != previous {
            let mut text = serde_json::to_vec_pretty(&file).unwrap_or_default();
            text.push(b'\n');
            let written = tokio::task::spawn_blocking(move || {
                crate::atomic_file::replace(&path, &text, crate::atomic_file::PRIVATE)
                    .map_err(|err| format!("writing {}: {err}", path.display()))
            })
            .await;
            if let Ok(Err(err)) = written {
                tracing::warn!("{err}");
            }
        }
        self.last = Some(file);
    }
}

/// The file's content: one entry per Project with a usable `.env`; `added_at` kept from `previous`.
fn render(manager: &Manager, snapshot: &Snapshot, previous: &Value) -> Value {
    let added_at = |id: &str| {
        previous["servers"]
            .as_array()
            .and_then(|servers| servers.iter().find(|s| s["id"] == id))
            .and_then(|s| s["added_at"].as_str().map(str::to_owned))
    };
    let mut servers = Vec::new();
    for (name, view) in &snapshot.projects {
        let Some(env) = manager.envs().get(name) else {
            continue;
        };
        let Some(port) = view.port else { continue };
        let running = view.pid.is_some();
        servers.push(json!({
            "id": name,
            "title": title(name),
            "description": format!("OpenCode server for {name}"),
            "url": format!("http://127.0.0.1:{port}"),
            "password": env.password.expose(),
            "status": if running { "active" } else { "inactive" },
            "added_at": added_at(name).unwrap_or_else(|| view.created_at.clone()),
            "git_url": view.git_url,
            "sandbox_dir": view.sandbox_dir,
        }));
    }
    let default_server = previous["default_server"]
        .as_str()
        .filter(|id| servers.iter().any(|s| s["id"] == *id))
        .map(str::to_owned)
        .or_else(|| {
            servers
                .first()
                .and_then(|s| s["id"].as_str().map(str::to_owned))
        });
    let mut file = json!({ "version": "1.0", "servers": servers });
    if let Some(default_server) = default_server {
        file["default_server"] = Value::String(default_server);
    }
    file
}

/// The original's title: `blog-api` → `Blog Api`.
fn title(name: &str) -> String {
    name.replace('-', " ")
        .split(' ')
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first
                    .to_uppercase()
                    .chain(chars.flat_map(char::to_lowercase))
                    .collect(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn titles_follow_the_original() {
        assert_eq!(super::title("blog-api"), "Blog Api");
        assert_eq!(super::title("API_v2"), "Api_v2");
    }
}
