//! Which unit goes where: the master's bookkeeping, behind one mutex, and no IO.
//!
//! Units wait in `pending` (ordered, so hand-out order is deterministic), move to `in_flight`
//! with the node that has them, to `merging` once their result is accepted, and end in `done`
//! once it is in the film. Only the node that holds a unit can complete it, so a late result
//! from a node given up is ignored, and no sample is counted twice.
//!
//! A unit out much longer than units take (a worker that holds units and never returns them,
//! or whose render thread hangs while it still answers) is handed to another node once nothing
//! else is left to hand out ([`Scheduler::reclaim_stale`]); the first result to arrive from any
//! of its holders counts and the others are ignored. A unit whose second holder stalls too goes
//! on to a third node, and so on while a connected node has not held it. All results are the
//! same bytes (a unit's sums depend only on the scene, the settings and the unit), so the image
//! does not depend on which arrives first.
//!
//! A job has layers (one for a render; one per map and pass for a bake), each with its own
//! film. A layer's film is made when its first result arrives and handed out through
//! [`Scheduler::take_finished`] when its last one is in, so a bake of many maps holds only
//! the few layers in progress in memory.
//!
//! Adding a result into the film is most of a merge's work besides decoding it, so it happens
//! outside this lock ([`merge`]): [`Scheduler::accept`] decides, under the lock, that a result
//! counts (its sender holds the unit, the result fits the film) and takes the unit out of
//! `in_flight`, so neither a duplicate nor a lost node's requeue can count it again; the
//! caller adds it into the layer's [`SharedFilm`], where adds of other results run beside it;
//! [`Scheduler::merged`] then counts it done, under the lock again. A layer finishes in
//! `merged`, so only once the add of every one of its results has returned.

use crate::{NodeShare, Status};
use rayfarm_render::film::{check_fits, FilmError, Region, SharedFilm};
use rayfarm_render::{Film, UnitResult, WorkUnit};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub type NodeId = usize;

/// A unit's rectangle as `(y0, x0, y1, x1)`, ordered by its top edge.
type TileKey = (u32, u32, u32, u32);

struct Node {
    name: String,
    threads: u32,
    samples: u64,
    connected: bool,
}

/// The name under which the master's own cores render.
pub const LOCAL_NODE: &str = "local";

/// The most planned units one handed-out unit joins (consecutive sample ranges of one tile).
pub const MAX_JOINED_UNITS: usize = 8;

/// A unit out for longer than this many times the median time units took is stale
/// ([`Scheduler::reclaim_stale`]).
pub const STALE_FACTOR: f64 = 8.0;
/// ... and never before this.
pub const STALE_MIN: std::time::Duration = std::time::Duration::from_secs(60);
/// How many recent unit times the median is taken over.
const UNIT_TIMES_KEPT: usize = 64;

pub struct Scheduler {
    pending: BTreeSet<WorkUnit>,
    in_flight: HashMap<WorkUnit, NodeId>,
    /// When each unit in flight was handed out.
    handed_at: HashMap<WorkUnit, Instant>,
    /// Stale units taken from their holders ([`Scheduler::reclaim_stale`]), each with the nodes
    /// relieved of it, in order: any of them may still send its result, and the first result
    /// from any holder counts. At most one entry per node.
    given_up: HashMap<WorkUnit, Vec<NodeId>>,
    /// Stale units waiting for another node (whole, as handed out: `joined` keeps their parts).
    reissue: BTreeSet<WorkUnit>,
    /// Seconds the most recent units took from hand-out to result (at most [`UNIT_TIMES_KEPT`]).
    unit_secs: std::collections::VecDeque<f64>,
    /// The least time before a unit is stale ([`STALE_MIN`] unless set).
    min_stale: std::time::Duration,
    /// Handed-out units that join several planned ones, with those parts (in order). A node
    /// renders and sends one result for them: fewer, bigger results to send and merge, and
    /// the same sums, since integer sums do not depend on how samples are grouped.
    joined: HashMap<WorkUnit, Vec<WorkUnit>>,
    /// Units whose result was accepted and is being added into its film, with their node:
    /// no longer in flight (never requeued, never accepted again), not yet done.
    merging: HashMap<WorkUnit, NodeId>,
    done: HashSet<WorkUnit>,
    total_units: usize,
    samples_total: u64,
    samples_done: u64,
    nodes: Vec<Node>,
    /// Each layer's region.
    layers: Vec<Region>,
    /// Units of each layer not yet done (a unit being merged is not done yet).
    layer_left: Vec<usize>,
    films: BTreeMap<u32, Arc<SharedFilm>>,
    finished_layers: Vec<(usize, Film)>,
    /// Samples each pixel of a layer in progress has, for a live view and for a stopped job.
    counts: BTreeMap<u32, Vec<u32>>,
    /// The node that completed each region most recently (a live view's overlay), by layer.
    owners: BTreeMap<u32, BTreeMap<TileKey, NodeId>>,
    /// The tallest unit seen, bounding the search for overlapped regions in `owners`.
    tallest: u32,
    /// Whether `counts` and `owners` are kept (a live view watches): off, merging a result
    /// costs nothing more than adding it into the film.
    tracking: bool,
    stopped: bool,
    /// Nothing is handed out until this many nodes (besides the master's own cores) have
    /// joined (`--wait-for-nodes`); 0 once that happened.
    wait_for_nodes: usize,
    /// When the wait for nodes gives up (`--wait-timeout`); `None`: never.
    wait_deadline: Option<Instant>,
}

/// A layer's image as it converges: linear RGB, each pixel divided by its own sample count
/// (black where none arrived yet), scaled down to fit a preview.
#[derive(Clone, Debug, PartialEq)]
pub struct Preview {
    pub width: u32,
    pub height: u32,
    /// Row-major, `width * height` pixels.
    pub rgb: Vec<[f32; 3]>,
}

/// A region of a layer and the node that rendered it most recently.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RegionOwner {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
    pub node: String,
}

