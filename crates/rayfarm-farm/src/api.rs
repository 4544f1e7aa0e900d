//! The manager's HTTP JSON API (version 1, under `/api/v1`); PROTOCOL.md documents it.
//!
//! Errors are `{"error": "..."}` with 400 (bad request), 404 (no such job), 409 (not allowed
//! in the job's state) or 500.

use crate::manager::{load_job, now_ms, JobSpec, Manager, TaskSpec};
use crate::store::{NewJob, NewTask, StoreError};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;

type Mgr = State<Arc<Manager>>;

pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::NoSuchJob(_) | StoreError::NoSuchTask(_) => StatusCode::NOT_FOUND,
            StoreError::BadTransition { .. } | StoreError::JobRunning { .. } => {
                StatusCode::CONFLICT
            }
            StoreError::BadJobId { .. } | StoreError::InvalidJob(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

pub fn router(_m: Arc<Manager>) -> Router<Arc<Manager>> {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/jobs", get(jobs).post(submit))
        .route("/api/v1/jobs/{id}", get(job).delete(delete))
        .route("/api/v1/jobs/{id}/pause", post(pause))
        .route("/api/v1/jobs/{id}/resume", post(resume))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/jobs/{id}/preview.png", get(preview))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/register", post(register))
        .route("/api/v1/events", get(events))
}

/// A job as the API shows it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct JobJson {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub status: String,
    pub priority: i32,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub progress: f64,
    pub tasks: serde_json::Value,
    pub error: Option<String>,
}

fn job_json(j: crate::store::JobInfo) -> JobJson {
    JobJson {
        id: j.id,
        name: j.name,
        kind: j.kind.as_str().to_string(),
        status: j.status.as_str().to_string(),
        priority: j.priority,
        created_ms: j.created_at_ms,
        updated_ms: j.updated_at_ms,
        progress: j.progress,
        tasks: serde_json::to_value(j.tasks).unwrap_or_default(),
        error: j.error,
    }
}

fn store(m: &Manager) -> std::sync::MutexGuard<'_, crate::store::Store> {
    m.store.lock().unwrap_or_else(|p| p.into_inner())
}

async fn status(State(m): Mgr) -> Result<Json<serde_json::Value>, ApiError> {
    let jobs = store(&m).list_jobs()?.len();
    Ok(Json(json!({
        "version": m.version(),
        "uptime_s": m.uptime_s(),
        "jobs": jobs,
        "nodes": m.nodes().len(),
        "worker_port": m.worker_port,
    })))
}

async fn jobs(State(m): Mgr) -> Result<Json<serde_json::Value>, ApiError> {
    let jobs: Vec<JobJson> = store(&m).list_jobs()?.into_iter().map(job_json).collect();
    Ok(Json(json!({ "jobs": jobs })))
}

async fn job(State(m): Mgr, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let s = store(&m);
    let j = job_json(s.job(&id)?);
    let tasks: Vec<serde_json::Value> = s
        .tasks(&id)?
        .into_iter()
        .map(|t| {
            json!({
                "index": t.index, "name": t.name, "status": t.status.as_str(),
                "attempts": t.attempts, "node": t.node, "error": t.error,
            })
        })
        .collect();
    Ok(Json(json!({ "job": j, "tasks": tasks })))
}

/// `POST /api/v1/jobs`: a job folder the client prepared.
#[derive(Deserialize)]
pub struct SubmitRequest {
    /// Absolute path of NETWORK_FOLDER/<job-id> as the manager sees it.
    pub job_dir: String,
    #[serde(default)]
    pub priority: i32,
}

