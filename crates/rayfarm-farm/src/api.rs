//! The manager's HTTP JSON API (version 1, under `/api/v1`); PROTOCOL.md documents it.
//!
//! Every route here, reads included, answers only requests carrying the farm's API token
//! (`Authorization: Bearer rft1-...`, see `rayfarm key api-token`). The check is one layer
//! around the whole router ([`require_token`]), so a handler never runs for a request without
//! it: a missing or wrong token gets 401 with `WWW-Authenticate: Bearer`. The API sets no
//! cookies and sends no CORS headers, so a page on another site can neither send the token (it
//! does not have it) nor read an answer.
//!
//! Errors are `{"error": "..."}` ([`ErrorJson`]) with 400 (bad request), 401 (no or wrong
//! token), 404 (no such job), 409 (not allowed in the job's state), 415 or 422 (a body that is
//! not the JSON the route takes), 503 (a limit is reached) or 500. The transport limits (body
//! size, timeouts, connections) are [`crate::http`]'s.
//!
//! Every answer and request body is a named type here, shared with the CLI's client, and every
//! route is in the OpenAPI document [`ApiDoc`], served at `/api/v1/openapi.json` and checked in
//! as `docs/openapi.json` (a unit test keeps the file equal to the code).

use crate::manager::{load_job, now_ms, JobSpec, Manager, TaskSpec};
use crate::registry::Registered;
use crate::store::{NewJob, NewTask, StoreError};
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, OpenApi, ToResponse, ToSchema};

type Mgr = State<Arc<Manager>>;

pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorJson { error: self.1 })).into_response()
    }
}

/// A JSON request body whose rejection (not JSON, the wrong shape, no JSON content type) is
/// answered like every other error, `{"error": ...}`, with axum's status (400, 422 or 415).
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(body)) => Ok(JsonBody(body)),
            Err(e) => Err(rejected(e)),
        }
    }
}

fn rejected(e: JsonRejection) -> ApiError {
    ApiError(e.status(), e.body_text())
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::NoSuchJob(_) | StoreError::NoSuchTask(_) => StatusCode::NOT_FOUND,
            StoreError::BadTransition { .. } | StoreError::JobRunning { .. } => {
                StatusCode::CONFLICT
            }
            StoreError::BadJobId { .. }
            | StoreError::BadNodeName { .. }
            | StoreError::InvalidJob(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// The API's routes, every one behind [`require_token`] with `m`'s farm key. A route added
/// here gets a `#[utoipa::path]` and a place in [`ApiDoc`] (the tests compare the three).
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
        .route("/api/v1/nodes/{name}", get(node))
        .route("/api/v1/events", get(events))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        // Unknown API paths are behind the token too, so they reveal nothing either.
        .route("/api/v1", any(no_such_route))
        .route("/api/v1/{*rest}", any(no_such_route))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(m.key().clone()),
            require_token,
        ))
        .layer(axum::middleware::from_fn_with_state(m, count_errors))
}

/// Counts the API's error answers (refusals for want of the token included) for `/metrics`.
async fn count_errors(State(m): Mgr, req: Request, next: Next) -> Response {
    let r = next.run(req).await;
    let s = r.status();
    if s.is_client_error() {
        m.stats
            .api_client_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    } else if s.is_server_error() {
        m.stats
            .api_server_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    r
}

/// The OpenAPI 3.1 document of the API. `docs/openapi.json` is its pretty JSON (a unit test
/// keeps the two equal) and `GET /api/v1/openapi.json` serves it.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "rayfarm manager API",
        description = "The job manager's HTTP JSON API (version 1). Every route needs the farm's \
            API token, `Authorization: Bearer TOKEN`, where `rayfarm key api-token` prints TOKEN \
            (with the farm key). PROTOCOL.md describes the transport and its limits."
    ),
    paths(
        status, jobs, submit, job, delete, pause, resume, cancel, priority, preview, nodes,
        node, register, events, openapi, metrics
    ),
    components(responses(Unauthorized)),
    modifiers(&BearerToken),
    security(("bearer" = [])),
    tags(
        (name = "jobs", description = "The job queue"),
        (name = "nodes", description = "The render nodes the manager knows"),
        (name = "manager", description = "The manager itself")
    )
)]
pub struct ApiDoc;

