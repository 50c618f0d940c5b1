//! [`DenseMap`]: a map keyed by interned-string ids, which are small and dense (handed out from
//! 1 up): ids below [`DENSE_IDS`] index a vector, the rare larger ones go to a hash map. The
//! digest and the analysis look names up once per kernel record, where hashing costs more than
//! the work around it.

use rustc_hash::FxHashMap;

/// Ids below this are kept in the vector (a trace holds at most
/// [`MAX_NAMES_TOTAL`](super::strings::MAX_NAMES_TOTAL) names, but a damaged or hostile file
/// may carry any id: those past it are hashed, so the vector stays bounded).
pub const DENSE_IDS: u32 = 1 << 20;

/// A map from `u32` ids to `V`, a vector below [`DENSE_IDS`] and a hash map above.
#[derive(Clone, Debug)]
pub struct DenseMap<V> {
    dense: Vec<Option<V>>,
    far: FxHashMap<u32, V>,
}

impl<V> Default for DenseMap<V> {
    fn default() -> Self {
        DenseMap { dense: Vec::new(), far: FxHashMap::default() }
    }
}

impl<V> DenseMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `id`, if any.
    #[inline]
    pub fn get(&self, id: u32) -> Option<&V> {
        if id < DENSE_IDS {
            self.dense.get(id as usize).and_then(Option::as_ref)
        } else {
            self.far.get(&id)
        }
    }

    /// Whether `id` has a value.
    #[inline]
    pub fn contains(&self, id: u32) -> bool {
        self.get(id).is_some()
    }

    /// The value of `id`, made by `f` if it has none yet.
    #[inline]
    pub fn get_or_insert_with(&mut self, id: u32, f: impl FnOnce() -> V) -> &mut V {
        if id < DENSE_IDS {
            let i = id as usize;
            if i >= self.dense.len() {
                self.dense.resize_with(i + 1, || None);
            }
            self.dense[i].get_or_insert_with(f)
        } else {
            self.far.entry(id).or_insert_with(f)
        }
    }

    /// Sets the value of `id`.
    #[inline]
    pub fn insert(&mut self, id: u32, v: V) {
        if id < DENSE_IDS {
            let i = id as usize;
            if i >= self.dense.len() {
                self.dense.resize_with(i + 1, || None);
            }
            self.dense[i] = Some(v);
        } else {
            self.far.insert(id, v);
        }
    }

    /// The values, those of large ids first (in the hash map's order), then the others by id.
    pub fn into_values(self) -> impl Iterator<Item = V> {
        self.far.into_values().chain(self.dense.into_iter().flatten())
    }

    /// The values by id, then those of large ids (in the hash map's order).
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.dense.iter().flatten().chain(self.far.values())
    }

    /// Every (id, value) as one hash map: the large ids' entries, then the others by id.
    pub fn into_map(self) -> FxHashMap<u32, V> {
        let mut map = self.far;
        for (i, v) in self.dense.into_iter().enumerate() {
            if let Some(v) = v {
                map.insert(i as u32, v);
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_ids_are_one_map() {
        let mut m: DenseMap<u64> = DenseMap::new();
        for id in [3, DENSE_IDS - 1, DENSE_IDS, u32::MAX, 3] {
            *m.get_or_insert_with(id, || 0) += 1;
        }
        m.insert(7, 10);
        assert_eq!(m.get(3), Some(&2));
        assert_eq!(m.get(DENSE_IDS), Some(&1));
        assert_eq!(m.get(u32::MAX), Some(&1));
        assert!(m.contains(7) && !m.contains(4) && !m.contains(DENSE_IDS + 1));
        let mut values: Vec<u64> = m.values().copied().collect();
        values.sort();
        assert_eq!(values, [1, 1, 1, 2, 10]);
        let map = m.clone().into_map();
        assert_eq!(map.len(), 5);
        assert_eq!(map[&(DENSE_IDS - 1)], 1);
        assert_eq!(m.into_values().count(), 5);
    }
}
