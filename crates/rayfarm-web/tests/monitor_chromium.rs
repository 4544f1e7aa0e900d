//! The monitor page in a real headless Chromium, against a fake manager API on loopback.
//!
//! Each test starts an axum server on 127.0.0.1 (port 0) made of `rayfarm_web::routes()` and a
//! fake `/api/v1` serving JSON to requests carrying [`TOKEN`] (401 otherwise, like the
//! manager). The fake keeps its jobs in memory and records the actions it is sent (pause,
//! resume, cancel, priority, delete), changing the job as the manager would.
//!
//! Two kinds of browser test: the first ones run `/usr/bin/chromium --headless=new` with a
//! virtual-time budget (so the page's one-second polling runs a few times) and assert on the
//! DOM Chromium dumps after the scripts ran, or on its screenshot; the `cdp_*` ones drive
//! Chromium over the DevTools protocol (`support/browser.rs`) to click, type and wait for the
//! page to show the answer.
//!
//! Without `/usr/bin/chromium` the browser tests print a notice and pass, unless
//! `RAYFARM_REQUIRE_SHARED=1` (as in CI), where they fail and say to install it.
//!
//! Shutdown: each server task runs on its test's tokio runtime and ends when the test returns
//! and the runtime is dropped. Each Chromium runs in its own process group with its own
//! profile directory and is killed (the whole group) after [`CHROMIUM_TIMEOUT`].

mod support {
    pub mod browser;
}

use std::io::Cursor;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use support::browser::{self, chromium_available, CHROMIUM};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);
/// Virtual time Chromium gives the page before dumping: about five polls.
const VIRTUAL_TIME_BUDGET_MS: u32 = 5000;

/// The fake API's token; the page gets it from the URL's `#token=` fragment.
const TOKEN: &str = "rft1-fake-token-for-the-page";
const JOB_WITH_PREVIEW: &str = "j3f2a9c0";
const JOB_HOSTILE: &str = "j77b1e05";
/// A user-chosen job name that is markup: the page must show it as text.
const HOSTILE_NAME: &str = "crate <img src=x onerror=alert(1)> & \"friends\"";
/// A node-reported error that is markup whose handler would leave a trace in the DOM if it ran.
const HOSTILE_ERROR: &str =
    "<img src=y onerror=\"document.body.setAttribute('data-xss','1')\">disk full";
const ERROR_EVENT: &str = "task 4 failed on d3: out of memory while baking tile 4";
const OCCUPYING_MASTER: &str = "10.0.0.7:47000";
/// The top-left quadrant colour of the fake preview; nothing else on the page uses it, so the
/// screenshot test can find the painted preview by it.
const PREVIEW_MAGENTA: [u8; 3] = [255, 0, 255];

// ---- fake manager API ---------------------------------------------------------------------

#[derive(Clone)]
struct FakeManager {
    preview_png: Arc<Vec<u8>>,
    status_requests: Arc<AtomicUsize>,
    preview_requests: Arc<AtomicUsize>,
    refused_requests: Arc<AtomicUsize>,
    /// The jobs `GET /jobs` lists; actions change them.
    jobs: Arc<Mutex<Vec<Value>>>,
    /// Every action received, in order.
    actions: Arc<Mutex<Vec<Action>>>,
    /// Answer every action with [`REFUSAL`] (409), like a manager whose job changed meanwhile.
    refuse_actions: Arc<AtomicBool>,
    /// The node names `GET /nodes/{name}` was asked for.
    node_requests: Arc<Mutex<Vec<String>>>,
}

/// One action request the fake received.
#[derive(Clone, Debug, PartialEq)]
struct Action {
    method: String,
    path: String,
    authorization: Option<String>,
    body: String,
}

/// What the fake answers actions with while [`FakeManager::refuse_actions`] is set.
const REFUSAL: &str = "cannot move job j3f2a9c0 from completed to paused";
/// The node the node page test opens, and the job it is excluded from.
const NODE_ADDR: &str = "127.0.0.2:48000";
const NODE_ALIAS: &str = "d2";
const NODE_FAILED_TASK_ERROR: &str = "on node d2: out of memory (attempt 3 of 3)";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A 64x64 PNG: four solid quadrants, one of them [`PREVIEW_MAGENTA`].
fn preview_png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 64, |x, y| match (x < 32, y < 32) {
        (true, true) => image::Rgb(PREVIEW_MAGENTA),
        (false, true) => image::Rgb([0, 160, 170]),
        (true, false) => image::Rgb([250, 200, 0]),
        (false, false) => image::Rgb([(x * 4) as u8, (y * 4) as u8, 90]),
    });
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("encode preview png");
    png
}

fn jobs_json() -> Value {
    let t = now_ms();
    json!({"jobs": [
        {
            "id": JOB_WITH_PREVIEW, "name": "water bottle", "kind": "bake", "status": "active",
            "priority": 0, "created_ms": t - 60_000, "updated_ms": t - 1_000, "progress": 0.42,
            "tasks": {"queued": 3, "running": 2, "completed": 5, "failed": 0, "canceled": 0},
            "error": null
        },
        {
            "id": JOB_HOSTILE, "name": HOSTILE_NAME, "kind": "render", "status": "failed",
            "priority": 5, "created_ms": t - 120_000, "updated_ms": t - 30_000, "progress": 0.1,
            "tasks": {"queued": 0, "running": 0, "completed": 1, "failed": 1, "canceled": 8},
            "error": HOSTILE_ERROR
        }
    ]})
}

