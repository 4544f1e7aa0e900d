//! What a live view of a job shows: the image as it converges, the nodes working on it (threads,
//! share, samples/s, state), who rendered which region, the ETA, and a way to stop the job
//! cleanly.
//!
//! [`LiveView`] is shared between the job ([`crate::run_job`] attaches its scheduler and reports
//! its status) and whatever serves the view (rayfarm-farm's `live` module serves it over HTTP).
//! It does no IO itself; rates and the ETA come from [`RateWindow`], a pure function of the
//! times and counts it is given.

use crate::scheduler::{Preview, RegionOwner, Scheduler};
use crate::{NodeShare, Status};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// The longest preview edge in pixels: the view scales larger images down.
pub const PREVIEW_MAX_EDGE: u32 = 1024;
/// Rates are measured over this many seconds.
pub const RATE_WINDOW_S: f64 = 5.0;

/// Where the job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Preparing (loading, compiling the scene); nothing rendered yet.
    Starting,
    Rendering,
    /// A stop was asked for: no more units go out, the ones in flight come back.
    Stopping,
    /// Every sample is in.
    Done,
    /// Stopped early; the output holds what was done.
    Stopped,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Starting => "starting",
            JobState::Rendering => "rendering",
            JobState::Stopping => "stopping",
            JobState::Done => "done",
            JobState::Stopped => "stopped",
        }
    }
}

/// Samples per second over the last [`RATE_WINDOW_S`] seconds, from (time, running count) points.
#[derive(Clone, Debug, Default)]
pub struct RateWindow {
    points: VecDeque<(f64, u64)>,
}

impl RateWindow {
    /// Adds the running count `count` at `t_s` seconds (times must not go back).
    pub fn push(&mut self, t_s: f64, count: u64) {
        self.points.push_back((t_s, count));
        // Keep one point at or before the window's start, so the rate spans the whole window.
        while self.points.len() > 2 && self.points[1].0 <= t_s - RATE_WINDOW_S {
            self.points.pop_front();
        }
    }

    /// The rate across the window, 0 before two points a moment apart.
    pub fn rate(&self) -> f64 {
        match (self.points.front(), self.points.back()) {
            (Some(&(t0, c0)), Some(&(t1, c1))) if t1 - t0 > 1e-3 => {
                c1.saturating_sub(c0) as f64 / (t1 - t0)
            }
            _ => 0.0,
        }
    }
}

/// Seconds left at `rate` samples/s, `None` while the rate is unknown.
pub fn eta_s(done: u64, total: u64, rate: f64) -> Option<f64> {
    (rate > 0.0).then(|| total.saturating_sub(done) as f64 / rate)
}

/// One node as the view shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LiveNode {
    pub name: String,
    pub threads: u32,
    pub samples: u64,
    /// This node's fraction of the samples done so far.
    pub share: f64,
    pub samples_per_s: f64,
    /// `rendering`, `left` (it was working and went away) or `unavailable` (see `problem`).
    pub state: &'static str,
    pub problem: Option<String>,
}

/// Everything the view shows but the image (the live view's JSON, see rayfarm-farm's `live`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LiveSnapshot {
    pub title: String,
    /// `render` or `bake`.
    pub kind: &'static str,
    pub state: JobState,
    pub width: u32,
    pub height: u32,
    pub spp: u32,
    pub samples_done: u64,
    pub samples_total: u64,
    pub samples_per_s: f64,
    pub elapsed_s: f64,
    pub eta_s: Option<f64>,
    /// The layer shown (a bake has one per map and pass) and how many there are.
    pub layer: u32,
    pub layers: u32,
    pub nodes: Vec<LiveNode>,
    /// Who rendered which region of the layer shown, most recent pass on top.
    pub regions: Vec<RegionOwner>,
    /// Changes whenever the image may have changed.
    pub image_version: u64,
}

/// The job as a live view sees it; see the module documentation.
pub struct LiveView {
    inner: Mutex<Inner>,
    stop: watch::Sender<bool>,
}

