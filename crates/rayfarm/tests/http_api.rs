//! End-to-end tests of the manager's HTTP API playing the attacker: requests without the farm's
//! API token (or with another farm's), a cross-site form post, bodies sent without the token, a
//! registration flood, a flood of idle connections and a flood of preview requests for a large
//! job; and the same token over https (`--tls-cert/--tls-key`).
//!
//! Every test runs a real `rayfarm manager` (no daemons: jobs stay queued) on its own loopback
//! address (127.0.0.60 and up) and port (23600 + 10 per test), so this file runs alongside the
//! other test files. The whole file takes well under a minute.

mod common;

use common::farm::{agent, api_token, strings, Farm};
use common::proc::Proc;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// An HTTP answer: status, `WWW-Authenticate`, body.
struct Answer {
    status: u16,
    www_authenticate: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends `method url` with `headers` and an optional body.
fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut r = agent
        .run(req.body(body.unwrap_or("").to_string()).unwrap())
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    Answer {
        status: r.status().as_u16(),
        www_authenticate: r
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap_or("").to_string()),
        body: r.body_mut().read_to_string().unwrap_or_default(),
    }
}

fn bearer() -> String {
    format!("Bearer {}", api_token())
}

/// GETs an API path with the right token; the JSON answer.
fn get(agent: &ureq::Agent, base: &str, path: &str) -> Value {
    let a = send(
        agent,
        "GET",
        &format!("{base}{path}"),
        &[("Authorization", &bearer())],
        None,
    );
    assert_eq!(a.status, 200, "GET {path}: {}", a.body);
    a.json()
}

/// The tokens an attacker might try, with what they are.
fn bad_authorizations() -> Vec<(Option<String>, &'static str)> {
    let other = rayfarm_proto::FarmKey::from_secret("another-farm-entirely-42")
        .unwrap()
        .api_token();
    vec![
        (None, "no Authorization header"),
        (Some(format!("Bearer {other}")), "another farm's token"),
        (
            Some(format!("Bearer rft1-{}", "0".repeat(64))),
            "a made-up token",
        ),
        (Some(api_token()), "the token without the Bearer scheme"),
        (Some(format!("Basic {}", api_token())), "the Basic scheme"),
        (Some("Bearer ".into()), "an empty token"),
    ]
}

