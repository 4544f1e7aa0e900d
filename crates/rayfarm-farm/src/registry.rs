//! The daemons that registered themselves (`POST /api/v1/nodes/register`): a bounded table of
//! addresses, each with the time the manager last heard of it.
//!
//! A registration, or a successful contact by the daemon scan, renews an address; an address
//! not renewed for [`REGISTRATION_TTL_MS`] expires. The table never holds more than its
//! capacity ([`MAX_REGISTERED_NODES`] by default): a new address beyond that is refused (after
//! stale ones are dropped), an address already in the table is always renewed. Pure state with
//! the clock passed in; the manager calls it and does the networking.

use std::collections::BTreeMap;

/// Registered daemons the manager keeps at most.
pub const MAX_REGISTERED_NODES: usize = 1024;
/// A registered daemon neither re-registering nor answering the scan this long is forgotten.
/// Daemons re-register every 5 s.
pub const REGISTRATION_TTL_MS: i64 = 5 * 60 * 1000;

/// What [`Registry::register`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registered {
    /// A new address.
    New,
    /// An address already known: its time is renewed.
    Renewed,
    /// The table is full of live addresses; this one was not kept.
    Full,
}

#[derive(Clone, Debug)]
pub struct Registry {
    capacity: usize,
    ttl_ms: i64,
    /// Address -> last registration or successful contact, ms on the manager's clock.
    last_heard_ms: BTreeMap<String, i64>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(MAX_REGISTERED_NODES, REGISTRATION_TTL_MS)
    }
}

impl Registry {
    pub fn new(capacity: usize, ttl_ms: i64) -> Registry {
        Registry {
            capacity,
            ttl_ms,
            last_heard_ms: BTreeMap::new(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A daemon registers (or registers again) at `now_ms`.
    pub fn register(&mut self, addr: &str, now_ms: i64) -> Registered {
        if let Some(t) = self.last_heard_ms.get_mut(addr) {
            *t = (*t).max(now_ms);
            return Registered::Renewed;
        }
        if self.last_heard_ms.len() >= self.capacity {
            self.expire(now_ms);
            if self.last_heard_ms.len() >= self.capacity {
                return Registered::Full;
            }
        }
        self.last_heard_ms.insert(addr.to_string(), now_ms);
        Registered::New
    }

    /// The scan reached a daemon at `now_ms`: a registered one is renewed, others are ignored.
    pub fn contacted(&mut self, addr: &str, now_ms: i64) {
        if let Some(t) = self.last_heard_ms.get_mut(addr) {
            *t = (*t).max(now_ms);
        }
    }

    /// Drops the addresses not heard of for the TTL; returns them.
    pub fn expire(&mut self, now_ms: i64) -> Vec<String> {
        let ttl = self.ttl_ms;
        let stale: Vec<String> = self
            .last_heard_ms
            .iter()
            .filter(|(_, &t)| now_ms.saturating_sub(t) > ttl)
            .map(|(a, _)| a.clone())
            .collect();
        for a in &stale {
            self.last_heard_ms.remove(a);
        }
        stale
    }

    pub fn contains(&self, addr: &str) -> bool {
        self.last_heard_ms.contains_key(addr)
    }

    pub fn len(&self) -> usize {
        self.last_heard_ms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_heard_ms.is_empty()
    }

    pub fn addrs(&self) -> impl Iterator<Item = &String> {
        self.last_heard_ms.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_registry_refuses_new_addresses_but_renews_known_ones() {
        let mut r = Registry::new(3, 1000);
        for (i, a) in ["a:1", "b:1", "c:1"].iter().enumerate() {
            assert_eq!(r.register(a, i as i64), Registered::New);
        }
        assert_eq!(r.register("d:1", 10), Registered::Full);
        assert_eq!(r.register("a:1", 10), Registered::Renewed);
        assert_eq!(r.len(), 3);
        assert!(!r.contains("d:1"));
    }

    #[test]
    fn silent_addresses_expire_and_make_room() {
        let mut r = Registry::new(2, 1000);
        r.register("a:1", 0);
        r.register("b:1", 500);
        // Nothing is stale yet.
        assert!(r.expire(1000).is_empty());
        // a is stale at 1001; a full table drops it to take c.
        assert_eq!(r.register("c:1", 1001), Registered::New);
        assert!(!r.contains("a:1") && r.contains("b:1") && r.contains("c:1"));
        // A successful scan contact renews b; c re-registers; neither expires.
        r.contacted("b:1", 1400);
        r.register("c:1", 1900);
        assert!(r.expire(2300).is_empty());
        assert_eq!(r.expire(2401), vec!["b:1".to_string()]);
        assert_eq!(r.expire(2901), vec!["c:1".to_string()]);
        assert!(r.is_empty());
    }

    #[test]
    fn contact_with_an_unregistered_address_adds_nothing() {
        let mut r = Registry::new(2, 1000);
        r.contacted("x:1", 5);
        assert!(r.is_empty());
    }

    #[test]
    fn a_clock_going_backwards_does_not_shorten_a_life() {
        let mut r = Registry::new(2, 1000);
        r.register("a:1", 5000);
        r.register("a:1", 100);
        assert!(r.expire(5900).is_empty());
    }
}
