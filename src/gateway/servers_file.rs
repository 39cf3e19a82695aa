//! `opencode-mcp-tool-servers.json`, kept current in the original's format (design Part A.5) for
//! tools that read it: one entry per Project with a usable `.env`, `active` while its Instance runs.
//!
//! The file holds the Instances' passwords, as the original's did, so it is written 0600 and
//! atomically, and only when its content changes. `added_at` is kept from the previous file.

use serde_json::{Value, json};

use crate::ops::Manager;
use crate::project::ProjectName;
use crate::state::InstanceRecord;

/// Rewrites the file if the Projects or their status changed.
pub fn update(manager: &Manager) {
    let path = manager.config().paths.servers_config();
    let previous: Value = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let added_at = |id: &str| {
        previous["servers"]
            .as_array()
            .and_then(|servers| servers.iter().find(|s| s["id"] == id))
            .and_then(|s| s["added_at"].as_str().map(str::to_owned))
    };
    let state = manager.store().snapshot();
    let mut servers = Vec::new();
    for (name, record) in &state.projects {
        let Ok(project) = ProjectName::parse(name) else {
            continue;
        };
        let Ok(env) = crate::project_env::load(&manager.config().paths.env_file(&project)) else {
            continue;
        };
        let Some(port) = record.port else { continue };
        let running = matches!(record.instance, InstanceRecord::Running { .. })
            && record
                .instance
                .proc()
                .is_some_and(|(p, _)| crate::instance::process::is_alive(p));
        servers.push(json!({
            "id": name,
            "title": title(name),
            "description": format!("OpenCode server for {name}"),
            "url": format!("http://127.0.0.1:{port}"),
            "password": env.password.expose(),
            "status": if running { "active" } else { "inactive" },
            "added_at": added_at(name).unwrap_or_else(crate::timestamp::now),
            "git_url": record.git_url,
            "sandbox_dir": manager.config().paths.sandbox(&project),
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
    if file == previous {
        return;
    }
    let mut text = serde_json::to_vec_pretty(&file).unwrap_or_default();
    text.push(b'\n');
    if let Err(err) = crate::atomic_file::replace(&path, &text, crate::atomic_file::PRIVATE) {
        tracing::warn!("writing {}: {err}", path.display());
    }
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
