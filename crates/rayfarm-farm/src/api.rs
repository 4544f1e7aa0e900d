//! The manager's HTTP JSON API (version 1, under `/api/v1`); PROTOCOL.md documents it.
//!
//! Every route here, reads included, answers only requests carrying the farm's API token
//! (`Authorization: Bearer rft1-...`, see `rayfarm key api-token`). The check is one layer
//! around the whole router ([`require_token`]), so a handler never runs for a request without
//! it: a missing or wrong token gets 401 with `WWW-Authenticate: Bearer`. The API sets no
//! cookies and sends no CORS headers, so a page on another site can neither send the token (it
//! does not have it) nor read an answer.
//!
//! Errors are `{"error": "..."}` with 400 (bad request), 401 (no or wrong token), 404 (no such
//! job), 409 (not allowed in the job's state), 503 (a limit is reached) or 500. The transport
//! limits (body size, timeouts, connections) are [`crate::http`]'s.

use crate::manager::{load_job, now_ms, JobSpec, Manager, TaskSpec};
use crate::registry::Registered;
use crate::store::{NewJob, NewTask, StoreError};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
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

/// The API's routes, every one behind [`require_token`] with `m`'s farm key.
pub fn router(m: Arc<Manager>) -> Router<Arc<Manager>> {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/jobs", get(jobs).post(submit))
        .route("/api/v1/jobs/{id}", get(job).delete(delete))
        .route("/api/v1/jobs/{id}/pause", post(pause))
        .route("/api/v1/jobs/{id}/resume", post(resume))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/jobs/{id}/priority", post(priority))
        .route("/api/v1/jobs/{id}/preview.png", get(preview))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/register", post(register))
        .route("/api/v1/events", get(events))
        .route("/metrics", get(metrics))
        // Unknown API paths are behind the token too, so they reveal nothing either.
        .route("/api/v1", any(no_such_route))
        .route("/api/v1/{*rest}", any(no_such_route))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(m.key().clone()),
            require_token,
        ))
}

/// Prometheus text exposition (version 0.0.4) of the queue and the nodes, behind the token
/// like the API (Prometheus sends it with `authorization: { credentials: TOKEN }`).
async fn metrics(State(m): Mgr) -> Result<Response, ApiError> {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    let mut jobs: BTreeMap<String, u64> = BTreeMap::new();
    let mut tasks: BTreeMap<&str, u64> = BTreeMap::new();
    let known = known_nodes(&m);
    let listed = db(&m, move |s| {
        s.list_jobs().map(|l| {
            l.into_iter()
                .map(|j| (j.tasks, job_json(s, &known, j).status))
                .collect::<Vec<_>>()
        })
    })
    .await?;
    {
        for (t, status) in listed {
            for (state, n) in [
                ("queued", t.queued),
                ("running", t.running),
                ("completed", t.completed),
                ("failed", t.failed),
                ("canceled", t.canceled),
            ] {
                *tasks.entry(state).or_default() += n;
            }
            *jobs.entry(status).or_default() += 1;
        }
    }
    let mut nodes: BTreeMap<String, u64> = BTreeMap::new();
    for n in m.nodes() {
        *nodes.entry(n.state).or_default() += 1;
    }
    let mut out = String::new();
    let mut family = |name: &str, help: &str, label: &str, values: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (v, n) in values {
            let _ = writeln!(out, "{name}{{{label}=\"{v}\"}} {n}");
        }
    };
    family(
        "rayfarm_jobs",
        "Jobs in the queue by status.",
        "status",
        jobs.into_iter().collect(),
    );
    family(
        "rayfarm_tasks",
        "Tasks of the jobs in the queue by status.",
        "status",
        tasks.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    );
    family(
        "rayfarm_nodes",
        "Nodes the manager knows, by state.",
        "state",
        nodes.into_iter().collect(),
    );
    let _ = writeln!(
        out,
        "# HELP rayfarm_registered_nodes Daemons registered with the manager.\n# TYPE rayfarm_registered_nodes gauge\nrayfarm_registered_nodes {}",
        m.registered_count()
    );
    let _ = writeln!(
        out,
        "# HELP rayfarm_uptime_seconds Time since the manager started.\n# TYPE rayfarm_uptime_seconds gauge\nrayfarm_uptime_seconds {}",
        m.uptime_s()
    );
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

async fn no_such_route() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such API route".into())
}

/// What a request without the right token is told.
pub const UNAUTHORIZED_MESSAGE: &str = "this manager's API needs the farm's API token: send \
    `Authorization: Bearer TOKEN` with the token `rayfarm key api-token` prints (with the farm key)";

