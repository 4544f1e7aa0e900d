//! The monitor page in headless Chromium against a real `rayfarm manager`: the page's JSON
//! contract (rayfarm-web's lib.rs) is the manager's, and a click on the page changes the job in
//! the manager's queue.
//!
//! The manager runs on its own loopback address and port (127.0.0.80:23800; this file owns
//! 127.0.0.80-89 and ports 23800-23809) with no node, so the job stays queued (shown as
//! `blocked`: no node may take it). Chromium is driven over the DevTools protocol by the
//! helpers rayfarm-web's browser tests use. Without `/usr/bin/chromium` the test prints a
//! notice and passes, unless `RAYFARM_REQUIRE_SHARED=1`.

#[path = "../../rayfarm-web/tests/support/browser.rs"]
mod browser;
mod common;

use common::farm::{agent, api_token, Farm};
use serde_json::Value;

/// `GET path` on the manager at `base` with the farm's token; the JSON answer.
fn get(base: &str, path: &str) -> Value {
    let mut r = agent()
        .get(format!("{base}{path}"))
        .header("Authorization", format!("Bearer {}", api_token()))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let body = r.body_mut().read_to_string().unwrap_or_default();
    assert_eq!(r.status().as_u16(), 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

#[test]
fn monitor_pauses_a_real_job_and_lists_its_tasks() {
    if !browser::chromium_available("monitor_pauses_a_real_job_and_lists_its_tasks") {
        return;
    }
    let farm = Farm::new();
    let (ip, port) = ("127.0.0.80", 23800);
    let _manager = farm.manager_at(ip, port, &[]);
    let base = format!("http://{ip}:{port}");
    let id = farm.submit_bake(&format!("{ip}:{port}"));
    let card = format!(r#"#job-list [data-job-id="{id}"]"#);

    let page = browser::open(&format!("{base}/#token={}", api_token()));
    page.wait_for(
        "the submitted job",
        &format!(
            "(document.querySelector('{card} .badge.status') || {{}}).textContent === 'blocked'"
        ),
    );
    page.click(&format!(r#"{card} button[data-action="pause"]"#));
    page.wait_for(
        "the paused job",
        &format!("document.querySelector('{card} .badge.status').textContent === 'paused'"),
    );
    let detail = get(&base, &format!("/api/v1/jobs/{id}"));
    assert_eq!(detail["job"]["status"], "paused", "{detail}");

    // The job page lists the manager's tasks, in its order.
    let tasks = detail["tasks"].as_array().expect("tasks").clone();
    assert!(!tasks.is_empty(), "{detail}");
    page.click(&format!("{card} a.job-link"));
    page.wait_for(
        "the job's tasks",
        &format!(
            "document.querySelectorAll('#job-task-rows tr').length === {}",
            tasks.len()
        ),
    );
    for (i, task) in tasks.iter().enumerate() {
        let row = page.text(&format!(r#"#job-task-rows tr[data-task-index="{i}"]"#));
        let want = format!("{i}{}queued—0—", task["name"].as_str().unwrap());
        assert!(row.starts_with(&want), "task {i}: {row:?} is not {want:?}…");
    }
    // The pause is among the job's events.
    page.wait_for(
        "the pause event",
        &format!(
            "document.getElementById('job-event-rows').textContent.includes('job {id} paused')"
        ),
    );
}
