//! Which unit goes where: the master's bookkeeping, behind one mutex.
//!
//! Units wait in `pending` (ordered, so hand-out order is deterministic), move to `in_flight`
//! with the node that has them, and end in `done` once their result is in the film. Only the
//! node that holds a unit can complete it, so a late result from a node given up is ignored,
//! and no sample is counted twice.
//!
//! A job has layers (one for a render; one per map and pass for a bake), each with its own
//! film. A layer's film is made when its first result arrives and handed out through
//! [`Scheduler::take_finished`] when its last one is in, so a bake of many maps holds only
//! the few layers in progress in memory.

use crate::{NodeShare, Status};
use rayfarm_render::film::Region;
use rayfarm_render::{Film, UnitResult, WorkUnit};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

pub type NodeId = usize;

struct Node {
    name: String,
    threads: u32,
    samples: u64,
    connected: bool,
}

pub struct Scheduler {
    pending: BTreeSet<WorkUnit>,
    in_flight: HashMap<WorkUnit, NodeId>,
    done: HashSet<WorkUnit>,
    total_units: usize,
    samples_total: u64,
    samples_done: u64,
    nodes: Vec<Node>,
    /// Each layer's region.
    layers: Vec<Region>,
    /// Units of each layer not yet done.
    layer_left: Vec<usize>,
    films: BTreeMap<u32, Film>,
    finished_layers: Vec<(usize, Film)>,
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
            done: HashSet::new(),
            samples_total,
            samples_done: 0,
            nodes: Vec::new(),
            layers,
            layer_left,
            films: BTreeMap::new(),
            finished_layers: Vec::new(),
        }
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
        self.nodes.len() - 1
    }

    /// The next unit for `node`, if any is waiting.
    pub fn take(&mut self, node: NodeId) -> Option<WorkUnit> {
        let u = self.pending.pop_first()?;
        self.in_flight.insert(u, node);
        Some(u)
    }

    /// Adds a result if `node` holds the unit; returns whether it was accepted.
    pub fn complete(&mut self, node: NodeId, r: UnitResult) -> bool {
        if self.in_flight.get(&r.unit) != Some(&node) {
            return false;
        }
        let layer = r.unit.layer;
        let Some(&region) = self.layers.get(layer as usize) else {
            return false;
        };
        let film = self
            .films
            .entry(layer)
            .or_insert_with(|| Film::new_region(region));
        if film.add(&r).is_err() {
            // A malformed result: the unit goes back to the queue.
            self.in_flight.remove(&r.unit);
            self.pending.insert(r.unit);
            return false;
        }
        self.in_flight.remove(&r.unit);
        let left = &mut self.layer_left[layer as usize];
        *left -= 1;
        if *left == 0 {
            if let Some(f) = self.films.remove(&layer) {
                self.finished_layers.push((layer as usize, f));
            }
        }
        self.done.insert(r.unit);
        let s = r.unit.samples();
        self.samples_done += s;
        if let Some(n) = self.nodes.get_mut(node) {
            n.samples += s;
        }
        true
    }

    /// `node` returns a unit unrendered.
    pub fn give_back(&mut self, node: NodeId, unit: WorkUnit) {
        if self.in_flight.get(&unit) == Some(&node) {
            self.in_flight.remove(&unit);
            self.pending.insert(unit);
        }
    }

    /// `node` is gone: everything it held goes back to the queue.
    pub fn node_lost(&mut self, node: NodeId) {
        let lost: Vec<WorkUnit> = self
            .in_flight
            .iter()
            .filter(|(_, &n)| n == node)
            .map(|(&u, _)| u)
            .collect();
        for u in lost {
            self.in_flight.remove(&u);
            self.pending.insert(u);
        }
        if let Some(n) = self.nodes.get_mut(node) {
            n.connected = false;
        }
    }

    pub fn finished(&self) -> bool {
        self.done.len() == self.total_units
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

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(s: u32) -> WorkUnit {
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
}
