//! The device timeline from ghostprof's CUPTI injection library (`cuda/inject`): one shared-
//! memory ring per traced process (`<dir>/ghostprof-<pid>.ring`), read as untrusted input.
//! Raw CUPTI activity records are parsed here by the offsets of the CUPTI structs (cudarc's
//! bindings of the real headers), checked for length, and turned into trace records; device
//! timestamps are mapped onto CLOCK_MONOTONIC with the clock pairs the library sends.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};

use cs::CUpti_ActivityKind as K;
use cudarc::cupti::sys as cs;
use ghostprof_ring::{wire, Consumer, ConsumerError, Popped};

use super::pmdecode::{self, Decoders, Outcome, Route};
use crate::pipeline::Producer;
use crate::trace::strings::{truncate_utf8, MAX_NAME_BYTES};
use crate::trace::{
    ApiCall, ApiDomain, ClockDomain, ClockSync, CollOp, DeviceSample, DropCause, KernelExec, MemOp, MemOpKind, Metric,
    NameBudget, NcclAlgo, NcclDtype, ProfilerCost, StepMarker, StepSource, NAME_LIMIT,
};

/// `ApiCall::domain` of CUPTI synchronization records (`call_id` = CUpti_ActivitySynchronizationType).
pub const SYNC_DOMAIN: ApiDomain = ApiDomain::CudaDriver;
/// `ApiCall::call_id` offset of synchronization records, above every driver callback id.
pub const SYNC_CALL_BASE: u32 = 1 << 20;

/// Every CUPTI struct field this collector reads, with the offset it reads it at (from cudarc's
/// bindings), and each struct's size as field `sizeof`: checked against the real headers by a
/// test that compiles a C `offsetof` program (tools/fetch-cuda-headers gets the headers).
pub fn layout() -> Vec<(&'static str, &'static str, usize)> {
    macro_rules! fields {
        ($t:ident: $($f:ident),*) => {{
            let mut v = vec![(stringify!($t), "sizeof", size_of::<cs::$t>())];
            $( v.push((stringify!($t), stringify!($f), offset_of!(cs::$t, $f))); )*
            v
        }};
    }
    let mut all = fields!(CUpti_ActivityKernel9: kind, start, end, deviceId, streamId, correlationId, gridX, gridY, gridZ,
        blockX, blockY, blockZ, registersPerThread, staticSharedMemory, dynamicSharedMemory, name, graphId);
    all.extend(fields!(CUpti_ActivityMemcpy5: kind, copyKind, bytes, start, end, deviceId, streamId, correlationId));
    all.extend(fields!(CUpti_ActivityMemset4: kind, bytes, start, end, deviceId, streamId, correlationId));
    all.extend(fields!(CUpti_ActivityAPI: kind, cbid, start, end, processId, threadId, correlationId, returnValue));
    all.extend(fields!(CUpti_ActivitySynchronization: kind, start, end, correlationId, streamId, cudaEventId));
    all.extend(fields!(CUpti_ActivityMarker2: kind, flags, timestamp, id, name, domain));
    // `type` is a C keyword-free name in C but `type_` in Rust.
    all.push(("CUpti_ActivitySynchronization", "type", offset_of!(cs::CUpti_ActivitySynchronization, type_)));
    all
}

/// Totals of the CUPTI collector, for the session summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CuptiStats {
    /// Rings mapped so far.
    pub rings: usize,
    /// Records read from the rings.
    pub records: u64,
    /// Records that could not be decoded, and refused drop counters.
    pub malformed: u64,
    /// Bytes the rings' consumers skipped as corrupt.
    pub corrupt_bytes: u64,
    /// Records the job could not push because its ring was full (its accepted counter).
    pub ring_drops: u64,
    /// Records CUPTI itself dropped (its activity buffers), as the job reported them.
    pub cupti_drops: u64,
    /// Names refused by a string-table cap (each became `<name limit>`).
    pub name_limit: u64,
    /// Status notes refused by the per-process cap.
    pub note_limit: u64,
    /// Job-reported drop counters refused as implausible (also counted in `malformed`).
    pub counters_refused: u64,
    /// Rings refused at opening (a symlink, another owner, not a regular file, several links,
    /// too large, not a traced process): each is also a note.
    pub rings_refused: usize,
    /// PM samples evaluated by ghostprof's decoder and kept (PM decode in the collector).
    pub pm_decoded: u64,
    /// PM samples refused, by source (also counted in `malformed`).
    pub pm_refused: pmdecode::PmRefusals,
    /// PM images dropped because their decoder's queue was full.
    pub pm_queue_full: u64,
}

/// Ring name ids one process may map (each needs an entry, even for a name already interned).
pub const MAX_NAME_IDS: usize = 64 * 1024;
/// NVTX ranges one process may have open at once.
pub const MAX_OPEN_RANGES: usize = 64 * 1024;
/// Distinct status notes kept per process, and the longest kept (longer ones are cut).
pub const MAX_NOTES_PER_PROCESS: usize = 32;
/// The longest status note kept, in bytes.
pub const MAX_NOTE_BYTES: usize = 512;
/// Distinct notes the collector keeps in all (many rings must not multiply the cap).
pub const MAX_NOTES: usize = 256;
/// A job-reported cumulative drop counter may grow by at most this much per reading, plus one
/// drop per [`COUNTER_NS_PER_DROP`] since the last accepted reading: 16 Mi is twice the 8-byte
/// frames a full 64 MiB ring holds, and a failed push takes longer than 10 ns.
pub const COUNTER_SLACK: u64 = 1 << 24;
/// The nanoseconds per extra drop a job counter may grow by (see [`COUNTER_SLACK`]).
pub const COUNTER_NS_PER_DROP: u64 = 10;

