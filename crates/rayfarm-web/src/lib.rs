//! The job manager's web monitor: one HTML page that shows jobs, nodes and recent events, and
//! acts on jobs (pause, resume, cancel, delete, priority).
//!
//! The page has three views, chosen by the URL fragment so the manager serves one page: the
//! overview (no fragment), a job (`#job/ID`: its tasks, its events, a preview that zooms) and a
//! node (`#node/HOST:PORT`, or `#node/ALIAS` for a worker started by hand: its fields, recent
//! tasks, failures and the jobs it is excluded from, its events).
//!
//! This crate owns the page and the JSON contract the page reads. It serves only the page
//! ([`routes`]); the manager (`rayfarm manager`) serves the API below and merges [`routes`] into
//! its own router. The page is plain HTML, CSS and JavaScript in one file (`src/monitor.html`,
//! compiled in with `include_str!`): no build step and no external URL, so it works on a LAN
//! with no internet. It polls the API once a second and shows a "cannot reach the manager"
//! banner while any request fails.
//!
//! Architecture invariant: this crate never reads manager state and never serves API data; the
//! page learns everything through the JSON API, so the page can be tested against a fake API.
//! The page itself is served without a token and holds no data.
//!
//! Architecture invariant: the page authenticates with the farm's API token in the
//! `Authorization` header only, never with cookies, so a page on another site cannot make the
//! browser send it (no CSRF). It asks for the token once (a form), keeps it in `localStorage`,
//! asks again on 401 and has a "Forget token" button; a link may carry it as `#token=...`
//! (fragments are not sent to servers; the page removes it from the address bar).
//!
//! Architecture invariant: the page puts strings from the API into the document only as text
//! (`textContent`, text nodes, `setAttribute`), never as markup: job names come from users.
//!
//! # The JSON API the page consumes
//!
//! All paths are under `/api/v1` on the same origin as the page, every request carries
//! `Authorization: Bearer <token>`, all answers are `application/json` with status 200, or 401
//! when the token is wrong (the page then asks for it again). Any other error status comes with
//! `{"error": "..."}`; the page shows that text (in the banner for a read, in the message line
//! under the header for an action). Times are milliseconds since the Unix epoch on the
//! manager's clock (`*_ms`); the page takes "now" from the HTTP `Date` header, so a viewer
//! whose clock is off still sees correct "seen 3 s ago" figures. Fields may be added later;
//! the page ignores fields it does not know.
//!
//! ## `GET /api/v1/status`
//!
//! ```json
//! {"version": "0.1.0", "uptime_s": 12, "jobs": 2, "nodes": 3}
//! ```
//!
//! `version` is the manager's crate version, `uptime_s` whole seconds since it started, `jobs`
//! and `nodes` how many it knows.
//!
//! ## `GET /api/v1/jobs`
//!
//! ```json
//! {"jobs": [{
//!   "id": "j3f2a9c0",
//!   "name": "water bottle",
//!   "kind": "bake",
//!   "status": "active",
//!   "priority": 0,
//!   "created_ms": 1700000000000,
//!   "updated_ms": 1700000005000,
//!   "progress": 0.42,
//!   "tasks": {"queued": 3, "running": 2, "completed": 5, "failed": 0, "canceled": 0},
//!   "error": null
//! }]}
//! ```
//!
//! - `status` is one of `queued`, `active`, `paused`, `completed`, `failed`, `canceled`.
//! - `kind` is the job kind as the manager names it (`bake`, `render`); shown as is.
//! - `progress` is 0.0 to 1.0; the page shows it floored to a whole percent.
//! - `error` is a string when the job failed (or has a message to show), otherwise `null`.
//! - `updated_ms` must change whenever the job's preview may have changed: the page
//!   re-requests a preview when `updated_ms` changes (and every 5 s while the job is
//!   `active`).
//! - The page lists jobs in the order of this array, so the manager decides the order.
//!
//! ## `GET /api/v1/nodes`
//!
//! ```json
//! {"nodes": [{
//!   "addr": "127.0.0.2:48000",
//!   "alias": "d2",
//!   "threads": 2,
//!   "cpu_model": "AMD Ryzen 9 7950X",
//!   "cpu_threads": 32,
//!   "gpus": ["NVIDIA GeForce RTX 4090"],
//!   "state": "working",
//!   "job": "j3f2a9c0",
//!   "task": "atlas lightmap tile 3",
//!   "master": null,
//!   "last_seen_ms": 1700000000000
//! }]}
//! ```
//!
//! - `addr` (`HOST:PORT`) identifies the node.
//! - `alias` is a string (`""` or `null` when the node has none).
//! - `threads` is what the node offers; `cpu_model`, `cpu_threads` (the machine's) and `gpus`
//!   are what its daemon reports (`""`, `0`, `[]` when unknown, as for a worker started by
//!   hand); the node page shows them. Rendering runs on the CPU; GPUs are only listed.
//! - `state` is one of:
//!   - `idle`,
//!   - `working`: `job` is the job id and `task` a short human description of the task; the
//!     page shows "working on job NAME (ID) / task TASK",
//!   - `occupied`: leased by another master; `master` is that master's `HOST:PORT` and the page
//!     shows "occupied by master HOST:PORT",
//!   - `lost`: was known, stopped answering,
//!   - `unreachable`: configured or discovered, never answered.
//!
//!   `job`, `task` and `master` are `null` when they do not apply.
//! - `last_seen_ms` is when the node last answered, `null` if never.
//!
//! ## `GET /api/v1/events`
//!
//! ```json
//! {"events": [{
//!   "time_ms": 1700000003000,
//!   "level": "error",
//!   "message": "task 4 failed on d3: out of memory",
//!   "job": "j3f2a9c0",
//!   "node": "127.0.0.3:48000"
//! }]}
//! ```
//!
//! - `level` is `error`, `warn` or `info`.
//! - `job` and `node` are `null` when the event concerns no job or no node.
//! - The page shows the newest 200, newest first, so the manager should keep a bounded ring of
//!   recent events rather than the whole history.
//!
//! ## `GET /api/v1/jobs/{id}/preview.png`
//!
//! The job's current map (a lightmap atlas, a frame) as `image/png`, or `404` while there is
//! none. The page appends `?t=...` to defeat caches; the manager ignores the query. The page
//! fetches it with the token and shows it through a `blob:` URL (an `<img src>` cannot send a
//! header). A preview is shown at thumbnail size on the overview (a click opens the job page)
//! and fitted into a zoomable viewer on the job page, so the manager may downscale it (it does,
//! to 512 px on the long side).
//!
//! ## `GET /api/v1/jobs/{id}` (the job page)
//!
//! ```json
//! {"job": {"id": "j3f2a9c0", "...": "as in GET /api/v1/jobs"},
//!  "tasks": [{
//!    "index": 3,
//!    "name": "atlas lightmap tile 3",
//!    "status": "running",
//!    "attempts": 1,
//!    "node": "d2",
//!    "error": null,
//!    "started_ms": 1700000001000,
//!    "finished_ms": null
//!  }]}
//! ```
//!
//! - `status` is one of `queued`, `running`, `completed`, `failed`, `canceled`.
//! - `node` is the node's name in the job queue, its alias (the page links it to
//!   `#node/ALIAS`); `null` while queued.
//! - `started_ms` is when the latest attempt was handed out, `finished_ms` when the task ended
//!   (completed, failed for good, canceled); `null` when not yet (or for tasks older than
//!   these fields). The page shows the time between them, or since the start while running.
//! - `404` when the job is not in the queue: the job page says so (it is no outage).
//! - The job page's events are `GET /api/v1/events` filtered by `job` on the page, so they are
//!   the job's share of the newest 200 events of the farm.
//!
//! ## Job actions
//!
//! | request | allowed for `status` | answer |
//! |---------|----------------------|--------|
//! | `POST /api/v1/jobs/{id}/pause` | `queued`, `active`, `blocked` | as `GET /api/v1/jobs/{id}` |
//! | `POST /api/v1/jobs/{id}/resume` | `paused` | as `GET /api/v1/jobs/{id}` |
//! | `POST /api/v1/jobs/{id}/cancel` | `queued`, `active`, `blocked`, `paused` | as `GET /api/v1/jobs/{id}` |
//! | `POST /api/v1/jobs/{id}/priority` with `{"priority": N}`, -1000 to 1000 | `queued`, `active`, `blocked`, `paused` | as `GET /api/v1/jobs/{id}` |
//! | `DELETE /api/v1/jobs/{id}` | no running task (`tasks.running` is 0) | `{"deleted": "ID"}` |
//!
//! The page enables only the buttons the job's status allows. The manager has the final word:
//! it answers `409` with `{"error": ...}` to a transition its store forbids (pause, resume or
//! cancel of a finished job, delete with running tasks); it accepts a priority for a finished
//! job, which the page simply does not offer. The page asks once more before a delete, shows the
//! answer's job at once and polls again right away. An error answer is shown as "Pause of job
//! NAME (ID) failed: POST /api/v1/jobs/ID/pause answered HTTP 409 Conflict: MESSAGE" in the
//! message line, which stays until dismissed or replaced.
//!
//! ## `GET /api/v1/nodes/{name}` (the node page)
//!
//! ```json
//! {"name": "d2",
//!  "node": {"addr": "127.0.0.2:48000", "...": "as in GET /api/v1/nodes, or null"},
//!  "tasks": [{"job": "j3f2a9c0", "index": 3, "...": "a task as in GET /api/v1/jobs/{id}"}],
//!  "failures": [{"job": "j77b1e05", "failures": 2, "excluded": true}],
//!  "excluded_from": ["j77b1e05"]}
//! ```
//!
//! - `name` is the node's alias; the page finds it in `GET /api/v1/nodes` by the address in its
//!   fragment and shows that entry's fields (address, alias, threads, state, current job and
//!   task, last seen).
//! - `tasks`: the tasks it ran or runs (it is their last holder), most recently changed first,
//!   at most 50. A task that went back to the queue after failing on it is no longer its;
//!   `failures` counts those per job.
//! - `excluded_from`: the jobs whose tasks it no longer gets (it failed them twice).
//! - The node page's events are `GET /api/v1/events` whose `node` is the alias or the address.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