#[test]
fn every_api_route_refuses_requests_without_the_farms_token() {
    let farm = Farm::new();
    let (ip, port) = ("127.0.0.60", 23600);
    let _m = farm.manager_at(ip, port, &[]);
    let manager = format!("{ip}:{port}");
    let base = format!("http://{manager}");
    let id = farm.submit_bake(&manager);
    let job_dir = farm.net().join(&id).display().to_string();
    let agent = agent();
    let routes: Vec<(&str, String, Option<String>)> = vec![
        ("GET", "/api/v1/status".into(), None),
        ("GET", "/api/v1/jobs".into(), None),
        (
            "POST",
            "/api/v1/jobs".into(),
            Some(json!({ "job_dir": job_dir, "priority": 9 }).to_string()),
        ),
        ("GET", format!("/api/v1/jobs/{id}"), None),
        (
            "POST",
            format!("/api/v1/jobs/{id}/pause"),
            Some("{}".into()),
        ),
        (
            "POST",
            format!("/api/v1/jobs/{id}/resume"),
            Some("{}".into()),
        ),
        (
            "POST",
            format!("/api/v1/jobs/{id}/cancel"),
            Some("{}".into()),
        ),
        (
            "POST",
            format!("/api/v1/jobs/{id}/priority"),
            Some(r#"{"priority": 9}"#.into()),
        ),
        ("DELETE", format!("/api/v1/jobs/{id}?force=true"), None),
        ("GET", format!("/api/v1/jobs/{id}/preview.png"), None),
        ("GET", "/api/v1/nodes".into(), None),
        ("GET", "/api/v1/nodes/d1".into(), None),
        ("GET", "/metrics".into(), None),
        (
            "POST",
            "/api/v1/nodes/register".into(),
            Some(json!({ "addr": "127.0.0.66:48000" }).to_string()),
        ),
        ("GET", "/api/v1/events".into(), None),
        ("GET", "/api/v1/openapi.json".into(), None),
        ("GET", "/api/v1/no-such-route".into(), None),
    ];
    let before = get(&agent, &base, &format!("/api/v1/jobs/{id}"));
    for (method, path, body) in &routes {
        for (auth, what) in bad_authorizations() {
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(a) = &auth {
                headers.push(("Authorization", a));
            }
            let a = send(
                &agent,
                method,
                &format!("{base}{path}"),
                &headers,
                body.as_deref(),
            );
            assert_eq!(a.status, 401, "{method} {path} with {what}: {}", a.body);
            assert_eq!(
                a.www_authenticate.as_deref(),
                Some("Bearer realm=\"rayfarm\""),
                "{method} {path} with {what}"
            );
            let error = a.json()["error"].as_str().unwrap_or("").to_string();
            assert!(
                error.contains("rayfarm key api-token"),
                "{method} {path} with {what}: {error}"
            );
        }
    }
    // A cross-site HTML form: it cannot set Authorization, and it is refused.
    let a = send(
        &agent,
        "POST",
        &format!("{base}/api/v1/jobs/{id}/cancel"),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", "http://evil.example"),
            ("Referer", "http://evil.example/page.html"),
        ],
        Some("confirm=1"),
    );
    assert_eq!(a.status, 401, "cross-site form post: {}", a.body);

    // Nothing happened: the job is as it was, nobody registered, no event says otherwise.
    let after = get(&agent, &base, &format!("/api/v1/jobs/{id}"));
    // No node is known, so the job shows as blocked (and says why); nothing canceled it.
    assert_eq!(after["job"]["status"], "blocked");
    assert_eq!(after["job"], before["job"]);
    let status = get(&agent, &base, "/api/v1/status");
    assert_eq!(status["registered_nodes"], 0, "{status}");
    assert_eq!(status["jobs"], 1, "{status}");
    let events = get(&agent, &base, "/api/v1/events").to_string();
    for word in ["paused", "resumed", "canceled", "deleted", "registered"] {
        assert!(!events.contains(word), "an event says {word}: {events}");
    }
    // The monitor page itself is served without a token, and holds no data.
    let page = send(&agent, "GET", &format!("{base}/"), &[], None);
    assert_eq!(page.status, 200);
    assert!(!page.body.contains(&id));

    // With the token every route is served.
    let auth = bearer();
    let with = |method: &str, path: &str, body: Option<&str>| {
        send(
            &agent,
            method,
            &format!("{base}{path}"),
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body,
        )
    };
    for path in [
        "/api/v1/status",
        "/api/v1/jobs",
        "/api/v1/nodes",
        "/api/v1/events",
    ] {
        assert_eq!(with("GET", path, None).status, 200, "GET {path}");
    }
    // The OpenAPI document served is the one checked in.
    let a = with("GET", "/api/v1/openapi.json", None);
    assert_eq!(a.status, 200, "openapi.json: {}", a.body);
    let checked_in = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json"),
    )
    .unwrap();
    assert!(
        a.body == checked_in,
        "the served OpenAPI document is not docs/openapi.json"
    );
    // A node the queue never saw has done nothing (not 404: it may just have joined); a name
    // that cannot be a node's is refused.
    let a = with("GET", "/api/v1/nodes/nobody", None);
    assert_eq!(a.status, 200, "GET /api/v1/nodes/nobody: {}", a.body);
    assert_eq!(
        a.json(),
        json!({"name": "nobody", "node": null, "tasks": [], "failures": [], "excluded_from": []})
    );
    let long = "n".repeat(200);
    let a = with("GET", &format!("/api/v1/nodes/{long}"), None);
    assert_eq!(a.status, 400, "a 200-byte node name: {}", a.body);
    assert!(
        a.json()["error"].as_str().unwrap().contains("node name"),
        "{}",
        a.body
    );
    // The job's tasks have not started.
    let job = with("GET", &format!("/api/v1/jobs/{id}"), None).json();
    for t in job["tasks"].as_array().unwrap() {
        assert!(
            t["started_ms"].is_null() && t["finished_ms"].is_null(),
            "{t}"
        );
    }
    let a = with("GET", &format!("/api/v1/jobs/{id}/preview.png"), None);
    assert_eq!(a.status, 404, "a queued job has no preview yet: {}", a.body);
    assert!(a.json()["error"].as_str().unwrap().contains("no preview"));
    assert_eq!(
        with("GET", "/api/v1/no-such-route", None).status,
        404,
        "unknown route with the token"
    );
    for (action, status) in [
        ("pause", "paused"),
        ("resume", "blocked"),
        ("cancel", "canceled"),
    ] {
        let a = with("POST", &format!("/api/v1/jobs/{id}/{action}"), Some("{}"));
        assert_eq!(a.status, 200, "{action}: {}", a.body);
        assert_eq!(a.json()["job"]["status"], status, "{action}");
    }
    let a = with("GET", "/metrics", None);
    assert_eq!(a.status, 200, "metrics: {}", a.body);
    // Every refusal above was counted (and the unknown route's 404).
    let refused: u64 = a
        .body
        .lines()
        .find_map(|l| l.strip_prefix("rayfarm_api_errors_total{class=\"4xx\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 4xx error counter: {}", a.body));
    assert!(
        refused > (routes.len() * bad_authorizations().len()) as u64,
        "{refused} errors counted"
    );
    assert!(
        a.body.contains("# TYPE rayfarm_jobs gauge")
            && a.body.contains("rayfarm_jobs{status=\"canceled\"} 1")
            && a.body.contains("rayfarm_registered_nodes 0")
            && a.body.contains("# TYPE rayfarm_samples_total counter")
            && a.body.contains("rayfarm_part_bytes_total 0"),
        "{}",
        a.body
    );
    let a = with(
        "POST",
        &format!("/api/v1/jobs/{id}/priority"),
        Some(r#"{"priority": 7}"#),
    );
    assert_eq!(a.status, 200, "priority: {}", a.body);
    assert_eq!(a.json()["job"]["priority"], 7);
    // A body of the wrong shape is refused like every other error, with `{"error": ...}`.
    for (body, status) in [(r#"{"priority": "high"}"#, 422), ("{priority", 400)] {
        let a = with("POST", &format!("/api/v1/jobs/{id}/priority"), Some(body));
        assert_eq!(a.status, status, "priority {body}: {}", a.body);
        assert!(a.json()["error"].is_string(), "{}", a.body);
    }
    let a = with(
        "POST",
        "/api/v1/nodes/register",
        Some(&json!({ "addr": "127.0.0.66:48000" }).to_string()),
    );
    assert_eq!(a.status, 200, "register: {}", a.body);
    let a = with("DELETE", &format!("/api/v1/jobs/{id}?force=true"), None);
    assert_eq!(a.status, 200, "delete: {}", a.body);
    let a = with(
        "POST",
        "/api/v1/jobs",
        Some(&json!({ "job_dir": job_dir }).to_string()),
    );
    assert_eq!(a.status, 201, "submit again: {}", a.body);

    // The CLI with another farm's key says so, naming the manager.
    let mut env = farm.env();
    env.retain(|(k, _)| *k != "RAYFARM_KEY");
    env.push(("RAYFARM_KEY", "another-farm-entirely-42".into()));
    let mut p = Proc::start(
        "jobs with another key",
        &strings(&["jobs", "--manager", &manager]),
        &env,
    );
    let st = p.wait(Duration::from_secs(30));
    assert!(!st.success(), "{}", p.describe());
    let err = p.stderr();
    assert!(
        err.contains(&manager) && err.contains("farm keys differ"),
        "{err}"
    );
}

#[test]
fn a_registration_flood_keeps_at_most_the_limit_and_nothing_without_the_token() {
    let farm = Farm::new();
    let (ip, port) = ("127.0.0.61", 23610);
    // A slow scan: the manager would otherwise spend the test probing the flood's addresses.
    let _m = farm.manager_with(ip, port, &[], "30");
    let base = format!("http://{ip}:{port}");
    let url = format!("{base}/api/v1/nodes/register");
    let agent = agent();
    let limit = rayfarm_farm::registry::MAX_REGISTERED_NODES;
    let n = 3000;
    let addr = |i: usize| format!("127.0.{}.{}:48000", 100 + i / 250, 1 + i % 250);
    for i in 0..n {
        let body = json!({ "addr": addr(i) }).to_string();
        let a = send(
            &agent,
            "POST",
            &url,
            &[("Content-Type", "application/json")],
            Some(&body),
        );
        assert_eq!(a.status, 401, "registration {i} without the token");
    }
    assert_eq!(get(&agent, &base, "/api/v1/status")["registered_nodes"], 0);
    let auth = bearer();
    let (mut kept, mut refused) = (0, 0);
    for i in 0..n {
        let body = json!({ "addr": addr(i) }).to_string();
        let a = send(
            &agent,
            "POST",
            &url,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(&body),
        );
        match a.status {
            200 => kept += 1,
            503 => {
                refused += 1;
                assert!(
                    a.json()["error"].as_str().unwrap().contains("limit"),
                    "{}",
                    a.body
                );
            }
            s => panic!("registration {i}: HTTP {s}: {}", a.body),
        }
    }
    assert_eq!((kept, refused), (limit, n - limit));
    assert_eq!(
        get(&agent, &base, "/api/v1/status")["registered_nodes"],
        limit
    );
    // A known daemon registering again is still welcome when the table is full.
    let a = send(
        &agent,
        "POST",
        &url,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(&json!({ "addr": addr(0) }).to_string()),
    );
    assert_eq!(a.status, 200, "{}", a.body);
}

#[test]
fn idle_connections_do_not_keep_a_real_client_out() {
    let farm = Farm::new();
    let (ip, port) = ("127.0.0.62", 23620);
    let _m = farm.manager_at(ip, port, &[]);
    let manager = format!("{ip}:{port}");
    // 600 connections that say nothing, or half a request, and stay open.
    let mut held = Vec::new();
    for i in 0..600 {
        let mut s = std::net::TcpStream::connect(&manager).unwrap();
        if i % 2 == 1 {
            use std::io::Write;
            let _ = s.write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n");
        }
        held.push(s);
    }
    let t = Instant::now();
    let (ok, out, err) = farm.run(&["jobs", "--manager", &manager]);
    assert!(
        ok,
        "rayfarm jobs failed with 600 idle connections open: {err}"
    );
    assert!(out.contains("STATUS"), "{out}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "rayfarm jobs took {:?} with 600 idle connections open",
        t.elapsed()
    );
    let t = Instant::now();
    let v = get(&agent(), &format!("http://{manager}"), "/api/v1/status");
    assert!(v["version"].is_string());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // The manager closed the oldest ones to stay under its limit.
    let closed = held
        .iter()
        .take(100)
        .filter(|s| {
            use std::io::Read;
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut s: &std::net::TcpStream = s;
            match s.read(&mut [0u8; 64]) {
                Ok(n) => n == 0,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        })
        .count();
    assert!(
        closed >= 88,
        "only {closed} of the 100 oldest connections were closed"
    );
}

/// Peak resident memory of a process (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024
}

#[test]
fn a_preview_flood_of_a_large_job_stays_small() {
    let farm = Farm::new();
    let (ip, port) = ("127.0.0.63", 23630);
    let m = farm.manager_at(ip, port, &[]);
    let manager = format!("{ip}:{port}");
    // A 4096 x 4096 render in tiles of 512: at full resolution one preview would hold 16 Mpx
    // of 48-byte sums (800 MB); six at once took the manager to gigabytes.
    let out = farm.path("big.png");
    let mut args = strings(&["render"]);
    args.push(common::farm::scene().display().to_string());
    args.extend(strings(&[
        "-o",
        &out.display().to_string(),
        "--width",
        "4096",
        "--height",
        "4096",
        "--spp",
        "1",
        "--farm",
        &manager,
        "--netdir",
        &farm.path("net").display().to_string(),
        "--task-tile",
        "512",
        "--no-wait",
        "-q",
    ]));
    let mut c = Proc::start("render client", &args, &farm.env());
    c.wait_ok(Duration::from_secs(60));
    let id = farm
        .net_entries()
        .into_iter()
        .find(|e| e.starts_with('j'))
        .expect("a job folder");
    let job_dir = farm.net().join(&id);
    // Some tiles are done (written here as a node would).
    let (desc, seal) = rayfarm_job::renderjob::AnyJobDesc::read(
        &job_dir.join("job.desc"),
        &common::farm::farm_key(),
    )
    .unwrap();
    let desc = match desc {
        rayfarm_job::renderjob::AnyJobDesc::Render(d) => d,
        _ => panic!("not a render job"),
    };
    let spp = desc.render.spp;
    for i in 0..6 {
        let p = desc.part_desc(i).unwrap();
        let region = p.region();
        let v = rayfarm_render::film::to_fixed(0.25 * (i + 1) as f32) * spp as i128;
        let film = rayfarm_render::Film::from_sums(region, vec![[v, v / 2, 0]; region.pixels()], 0);
        rayfarm_job::parts::write_part(&job_dir, &p, &film, spp, &seal).unwrap();
    }
    let base = format!("http://{manager}");
    let url = format!("{base}/api/v1/jobs/{id}/preview.png");
    let before = peak_rss_mib(m.pid());
    let t = Instant::now();
    for round in 0..2 {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| {
                        let mut r = agent()
                            .get(&url)
                            .header("Authorization", &bearer())
                            .call()
                            .unwrap();
                        assert_eq!(r.status().as_u16(), 200, "round {round}");
                        r.body_mut()
                            .with_config()
                            .limit(64 << 20)
                            .read_to_vec()
                            .unwrap()
                    })
                })
                .collect();
            for h in handles {
                let png = h.join().unwrap();
                let img = image::load_from_memory(&png).unwrap();
                assert_eq!((img.width(), img.height()), (512, 512));
            }
        });
    }
    let peak = peak_rss_mib(m.pid());
    eprintln!("manager peak RSS: {before} MiB before the previews, {peak} MiB after");
    assert!(
        peak < 300,
        "the manager's peak memory went from {before} MiB to {peak} MiB serving 12 previews"
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
}