/// A cumulative counter the job reports (records it dropped). It is believed only while it
/// grows plausibly: never backwards, and by at most [`COUNTER_SLACK`] + (ns since the last
/// accepted reading) / [`COUNTER_NS_PER_DROP`] per reading. A refused reading is not added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCounter {
    /// The last accepted value and when it was accepted (CLOCK_MONOTONIC ns).
    pub accepted: u64,
    at_ns: u64,
    /// The last refused value (the same value again is not a new refusal).
    refused: Option<u64>,
    /// New refusals so far.
    pub refusals: u64,
}

/// What [`JobCounter::read`] made of a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterReading {
    /// The reading was plausible and is now the accepted value.
    Accepted,
    /// Refused; `new` is false when it repeats the previous refused value.
    Refused {
        /// False when the value repeats the previous refused one.
        new: bool,
    },
}

impl JobCounter {
    /// A counter at 0, accepted at `now_ns` (CLOCK_MONOTONIC ns).
    pub fn new(now_ns: u64) -> Self {
        JobCounter { accepted: 0, at_ns: now_ns, refused: None, refusals: 0 }
    }

    /// Checks a new reading `value` taken at `now_ns`: accepted if plausible, else refused.
    pub fn read(&mut self, value: u64, now_ns: u64) -> CounterReading {
        let allowed = COUNTER_SLACK.saturating_add(now_ns.saturating_sub(self.at_ns) / COUNTER_NS_PER_DROP);
        if value >= self.accepted && value - self.accepted <= allowed {
            if value > self.accepted {
                self.accepted = value;
                self.at_ns = now_ns;
            }
            self.refused = None;
            return CounterReading::Accepted;
        }
        let new = self.refused != Some(value);
        self.refused = Some(value);
        self.refusals += new as u64;
        CounterReading::Refused { new }
    }
}

/// What one process (ring) has made the collector keep, and the counters it reported: all
/// bounded, the job is untrusted.
struct RingCaps {
    names: NameBudget,
    /// Trace id of `<name limit>` once a name of this process was refused (0 before).
    limit_id: u32,
    notes: HashSet<String>,
    notes_refused: u64,
    ring_dropped: JobCounter,
    cupti_dropped: JobCounter,
    counters_refused: u64,
}

impl RingCaps {
    fn new() -> Self {
        let now = crate::clock::monotonic_ns();
        RingCaps {
            names: NameBudget::default(),
            limit_id: 0,
            notes: HashSet::new(),
            notes_refused: 0,
            ring_dropped: JobCounter::new(now),
            cupti_dropped: JobCounter::new(now),
            counters_refused: 0,
        }
    }
}

/// The collector's own note de-duplication and its cap.
#[derive(Default)]
struct NoteSet {
    seen: HashSet<String>,
    refused: u64,
}

struct Ring {
    consumer: Consumer,
    pid: u32,
    /// ring name id → trace string id
    names: HashMap<u32, u32>,
    /// CLOCK_MONOTONIC − CUPTI time, from the latest clock pair
    offset_ns: i64,
    /// open NVTX ranges: marker id → (start, name)
    open_ranges: HashMap<u32, (u64, u32)>,
    steps: u64,
    cupti_drops: u64,
    caps: RingCaps,
    pm: RingPm,
    /// [`wire::SESSION_END`] records seen: collection sessions the library has closed.
    ends: u64,
    /// Kernel and graph launches CUPTI reported ([`ApiCall::is_launch`]).
    launches: u64,
}

/// PM decode in the collector, per process: the blob being put together from its parts, where
/// its images go, and whether PM stopped for it.
#[derive(Default)]
struct RingPm {
    /// (session, seq, total, bytes so far)
    blob: Option<(u32, u32, u32, Vec<u8>)>,
    /// (session, route, metrics per sample) once a setup went to a decoder.
    route: Option<(u32, Route, usize)>,
    stopped: bool,
    last_end: u64,
}

/// Reads the injection libraries' shared-memory rings (one per process) in a directory and
/// turns their CUPTI and NVTX records into trace records.
pub struct CuptiCollector {
    dir: PathBuf,
    /// Remove each ring file once mapped (a `record` session owns its job's rings).
    unlink: bool,
    rings: BTreeMap<u32, Ring>,
    buf: Vec<Popped>,
    /// Totals so far.
    pub stats: CuptiStats,
    /// Status messages from the injection libraries, once each.
    pub notes: Vec<String>,
    seen_notes: NoteSet,
    /// With `Some`, only rings of these pids are taken from the directory (every pid ever traced,
    /// fed by [`CuptiCollector::add_traced`]); None: every ring in it (a directory the caller trusts).
    traced: Option<BTreeSet<u32>>,
    /// Pids whose ring was refused (each noted and counted once, not retried).
    refused: BTreeSet<u32>,
    /// The PM decoders (collector-side evaluation) and what they sent back.
    pm: Decoders,
    /// When the collector started (CLOCK_MONOTONIC): no PM sample of this session is older.
    started_ns: u64,
}

fn u16_at(p: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([p[at], p[at + 1]])
}
fn u32_at(p: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}
fn u64_at(p: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[at..at + 8]);
    u64::from_le_bytes(b)
}

impl CuptiCollector {
    /// A collector of the rings in `dir`; `unlink` removes each ring file once mapped.
    pub fn new(dir: &Path, unlink: bool) -> Self {
        CuptiCollector {
            dir: dir.to_path_buf(),
            unlink,
            rings: BTreeMap::new(),
            buf: Vec::new(),
            stats: CuptiStats::default(),
            notes: Vec::new(),
            seen_notes: NoteSet::default(),
            traced: None,
            refused: BTreeSet::new(),
            pm: Decoders::default(),
            started_ns: crate::clock::monotonic_ns(),
        }
    }

