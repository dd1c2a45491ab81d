//! A map whose entries are trusted for a while, bounded: what every in-process cache of the
//! service is (key lookups, sign-in sessions). An entry older than the
//! map's time to live is no longer returned, and once the map holds its bound of entries,
//! the stale ones are swept out before the next is added, so a client that keeps inventing
//! keys cannot grow it for long.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries above this are swept of stale ones, unless the map is told otherwise.
pub const DEFAULT_BOUND: usize = 10_000;

#[derive(Debug)]
pub struct TtlMap<K, V> {
    ttl: Duration,
    bound: usize,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V> TtlMap<K, V> {
    /// Entries trusted for `ttl` after they were last written; swept at [`DEFAULT_BOUND`].
    pub fn new(ttl: Duration) -> Self {
        Self::with_bound(ttl, DEFAULT_BOUND)
    }

    pub fn with_bound(ttl: Duration, bound: usize) -> Self {
        Self {
            ttl,
            bound,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (Instant, V)>> {
        // A panic while holding the lock leaves only a cache behind: still usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sweep_if_full(&self, entries: &mut HashMap<K, (Instant, V)>) {
        if entries.len() >= self.bound {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
        }
    }

    /// The value of `key`, if it was written less than the time to live ago.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
        V: Clone,
    {
        let entries = self.lock();
        let (at, value) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    /// Writes `key`, trusted from now.
    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.lock();
        self.sweep_if_full(&mut entries);
        entries.insert(key, (Instant::now(), value));
    }

    pub fn remove<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.lock().remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_returned_only_while_fresh() {
        let map = TtlMap::new(Duration::from_millis(30));
        map.insert("a".to_string(), 1);
        assert_eq!(map.get("a"), Some(1));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(map.get("a"), None);
        map.remove("a");
        assert!(map.is_empty());
    }

    #[test]
    fn a_full_map_sweeps_its_stale_entries_before_growing() {
        let map = TtlMap::with_bound(Duration::from_millis(20), 3);
        for key in 0..3 {
            map.insert(key, key);
        }
        std::thread::sleep(Duration::from_millis(30));
        map.insert(3, 3);
        assert_eq!(map.len(), 1, "the three stale entries went");
        // Fresh entries are kept, whatever the bound.
        for key in 4..8 {
            map.insert(key, key);
        }
        assert_eq!(map.len(), 5);
    }
}
