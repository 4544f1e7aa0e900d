//! The monitor page in a real headless Chromium, against a fake manager API on loopback.
//!
//! Each test starts an axum server on 127.0.0.1 (port 0) made of `rayfarm_web::routes()` and a
//! fake `/api/v1` serving canned JSON to requests carrying [`TOKEN`] (401 otherwise, like the
//! manager), runs `/usr/bin/chromium --headless=new` on it with a
//! virtual-time budget (so the page's one-second polling runs a few times), and asserts on the
//! DOM Chromium dumps after the scripts ran, or on its screenshot.
//!
//! Without `/usr/bin/chromium` the browser tests print a notice and pass, unless
//! `RAYFARM_REQUIRE_SHARED=1` (as in CI), where they fail and say to install it.
//!
//! Shutdown: each server task runs on its test's tokio runtime and ends when the test returns
//! and the runtime is dropped. Each Chromium runs in its own process group with its own
//! profile directory and is killed (the whole group) after [`CHROMIUM_TIMEOUT`].

use std::io::Cursor;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHROMIUM: &str = "/usr/bin/chromium";
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
}

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
        {"addr": "127.0.0.2:48000", "alias": "d2", "threads": 2, "state": "working",
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

fn events_json() -> Value {
    json!({"events": [
        {"time_ms": now_ms() - 5_000, "level": "error", "message": ERROR_EVENT,
         "job": JOB_WITH_PREVIEW, "node": "127.0.0.3:48000"}
    ]})
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
        .route("/api/v1/jobs", get(|| async { Json(jobs_json()) }))
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

/// Whether Chromium is installed; without it the test is skipped, unless CI requires it.
fn chromium_available(test: &str) -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    if std::env::var("RAYFARM_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!(
            "{test}: {CHROMIUM} is missing and RAYFARM_REQUIRE_SHARED=1 requires it; \
             install it with `apt-get install -y chromium` (with sudo when not root)"
        );
    }
    eprintln!(
        "skipping {test}: {CHROMIUM} is missing; install it with `apt-get install -y chromium`"
    );
    false
}

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
