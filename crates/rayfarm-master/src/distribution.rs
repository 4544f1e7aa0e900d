//! Who sends a scene to whom: the master's plan for node-to-node scene distribution.
//!
//! A master that shipped the compiled scene to every worker itself would be ready for the
//! last of N workers only after N x size / link rate. Instead the scene spreads down a tree:
//! the master sends it to its first `fanout` workers, and every worker that serves peers
//! relays each chunk, verified against the master's chunk hashes, to at most `fanout`
//! later ones as soon as it has it. The last of N workers is then ready after about
//! `fanout x size / rate + depth x chunk time`, and the master's uplink carries the scene
//! about `fanout` times whatever N is.
//!
//! This module owns the decision only (no IO): which source a worker that needs the scene is
//! told to fetch from. A worker whose source fails or stalls fetches the rest from the
//! master itself (see PROTOCOL.md, `NeedChunks`), so a lost relay costs time, never the render.
//!
//! Architecture invariant: the tree changes only where a scene comes from, never its bytes:
//! every chunk is checked against the hash the master sent, and the whole blob against the
//! scene's content hash, before a worker uses or relays it.

use std::collections::HashMap;
use std::net::SocketAddr;

/// How many nodes each node (the master included) sends the scene to, unless configured.
/// Two keeps the tree's depth at log2(N) while each uplink carries the scene twice.
pub const DEFAULT_SCENE_FANOUT: u32 = 2;

/// Identifies one worker's session for the distribution plan (any unique number).
pub type PeerId = u64;

/// A fresh [`PeerId`], unique in this process.
pub fn next_peer_id() -> PeerId {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Where a worker gets the scene from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The master sends it over the worker's own connection.
    Master,
    /// Another worker relays it; `parent` is that worker's id in the plan.
    Peer { parent: PeerId, addr: SocketAddr },
}

#[derive(Clone, Debug)]
struct Holder {
    id: PeerId,
    /// Where it serves peers; `None` when it does not.
    addr: Option<SocketAddr>,
    children: u32,
    feed: Feed,
}

/// Where a holder gets the scene from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feed {
    Master,
    Peer(PeerId),
    /// It had the whole scene already (its cache).
    Own,
}

/// The distribution tree of one scene.
#[derive(Clone, Debug)]
pub struct SceneTree {
    fanout: u32,
    master_children: u32,
    /// Workers that hold or are receiving the scene, in the order they joined.
    holders: Vec<Holder>,
}

impl SceneTree {
    /// `fanout` 0 means "the master sends to everyone" (no relaying).
    pub fn new(fanout: u32) -> SceneTree {
        SceneTree {
            fanout,
            master_children: 0,
            holders: Vec::new(),
        }
    }

    /// A worker that needs the scene: the source it should fetch from. It becomes a holder
    /// itself (serving from `serve_addr`, if any) as it receives the scene.
    pub fn join(&mut self, id: PeerId, serve_addr: Option<SocketAddr>) -> Source {
        self.leave(id);
        let source = if self.fanout == 0 || self.master_children < self.fanout {
            None
        } else {
            // Breadth first: the earliest holder with room, so the tree stays shallow.
            self.holders
                .iter_mut()
                .find(|h| h.addr.is_some() && h.children < self.fanout)
        };
        let (source, feed) = match source {
            Some(h) => {
                h.children += 1;
                let addr = h.addr.expect("filtered on addr");
                (Source::Peer { parent: h.id, addr }, Feed::Peer(h.id))
            }
            None => {
                self.master_children += 1;
                (Source::Master, Feed::Master)
            }
        };
        self.holders.push(Holder {
            id,
            addr: serve_addr,
            children: 0,
            feed,
        });
        source
    }

    /// A worker that already holds the whole scene (from its cache) and can serve it.
    pub fn join_complete(&mut self, id: PeerId, serve_addr: Option<SocketAddr>) {
        self.leave(id);
        if serve_addr.is_some() {
            // Ahead of the receiving holders: it can serve at full speed at once.
            let at = self
                .holders
                .iter()
                .position(|h| h.feed != Feed::Own)
                .unwrap_or(self.holders.len());
            self.holders.insert(
                at,
                Holder {
                    id,
                    addr: serve_addr,
                    children: 0,
                    feed: Feed::Own,
                },
            );
        }
    }

    /// A worker left, or its relay failed and it now fetches from the master: it is no longer
    /// a source, and its slot at its own source is free again.
    pub fn leave(&mut self, id: PeerId) {
        let Some(i) = self.holders.iter().position(|h| h.id == id) else {
            return;
        };
        let gone = self.holders.remove(i);
        self.release_slot(gone.feed);
    }

    /// `id`'s relay failed: it now receives the rest from the master (and still serves its
    /// own children from what it has and gets).
    pub fn fell_back(&mut self, id: PeerId) {
        let Some(h) = self.holders.iter_mut().find(|h| h.id == id) else {
            return;
        };
        if h.feed == Feed::Master {
            return;
        }
        let old = std::mem::replace(&mut h.feed, Feed::Master);
        self.master_children += 1;
        self.release_slot(old);
    }

    fn release_slot(&mut self, feed: Feed) {
        match feed {
            Feed::Peer(p) => {
                if let Some(h) = self.holders.iter_mut().find(|h| h.id == p) {
                    h.children = h.children.saturating_sub(1);
                }
            }
            Feed::Master => self.master_children = self.master_children.saturating_sub(1),
            Feed::Own => {}
        }
    }