    /// From now on [`CuptiCollector::scan_dir`] takes only the rings of pids given to
    /// [`CuptiCollector::add_traced`]: a ring named after any other process is refused.
    pub fn only_traced(&mut self) {
        self.traced.get_or_insert_with(BTreeSet::new);
    }

    /// Per ring (pid), the kernel and graph launches its CUPTI reported so far
    /// ([`crate::trace::ApiCall::is_launch`]): a process whose count is above 0 has CUPTI
    /// seeing its launches (the launch callbacks, or API activity).
    pub fn launches_seen(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.rings.iter().map(|(pid, r)| (*pid, r.launches))
    }

    /// Pids that are (or were) in the traced tree.
    pub fn add_traced(&mut self, pids: &[u32]) {
        if let Some(t) = self.traced.as_mut() {
            t.extend(pids.iter().copied());
        }
    }

    /// Rings refused so far (a symlink, another owner, not a regular file, several links, too
    /// large, not a traced process's), each with a note.
    pub fn refused_rings(&self) -> usize {
        self.refused.len()
    }

    /// Path of the ring of `pid` as this host sees it: `dir/ghostprof-<pid>.ring` for a process
    /// of ghostprof's pid and mount namespaces (or one already gone); else, for a process in a
    /// container, its own ring (named with the pid it knows itself by, NSpid) in the same
    /// directory of its mount namespace, through `/proc/PID/root`. None when a directory on the
    /// way inside its root is a symlink: an absolute link there would resolve on this host.
    pub fn ring_path(&self, pid: u32) -> Option<PathBuf> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let own: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|v| v.split_whitespace().last()?.parse().ok())
            .unwrap_or(pid);
        let same_mnt =
            match (std::fs::read_link(format!("/proc/{pid}/ns/mnt")), std::fs::read_link("/proc/self/ns/mnt")) {
                (Ok(a), Ok(b)) => a == b,
                _ => true,
            };
        if own == pid && same_mnt {
            return Some(self.dir.join(format!("ghostprof-{pid}.ring")));
        }
        let mut at = PathBuf::from(format!("/proc/{pid}/root"));
        for part in self.dir.strip_prefix("/").unwrap_or(&self.dir).components() {
            at.push(part);
            if std::fs::symlink_metadata(&at).ok()?.file_type().is_symlink() {
                return None;
            }
        }
        Some(at.join(format!("ghostprof-{own}.ring")))
    }

    /// Opens every ring in the directory (a session's private ring directory holds only its
    /// own job's rings, including those of processes that already exited), only those of traced
    /// pids after [`CuptiCollector::only_traced`].
    pub fn scan_dir(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let pids: Vec<u32> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("ghostprof-")?.strip_suffix(".ring")?.parse().ok()
            })
            .collect();
        let mut wanted = Vec::with_capacity(pids.len());
        for pid in pids {
            match &self.traced {
                Some(t) if !t.contains(&pid) => {
                    if !self.rings.contains_key(&pid) && self.refused.insert(pid) {
                        self.note(format!(
                            "ignored the CUPTI ring of process {pid} in {}: not a process of the traced job",
                            self.dir.display()
                        ));
                    }
                }
                _ => wanted.push(pid),
            }
        }
        self.scan(&wanted);
    }

    /// The uids the ring of `pid` may belong to: the process's real, effective, saved and
    /// filesystem uids (/proc/PID/status); for a process already gone, the owner of the ring
    /// directory (a `record` session's private directory belongs to the job's user).
    fn owners_of(&self, pid: u32) -> Vec<u32> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uids: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .map(|l| l.split_whitespace().filter_map(|u| u.parse().ok()).collect())
            .unwrap_or_default();
        if !uids.is_empty() {
            return uids;
        }
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(&self.dir).map(|m| vec![m.uid()]).unwrap_or_default()
    }

    /// Opens the rings of `pids` that exist and are not open yet (which switches their
    /// collection on). A ring is taken only if it is a regular file with one link, owned by
    /// the process it names, no larger than the injection library's; never through a symlink.
    pub fn scan(&mut self, pids: &[u32]) {
        for &pid in pids {
            if self.rings.contains_key(&pid) || self.refused.contains(&pid) {
                continue;
            }
            let Some(path) = self.ring_path(pid) else {
                if self.refused.insert(pid) {
                    self.note(format!(
                        "ignored the CUPTI ring of process {pid}: {} in its mount namespace goes through a symlink",
                        self.dir.display()
                    ));
                }
                continue;
            };
            if std::fs::symlink_metadata(&path).is_err() {
                continue;
            }
            let owners = self.owners_of(pid);
            match Consumer::open_owned(&path, Some(&owners)) {
                Ok(consumer) => {
                    if self.unlink {
                        let _ = std::fs::remove_file(&path);
                    }
                    self.rings.insert(
                        pid,
                        Ring {
                            consumer,
                            pid,
                            names: HashMap::new(),
                            offset_ns: 0,
                            open_ranges: HashMap::new(),
                            steps: 0,
                            cupti_drops: 0,
                            caps: RingCaps::new(),
                            pm: RingPm::default(),
                            ends: 0,
                            launches: 0,
                        },
                    );
                    self.stats.rings += 1;
                }
                Err(e) => {
                    if matches!(e, ConsumerError::Refused { .. }) {
                        self.refused.insert(pid);
                    }
                    self.note(format!("cannot read the CUPTI ring of process {pid}: {e}"))
                }
            }
        }
    }

    /// Keeps `msg` once; past [`MAX_NOTES`] distinct notes, one line says so and the rest are
    /// counted as `note_limit` drops (a HashSet: 10^5 notes used to cost a quadratic search).
    fn note(&mut self, msg: String) {
        if self.seen_notes.seen.contains(&msg) {
            return;
        }
        if self.seen_notes.seen.len() >= MAX_NOTES {
            if self.seen_notes.refused == 0 {
                self.notes.push(format!(
                    "more than {MAX_NOTES} distinct notes from the CUPTI rings; the rest are counted as note_limit drops"
                ));
            }
            self.seen_notes.refused = self.seen_notes.refused.saturating_add(1);
            return;
        }
        self.seen_notes.seen.insert(msg.clone());
        self.notes.push(msg);
    }

    /// Moves every record of every ring into `producer` (the CUPTI source's own producer, so
    /// every loss is listed under `cupti`).
    pub fn drain(&mut self, producer: &mut Producer) {
        let mut notes = Vec::new();
        let now = crate::clock::monotonic_ns();
        let (mut ring_drops, mut cupti_drops, mut corrupt) = (0u64, 0u64, 0u64);
        let (mut name_limit, mut note_limit, mut refused) = (0u64, 0u64, 0u64);
        for ring in self.rings.values_mut() {
            self.buf.clear();
            if let Err(e) = ring.consumer.drain(&mut self.buf) {
                ring.note(&e.to_string(), &mut notes);
            }
            for rec in self.buf.drain(..) {
                self.stats.records += 1;
                if !ring.handle(&rec, producer, &mut notes, &mut self.pm) {
                    self.stats.malformed += 1;
                }
            }
            let dropped = ring.consumer.dropped();
            if let CounterReading::Refused { new } = ring.caps.ring_dropped.read(dropped, now) {
                if new {
                    self.stats.malformed += 1;
                    ring.caps.counters_refused += 1;
                    let before = ring.caps.ring_dropped.accepted;
                    if ring.caps.ring_dropped.refusals == 1 {
                        ring.note(
                            &format!(
                            "its ring's dropped-record counter went from {before} to {dropped}, which it cannot have; \
                             ignored until it is plausible again"
                        ),
                            &mut notes,
                        );
                    }
                }
            }
            ring_drops = ring_drops.saturating_add(ring.caps.ring_dropped.accepted);
            cupti_drops = cupti_drops.saturating_add(ring.cupti_drops);
            corrupt = corrupt.saturating_add(ring.consumer.corrupt_bytes);
            name_limit = name_limit.saturating_add(ring.caps.names.refused);
            note_limit = note_limit.saturating_add(ring.caps.notes_refused);
            refused = refused.saturating_add(ring.caps.counters_refused);
        }
        let outcomes = self.pm.ready(std::time::Duration::ZERO);
        self.pm_outcomes(outcomes, producer, &mut notes);
        for n in notes {
            self.note(n);
        }
        self.stats.corrupt_bytes = corrupt;
        self.stats.ring_drops = ring_drops;
        self.stats.cupti_drops = cupti_drops;
        self.stats.name_limit = name_limit;
        self.stats.note_limit = note_limit.saturating_add(self.seen_notes.refused);
        self.stats.counters_refused = refused;
        self.stats.rings_refused = self.refused.len();
        producer.set_drops(DropCause::ShmRingFull, ring_drops);
        producer.set_drops(DropCause::CuptiBuffer, cupti_drops);
        producer.set_drops(DropCause::Malformed, self.stats.malformed);
        producer.set_drops(DropCause::NameLimit, self.stats.name_limit);
        producer.set_drops(DropCause::NoteLimit, self.stats.note_limit);
        producer.flush();
    }

    /// Turns decoders' answers into PM samples (checked by [`pmdecode::validate`]) or stops PM
    /// for a process whose decoder failed.
    fn pm_outcomes(&mut self, outcomes: Vec<Outcome>, producer: &mut Producer, notes: &mut Vec<String>) {
        let ceiling = crate::clock::monotonic_ns().saturating_add(1_000_000_000);
        for outcome in outcomes {
            match outcome {
                Outcome::Values { pid, session, n_metrics, offset_ns, times, values } => {
                    let Some(ring) = self.rings.get_mut(&pid) else { continue };
                    if ring.pm.stopped || ring.pm.route.map(|r| r.0) != Some(session) {
                        continue;
                    }
                    let before = self.pm.refused;
                    let kept = pmdecode::validate(
                        &times,
                        offset_ns,
                        &values,
                        n_metrics,
                        (self.started_ns, ceiling),
                        &mut ring.pm.last_end,
                        &mut self.pm.refused,
                    );
                    let refused = (self.pm.refused.decoder - before.decoder) + (self.pm.refused.job - before.job);
                    if refused > 0 {
                        self.stats.malformed += refused;
                        ring.note(
                            "PM samples were refused (out of order, outside the session, or values not a percentage): counted as malformed",
                            notes,
                        );
                    }
                    self.pm.samples += kept.len() as u64;
                    for s in kept {
                        push_pm_sample(producer, pid, s.start_ns, s.end_ns - s.start_ns, s.tensor_pct, s.sm_pct);
                    }
                }
                Outcome::Failed { pid, why } => {
                    let Some(ring) = self.rings.get_mut(&pid) else { continue };
                    if !ring.pm.stopped {
                        ring.pm.stopped = true;
                        ring.note(&format!("PM sampling stopped: {why}; its PM samples end here"), notes);
                    }
                }
            }
        }
        self.stats.pm_decoded = self.pm.samples;
        self.stats.pm_refused = self.pm.refused;
        self.stats.pm_queue_full = self.pm.queue_full;
    }

    /// At the session's end: waits (up to `timeout`) for the images the decoders still hold,
    /// stores their samples, ends the decoders and notes what they cost ghostprof.
    pub fn settle_pm(&mut self, producer: &mut Producer, timeout: std::time::Duration) {
        if !self.pm.any() {
            return;
        }
        let deadline = std::time::Instant::now() + timeout;
        let mut notes = Vec::new();
        while self.pm.in_flight > 0 && std::time::Instant::now() < deadline {
            let outcomes = self.pm.ready(std::time::Duration::from_millis(50));
            self.pm_outcomes(outcomes, producer, &mut notes);
        }
        let cpu_ns = self.pm.close();
        let outcomes = self.pm.ready(std::time::Duration::ZERO);
        self.pm_outcomes(outcomes, producer, &mut notes);
        for n in notes {
            self.note(n);
        }
        self.note(format!(
            "PM samples evaluated by ghostprof's decoder, not in the job: {} samples, {:.1} ms of ghostprof's CPU",
            self.pm.samples,
            cpu_ns as f64 / 1e6
        ));
        producer.set_drops(DropCause::Malformed, self.stats.malformed);
        producer.flush();
    }

    /// The PM decoder processes running now: (pid, uid).
    pub fn pm_decoders(&self) -> Vec<(u32, u32)> {
        self.pm.processes()
    }

    /// Switches collection on or off in every open ring, which stays open (`watch`'s duty
    /// cycle: each ring's names stay known).
    pub fn set_collecting(&mut self, on: bool) {
        for ring in self.rings.values() {
            if on {
                ring.consumer.resume();
            } else {
                ring.consumer.detach();
            }
        }
    }

    /// Closes the ring of `pid` (its process is gone and its ring drained) and forgets it was
    /// refused, so a long-running session's state does not grow with every process it saw.
    pub fn forget(&mut self, pid: u32) {
        self.rings.remove(&pid);
        self.refused.remove(&pid);
        if let Some(t) = self.traced.as_mut() {
            t.remove(&pid);
        }
    }

    /// Pids whose ring is open.
    pub fn open_rings(&self) -> Vec<u32> {
        self.rings.keys().copied().collect()
    }

    /// Per open ring, the collection sessions its library has closed so far
    /// ([`wire::SESSION_END`] records drained).
    pub fn session_ends(&self) -> BTreeMap<u32, u64> {
        self.rings.iter().map(|(&pid, r)| (pid, r.ends)).collect()
    }

    /// The rings of `before` (each ring's closed-session count then) whose library has not closed
    /// a session since, of processes still alive.
    pub fn sessions_open(&self, before: &BTreeMap<u32, u64>) -> Vec<u32> {
        before
            .iter()
            .filter(|&(pid, n)| {
                self.rings.get(pid).is_some_and(|r| r.ends <= *n)
                    && std::path::Path::new(&format!("/proc/{pid}")).exists()
            })
            .map(|(&pid, _)| pid)
            .collect()
    }

    /// Drains into `producer` until every ring of `before` (its closed-session count then)
    /// whose process is alive has closed one more session (its library's `SESSION_END`: CUPTI
    /// disabled and flushed, PM's last samples decoded), for at most `timeout`, draining every
    /// `every`. A library that has not by then (an older one, or a job that will not) gets a
    /// note: its last device records may be missing. Returns those pids.
    pub fn wait_session_ends(
        &mut self,
        producer: &mut Producer,
        before: &BTreeMap<u32, u64>,
        timeout: std::time::Duration,
        every: std::time::Duration,
    ) -> Vec<u32> {
        let t = std::time::Instant::now();
        loop {
            self.drain(producer);
            let waiting = self.sessions_open(before);
            if waiting.is_empty() {
                return waiting;
            }
            if t.elapsed() >= timeout {
                for pid in &waiting {
                    self.note(format!(
                        "process {pid}: its injection library did not confirm the end of collection within {:.1} s: \
                         device records it flushed after that are not in the trace",
                        timeout.as_secs_f64()
                    ));
                }
                return waiting;
            }
            std::thread::sleep(every);
        }
    }

    /// Switches collection off in every ring (the injection libraries go dormant).
    pub fn detach_all(&mut self) {
        for ring in self.rings.values() {
            ring.consumer.detach();
        }
    }
}