/// Adds the `bearer` security scheme every route requires (see [`require_token`]).
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("rft1-<64 hex digits>")
                        .description(Some(
                            "The farm's API token, derived from the farm key: `rayfarm key \
                         api-token` prints it",
                        ))
                        .build(),
                ),
            );
    }
}

/// The document's pretty JSON with a trailing newline: what `docs/openapi.json` holds and
/// `GET /api/v1/openapi.json` answers.
pub fn openapi_json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes (it holds only strings, maps and lists)");
    text.push('\n');
    text
}

/// This document.
///
/// The OpenAPI description of every route of the API.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "manager",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document (docs/openapi.json)",
            content_type = "application/json", body = Object),
        (status = 401, response = Unauthorized)
    )
)]
async fn openapi() -> Response {
    static DOC: std::sync::LazyLock<String> = std::sync::LazyLock::new(openapi_json);
    ([(header::CONTENT_TYPE, "application/json")], DOC.as_str()).into_response()
}

/// Prometheus metrics of the queue and the nodes.
///
/// Text exposition version 0.0.4, behind the token like the API (Prometheus sends it with
/// `authorization: { credentials: TOKEN }`).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "manager",
    responses(
        (status = 200, description = "Gauges: rayfarm_jobs{status}, rayfarm_tasks{status}, \
            rayfarm_nodes{state}, rayfarm_registered_nodes, rayfarm_uptime_seconds",
            content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
        (status = 401, response = Unauthorized),
        (status = 500, description = "The job database failed", body = ErrorJson)
    )
)]
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
    {
        use std::sync::atomic::Ordering::Relaxed;
        let st = &m.stats;
        let _ = writeln!(
            out,
            "# HELP rayfarm_samples_total Samples in the parts the manager verified (rate() gives samples/s).\n# TYPE rayfarm_samples_total counter\nrayfarm_samples_total {}",
            st.samples.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP rayfarm_part_bytes_total Bytes of the parts the manager verified.\n# TYPE rayfarm_part_bytes_total counter\nrayfarm_part_bytes_total {}",
            st.part_bytes.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP rayfarm_api_errors_total API answers with an error status, by class (4xx includes requests without the token).\n# TYPE rayfarm_api_errors_total counter\nrayfarm_api_errors_total{{class=\"4xx\"}} {}\nrayfarm_api_errors_total{{class=\"5xx\"}} {}",
            st.api_client_errors.load(Relaxed),
            st.api_server_errors.load(Relaxed)
        );
    }
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
    if has_token(&key, req.headers()) {
        next.run(req).await
    } else {
        unauthorized(req.method(), req.uri().path())
    }
}

/// Whether `headers` carry `key`'s API token (`Authorization: Bearer TOKEN`).
pub fn has_token(key: &rayfarm_proto::FarmKey, headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .is_some_and(|token| key.verify_api_token(token))
}

/// The 401 answer to a request without the token (logged at a bounded rate).
fn unauthorized(method: &axum::http::Method, path: &str) -> Response {
    static REFUSED: crate::http::RateLog =
        crate::http::RateLog::new("API request(s) refused for want of the farm's API token");
    REFUSED.event(&format!("{method} {path}"));
    let mut r = ApiError(StatusCode::UNAUTHORIZED, UNAUTHORIZED_MESSAGE.into()).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"rayfarm\""),
    );
    r
}

/// The transport's gate for routes behind `key`'s token ([`crate::http::serve`] puts every
/// request to it before reading its body): a request without the token to an `/api/v1` path or
/// `/metrics`, of any method but GET and HEAD, or announcing a body (only the pages at `/` are
/// open, and they take no body), is refused with 401 from its headers alone. So a client without the token cannot
/// make the server read or hold a body. [`require_token`], inside the router, stays the rule
/// for every route; this only answers the same requests earlier.
pub fn token_gate(key: rayfarm_proto::FarmKey) -> crate::http::Gate {
    Arc::new(move |parts| refused_without_token(&key, parts))
}