/// The bearer-token check in front of every API route: the request goes on only when its
/// `Authorization` header is `Bearer <the farm's API token>` (compared in constant time);
/// otherwise 401 and the handler never runs.
pub async fn require_token(
    State(key): State<Arc<rayfarm_proto::FarmKey>>,
    req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        });
    match presented {
        Some(token) if key.verify_api_token(token) => next.run(req).await,
        _ => {
            static REFUSED: crate::http::RateLog = crate::http::RateLog::new(
                "API request(s) refused for want of the farm's API token",
            );
            REFUSED.event(&format!("{} {}", req.method(), req.uri().path()));
            // (The body was read whole before this layer: see `http::read_body`.)
            let mut r =
                ApiError(StatusCode::UNAUTHORIZED, UNAUTHORIZED_MESSAGE.into()).into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"rayfarm\""),
            );
            r
        }
    }
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
    /// Why a `blocked` job cannot run (status `blocked` is shown instead of `queued` or
    /// `active` while no known node may take its tasks).
    #[serde(default)]
    pub blocked: Option<String>,
}

/// The aliases of the nodes the manager knows and could reach lately.
fn known_nodes(m: &Manager) -> Vec<String> {
    let mut v: Vec<String> = m
        .nodes()
        .into_iter()
        .filter(|n| !n.alias.is_empty() && n.state != "unreachable" && n.state != "lost")
        .map(|n| n.alias)
        .collect();
    v.sort();
    v.dedup();
    v
}

fn job_json(s: &crate::store::Store, known: &[String], j: crate::store::JobInfo) -> JobJson {
    let excluded = s.excluded_nodes(&j.id).unwrap_or_default();
    let blocked = crate::manager::blocked_reason(&j, known, &excluded);
    JobJson {
        blocked: blocked.clone(),
        id: j.id,
        name: j.name,
        kind: j.kind.as_str().to_string(),
        status: if blocked.is_some() {
            "blocked".to_string()
        } else {
            j.status.as_str().to_string()
        },
        priority: j.priority,
        created_ms: j.created_at_ms,
        updated_ms: j.updated_at_ms,
        progress: j.progress,
        tasks: serde_json::to_value(j.tasks).unwrap_or_default(),
        error: j.error,
    }
}

/// Runs `f` on the job store's thread ([`crate::db`]): no SQLite call blocks the runtime.
async fn db<R: Send + 'static>(
    m: &Manager,
    f: impl FnOnce(&mut crate::store::Store) -> R + Send + 'static,
) -> R {
    m.store.call(f).await
}

async fn status(State(m): Mgr) -> Result<Json<serde_json::Value>, ApiError> {
    let jobs = db(&m, |s| s.list_jobs()).await?.len();
    Ok(Json(json!({
        "version": m.version(),
        "uptime_s": m.uptime_s(),
        "jobs": jobs,
        "nodes": m.nodes().len(),
        "registered_nodes": m.registered_count(),
        "worker_port": m.worker_port,
    })))
}

async fn jobs(State(m): Mgr) -> Result<Json<serde_json::Value>, ApiError> {
    let known = known_nodes(&m);
    let jobs: Vec<JobJson> = db(&m, move |s| {
        s.list_jobs()
            .map(|l| l.into_iter().map(|j| job_json(s, &known, j)).collect())
    })
    .await?;
    Ok(Json(json!({ "jobs": jobs })))
}

async fn job(State(m): Mgr, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let known = known_nodes(&m);
    let (j, tasks) = db(&m, move |s| -> Result<_, crate::store::StoreError> {
        Ok((job_json(s, &known, s.job(&id)?), s.tasks(&id)?))
    })
    .await?;
    let tasks: Vec<serde_json::Value> = tasks
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
    // Only folders inside the manager's network folders, canonicalized (so neither `..` nor a
    // symlink leads out), and one message whatever the reason: the API must not tell a caller
    // whether some path exists on the manager's machine.
    let dir = m
        .roots
        .resolve(std::path::Path::new(&req.job_dir))
        .map_err(|e| bad(e.to_string()))?;
    let id = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad("job_dir has no folder name"))?
        .to_string();
    crate::store::validate_job_id(&id).map_err(|e| bad(e.to_string()))?;
    let ctx = {
        let (id, dir) = (id.clone(), dir.clone());
        let key = m.key().clone();
        tokio::task::spawn_blocking(move || load_job(&id, &dir, &key))
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
        job_dir: dir.display().to_string(),
    })
    .map_err(|e| bad(e.to_string()))?;
    let job = NewJob {
        id: Some(id.clone()),
        name,
        kind: ctx.desc.kind().into(),
        priority: req.priority,
        spec,
        tasks,
    };
    let new_id = db(&m, move |s| s.submit(job)).await?;
    // Whatever was cached of an earlier job of this id is not this job's.
    m.forget_job(&new_id);
    m.event(
        "info",
        format!("job {new_id} submitted ({} tasks)", ctx.desc.part_count()),
        Some(&new_id),
        None,
    );
    Ok((StatusCode::CREATED, Json(json!({ "id": new_id }))))
}

async fn pause(State(m): Mgr, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    let i = id.clone();
    db(&m, move |s| s.pause(&i)).await?;
    m.event("info", format!("job {id} paused"), Some(&id), None);
    job(State(m), Path(id)).await
}

async fn resume(
    State(m): Mgr,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let i = id.clone();
    db(&m, move |s| s.resume(&i)).await?;
    m.event("info", format!("job {id} resumed"), Some(&id), None);
    job(State(m), Path(id)).await
}