fn nodes_json() -> Value {
    let t = now_ms();
    json!({"nodes": [
        {"addr": "127.0.0.1:48000", "alias": "d1", "threads": 8, "state": "idle",
         "job": null, "task": null, "master": null, "last_seen_ms": t - 1_000},
        {"addr": "127.0.0.2:48000", "alias": "d2", "threads": 2, "cpu_model": "Test CPU 9000",
         "cpu_threads": 16, "gpus": ["Test GPU A", "Test GPU B"], "state": "working",
         "job": JOB_WITH_PREVIEW, "task": "atlas lightmap tile 3", "master": null,
         "last_seen_ms": t - 500},
        {"addr": "127.0.0.3:48000", "alias": "d3", "threads": 4, "state": "occupied",
         "job": null, "task": null, "master": OCCUPYING_MASTER, "last_seen_ms": t - 2_000},
        {"addr": "127.0.0.4:48000", "alias": null, "threads": 16, "state": "lost",
         "job": null, "task": null, "master": null, "last_seen_ms": t - 3_630_000},
        {"addr": "127.0.0.5:48000", "alias": "", "threads": 0, "state": "unreachable",
         "job": null, "task": null, "master": null, "last_seen_ms": null}
    ]})
}

/// An event of the hostile job: the job page of the other job must not list it.
const OTHER_JOB_EVENT: &str = "job j77b1e05 failed: task 1 used up its attempts";
/// An event of node d2 (events name a worker by its alias).
const NODE_EVENT: &str = "worker 'd2' connected (2 threads)";

fn events_json() -> Value {
    json!({"events": [
        {"time_ms": now_ms() - 5_000, "level": "error", "message": ERROR_EVENT,
         "job": JOB_WITH_PREVIEW, "node": "127.0.0.3:48000"},
        {"time_ms": now_ms() - 8_000, "level": "warn", "message": OTHER_JOB_EVENT,
         "job": JOB_HOSTILE, "node": null},
        {"time_ms": now_ms() - 9_000, "level": "info", "message": NODE_EVENT,
         "job": null, "node": NODE_ALIAS}
    ]})
}

/// The tasks of a job as `GET /jobs/{id}` lists them: made up from its counts, in the order
/// completed, running, failed, canceled, queued; completed ones ran on d1, running ones on d2.
fn tasks_json(job: &Value) -> Vec<Value> {
    let t = now_ms();
    let mut tasks = Vec::new();
    for status in ["completed", "running", "failed", "canceled", "queued"] {
        for _ in 0..job["tasks"][status].as_u64().unwrap_or(0) {
            let index = tasks.len() as u64;
            let (node, started, finished, error) = match status {
                "completed" => (
                    json!("d1"),
                    json!(t - 50_000),
                    json!(t - 20_000),
                    json!(null),
                ),
                "running" => (
                    json!(NODE_ALIAS),
                    json!(t - 10_000),
                    json!(null),
                    json!(null),
                ),
                "failed" => (
                    json!(NODE_ALIAS),
                    json!(t - 40_000),
                    json!(t - 39_000),
                    json!(NODE_FAILED_TASK_ERROR),
                ),
                _ => (json!(null), json!(null), json!(null), json!(null)),
            };
            tasks.push(json!({
                "index": index, "name": format!("atlas lightmap tile {index}"), "status": status,
                "attempts": if status == "queued" { 0 } else { 1 }, "node": node,
                "error": error, "started_ms": started, "finished_ms": finished
            }));
        }
    }
    tasks
}

async fn fake_jobs(State(fake): State<FakeManager>) -> Json<Value> {
    Json(json!({"jobs": *fake.jobs.lock().unwrap()}))
}

fn no_such_job(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("no job with id {id:?}")})),
    )
        .into_response()
}

async fn fake_job(State(fake): State<FakeManager>, UrlPath(id): UrlPath<String>) -> Response {
    let jobs = fake.jobs.lock().unwrap();
    match jobs.iter().find(|j| j["id"] == id.as_str()) {
        Some(job) => Json(json!({"job": job, "tasks": tasks_json(job)})).into_response(),
        None => no_such_job(&id),
    }
}

/// pause, resume, cancel, priority and delete: recorded, then applied to the job the way the
/// manager's store would, and answered like the manager (the job and its tasks).
async fn fake_action(
    State(fake): State<FakeManager>,
    UrlPath(id): UrlPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    fake.actions.lock().unwrap().push(Action {
        method: method.to_string(),
        path: uri.path().to_string(),
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: body.clone(),
    });
    if fake.refuse_actions.load(Ordering::Relaxed) {
        return (StatusCode::CONFLICT, Json(json!({"error": REFUSAL}))).into_response();
    }
    let mut jobs = fake.jobs.lock().unwrap();
    let Some(i) = jobs.iter().position(|j| j["id"] == id.as_str()) else {
        return no_such_job(&id);
    };
    if method == Method::DELETE {
        jobs.remove(i);
        return Json(json!({"deleted": id})).into_response();
    }
    let job = &mut jobs[i];
    match uri.path().rsplit('/').next().unwrap_or("") {
        "pause" => job["status"] = json!("paused"),
        "resume" => job["status"] = json!("active"),
        "cancel" => {
            job["status"] = json!("canceled");
            let t = &mut job["tasks"];
            let stopped = t["queued"].as_u64().unwrap() + t["running"].as_u64().unwrap();
            t["canceled"] = json!(t["canceled"].as_u64().unwrap() + stopped);
            t["queued"] = json!(0);
            t["running"] = json!(0);
        }
        "priority" => {
            let Ok(b) = serde_json::from_str::<Value>(&body) else {
                return (StatusCode::BAD_REQUEST, Json(json!({"error": "not JSON"})))
                    .into_response();
            };
            job["priority"] = b["priority"].clone();
        }
        other => panic!("the fake has no action {other:?}"),
    }
    job["updated_ms"] = json!(now_ms());
    Json(json!({"job": job, "tasks": tasks_json(job)})).into_response()
}

