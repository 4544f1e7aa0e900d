//! `render --view` / `bake --view`: the live view of a render, over HTTP and in a real headless
//! Chromium.
//!
//! Addresses: daemons on 127.0.0.90 and 127.0.0.91 (port 48000), masters on ports 21800+; no
//! other test uses them. Without `/usr/bin/chromium` the browser test prints a notice and passes,
//! unless `RAYFARM_REQUIRE_SHARED=1` (as in CI). With `RAYFARM_SCREENSHOTS=1` it writes the
//! README's picture, docs/live-view.png.

#[path = "../../rayfarm-web/tests/support/browser.rs"]
mod browser;
mod common;

use common::net::{strings, Farm};
use common::proc::Proc;
use std::time::{Duration, Instant};

/// The address `live view: http://...` on stderr names.
fn view_url(p: &mut Proc) -> String {
    let e = p.wait_stderr("live view: http://", Duration::from_secs(60));
    let at = e.find("live view: ").unwrap() + "live view: ".len();
    e[at..].split_whitespace().next().unwrap().to_string()
}

fn get_json(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Result<serde_json::Value, u16> {
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    match req.call() {
        Ok(mut r) => Ok(serde_json::from_reader(r.body_mut().as_reader()).unwrap()),
        Err(ureq::Error::StatusCode(c)) => Err(c),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(true)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// Polls `GET {url}api/v1/live` until `ok` holds; returns that answer.
fn wait_live(
    url: &str,
    token: Option<&str>,
    within: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let a = agent();
    let t0 = Instant::now();
    loop {
        if let Ok(j) = get_json(&a, &format!("{url}api/v1/live"), token) {
            if ok(&j) {
                return j;
            }
            assert!(t0.elapsed() < within, "the live view never got there: {j}");
        }
        assert!(
            t0.elapsed() < within,
            "the live view does not answer at {url}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn post_stop(url: &str, token: Option<&str>) -> u16 {
    let mut req = agent().post(&format!("{url}api/v1/live/stop"));
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    match req.send_empty() {
        Ok(r) => r.status().as_u16(),
        Err(ureq::Error::StatusCode(c)) => c,
        Err(e) => panic!("POST stop: {e}"),
    }
}

#[test]
fn progressive_plans_render_the_same_bytes_locally_and_with_a_view() {
    let farm = Farm::new();
    let settings = [
        "--width",
        "64",
        "--height",
        "48",
        "--spp",
        "24",
        "--max-bounces",
        "3",
    ];
    let reference = farm.local_render("plain.exr", &settings);
    let progressive = farm.local_render("prog.exr", &[&settings[..], &["--progressive"]].concat());
    assert!(progressive == reference, "--progressive changed the image");
    // A local render with a live view runs through the master's scheduler, progressively.
    let out = farm.path("view.exr");
    let mut args = strings(&["render", "-o", &out.display().to_string(), "--view"]);
    args.extend(strings(&settings));
    let mut p = Proc::start("viewed render", &args, &farm.env("warn"));
    let url = view_url(&mut p);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    p.wait_ok(Duration::from_secs(60));
    assert!(
        std::fs::read(&out).unwrap() == reference,
        "--view changed the image"
    );
}

#[test]
fn the_stop_button_ends_a_local_render_and_writes_what_is_done() {
    let farm = Farm::new();
    let out = farm.path("stopped.exr");
    let size = ["--width", "160", "--height", "120"];
    let mut args = strings(&[
        "render",
        "-o",
        &out.display().to_string(),
        "--view",
        "127.0.0.1:0",
    ]);
    args.extend(strings(&size));
    args.extend(strings(&["--spp", "100000", "--threads", "1"]));
    let mut p = Proc::start("long render", &args, &farm.env("warn"));
    let url = view_url(&mut p);
    let j = wait_live(&url, None, Duration::from_secs(60), |j| {
        j["samples_done"].as_u64().unwrap_or(0) >= 160 * 120
    });
    assert_eq!(j["state"], "rendering", "{j}");
    assert_eq!(j["kind"], "render");
    assert_eq!(j["nodes"][0]["name"], "local", "{j}");
    assert_eq!(post_stop(&url, None), 202);
    p.wait_ok(Duration::from_secs(30));
    let stdout = p.stdout();
    assert!(
        stdout.contains("stopped from the live view"),
        "{}",
        p.describe()
    );
    // What is done is an unbiased image at a few spp: its mean is close to a full render's.
    let (w, h, px) = common::read_exr(&out);
    assert_eq!((w, h), (160, 120));
    assert!(px
        .iter()
        .all(|p| p.iter().all(|c| c.is_finite() && *c >= 0.0)));
    farm.local_render("reference.exr", &[&size[..], &["--spp", "16"]].concat());
    let (_, _, reference) = common::read_exr(&farm.path("reference.exr"));
    let mean = |px: &[[f32; 3]]| {
        px.iter().map(|p| (p[0] + p[1] + p[2]) as f64).sum::<f64>() / px.len() as f64
    };
    let ratio = mean(&px) / mean(&reference);
    assert!(
        (0.8..1.25).contains(&ratio),
        "the stopped image's mean is {ratio} of a full render's"
    );
}

#[test]
fn a_view_served_beyond_loopback_needs_the_farms_token() {
    let farm = Farm::new();
    // Without a farm key the view refuses to serve the LAN.
    let out = farm.path("nokey.png");
    let args = strings(&[
        "render",
        "-o",
        &out.display().to_string(),
        "--view",
        "0.0.0.0:0",
        "--spp",
        "1",
        "--width",
        "8",
        "--height",
        "8",
    ]);
    let mut env = farm.env("warn");
    env.retain(|(k, _)| *k != "RAYFARM_KEY");
    let mut p = Proc::start("no key", &args, &env);
    let st = p.wait(Duration::from_secs(30));
    assert!(!st.success());
    assert!(
        p.stderr().contains("needs the farm key"),
        "{}",
        p.describe()
    );
    assert!(!out.exists(), "a render without its view went ahead");

    // With the key, every API route needs the token.
    let out = farm.path("lan.png");
    let args = strings(&[
        "render",
        "-o",
        &out.display().to_string(),
        "--view",
        "0.0.0.0:0",
        "--spp",
        "100000",
        "--width",
        "32",
        "--height",
        "32",
        "--threads",
        "1",
    ]);
    let mut p = Proc::start("lan view", &args, &farm.env("warn"));
    let url = view_url(&mut p);
    assert!(
        p.stderr().contains("asks for the farm's API token"),
        "{}",
        p.describe()
    );
    let a = agent();
    assert_eq!(
        get_json(&a, &format!("{url}api/v1/live"), None).err(),
        Some(401)
    );
    assert_eq!(
        get_json(&a, &format!("{url}api/v1/live"), Some("rft1-wrong")).err(),
        Some(401)
    );
    assert_eq!(post_stop(&url, None), 401);
    assert!(p.running(), "a stop without the token ended the render");
    let token = rayfarm_proto::FarmKey::from_secret(common::net::KEY)
        .unwrap()
        .api_token();
    wait_live(&url, Some(&token), Duration::from_secs(30), |j| {
        j["state"] == "rendering"
    });
    assert_eq!(post_stop(&url, Some(&token)), 202);
    p.wait_ok(Duration::from_secs(30));
    assert!(out.exists());
}

/// A PNG screenshot of the element `selector`.
fn element_png(page: &browser::Page, selector: &str) -> Vec<u8> {
    page.tab
        .find_element(selector)
        .unwrap_or_else(|e| panic!("{selector}: {e}"))
        .capture_screenshot(
            headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption::Png,
        )
        .unwrap()
}

#[test]
fn the_live_view_of_a_network_render_shows_it_converge_and_its_stop_button_saves_it() {
    if !browser::chromium_available("live view test") {
        return;
    }
    let farm = Farm::new();
    let _d1 = farm.daemon("127.0.0.90", "d90", &[]);
    let _d2 = farm.daemon("127.0.0.91", "d91", &[]);
    let out = farm.path("network.exr");
    let mut m = farm.master(
        "network.exr",
        21800,
        &[
            "--width",
            "192",
            "--height",
            "144",
            "--spp",
            "100000",
            "--max-bounces",
            "4",
        ],
        &[
            "--daemon",
            "127.0.0.90",
            "--daemon",
            "127.0.0.91",
            "--threads",
            "1",
            "--scan-interval",
            "0.5",
            "--view",
        ],
    );
    let url = view_url(&mut m);
    let page = browser::open(&url);

    // Both daemons' workers render, next to this machine's cores.
    page.wait_for_within(
        "both daemons and the local cores rendering",
        "['d90', 'd91', 'local'].every(n => [...document.querySelectorAll('#node-rows tr')].some(tr => tr.dataset.node.startsWith(n) && tr.dataset.state === 'rendering'))",
        Duration::from_secs(60),
    );
    // The image is shown and changes as it converges.
    page.wait_for_within(
        "the image",
        "!document.getElementById('image').hidden",
        Duration::from_secs(30),
    );
    let first = page.eval("Number(document.getElementById('image').dataset.version)");
    let first_shot = element_png(&page, "#image");
    page.wait_for_within(
        "a newer image",
        &format!("Number(document.getElementById('image').dataset.version) > {first} * 2"),
        Duration::from_secs(60),
    );
    let later_shot = element_png(&page, "#image");
    assert!(
        first_shot != later_shot,
        "the image did not change as it converged"
    );
    // The state, ETA and the overlay of who rendered what.
    assert_eq!(page.text("#state"), "rendering");
    assert_ne!(page.text("#eta"), "?");
    page.click("#overlay-toggle");
    page.wait_for("the overlay", "!document.getElementById('overlay').hidden");
    page.save_screenshot_if_asked("live-view.png", 720);
    // The stop button ends the render cleanly with an image written.
    page.click("#stop");
    page.wait_for(
        "the render stopping",
        "['stopping', 'stopped'].includes(document.getElementById('state').textContent)",
    );
    m.wait_ok(Duration::from_secs(60));
    assert!(
        m.stdout().contains("stopped from the live view"),
        "{}",
        m.describe()
    );
    let (w, h, px) = common::read_exr(&out);
    assert_eq!((w, h), (192, 144));
    assert!(px.iter().all(|p| p.iter().all(|c| c.is_finite())));
    let lit = px.iter().filter(|p| p.iter().any(|&c| c > 0.0)).count();
    assert!(lit > w * h / 2, "only {lit} pixels have light");
}

/// `rayfarm daemon --metrics`: the daemon's state and counters in Prometheus text.
#[test]
fn a_daemon_with_metrics_counts_its_leases_and_workers() {
    let farm = Farm::new();
    let args = strings(&[
        "daemon",
        "--bind",
        "127.0.0.92",
        "--port",
        "48000",
        "--threads",
        "1",
        "--alias",
        "d92",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let mut d = Proc::start("daemon d92", &args, &farm.env("info"));
    let e = d.wait_stderr("metrics: http://", Duration::from_secs(30));
    let at = e.find("metrics: ").unwrap() + "metrics: ".len();
    let url = e[at..].split_whitespace().next().unwrap().to_string();
    let scrape = || -> String {
        let mut r = agent().get(&url).call().expect("GET /metrics");
        r.body_mut().read_to_string().unwrap()
    };
    let before = scrape();
    assert!(
        before.contains("rayfarm_daemon_state{state=\"idle\"} 1\n"),
        "{before}"
    );
    assert!(
        before.contains("rayfarm_daemon_leases_total 0\n"),
        "{before}"
    );
    assert!(before.contains("rayfarm_daemon_threads 1\n"), "{before}");
    let mut m = farm.master(
        "metrics.exr",
        21801,
        &["--width", "32", "--height", "32", "--spp", "4"],
        &["--daemon", "127.0.0.92", "--no-local"],
    );
    m.wait_ok(Duration::from_secs(60));
    let t0 = Instant::now();
    loop {
        let after = scrape();
        if after.contains("rayfarm_daemon_state{state=\"idle\"} 1\n") {
            assert!(after.contains("rayfarm_daemon_leases_total 1\n"), "{after}");
            assert!(
                after.contains("rayfarm_daemon_workers_started_total 1\n"),
                "{after}"
            );
            assert!(
                after.contains("rayfarm_daemon_workers_failed_total 0\n"),
                "{after}"
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the daemon never went idle again:\n{after}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(d.running());
}