/// [`token_gate`] for the manager, with `m`'s farm key; its refusals count among the API's
/// errors in `/metrics` as [`require_token`]'s do.
pub fn manager_gate(m: Arc<Manager>) -> crate::http::Gate {
    let key = m.key().clone();
    Arc::new(move |parts| {
        let r = refused_without_token(&key, parts);
        if r.is_some() {
            m.stats
                .api_client_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    })
}

/// [`token_gate`]'s rule: the 401 answer, or `None` to let the request through.
fn refused_without_token(
    key: &rayfarm_proto::FarmKey,
    parts: &axum::http::request::Parts,
) -> Option<Response> {
    use axum::http::Method;
    {
        let path = parts.uri.path();
        // A body is read (under one of the request permits) before any handler runs, so a
        // request that announces one needs the token wherever it goes.
        let guarded = path == "/metrics"
            || path == "/api/v1"
            || path.starts_with("/api/v1/")
            || !matches!(parts.method, Method::GET | Method::HEAD)
            || crate::http::announces_body(parts);
        (guarded && !has_token(key, &parts.headers)).then(|| unauthorized(&parts.method, path))
    }
}

/// The body of every error answer.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
#[schema(example = json!({"error": "no such job: j0123456789ab"}))]
pub struct ErrorJson {
    /// What went wrong, naming the job, path or value at fault.
    pub error: String,
}

/// The answer to a request without the farm's API token (or with another farm's, or another
/// scheme): no handler ran, nothing was read or changed.
#[derive(ToResponse)]
#[response(
    description = "No `Authorization: Bearer TOKEN` with the farm's API token; nothing was read or changed",
    headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"rayfarm\"`"))
)]
pub struct Unauthorized(pub ErrorJson);

/// `GET /api/v1/status`.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
pub struct StatusJson {
    /// The manager's version.
    pub version: String,
    /// Seconds since the manager started.
    pub uptime_s: u64,
    /// Jobs in the queue, whatever their status.
    pub jobs: u64,
    /// Nodes the manager knows.
    pub nodes: u64,
    /// Daemons registered (`rayfarm daemon --manager`) and not expired.
    pub registered_nodes: u64,
    /// The port workers connect to.
    pub worker_port: u16,
}

/// Tasks of one job per status.
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskCountsJson {
    pub queued: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub canceled: u64,
}

impl From<crate::store::TaskCounts> for TaskCountsJson {
    fn from(t: crate::store::TaskCounts) -> Self {
        TaskCountsJson {
            queued: t.queued,
            running: t.running,
            completed: t.completed,
            failed: t.failed,
            canceled: t.canceled,
        }
    }
}

/// A job as the API shows it.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
pub struct JobJson {
    pub id: String,
    pub name: String,
    /// `bake` or `render`.
    pub kind: String,
    /// queued, active, paused, completed, failed, canceled, or blocked (see `blocked`).
    pub status: String,
    /// Higher runs first (-1000 to 1000).
    pub priority: i32,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Done so far, 0 to 1.
    pub progress: f64,
    pub tasks: TaskCountsJson,
    /// Why the job failed.
    pub error: Option<String>,
    /// Why a `blocked` job cannot run (status `blocked` is shown instead of `queued` or
    /// `active` while no known node may take its tasks).
    #[serde(default)]
    pub blocked: Option<String>,
}

/// `GET /api/v1/jobs`: every job in the queue.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
pub struct JobListJson {
    pub jobs: Vec<JobJson>,
}

/// One task of a job: one part of its job.desc.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
pub struct TaskJson {
    pub index: u32,
    pub name: String,
    /// queued, running, completed, failed or canceled.
    pub status: String,
    /// Times handed out so far.
    pub attempts: u32,
    /// The node running it, or the last one that did; none while queued.
    pub node: Option<String>,
    /// The last failure, kept across retries.
    pub error: Option<String>,
    /// When its latest attempt was handed out (manager's wall clock); none before the first.
    #[serde(default)]
    pub started_ms: Option<i64>,
    /// When it completed, failed for good or was canceled; none until then.
    #[serde(default)]
    pub finished_ms: Option<i64>,
}