async fn fake_node(State(fake): State<FakeManager>, UrlPath(name): UrlPath<String>) -> Json<Value> {
    fake.node_requests.lock().unwrap().push(name.clone());
    if name != NODE_ALIAS {
        return Json(
            json!({"name": name, "node": null, "tasks": [], "failures": [], "excluded_from": []}),
        );
    }
    let t = now_ms();
    Json(json!({
        "name": NODE_ALIAS,
        "node": null,
        "tasks": [
            {"job": JOB_WITH_PREVIEW, "index": 3, "name": "atlas lightmap tile 3",
             "status": "running", "attempts": 1, "node": NODE_ALIAS, "error": null,
             "started_ms": t - 12_000, "finished_ms": null},
            {"job": JOB_HOSTILE, "index": 1, "name": "frame 2", "status": "failed",
             "attempts": 3, "node": NODE_ALIAS, "error": NODE_FAILED_TASK_ERROR,
             "started_ms": t - 95_000, "finished_ms": t - 90_000}
        ],
        "failures": [{"job": JOB_HOSTILE, "failures": 2, "excluded": true}],
        "excluded_from": [JOB_HOSTILE]
    }))
}

async fn fake_status(State(fake): State<FakeManager>) -> Json<Value> {
    fake.status_requests.fetch_add(1, Ordering::Relaxed);
    Json(json!({"version": "0.1.0", "uptime_s": 3725, "jobs": 2, "nodes": 5}))
}

async fn fake_preview(State(fake): State<FakeManager>, UrlPath(id): UrlPath<String>) -> Response {
    fake.preview_requests.fetch_add(1, Ordering::Relaxed);
    if id == JOB_WITH_PREVIEW {
        (
            [(header::CONTENT_TYPE, "image/png")],
            fake.preview_png.to_vec(),
        )
            .into_response()
    } else {
        (StatusCode::NOT_FOUND, "no preview yet").into_response()
    }
}

/// 401 unless the request carries `Authorization: Bearer TOKEN`, like the manager's API.
async fn require_token(
    State(fake): State<FakeManager>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth == Some(&format!("Bearer {TOKEN}")) {
        next.run(req).await
    } else {
        fake.refused_requests.fetch_add(1, Ordering::Relaxed);
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"error": "no or wrong token"})),
        )
            .into_response()
    }
}

/// `routes()` merged with a fake API that answers like a healthy manager.
fn healthy_app(fake: FakeManager) -> Router {
    let api = Router::new()
        .route("/api/v1/status", get(fake_status))
        .route("/api/v1/jobs", get(fake_jobs))
        .route("/api/v1/jobs/{id}", get(fake_job).delete(fake_action))
        .route("/api/v1/jobs/{id}/pause", post(fake_action))
        .route("/api/v1/jobs/{id}/resume", post(fake_action))
        .route("/api/v1/jobs/{id}/cancel", post(fake_action))
        .route("/api/v1/jobs/{id}/priority", post(fake_action))
        .route("/api/v1/nodes/{name}", get(fake_node))
        .route("/api/v1/nodes", get(|| async { Json(nodes_json()) }))
        .route("/api/v1/events", get(|| async { Json(events_json()) }))
        .route("/api/v1/jobs/{id}/preview.png", get(fake_preview))
        .layer(axum::middleware::from_fn_with_state(
            fake.clone(),
            require_token,
        ))
        .with_state(fake);
    rayfarm_web::routes().merge(api)
}

/// `routes()` merged with an API that fails every request, like a manager whose store broke.
fn broken_app() -> Router {
    let api = Router::new()
        .fallback(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "store unavailable") });
    rayfarm_web::routes().merge(api)
}

fn fake_manager() -> FakeManager {
    FakeManager {
        preview_png: Arc::new(preview_png()),
        status_requests: Arc::new(AtomicUsize::new(0)),
        preview_requests: Arc::new(AtomicUsize::new(0)),
        refused_requests: Arc::new(AtomicUsize::new(0)),
        jobs: Arc::new(Mutex::new(
            jobs_json()["jobs"].as_array().expect("jobs").clone(),
        )),
        actions: Arc::new(Mutex::new(Vec::new())),
        refuse_actions: Arc::new(AtomicBool::new(false)),
        node_requests: Arc::new(Mutex::new(Vec::new())),
    }
}

/// Serves `app` on 127.0.0.1 with a free port and returns the page's URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("test server");
    });
    format!("http://{addr}/")
}