impl Scheduler {
    /// `layers[i]` is layer i's region; every unit must name a layer and lie in its region.
    pub fn new(layers: Vec<Region>, units: Vec<WorkUnit>) -> Scheduler {
        let samples_total = units.iter().map(|u| u.samples()).sum();
        let pending: BTreeSet<WorkUnit> = units.into_iter().collect();
        let mut layer_left = vec![0usize; layers.len()];
        for u in &pending {
            if let Some(n) = layer_left.get_mut(u.layer as usize) {
                *n += 1;
            }
        }
        Scheduler {
            total_units: pending.len(),
            pending,
            in_flight: HashMap::new(),
            handed_at: HashMap::new(),
            given_up: HashMap::new(),
            reissue: BTreeSet::new(),
            unit_secs: std::collections::VecDeque::new(),
            min_stale: STALE_MIN,
            joined: HashMap::new(),
            merging: HashMap::new(),
            done: HashSet::new(),
            samples_total,
            samples_done: 0,
            nodes: Vec::new(),
            layers,
            layer_left,
            films: BTreeMap::new(),
            finished_layers: Vec::new(),
            counts: BTreeMap::new(),
            owners: BTreeMap::new(),
            tallest: 0,
            tracking: false,
            stopped: false,
            wait_for_nodes: 0,
            wait_deadline: None,
        }
    }

    /// Keeps each pixel's sample count and who rendered which region from now on, for a live
    /// view ([`Scheduler::preview`], [`Scheduler::owners`]) and for a stop
    /// ([`Scheduler::take_unfinished`]). Call it before the first result.
    pub fn track_progress(&mut self) {
        self.tracking = true;
    }

    /// Stops the job early: nothing more is handed out, and [`Scheduler::finished`] says yes
    /// once the units in flight are in (or given up by the caller after a grace period).
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The films of layers that did not finish, with each pixel's sample count: what a stopped
    /// job has done. Empties them.
    pub fn take_unfinished(&mut self) -> Vec<(usize, Film, Vec<u32>)> {
        let films = std::mem::take(&mut self.films);
        films
            .into_iter()
            .map(|(l, f)| {
                let counts = self.counts.remove(&l).unwrap_or_default();
                (l as usize, unshare(f), counts)
            })
            .collect()
    }

    /// The layer a live view shows: the lowest one in progress, else the last one finished
    /// (whose film the caller holds), else layer 0.
    pub fn current_layer(&self) -> u32 {
        self.films.keys().next().copied().unwrap_or(0)
    }

    /// `layer` as it converges, scaled (nearest pixel) to at most `max_edge` pixels a side;
    /// `None` before any of its results arrived or after its film was handed out.
    pub fn preview(&self, layer: u32, max_edge: u32) -> Option<Preview> {
        let film = self.films.get(&layer)?;
        let counts = self.counts.get(&layer)?;
        Some(preview_with(film.region(), counts, max_edge, |ys, xs| {
            film.gather(ys, xs)
        }))
    }

