//! An Instance is one running `opencode serve` of a Project. This module groups what touches it:
//! finding the program (`binary`), choosing its port (`ports`), confining it (`confine`),
//! spawning, identifying and stopping its processes (`process`), its CPU share while it starts
//! (`priority`), and talking to its HTTP API (`api`) and reading its event stream (`events`).
//! The lifecycle decisions are made in `ops`; nothing here reads or writes the state file.

pub mod api;
pub mod binary;
pub mod cgroupfs;
pub mod confine;
pub mod enforce;
pub mod events;
pub mod ports;
pub mod priority;
pub mod process;