/// The [`CollOp`] of an NCCL function name as the profiler plugin API gives it
/// (`ncclFuncToString`: "AllReduce", …).
pub fn coll_op_of(func: &[u8]) -> Option<CollOp> {
    Some(match func {
        b"AllReduce" => CollOp::AllReduce,
        b"AllGather" => CollOp::AllGather,
        b"ReduceScatter" => CollOp::ReduceScatter,
        b"Broadcast" => CollOp::Broadcast,
        b"Reduce" => CollOp::Reduce,
        b"Send" => CollOp::Send,
        b"Recv" => CollOp::Recv,
        b"AllToAll" => CollOp::AllToAll,
        _ => return None,
    })
}

/// The [`NcclDtype`] of an NCCL datatype name (`ncclDatatypeToString`: "ncclFloat32", …).
pub fn nccl_dtype_of(name: &[u8]) -> Option<NcclDtype> {
    Some(match name {
        b"ncclInt8" => NcclDtype::Int8,
        b"ncclUint8" => NcclDtype::Uint8,
        b"ncclInt32" => NcclDtype::Int32,
        b"ncclUint32" => NcclDtype::Uint32,
        b"ncclInt64" => NcclDtype::Int64,
        b"ncclUint64" => NcclDtype::Uint64,
        b"ncclFloat16" => NcclDtype::Float16,
        b"ncclFloat32" => NcclDtype::Float32,
        b"ncclFloat64" => NcclDtype::Float64,
        b"ncclBfloat16" => NcclDtype::Bfloat16,
        b"ncclFloat8e4m3" => NcclDtype::Float8e4m3,
        b"ncclFloat8e5m2" => NcclDtype::Float8e5m2,
        _ => return None,
    })
}