impl From<crate::store::TaskInfo> for TaskJson {
    fn from(t: crate::store::TaskInfo) -> Self {
        TaskJson {
            index: t.index,
            name: t.name,
            status: t.status.as_str().to_string(),
            attempts: t.attempts,
            node: t.node,
            error: t.error,
            started_ms: t.started_at_ms,
            finished_ms: t.finished_at_ms,
        }
    }
}

/// `GET /api/v1/jobs/{id}` (and the answer of the routes that change a job): the job and its
/// tasks.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
pub struct JobDetailJson {
    pub job: JobJson,
    pub tasks: Vec<TaskJson>,
}

/// `POST /api/v1/jobs`: a job folder the client prepared.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
pub struct SubmitRequest {
    /// Absolute path of NETWORK_FOLDER/<job-id> as the manager sees it.
    pub job_dir: String,
    /// Higher runs first; 0 when left out.
    #[serde(default)]
    pub priority: i32,
}

/// The answer to `POST /api/v1/jobs`.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
pub struct SubmittedJson {
    /// The new job's id: the job folder's name.
    pub id: String,
}

/// `POST /api/v1/jobs/{id}/priority`.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriorityRequest {
    /// The new priority, -1000 to 1000; higher runs first.
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: i32,
}

/// The query of `DELETE /api/v1/jobs/{id}`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete even while tasks run (they are stopped on their nodes).
    #[serde(default)]
    pub force: bool,
}

/// The answer to `DELETE /api/v1/jobs/{id}`.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
pub struct DeletedJson {
    /// The deleted job's id.
    pub deleted: String,
}

/// A node as the API shows it: the manager's own view of it.
pub use crate::manager::NodeView as NodeJson;

/// `GET /api/v1/nodes`.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
pub struct NodeListJson {
    pub nodes: Vec<NodeJson>,
}

/// A task a node ran lately, with its job: [`NodeDetailJson::tasks`].
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
pub struct NodeTaskJson {
    /// The task's job.
    pub job: String,
    #[serde(flatten)]
    pub task: TaskJson,
}

/// A node's failures on one job: [`NodeDetailJson::failures`].
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
pub struct NodeFailuresJson {
    pub job: String,
    /// Failures the node reported on the job.
    pub failures: u32,
    /// Whether the node gets no more of the job's tasks (it failed it twice).
    pub excluded: bool,
}

/// `GET /api/v1/nodes/{name}`: what the job queue knows of one node (the monitor's node page).
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
pub struct NodeDetailJson {
    /// The node's name in the job queue: its worker alias.
    pub name: String,
    /// The node as `GET /api/v1/nodes` shows it, when the manager knows it now.
    pub node: Option<NodeJson>,
    /// The tasks it ran or runs (it is their last holder), most recently changed first, at
    /// most 50. A task that went back to the queue after a failure is not its any more;
    /// `failures` counts those.
    pub tasks: Vec<NodeTaskJson>,
    /// The jobs it reported failures on, in submission order.
    pub failures: Vec<NodeFailuresJson>,
    /// The ids of the jobs it gets no more tasks of (`excluded` in `failures`).
    pub excluded_from: Vec<String>,
}

/// Tasks [`NodeDetailJson::tasks`] lists at most.
pub const NODE_RECENT_TASKS: u32 = 50;

/// `POST /api/v1/nodes/register`: a daemon announces itself.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
pub struct RegisterRequest {
    /// `HOST:PORT` of the daemon, as the manager can reach it.
    #[schema(example = "10.0.0.11:48000")]
    pub addr: String,
}

/// The answer to `POST /api/v1/nodes/register`.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
pub struct RegisteredJson {
    /// The registered address.
    pub registered: String,
    /// The manager's clock when it registered it.
    pub time_ms: i64,
}

/// Something the monitor shows under "recent events".
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
pub struct EventJson {
    pub time_ms: i64,
    /// info, warn or error.
    pub level: String,
    pub message: String,
    /// The job it is about, if any.
    pub job: Option<String>,
    /// The node it is about, if any.
    pub node: Option<String>,
}