#[test]
fn over_https_the_cli_needs_the_managers_certificate_and_the_token() {
    let farm = Farm::new();
    let (ip, port) = ("127.0.0.64", 23640);
    // A self-signed certificate for the manager's address, made by openssl.
    let (cert, key) = (farm.path("manager-cert.pem"), farm.path("manager-key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=rayfarm-test"])
        .arg("-addext")
        .arg(format!("subjectAltName=IP:{ip}"))
        // webpki refuses a CA certificate as the server's own.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if !made.is_ok_and(|s| s.success()) {
        assert!(
            std::env::var("RAYFARM_REQUIRE_SHARED").as_deref() != Ok("1"),
            "openssl is missing; install it with `apt-get install -y openssl`"
        );
        eprintln!("skipping the https test: openssl cannot make a certificate");
        return;
    }
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let mut m = farm.manager_extra(
        ip,
        port,
        &[],
        "0.3",
        &["--tls-cert", &cert_s, "--tls-key", &key_s],
    );
    assert!(m.stderr().contains("https"), "{}", m.stderr());
    let https = format!("https://{ip}:{port}");
    let mut env = farm.env();
    env.push(("RAYFARM_MANAGER_CA", cert_s.clone()));
    // The CLI with the certificate and the farm key: served.
    let mut p = Proc::start(
        "jobs over https",
        &strings(&["jobs", "--manager", &https]),
        &env,
    );
    let st = p.wait(Duration::from_secs(30));
    assert!(st.success(), "{}", p.describe());
    assert!(p.stdout().contains("STATUS"), "{}", p.describe());
    // Without the certificate the CLI does not trust the manager, and says what to do.
    let (ok, _, err) = farm.run(&["jobs", "--manager", &https]);
    assert!(!ok);
    assert!(err.contains("RAYFARM_MANAGER_CA"), "{err}");
    // Plain http to the TLS port gets no API answer.
    let plain = agent()
        .get(format!("http://{ip}:{port}/api/v1/status"))
        .header("Authorization", &bearer())
        .call();
    assert!(plain.is_err() || plain.unwrap().status().as_u16() != 200);
    // Over TLS the token is still required.
    let ca = ureq::tls::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let tls_agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]))
                .build(),
        )
        .build()
        .into();
    let url = format!("{https}/api/v1/status");
    let r = tls_agent.get(&url).call().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = tls_agent
        .get(&url)
        .header("Authorization", &bearer())
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(m.running(), "the manager died: {}", m.describe());
}