/// The trace record of one [`wire::NCCL_COLL`] record from process `pid` (its strings interned
/// within that process's `budget`).
pub fn nccl_algo(c: &wire::NcclColl<'_>, pid: u32, producer: &Producer, budget: &mut NameBudget) -> NcclAlgo {
    let signed = |v: i32| if v < 0 { u32::MAX } else { v as u32 };
    NcclAlgo {
        time_ns: c.time_ns,
        comm_hash: c.comm_hash,
        seq: c.seq,
        count: c.count,
        pid,
        tid: c.tid,
        rank: signed(c.rank),
        nranks: signed(c.nranks),
        op: coll_op_of(c.func).map_or(u32::MAX, |o| o as u32),
        dtype: nccl_dtype_of(c.datatype).map_or(u32::MAX, |d| d as u32),
        algo_id: producer.intern_bounded(&String::from_utf8_lossy(c.algo), budget),
        proto_id: producer.intern_bounded(&String::from_utf8_lossy(c.proto), budget),
        n_channels: c.n_channels as u32,
        n_warps: c.n_warps as u32,
        api_version: c.api_version as u32,
        reserved: 0,
    }
}

/// One PM sample as trace records (its interval, tensor-pipe and SM activity as fractions):
/// the same records whether the job or ghostprof's decoder evaluated it.
fn push_pm_sample(producer: &mut Producer, pid: u32, time_ns: u64, interval_ns: u64, tensor_pct: f64, sm_pct: f64) {
    for (metric, value) in [
        (Metric::SampleIntervalNs, interval_ns as f64),
        (Metric::TensorActive, tensor_pct / 100.0),
        (Metric::SmActive, sm_pct / 100.0),
    ] {
        producer.push(DeviceSample { time_ns, value, device: 0, metric: metric as u32, pid, reserved: 0 });
    }
}

