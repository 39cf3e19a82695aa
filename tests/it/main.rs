//! The single integration-test binary: the real `opencode-manager` binary driven through its CLI,
//! against the real OpenCode and a real sshd on loopback, plus a fake OpenCode for faults.
#![allow(unreachable_pub)]

mod faults;
mod harness_selftest;
mod home;
mod inputs;
mod lifecycle;
mod support;
