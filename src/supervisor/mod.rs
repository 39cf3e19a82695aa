//! The Supervisor: keeps wanted Projects running (restart with backoff, give up visibly), recycles
//! wedged servers, and parks idle ones.
//!
//! Decisions are made by the pure `policy`; this module only gathers observations and carries out
//! actions. Started when the daemon starts.

pub mod policy;