    /// Who rendered which region of `layer` most recently.
    pub fn owners(&self, layer: u32) -> Vec<RegionOwner> {
        let Some(o) = self.owners.get(&layer) else {
            return Vec::new();
        };
        o.iter()
            .map(|(&(y0, x0, y1, x1), &n)| RegionOwner {
                x0,
                y0,
                x1,
                y1,
                node: self
                    .nodes
                    .get(n)
                    .map(|n| n.name.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Layers whose every unit is in, with their films, in the order they finished.
    pub fn take_finished(&mut self) -> Vec<(usize, Film)> {
        std::mem::take(&mut self.finished_layers)
    }

    pub fn add_node(&mut self, name: String, threads: u32) -> NodeId {
        self.nodes.push(Node {
            name,
            threads,
            samples: 0,
            connected: true,
        });
        self.check_waiting();
        self.nodes.len() - 1
    }

    /// Holds every unit back until `n` nodes other than `local` have joined (then never again,
    /// whoever leaves): a render that should start only once its farm is ready. At `deadline`
    /// ([`Scheduler::wait_expired`]) it goes on with the nodes there are.
    pub fn wait_for_nodes(&mut self, n: usize, deadline: Option<Instant>) {
        self.wait_for_nodes = n;
        self.wait_deadline = deadline;
        self.check_waiting();
    }

    /// Whether units are held back for nodes still to join.
    pub fn waiting_for_nodes(&self) -> Option<(usize, usize)> {
        (self.wait_for_nodes > 0).then(|| (self.remote_nodes(), self.wait_for_nodes))
    }

    /// Stops holding units back if the wait's deadline has come by `now`; returns (joined,
    /// wanted) when it gave up the wait just now.
    pub fn wait_expired(&mut self, now: Instant) -> Option<(usize, usize)> {
        if self.wait_deadline.is_none_or(|d| now < d) {
            return None;
        }
        let waiting = self.waiting_for_nodes();
        self.wait_for_nodes = 0;
        waiting
    }

    fn remote_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| n.name != LOCAL_NODE).count()
    }

    fn check_waiting(&mut self) {
        if self.wait_for_nodes > 0 && self.remote_nodes() >= self.wait_for_nodes {
            self.wait_for_nodes = 0;
        }
    }

    /// The next unit for `node`, if any is waiting.
    pub fn take(&mut self, node: NodeId) -> Option<WorkUnit> {
        if self.stopped || self.wait_for_nodes > 0 {
            return None;
        }
        if let Some(u) = self.take_reissued(node) {
            return Some(u);
        }
        let u = self.pending.pop_first()?;
        self.hand_out(u, node);
        Some(u)
    }

    fn hand_out(&mut self, unit: WorkUnit, node: NodeId) {
        self.in_flight.insert(unit, node);
        self.handed_at.insert(unit, Instant::now());
    }

    /// A stale unit taken from another node, if one waits (first in unit order).
    fn take_reissued(&mut self, node: NodeId) -> Option<WorkUnit> {
        let u = *self.reissue.iter().find(|u| !self.gave_up(u, node))?;
        self.reissue.remove(&u);
        self.hand_out(u, node);
        Some(u)
    }

    /// Whether `node` was relieved of the stale unit `u`.
    fn gave_up(&self, u: &WorkUnit, node: NodeId) -> bool {
        self.given_up.get(u).is_some_and(|n| n.contains(&node))
    }

    /// Hands the units that have been out too long to other nodes: once nothing is pending,
    /// a unit out for more than [`STALE_FACTOR`] times the median time of recent units (and at
    /// least [`STALE_MIN`], or what [`Scheduler::set_min_stale`] set) is taken from its holder
    /// and waits for another node's [`Scheduler::take`]. The holder may still send its result:
    /// whichever of the holders answers first counts. A unit goes on while some connected node
    /// (the master's own cores count) has not held it: if its new holder stalls too, the next
    /// call hands it to a third, so several workers that hold units cannot stall a render
    /// while one honest node is left. Returns how many units were reclaimed.
    pub fn reclaim_stale(&mut self, now: Instant) -> usize {
        if self.stopped || !self.pending.is_empty() || self.in_flight.is_empty() {
            return 0;
        }
        let deadline = self.stale_after();
        let stale: Vec<(WorkUnit, NodeId)> = self
            .in_flight
            .iter()
            .filter(|(u, _)| {
                self.handed_at
                    .get(u)
                    .is_some_and(|t| now.saturating_duration_since(*t) > deadline)
            })
            .filter(|&(u, &holder)| {
                // Somebody else must be able to take it.
                self.nodes
                    .iter()
                    .enumerate()
                    .any(|(id, n)| n.connected && id != holder && !self.gave_up(u, id))
            })
            .map(|(&u, &n)| (u, n))
            .collect();
        for &(u, holder) in &stale {
            self.in_flight.remove(&u);
            self.handed_at.remove(&u);
            self.given_up.entry(u).or_default().push(holder);
            self.reissue.insert(u);
        }
        stale.len()
    }

    /// How long a unit may be out before it is stale.
    pub fn stale_after(&self) -> std::time::Duration {
        let mut t: Vec<f64> = self.unit_secs.iter().copied().collect();
        t.sort_by(f64::total_cmp);
        let median = t.get(t.len() / 2).copied().unwrap_or(0.0);
        self.min_stale
            .max(std::time::Duration::from_secs_f64(median * STALE_FACTOR))
    }

    /// Sets the least time before a unit is stale (tests shorten [`STALE_MIN`]).
    pub fn set_min_stale(&mut self, d: std::time::Duration) {
        self.min_stale = d;
    }

    /// The next unit for `node` joined with up to `limit - 1` following sample ranges of the
    /// same tile (planned units of the same length, in order), as one unit.
    pub fn take_joined(&mut self, node: NodeId, limit: usize) -> Option<WorkUnit> {
        if self.stopped || self.wait_for_nodes > 0 {
            return None;
        }
        if let Some(u) = self.take_reissued(node) {
            return Some(u);
        }
        let first = self.pending.pop_first()?;
        let len = first.sample_end - first.sample_start;
        let mut parts = vec![first];
        let mut end = first.sample_end;
        while parts.len() < limit && len > 0 {
            let Some(next_end) = end.checked_add(len) else {
                break;
            };
            let next = WorkUnit {
                sample_start: end,
                sample_end: next_end,
                ..first
            };
            if !self.pending.remove(&next) {
                break;
            }
            parts.push(next);
            end = next_end;
        }
        let unit = WorkUnit {
            sample_end: end,
            ..first
        };
        if parts.len() > 1 {
            self.joined.insert(unit, parts);
        }
        self.hand_out(unit, node);
        Some(unit)
    }

    /// How many planned units a handed-out unit should join now: many while much is pending
    /// (a unit per 8 threads' worth of the queue, at most [`MAX_JOINED_UNITS`]), one near the
    /// end so the last units balance across nodes, and one while a live view watches (its
    /// passes should arrive small and fast).
    pub fn join_limit(&self) -> usize {
        if self.tracking {
            return 1;
        }
        let threads: u64 = self
            .nodes
            .iter()
            .filter(|n| n.connected)
            .map(|n| u64::from(n.threads))
            .sum::<u64>()
            .max(1);
        ((self.pending.len() as u64 / (8 * threads)) as usize).clamp(1, MAX_JOINED_UNITS)
    }

    /// Puts a handed-out unit (or the planned units it joins) back in the queue.
    fn requeue(&mut self, unit: WorkUnit) {
        self.in_flight.remove(&unit);
        self.handed_at.remove(&unit);
        // A reissued unit whose first holder may still answer waits whole for another node.
        if self.given_up.contains_key(&unit) {
            self.reissue.insert(unit);
            return;
        }
        match self.joined.remove(&unit) {
            Some(parts) => self.pending.extend(parts),
            None => {
                self.pending.insert(unit);
            }
        }
    }

    /// Adds a result if `node` holds the unit, all under this lock; returns whether it was
    /// accepted. [`merge`] does the same with the add outside the lock.
    pub fn complete(&mut self, node: NodeId, r: UnitResult) -> bool {
        let Some(a) = self.accept(node, &r) else {
            return false;
        };
        match a.add(&r) {
            Ok(()) => {
                self.merged(a);
                true
            }
            Err(_) => {
                self.abandon(a);
                false
            }
        }
    }

    /// The first half of completing a unit: whether `r` counts, i.e. `node` holds `r.unit` and
    /// `r` fits its layer's film. If so, the unit is no longer in flight (a second result for
    /// it is refused; losing the node does not requeue it) and the caller adds `r` through the
    /// returned [`Accepted`], then hands that to [`Scheduler::merged`] (or, if the add failed,
    /// to [`Scheduler::abandon`]). A malformed result sends the unit back to the queue.
    pub fn accept(&mut self, node: NodeId, r: &UnitResult) -> Option<Accepted> {
        let holds = self.in_flight.get(&r.unit) == Some(&node);
        let gave_up = self.gave_up(&r.unit, node);
        if !holds && !gave_up {
            return None;
        }
        let layer = r.unit.layer;
        let &region = self.layers.get(layer as usize)?;
        if check_fits(region, r).is_err() {
            if holds {
                self.requeue(r.unit);
            } else {
                self.forget_holder(r.unit, node);
            }
            return None;
        }
        let film = self
            .films
            .entry(layer)
            .or_insert_with(|| Arc::new(SharedFilm::new(region)))
            .clone();
        if let Some(t) = self.handed_at.remove(&r.unit).filter(|_| holds) {
            if self.unit_secs.len() == UNIT_TIMES_KEPT {
                self.unit_secs.pop_front();
            }
            self.unit_secs.push_back(t.elapsed().as_secs_f64());
        }
        // Whichever of a reissued unit's holders answered first: the others' results are
        // refused from now on.
        self.in_flight.remove(&r.unit);
        self.given_up.remove(&r.unit);
        self.reissue.remove(&r.unit);
        self.merging.insert(r.unit, node);
        Some(Accepted {
            unit: r.unit,
            node,
            film,
        })
    }

    /// The second half: `a`'s result is in the film. The unit (or the planned units it joins)
    /// is done; if it was its layer's last, the layer's film is finished.
    pub fn merged(&mut self, a: Accepted) {
        let Accepted { unit, node, film } = a;
        // The layer's film may be handed out below: this add is over.
        drop(film);
        if self.merging.remove(&unit).is_none() {
            return;
        }
        let layer = unit.layer;
        if self.tracking {
            if let Some(&region) = self.layers.get(layer as usize) {
                self.track(layer, region, node, unit);
            }
        }
        let parts = self.joined.remove(&unit).unwrap_or_else(|| vec![unit]);
        let left = &mut self.layer_left[layer as usize];
        *left -= parts.len();
        if *left == 0 {
            if let Some(f) = self.films.remove(&layer) {
                self.finished_layers.push((layer as usize, unshare(f)));
            }
            self.counts.remove(&layer);
        }
        self.done.extend(parts);
        let s = unit.samples();
        self.samples_done += s;
        if let Some(n) = self.nodes.get_mut(node) {
            n.samples += s;
        }
    }

    /// `a`'s result could not be added (and nothing of it was): its unit goes back to the queue.
    pub fn abandon(&mut self, a: Accepted) {
        if self.merging.remove(&a.unit).is_some() {
            self.requeue(a.unit);
        }
    }

    /// Counts `u`'s samples into its pixels and makes `node` the owner of its region.
    fn track(&mut self, layer: u32, region: Region, node: NodeId, u: WorkUnit) {
        let counts = self
            .counts
            .entry(layer)
            .or_insert_with(|| vec![0; region.pixels()]);
        let w = region.width() as usize;
        for y in u.y0..u.y1 {
            let row = (y - region.y0) as usize * w;
            for x in u.x0..u.x1 {
                let c = &mut counts[row + (x - region.x0) as usize];
                *c = c.saturating_add(u.sample_end - u.sample_start);
            }
        }
        // A bigger tile of an early pass gives way to the smaller ones of later passes; only
        // regions starting less than the tallest unit above this one can overlap it.
        self.tallest = self.tallest.max(u.y1 - u.y0);
        let owners = self.owners.entry(layer).or_default();
        let band = (u.y0.saturating_sub(self.tallest), 0, 0, 0)..(u.y1, 0, 0, 0);
        let overlapped: Vec<_> = owners
            .range(band)
            .map(|(&k, _)| k)
            .filter(|&(y0, x0, y1, x1)| y0 < u.y1 && u.y0 < y1 && x0 < u.x1 && u.x0 < x1)
            .collect();
        for k in overlapped {
            owners.remove(&k);
        }
        owners.insert((u.y0, u.x0, u.y1, u.x1), node);
    }

    /// `node` returns a unit unrendered.
    pub fn give_back(&mut self, node: NodeId, unit: WorkUnit) {
        if self.in_flight.get(&unit) == Some(&node) {
            self.requeue(unit);
        }
    }

    /// `node` is gone: everything it held goes back to the queue.
    pub fn node_lost(&mut self, node: NodeId) {
        for u in units_of(&self.in_flight, node) {
            self.requeue(u);
        }
        // Stale units it was relieved of: no result will come from it now.
        let relieved: Vec<WorkUnit> = self
            .given_up
            .iter()
            .filter(|(_, n)| n.contains(&node))
            .map(|(&u, _)| u)
            .collect();
        for u in relieved {
            self.forget_holder(u, node);
        }
        if let Some(n) = self.nodes.get_mut(node) {
            n.connected = false;
        }
    }

    /// `node`, relieved of the stale unit `u`, will not answer for it: once no former holder
    /// may answer, a unit still waiting for another node is an ordinary unit again.
    fn forget_holder(&mut self, u: WorkUnit, node: NodeId) {
        let Some(holders) = self.given_up.get_mut(&u) else {
            return;
        };
        holders.retain(|&n| n != node);
        if holders.is_empty() {
            self.given_up.remove(&u);
            if self.reissue.remove(&u) {
                self.requeue(u);
            }
        }
    }

    /// Whether every unit is in, or the job was stopped and nothing is in flight or being
    /// merged.
    pub fn finished(&self) -> bool {
        self.done.len() == self.total_units
            || (self.stopped && self.in_flight.is_empty() && self.merging.is_empty())
    }

    /// Units handed out and not yet in the film.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len() + self.merging.len()
    }

    pub fn status(&self, master_port: u16) -> Status {
        Status {
            samples_done: self.samples_done,
            samples_total: self.samples_total,
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeShare {
                    name: n.name.clone(),
                    threads: n.threads,
                    samples: n.samples,
                    connected: n.connected,
                    problem: None,
                })
                .collect(),
            master_port,
        }
    }
}

