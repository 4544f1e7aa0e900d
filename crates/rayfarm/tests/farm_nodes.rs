//! End-to-end tests of the job manager's nodes: daemons that register themselves
//! (`rayfarm daemon --manager`), nodes that fail every task they take (a `--path-map` that
//! points the network folder at a path that cannot exist), and jobs that fail everywhere.
//!
//! Like farm.rs, every test runs the real `rayfarm manager`, `rayfarm daemon` and
//! `rayfarm bake --farm` processes. This file uses its own loopback addresses (127.0.0.30 and
//! up, port 48000) and manager ports (23500 + 10 per test), so it runs alongside the other
//! test files. Every process is killed with its process group when the test ends.

mod common;

use common::farm::{assert_same, files, Farm};
use rayfarm_farm::store::{MAX_NODE_FAILURES_PER_JOB, MAX_TASK_ATTEMPTS};
use serde_json::Value;
use std::time::{Duration, Instant};

/// GETs a path of a manager's JSON API (with the farm's API token).
fn api(port: u16, path: &str) -> Value {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut r = ureq::get(&url)
        .header(
            "Authorization",
            &format!("Bearer {}", common::farm::api_token()),
        )
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    r.body_mut()
        .read_json()
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// The manager's events (newest first) whose message contains `needle`.
fn events(port: u16, needle: &str) -> Vec<Value> {
    api(port, "/api/v1/events")["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["message"].as_str().unwrap_or("").contains(needle))
        .cloned()
        .collect()
}

fn messages(evs: &[Value]) -> Vec<&str> {
    evs.iter()
        .map(|e| e["message"].as_str().unwrap_or(""))
        .collect()
}

/// Polls `f` every 200 ms until it returns Some, or panics with `what` and the last value.
fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let until = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < until,
                "{what} not within {within:?}; last seen:\n{last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `rayfarm nodes --manager` output once it lists `needle`.
fn wait_nodes(farm: &Farm, port: u16, needle: &str, within: Duration) -> String {
    let manager = format!("127.0.0.1:{port}");
    wait_for(within, &format!("nodes listing {needle:?}"), || {
        let (ok, out, err) = farm.run(&["nodes", "--manager", &manager]);
        if ok && out.contains(needle) {
            Ok(out)
        } else {
            Err(format!("{out}\n{err}"))
        }
    })
}

#[test]
fn a_daemon_that_registers_itself_is_listed_and_bakes() {
    let farm = Farm::new();
    let port = 23500;
    let manager = format!("127.0.0.1:{port}");
    // No --daemon, no --scan, and the config names none: registration is the only way in.
    let mut m = farm.manager(port, &[]);
    let (ok, out, _) = farm.run(&["nodes", "--manager", &manager]);
    assert!(
        ok && out.contains("knows no nodes"),
        "a fresh manager lists nodes: {out}"
    );
    let _d = farm.daemon("127.0.0.30", "r30", &["--manager", &manager]);

    let out = wait_nodes(&farm, port, "r30", Duration::from_secs(20));
    let line = out
        .lines()
        .find(|l| l.contains("r30"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("127.0.0.30:48000") && line.trim_end().ends_with("idle"),
        "the registered daemon should be listed by its address, idle: {out}"
    );
    let reg = events(port, "daemon 127.0.0.30:48000 registered");
    assert_eq!(
        reg.len(),
        1,
        "one registration event (re-registering every 5 s is silent): {:?}",
        messages(&reg)
    );

    // A farm bake on the registered node gives the local bake's bytes.
    let reference = farm.local("local", &["--spp", "16"]);
    let mut c = farm.client("farm", port, &["--spp", "16"]);
    let (id, tasks) = Farm::job_id(&mut c);
    c.wait_ok(Duration::from_secs(60));
    assert_same(
        &files(&farm.path("farm")),
        &reference,
        "farm bake on a registered daemon vs the local bake",
    );
    assert!(
        farm.net_entries().is_empty(),
        "job folders left: {:?}",
        farm.net_entries()
    );
    let job = api(port, &format!("/api/v1/jobs/{id}"));
    assert_eq!(job["job"]["status"], "completed", "{job:#}");
    let ts = job["tasks"].as_array().unwrap();
    assert_eq!(ts.len(), tasks, "{job:#}");
    for t in ts {
        assert!(
            t["status"] == "completed" && t["node"] == "r30" && t["attempts"] == 1,
            "every task done by r30 at the first attempt: {t}"
        );
    }

    // A restarted manager (same database) learns the node again from its next registration.
    m.signal("KILL");
    m.wait(Duration::from_secs(10));
    let _m2 = farm.manager(port, &[]);
    let t0 = Instant::now();
    let out = wait_nodes(&farm, port, "r30", Duration::from_secs(20));
    eprintln!(
        "restarted manager relearned r30 in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(out.contains("127.0.0.30:48000"), "{out}");
    let (ok, out, _) = farm.run(&["jobs", "--manager", &manager]);
    assert!(
        ok && out.contains(&id) && out.contains("completed"),
        "the job survived the restart: {out}"
    );
}

#[test]
fn a_node_that_cannot_write_parts_is_excluded_and_the_job_completes_elsewhere() {
    let farm = Farm::new();
    let port = 23510;
    let manager = format!("127.0.0.1:{port}");
    let (map, bad_dir) = farm.bad_path_map();
    let bad_dir = bad_dir.display().to_string();
    let reference = farm.local("local", &["--spp", "16"]);
    // The manager knows both daemons, but only the bad one runs at first: the job's tasks can
    // only go to it, so it is certain to fail, and to be excluded, before the good one exists.
    let _m = farm.manager(port, &["127.0.0.31", "127.0.0.32"]);
    let _bad = farm.daemon("127.0.0.32", "bad32", &["--path-map", &map]);
    let mut c = farm.client("farm", port, &["--spp", "16"]);
    let (id, tasks) = Farm::job_id(&mut c);
    assert!(tasks > 2, "the job needs more tasks than failures: {tasks}");

    // The bad node is excluded before it uses up task 0's attempts.
    const {
        assert!(
            MAX_NODE_FAILURES_PER_JOB < MAX_TASK_ATTEMPTS,
            "this test expects node exclusion before a task fails for good"
        )
    };
    let limit = MAX_NODE_FAILURES_PER_JOB as usize;
    let failed = wait_for(Duration::from_secs(45), "the bad node's failures", || {
        let f = events(port, "failed on bad32");
        if f.len() >= limit {
            Ok(f)
        } else {
            Err(format!("{:?}", messages(&f)))
        }
    });
    for e in &failed {
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.contains(&bad_dir) && e["job"] == id.as_str() && e["node"] == "bad32",
            "the failure should name the node's path and the job: {e}"
        );
    }
    // The excluded node has nothing it may do, so the manager does not lease it again (its
    // worker would only sit idle, keeping the node from interactive masters): no worker
    // session starts after its last failure, and it gets none of this job's tasks.
    let last_failure = failed[0]["time_ms"].as_i64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let again: Vec<Value> = events(port, "worker 'bad32' connected")
        .into_iter()
        .filter(|e| e["time_ms"].as_i64().unwrap() > last_failure)
        .collect();
    assert!(
        again.is_empty(),
        "an excluded node was leased again: {:?}",
        messages(&again)
    );
    let after = events(port, "failed on bad32");
    assert_eq!(
        after.len(),
        limit,
        "a node with {limit} failures on a job was given more of its tasks: {:?}",
        messages(&after)
    );
    let job = api(port, &format!("/api/v1/jobs/{id}"));
    assert_eq!(
        job["job"]["status"], "blocked",
        "only an excluded node exists: nothing may run, and the job says so: {job:#}"
    );
    let why = job["job"]["blocked"].as_str().unwrap_or_default();
    assert!(
        why.contains("bad32") && why.contains("another node joins"),
        "{job:#}"
    );
    let (ok, out, err) = farm.run(&["job", "show", &id, "--manager", &manager]);
    assert!(
        ok && out.contains("status blocked") && out.contains("blocked: every known node"),
        "{out}\n{err}"
    );
    assert_eq!(job["job"]["tasks"]["completed"], 0, "{job:#}");
    // The bad node always got the lowest queued task: task 0, twice.
    let t0 = &job["tasks"][0];
    assert_eq!(t0["status"], "queued", "{t0}");
    assert_eq!(t0["attempts"], limit, "{t0}");
    let err = t0["error"].as_str().unwrap_or("");
    assert!(
        err.contains("on node bad32")
            && err.contains(&bad_dir)
            && err.contains(&format!("attempt {limit} of {MAX_TASK_ATTEMPTS}")),
        "task 0's error should name the node, its path and the attempt: {t0}"
    );
    // Requeued after its last attempt: it started, and has not ended.
    assert!(
        t0["started_ms"].as_i64().is_some() && t0["finished_ms"].is_null(),
        "{t0}"
    );
    // The monitor's node page: the node's failures and the job it is excluded from.
    let node = api(port, "/api/v1/nodes/bad32");
    assert_eq!(node["excluded_from"][0], id.as_str(), "{node:#}");
    assert_eq!(node["failures"][0]["failures"], limit, "{node:#}");
    assert_eq!(node["failures"][0]["excluded"], true, "{node:#}");
    assert_eq!(node["node"]["alias"], "bad32", "{node:#}");
    assert!(
        node["node"]["cpu_threads"].as_u64().unwrap_or(0) >= 1,
        "the daemon's machine is reported: {node:#}"
    );
    assert!(c.running(), "the client gave up: {}", c.describe());

    // The good node arrives and does everything, task 0 on its last attempt.
    let _good = farm.daemon("127.0.0.31", "good31", &[]);
    c.wait_ok(Duration::from_secs(90));
    assert_same(
        &files(&farm.path("farm")),
        &reference,
        "farm bake after a node's failures vs the local bake",
    );
    assert!(
        farm.net_entries().is_empty(),
        "job folders left: {:?}",
        farm.net_entries()
    );
    let job = api(port, &format!("/api/v1/jobs/{id}"));
    assert_eq!(job["job"]["status"], "completed", "{job:#}");
    assert!(job["job"]["error"].is_null(), "{job:#}");
    let ts = job["tasks"].as_array().unwrap();
    assert_eq!(ts.len(), tasks);
    for (i, t) in ts.iter().enumerate() {
        let attempts = if i == 0 { limit + 1 } else { 1 };
        assert!(
            t["status"] == "completed" && t["node"] == "good31" && t["attempts"] == attempts,
            "task {i}: expected completed by good31 in {attempts} attempt(s): {t}"
        );
    }
    assert_eq!(
        events(port, "failed on bad32").len(),
        limit,
        "bad32 failed again after its exclusion"
    );
    assert_eq!(events(port, "failed on good31").len(), 0);
    assert_eq!(
        events(port, &format!("job {id} completed")).len(),
        1,
        "no completion event"
    );

    // `rayfarm job show` tells the story.
    let (ok, out, err) = farm.run(&["job", "show", &id, "--manager", &manager]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("status completed") && out.contains("100.0% done"),
        "{out}"
    );
    let line0 = out
        .lines()
        .find(|l| l.contains("p000000"))
        .unwrap_or_default();
    assert!(
        line0.contains(&format!("attempts {}", limit + 1)) && line0.contains("good31"),
        "task 0's line should show its attempts and node: {out}"
    );
    // The node listing still has both.
    let (ok, out, _) = farm.run(&["nodes", "--manager", &manager]);
    assert!(
        ok && out.contains("bad32") && out.contains("good31"),
        "{out}"
    );
}

#[test]
fn a_task_that_fails_on_every_node_fails_the_job_and_keeps_the_placeholders() {
    let farm = Farm::new();
    let port = 23520;
    let manager = format!("127.0.0.1:{port}");
    let (map, bad_dir) = farm.bad_path_map();
    let bad_dir = bad_dir.display().to_string();
    // One node alone can fail a job's tasks only MAX_NODE_FAILURES_PER_JOB (2) times, fewer
    // than MAX_TASK_ATTEMPTS (3): the job would wait for another node for ever (see the
    // previous test). Two bad nodes and a one-task job use up the attempts whatever the order.
    const {
        assert!(
            2 * MAX_NODE_FAILURES_PER_JOB >= MAX_TASK_ATTEMPTS,
            "two bad nodes must be able to use up a task's attempts"
        )
    };
    let _m = farm.manager(port, &["127.0.0.33", "127.0.0.34"]);
    let _d = [("127.0.0.33", "bad33"), ("127.0.0.34", "bad34")]
        .map(|(ip, alias)| farm.daemon(ip, alias, &["--path-map", &map]));
    let mut c = farm.client("farm", port, &["--spp", "8", "--passes", "ao"]);
    let (id, tasks) = Farm::job_id(&mut c);
    assert_eq!(tasks, 1, "one pass of one 64-texel map is one task");
    // The placeholders are written before the job is submitted.
    let placeholders = files(&farm.path("farm"));
    assert_eq!(
        placeholders.keys().collect::<Vec<_>>(),
        ["atlas_ao_64.exr", "atlas_ao_64.png"],
        "placeholders"
    );

    let st = c.wait(Duration::from_secs(60));
    let err = c.stderr();
    assert!(!st.success(), "the client succeeded:\n{}", c.describe());
    assert!(!err.contains("panicked"), "{}", c.describe());
    let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        last.starts_with("Error: ") || last.starts_with("error: "),
        "the client's last line should be its error: {last}"
    );
    for needle in [
        format!("job {id} failed on the farm"),
        bad_dir.clone(),
        format!("attempt {MAX_TASK_ATTEMPTS} of {MAX_TASK_ATTEMPTS}"),
        format!("rayfarm job show {id}"),
        "the placeholders stay".to_string(),
    ] {
        assert!(last.contains(&needle), "{needle:?} missing: {last}");
    }
    assert_same(
        &files(&farm.path("farm")),
        &placeholders,
        "the output folder after a failed job",
    );
    // The job folder stays (nothing was merged), without parts.
    let job_dir = farm.path("net").join(&id);
    assert!(job_dir.join("job.desc").is_file());
    let parts = std::fs::read_dir(job_dir.join("parts"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(parts, 0, "parts were written");

    // The manager's record.
    let job = api(port, &format!("/api/v1/jobs/{id}"));
    assert_eq!(job["job"]["status"], "failed", "{job:#}");
    assert_eq!(job["job"]["tasks"]["failed"], 1, "{job:#}");
    let jerr = job["job"]["error"].as_str().unwrap_or("");
    assert!(jerr.contains(&bad_dir), "the job's error: {job:#}");
    let t = &job["tasks"][0];
    assert!(
        t["status"] == "failed" && t["attempts"] == MAX_TASK_ATTEMPTS,
        "{t}"
    );
    assert!(
        t["node"] == "bad33" || t["node"] == "bad34",
        "a failed task keeps its last node: {t}"
    );
    let failures = events(port, "failed on bad3");
    assert_eq!(
        failures.len(),
        MAX_TASK_ATTEMPTS as usize,
        "{:?}",
        messages(&failures)
    );
    for node in ["bad33", "bad34"] {
        let n = failures.iter().filter(|e| e["node"] == node).count();
        assert!(
            n <= MAX_NODE_FAILURES_PER_JOB as usize,
            "{node} failed {n} times"
        );
    }
    assert_eq!(
        events(port, &format!("job {id} failed")).len(),
        1,
        "no job failure event"
    );

    // `rayfarm job show` and `rayfarm jobs`.
    let (ok, out, err) = farm.run(&["job", "show", &id, "--manager", &manager]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("status failed"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("error: ") && l.contains(&bad_dir)),
        "{out}"
    );
    assert!(
        out.contains(&format!("attempts {MAX_TASK_ATTEMPTS}")),
        "{out}"
    );
    let (ok, out, _) = farm.run(&["jobs", "--manager", &manager]);
    assert!(
        ok && out
            .lines()
            .any(|l| l.starts_with(id.as_str()) && l.contains("failed")),
        "{out}"
    );

    // `rayfarm merge --wait` does not wait for a failed job, and writes nothing.
    let desc = job_dir.join("job.desc").display().to_string();
    let (ok, out, err) = farm.run(&["merge", &desc, "--wait", "-q"]);
    assert!(!ok, "merge of a failed job succeeded: {out}");
    assert!(
        err.contains(&format!("job {id} is failed on the manager")),
        "{err}"
    );
    assert_same(
        &files(&farm.path("farm")),
        &placeholders,
        "the output folder after merging a failed job",
    );
    assert!(job_dir.join("job.desc").is_file(), "merge removed the job");
}

/// Regression: `job cancel` stopped nothing; the node rendered the canceled task to its end.
/// Now the manager tells the worker (`CancelTask`) within about a second and its render
/// threads stop at the next unit.
#[test]
fn canceling_a_job_stops_its_running_task_within_seconds() {
    let farm = Farm::new();
    let port = 23530;
    let manager = format!("127.0.0.1:{port}");
    let _m = farm.manager(port, &["127.0.0.35"]);
    let d = farm.daemon("127.0.0.35", "busy35", &[]);
    // Long tasks: each would take far longer than this test waits.
    let mut c = farm.client("farm", port, &["--spp", "65536", "--no-wait"]);
    let (id, _) = Farm::job_id(&mut c);
    wait_for(Duration::from_secs(60), "a running task", || {
        let j = api(port, &format!("/api/v1/jobs/{id}"));
        if j["job"]["tasks"]["running"].as_u64().unwrap_or(0) > 0 {
            Ok(())
        } else {
            Err(format!("{j:#}"))
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    let (ok, out, err) = farm.run(&["job", "cancel", &id, "--manager", &manager]);
    assert!(ok && out.contains("canceled"), "{out}\n{err}");
    wait_for(Duration::from_secs(5), "the worker stopping", || {
        if d.stderr().contains("canceled by the manager: stopping it") {
            Ok(())
        } else {
            Err(d.stderr())
        }
    });
    // The worker's render threads are idle (or the worker has left) a few seconds later.
    let worker = children(d.pid());
    std::thread::sleep(Duration::from_secs(1));
    let before: u64 = worker.iter().map(|&p| cpu_ticks(p)).sum();
    std::thread::sleep(Duration::from_secs(2));
    let after: u64 = worker.iter().map(|&p| cpu_ticks(p)).sum();
    assert!(
        after.saturating_sub(before) < 60,
        "the worker still used {} CPU ticks in 2 s after the cancel",
        after.saturating_sub(before)
    );
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert!(
        !d.stderr().contains("TaskDone"),
        "a canceled task was reported done"
    );
}

/// Child processes of `pid` (the daemon's worker).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(c.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
        }
    }
    out
}

/// User + system CPU time of a process in clock ticks (0 once it is gone).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}