/// The page's URL with the token in its fragment, as a user's bookmark might carry it.
fn with_token(url: &str, token: &str) -> String {
    format!("{url}#token={token}")
}

// ---- chromium -----------------------------------------------------------------------------

struct ChromiumRun {
    stdout: String,
    stderr: String,
}

/// Runs headless Chromium on `url` with `extra` arguments, in a fresh profile, and returns its
/// output; panics with Chromium's stderr if it fails or outlives [`CHROMIUM_TIMEOUT`].
async fn run_chromium(url: &str, extra: &[String]) -> ChromiumRun {
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let mut cmd = tokio::process::Command::new(CHROMIUM);
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--mute-audio",
        "--force-color-profile=srgb",
        "--run-all-compositor-stages-before-draw",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg(format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Chromium starts helper processes; its own process group lets the timeout kill them all.
    .process_group(0)
    .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));
    let pid = child.id().expect("chromium pid");
    let output = match tokio::time::timeout(CHROMIUM_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("waiting for {CHROMIUM}: {e}")),
        Err(_) => {
            // The timed-out future dropped the child, killing it; this kills its helpers.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            // An alert() dialog stalls headless Chromium; an injected `onerror=alert(1)` from
            // the hostile job name ends here rather than in the DOM assertions.
            panic!(
                "{CHROMIUM} on {url} did not finish within {CHROMIUM_TIMEOUT:?}; killed it \
                 (a JavaScript dialog blocks headless Chromium: did markup from the API reach \
                 the page, running `alert(1)` from the hostile job name?)"
            );
        }
    };
    let run = ChromiumRun {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        output.status.success(),
        "{CHROMIUM} on {url} exited with {}; stderr:\n{}",
        output.status,
        run.stderr
    );
    run
}

/// The DOM of `url` after the page's scripts ran for the virtual-time budget.
async fn dump_dom(url: &str) -> String {
    let run = run_chromium(url, &["--dump-dom".to_string()]).await;
    assert!(
        run.stdout.contains("</html>"),
        "chromium dumped no document for {url}; stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    run.stdout
}

/// The part of `dom` from the element carrying `marker` to the next `end`.
fn element<'a>(dom: &'a str, marker: &str, end: &str) -> &'a str {
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in the dumped DOM:\n{dom}"));
    let rest = &dom[start..];
    &rest[..rest.find(end).map_or(rest.len(), |i| i + end.len())]
}

fn assert_contains(haystack: &str, needle: &str, what: &str) {
    assert!(
        haystack.contains(needle),
        "{what}: expected {needle:?} in:\n{haystack}"
    );
}

// ---- tests --------------------------------------------------------------------------------

