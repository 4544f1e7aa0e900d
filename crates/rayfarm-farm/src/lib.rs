//! The job manager's library: what a render farm keeps between restarts.
//!
//! A *job* is one piece of work a user asked for (bake the lightmaps of a level, render frames
//! 1-250); it is split into *tasks*, the pieces one node runs at a time. The manager hands tasks
//! to nodes, collects their reports, retries failures a bounded number of times, and lets users
//! pause, resume, cancel, reprioritise and delete jobs.
//!
//! - [`store`]: the persistent job queue. One SQLite file (WAL, `synchronous=FULL`, versioned
//!   migrations) holds jobs, tasks, leases and per-node failure counts; every state change is
//!   one transaction, so a manager that crashes and restarts loses nothing. Job and task status
//!   follow explicit state machines whose allowed transitions are tables in the code
//!   ([`store::JOB_TRANSITIONS`], [`store::TASK_TRANSITIONS`]).
//!
//! - The job folder itself (job.desc, parts, merge, maps, images) is `rayfarm-job`'s.
//!   [`manager`] and [`api`] are the service (its node and session decisions, IO-free, in
//!   [`core`]), [`db`] the store's thread, [`service`] wires them to [`http`], the HTTP
//!   transport and its limits; [`registry`] the bounded table of self-registered
//!   daemons, [`preview`] the monitor's bounded, cached previews.
//!
//! The store is synchronous and does no network IO: the manager owns it on a thread of its own
//! ([`db::StoreHandle`]), so no SQLite commit runs on a tokio thread, and it alone talks to
//! nodes. What a task's `spec` means (a bake pass, a
//! frame range) is the caller's business: the store keeps it as opaque JSON text.
#![allow(clippy::type_complexity)]

pub mod api;
pub mod core;
pub mod db;
pub mod http;
pub mod live;
pub mod manager;
pub mod preview;
pub mod registry;
pub mod service;
pub mod store;

pub use store::{
    JobInfo, JobKind, JobStatus, NewJob, NewTask, Reclaimed, StopTask, Store, StoreError,
    TaskAssignment, TaskCounts, TaskDone, TaskFailed, TaskId, TaskInfo, TaskStatus,
};
