//! The shared-folder job: everything the client, the manager, the nodes and `rayfarm merge`
//! agree on about a job folder, and nothing about how they talk.
//!
//! A job lives in `NETDIR/<job-id>/`: a `job.desc` ([`jobdesc`] for a bake, [`renderjob`] for a
//! render; [`renderjob::AnyJobDesc`] reads either) with its keyed MAC, the compiled scene, and
//! `parts/`, where nodes write one part file each ([`parts`]). [`merge`] checks and merges the
//! parts into the final maps ([`maps`]) or images ([`images`]), replacing the placeholders the
//! client put at the outputs. [`folder`] owns the folder's confinement (no symlinks followed
//! out of it, paths checked against the network-folder roots) and the MACs that bind job.desc and
//! every part to the job id; [`fsutil`] the one atomic file writer everything goes through;
//! [`plan`] a job's id and how it is cut into parts.
//!
//! This crate does file IO only inside the folders it is given; it knows nothing of sockets,
//! SQLite or HTTP (the manager is `rayfarm-farm`; the worker, `rayfarm-node`, depends on this
//! crate alone to write its parts).
#![allow(clippy::type_complexity)]

pub mod folder;
pub mod fsutil;
pub mod images;
pub mod jobdesc;
pub mod maps;
pub mod merge;
pub mod parts;
pub mod plan;
pub mod renderjob;