/// The page itself, over plain HTTP: no browser needed.
#[tokio::test]
async fn page_is_served_with_its_headers() {
    let url = serve(healthy_app(fake_manager())).await;
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("send request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("read response");
    let response = String::from_utf8(response).expect("utf-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("http head");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_contains(
        &head,
        "content-type: text/html; charset=utf-8",
        "page headers",
    );
    assert_contains(
        &head,
        "content-security-policy: default-src 'self'",
        "page headers",
    );
    assert_contains(&head, "x-content-type-options: nosniff", "page headers");
    assert_eq!(body, rayfarm_web::MONITOR_HTML);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_jobs_nodes_and_events() {
    if !chromium_available("chromium_shows_jobs_nodes_and_events") {
        return;
    }
    let fake = fake_manager();
    let url = serve(healthy_app(fake.clone())).await;
    let dom = dump_dom(&with_token(&url, TOKEN)).await;

    // Header.
    assert_contains(&dom, r#"<b id="version">0.1.0</b>"#, "manager version");
    assert_contains(&dom, r#"<b id="uptime">1 h 02 min</b>"#, "manager uptime");
    let banner = element(&dom, r#"<p id="banner""#, "</p>");
    assert!(
        banner.contains(r#"hidden="""#) && banner.ends_with("></p>"),
        "the banner shows although the API answered:\n{banner}"
    );
    // The page polled more than once within the virtual-time budget.
    let polls = fake.status_requests.load(Ordering::Relaxed);
    assert!(polls >= 2, "the page asked for /status {polls} times");

    // The job with a preview: name, id, kind, status, priority, progress, tasks, loaded preview.
    let job = element(
        &dom,
        &format!(r#"data-job-id="{JOB_WITH_PREVIEW}""#),
        "</article>",
    );
    for text in [
        ">water bottle<",
        &format!(">{JOB_WITH_PREVIEW}<"),
        ">bake<",
        ">active<",
        ">priority 0<",
        r#"<span class="pct">42%</span>"#,
        "width: 42%",
        r#"aria-valuenow="42""#,
        "5 / 10 tasks completed · 2 running · 3 queued",
        &format!(r#"data-preview-url="/api/v1/jobs/{JOB_WITH_PREVIEW}/preview.png?t="#),
        // Fetched with the token, shown through an object URL.
        r#"src="blob:"#,
        r#"data-loaded="1""#,
    ] {
        assert_contains(job, text, "job with a preview");
    }

    // The hostile job: its name and error are shown as text, and no markup was injected.
    let job = element(
        &dom,
        &format!(r#"data-job-id="{JOB_HOSTILE}""#),
        "</article>",
    );
    assert_contains(
        job,
        r#"crate &lt;img src=x onerror=alert(1)&gt; &amp; "friends""#,
        "hostile job name as text",
    );
    assert_contains(job, "&lt;img src=y onerror=", "hostile error as text");
    assert_contains(job, "disk full", "hostile error as text");
    assert_contains(job, ">failed<", "hostile job status");
    assert_contains(job, "10%", "hostile job progress");
    assert_contains(job, r#"<span class="bad">1 failed</span>"#, "failed tasks");
    // Its preview answered 404: hidden, marked as not loaded.
    assert_contains(job, r#"data-loaded="0""#, "missing preview");
    assert!(
        !dom.contains(r#"<img src="x""#)
            && !dom.contains(r#"<img src="y""#)
            && !dom.contains(r#"onerror="alert(1)""#)
            && !dom.contains(r#"data-xss="1""#),
        "markup from the API was injected into the page:\n{dom}"
    );

    // Nodes.
    let nodes = element(&dom, r#"<tbody id="node-rows">"#, "</tbody>");
    for text in [
        "127.0.0.1:48000",
        ">idle<",
        ">d2<",
        &format!("working on job water bottle ({JOB_WITH_PREVIEW}) / task atlas lightmap tile 3"),
        &format!("occupied by master {OCCUPYING_MASTER}"),
        ">lost<",
        // 1 h 30 s ago; the Date header's one-second steps cannot change the minute.
        "1 h 00 min ago",
        ">unreachable<",
        ">never<",
    ] {
        assert_contains(nodes, text, "nodes table");
    }

    // The token form is hidden, the token left the address bar, nothing was refused.
    let panel = element(&dom, r#"<section id="token-panel""#, ">");
    assert_contains(panel, "hidden", "token form while the token works");
    assert!(
        !dom.contains(TOKEN),
        "the token is in the page (or its address)"
    );
    assert_eq!(fake.refused_requests.load(Ordering::Relaxed), 0);

    // Events.
    let events = element(&dom, r#"<tbody id="event-rows">"#, "</tbody>");
    assert_contains(events, ERROR_EVENT, "error event");
    assert_contains(events, ">error<", "error event level");
    assert_contains(
        events,
        &format!("water bottle ({JOB_WITH_PREVIEW})"),
        "error event job",
    );
    assert_contains(events, "127.0.0.3:48000", "error event node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_screenshot_shows_the_page_and_preview() {
    if !chromium_available("chromium_screenshot_shows_the_page_and_preview") {
        return;
    }
    let fake = fake_manager();
    let url = serve(healthy_app(fake.clone())).await;
    let dir = tempfile::tempdir().expect("screenshot dir");
    let shot = dir.path().join("monitor.png");
    let run = run_chromium(
        &with_token(&url, TOKEN),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,900".to_string(),
            "--hide-scrollbars".to_string(),
        ],
    )
    .await;
    let bytes = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {}: {e}; chromium stderr:\n{}",
            shot.display(),
            run.stderr
        )
    });
    let img = image::load_from_memory(&bytes)
        .unwrap_or_else(|e| panic!("screenshot {} is not an image: {e}", shot.display()))
        .to_rgb8();
    assert_eq!(img.dimensions(), (1280, 900), "screenshot size");

    let mut colours = std::collections::HashSet::new();
    let mut magenta_px = 0;
    for p in img.pixels() {
        colours.insert(p.0);
        if p.0 == PREVIEW_MAGENTA {
            magenta_px += 1;
        }
    }
    // Text, badges, bars and the preview make hundreds of colours; a blank or error page few.
    assert!(
        colours.len() >= 100,
        "screenshot has only {} colours; is the page blank?",
        colours.len()
    );
    // The 112 px thumbnail shows the preview's magenta quadrant as a 56x56 square.
    assert!(
        magenta_px >= 1500,
        "screenshot has {magenta_px} preview-magenta pixels; the preview was not painted \
         ({} preview requests)",
        fake.preview_requests.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_banner_when_the_api_fails() {
    if !chromium_available("chromium_shows_banner_when_the_api_fails") {
        return;
    }
    let url = serve(broken_app()).await;
    let dom = dump_dom(&with_token(&url, TOKEN)).await;
    let banner = element(&dom, r#"<p id="banner""#, "</p>");
    assert_contains(banner, r#"data-state="down""#, "banner");
    assert_contains(banner, "Cannot reach the manager", "banner");
    assert_contains(
        banner,
        "GET /api/v1/status answered HTTP 500",
        "banner names the failing request",
    );
    assert_contains(banner, "Nothing has been received yet.", "banner");
    assert!(
        !banner.contains("hidden"),
        "the banner is still hidden:\n{banner}"
    );
    assert_contains(&dom, r#"<body class="stale">"#, "stale data dimmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_asks_for_the_token_and_shows_no_data_without_it() {
    if !chromium_available("chromium_asks_for_the_token_and_shows_no_data_without_it") {
        return;
    }
    let fake = fake_manager();
    let url = serve(healthy_app(fake.clone())).await;
    let dom = dump_dom(&url).await;
    let panel = element(&dom, r#"<section id="token-panel""#, "</section>");
    assert!(
        !panel.starts_with(r#"<section id="token-panel" aria-labelledby="token-heading" hidden"#),
        "the token form is hidden:\n{panel}"
    );
    assert_contains(panel, "rayfarm key api-token", "token form message");
    assert_contains(panel, r#"data-state="ask""#, "token form state");
    assert_contains(&dom, r#"<main id="content" hidden"#, "data hidden");
    assert!(!dom.contains("water bottle"), "data shown without a token");
    // Without a token the page does not even ask.
    assert_eq!(fake.status_requests.load(Ordering::Relaxed), 0);
    assert_eq!(fake.refused_requests.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_asks_again_when_the_token_is_refused() {
    if !chromium_available("chromium_asks_again_when_the_token_is_refused") {
        return;
    }
    let fake = fake_manager();
    let url = serve(healthy_app(fake.clone())).await;
    let dom = dump_dom(&with_token(&url, "rft1-not-this-farms")).await;
    let panel = element(&dom, r#"<section id="token-panel""#, "</section>");
    assert_contains(panel, r#"data-state="refused""#, "token form state");
    assert_contains(
        panel,
        "refused the API token (HTTP 401)",
        "token form message",
    );
    assert_contains(&dom, r#"<main id="content" hidden"#, "data hidden");
    assert!(
        !dom.contains("water bottle"),
        "data shown with a wrong token"
    );
    // Refused once (the first poll), then the page stops asking until a token is entered.
    let refused = fake.refused_requests.load(Ordering::Relaxed);
    assert!(
        (1..=4).contains(&refused),
        "{refused} refused requests: the page kept polling with a refused token"
    );
}

// ---- tests that click (Chromium over the DevTools protocol) -------------------------------

/// Serves `fake` on loopback and runs `test` with the page's URL in blocking context (the
/// browser's calls block); without Chromium, skips it (see `chromium_available`).
async fn with_browser(name: &str, fake: &FakeManager, test: impl FnOnce(&str)) {
    if !chromium_available(name) {
        return;
    }
    let url = serve(healthy_app(fake.clone())).await;
    tokio::task::block_in_place(|| test(&url));
}

/// A selector for an element of the overview's card of job `id`.
fn in_card(id: &str, inner: &str) -> String {
    format!(r#"#job-list [data-job-id="{id}"] {inner}"#)
}

/// A JavaScript expression: the text of `selector` equals `text`.
fn text_is(selector: &str, text: &str) -> String {
    format!(
        "(document.querySelector({}) || {{}}).textContent === {}",
        Value::from(selector),
        Value::from(text)
    )
}

/// The actions the fake received since the last call.
fn take_actions(fake: &FakeManager) -> Vec<Action> {
    std::mem::take(&mut *fake.actions.lock().unwrap())
}

fn action(method: &str, path: &str, body: &str) -> Action {
    Action {
        method: method.into(),
        path: path.into(),
        authorization: Some(format!("Bearer {TOKEN}")),
        body: body.into(),
    }
}

/// Whether the button for `action` on job `id`'s card is enabled.
fn enabled(page: &browser::Page, id: &str, action: &str) -> bool {
    let selector = in_card(id, &format!(r#"button[data-action="{action}"]"#));
    page.eval(&format!(
        "!document.querySelector({}).disabled",
        Value::from(selector)
    )) == Value::Bool(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdp_job_actions_send_requests_and_show_the_new_state() {
    let fake = fake_manager();
    with_browser(
        "cdp_job_actions_send_requests_and_show_the_new_state",
        &fake,
        |url| {
            let page = browser::open(&with_token(url, TOKEN));
            let id = JOB_WITH_PREVIEW;
            let status = in_card(id, ".badge.status");
            page.wait_for("the active job", &text_is(&status, "active"));
            page.wait_for(
                "the preview",
                &format!(
                    "document.querySelector({}).dataset.loaded === '1'",
                    Value::from(in_card(id, "img.preview"))
                ),
            );
            page.save_screenshot_if_asked("monitor.png", 1000);

            // What each status allows: an active job with running tasks cannot be resumed or
            // deleted; the failed one can only be deleted.
            let allowed = |id: &str| {
                ["pause", "resume", "cancel", "priority", "delete"]
                    .into_iter()
                    .filter(|a| enabled(&page, id, a))
                    .collect::<Vec<_>>()
            };
            assert_eq!(allowed(id), ["pause", "cancel", "priority"]);
            assert_eq!(allowed(JOB_HOSTILE), ["delete"]);

            let base = format!("/api/v1/jobs/{id}");
            page.click(&in_card(id, r#"button[data-action="pause"]"#));
            page.wait_for("the paused job", &text_is(&status, "paused"));
            assert_eq!(
                take_actions(&fake),
                [action("POST", &format!("{base}/pause"), "")]
            );
            page.wait_for(
                "the outcome",
                &text_is("#action-text", &format!("Job water bottle ({id}) paused.")),
            );
            assert_eq!(allowed(id), ["resume", "cancel", "priority"]);

            page.click(&in_card(id, r#"button[data-action="resume"]"#));
            page.wait_for("the resumed job", &text_is(&status, "active"));
            assert_eq!(
                take_actions(&fake),
                [action("POST", &format!("{base}/resume"), "")]
            );

            page.type_into(&in_card(id, "input.priority-input"), "7");
            page.click(&in_card(id, r#"button[data-action="priority"]"#));
            page.wait_for(
                "the new priority",
                &text_is(&in_card(id, ".badge.priority"), "priority 7"),
            );
            assert_eq!(
                take_actions(&fake),
                [action(
                    "POST",
                    &format!("{base}/priority"),
                    r#"{"priority":7}"#
                )]
            );

            page.click(&in_card(id, r#"button[data-action="cancel"]"#));
            page.wait_for("the canceled job", &text_is(&status, "canceled"));
            assert_eq!(
                take_actions(&fake),
                [action("POST", &format!("{base}/cancel"), "")]
            );
            assert_eq!(allowed(id), ["delete"]);

            // Delete asks first: the first click sends nothing.
            page.click(&in_card(id, r#"button[data-action="delete"]"#));
            assert!(page.visible(&in_card(id, r#"button[data-action="confirm-delete"]"#)));
            page.click(&in_card(id, r#"button[data-action="keep"]"#));
            assert!(!page.visible(&in_card(id, r#"button[data-action="confirm-delete"]"#)));
            assert_eq!(take_actions(&fake), []);
            page.click(&in_card(id, r#"button[data-action="delete"]"#));
            page.click(&in_card(id, r#"button[data-action="confirm-delete"]"#));
            page.wait_for(
                "the job gone",
                &format!("!document.querySelector({})", Value::from(in_card(id, ""))),
            );
            assert_eq!(take_actions(&fake), [action("DELETE", &base, "")]);
            assert!(page.visible(&in_card(JOB_HOSTILE, ".badge.status")));
            assert_eq!(fake.refused_requests.load(Ordering::Relaxed), 0);
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdp_an_api_error_is_shown_on_the_page() {
    let fake = fake_manager();
    fake.refuse_actions.store(true, Ordering::Relaxed);
    with_browser("cdp_an_api_error_is_shown_on_the_page", &fake, |url| {
        let page = browser::open(&with_token(url, TOKEN));
        let id = JOB_WITH_PREVIEW;
        let status = in_card(id, ".badge.status");
        page.wait_for("the active job", &text_is(&status, "active"));
        assert!(!page.visible("#action-message"));
        page.click(&in_card(id, r#"button[data-action="pause"]"#));
        page.wait_for(
            "the refusal",
            "document.getElementById('action-message').dataset.state === 'error'",
        );
        let message = page.text("#action-text");
        assert_eq!(
            message,
            format!(
                "Pause of job water bottle ({id}) failed: POST /api/v1/jobs/{id}/pause answered \
                 HTTP 409 Conflict: {REFUSAL}"
            )
        );
        assert!(page.visible("#action-message"));
        // The job is as it was, and its buttons work again.
        assert_eq!(page.text(&status), "active");
        page.wait_for(
            "the pause button enabled again",
            &format!(
                "!document.querySelector({}).disabled",
                Value::from(in_card(id, r#"button[data-action="pause"]"#))
            ),
        );
        // A priority that is not a number is refused on the page, without a request.
        take_actions(&fake);
        page.type_into(&in_card(id, "input.priority-input"), "-");
        page.click(&in_card(id, r#"button[data-action="priority"]"#));
        page.wait_for(
            "the priority refusal",
            "document.getElementById('action-text').textContent.includes('whole number from -1000 to 1000')",
        );
        assert_eq!(take_actions(&fake), []);
        page.click("#action-dismiss");
        assert!(!page.visible("#action-message"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdp_job_page_lists_tasks_and_events_and_zooms_the_preview() {
    let fake = fake_manager();
    with_browser("cdp_job_page_lists_tasks_and_events_and_zooms_the_preview", &fake, |url| {
        let id = JOB_WITH_PREVIEW;
        let page = browser::open(&format!("{url}#job/{id}&token={TOKEN}"));
        page.wait_for(
            "the tasks",
            "document.querySelectorAll('#job-task-rows tr').length === 10",
        );
        // The token left the address, the view stayed.
        assert_eq!(page.eval("location.hash"), Value::from(format!("#job/{id}")));
        assert!(!page.visible("#overview"));
        assert_eq!(page.text("#job-head .job-link"), "water bottle");
        let row = |i: u32| page.text(&format!(r#"#job-task-rows tr[data-task-index="{i}"]"#));
        // index, name, state, node, attempts, started, time, error
        assert!(row(0).starts_with("0atlas lightmap tile 0completedd11"), "{}", row(0));
        assert!(row(0).ends_with("30 s"), "a completed task ran 30 s: {}", row(0));
        assert!(row(5).starts_with("5atlas lightmap tile 5runningd21"), "{}", row(5));
        assert!(row(9).starts_with("9atlas lightmap tile 9queued—0—"), "{}", row(9));
        assert_eq!(
            page.eval(r##"document.querySelector('#job-task-rows tr[data-task-index="5"] a').getAttribute('href')"##),
            Value::from(format!("#node/{NODE_ALIAS}"))
        );
        // Its events only.
        page.wait_for(
            "the job's events",
            "document.querySelectorAll('#job-event-rows tr').length === 1",
        );
        assert!(page.text("#job-event-rows").contains(ERROR_EVENT));
        assert!(!page.text("#job-page").contains(OTHER_JOB_EVENT));

        // The large preview: fitted to the viewer, a click zooms in 2x at the point, a drag
        // pans, a double-click fits again.
        page.wait_for(
            "the large preview",
            "document.querySelector('#job-viewer img').dataset.loaded === '1' && \
             Number(document.getElementById('job-viewer').dataset.zoom) > 1",
        );
        page.save_screenshot_if_asked("monitor-job.png", 1300);
        let zoom = || {
            page.eval("Number(document.getElementById('job-viewer').dataset.zoom)")
                .as_f64()
                .unwrap()
        };
        let fitted = zoom();
        page.click("#job-viewer");
        page.wait_for("a zoomed preview", &format!("Number(document.getElementById('job-viewer').dataset.zoom) > {fitted}"));
        assert!((zoom() / fitted - 2.0).abs() < 0.01, "{} then {}", fitted, zoom());
        page.click("#zoom-fit");
        assert!((zoom() - fitted).abs() < 0.001);
        // The wheel zooms too (up: in, by a quarter), about the point under the pointer.
        page.wheel("#job-viewer", (-100.0, -50.0), -100.0);
        page.wait_for("a wheel zoom", &format!("Number(document.getElementById('job-viewer').dataset.zoom) > {fitted}"));
        assert!((zoom() / fitted - 1.25).abs() < 0.01, "{} then {}", fitted, zoom());
        // A drag pans (and does not zoom): the image moves with the pointer.
        let offset = || {
            page.eval("(() => { const b = document.querySelector('#job-viewer img').getBoundingClientRect(); return [b.left, b.top]; })()")
        };
        let before = offset();
        page.drag("#job-viewer", 60.0, 40.0);
        let after = offset();
        let moved = |i: usize| after[i].as_f64().unwrap() - before[i].as_f64().unwrap();
        assert!((moved(0) - 60.0).abs() < 1.0 && (moved(1) - 40.0).abs() < 1.0, "{before} then {after}");
        assert!((zoom() / fitted - 1.25).abs() < 0.01, "a drag zoomed: {} then {}", fitted, zoom());
        page.eval("document.getElementById('job-viewer').dispatchEvent(new MouseEvent('dblclick'))");
        assert!((zoom() - fitted).abs() < 0.001);

        // An action on the job page acts on its job.
        page.click(r#"#job-head button[data-action="pause"]"#);
        page.wait_for("the paused job", &text_is("#job-head .badge.status", "paused"));
        assert_eq!(
            take_actions(&fake),
            [action("POST", &format!("/api/v1/jobs/{id}/pause"), "")]
        );

        // A job that is not in the queue says so.
        page.eval("location.hash = '#job/j00000000'");
        page.wait_for(
            "the missing job",
            "document.getElementById('job-missing').textContent.includes('is not in the manager')",
        );
        assert!(!page.visible("#banner"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdp_node_page_shows_its_fields_tasks_and_exclusions() {
    let fake = fake_manager();
    with_browser(
        "cdp_node_page_shows_its_fields_tasks_and_exclusions",
        &fake,
        |url| {
            let page = browser::open(&with_token(url, TOKEN));
            // From the overview: the node's address is a link to its page.
            page.click(&format!(r#"#node-rows tr[data-node-key="{NODE_ADDR}"] a"#));
            page.wait_for(
                "the node's tasks",
                "document.querySelectorAll('#node-task-rows tr').length === 2",
            );
            assert_eq!(
                page.eval("location.hash"),
                Value::from(format!("#node/{NODE_ADDR}"))
            );
            assert_eq!(fake.node_requests.lock().unwrap()[0], NODE_ALIAS);
            let field = |name: &str| page.text(&format!(r#"#node-fields dd[data-field="{name}"]"#));
            assert_eq!(field("address"), NODE_ADDR);
            assert_eq!(field("alias"), NODE_ALIAS);
            assert_eq!(field("threads"), "2");
            assert_eq!(field("cpu"), "Test CPU 9000 (16 threads on the machine)");
            assert_eq!(
                field("gpus"),
                "Test GPU A, Test GPU B (rendering runs on the CPU)"
            );
            assert_eq!(field("state"), "working");
            assert_eq!(
                field("current-job"),
                format!("water bottle ({JOB_WITH_PREVIEW})")
            );
            assert_eq!(field("current-task"), "atlas lightmap tile 3");
            let tasks = page.text("#node-task-rows");
            assert!(tasks.contains("atlas lightmap tile 3running"), "{tasks}");
            assert!(tasks.contains(NODE_FAILED_TASK_ERROR), "{tasks}");
            assert!(tasks.contains("5 s"), "the failed task ran 5 s: {tasks}");
            // Exclusions: the hostile job, by name, shown as text.
            assert_eq!(
                page.eval("document.getElementById('node-excluded').dataset.excludedFrom"),
                Value::from(JOB_HOSTILE)
            );
            assert_eq!(
                page.text("#node-excluded"),
                format!("Excluded from: {HOSTILE_NAME} ({JOB_HOSTILE})")
            );
            assert!(page
                .text("#node-failure-rows")
                .contains("yes: gets no more of its tasks"));
            page.wait_for(
                "the node's events",
                "document.querySelectorAll('#node-event-rows tr').length === 1",
            );
            assert!(page.text("#node-event-rows").contains(NODE_EVENT));
            assert_eq!(
                page.eval("document.body.dataset.xss || ''"),
                Value::from("")
            );
        },
    )
    .await;
}
