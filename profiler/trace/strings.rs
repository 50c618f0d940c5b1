//! Interned strings (kernel names, paths, command lines). Collectors intern a name once and put
//! its id in records; the writer copies each string into every chunk that refers to it, so any
//! chunk decodes on its own. Id 0 means "no name".
//!
//! Names that come from the profiled job (kernel and marker names, NCCL's algorithm strings)
//! go through [`Interner::intern_bounded`]: the job is untrusted, so what one process can make
//! root keep is capped per process ([`NameBudget`]) and for all processes together.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// Longest string kept; longer ones are cut (kernel names of templated code can be huge).
pub const MAX_STRING_BYTES: usize = 64 * 1024;

/// Longest name kept from the job. Real mangled kernel names reach a few KiB (the longest
/// CUTLASS/cuBLASLt names seen are ~2 KiB), and the injection library already cuts the names
/// it sends at 4 KiB; a longer one is cut on a char boundary.
pub const MAX_NAME_BYTES: usize = 4096;
/// Distinct names one process may add to the string table (a large training job has ~10^4
/// distinct kernel names).
pub const MAX_NAMES_PER_SOURCE: u32 = 64 * 1024;
/// Bytes of names one process may add to the string table.
pub const MAX_NAME_BYTES_PER_SOURCE: u64 = 16 << 20;
/// Distinct names all processes together may add (many rings must not multiply the cap).
pub const MAX_NAMES_TOTAL: u32 = 1 << 20;
/// Bytes of names all processes together may add.
pub const MAX_NAME_BYTES_TOTAL: u64 = 256 << 20;
/// The one name every name refused by a cap maps to.
pub const NAME_LIMIT: &str = "<name limit>";

/// What one untrusted source (a process) has added to the string table, and what was refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameBudget {
    /// Names this source has added.
    pub names: u32,
    /// Bytes of the names this source has added.
    pub bytes: u64,
    /// Names not added (over a cap): each became [`NAME_LIMIT`].
    pub refused: u64,
}

/// Sources (processes) tracked one by one; further ones share one budget.
pub const MAX_SOURCES: usize = 4096;

/// A [`NameBudget`] per process (by pid), for a collector that sees many processes.
#[derive(Debug, Clone, Default)]
pub struct SourceBudgets {
    by_pid: HashMap<u32, NameBudget>,
    /// Shared by every process past the first [`MAX_SOURCES`].
    rest: NameBudget,
}

impl SourceBudgets {
    /// The budget of `pid` (past [`MAX_SOURCES`] processes, the one shared by the rest).
    pub fn of(&mut self, pid: u32) -> &mut NameBudget {
        if self.by_pid.len() >= MAX_SOURCES && !self.by_pid.contains_key(&pid) {
            return &mut self.rest;
        }
        self.by_pid.entry(pid).or_default()
    }

    /// Names refused so far, all processes together.
    pub fn refused(&self) -> u64 {
        self.by_pid.values().fold(self.rest.refused, |n, b| n.saturating_add(b.refused))
    }
}

#[derive(Default)]
struct Table {
    ids: HashMap<Arc<str>, u32>,
    /// Names added through `intern_bounded`, all sources together.
    bounded_names: u32,
    bounded_bytes: u64,
}

/// The caps of [`Interner::intern_bounded`] (the `MAX_*` constants by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameLimits {
    /// Names one source may add.
    pub names_per_source: u32,
    /// Bytes of names one source may add.
    pub bytes_per_source: u64,
    /// Names all sources together may add.
    pub names_total: u32,
    /// Bytes of names all sources together may add.
    pub bytes_total: u64,
}

impl Default for NameLimits {
    fn default() -> Self {
        NameLimits {
            names_per_source: MAX_NAMES_PER_SOURCE,
            bytes_per_source: MAX_NAME_BYTES_PER_SOURCE,
            names_total: MAX_NAMES_TOTAL,
            bytes_total: MAX_NAME_BYTES_TOTAL,
        }
    }
}

/// A thread-safe string table shared by collectors and the writer.
#[derive(Default)]
pub struct Interner {
    table: Mutex<Table>,
    strings: RwLock<Vec<Arc<str>>>,
    limits: NameLimits,
}

impl Interner {
    /// An empty table (id 0 is the empty string) with the default caps.
    pub fn new() -> Self {
        Self::with_limits(NameLimits::default())
    }

    /// A table whose untrusted names are capped by `limits`.
    pub fn with_limits(limits: NameLimits) -> Self {
        Interner { table: Mutex::new(Table::default()), strings: RwLock::new(vec![Arc::from("")]), limits }
    }

    /// The caps on untrusted names.
    pub fn limits(&self) -> NameLimits {
        self.limits
    }

    /// The id of `s`, assigning the next one on first sight.
    pub fn intern(&self, s: &str) -> u32 {
        let s = truncate_utf8(s, MAX_STRING_BYTES);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        self.intern_locked(&mut table, s)
    }

