//! Tidy: the invariants ARCHITECTURE.md states about the code's shape, checked on the source text
//! (in the manner of rust-analyzer's tidy tests). Each test names the invariant it holds; a
//! failure lists every offending file and line. Test code (`mod tests { … }` at the end of a file,
//! `tests.rs` files) is exempt where the invariant is about the product.

use std::path::{Path, PathBuf};

/// The crate's modules from the doors down to the leaves. A module may use only modules after
/// it: `ops` never reaches the `gateway`, the `supervisor` never reaches `ops`, `lifecycle`
/// reaches neither, and `config` reaches only plain values.
const LAYERS: &[&str] = &[
    "cli",
    "mcp",
    "acp_bridge",
    "daemon",
    "gateway",
    "dashboard",
    "dispatch",
    "protocol",
    "ops",
    "supervisor",
    "lifecycle",
    "deploy_key",
    "git",
    "sandbox",
    "instance",
    "env_cache",
    "project_env",
    "metrics",
    "snapshot",
    "state",
    "trust",
    "config",
    "limits",
    "policy",
    "project",
    "agent",
    "reply",
    "error",
    "front_door",
    "audit",
    "clients",
    "atomic_file",
    "envfile",
    "fs_watch",
    "logs",
    "secrets",
    "timestamp",
];

struct Source {
    /// Relative to `src/`.
    path: String,
    text: String,
    /// The product code: without the trailing `mod tests`, without `//` comments; empty for a
    /// test-only file.
    code: String,
}

impl Source {
    /// The top-level module the file belongs to (`ops/start.rs` → `ops`).
    fn module(&self) -> &str {
        let first = self.path.split('/').next().unwrap_or_default();
        first.strip_suffix(".rs").unwrap_or(first)
    }

    /// Lines of the product code holding `needle`, as `path:line: text`.
    fn find(&self, needle: &str) -> Vec<String> {
        self.code
            .lines()
            .enumerate()
            .filter(|(_, line)| line.contains(needle))
            .map(|(n, line)| format!("src/{}:{}: {}", self.path, n + 1, line.trim()))
            .collect()
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sources() -> Vec<Source> {
    let mut files = Vec::new();
    collect(&root().join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).expect("read source");
            let path = file
                .strip_prefix(root().join("src"))
                .expect("under src")
                .to_string_lossy()
                .into_owned();
            let code = if path.ends_with("/tests.rs") {
                String::new()
            } else {
                product_code(&text)
            };
            Source { path, text, code }
        })
        .collect()
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The text before the file's unit tests, with line comments blanked (line numbers stay).
fn product_code(text: &str) -> String {
    let end = text.find("#[cfg(test)]\nmod tests {").unwrap_or(text.len());
    text[..end]
        .lines()
        .map(|line| match line.find("//") {
            // Keep URLs in strings ("http://…"): only a `//` after whitespace or at the start
            // begins a comment here.
            Some(at) if at == 0 || line[..at].ends_with(char::is_whitespace) => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Fails with every offence, one per line.
fn assert_none(rule: &str, offences: Vec<String>) {
    assert!(offences.is_empty(), "{rule}:\n{}", offences.join("\n"));
}

fn in_files(allowed: &[&str], path: &str) -> bool {
    allowed
        .iter()
        .any(|a| path == *a || (a.ends_with('/') && path.starts_with(a)))
}

#[test]
fn every_file_opens_with_a_paragraph_saying_what_it_owns() {
    let offences = sources()
        .iter()
        .filter(|s| !s.text.starts_with("//!"))
        .map(|s| format!("src/{}", s.path))
        .collect();
    assert_none("files without a //! paragraph", offences);
}

#[test]
fn modules_use_only_modules_below_them() {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).expect("lib.rs");
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_suffix(';'))
        .filter_map(|l| l.rsplit_once("mod ").map(|(_, name)| name))
        .collect();
    assert_eq!(
        declared, LAYERS,
        "lib.rs declares the modules in layer order, doors first"
    );
    let mut offences = Vec::new();
    for source in sources() {
        let Some(own) = LAYERS.iter().position(|m| *m == source.module()) else {
            continue;
        };
        for (n, line) in source.code.lines().enumerate() {
            for used in used_modules(line) {
                let Some(at) = LAYERS.iter().position(|m| *m == used) else {
                    continue;
                };
                if at < own {
                    offences.push(format!(
                        "src/{}:{}: {} uses {used}, which is above it",
                        source.path,
                        n + 1,
                        source.module()
                    ));
                }
            }
        }
    }
    assert_none("imports against the layers", offences);
}

/// The crate modules a line names: `crate::x::…` and `crate::{x, y::…}`.
fn used_modules(line: &str) -> Vec<String> {
    let mut used = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            used.extend(inner.split(',').map(|part| {
                part.trim()
                    .split("::")
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            }));
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            used.push(name);
        }
    }
    used
}

#[test]
fn processes_are_started_only_by_their_owners() {
    // Instances; git; npm and `--version`; systemd-run and systemctl; the daemon; doctor's
    // `git --version`, `ssh -V`, `npm --version`; `xdg-open` for `dashboard --open`; the ACP
    // bridge's one agent. Clippy refuses `Command::new` elsewhere; this keeps the list of
    // exceptions to these.
    let owners = [
        "instance/process.rs",
        "acp_bridge/mod.rs",
        "git.rs",
        "instance/binary.rs",
        "instance/cgroupfs.rs",
        "daemon/client.rs",
        "ops/doctor.rs",
        "cli/mod.rs",
        "bin/",
    ];
    let offences = sources()
        .iter()
        .filter(|s| !in_files(&owners, &s.path))
        .flat_map(|s| {
            let mut found = s.find("Command::new");
            found.extend(s.find("disallowed_methods"));
            found
        })
        .collect();
    assert_none("processes started outside their owners", offences);
    let git = sources()
        .iter()
        .filter(|s| !in_files(&["git.rs", "ops/doctor.rs", "bin/"], &s.path))
        .flat_map(|s| s.find("Command::new(\"git\")"))
        .collect();
    assert_none("git run outside git.rs", git);
}