impl From<crate::manager::Event> for EventJson {
    fn from(e: crate::manager::Event) -> Self {
        EventJson {
            time_ms: e.time_ms,
            level: e.level.to_string(),
            message: e.message,
            job: e.job,
            node: e.node,
        }
    }
}

/// `GET /api/v1/events`: newest first, at most 200.
#[derive(Serialize, Deserialize, ToSchema, Clone, Debug, PartialEq)]
pub struct EventListJson {
    pub events: Vec<EventJson>,
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
        tasks: j.tasks.into(),
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

/// The manager at a glance.
#[utoipa::path(
    get,
    path = "/api/v1/status",
    tag = "manager",
    responses(
        (status = 200, description = "The manager's status", body = StatusJson),
        (status = 401, response = Unauthorized),
        (status = 500, description = "The job database failed", body = ErrorJson)
    )
)]
async fn status(State(m): Mgr) -> Result<Json<StatusJson>, ApiError> {
    let jobs = db(&m, |s| s.list_jobs()).await?.len();
    Ok(Json(StatusJson {
        version: m.version().to_string(),
        uptime_s: m.uptime_s(),
        jobs: jobs as u64,
        nodes: m.nodes().len() as u64,
        registered_nodes: m.registered_count() as u64,
        worker_port: m.worker_port,
    }))
}

/// Every job in the queue.
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "jobs",
    responses(
        (status = 200, description = "The jobs", body = JobListJson),
        (status = 401, response = Unauthorized),
        (status = 500, description = "The job database failed", body = ErrorJson)
    )
)]
async fn jobs(State(m): Mgr) -> Result<Json<JobListJson>, ApiError> {
    let known = known_nodes(&m);
    let jobs: Vec<JobJson> = db(&m, move |s| {
        s.list_jobs()
            .map(|l| l.into_iter().map(|j| job_json(s, &known, j)).collect())
    })
    .await?;
    Ok(Json(JobListJson { jobs }))
}

/// One job and its tasks.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id (see `GET /api/v1/jobs`)")),
    responses(
        (status = 200, description = "The job and its tasks", body = JobDetailJson),
        (status = 400, description = "Not a job id", body = ErrorJson),
        (status = 401, response = Unauthorized),
        (status = 404, description = "No such job", body = ErrorJson),
        (status = 500, description = "The job database failed", body = ErrorJson)
    )
)]
async fn job(State(m): Mgr, Path(id): Path<String>) -> Result<Json<JobDetailJson>, ApiError> {
    let known = known_nodes(&m);
    let (job, tasks) = db(&m, move |s| -> Result<_, crate::store::StoreError> {
        Ok((job_json(s, &known, s.job(&id)?), s.tasks(&id)?))
    })
    .await?;
    let tasks = tasks.into_iter().map(TaskJson::from).collect();
    Ok(Json(JobDetailJson { job, tasks }))
}

/// Queues a job folder the client prepared.
///
/// The folder is NETWORK_FOLDER/<job-id>, holding job.desc, its MAC and the scene. `job_dir` is canonicalized and must lie strictly inside one of the manager's `--netdir`
/// roots; otherwise 400 with one message whatever the reason, so the API does not tell whether
/// a path exists on the manager's machine.
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    tag = "jobs",
    request_body = SubmitRequest,
    responses(
        (status = 201, description = "The job is queued", body = SubmittedJson),
        (status = 400, description = "The folder is outside the network folders, or its job.desc \
            is unreadable or has no valid MAC", body = ErrorJson),
        (status = 401, response = Unauthorized),
        (status = 409, description = "A job of this id is running", body = ErrorJson),
        (status = 413, description = "The body is larger than 1 MiB", body = ErrorJson),
        (status = 415, description = "The body is not sent as application/json", body = ErrorJson),
        (status = 422, description = "The body is JSON of another shape", body = ErrorJson),
        (status = 500, description = "The job database failed", body = ErrorJson)
    )
)]
async fn submit(
    State(m): Mgr,
    JsonBody(req): JsonBody<SubmitRequest>,
) -> Result<(StatusCode, Json<SubmittedJson>), ApiError> {
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
            .map_err(|e| bad(e.to_string()))?
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
    Ok((StatusCode::CREATED, Json(SubmittedJson { id: new_id })))
}