/// The monitor page, self-contained (HTML, CSS and JavaScript in one file).
pub const MONITOR_HTML: &str = include_str!("monitor.html");

/// Headers sent with the page.
///
/// The Content-Security-Policy lets the page talk to its own origin only: it enforces "no
/// external URL" in the browser, so a page that works in the test works on an offline LAN.
/// The script is inline, so `'unsafe-inline'` stays for scripts; escaping, not the policy, is
/// what stops injected markup.
const PAGE_HEADERS: [(header::HeaderName, &str); 5] = [
    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
    // The page is small and changes with the manager binary: always revalidate.
    (header::CACHE_CONTROL, "no-cache"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
];

/// Routes for the monitor page: `GET /` answers the page. Everything else the page needs is
/// inline in it, or is the JSON API the manager serves (see the crate documentation).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(monitor_page))
}

async fn monitor_page() -> impl IntoResponse {
    (PAGE_HEADERS, MONITOR_HTML)
}

/// The live view of one render or bake (`rayfarm render --view`), self-contained like the
/// monitor. It reads `GET /api/v1/live` and `GET /api/v1/live/image.png` and posts
/// `/api/v1/live/stop`; rayfarm-farm's `live` module serves them and documents the JSON.
pub const LIVE_HTML: &str = include_str!("live.html");