/// A [`MemOp`] from a memcpy or memset record of type `$t` (same field names in both).
macro_rules! memop {
    ($ring:ident, $p:ident, $t:ty, $kind:expr) => {
        MemOp {
            start_ns: $ring.mono(u64_at($p, offset_of!($t, start))),
            end_ns: $ring.mono(u64_at($p, offset_of!($t, end))),
            bytes: u64_at($p, offset_of!($t, bytes)),
            stream: u32_at($p, offset_of!($t, streamId)) as u64,
            correlation_id: u32_at($p, offset_of!($t, correlationId)),
            device: u32_at($p, offset_of!($t, deviceId)),
            kind: $kind as u32,
            pid: $ring.pid,
        }
    };
}

impl Ring {
    fn mono(&self, cupti_ns: u64) -> u64 {
        cupti_ns.wrapping_add(self.offset_ns as u64)
    }

    /// The trace id of ring name `id`: 0 for none, `<name limit>` for one this process sent
    /// past a cap.
    fn name_of(&self, id: u32) -> u32 {
        match self.names.get(&id) {
            Some(&t) => t,
            None if id != 0 => self.caps.limit_id,
            None => 0,
        }
    }

    /// One note from this process: cut to [`MAX_NOTE_BYTES`], kept once, at most
    /// [`MAX_NOTES_PER_PROCESS`] distinct ones, then one line saying so; the rest are counted.
    fn note(&mut self, text: &str, out: &mut Vec<String>) {
        let text = truncate_utf8(text, MAX_NOTE_BYTES);
        if self.caps.notes.contains(text) {
            return;
        }
        if self.caps.notes.len() >= MAX_NOTES_PER_PROCESS {
            if self.caps.notes_refused == 0 {
                out.push(format!(
                    "process {}: more than {MAX_NOTES_PER_PROCESS} distinct notes; the rest are counted as note_limit \
                     drops",
                    self.pid
                ));
            }
            self.caps.notes_refused = self.caps.notes_refused.saturating_add(1);
            return;
        }
        self.caps.notes.insert(text.to_string());
        out.push(format!("process {}: {text}", self.pid));
    }

    /// One ring record → trace records. False when it is malformed.
    fn handle(&mut self, rec: &Popped, producer: &mut Producer, notes: &mut Vec<String>, pm: &mut Decoders) -> bool {
        let p = &rec.payload;
        match rec.kind {
            wire::ACTIVITY => self.activity(p, producer),
            wire::NAME if p.len() >= 4 => {
                let id = u32_at(p, 0);
                let trace_id = if !self.names.contains_key(&id) && self.names.len() >= MAX_NAME_IDS {
                    // The id map is full: the name is refused whatever it is.
                    self.caps.names.refused = self.caps.names.refused.saturating_add(1);
                    producer.intern(NAME_LIMIT)
                } else {
                    // Cut before decoding: a 64 KiB name is never copied whole.
                    let name = String::from_utf8_lossy(&p[4..p.len().min(4 + MAX_NAME_BYTES)]);
                    let refused = self.caps.names.refused;
                    let t = producer.intern_bounded(&name, &mut self.caps.names);
                    if self.caps.names.refused == refused {
                        self.names.insert(id, t);
                    }
                    t
                };
                if self.caps.limit_id == 0 && self.caps.names.refused > 0 {
                    self.caps.limit_id = trace_id;
                }
                true
            }
            wire::CLOCK if p.len() >= 24 => {
                let (cupti, mono, err) = (u64_at(p, 0), u64_at(p, 8), u64_at(p, 16));
                self.offset_ns = mono.wrapping_sub(cupti) as i64;
                producer.push(ClockSync {
                    monotonic_ns: mono,
                    other_ns: cupti,
                    uncertainty_ns: err,
                    domain: ClockDomain::Cupti as u32,
                    device: 0,
                });
                true
            }
            wire::STATUS => {
                self.note(&String::from_utf8_lossy(&p[..p.len().min(MAX_NOTE_BYTES)]), notes);
                true
            }
            wire::PM_SAMPLE if p.len() >= 32 => {
                let (start, end) = (u64_at(p, 0), u64_at(p, 8));
                let (tensor, sm) = (f64::from_bits(u64_at(p, 16)), f64::from_bits(u64_at(p, 24)));
                if end < start || !tensor.is_finite() || !sm.is_finite() {
                    return false;
                }
                push_pm_sample(producer, self.pid, self.mono(start), end - start, tensor, sm);
                true
            }
            wire::PM_PART => self.pm_part(p, notes, pm),
            wire::SESSION_END => {
                self.ends = self.ends.saturating_add(1);
                true
            }
            wire::NCCL_COLL => match wire::NcclColl::decode(p) {
                Some(c) => {
                    let rec = nccl_algo(&c, self.pid, producer, &mut self.caps.names);
                    producer.push(rec);
                    true
                }
                None => false,
            },
            // The job's own account of what the library cost it (cumulative): stored as it
            // comes; the report reads each process's last one and clamps it to the job's CPU.
            wire::COST => match wire::Cost::decode(p) {
                Some(c) => {
                    producer.push(ProfilerCost {
                        time_ns: crate::clock::monotonic_ns(),
                        callbacks: c.callbacks,
                        callback_ns: c.callback_ns,
                        buffer_ns: c.buffer_ns,
                        thread_ns: c.thread_ns,
                        job_cpu_ns: c.process_cpu_ns,
                        pid: self.pid,
                        reserved: 0,
                    });
                    true
                }
                None => false,
            },
            wire::CUPTI_DROPPED if p.len() >= 8 => {
                let value = u64_at(p, 0);
                match self.caps.cupti_dropped.read(value, crate::clock::monotonic_ns()) {
                    CounterReading::Accepted => {
                        self.cupti_drops = self.caps.cupti_dropped.accepted;
                        true
                    }
                    CounterReading::Refused { new } => {
                        if new && self.caps.cupti_dropped.refusals == 1 {
                            let before = self.caps.cupti_dropped.accepted;
                            self.note(
                                &format!(
                                    "it reported {value} records dropped by CUPTI after {before}, which it cannot \
                                     have; ignored until it is plausible again"
                                ),
                                notes,
                            );
                        }
                        self.caps.counters_refused += 1;
                        // Counted as malformed by the caller.
                        false
                    }
                }
            }
            _ => false,
        }
    }