/// Hands out no more of the job's tasks (running ones finish).
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/pause",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job, paused, and its tasks", body = JobDetailJson),
        (status = 400, description = "Not a job id", body = ErrorJson),
        (status = 401, response = Unauthorized),
        (status = 404, description = "No such job", body = ErrorJson),
        (status = 409, description = "Not allowed in the job's state", body = ErrorJson),
        (status = 500, description = "The job database failed", body = ErrorJson)
    )
)]
async fn pause(State(m): Mgr, Path(id): Path<String>) -> Result<Json<JobDetailJson>, ApiError> {
    let i = id.clone();
    db(&m, move |s| s.pause(&i)).await?;
    m.event("info", format!("job {id} paused"), Some(&id), None);
    job(State(m), Path(id)).await
}

/// Hands out the job's tasks again.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/resume",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job, resumed, and its tasks", body = JobDetailJson),
        (status = 400, description = "Not a job id", body = ErrorJson),
        (status = 401, response = Unauthorized),
        (status = 404, description = "No such job", body = ErrorJson),
        (status = 409, description = "Not allowed in the job's state", body = ErrorJson),
        (status = 500, description = "The job database failed", body = ErrorJson)
    )
)]
async fn resume(State(m): Mgr, Path(id): Path<String>) -> Result<Json<JobDetailJson>, ApiError> {
    let i = id.clone();
    db(&m, move |s| s.resume(&i)).await?;
    m.event("info", format!("job {id} resumed"), Some(&id), None);
    job(State(m), Path(id)).await
}

/// Stops the job for good (its folder stays).
///
/// Its running tasks are stopped on their nodes.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job, canceled, and its tasks", body = JobDetailJson),
        (status = 400, description = "Not a job id", body = ErrorJson),
        (status = 401, response = Unauthorized),
        (status = 404, description = "No such job", body = ErrorJson),
        (status = 409, description = "Not allowed in the job's state", body = ErrorJson),
        (status = 500, description = "The job database failed", body = ErrorJson)
    )
)]
async fn cancel(State(m): Mgr, Path(id): Path<String>) -> Result<Json<JobDetailJson>, ApiError> {
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

/// Changes the job's priority.
///
/// Higher runs first; tasks already running are not stopped.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/priority",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    request_body = PriorityRequest,
    responses(
        (status = 200, description = "The job, with its new priority, and its tasks", body = JobDetailJson),
        (status = 400, description = "Not a job id, or a priority out of range", body = ErrorJson),
        (status = 401, response = Unauthorized),
        (status = 404, description = "No such job", body = ErrorJson),
        (status = 413, description = "The body is over 1 MiB (plain text; the connection is closed)",
            content_type = "text/plain", body = String),
        (status = 415, description = "The body is not sent as application/json", body = ErrorJson),
        (status = 422, description = "The body is JSON of another shape", body = ErrorJson),
        (status = 500, description = "The job database failed", body = ErrorJson)
    )
)]
async fn priority(
    State(m): Mgr,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<PriorityRequest>,
) -> Result<Json<JobDetailJson>, ApiError> {
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

/// Removes the job from the queue (its folder stays).
///
/// Without `force`, refused while tasks run.
#[utoipa::path(
    delete,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id"), DeleteQuery),
    responses(
        (status = 200, description = "The job is deleted", body = DeletedJson),
        (status = 400, description = "Not a job id", body = ErrorJson),
        (status = 401, response = Unauthorized),
        (status = 404, description = "No such job", body = ErrorJson),
        (status = 409, description = "Tasks of the job run (use force)", body = ErrorJson),
        (status = 500, description = "The job database failed", body = ErrorJson)
    )
)]
async fn delete(
    State(m): Mgr,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<DeletedJson>, ApiError> {
    let (i, force) = (id.clone(), q.force);
    db(&m, move |s| s.delete(&i, force)).await?;
    m.previews.evict(&id);
    m.forget_job(&id);
    m.event("info", format!("job {id} deleted"), Some(&id), None);
    Ok(Json(DeletedJson { deleted: id }))
}

/// A preview of the job from the parts done so far.
///
/// At most 512 px on its long side: a bake's first output (complete pass first), or a render's
/// latest frame with a part.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/preview.png",
    tag = "jobs",
    params(("id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The preview", content(("image/png"))),
        (status = 400, description = "Not a job id", body = ErrorJson),
        (status = 401, response = Unauthorized),
        (status = 404, description = "No such job, or no part of it is done yet", body = ErrorJson),
        (status = 500, description = "The job database or the job folder failed", body = ErrorJson)
    )
)]
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