/// The units `map` gives to `node`.
fn units_of(map: &HashMap<WorkUnit, NodeId>, node: NodeId) -> Vec<WorkUnit> {
    map.iter()
        .filter(|(_, &n)| n == node)
        .map(|(&u, _)| u)
        .collect()
}

/// A result accepted by [`Scheduler::accept`], to be added into its layer's film and then
/// handed back to [`Scheduler::merged`] (or [`Scheduler::abandon`]).
#[derive(Debug)]
#[must_use = "an accepted unit stays unfinished until it is handed to `merged` or `abandon`"]
pub struct Accepted {
    unit: WorkUnit,
    node: NodeId,
    film: Arc<SharedFilm>,
}

impl Accepted {
    pub fn unit(&self) -> WorkUnit {
        self.unit
    }

    /// Adds `r` (the result that was accepted) into its layer's film; other threads' adds into
    /// the same film may run at the same time.
    pub fn add(&self, r: &UnitResult) -> Result<(), FilmError> {
        debug_assert_eq!(r.unit, self.unit);
        self.film.add(r)
    }
}

/// Completes `node`'s result `r` with `sched` locked only to accept it and to count it done:
/// the add into the film, between the two, runs beside other threads' merges. Returns whether
/// the result was accepted; one that does not fit its film sends its unit back to the queue.
pub fn merge(sched: &Mutex<Scheduler>, node: NodeId, r: &UnitResult) -> bool {
    let lock = || sched.lock().unwrap_or_else(|p| p.into_inner());
    let Some(a) = lock().accept(node, r) else {
        return false;
    };
    let added = a.add(r);
    let mut s = lock();
    match added {
        Ok(()) => {
            s.merged(a);
            true
        }
        Err(_) => {
            s.abandon(a);
            false
        }
    }
}

