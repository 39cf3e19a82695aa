//! The HTTP client users have: Python's `httpx` (what the official MCP SDK uses), in a venv under
//! `target/bench-venv`, made on first use with the pinned version. Benchmarks run a small Python
//! program with it and read its one line of JSON.

use std::path::PathBuf;
use std::process::Command;

/// The httpx version the official Python MCP SDK (mcp 2.3.0) installs.
const HTTPX: &str = "httpx==0.28.1";

/// The venv's python, creating the venv and installing httpx when needed.
pub(crate) fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-venv");
    let python = venv.join("bin/python3");
    let has_httpx = |python: &PathBuf| {
        Command::new(python)
            .args(["-c", "import httpx"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.exists() && has_httpx(&python) {
        return python;
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        made,
        "python3 -m venv {} failed: install python3 and python3-venv",
        venv.display()
    );
    let installed = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", HTTPX])
        .status()
        .is_ok_and(|s| s.success());
    assert!(installed, "pip install {HTTPX} failed");
    python
}

/// Runs `program` (Python source) with httpx available; returns its last stdout line as JSON.
pub(crate) fn run(program: &str, args: &[String]) -> serde_json::Value {
    let output = Command::new(python())
        .arg("-c")
        .arg(program)
        .args(args)
        .output()
        .expect("running python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("one line of JSON")
}