/// Routes for the live view's page: `GET /` answers it, with the monitor's headers.
pub fn live_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(live_page))
}

async fn live_page() -> impl IntoResponse {
    (PAGE_HEADERS, LIVE_HTML)
}

#[cfg(test)]
mod live_tests {
    use super::LIVE_HTML;

    /// Like the monitor: nothing from another origin, API strings only as text.
    #[test]
    fn the_live_page_loads_nothing_from_elsewhere_and_uses_no_markup_sinks() {
        for needle in [
            "http://",
            "https://",
            "src=\"//",
            "href=\"//",
            "url(//",
            "@import",
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ] {
            assert!(!LIVE_HTML.contains(needle), "live.html contains {needle:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MONITOR_HTML;

    /// The page must work on a LAN with no internet: it may not load anything from elsewhere.
    #[test]
    fn page_has_no_external_url() {
        for needle in [
            "http://",
            "https://",
            "src=\"//",
            "href=\"//",
            "url(//",
            "@import",
        ] {
            assert!(
                !MONITOR_HTML.contains(needle),
                "monitor.html contains {needle:?}; the page must not load anything from another origin"
            );
        }
    }

    /// API strings reach the document only as text; these sinks would parse them as markup.
    #[test]
    fn page_uses_no_markup_sinks() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "createContextualFragment",
            "DOMParser",
            "eval(",
            "new Function",
        ] {
            assert!(
                !MONITOR_HTML.contains(sink),
                "monitor.html uses {sink}; put API strings in with textContent or el() instead"
            );
        }
    }

    /// The page fetches the endpoints documented in the crate docs, and only those.
    #[test]
    fn page_fetches_the_documented_endpoints() {
        for path in [
            "\"/status\"",
            "\"/jobs\"",
            "\"/nodes\"",
            "\"/events\"",
            "\"/preview.png?t=\"",
            "\"/pause\"",
            "\"/resume\"",
            "\"/cancel\"",
            "\"/priority\"",
            "method: \"DELETE\"",
            "\"/nodes/\"",
        ] {
            assert!(
                MONITOR_HTML.contains(path),
                "monitor.html does not use {path}"
            );
        }
        assert!(MONITOR_HTML.contains("const API = \"/api/v1\";"));
    }

    /// The token travels in the Authorization header, kept in localStorage; no cookies.
    #[test]
    fn page_sends_the_token_as_a_header_and_uses_no_cookies() {
        assert!(MONITOR_HTML.contains("Authorization: \"Bearer \" + token"));
        assert!(MONITOR_HTML.contains("headers: authHeaders()"));
        assert_eq!(
            MONITOR_HTML.matches("fetch(").count(),
            MONITOR_HTML.matches("headers: authHeaders()").count(),
            "every fetch must send the token"
        );
        assert!(MONITOR_HTML.contains("localStorage.setItem"));
        assert!(!MONITOR_HTML.contains("document.cookie"));
        assert!(MONITOR_HTML.contains("id=\"forget-token\""));
    }
}