/// The render nodes the manager knows.
#[utoipa::path(
    get,
    path = "/api/v1/nodes",
    tag = "nodes",
    responses(
        (status = 200, description = "The nodes", body = NodeListJson),
        (status = 401, response = Unauthorized)
    )
)]
async fn nodes(State(m): Mgr) -> Json<NodeListJson> {
    Json(NodeListJson { nodes: m.nodes() })
}

/// One node: its recent tasks, failures and the jobs it is excluded from.
///
/// `name` is the node's worker alias (the `alias` of `GET /api/v1/nodes`), the name the job
/// queue knows it by. A name the queue never saw answers empty lists, not 404: a node that
/// just joined has done nothing yet.
#[utoipa::path(
    get,
    path = "/api/v1/nodes/{name}",
    tag = "nodes",
    params(("name" = String, Path, description = "The node's alias")),
    responses(
        (status = 200, description = "The node", body = NodeDetailJson),
        (status = 400, description = "Not a node name", body = ErrorJson),
        (status = 401, response = Unauthorized),
        (status = 500, description = "The job database failed", body = ErrorJson)
    )
)]
async fn node(State(m): Mgr, Path(name): Path<String>) -> Result<Json<NodeDetailJson>, ApiError> {
    let n = name.clone();
    let (tasks, failures) = db(&m, move |s| -> Result<_, crate::store::StoreError> {
        Ok((
            s.tasks_of_node(&n, NODE_RECENT_TASKS)?,
            s.node_failures(&n)?,
        ))
    })
    .await?;
    Ok(Json(NodeDetailJson {
        node: m.nodes().into_iter().find(|v| v.alias == name),
        name,
        tasks: tasks
            .into_iter()
            .map(|t| NodeTaskJson {
                job: t.job_id.clone(),
                task: t.into(),
            })
            .collect(),
        excluded_from: failures
            .iter()
            .filter(|f| f.excluded)
            .map(|f| f.job_id.clone())
            .collect(),
        failures: failures
            .into_iter()
            .map(|f| NodeFailuresJson {
                job: f.job_id,
                failures: f.failures,
                excluded: f.excluded,
            })
            .collect(),
    }))
}

/// A daemon announces itself.
///
/// `rayfarm daemon --manager` registers every 5 s; a registration not renewed for 5 minutes
/// expires.
#[utoipa::path(
    post,
    path = "/api/v1/nodes/register",
    tag = "nodes",
    request_body = RegisterRequest,
    responses(
        (status = 200, description = "The daemon is registered", body = RegisteredJson),
        (status = 400, description = "Not a HOST:PORT address", body = ErrorJson),
        (status = 401, response = Unauthorized),
        (status = 413, description = "The body is over 1 MiB (plain text; the connection is closed)",
            content_type = "text/plain", body = String),
        (status = 415, description = "The body is not sent as application/json", body = ErrorJson),
        (status = 422, description = "The body is JSON of another shape", body = ErrorJson),
        (status = 503, description = "The manager has as many registered daemons as it takes \
            (1024); known ones renew", body = ErrorJson)
    )
)]
async fn register(
    State(m): Mgr,
    JsonBody(r): JsonBody<RegisterRequest>,
) -> Result<Json<RegisteredJson>, ApiError> {
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
    Ok(Json(RegisteredJson {
        registered: r.addr,
        time_ms: now_ms(),
    }))
}