    /// One part of a PM blob; a whole setup goes to a decoder, a whole image to evaluation.
    /// False (malformed) for a part that does not fit the blob being assembled.
    fn pm_part(&mut self, p: &[u8], notes: &mut Vec<String>, decoders: &mut Decoders) -> bool {
        let Some((part, bytes)) = wire::PmPart::decode(p) else {
            decoders.refused.job += 1;
            return false;
        };
        if self.pm.stopped {
            return true;
        }
        if part.total as usize > wire::PM_BLOB_MAX {
            decoders.refused.job += 1;
            self.pm.blob = None;
            return false;
        }
        if part.offset == 0 {
            // A blob cut short by a full ring is dropped when the next one starts.
            self.pm.blob = Some((part.session, part.seq, part.total, Vec::with_capacity(part.total as usize)));
        }
        let fits = matches!(&self.pm.blob, Some((s, q, t, b))
            if (*s, *q, *t) == (part.session, part.seq, part.total) && b.len() == part.offset as usize);
        if !fits {
            self.pm.blob = None;
            decoders.refused.job += 1;
            return false;
        }
        let Some((session, seq, total, mut blob)) = self.pm.blob.take() else { return false };
        blob.extend_from_slice(bytes);
        if blob.len() < total as usize {
            self.pm.blob = Some((session, seq, total, blob));
            return true;
        }
        if seq == 0 {
            let Some(setup) = wire::PmSetup::decode(&blob) else {
                decoders.refused.job += 1;
                return false;
            };
            let n_metrics = setup.metrics.len();
            if n_metrics < 2 {
                decoders.refused.job += 1;
                return false;
            }
            match decoders.setup(self.pid, &blob) {
                Ok(route) => self.pm.route = Some((session, route, n_metrics)),
                Err(why) => {
                    self.pm.stopped = true;
                    self.note(&format!("PM sampling stopped: no decoder ({why}); no PM samples"), notes);
                }
            }
            return true;
        }
        let Some((_, route, n_metrics)) = self.pm.route.filter(|r| r.0 == session) else {
            // An image of a session whose setup never arrived whole.
            decoders.refused.job += 1;
            return false;
        };
        let Some(image) = wire::PmImage::decode(&blob) else {
            decoders.refused.job += 1;
            return false;
        };
        // The clock offset of now: the one in-job evaluation's samples would have been mapped by.
        let bytes = image.image();
        match decoders.eval(route, self.pid, session, n_metrics, self.offset_ns, image.times, bytes) {
            Ok(true) => {}
            Ok(false) => self.note("PM images were dropped: ghostprof's decoder fell behind", notes),
            Err(why) => {
                self.pm.stopped = true;
                self.note(&format!("PM sampling stopped: {why}; its PM samples end here"), notes);
            }
        }
        true
    }