/// A layer's film once its adds are over: the film itself when nothing else holds it (the
/// usual case: a layer is handed out after its last add returned), else a copy of it.
fn unshare(film: Arc<SharedFilm>) -> Film {
    Arc::try_unwrap(film).map_or_else(|f| f.to_film(), SharedFilm::into_film)
}

/// `film` with each pixel divided by its count, scaled down to at most `max_edge` a side.
pub fn preview_of(film: &Film, counts: &[u32], max_edge: u32) -> Preview {
    let (w, sums) = (film.region.width() as usize, film.sums());
    preview_with(film.region, counts, max_edge, |ys, xs| {
        ys.iter()
            .flat_map(|&y| xs.iter().map(move |&x| sums[y as usize * w + x as usize]))
            .collect()
    })
}

/// The preview of a film over `region`, whose sums at the rows and columns asked for (row
/// major) `gather` returns.
fn preview_with(
    region: Region,
    counts: &[u32],
    max_edge: u32,
    gather: impl FnOnce(&[u32], &[u32]) -> Vec<[i128; 3]>,
) -> Preview {
    let (w, h) = (region.width(), region.height());
    let scale = (w.max(h) as f64 / max_edge.max(1) as f64).max(1.0);
    let pw = ((w as f64 / scale).round() as u32).clamp(1, w.max(1));
    let ph = ((h as f64 / scale).round() as u32).clamp(1, h.max(1));
    let one = 1.0 / (1u64 << rayfarm_render::film::FIXED_FRAC_BITS) as f64;
    // An empty region has no pixel to sample: the preview stays black.
    let (ys, xs): (Vec<u32>, Vec<u32>) = if w == 0 || h == 0 {
        (Vec::new(), Vec::new())
    } else {
        (
            (0..ph)
                .map(|py| ((py as u64 * h as u64) / ph as u64) as u32)
                .collect(),
            (0..pw)
                .map(|px| ((px as u64 * w as u64) / pw as u64) as u32)
                .collect(),
        )
    };
    let sums = gather(&ys, &xs);
    let mut rgb = Vec::with_capacity(pw as usize * ph as usize);
    for py in 0..ph as usize {
        for px in 0..pw as usize {
            let i = match (ys.get(py), xs.get(px)) {
                (Some(&y), Some(&x)) => Some(y as usize * w as usize + x as usize),
                _ => None,
            };
            let n = i.and_then(|i| counts.get(i)).copied().unwrap_or(0);
            rgb.push(match sums.get(py * xs.len() + px) {
                Some(s) if n > 0 => s.map(|v| (v as f64 * one / n as f64) as f32),
                _ => [0.0; 3],
            });
        }
    }
    Preview {
        width: pw,
        height: ph,
        rgb,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn unit(s: u32) -> WorkUnit {
        WorkUnit {
            layer: 0,
            sample_start: s,
            sample_end: s + 1,
            x0: 0,
            y0: 0,
            x1: 1,
            y1: 1,
        }
    }
    fn result(u: WorkUnit) -> UnitResult {
        UnitResult {
            unit: u,
            sums: vec![[1, 1, 1]],
            nonfinite_samples: 0,
        }
    }

    /// Joined units: a node gets consecutive sample ranges of one tile as one unit; lost or
    /// given back, the planned parts return to the queue; completed, each part counts as done
    /// and the film holds the same sums as from the parts one by one.
    #[test]
    fn joined_units_cover_their_parts_exactly() {
        let units: Vec<WorkUnit> = (0..6).map(unit).collect();
        let mut s = Scheduler::new(vec![Region::full(1, 1)], units);
        let (a, b) = (s.add_node("a".into(), 1), s.add_node("b".into(), 1));
        let j = s.take_joined(a, 3).unwrap();
        assert_eq!((j.sample_start, j.sample_end), (0, 3));
        s.node_lost(a);
        let j = s.take_joined(b, 4).unwrap();
        assert_eq!((j.sample_start, j.sample_end), (0, 4));
        s.give_back(b, j);
        let j = s.take_joined(b, 8).unwrap();
        assert_eq!((j.sample_start, j.sample_end), (0, 6));
        // A result for a part alone is not this node's unit.
        assert!(!s.complete(b, result(unit(0))));
        let r = UnitResult {
            unit: j,
            sums: vec![[6, 6, 6]],
            nonfinite_samples: 0,
        };
        assert!(s.complete(b, r));
        assert!(s.finished());
        assert_eq!(s.status(0).samples_done, 6);
        let (_, film) = s.take_finished().pop().unwrap();
        assert_eq!(film.to_rgb(1)[0][0], 6.0 / (1u64 << 24) as f32);
    }

    /// Many units pending per thread: joined; few: one at a time; a live view: one.
    #[test]
    fn join_limit_follows_the_queue() {
        let units: Vec<WorkUnit> = (0..200).map(unit).collect();
        let mut s = Scheduler::new(vec![Region::full(1, 1)], units);
        s.add_node("a".into(), 2);
        assert_eq!(s.join_limit(), MAX_JOINED_UNITS);
        s.add_node("b".into(), 8);
        assert_eq!(s.join_limit(), 2);
        s.track_progress();
        assert_eq!(s.join_limit(), 1);
    }

    /// The attack (a worker holding the key): take every unit, then send only heartbeats. Or
    /// an honest worker whose render thread hangs. Once nothing is pending, units out too long
    /// go to another node too, and whichever result comes first counts, once.
    #[test]
    fn stale_units_go_to_another_node_and_the_first_result_counts() {
        let units: Vec<WorkUnit> = (0..3).map(unit).collect();
        let mut s = Scheduler::new(vec![Region::full(1, 1)], units);
        let (a, b) = (s.add_node("a".into(), 1), s.add_node("b".into(), 1));
        let held: Vec<WorkUnit> = (0..3).map(|_| s.take_joined(a, 1).unwrap()).collect();
        let now = Instant::now();
        assert_eq!(s.reclaim_stale(now), 0, "fresh units are not stale");
        assert_eq!(s.stale_after(), STALE_MIN);
        let later = now + STALE_MIN + std::time::Duration::from_secs(1);
        assert_eq!(s.reclaim_stale(later), 3);
        assert_eq!(s.reclaim_stale(later), 0, "waiting for another node");
        assert_eq!(
            s.take(a),
            None,
            "its own stale units do not go back to the holder"
        );
        let again: Vec<WorkUnit> = (0..3).map(|_| s.take(b).unwrap()).collect();
        assert_eq!(again, held, "the same units, whole, in order");
        // b answers first for unit 0; a's late result is then refused.
        assert!(s.complete(b, result(held[0])));
        assert!(!s.complete(a, result(held[0])));
        // a answers first for unit 1; b's is then refused.
        assert!(s.complete(a, result(held[1])));
        assert!(!s.complete(b, result(held[1])));
        // b is lost while it holds unit 2: it waits for another node, and a may still answer.
        s.node_lost(b);
        assert!(s.complete(a, result(held[2])));
        assert!(s.finished());
        assert_eq!(s.status(0).samples_done, 3);
        let (_, film) = s.take_finished().pop().unwrap();
        assert_eq!(film.sums(), &[[3, 3, 3]], "every unit counted once");
    }

    /// Two workers holding the key take units and never return them. The unit goes from the
    /// first to the second, then on to a third node; a node is never handed a unit it was
    /// relieved of, and once every connected node has held it, it waits.
    #[test]
    fn a_unit_whose_second_holder_stalls_too_goes_on_to_a_third() {
        let mut s = Scheduler::new(vec![Region::full(1, 1)], vec![unit(0)]);
        let (a, b) = (s.add_node("a".into(), 1), s.add_node("b".into(), 1));
        let u = s.take(a).unwrap();
        let t0 = Instant::now();
        let step = STALE_MIN + std::time::Duration::from_secs(1);
        assert_eq!(s.reclaim_stale(t0 + step), 1);
        assert_eq!(s.take(b), Some(u));
        // b stalls too, and nobody else is connected: it stays with b.
        let t1 = Instant::now() + step;
        assert_eq!(s.reclaim_stale(t1), 0, "no node has not held it");
        let c = s.add_node("c".into(), 1);
        assert_eq!(s.reclaim_stale(t1), 1, "c has not held it");
        assert_eq!(s.take(a), None, "a was relieved of it");
        assert_eq!(s.take(b), None, "b was relieved of it");
        assert_eq!(s.take(c), Some(u));
        assert_eq!(
            s.reclaim_stale(Instant::now() + step),
            0,
            "every connected node has held it"
        );
        // Any holder's result counts, once: here the first holder answers at last.
        assert!(s.complete(a, result(u)));
        assert!(!s.complete(c, result(u)));
        assert!(!s.complete(b, result(u)));
        assert!(s.finished());
        let (_, film) = s.take_finished().pop().unwrap();
        assert_eq!(film.sums(), &[[1, 1, 1]]);
    }

    /// A stale unit whose former holders are all lost before anyone took it again is an
    /// ordinary unit: any node, even one that never saw it, takes it from the queue.
    #[test]
    fn a_stale_unit_whose_holders_are_all_lost_is_an_ordinary_unit() {
        let mut s = Scheduler::new(vec![Region::full(1, 1)], vec![unit(0)]);
        let (a, b, c) = (
            s.add_node("a".into(), 1),
            s.add_node("b".into(), 1),
            s.add_node("c".into(), 1),
        );
        let u = s.take(a).unwrap();
        let step = STALE_MIN + std::time::Duration::from_secs(1);
        assert_eq!(s.reclaim_stale(Instant::now() + step), 1);
        assert_eq!(s.take(b), Some(u));
        assert_eq!(s.reclaim_stale(Instant::now() + step), 1);
        s.node_lost(a);
        s.node_lost(b);
        assert!(!s.complete(b, result(u)), "b is gone");
        assert_eq!(s.take(c), Some(u));
        assert!(s.complete(c, result(u)));
        assert!(s.finished());
    }

    /// Nothing is reclaimed while units are pending (the holder is just busy), nor with one
    /// node only (nobody else could take them); a stale unit whose holder is lost before
    /// another node took it is an ordinary unit again.
    #[test]
    fn stale_units_wait_for_an_empty_queue_and_another_node() {
        let late = Instant::now() + STALE_MIN * 2;
        let mut s = Scheduler::new(vec![Region::full(1, 1)], (0..2).map(unit).collect());
        let a = s.add_node("a".into(), 1);
        let u0 = s.take(a).unwrap();
        let b = s.add_node("b".into(), 1);
        assert_eq!(s.reclaim_stale(late), 0, "a unit is still pending");
        let u1 = s.take(b).unwrap();
        s.node_lost(b);
        assert_eq!(s.take(a), Some(u1));
        assert_eq!(s.reclaim_stale(late), 0, "one connected node");
        let c = s.add_node("c".into(), 1);
        assert_eq!(s.reclaim_stale(late), 2);
        s.node_lost(a);
        // Both are ordinary units again: c takes them, and a's late results are refused.
        assert_eq!(s.take(c), Some(u0));
        assert_eq!(s.take(c), Some(u1));
        assert!(!s.complete(a, result(u0)));
        assert!(s.complete(c, result(u0)) && s.complete(c, result(u1)));
        assert!(s.finished());
    }

    #[test]
    fn lost_units_are_requeued_and_late_results_ignored() {
        let mut s = Scheduler::new(vec![Region::full(1, 1)], vec![unit(0), unit(1)]);
        let a = s.add_node("a".into(), 1);
        let b = s.add_node("b".into(), 1);
        let u0 = s.take(a).unwrap();
        s.node_lost(a);
        let again = s.take(b).unwrap();
        assert_eq!(u0, again);
        assert!(
            !s.complete(a, result(u0)),
            "late result from a lost node counts"
        );
        assert!(s.complete(b, result(u0)));
        assert!(!s.complete(b, result(u0)), "a unit counted twice");
        let u1 = s.take(b).unwrap();
        s.give_back(b, u1);
        let u1 = s.take(a).unwrap();
        assert!(s.take_finished().is_empty(), "layer handed out early");
        assert!(s.complete(a, result(u1)));
        assert!(s.finished());
        let f = s.take_finished();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].1.sums(), &[[2, 2, 2]]);
    }

    fn tile(s0: u32, s1: u32, x0: u32, x1: u32) -> WorkUnit {
        WorkUnit {
            layer: 0,
            sample_start: s0,
            sample_end: s1,
            x0,
            y0: 0,
            x1,
            y1: 1,
        }
    }

    /// `node` takes the next unit and returns every pixel of it as `sum`.
    fn take_and_complete(s: &mut Scheduler, node: NodeId, sum: [i128; 3]) {
        let unit = s.take(node).unwrap();
        let result = UnitResult {
            unit,
            sums: vec![sum; unit.pixels()],
            nonfinite_samples: 0,
        };
        assert!(s.complete(node, result), "{unit:?} refused");
    }

    #[test]
    fn a_preview_divides_each_pixel_by_its_own_samples_and_names_who_rendered_what() {
        let one = 1i128 << rayfarm_render::film::FIXED_FRAC_BITS;
        let units = vec![tile(0, 1, 0, 4), tile(1, 3, 0, 2), tile(1, 3, 2, 4)];
        let mut s = Scheduler::new(vec![Region::full(4, 1)], units.clone());
        let a = s.add_node("a".into(), 1);
        // Without a live view nothing is tracked.
        take_and_complete(&mut s, a, [one, 0, 0]);
        assert!(
            s.preview(0, 64).is_none() && s.owners(0).is_empty(),
            "tracked without a view"
        );
        let mut s = Scheduler::new(vec![Region::full(4, 1)], units);
        s.track_progress();
        let a = s.add_node("a".into(), 1);
        let b = s.add_node("b".into(), 1);
        assert!(s.preview(0, 64).is_none(), "a preview before any result");
        take_and_complete(&mut s, a, [one, 0, 0]);
        // Two more samples of value 4 on the left half: (1 + 8) / 3 = 3.
        take_and_complete(&mut s, b, [8 * one, 0, 0]);
        let p = s.preview(0, 64).unwrap();
        assert_eq!((p.width, p.height), (4, 1));
        assert_eq!(
            p.rgb.iter().map(|c| c[0]).collect::<Vec<_>>(),
            vec![3.0, 3.0, 1.0, 1.0]
        );
        let owners = s.owners(0);
        let spans = |o: &[RegionOwner]| -> Vec<(u32, u32, String)> {
            o.iter().map(|r| (r.x0, r.x1, r.node.clone())).collect()
        };
        // The early pass's big tile gives way to the later pass's smaller one.
        assert_eq!(spans(&owners), vec![(0, 2, "b".to_string())]);
        // Scaled down: at most 2 pixels a side.
        assert_eq!(s.preview(0, 2).unwrap().width, 2);
        take_and_complete(&mut s, a, [one, 0, 0]);
        assert_eq!(
            spans(&s.owners(0)),
            vec![(0, 2, "b".to_string()), (2, 4, "a".to_string())]
        );
    }

    /// A (pixel, sample)'s fixed-point value in a test job: any function of them will do.
    fn sample_value(layer: u32, x: u32, y: u32, s: u32) -> [i128; 3] {
        let h = rayfarm_render::sampler::mix64(
            (u64::from(layer) << 48) ^ (u64::from(y) << 32) ^ (u64::from(x) << 16) ^ u64::from(s),
        );
        let v = (h >> 30) as i128 - (1 << 33);
        [v, v / 5, -(v % 100_000)]
    }

    /// What a node renders for `u`: each pixel's sum over the unit's samples.
    fn render(u: WorkUnit) -> UnitResult {
        let mut sums = Vec::with_capacity(u.pixels());
        for y in u.y0..u.y1 {
            for x in u.x0..u.x1 {
                let mut sum = [0i128; 3];
                for s in u.sample_start..u.sample_end {
                    let v = sample_value(u.layer, x, y, s);
                    for c in 0..3 {
                        sum[c] += v[c];
                    }
                }
                sums.push(sum);
            }
        }
        UnitResult {
            unit: u,
            sums,
            // Additive, as the sums are: a joined unit has its parts' total.
            nonfinite_samples: u64::from(u.sample_end - u.sample_start),
        }
    }

    /// A job of two layers whose units cross the film's bands.
    fn two_layer_job() -> (Vec<Region>, Vec<WorkUnit>) {
        let layers = vec![Region::full(29, 23), Region::full(12, 40)];
        let mut units = rayfarm_render::film::plan_region(0, layers[0], 24, 6, 3);
        units.extend(rayfarm_render::film::plan_region(1, layers[1], 10, 9, 2));
        (layers, units)
    }

    fn finished_films(s: &mut Scheduler) -> BTreeMap<usize, (Vec<[i128; 3]>, u64)> {
        s.take_finished()
            .into_iter()
            .map(|(l, f)| (l, (f.sums().to_vec(), f.nonfinite_samples)))
            .collect()
    }

    /// Issue 15 (a merge on every core): results merged from many threads at once, with
    /// joined units, units given back, duplicates and a node lost on the way, give the same
    /// film bytes as one thread completing every unit in order.
    #[test]
    fn results_merged_from_many_threads_give_the_bytes_of_a_sequential_merge() {
        let (layers, units) = two_layer_job();
        let mut sequential = Scheduler::new(layers.clone(), units.clone());
        let node = sequential.add_node("one".into(), 1);
        while let Some(u) = sequential.take(node) {
            assert!(sequential.complete(node, render(u)));
        }
        assert!(sequential.finished());
        let expected = finished_films(&mut sequential);
        assert_eq!(expected.len(), 2);

        let sched = Mutex::new(Scheduler::new(layers, units));
        let lock = || sched.lock().unwrap();
        let finished = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for t in 0..4u32 {
                let (sched, finished) = (&sched, &finished);
                let lock = move || sched.lock().unwrap();
                scope.spawn(move || {
                    let mut node = lock().add_node(format!("t{t}"), 1);
                    let mut i = 0u32;
                    loop {
                        i += 1;
                        let taken = {
                            let mut s = lock();
                            if s.finished() {
                                break;
                            }
                            s.take_joined(node, 1 + (i % 3) as usize)
                        };
                        let Some(u) = taken else {
                            std::thread::yield_now();
                            continue;
                        };
                        if i % 11 == t {
                            lock().give_back(node, u);
                            continue;
                        }
                        if t == 3 && i == 20 {
                            // This node is lost with the unit; a new one takes its place.
                            lock().node_lost(node);
                            assert!(!merge(sched, node, &render(u)), "a lost node's result");
                            node = lock().add_node("t3 again".into(), 1);
                            continue;
                        }
                        let r = render(u);
                        assert!(merge(sched, node, &r), "{u:?} refused");
                        assert!(!merge(sched, node, &r), "{u:?} merged twice");
                        finished.lock().unwrap().extend(lock().take_finished());
                    }
                });
            }
        });
        assert!(lock().finished());
        assert_eq!(lock().in_flight(), 0);
        let status = lock().status(0);
        assert_eq!(status.samples_done, status.samples_total);
        let mut got = finished_films(&mut lock());
        got.extend(
            finished
                .into_inner()
                .unwrap()
                .into_iter()
                .map(|(l, f)| (l, (f.sums().to_vec(), f.nonfinite_samples))),
        );
        assert_eq!(got, expected);
    }

    /// A result being added into the film is not requeued when its node is lost nor accepted a
    /// second time, and a malformed or abandoned one sends its unit back to the queue.
    #[test]
    fn a_result_being_merged_is_counted_once() {
        let mut s = Scheduler::new(vec![Region::full(1, 1)], vec![unit(0)]);
        let (a, b) = (s.add_node("a".into(), 1), s.add_node("b".into(), 1));
        let u = s.take(a).unwrap();
        let r = result(u);
        let accepted = s.accept(a, &r).unwrap();
        assert!(s.accept(a, &r).is_none(), "accepted twice");
        s.node_lost(a);
        assert!(s.take(b).is_none(), "a unit being merged was requeued");
        assert!(!s.complete(b, result(u)));
        assert!(!s.finished(), "finished before the add returned");
        accepted.add(&r).unwrap();
        s.merged(accepted);
        assert!(s.finished());
        assert_eq!(s.take_finished()[0].1.sums(), &[[1, 1, 1]]);
        assert_eq!(s.status(0).samples_done, 1);

        let mut s = Scheduler::new(vec![Region::full(1, 1)], vec![unit(0)]);
        let a = s.add_node("a".into(), 1);
        let u = s.take(a).unwrap();
        let malformed = UnitResult {
            sums: vec![[1, 1, 1]; 2],
            ..result(u)
        };
        assert!(!s.complete(a, malformed));
        assert_eq!(
            s.take(a),
            Some(u),
            "a malformed result's unit was not requeued"
        );
        let accepted = s.accept(a, &result(u)).unwrap();
        s.abandon(accepted);
        assert_eq!(s.take(a), Some(u), "an abandoned unit was not requeued");
        assert!(s.complete(a, result(u)));
        assert_eq!(s.take_finished()[0].1.sums(), &[[1, 1, 1]]);
    }

    /// A layer is handed out only once the add of its last accepted result has returned, even
    /// when that result was accepted before another that finished first.
    #[test]
    fn a_layer_finishes_only_after_its_last_add() {
        let mut s = Scheduler::new(vec![Region::full(1, 1)], vec![unit(0), unit(1)]);
        let (a, b) = (s.add_node("a".into(), 1), s.add_node("b".into(), 1));
        let (ua, ub) = (s.take(a).unwrap(), s.take(b).unwrap());
        let (ra, rb) = (result(ua), result(ub));
        let slow = s.accept(a, &ra).unwrap();
        let fast = s.accept(b, &rb).unwrap();
        fast.add(&rb).unwrap();
        s.merged(fast);
        slow.add(&ra).unwrap();
        assert!(
            s.take_finished().is_empty(),
            "handed out before its last merge"
        );
        assert!(!s.finished());
        s.merged(slow);
        assert!(s.finished());
        let f = s.take_finished();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].1.sums(), &[[2, 2, 2]]);
    }

    #[test]
    fn a_stopped_job_hands_out_nothing_more_and_keeps_what_is_done() {
        let units = vec![tile(0, 1, 0, 4), tile(1, 2, 0, 4)];
        let mut s = Scheduler::new(vec![Region::full(4, 1)], units);
        s.track_progress();
        let a = s.add_node("a".into(), 1);
        let u = s.take(a).unwrap();
        s.stop();
        assert!(s.take(a).is_none(), "a stopped job handed out a unit");
        assert!(!s.finished(), "finished with a unit in flight");
        assert!(s.complete(
            a,
            UnitResult {
                unit: u,
                sums: vec![[1, 1, 1]; 4],
                nonfinite_samples: 0
            }
        ));
        assert!(s.finished());
        let left = s.take_unfinished();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].2, vec![1; 4], "each pixel's sample count");
    }

    #[test]
    fn nothing_is_handed_out_until_enough_workers_joined() {
        let mut s = four_sample_ranges();
        s.wait_for_nodes(2, None);
        let local = s.add_node(LOCAL_NODE.into(), 2);
        let a = s.add_node("a (10.0.0.1:1)".into(), 1);
        assert_eq!(s.take(local), None, "the master's cores wait too");
        assert_eq!(s.take_joined(a, 4), None);
        assert_eq!(s.waiting_for_nodes(), Some((1, 2)));
        let b = s.add_node("b (10.0.0.2:1)".into(), 1);
        assert_eq!(s.waiting_for_nodes(), None);
        assert!(s.take(b).is_some());
        s.node_lost(a);
        assert!(
            s.take(local).is_some(),
            "a node leaving later holds nothing back"
        );
    }

    /// A scheduler over one 4x4 tile in four sample ranges.
    fn four_sample_ranges() -> Scheduler {
        let units = (0..4u32)
            .map(|i| WorkUnit {
                layer: 0,
                x0: 0,
                y0: 0,
                x1: 4,
                y1: 4,
                sample_start: i * 4,
                sample_end: i * 4 + 4,
            })
            .collect();
        Scheduler::new(vec![Region::full(4, 4)], units)
    }

    #[test]
    fn a_wait_that_times_out_renders_with_the_nodes_there_are() {
        let mut s = four_sample_ranges();
        let start = Instant::now();
        let deadline = start + std::time::Duration::from_secs(10);
        s.wait_for_nodes(3, Some(deadline));
        let local = s.add_node(LOCAL_NODE.into(), 2);
        let a = s.add_node("a (10.0.0.1:1)".into(), 1);
        assert_eq!(s.wait_expired(start), None, "before the deadline");
        assert_eq!(s.take(a), None);
        assert_eq!(s.wait_expired(deadline), Some((1, 3)));
        assert!(s.take(a).is_some() && s.take(local).is_some());
        assert_eq!(s.waiting_for_nodes(), None);
        assert_eq!(s.wait_expired(deadline), None, "nothing was held any more");
    }
}
