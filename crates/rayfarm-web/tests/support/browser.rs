//! Headless Chromium driven over the DevTools protocol (the `headless_chrome` crate), for the
//! monitor's browser tests: open the page, click, type, wait for the DOM to show something,
//! take a screenshot.
//!
//! Shared by `rayfarm-web`'s `monitor_chromium.rs` (against a fake API) and `rayfarm`'s
//! `monitor_manager.rs` (against a real manager), which includes this file with `#[path]`.
//!
//! Every call blocks: from an async test, call it inside `tokio::task::block_in_place`.
//! Shutdown: dropping a [`Page`] drops its `Browser`, which kills the Chromium process, and then
//! its profile directory.

#![allow(dead_code)]

use headless_chrome::protocol::cdp::Input::{
    DispatchMouseEvent, DispatchMouseEventTypeOption as MouseEventType, MouseButton,
};
use headless_chrome::protocol::cdp::{Emulation, Page as Cdp};
use headless_chrome::{Browser, LaunchOptions, Tab};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
/// How long [`Page::wait_for`] waits for the page to show something (the page polls every
/// second, so anything it shows comes within two or three seconds).
pub const WAIT: Duration = Duration::from_secs(10);
/// The window, and so the screenshots', size.
pub const WINDOW_PX: (u32, u32) = (1280, 900);

