//! The live view of a render or bake, served over HTTP (`rayfarm render --view`).
//!
//! The page (rayfarm-web's `live.html`) polls three routes on the same origin:
//! - `GET /api/v1/live`: [`LiveJson`], the job's state, nodes, regions and ETA;
//! - `GET /api/v1/live/image.png`: the image as it converges (at most
//!   [`rayfarm_master::live::PREVIEW_MAX_EDGE`] a side, sRGB, clamped), 204 before any result;
//! - `POST /api/v1/live/stop`: ends the job cleanly; the output gets what is done.
//!
//! On a loopback address the routes are open to this machine, to requests addressed to it: a
//! `Host` that is not a loopback address or `localhost` (a DNS-rebinding page) and a POST whose
//! `Origin` is another site (a page in the artist's browser stopping the render) get 403
//! ([`loopback_gate`]). On any other address every `/api/v1` route needs the farm's API token
//! (`Authorization: Bearer`, as the manager's API), so nobody on the LAN without the key sees
//! the image or stops the render. The same HTTP limits as the manager's API apply
//! ([`crate::http::HttpLimits`]).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rayfarm_master::live::{LiveSnapshot, LiveView};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(
        "{addr}: not an address and port (e.g. 127.0.0.1:0, or 0.0.0.0:8090 to serve the LAN)"
    )]
    BadAddr { addr: String },
    #[error("{addr}: serving beyond this machine needs the farm key, so clients must send its API token (set RAYFARM_KEY or the config's `key`, or use 127.0.0.1)")]
    NeedsKey { addr: String },
    #[error("{addr}: cannot listen: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// `GET /api/v1/live`: the job's [`LiveSnapshot`] (PROTOCOL.md lists its fields) and its
/// progress from 0 to 1.
#[derive(Serialize, Debug)]
pub struct LiveJson {
    #[serde(flatten)]
    pub job: LiveSnapshot,
    pub progress: f64,
}

impl From<LiveSnapshot> for LiveJson {
    fn from(job: LiveSnapshot) -> LiveJson {
        let progress = if job.samples_total > 0 {
            job.samples_done as f64 / job.samples_total as f64
        } else {
            0.0
        };
        LiveJson { job, progress }
    }
}

#[derive(Clone)]
struct Live {
    view: Arc<LiveView>,
    /// The last PNG made, by image version: polls between results cost nothing.
    png: Arc<Mutex<Option<(u64, Arc<Vec<u8>>)>>>,
}

/// A live view being served.
pub struct LiveServer {
    pub addr: SocketAddr,
    /// Whether the routes need the farm's API token (the address is not loopback).
    pub needs_token: bool,
}

impl LiveServer {
    /// The address to open, e.g. `http://127.0.0.1:40123/`.
    pub fn url(&self) -> String {
        let host = if self.addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            self.addr.ip().to_string()
        };
        match self.addr {
            SocketAddr::V6(_) => format!("http://[{host}]:{}/", self.addr.port()),
            SocketAddr::V4(_) => format!("http://{host}:{}/", self.addr.port()),
        }
    }
}

/// The live view's routes (with `page`, the HTML at `/`) for `view`; behind the token when
/// `key` is given.
pub fn router(view: Arc<LiveView>, key: Option<rayfarm_proto::FarmKey>, page: Router) -> Router {
    let live = Live {
        view,
        png: Arc::new(Mutex::new(None)),
    };
    let api = Router::new()
        .route("/api/v1/live", get(live_json))
        .route("/api/v1/live/image.png", get(live_png))
        .route("/api/v1/live/stop", post(live_stop))
        .route("/metrics", get(live_metrics))
        .with_state(live);
    let api = match key {
        Some(key) => api.layer(axum::middleware::from_fn_with_state(
            Arc::new(key),
            crate::api::require_token,
        )),
        None => api,
    };
    api.merge(page)
}

