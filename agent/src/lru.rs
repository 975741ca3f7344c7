//! A small bounded least-recently-used map, for the agent's caches (binary
//! hashes, JWT-SVIDs). O(log n) per operation; no dependency needed.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    capacity: usize,
    tick: u64,
    items: HashMap<K, (V, u64)>,
    /// Last-use tick → key; the first entry is the least recently used.
    order: BTreeMap<u64, K>,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    /// A map holding at most `capacity` items (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            tick: 0,
            items: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The value for `key`, marking it most recently used.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let tick = self.next_tick();
        let (_, used) = self.items.get_mut(key)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, key.clone());
        self.items.get_mut(key).map(|(value, _)| value)
    }

    /// Whether any value satisfies `test` (without marking anything used).
    pub(crate) fn any(&self, test: impl Fn(&V) -> bool) -> bool {
        self.items.values().any(|(value, _)| test(value))
    }

    /// Inserts or replaces `key`, evicting the least recently used item when full.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        let tick = self.next_tick();
        if let Some((_, used)) = self.items.remove(&key) {
            self.order.remove(&used);
        } else if self.items.len() >= self.capacity
            && let Some((_, oldest)) = self.order.pop_first()
        {
            self.items.remove(&oldest);
        }
        self.order.insert(tick, key.clone());
        self.items.insert(key, (value, tick));
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let (value, used) = self.items.remove(key)?;
        self.order.remove(&used);
        Some(value)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut lru = Lru::new(2);
        lru.insert("a", 1);
        lru.insert("b", 2);
        assert_eq!(lru.get_mut(&"a").copied(), Some(1)); // "b" is now the oldest
        lru.insert("c", 3);
        assert_eq!(lru.len(), 2);
        assert!(lru.get_mut(&"b").is_none());
        assert_eq!(lru.get_mut(&"a").copied(), Some(1));
        assert_eq!(lru.get_mut(&"c").copied(), Some(3));
        lru.insert("c", 4); // replacing does not evict
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.remove(&"c"), Some(4));
        assert_eq!(lru.len(), 1);
    }
}
