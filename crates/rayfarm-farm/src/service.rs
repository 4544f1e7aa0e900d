//! The manager as a service: [`crate::manager::start`] (queue, worker port, daemon scans) with
//! [`crate::api`]'s routes served over [`crate::http`]. The one place the three meet, so the
//! manager never depends on its API.

use crate::manager::{Manager, ManagerConfig, ManagerError};
use std::sync::Arc;
use tokio::sync::watch;

/// Starts the manager and serves its API (and `extra_routes`, the monitor) until `stop` flips.
pub async fn run(
    cfg: ManagerConfig,
    extra_routes: axum::Router<Arc<Manager>>,
    stop: watch::Receiver<bool>,
) -> Result<(), ManagerError> {
    let started = crate::manager::start(cfg, stop.clone()).await?;
    let app = crate::api::router(started.mgr.clone())
        .merge(extra_routes)
        .with_state(started.mgr.clone());
    let gate = crate::api::manager_gate(started.mgr.clone());
    let (_, serving) = crate::http::serve(
        started.http,
        app,
        crate::http::HttpLimits::default(),
        started.tls,
        Some(gate),
        stop,
    );
    serving.await;
    Ok(())
}
