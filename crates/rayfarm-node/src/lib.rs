//! A render node: the daemon that supervises it and the worker that renders for a master.
//!
//! The daemon (`daemon`) runs on every node, answers discovery, and on a master's request
//! starts a worker process (`rayfarm worker`), watches its health and stops it. The worker
//! (`worker`) connects to a master, receives the compiled scene once (cached on disk by content
//! hash), renders the units it is given on its threads and streams the results back.

pub mod config;
pub mod daemon;
pub mod relay;
pub mod worker;
