//! Interned strings (kernel names, paths, command lines). Collectors intern a name once and put
//! its id in records; the writer copies each string into every chunk that refers to it, so any
//! chunk decodes on its own. Id 0 means "no name".

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// Longest string kept; longer ones are cut (kernel names of templated code can be huge).
pub const MAX_STRING_BYTES: usize = 64 * 1024;

/// A thread-safe string table shared by collectors and the writer.
#[derive(Default)]
pub struct Interner {
    ids: Mutex<HashMap<Arc<str>, u32>>,
    strings: RwLock<Vec<Arc<str>>>,
}

impl Interner {
    pub fn new() -> Self {
        Interner { ids: Mutex::new(HashMap::new()), strings: RwLock::new(vec![Arc::from("")]) }
    }

    /// The id of `s`, assigning the next one on first sight.
    pub fn intern(&self, s: &str) -> u32 {
        let s = truncate_utf8(s, MAX_STRING_BYTES);
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&id) = ids.get(s) {
            return id;
        }
        let arc: Arc<str> = Arc::from(s);
        let mut strings = self.strings.write().unwrap_or_else(|p| p.into_inner());
        let id = strings.len() as u32;
        strings.push(arc.clone());
        ids.insert(arc, id);
        id
    }

    pub fn get(&self, id: u32) -> Option<Arc<str>> {
        let strings = self.strings.read().unwrap_or_else(|p| p.into_inner());
        strings.get(id as usize).cloned()
    }

    pub fn len(&self) -> usize {
        self.strings.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }
}

/// `s` cut to at most `max` bytes on a char boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_zero_is_empty() {
        let t = Interner::new();
        let a = t.intern("ampere_sgemm_128x64_nn");
        let b = t.intern("ncclDevKernel_AllReduce_Sum_f32_RING_LL");
        assert_eq!(t.intern("ampere_sgemm_128x64_nn"), a);
        assert_eq!((a, b), (1, 2));
        assert_eq!(t.get(0).as_deref(), Some(""));
        assert_eq!(t.get(b).as_deref(), Some("ncclDevKernel_AllReduce_Sum_f32_RING_LL"));
        assert_eq!(t.get(3), None);
    }

    #[test]
    fn long_names_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_STRING_BYTES);
        let t = Interner::new();
        let id = t.intern(&long);
        let got = t.get(id).unwrap();
        assert!(got.len() <= MAX_STRING_BYTES && got.len() >= MAX_STRING_BYTES - 1);
    }
}