/// Whether Chromium is installed; without it the test is skipped, unless CI requires it
/// (`RAYFARM_REQUIRE_SHARED=1`), when it fails and says what to install.
pub fn chromium_available(test: &str) -> bool {
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

/// One Chromium with one tab.
pub struct Page {
    pub tab: Arc<Tab>,
    // Dropped in this order: the browser (killing Chromium), then its profile.
    _browser: Browser,
    _profile: tempfile::TempDir,
}

/// Starts headless Chromium in a fresh profile and opens `url` in it.
pub fn open(url: &str) -> Page {
    let profile = tempfile::tempdir().expect("chromium profile dir");
    // The machine's network is closed: these keep Chromium from trying connections of its own.
    // (`user_data_dir` below passes `--user-data-dir`: a fresh profile for every browser.)
    const ARGS: [&str; 8] = [
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--mute-audio",
    ];
    let args: Vec<&OsStr> = ARGS.iter().map(OsStr::new).collect();
    let options = LaunchOptions::default_builder()
        .path(Some(CHROMIUM.into()))
        .sandbox(false)
        .headless(true)
        .window_size(Some(WINDOW_PX))
        .user_data_dir(Some(profile.path().to_path_buf()))
        .args(args)
        .idle_browser_timeout(Duration::from_secs(60))
        .build()
        .expect("chromium launch options");
    let browser =
        Browser::new(options).unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e:#}"));
    let tab = browser
        .new_tab()
        .unwrap_or_else(|e| panic!("chromium opened no tab: {e:#}"));
    tab.set_default_timeout(WAIT);
    tab.navigate_to(url)
        .and_then(|t| t.wait_until_navigated())
        .unwrap_or_else(|e| panic!("chromium cannot open {url}: {e:#}"));
    Page {
        tab,
        _browser: browser,
        _profile: profile,
    }
}

impl Page {
    /// The value of the JavaScript expression `js`, through JSON (so arrays and objects come
    /// back whole; `undefined` is null).
    pub fn eval(&self, js: &str) -> serde_json::Value {
        let remote = self
            .tab
            .evaluate(&format!("JSON.stringify(({js}))"), false)
            .unwrap_or_else(|e| panic!("evaluating {js:?}: {e:#}"));
        match remote.value {
            Some(serde_json::Value::String(json)) => serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("evaluating {js:?}: not JSON ({e}): {json}")),
            _ => serde_json::Value::Null,
        }
    }

    /// Waits until the JavaScript expression `js` is true; panics after [`WAIT`] with `what`
    /// and the text of the page's main parts.
    pub fn wait_for(&self, what: &str, js: &str) {
        self.wait_for_within(what, js, WAIT)
    }

    /// [`Page::wait_for`] with a deadline of `within`.
    pub fn wait_for_within(&self, what: &str, js: &str, within: Duration) {
        let start = Instant::now();
        loop {
            if self.eval(&format!("!!({js})")) == serde_json::Value::Bool(true) {
                return;
            }
            if start.elapsed() > within {
                panic!(
                    "the page did not show {what} within {within:?} ({js}); it shows:\n{}",
                    self.eval("document.body.innerText")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The text of the first element matching `selector` ("" when none does).
    pub fn text(&self, selector: &str) -> String {
        let js = format!(
            "(document.querySelector({}) || {{}}).textContent || ''",
            serde_json::Value::from(selector)
        );
        self.eval(&js).as_str().unwrap_or_default().to_string()
    }

    /// Whether the element matching `selector` is shown (exists, no `hidden` on it or above).
    pub fn visible(&self, selector: &str) -> bool {
        let js = format!(
            "(() => {{ const e = document.querySelector({}); return !!e && e.getClientRects().length > 0; }})()",
            serde_json::Value::from(selector)
        );
        self.eval(&js) == serde_json::Value::Bool(true)
    }

    /// Clicks the element matching `selector` with the mouse (a real click at its centre).
    pub fn click(&self, selector: &str) {
        self.tab
            .wait_for_element(selector)
            .and_then(|e| e.click().map(|_| ()))
            .unwrap_or_else(|e| panic!("cannot click {selector}: {e:#}"));
    }

    /// The centre of the element matching `selector`, in viewport pixels.
    fn centre(&self, selector: &str) -> (f64, f64) {
        let js = format!(
            "(() => {{ const b = document.querySelector({}).getBoundingClientRect(); \
             return [b.left + b.width / 2, b.top + b.height / 2]; }})()",
            serde_json::Value::from(selector)
        );
        let xy = self.eval(&js);
        (xy[0].as_f64().unwrap(), xy[1].as_f64().unwrap())
    }

    /// One mouse event at (x, y): `kind` with the left button (held while moving: `held`),
    /// or a wheel turn of `delta_y` pixels.
    fn mouse(&self, kind: MouseEventType, (x, y): (f64, f64), held: bool, delta_y: Option<f64>) {
        let wheel = kind == MouseEventType::MouseWheel;
        self.tab
            .call_method(DispatchMouseEvent {
                Type: kind,
                x,
                y,
                modifiers: None,
                timestamp: None,
                button: Some(if held {
                    MouseButton::Left
                } else {
                    MouseButton::None
                }),
                buttons: Some(u32::from(held)),
                click_count: Some(u32::from(held && !wheel)),
                force: None,
                tangential_pressure: None,
                tilt_x: None,
                tilt_y: None,
                twist: None,
                delta_x: delta_y.map(|_| 0.0),
                delta_y,
                pointer_Type: None,
            })
            .unwrap_or_else(|e| panic!("cannot send a mouse event: {e:#}"));
    }

    /// Drags the element matching `selector` from its centre by (dx, dy) pixels with the left
    /// button, in a few steps as a hand would.
    pub fn drag(&self, selector: &str, dx: f64, dy: f64) {
        let (x, y) = self.centre(selector);
        self.mouse(MouseEventType::MousePressed, (x, y), true, None);
        for step in 1..=4 {
            let f = f64::from(step) / 4.0;
            self.mouse(
                MouseEventType::MouseMoved,
                (x + dx * f, y + dy * f),
                true,
                None,
            );
        }
        self.mouse(MouseEventType::MouseReleased, (x + dx, y + dy), true, None);
    }

    /// Turns the mouse wheel by `delta_y` pixels (negative: up) over the element matching
    /// `selector`, at `offset` from its centre.
    pub fn wheel(&self, selector: &str, offset: (f64, f64), delta_y: f64) {
        let (x, y) = self.centre(selector);
        let at = (x + offset.0, y + offset.1);
        self.mouse(MouseEventType::MouseMoved, at, false, None);
        self.mouse(MouseEventType::MouseWheel, at, false, Some(delta_y));
    }

    /// Clears the input matching `selector` and types `text` into it with the keyboard.
    pub fn type_into(&self, selector: &str, text: &str) {
        self.eval(&format!(
            "document.querySelector({}).value = ''",
            serde_json::Value::from(selector)
        ));
        self.tab
            .wait_for_element(selector)
            .and_then(|e| e.type_into(text).map(|_| ()))
            .unwrap_or_else(|e| panic!("cannot type into {selector}: {e:#}"));
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Vec<u8> {
        self.tab
            .capture_screenshot(Cdp::CaptureScreenshotFormatOption::Png, None, None, true)
            .unwrap_or_else(|e| panic!("cannot take a screenshot: {e:#}"))
    }

    /// With `RAYFARM_SCREENSHOTS=1`, saves a screenshot of the page in a viewport
    /// `height_px` tall as `docs/<name>` (the README shows them) and gives the page its window
    /// size back; otherwise does nothing, so test runs leave the tree clean.
    pub fn save_screenshot_if_asked(&self, name: &str, height_px: u32) {
        if std::env::var("RAYFARM_SCREENSHOTS").as_deref() != Ok("1") {
            return;
        }
        self.tab
            .call_method(Emulation::SetDeviceMetricsOverride {
                width: WINDOW_PX.0,
                height: height_px,
                device_scale_factor: 1.0,
                mobile: false,
                scale: None,
                screen_width: None,
                screen_height: None,
                position_x: None,
                position_y: None,
                dont_set_visible_size: None,
                screen_orientation: None,
                viewport: None,
                display_feature: None,
                device_posture: None,
            })
            .unwrap_or_else(|e| panic!("cannot resize the viewport: {e:#}"));
        // Let the page lay itself out again (the preview viewer refits on resize).
        std::thread::sleep(Duration::from_millis(500));
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs")
            .join(name);
        std::fs::write(&path, self.screenshot())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        eprintln!("saved {}", path.display());
        self.tab
            .call_method(Emulation::ClearDeviceMetricsOverride(None))
            .unwrap_or_else(|e| panic!("cannot restore the viewport: {e:#}"));
        std::thread::sleep(Duration::from_millis(300));
    }
}