async fn submit(
    State(m): Mgr,
    Json(req): Json<SubmitRequest>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let dir = std::path::PathBuf::from(&req.job_dir);
    if !dir.is_absolute()
        || dir.components().any(|c| {
            !matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        })
    {
        return Err(bad(format!(
            "job_dir '{}' must be an absolute path without '..'",
            req.job_dir
        )));
    }
    let id = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad("job_dir has no folder name"))?
        .to_string();
    crate::store::validate_job_id(&id).map_err(|e| bad(e.to_string()))?;
    let ctx = {
        let (id, dir) = (id.clone(), dir.clone());
        tokio::task::spawn_blocking(move || load_job(&id, &dir))
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(bad)?
    };
    let tasks = (0..ctx.desc.part_count())
        .map(|i| {
            Ok(NewTask {
                name: ctx.desc.part_label(i),
                spec: serde_json::to_string(&TaskSpec { part: i })
                    .map_err(|e| bad(e.to_string()))?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let name = if ctx.desc.name().is_empty() {
        id.clone()
    } else {
        ctx.desc.name().to_string()
    };
    let spec = serde_json::to_string(&JobSpec {
        job_dir: req.job_dir.clone(),
    })
    .map_err(|e| bad(e.to_string()))?;
    let new_id = store(&m).submit(NewJob {
        id: Some(id.clone()),
        name,
        kind: ctx.desc.kind(),
        priority: req.priority,
        spec,
        tasks,
    })?;
    m.event(
        "info",
        format!("job {new_id} submitted ({} tasks)", ctx.desc.part_count()),
        Some(&new_id),
        None,
    );
    Ok((StatusCode::CREATED, Json(json!({ "id": new_id }))))
}

async fn pause(State(m): Mgr, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    store(&m).pause(&id)?;
    m.event("info", format!("job {id} paused"), Some(&id), None);
    job(State(m), Path(id)).await
}

async fn resume(
    State(m): Mgr,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    store(&m).resume(&id)?;
    m.event("info", format!("job {id} resumed"), Some(&id), None);
    job(State(m), Path(id)).await
}

async fn cancel(
    State(m): Mgr,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let stopped = store(&m).cancel(&id)?;
    m.event(
        "info",
        format!(
            "job {id} canceled ({} running task(s) abandoned)",
            stopped.len()
        ),
        Some(&id),
        None,
    );
    job(State(m), Path(id)).await
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

async fn delete(
    State(m): Mgr,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    store(&m).delete(&id, q.force)?;
    m.event("info", format!("job {id} deleted"), Some(&id), None);
    Ok(Json(json!({ "deleted": id })))
}

async fn preview(State(m): Mgr, Path(id): Path<String>) -> Result<Response, ApiError> {
    let spec = store(&m).job_spec(&id)?;
    let spec: JobSpec = serde_json::from_str(&spec).map_err(|e| bad(e.to_string()))?;
    let png = tokio::task::spawn_blocking(move || {
        crate::preview::preview_png(std::path::Path::new(&spec.job_dir))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match png {
        Some(bytes) => {
            Ok(([(axum::http::header::CONTENT_TYPE, "image/png")], bytes).into_response())
        }
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("job {id} has no preview yet"),
        )),
    }
}

async fn nodes(State(m): Mgr) -> Json<serde_json::Value> {
    Json(json!({ "nodes": m.nodes() }))
}

/// `POST /api/v1/nodes/register`: a daemon announces itself.
#[derive(Deserialize)]
pub struct RegisterRequest {
    /// `HOST:PORT` of the daemon, as the manager can reach it.
    pub addr: String,
}

async fn register(
    State(m): Mgr,
    Json(r): Json<RegisterRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ok = r.addr.len() <= 256
        && r.addr.rsplit_once(':').is_some_and(|(host, port)| {
            port.parse::<u16>().is_ok_and(|p| p > 0)
                && !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        });
    if !ok {
        return Err(bad(format!("'{}' is not a HOST:PORT address", r.addr)));
    }
    if m.register(r.addr.clone()) {
        m.event(
            "info",
            format!("daemon {} registered", r.addr),
            None,
            Some(&r.addr),
        );
    }
    Ok(Json(json!({ "registered": r.addr, "time_ms": now_ms() })))
}

async fn events(State(m): Mgr) -> Json<serde_json::Value> {
    Json(json!({ "events": m.events() }))
}
