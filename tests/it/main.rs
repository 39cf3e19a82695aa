//! The single integration-test binary: the real `opencode-manager` binary driven through its CLI,
//! against the real OpenCode and a real sshd on loopback, plus a fake OpenCode for faults.
#![allow(unreachable_pub)]
// Tests start sshd, git and the binaries under test directly.
#![allow(clippy::disallowed_methods)]

mod agents;
mod dashboard;
mod faults;
mod gateway;
mod hardening;
mod harness_selftest;
mod home;
mod inputs;
mod isolation;
mod lifecycle;
mod mcp;
mod readme;
mod service;
mod supervisor;
mod support;
mod tidy;
mod upgrade;