    /// How many holders the master sends the scene to itself now (first sources and
    /// fallbacks).
    pub fn master_children(&self) -> u32 {
        self.master_children
    }

    /// The depth of the deepest holder below the master (1 = fed by the master).
    pub fn depth(&self) -> usize {
        let feed_of: HashMap<PeerId, Feed> = self.holders.iter().map(|h| (h.id, h.feed)).collect();
        self.holders
            .iter()
            .map(|h| {
                let mut d = 1;
                let mut f = h.feed;
                while let Feed::Peer(id) = f {
                    d += 1;
                    f = feed_of.get(&id).copied().unwrap_or(Feed::Master);
                    if d > self.holders.len() {
                        break;
                    }
                }
                d
            })
            .max()
            .unwrap_or(0)
    }
}

/// The trees of every scene a master or manager distributes (a manager runs several jobs).
#[derive(Debug, Default)]
pub struct Distribution {
    fanout: u32,
    trees: HashMap<[u8; 32], SceneTree>,
}

impl Distribution {
    pub fn new(fanout: u32) -> Distribution {
        Distribution {
            fanout,
            trees: HashMap::new(),
        }
    }

    fn tree(&mut self, scene: [u8; 32]) -> &mut SceneTree {
        let fanout = self.fanout;
        self.trees
            .entry(scene)
            .or_insert_with(|| SceneTree::new(fanout))
    }

    /// See [`SceneTree::join`]. A worker holds one scene at a time: it leaves every other tree.
    pub fn join(&mut self, scene: [u8; 32], id: PeerId, serve: Option<SocketAddr>) -> Source {
        self.leave_others(scene, id);
        self.tree(scene).join(id, serve)
    }

    /// See [`SceneTree::join_complete`].
    pub fn join_complete(&mut self, scene: [u8; 32], id: PeerId, serve: Option<SocketAddr>) {
        self.leave_others(scene, id);
        self.tree(scene).join_complete(id, serve)
    }

    pub fn fell_back(&mut self, scene: [u8; 32], id: PeerId) {
        self.tree(scene).fell_back(id)
    }

    /// The worker's session ended.
    pub fn leave(&mut self, id: PeerId) {
        for t in self.trees.values_mut() {
            t.leave(id);
        }
    }

    fn leave_others(&mut self, scene: [u8; 32], id: PeerId) {
        for (h, t) in self.trees.iter_mut() {
            if *h != scene {
                t.leave(id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u64) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], 30000 + i as u16)))
    }

    fn parent(s: Source) -> Option<PeerId> {
        match s {
            Source::Master => None,
            Source::Peer { parent, .. } => Some(parent),
        }
    }

    #[test]
    fn fanout_two_builds_a_binary_tree_of_log_depth() {
        let mut t = SceneTree::new(2);
        let parents: Vec<_> = (0..7).map(|i| parent(t.join(i, addr(i)))).collect();
        assert_eq!(
            parents,
            vec![None, None, Some(0), Some(0), Some(1), Some(1), Some(2)]
        );
        assert_eq!(t.master_children(), 2);
        for i in 7..256 {
            t.join(i, addr(i));
        }
        assert_eq!(
            t.master_children(),
            2,
            "the master's uplink does not grow with N"
        );
        assert!(t.depth() <= 8, "depth {}", t.depth());
    }

    #[test]
    fn fanout_zero_is_the_master_sending_to_everyone() {
        let mut t = SceneTree::new(0);
        for i in 0..5 {
            assert_eq!(t.join(i, addr(i)), Source::Master);
        }
        assert_eq!(t.master_children(), 5);
    }

    #[test]
    fn workers_that_do_not_serve_are_never_sources() {
        let mut t = SceneTree::new(1);
        assert_eq!(t.join(0, None), Source::Master);
        // The master has no room and nobody serves: the master sends it anyway.
        assert_eq!(t.join(1, None), Source::Master);
        assert_eq!(parent(t.join(2, addr(2))), None);
        assert_eq!(parent(t.join(3, addr(3))), Some(2));
    }

    #[test]
    fn a_lost_relay_frees_its_slot_and_is_no_longer_chosen() {
        let mut t = SceneTree::new(1);
        t.join(0, addr(0));
        assert_eq!(parent(t.join(1, addr(1))), Some(0));
        t.leave(0);
        // 1 was fed by 0; it falls back to the master and serves on.
        t.fell_back(1);
        assert_eq!(t.master_children(), 1);
        assert_eq!(parent(t.join(2, addr(2))), Some(1));
        // A fallback frees the slot at the failed parent.
        t.fell_back(2);
        assert_eq!(parent(t.join(3, addr(3))), Some(1));
    }

    #[test]
    fn cached_workers_serve_first() {
        let mut t = SceneTree::new(1);
        assert_eq!(t.join(0, addr(0)), Source::Master);
        t.join_complete(9, addr(9));
        assert_eq!(parent(t.join(1, addr(1))), Some(9));
        assert_eq!(parent(t.join(2, addr(2))), Some(0));
    }

    #[test]
    fn a_worker_holds_one_scene_at_a_time() {
        let mut d = Distribution::new(1);
        let (a, b) = ([1; 32], [2; 32]);
        d.join(a, 0, addr(0));
        d.join(b, 0, addr(0));
        // 0 moved to scene b: a newcomer for a is sent by the master, not by 0.
        assert_eq!(d.join(a, 1, addr(1)), Source::Master);
        assert_eq!(parent(d.join(b, 2, addr(2))), Some(0));
    }
}