/// What happened lately.
///
/// Newest first, at most 200.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "manager",
    responses(
        (status = 200, description = "The events", body = EventListJson),
        (status = 401, response = Unauthorized)
    )
)]
async fn events(State(m): Mgr) -> Json<EventListJson> {
    Json(EventListJson {
        events: m.events().into_iter().map(EventJson::from).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    /// The checked-in OpenAPI document.
    const OPENAPI_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");

    /// Every route [`router`] serves, method and path, but the catch-alls that answer 404.
    const ROUTES: &[(&str, &str)] = &[
        ("get", "/api/v1/status"),
        ("get", "/api/v1/jobs"),
        ("post", "/api/v1/jobs"),
        ("get", "/api/v1/jobs/{id}"),
        ("delete", "/api/v1/jobs/{id}"),
        ("post", "/api/v1/jobs/{id}/pause"),
        ("post", "/api/v1/jobs/{id}/resume"),
        ("post", "/api/v1/jobs/{id}/cancel"),
        ("post", "/api/v1/jobs/{id}/priority"),
        ("get", "/api/v1/jobs/{id}/preview.png"),
        ("get", "/api/v1/nodes"),
        ("post", "/api/v1/nodes/register"),
        ("get", "/api/v1/nodes/{name}"),
        ("get", "/api/v1/events"),
        ("get", "/api/v1/openapi.json"),
        ("get", "/metrics"),
    ];

    fn document() -> serde_json::Value {
        serde_json::from_str(&openapi_json()).unwrap()
    }

    #[test]
    fn the_checked_in_openapi_document_is_the_codes() {
        let generated = openapi_json();
        if std::env::var_os("RAYFARM_BLESS").is_some() {
            std::fs::write(OPENAPI_FILE, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(OPENAPI_FILE).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/openapi.json differs from the API's code; if the change is intended, \
             regenerate it with `RAYFARM_BLESS=1 cargo test -p rayfarm-farm --lib openapi` and \
             commit it"
        );
    }

    #[test]
    fn the_openapi_document_has_every_route_and_only_those() {
        let doc = document();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.push((method.clone(), path.clone()));
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }

    /// [`ROUTES`] against [`router`]'s source: a path routed there and missing here (or the
    /// other way round) fails, so the list cannot drift from the router unnoticed.
    #[test]
    fn the_route_list_is_the_routers() {
        let source = include_str!("api.rs");
        let body = &source[source.find("pub fn router(").unwrap()..];
        let body = &body[..body.find("\n}\n").unwrap()];
        let mut routed: Vec<(String, String)> = Vec::new();
        for call in body.split(".route(\"").skip(1) {
            let (path, rest) = call.split_once('"').unwrap();
            let handlers = &rest[..rest.find("))").unwrap_or(rest.len())];
            if handlers.contains("any(") {
                continue;
            }
            for method in ["get", "post", "delete", "put", "patch"] {
                if handlers.contains(&format!("{method}(")) {
                    routed.push((method.to_string(), path.to_string()));
                }
            }
        }
        routed.sort();
        let mut listed: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        listed.sort();
        assert_eq!(routed, listed);
    }

    /// The token layer answers every route, so every operation documents its 401 and the
    /// document requires the bearer scheme.
    #[test]
    fn every_operation_needs_the_bearer_token() {
        let doc = document();
        assert_eq!(doc["security"], serde_json::json!([{ "bearer": [] }]));
        let scheme = &doc["components"]["securitySchemes"]["bearer"];
        assert_eq!(
            (scheme["type"].as_str(), scheme["scheme"].as_str()),
            (Some("http"), Some("bearer"))
        );
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert_eq!(
                    op["responses"]["401"]["$ref"], "#/components/responses/Unauthorized",
                    "{method} {path}"
                );
            }
        }
        let unauthorized = &doc["components"]["responses"]["Unauthorized"];
        assert_eq!(
            unauthorized["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorJson"
        );
    }

    #[test]
    fn an_error_is_a_json_object_with_one_string() {
        let body = serde_json::to_value(ErrorJson {
            error: "no such job: j1".into(),
        })
        .unwrap();
        assert_eq!(body, serde_json::json!({ "error": "no such job: j1" }));
    }

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