/// The attack: clients without the token announce large request bodies and send them slowly,
/// one byte per chunk, or never. The manager used to read (and hold) each body before checking
/// the token, about 40 MB per connection for a 1 MiB body in one-byte chunks, and answered only
/// when the body was complete or after 30 s. Now such a request is refused from its headers at
/// once, and a flood of them leaves the manager's memory as it was.
#[test]
fn a_body_without_the_token_is_refused_before_it_is_read() {
    use std::io::{Read, Write};
    let farm = Farm::new();
    let (ip, port) = ("127.0.0.65", 23650);
    let m = farm.manager_at(ip, port, &[]);
    let manager = format!("{ip}:{port}");
    let before = peak_rss_mib(m.pid());
    // Sends the headers of `req` and the start of its body; the answer, which must be a 401
    // within 2 s.
    let refused_at_once = |req: &[u8]| {
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect(&manager).unwrap();
        s.write_all(req).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the refusal took {:?}",
            t.elapsed()
        );
    };
    refused_at_once(
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{",
    );
    // The same announced on an open page: it would hold one of the request permits for 30 s.
    refused_at_once(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n");
    // Eight connections sending chunked bodies a byte per chunk, 64 KiB each, then holding.
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut s = std::net::TcpStream::connect(&manager).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(
            b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        let chunks = b"1\r\nx\r\n".repeat(1 << 16);
        let _ = s.write_all(&chunks);
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let grown = peak_rss_mib(m.pid()).saturating_sub(before);
    assert!(grown < 32, "the manager grew by {grown} MiB");
    // The manager still answers a client with the token at once.
    let t = Instant::now();
    let v = get(&agent(), &format!("http://{manager}"), "/api/v1/status");
    assert!(v["version"].is_string());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}
