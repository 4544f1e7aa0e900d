//! Which unit goes where: the master's bookkeeping, behind one mutex.
//!
//! Units wait in `pending` (ordered, so hand-out order is deterministic), move to `in_flight`
//! with the node that has them, and end in `done` once their result is in the film. Only the
//! node that holds a unit can complete it, so a late result from a node given up is ignored,
//! and no sample is counted twice.

use crate::{NodeShare, Status};
use rayfarm_render::{Film, UnitResult, WorkUnit};
use std::collections::{BTreeSet, HashMap, HashSet};

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
    pub film: Film,
}

impl Scheduler {
    pub fn new(width: u32, height: u32, units: Vec<WorkUnit>) -> Scheduler {
        let samples_total = units.iter().map(|u| u.samples()).sum();
        let pending: BTreeSet<WorkUnit> = units.into_iter().collect();
        Scheduler {
            total_units: pending.len(),
            pending,
            in_flight: HashMap::new(),
            done: HashSet::new(),
            samples_total,
            samples_done: 0,
            nodes: Vec::new(),
            film: Film::new(width, height),
        }
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
        if self.film.add(&r).is_err() {
            // A malformed result: the unit goes back to the queue.
            self.in_flight.remove(&r.unit);
            self.pending.insert(r.unit);
            return false;
        }
        self.in_flight.remove(&r.unit);
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
        let mut s = Scheduler::new(1, 1, vec![unit(0), unit(1)]);
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
        assert!(s.complete(a, result(u1)));
        assert!(s.finished());
    }
}