#[test]
fn signals_go_only_to_processes_proven_ours() {
    // `instance::process` signals Instances (pinned by pidfd, or their own process group);
    // `lifecycle::adopt` stops the original's per-project MCP tools once proven by their command
    // line; `daemon::client` asks a proven older daemon to exit.
    let owners = [
        "instance/process.rs",
        "lifecycle/adopt.rs",
        "daemon/client.rs",
        "bin/",
    ];
    let offences = sources()
        .iter()
        .filter(|s| !in_files(&owners, &s.path))
        .flat_map(|s| {
            let mut found = s.find("pidfd_send_signal");
            found.extend(s.find("kill_process"));
            found.extend(s.find("libc::kill"));
            found
        })
        .collect();
    assert_none("signals sent outside their owners", offences);
}

#[test]
fn only_the_cli_prints() {
    let offences = sources()
        .iter()
        .filter(|s| !in_files(&["cli/", "bin/"], &s.path))
        .flat_map(|s| {
            [
                "println!",
                "print!(",
                "eprintln!",
                "eprint!(",
                "io::stdout()",
                "io::stderr()",
                "dbg!(",
            ]
            .iter()
            .flat_map(|needle| s.find(needle))
            .collect::<Vec<_>>()
        })
        .collect();
    assert_none("printing outside cli/", offences);
}

#[test]
fn nothing_sleeps_a_thread_outside_tests() {
    let offences = sources()
        .iter()
        .filter(|s| !in_files(&["bin/"], &s.path))
        .flat_map(|s| s.find("thread::sleep"))
        .collect();
    assert_none("std::thread::sleep in product code", offences);
}

#[test]
fn nothing_changes_the_process_wide_umask() {
    // The daemon's threads create files all the time: a umask change would give them its mode.
    let offences = sources()
        .iter()
        .filter(|s| !in_files(&["bin/"], &s.path))
        .flat_map(|s| s.find("umask("))
        .collect();
    assert_none("umask changed in product code", offences);
}

#[test]
fn only_timestamp_reads_the_wall_clock() {
    let offences = sources()
        .iter()
        .filter(|s| !in_files(&["timestamp.rs", "bin/"], &s.path))
        .flat_map(|s| s.find("SystemTime::now"))
        .collect();
    assert_none("the wall clock read outside timestamp.rs", offences);
}

#[test]
fn only_the_store_opens_the_state_file() {
    let offences = sources()
        .iter()
        .filter(|s| !in_files(&["state/store.rs", "config.rs"], &s.path))
        .flat_map(|s| s.find("state_file()"))
        // Naming it in a message is fine.
        .filter(|line| !line.contains("state_file().display()"))
        .collect();
    assert_none("the state file touched outside state::store", offences);
}

#[test]
fn protocol_crates_stay_at_the_doors() {
    let rmcp = sources()
        .iter()
        .filter(|s| !in_files(&["mcp/", "gateway/"], &s.path))
        .flat_map(|s| s.find("rmcp::"))
        .collect();
    assert_none("rmcp outside mcp/ and gateway/", rmcp);
    let axum = sources()
        .iter()
        .filter(|s| {
            !in_files(
                &[
                    "mcp/http.rs",
                    "gateway/",
                    "dashboard/",
                    "acp_bridge/",
                    "front_door.rs",
                ],
                &s.path,
            )
        })
        .flat_map(|s| s.find("axum::"))
        .collect();
    assert_none(
        "axum outside mcp/http.rs, gateway/, dashboard/, acp_bridge/ and front_door.rs",
        axum,
    );
    // The ACP crate stays in the bridge: the daemon never parses what an agent writes.
    let acp = sources()
        .iter()
        .filter(|s| !in_files(&["acp_bridge/"], &s.path))
        .flat_map(|s| s.find("agent_client_protocol::"))
        .collect();
    assert_none("agent_client_protocol outside acp_bridge/", acp);
}

#[test]
fn secrets_cannot_be_serialised() {
    let secrets = std::fs::read_to_string(root().join("src/secrets.rs")).expect("secrets.rs");
    assert!(
        !product_code(&secrets).contains("Serialize"),
        "Secret must not implement Serialize"
    );
}

#[test]
fn comments_cite_only_documents_in_the_repository() {
    let mut offences = Vec::new();
    for source in sources() {
        for (n, line) in source.text.lines().enumerate() {
            let at = format!("src/{}:{}", source.path, n + 1);
            if line.contains('§') {
                offences.push(format!("{at}: cites a section of an outside document"));
            }
            for word in line.split(|c: char| c.is_whitespace() || "`()[],;".contains(c)) {
                let Some(doc) = word.strip_suffix(".md") else {
                    continue;
                };
                let doc = format!("{doc}.md");
                let known = [root().join(&doc), root().join("docs").join(&doc)]
                    .iter()
                    .any(|p| p.is_file());
                if !known {
                    offences.push(format!("{at}: cites {doc}, which is not in the repository"));
                }
            }
        }
    }
    assert_none("comments citing outside documents", offences);
}

#[test]
fn no_file_grows_past_six_hundred_lines_of_product_code() {
    let offences = sources()
        .iter()
        .filter(|s| s.code.lines().count() > 600)
        .map(|s| format!("src/{}: {} lines", s.path, s.code.lines().count()))
        .collect();
    assert_none("files to split", offences);
}