    fn activity(&mut self, p: &[u8], producer: &mut Producer) -> bool {
        if p.len() < 4 {
            return false;
        }
        let kind = u32_at(p, 0);
        let pid = self.pid;
        if kind == K::CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL as u32 || kind == K::CUPTI_ACTIVITY_KIND_KERNEL as u32 {
            type T = cs::CUpti_ActivityKernel9;
            if p.len() < size_of::<T>() {
                return false;
            }
            let (start, end) = (u64_at(p, offset_of!(T, start)), u64_at(p, offset_of!(T, end)));
            if end < start {
                return false;
            }
            let name = u64_at(p, offset_of!(T, name)) as u32;
            let shared = u32_at(p, offset_of!(T, staticSharedMemory))
                .saturating_add(u32_at(p, offset_of!(T, dynamicSharedMemory)));
            producer.push(KernelExec {
                start_ns: self.mono(start),
                end_ns: self.mono(end),
                stream: u32_at(p, offset_of!(T, streamId)) as u64,
                correlation_id: u32_at(p, offset_of!(T, correlationId)),
                device: u32_at(p, offset_of!(T, deviceId)),
                name_id: self.name_of(name),
                grid_x: u32_at(p, offset_of!(T, gridX)),
                grid_y: u32_at(p, offset_of!(T, gridY)),
                grid_z: u32_at(p, offset_of!(T, gridZ)),
                block_x: u32_at(p, offset_of!(T, blockX)),
                block_y: u32_at(p, offset_of!(T, blockY)),
                block_z: u32_at(p, offset_of!(T, blockZ)),
                registers_per_thread: u16_at(p, offset_of!(T, registersPerThread)) as u32,
                shared_mem_bytes: shared,
                graph_id: u32_at(p, offset_of!(T, graphId)),
                pid,
                flags: 0,
            });
        } else if kind == K::CUPTI_ACTIVITY_KIND_MEMCPY as u32 {
            type T = cs::CUpti_ActivityMemcpy5;
            if p.len() < size_of::<T>() {
                return false;
            }
            let copy = match p[offset_of!(T, copyKind)] {
                1 => MemOpKind::HtoD,
                2 => MemOpKind::DtoH,
                8 => MemOpKind::DtoD,
                9 => MemOpKind::HtoH,
                10 => MemOpKind::PtoP,
                _ => MemOpKind::Unknown,
            };
            producer.push(memop!(self, p, T, copy));
        } else if kind == K::CUPTI_ACTIVITY_KIND_MEMSET as u32 {
            type T = cs::CUpti_ActivityMemset4;
            if p.len() < size_of::<T>() {
                return false;
            }
            producer.push(memop!(self, p, T, MemOpKind::Memset));
        } else if kind == K::CUPTI_ACTIVITY_KIND_DRIVER as u32 || kind == K::CUPTI_ACTIVITY_KIND_RUNTIME as u32 {
            type T = cs::CUpti_ActivityAPI;
            if p.len() < size_of::<T>() {
                return false;
            }
            let domain = if kind == K::CUPTI_ACTIVITY_KIND_DRIVER as u32 {
                ApiDomain::CudaDriver
            } else {
                ApiDomain::CudaRuntime
            };
            let call = ApiCall {
                start_ns: self.mono(u64_at(p, offset_of!(T, start))),
                end_ns: self.mono(u64_at(p, offset_of!(T, end))),
                stream: 0,
                arg: 0,
                // The ring's owner, never the payload's processId: a record cannot speak for
                // another process.
                pid,
                tid: u32_at(p, offset_of!(T, threadId)),
                correlation_id: u32_at(p, offset_of!(T, correlationId)),
                call_id: u32_at(p, offset_of!(T, cbid)),
                domain: domain as u32,
                status: u32_at(p, offset_of!(T, returnValue)) as i32,
            };
            if call.is_launch() {
                self.launches = self.launches.saturating_add(1);
            }
            producer.push(call);
        } else if kind == K::CUPTI_ACTIVITY_KIND_SYNCHRONIZATION as u32 {
            type T = cs::CUpti_ActivitySynchronization;
            if p.len() < size_of::<T>() {
                return false;
            }
            producer.push(ApiCall {
                start_ns: self.mono(u64_at(p, offset_of!(T, start))),
                end_ns: self.mono(u64_at(p, offset_of!(T, end))),
                stream: u32_at(p, offset_of!(T, streamId)) as u64,
                arg: u32_at(p, offset_of!(T, cudaEventId)) as u64,
                pid,
                tid: 0,
                correlation_id: u32_at(p, offset_of!(T, correlationId)),
                call_id: SYNC_CALL_BASE + u32_at(p, offset_of!(T, type_)),
                domain: SYNC_DOMAIN as u32,
                status: 0,
            });
        } else if kind == K::CUPTI_ACTIVITY_KIND_MARKER as u32 {
            type T = cs::CUpti_ActivityMarker2;
            if p.len() < size_of::<T>() {
                return false;
            }
            let flags = u32_at(p, offset_of!(T, flags));
            let id = u32_at(p, offset_of!(T, id));
            let ts = self.mono(u64_at(p, offset_of!(T, timestamp)));
            if flags & 2 != 0 {
                let name = u64_at(p, offset_of!(T, name)) as u32;
                let name_id = self.name_of(name);
                if self.open_ranges.len() >= MAX_OPEN_RANGES && !self.open_ranges.contains_key(&id) {
                    return false;
                }
                self.open_ranges.insert(id, (ts, name_id));
            } else if flags & 4 != 0 {
                if let Some((start, name_id)) = self.open_ranges.remove(&id) {
                    producer.push(StepMarker {
                        start_ns: start,
                        end_ns: ts.max(start),
                        step: self.steps,
                        pid,
                        name_id,
                        source: StepSource::Nvtx as u32,
                        device: 0,
                    });
                    self.steps += 1;
                }
            }
        }
        // Other kinds are skipped (a newer library may send more).
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_counters_grow_only_plausibly() {
        let mut c = JobCounter::new(1_000);
        assert_eq!(c.read(COUNTER_SLACK, 1_000), CounterReading::Accepted);
        // One second later: up to 16 Mi + 100 M more.
        let most = COUNTER_SLACK + COUNTER_SLACK + 100_000_000;
        assert_eq!(c.read(most + 1, 1_000_001_000), CounterReading::Refused { new: true });
        assert_eq!(c.read(most + 1, 1_000_001_000), CounterReading::Refused { new: false });
        assert_eq!(c.accepted, COUNTER_SLACK, "a refused reading is not added");
        assert_eq!(c.read(most, 1_000_001_000), CounterReading::Accepted);
        assert_eq!(c.read(most - 1, 1_000_001_000), CounterReading::Refused { new: true }, "never backwards");
        assert_eq!(c.read(u64::MAX, u64::MAX), CounterReading::Refused { new: true });
        assert_eq!(c.accepted, most);
    }
}