struct Inner {
    title: String,
    kind: &'static str,
    width: u32,
    height: u32,
    spp: u32,
    layers: u32,
    state: JobState,
    created: Instant,
    started: Option<Instant>,
    sched: Option<Arc<Mutex<Scheduler>>>,
    status: Option<Status>,
    total_rate: RateWindow,
    node_rates: BTreeMap<String, RateWindow>,
    /// The last image of the layer shown once its film left the scheduler (finished layers).
    last_preview: Option<(u32, Preview)>,
    /// The image built most recently from the scheduler, and when: requests within
    /// [`PREVIEW_MIN_INTERVAL`] of it get it again, so clients fetching the image in a loop
    /// hold the scheduler's lock a bounded share of the time.
    recent: Option<(Instant, Preview)>,
    /// Counts the view's layer changes and its end: an image built before one is not kept.
    generation: u64,
    ended: Option<Instant>,
}

/// The least time between two images built from the scheduler for the view.
pub const PREVIEW_MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

impl LiveView {
    /// A view of a job called `title` (`kind` `render` or `bake`) of `width` x `height` at
    /// `spp`, with `layers` layers.
    pub fn new(
        title: &str,
        kind: &'static str,
        width: u32,
        height: u32,
        spp: u32,
        layers: u32,
    ) -> Arc<LiveView> {
        Arc::new(LiveView {
            inner: Mutex::new(Inner {
                title: title.to_string(),
                kind,
                width,
                height,
                spp,
                layers: layers.max(1),
                state: JobState::Starting,
                created: Instant::now(),
                started: None,
                sched: None,
                status: None,
                total_rate: RateWindow::default(),
                node_rates: BTreeMap::new(),
                last_preview: None,
                recent: None,
                generation: 0,
                ended: None,
            }),
            stop: watch::channel(false).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the job to stop cleanly (the view's stop button). Returns whether the job was still
    /// running.
    pub fn request_stop(&self) -> bool {
        let running = matches!(self.lock().state, JobState::Starting | JobState::Rendering);
        self.stop.send_replace(true);
        running
    }

    /// Flips to `true` when a stop is asked for.
    pub fn stop_requested(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// The job started rendering with `sched`.
    pub fn attach(&self, sched: Arc<Mutex<Scheduler>>) {
        let mut g = self.lock();
        g.sched = Some(sched);
        g.started = Some(Instant::now());
        if g.state == JobState::Starting {
            g.state = JobState::Rendering;
        }
    }

    /// The job's latest status (about twice a second).
    pub fn update(&self, status: &Status) {
        let mut g = self.lock();
        let t = g.created.elapsed().as_secs_f64();
        g.total_rate.push(t, status.samples_done);
        for n in &status.nodes {
            g.node_rates
                .entry(n.name.clone())
                .or_default()
                .push(t, n.samples);
        }
        g.status = Some(status.clone());
    }

    /// The job is stopping (no more units go out).
    pub fn stopping(&self) {
        let mut g = self.lock();
        if matches!(g.state, JobState::Starting | JobState::Rendering) {
            g.state = JobState::Stopping;
        }
    }

    /// The job ended: with every sample in, or stopped early. Keeps the last image.
    pub fn finish(&self, stopped: bool, last: Option<(u32, Preview)>, shares: &[NodeShare]) {
        let mut g = self.lock();
        g.state = if stopped {
            JobState::Stopped
        } else {
            JobState::Done
        };
        if last.is_some() {
            g.last_preview = last;
        }
        g.recent = None;
        g.generation += 1;
        if let Some(s) = g.status.as_mut() {
            s.nodes = shares.to_vec();
        }
        g.ended = Some(Instant::now());
    }

    /// A layer's film left the scheduler: keep its image for the view (see [`preview_of`]).
    ///
    /// [`preview_of`]: crate::scheduler::preview_of
    pub fn layer_finished(&self, layer: u32, preview: Preview) {
        let mut g = self.lock();
        g.last_preview = Some((layer, preview));
        g.recent = None;
        g.generation += 1;
    }

    /// The image as it stands, at most [`PREVIEW_MAX_EDGE`] a side; `None` before any result.
    pub fn preview(&self) -> Option<Preview> {
        let (sched, last, generation) = {
            let g = self.lock();
            if let Some((t, p)) = &g.recent {
                if t.elapsed() < PREVIEW_MIN_INTERVAL {
                    return Some(p.clone());
                }
            }
            (g.sched.clone(), g.last_preview.clone(), g.generation)
        };
        if let Some(sched) = sched {
            let built = {
                let s = sched.lock().unwrap_or_else(|p| p.into_inner());
                let layer = s.current_layer();
                s.preview(layer, PREVIEW_MAX_EDGE)
            };
            if let Some(p) = built {
                let mut g = self.lock();
                if g.generation == generation {
                    g.recent = Some((Instant::now(), p.clone()));
                }
                return Some(p);
            }
        }
        last.map(|(_, p)| p)
    }

    /// What the view shows but the image.
    pub fn snapshot(&self) -> LiveSnapshot {
        let (sched, g_snapshot) = {
            let g = self.lock();
            let status = g.status.clone().unwrap_or(Status {
                samples_done: 0,
                samples_total: 0,
                nodes: Vec::new(),
                master_port: 0,
            });
            let end = g.ended.unwrap_or_else(Instant::now);
            let elapsed = g
                .started
                .map(|s| end.saturating_duration_since(s).as_secs_f64())
                .unwrap_or(0.0);
            let running = matches!(g.state, JobState::Rendering | JobState::Stopping);
            let rate = if running { g.total_rate.rate() } else { 0.0 };
            let nodes = live_nodes(&status.nodes, &g.node_rates, running);
            let snap = LiveSnapshot {
                title: g.title.clone(),
                kind: g.kind,
                state: g.state,
                width: g.width,
                height: g.height,
                spp: g.spp,
                samples_done: status.samples_done,
                samples_total: status.samples_total,
                samples_per_s: rate,
                elapsed_s: elapsed,
                eta_s: if g.state == JobState::Rendering {
                    eta_s(status.samples_done, status.samples_total, rate)
                } else {
                    None
                },
                layer: g.last_preview.as_ref().map_or(0, |(l, _)| *l),
                layers: g.layers,
                nodes,
                regions: Vec::new(),
                image_version: status.samples_done,
            };
            (g.sched.clone(), snap)
        };
        let mut snap = g_snapshot;
        if let Some(sched) = sched {
            let s = sched.lock().unwrap_or_else(|p| p.into_inner());
            if snap.state != JobState::Done && snap.state != JobState::Stopped {
                snap.layer = s.current_layer();
            }
            snap.regions = s.owners(snap.layer);
        }
        snap
    }
}

/// The nodes as the view lists them: working ones first, by samples.
fn live_nodes(
    shares: &[NodeShare],
    rates: &BTreeMap<String, RateWindow>,
    running: bool,
) -> Vec<LiveNode> {
    let done: u64 = shares.iter().map(|n| n.samples).sum();
    let mut nodes: Vec<LiveNode> = shares
        .iter()
        .map(|n| LiveNode {
            name: n.name.clone(),
            threads: n.threads,
            samples: n.samples,
            share: if done > 0 {
                n.samples as f64 / done as f64
            } else {
                0.0
            },
            samples_per_s: if running && n.connected {
                rates.get(&n.name).map_or(0.0, RateWindow::rate)
            } else {
                0.0
            },
            state: match (&n.problem, n.connected) {
                (Some(_), _) => "unavailable",
                (None, true) => "rendering",
                (None, false) if !running => "done",
                (None, false) => "left",
            },
            problem: n.problem.clone(),
        })
        .collect();
    nodes.sort_by(|a, b| {
        (a.problem.is_some(), std::cmp::Reverse(a.samples))
            .cmp(&(b.problem.is_some(), std::cmp::Reverse(b.samples)))
    });
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_span_the_last_window_and_the_eta_follows() {
        let mut w = RateWindow::default();
        assert_eq!(w.rate(), 0.0);
        w.push(0.0, 0);
        assert_eq!(w.rate(), 0.0, "one point has no rate");
        for t in 1..=20 {
            // 100 samples/s for 10 s, then 400 samples/s.
            let c = if t <= 10 {
                t * 100
            } else {
                1000 + (t - 10) * 400
            };
            w.push(t as f64, c);
        }
        assert!((w.rate() - 400.0).abs() < 1e-9, "rate {}", w.rate());
        assert_eq!(eta_s(9000, 13000, 400.0), Some(10.0));
        assert_eq!(eta_s(10, 100, 0.0), None);
    }

    #[test]
    fn nodes_are_listed_working_first_with_their_share_and_state() {
        let share = |name: &str, samples, connected, problem: Option<&str>| NodeShare {
            name: name.into(),
            threads: 2,
            samples,
            connected,
            problem: problem.map(str::to_string),
        };
        let shares = vec![
            share(
                "d7 (10.0.0.7:48000)",
                0,
                false,
                Some("occupied by 10.0.0.5:21000"),
            ),
            share("local", 100, true, None),
            share("d2", 300, false, None),
        ];
        let nodes = live_nodes(&shares, &BTreeMap::new(), true);
        let names: Vec<_> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["d2", "local", "d7 (10.0.0.7:48000)"]);
        assert_eq!(nodes[0].state, "left");
        assert_eq!(nodes[1].state, "rendering");
        assert_eq!(nodes[2].state, "unavailable");
        assert!((nodes[0].share - 0.75).abs() < 1e-12);
        assert_eq!(
            live_nodes(&shares, &BTreeMap::new(), false)[0].state,
            "done"
        );
    }

    #[test]
    fn a_stop_request_is_seen_once_and_says_whether_the_job_ran() {
        let v = LiveView::new("t", "render", 4, 4, 1, 1);
        let rx = v.stop_requested();
        assert!(!*rx.borrow());
        assert!(v.request_stop());
        assert!(*rx.borrow());
        v.finish(true, None, &[]);
        assert!(!v.request_stop(), "a finished job said it was running");
        assert_eq!(v.snapshot().state, JobState::Stopped);
    }
}

#[cfg(test)]
mod preview_tests {
    use super::*;
    use crate::scheduler::tests::unit;
    use rayfarm_render::film::Region;
    use rayfarm_render::UnitResult;

    /// Clients fetching the image in a loop get the image built at most
    /// [`PREVIEW_MIN_INTERVAL`] ago instead of one built under the scheduler's lock each time;
    /// a layer that finishes makes the next request build afresh.
    #[test]
    fn images_are_built_at_most_once_per_interval() {
        let mut s = Scheduler::new(vec![Region::full(1, 1)], (0..3).map(unit).collect());
        s.track_progress();
        let n = s.add_node("a".into(), 1);
        let sched = Arc::new(Mutex::new(s));
        let v = LiveView::new("t", "render", 1, 1, 3, 1);
        v.attach(sched.clone());
        assert_eq!(v.preview(), None, "no result yet");
        let add = |value: i128| {
            let mut s = sched.lock().unwrap();
            let u = s.take(n).unwrap();
            let one = 1i128 << rayfarm_render::film::FIXED_FRAC_BITS;
            assert!(s.complete(
                n,
                UnitResult {
                    unit: u,
                    sums: vec![[value * one; 3]],
                    nonfinite_samples: 0,
                }
            ));
        };
        add(1);
        let first = v.preview().unwrap();
        add(4);
        assert_eq!(
            v.preview().unwrap(),
            first,
            "within the interval: the same image"
        );
        std::thread::sleep(PREVIEW_MIN_INTERVAL);
        let second = v.preview().unwrap();
        assert_ne!(second, first, "after it: built again");
        add(7);
        let (_, film) = sched.lock().unwrap().take_finished().pop().unwrap();
        v.layer_finished(0, crate::scheduler::preview_of(&film, &[3], 64));
        assert_ne!(
            v.preview().unwrap(),
            second,
            "a finished layer shows at once"
        );
    }
}
