//! What confining an Instance costs at start, in one run:
//! - building the Landlock ruleset for one Instance (what the daemon does before each spawn),
//!   1,000 times in-process: median and p99 in microseconds;
//! - `restart` of a real OpenCode project to its ready reply, confined (`isolation = "auto"`)
//!   and not (`isolation = "off"`), alternating, N rounds each: median, min and max.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example bench_isolation -- [--rounds N]
//! ```
//! Needs git and the pinned OpenCode (`scripts/test` installs it into `.tools/`).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::disallowed_methods
)]

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use opencode_manager::config::{Config, Paths};
use opencode_manager::instance::confine::{self, Support};
use opencode_manager::project::ProjectName;
use opencode_manager::sandbox::{self, Reach};
use support::{Home, arg, file_repo, free_port, manifest};

/// A home whose instances run the real OpenCode, with `isolation` as given.
fn home(root: &std::path::Path, name: &str, isolation: &str, port_min: u16) -> Home {
    Home::new(
        root.join(name),
        &format!(
            "allow_file = true\nisolation = \"{isolation}\"\ngateway_port = {}\nport_min = {port_min}\nport_max = {}\n[instance_env]\nOPENCODE_DISABLE_MODELS_FETCH = \"1\"\n",
            free_port(),
            port_min + 5
        ),
        manifest(".tools/node_modules/.bin/opencode"),
    )
}

fn stats(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    let secs = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        secs(samples[samples.len() / 2]),
        secs(samples[0]),
        secs(samples[samples.len() - 1]),
    )
}

fn main() {
    let rounds = arg("--rounds", 10);
    let Support::Landlock { abi } = confine::detect() else {
        panic!("this machine offers no Landlock: {:?}", confine::detect());
    };
    let scratch = tempfile::tempdir().unwrap();

    // The ruleset, built as a launch builds it.
    let paths = Paths::new(scratch.path().join("ruleset-home"));
    std::fs::create_dir_all(paths.home()).unwrap();
    let config = Config::load(paths.clone()).unwrap();
    let project = ProjectName::parse("p").unwrap();
    std::fs::create_dir_all(paths.repo_dir(&project)).unwrap();
    std::fs::create_dir_all(paths.instance_dir(&project)).unwrap();
    std::fs::create_dir_all(paths.keys_dir()).unwrap();
    std::fs::write(paths.deploy_key(&project), "key").unwrap();
    let opencode = manifest(".tools/node_modules/.bin/opencode");
    let path_var = std::env::var("PATH").unwrap_or_default();
    let key = paths.deploy_key(&project);
    let reach = Reach {
        key: Some(&key),
        programs: &[opencode.as_path()],
        path_var: Some(&path_var),
        bind_ports: &[4100],
    };
    let mut builds = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        let plan = sandbox::confinement_plan(&config, &project, &reach);
        let confinement = confine::prepare(abi, &plan).unwrap();
        builds.push(t.elapsed());
        drop(confinement);
    }
    builds.sort();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "Landlock ABI {abi}: building one instance's ruleset (plan + rules), 1,000 times: median {:.0} µs, p99 {:.0} µs\n",
        micros(builds[500]),
        micros(builds[990])
    );

    // Restarts of a real OpenCode, confined and not, alternating.
    let url = file_repo(scratch.path());
    let base = 43000 + (std::process::id() % 500) as u16 * 20;
    let confined = home(scratch.path(), "confined", "auto", base);
    let open = home(scratch.path(), "open", "off", base + 10);
    for home in [&confined, &open] {
        let reply = home.cli(&["start", "p", "--git-url", &url]);
        assert_eq!(reply["status"], "success", "{reply}");
    }
    let restart = |home: &Home| {
        let t = Instant::now();
        let reply = home.cli(&["restart", "p"]);
        assert_eq!(reply["status"], "success", "{reply}");
        t.elapsed()
    };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        with.push(restart(&confined));
        without.push(restart(&open));
    }
    let status = confined.cli(&["status", "p"]);
    println!(
        "restart to ready reply, {rounds} alternating rounds each (milliseconds; isolation: {})\n",
        status["isolation"]
    );
    println!("| isolation | median | min | max |\n|---|---|---|---|");
    let (w50, wmin, wmax) = stats(&mut with);
    let (o50, omin, omax) = stats(&mut without);
    println!("| landlock (auto) | {w50:.0} | {wmin:.0} | {wmax:.0} |");
    println!("| off | {o50:.0} | {omin:.0} | {omax:.0} |");
    println!("| difference of medians | {:.0} | | |", w50 - o50);
}