async fn cancel(
    State(m): Mgr,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let i = id.clone();
    let stopped = db(&m, move |s| s.cancel(&i)).await?;
    m.forget_job(&id);
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
#[serde(deny_unknown_fields)]
struct PriorityBody {
    priority: i32,
}

async fn priority(
    State(m): Mgr,
    Path(id): Path<String>,
    Json(b): Json<PriorityBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !(-1000..=1000).contains(&b.priority) {
        return Err(bad(format!(
            "priority {} is out of range: use -1000 to 1000",
            b.priority
        )));
    }
    let (i, p) = (id.clone(), b.priority);
    db(&m, move |s| s.set_priority(&i, p)).await?;
    m.event(
        "info",
        format!("job {id}: priority {}", b.priority),
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
    let (i, force) = (id.clone(), q.force);
    db(&m, move |s| s.delete(&i, force)).await?;
    m.previews.evict(&id);
    m.forget_job(&id);
    m.event("info", format!("job {id} deleted"), Some(&id), None);
    Ok(Json(json!({ "deleted": id })))
}

async fn preview(State(m): Mgr, Path(id): Path<String>) -> Result<Response, ApiError> {
    let i = id.clone();
    let (spec, key) = db(&m, move |s| -> Result<_, crate::store::StoreError> {
        let j = s.job(&i)?;
        let key = (
            j.updated_at_ms,
            j.tasks.completed,
            j.status.as_str().to_string(),
        );
        Ok((s.job_spec(&i)?, key))
    })
    .await?;
    let spec: JobSpec = serde_json::from_str(&spec).map_err(|e| bad(e.to_string()))?;
    let png = m
        .previews
        .get(&id, key, std::path::PathBuf::from(&spec.job_dir), m.key())
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    match png {
        Some(bytes) => Ok((
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            bytes.to_vec(),
        )
            .into_response()),
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
    if let Err(e) = rayfarm_proto::addr::check_host_port(&r.addr, 256) {
        return Err(bad(format!("cannot register: {e}")));
    }
    match m.register(&r.addr) {
        Registered::New => m.event(
            "info",
            format!("daemon {} registered", r.addr),
            None,
            Some(&r.addr),
        ),
        Registered::Renewed => {}
        Registered::Full => {
            static FULL: crate::http::RateLog = crate::http::RateLog::new(
                "registration(s) refused: the registered-daemon limit is reached",
            );
            FULL.event(&r.addr);
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                "the manager already has {} registered daemons, its limit; {} was not registered \
                     (registrations not renewed for {} min expire)",
                m.registered_limit(),
                r.addr,
                crate::registry::REGISTRATION_TTL_MS / 60_000
            ),
            ));
        }
    }
    Ok(Json(json!({ "registered": r.addr, "time_ms": now_ms() })))
}

async fn events(State(m): Mgr) -> Json<serde_json::Value> {
    Json(json!({ "events": m.events() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    /// A router whose one handler counts its runs, behind [`require_token`].
    fn guarded(key: &rayfarm_proto::FarmKey, runs: Arc<AtomicUsize>) -> Router {
        Router::new()
            .route(
                "/api/v1/jobs/{id}/cancel",
                post(move || async move {
                    runs.fetch_add(1, Ordering::Relaxed);
                    "done"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(key.clone()),
                require_token,
            ))
    }

    async fn call(app: &Router, auth: Option<&str>) -> (StatusCode, Option<String>, String) {
        let mut req = axum::http::Request::post("/api/v1/jobs/j1/cancel")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ORIGIN, "http://evil.example");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let r = app
            .clone()
            .oneshot(req.body(Body::from("x=1")).unwrap())
            .await
            .unwrap();
        let status = r.status();
        let www = r
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, www, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn only_the_farms_token_reaches_a_handler() {
        let key = rayfarm_proto::FarmKey::from_secret("unit-test-farm-key-1").unwrap();
        let other = rayfarm_proto::FarmKey::from_secret("unit-test-farm-key-2").unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let app = guarded(&key, runs.clone());
        let wrong = format!("Bearer {}", other.api_token());
        let bare = key.api_token();
        let basic = format!("Basic {}", key.api_token());
        for auth in [
            None,
            Some(wrong.as_str()),
            Some(bare.as_str()),
            Some(basic.as_str()),
            Some("Bearer "),
        ] {
            let (status, www, body) = call(&app, auth).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
            assert_eq!(www.as_deref(), Some("Bearer realm=\"rayfarm\""));
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(
                v["error"]
                    .as_str()
                    .unwrap()
                    .contains("rayfarm key api-token"),
                "{body}"
            );
        }
        assert_eq!(
            runs.load(Ordering::Relaxed),
            0,
            "a handler ran without the token"
        );
        for auth in [
            format!("Bearer {}", key.api_token()),
            format!("bearer {}", key.api_token()),
        ] {
            let (status, _, body) = call(&app, Some(&auth)).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, "done"));
        }
        assert_eq!(runs.load(Ordering::Relaxed), 2);
    }
}