/// Listens on `addr` and serves `view` (and `page` at `/`) until `stop` flips. Beyond loopback
/// the farm `key` is required and every API route needs its token.
pub async fn start(
    addr: &str,
    view: Arc<LiveView>,
    key: Option<rayfarm_proto::FarmKey>,
    page: Router,
    stop: watch::Receiver<bool>,
) -> Result<(LiveServer, impl std::future::Future<Output = ()> + Send), LiveError> {
    let (listener, server, key) = bind(addr, key).await?;
    let gate = gate_for(&server, key.clone());
    let (_, serving) = crate::http::serve(
        listener,
        router(view, key, page),
        crate::http::HttpLimits::default(),
        None,
        Some(gate),
        stop,
    );
    Ok((server, serving))
}

/// The transport gate of a served view: the token's beyond loopback, else [`loopback_gate`].
fn gate_for(server: &LiveServer, key: Option<rayfarm_proto::FarmKey>) -> crate::http::Gate {
    match key {
        Some(key) => crate::api::token_gate(key),
        None => loopback_gate(server.addr.port()),
    }
}

/// Whether `host` (a `Host` header's or an origin's host, without the port) names this machine:
/// `localhost` or a loopback address.
fn is_loopback_name(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Splits `host[:port]` (an IPv6 address in brackets) into host and port.
fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if s.starts_with('[') {
        return match s.find(']') {
            Some(end) => (&s[..=end], s[end + 1..].strip_prefix(':')),
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    }
}

/// The gate of a view served on loopback without a token. A request whose `Host` is not
/// `localhost` or a loopback address is refused (a page on another site whose name was made to
/// resolve to 127.0.0.1, "DNS rebinding", could otherwise read the image), and so is any
/// request but GET and HEAD whose `Origin` is not the page's own (`http://` the request's
/// `Host`, or a loopback name and `port` without one): a page on another site could otherwise
/// stop the render with a form or a `no-cors` fetch, which browsers send without asking. The
/// view takes no request bodies. Requests without these headers (curl,
/// scripts) go through: only browsers send them, and they cannot be made to omit them.
pub fn loopback_gate(port: u16) -> crate::http::Gate {
    use axum::http::Method;
    Arc::new(move |parts| {
        let forbidden = |why: &str| Some((StatusCode::FORBIDDEN, why.to_string()).into_response());
        let host = parts
            .headers
            .get(header::HOST)
            .map(|h| h.to_str().unwrap_or(""));
        if let Some(host) = host {
            if !is_loopback_name(split_host_port(host).0) {
                return forbidden(
                    "this live view answers only requests to this machine (Host must be localhost or a loopback address)",
                );
            }
        }
        if crate::http::announces_body(parts) {
            return forbidden("this live view takes no request bodies");
        }
        if !matches!(parts.method, Method::GET | Method::HEAD) {
            if let Some(origin) = parts.headers.get(header::ORIGIN) {
                // Same origin: the page's own scheme, host and port, as the request was
                // addressed (through an SSH tunnel the browser's port is not the view's).
                let own = port.to_string();
                let same = origin
                    .to_str()
                    .ok()
                    .and_then(|o| o.strip_prefix("http://"))
                    .is_some_and(|o| {
                        let (h, p) = split_host_port(o);
                        is_loopback_name(h)
                            && match host {
                                Some(host) => o.eq_ignore_ascii_case(host),
                                None => p == Some(own.as_str()),
                            }
                    });
                if !same {
                    return forbidden("this live view takes requests from its own page only");
                }
            }
        }
        None
    })
}

/// The metrics text a [`serve_metrics`] route answers with.
pub type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` (the Prometheus text `render` makes) on `addr` until `stop` flips:
/// `rayfarm daemon --metrics`. The same rule as the live view: open on loopback, the farm's
/// API token elsewhere.
pub async fn serve_metrics(
    addr: &str,
    key: Option<rayfarm_proto::FarmKey>,
    render: MetricsFn,
    stop: watch::Receiver<bool>,
) -> Result<(LiveServer, impl std::future::Future<Output = ()> + Send), LiveError> {
    let (listener, server, key) = bind(addr, key).await?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move { prometheus_text(render()) }
        }),
    );
    let gate = gate_for(&server, key.clone());
    let app = match key {
        Some(key) => app.layer(axum::middleware::from_fn_with_state(
            Arc::new(key),
            crate::api::require_token,
        )),
        None => app,
    };
    let (_, serving) = crate::http::serve(
        listener,
        app,
        crate::http::HttpLimits::default(),
        None,
        Some(gate),
        stop,
    );
    Ok((server, serving))
}

/// A bound listener, what it serves, and the key its routes need.
type Bound = (
    tokio::net::TcpListener,
    LiveServer,
    Option<rayfarm_proto::FarmKey>,
);

/// Binds `addr`; the key the routes need is none on loopback, else `key` (which must be given).
async fn bind(addr: &str, key: Option<rayfarm_proto::FarmKey>) -> Result<Bound, LiveError> {
    let sock: SocketAddr = addr.parse().map_err(|_| LiveError::BadAddr {
        addr: addr.to_string(),
    })?;
    let needs_token = !sock.ip().is_loopback();
    let key = match (needs_token, key) {
        (false, _) => None,
        (true, Some(k)) => Some(k),
        (true, None) => {
            return Err(LiveError::NeedsKey {
                addr: addr.to_string(),
            })
        }
    };
    let listener = tokio::net::TcpListener::bind(sock)
        .await
        .map_err(|source| LiveError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| LiveError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    let server = LiveServer {
        addr: local,
        needs_token,
    };
    Ok((listener, server, key))
}

/// A Prometheus text-format answer.
fn prometheus_text(body: String) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            NO_STORE,
        ],
        body,
    )
        .into_response()
}

async fn live_json(State(l): State<Live>) -> Json<LiveJson> {
    Json(l.view.snapshot().into())
}

const NO_STORE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-store");

async fn live_png(State(l): State<Live>) -> Response {
    let version = l.view.snapshot().image_version;
    if let Some((v, png)) = l.png.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        if v == version {
            return png_response(png);
        }
    }
    let view = l.view.clone();
    let made = tokio::task::spawn_blocking(move || {
        let p = view.preview()?;
        let srgb = rayfarm_job::images::to_srgb8(&p.rgb, 0.0, rayfarm_job::images::ToneMap::Clamp);
        rayfarm_job::images::encode_png_rgb8(p.width, p.height, &srgb).ok()
    })
    .await
    .ok()
    .flatten();
    match made {
        Some(png) => {
            let png = Arc::new(png);
            *l.png.lock().unwrap_or_else(|p| p.into_inner()) = Some((version, png.clone()));
            png_response(png)
        }
        None => (StatusCode::NO_CONTENT, [NO_STORE]).into_response(),
    }
}

fn png_response(png: Arc<Vec<u8>>) -> Response {
    (
        [(header::CONTENT_TYPE, "image/png"), NO_STORE],
        png.as_ref().clone(),
    )
        .into_response()
}

/// Prometheus text format (0.0.4) of the job a view shows: the master's metrics.
async fn live_metrics(State(l): State<Live>) -> Response {
    let s = l.view.snapshot();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in lines {
            out.push_str(&format!("{name}{labels} {value}\n"));
        }
    };
    metric(
        "rayfarm_master_samples_total",
        "counter",
        "Samples merged into the job's image.",
        vec![(String::new(), s.samples_done.to_string())],
    );
    metric(
        "rayfarm_master_samples_target",
        "gauge",
        "Samples the job has in all.",
        vec![(String::new(), s.samples_total.to_string())],
    );
    metric(
        "rayfarm_master_node_samples_total",
        "counter",
        "Samples each node rendered for the job.",
        s.nodes
            .iter()
            .map(|n| {
                (
                    format!("{{node=\"{}\"}}", label(&n.name)),
                    n.samples.to_string(),
                )
            })
            .collect(),
    );
    let mut states = std::collections::BTreeMap::new();
    for st in ["rendering", "left", "done", "unavailable"] {
        states.insert(st, 0u64);
    }
    for n in &s.nodes {
        *states.entry(n.state).or_default() += 1;
    }
    metric(
        "rayfarm_master_nodes",
        "gauge",
        "Nodes of the job by state.",
        states
            .iter()
            .map(|(st, n)| (format!("{{state=\"{st}\"}}"), n.to_string()))
            .collect(),
    );
    metric(
        "rayfarm_master_running",
        "gauge",
        "1 while the job renders, 0 once it ended.",
        vec![(
            String::new(),
            u8::from(matches!(
                s.state.as_str(),
                "starting" | "rendering" | "stopping"
            ))
            .to_string(),
        )],
    );
    prometheus_text(out)
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn live_stop(State(l): State<Live>) -> Response {
    if l.view.request_stop() {
        (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"stopping": true})),
        )
            .into_response()
    } else {
        (
            StatusCode::CONFLICT,
            Json(serde_json::json!({"error": "the job has already ended"})),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayfarm_master::scheduler::Scheduler;
    use rayfarm_render::film::Region;
    use rayfarm_render::{UnitResult, WorkUnit};

    async fn call(
        app: &Router,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, Vec<u8>) {
        use tower::ServiceExt;
        let mut req = axum::http::Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let r = app
            .clone()
            .oneshot(req.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 24).await.unwrap();
        (status, body.to_vec())
    }

    fn job() -> (Arc<LiveView>, Arc<Mutex<Scheduler>>) {
        let view = LiveView::new("cornell", "render", 8, 8, 2, 1);
        let units = rayfarm_render::plan_units_progressive(8, 8, 2, 4, 16);
        let mut s = Scheduler::new(vec![Region::full(8, 8)], units);
        s.track_progress();
        let sched = Arc::new(Mutex::new(s));
        view.attach(sched.clone());
        (view, sched)
    }

    fn complete_one(sched: &Mutex<Scheduler>) {
        let mut s = sched.lock().unwrap();
        let node = s.add_node("d2 (127.0.0.2:5000)".into(), 2);
        let u: WorkUnit = s.take(node).unwrap();
        let one = 1i128 << rayfarm_render::film::FIXED_FRAC_BITS;
        assert!(s.complete(
            node,
            UnitResult {
                unit: u,
                sums: vec![[one, one / 2, 0]; u.pixels()],
                nonfinite_samples: 0
            }
        ));
        let st = s.status(0);
        drop(s);
        let _ = st;
    }

    /// One request over a real connection; the status code.
    async fn raw_status(addr: SocketAddr, req: String) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        out.get(9..12)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {out}"))
    }

    /// The attacks on a view served on loopback without a token: a page on another site in the
    /// artist's browser posting to the stop route (a `no-cors` fetch or a form, which browsers
    /// send without a preflight), and a DNS-rebinding page reading the image under its own
    /// host name. Both get 403 and the render goes on; the view's own page (and curl, which
    /// sends no `Origin`) still work.
    #[tokio::test]
    async fn a_loopback_view_refuses_other_sites_and_rebound_host_names() {
        let (view, _sched) = job();
        let (_stop_tx, stop_rx) = watch::channel(false);
        let (server, serving) = start("127.0.0.66:0", view.clone(), None, Router::new(), stop_rx)
            .await
            .unwrap();
        tokio::spawn(serving);
        let (addr, port) = (server.addr, server.addr.port());
        let post = |origin: &str| {
            format!(
                "POST /api/v1/live/stop HTTP/1.1\r\nHost: 127.0.0.66:{port}\r\n{origin}Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
        };
        let get = |host: &str| {
            format!("GET /api/v1/live HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
        };
        assert_eq!(
            raw_status(addr, post("Origin: http://evil.example\r\n")).await,
            403
        );
        assert_eq!(raw_status(addr, post("Origin: null\r\n")).await, 403);
        assert_eq!(
            raw_status(
                addr,
                post(&format!("Origin: http://127.0.0.66:{}\r\n", port ^ 1))
            )
            .await,
            403,
            "another port on this machine is another site"
        );
        assert!(
            !*view.stop_requested().borrow(),
            "a refused stop stopped the render"
        );
        assert_eq!(
            raw_status(addr, get(&format!("evil.example:{port}"))).await,
            403
        );
        assert_eq!(raw_status(addr, get("127.0.0.66.evil.example")).await, 403);
        assert_eq!(
            raw_status(addr, get(&format!("127.0.0.66:{port}"))).await,
            200
        );
        assert_eq!(
            raw_status(addr, get(&format!("localhost:{port}"))).await,
            200
        );
        assert_eq!(raw_status(addr, get(&format!("[::1]:{port}"))).await, 200);
        // Through an SSH tunnel the browser addresses its own port, and its Origin says so.
        let tunnel = "POST /api/v1/live/stop HTTP/1.1\r\nHost: localhost:9000\r\nOrigin: http://localhost:9000\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx";
        assert_eq!(raw_status(addr, tunnel.to_string()).await, 403, "a body");
        let own = raw_status(addr, post(&format!("Origin: http://127.0.0.66:{port}\r\n"))).await;
        assert_eq!(own, 202, "the view's own stop button");
        let tunnel = "POST /api/v1/live/stop HTTP/1.1\r\nHost: localhost:9000\r\nOrigin: http://localhost:9000\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        assert_ne!(
            raw_status(addr, tunnel.to_string()).await,
            403,
            "the stop button through a tunnel"
        );
        assert!(*view.stop_requested().borrow());
    }

    #[tokio::test]
    async fn the_view_shows_state_image_and_regions_and_its_stop_button_stops() {
        let (view, sched) = job();
        let app = router(view.clone(), None, Router::new());
        let (st, _) = call(&app, "GET", "/api/v1/live/image.png", None).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "an image before any result");
        complete_one(&sched);
        view.update(&sched.lock().unwrap().status(0));
        let (st, body) = call(&app, "GET", "/api/v1/live", None).await;
        assert_eq!(st, StatusCode::OK);
        let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(j["state"], "rendering");
        assert_eq!(j["title"], "cornell");
        assert_eq!(j["nodes"][0]["name"], "d2 (127.0.0.2:5000)");
        assert_eq!(j["regions"][0]["node"], "d2 (127.0.0.2:5000)");
        assert_eq!(j["samples_done"], 64, "the first pass covers the 8x8 image");
        let (st, png) = call(&app, "GET", "/api/v1/live/image.png", None).await;
        assert_eq!(st, StatusCode::OK);
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (8, 8));
        assert_eq!(
            img.get_pixel(0, 0).0,
            [255, 188, 0],
            "linear (1, 0.5, 0) in sRGB"
        );
        let (st, metrics) = call(&app, "GET", "/metrics", None).await;
        assert_eq!(st, StatusCode::OK);
        let metrics = String::from_utf8(metrics).unwrap();
        assert!(
            metrics.contains("rayfarm_master_samples_total 64\n"),
            "{metrics}"
        );
        assert!(
            metrics
                .contains("rayfarm_master_node_samples_total{node=\"d2 (127.0.0.2:5000)\"} 64\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("rayfarm_master_nodes{state=\"rendering\"} 1\n"),
            "{metrics}"
        );
        let (st, _) = call(&app, "POST", "/api/v1/live/stop", None).await;
        assert_eq!(st, StatusCode::ACCEPTED);
        assert!(*view.stop_requested().borrow());
        view.finish(true, None, &[]);
        let (st, _) = call(&app, "POST", "/api/v1/live/stop", None).await;
        assert_eq!(st, StatusCode::CONFLICT, "stopping an ended job");
    }

    #[tokio::test]
    async fn beyond_loopback_every_route_needs_the_farms_token() {
        let key = rayfarm_proto::FarmKey::from_secret("a farm key of some length").unwrap();
        let (view, _) = job();
        let app = router(view.clone(), Some(key.clone()), Router::new());
        for (m, p) in [
            ("GET", "/metrics"),
            ("GET", "/api/v1/live"),
            ("GET", "/api/v1/live/image.png"),
            ("POST", "/api/v1/live/stop"),
        ] {
            let (st, _) = call(&app, m, p, None).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{m} {p} without a token");
            let (st, _) = call(&app, m, p, Some("rft1-not-the-token")).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{m} {p} with a wrong token");
        }
        assert!(
            !*view.stop_requested().borrow(),
            "a stranger stopped the render"
        );
        let (st, _) = call(&app, "GET", "/api/v1/live", Some(&key.api_token())).await;
        assert_eq!(st, StatusCode::OK);
        // Serving the LAN without a key is refused before anything listens.
        let (_tx, rx) = watch::channel(false);
        let e = start("0.0.0.0:0", view, None, Router::new(), rx)
            .await
            .err()
            .unwrap();
        assert!(matches!(e, LiveError::NeedsKey { .. }), "{e}");
    }
}