    /// The id of `s` (cut to [`MAX_NAME_BYTES`]), a name from an untrusted source. A name not
    /// seen before is added only while `budget` and the all-sources total stay within their
    /// caps; otherwise it is counted in `budget.refused` and the id of [`NAME_LIMIT`] returned.
    /// A name already in the table costs nothing.
    pub fn intern_bounded(&self, s: &str, budget: &mut NameBudget) -> u32 {
        let s = truncate_utf8(s, MAX_NAME_BYTES);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&id) = table.ids.get(s) {
            return id;
        }
        let len = s.len() as u64;
        let l = &self.limits;
        let fits = budget.names < l.names_per_source
            && budget.bytes.saturating_add(len) <= l.bytes_per_source
            && table.bounded_names < l.names_total
            && table.bounded_bytes.saturating_add(len) <= l.bytes_total;
        if !fits {
            budget.refused = budget.refused.saturating_add(1);
            return self.intern_locked(&mut table, NAME_LIMIT);
        }
        budget.names += 1;
        budget.bytes += len;
        table.bounded_names += 1;
        table.bounded_bytes += len;
        self.intern_locked(&mut table, s)
    }

    fn intern_locked(&self, table: &mut Table, s: &str) -> u32 {
        if let Some(&id) = table.ids.get(s) {
            return id;
        }
        let arc: Arc<str> = Arc::from(s);
        let mut strings = self.strings.write().unwrap_or_else(|p| p.into_inner());
        let id = strings.len() as u32;
        strings.push(arc.clone());
        table.ids.insert(arc, id);
        id
    }

    /// The string with id `id`, if assigned.
    pub fn get(&self, id: u32) -> Option<Arc<str>> {
        let strings = self.strings.read().unwrap_or_else(|p| p.into_inner());
        strings.get(id as usize).cloned()
    }

    /// Strings held, the empty string (id 0) included.
    pub fn len(&self) -> usize {
        self.strings.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Holds no string but the empty one (id 0).
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }

    /// Bytes of every string held.
    pub fn bytes(&self) -> u64 {
        self.strings.read().unwrap_or_else(|p| p.into_inner()).iter().map(|s| s.len() as u64).sum()
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

    #[test]
    fn bounded_names_are_cut_and_capped_per_source() {
        let t = Interner::new();
        let mut a = NameBudget::default();
        // Cut to 4 KiB on a char boundary.
        let id = t.intern_bounded(&"é".repeat(MAX_NAME_BYTES), &mut a);
        assert_eq!(t.get(id).unwrap().len(), MAX_NAME_BYTES);
        assert_eq!((a.names, a.bytes), (1, MAX_NAME_BYTES as u64));
        // The byte cap: 16 MiB of 4 KiB names is 4,096 names; the 4,097th is refused.
        let big = "k".repeat(MAX_NAME_BYTES - 8);
        for i in 1..(MAX_NAME_BYTES_PER_SOURCE / MAX_NAME_BYTES as u64) {
            t.intern_bounded(&format!("{big}{i:08}"), &mut a);
        }
        assert_eq!(a.refused, 0);
        let limit = t.intern_bounded("one more", &mut a);
        assert_eq!(t.get(limit).as_deref(), Some(NAME_LIMIT));
        assert_eq!(a.refused, 1);
        assert!(a.bytes <= MAX_NAME_BYTES_PER_SOURCE);
        // A name already in the table costs nothing, even to a spent budget.
        assert_eq!(t.intern_bounded(&format!("{big}{:08}", 7), &mut a), t.intern(&format!("{big}{:08}", 7)));
        assert_eq!(a.refused, 1);
        // Another source has its own budget.
        let mut b = NameBudget::default();
        assert_ne!(t.intern_bounded("one more", &mut b), limit);
        // The distinct-name cap.
        for i in 0..MAX_NAMES_PER_SOURCE + 10 {
            t.intern_bounded(&format!("n{i}"), &mut b);
        }
        assert_eq!((b.names, b.refused), (MAX_NAMES_PER_SOURCE, 11));
        assert_eq!(t.len() as u64, 1 + a.names as u64 + b.names as u64 + 1);
    }

    #[test]
    fn bounded_names_are_capped_for_all_sources_together() {
        let limits = NameLimits { names_per_source: 100, bytes_per_source: 1000, names_total: 250, bytes_total: 2500 };
        let t = Interner::with_limits(limits);
        let mut budgets = vec![NameBudget::default(); 10];
        // 10 sources × 100 names of 8 bytes: each stays within its own 1000 bytes, but together
        // they may add only 2,500 bytes (312 names), then 250 names is the tighter cap.
        for (s, b) in budgets.iter_mut().enumerate() {
            for i in 0..100 {
                t.intern_bounded(&format!("{s:03}_{i:04}"), b);
            }
        }
        let added: u32 = budgets.iter().map(|b| b.names).sum();
        let refused: u64 = budgets.iter().map(|b| b.refused).sum();
        assert_eq!((added, refused), (250, 750));
        assert_eq!(t.len(), 1 + 250 + 1, "the empty string, 250 names, the placeholder");
        assert_eq!(t.bytes(), 250 * 8 + NAME_LIMIT.len() as u64);
    }

    #[test]
    fn source_budgets_are_per_pid_and_bounded_in_number() {
        let limits = NameLimits { names_per_source: 2, ..NameLimits::default() };
        let t = Interner::with_limits(limits);
        let mut b = SourceBudgets::default();
        for pid in 0..MAX_SOURCES as u32 + 100 {
            for i in 0..3 {
                t.intern_bounded(&format!("{pid}.{i}"), b.of(pid));
            }
        }
        // The first 4,096 pids keep 2 names each and refuse 1; the other 100 share 2 names.
        assert_eq!(b.by_pid.len(), MAX_SOURCES);
        assert_eq!(b.refused(), MAX_SOURCES as u64 + 100 * 3 - 2);
        assert_eq!(t.len(), 1 + 2 * MAX_SOURCES + 2 + 1);
    }
}
