//! Ring record kinds from the injection library to ghostprof (payloads little-endian).

/// A CUPTI activity record, raw (its first u32 is the `CUpti_ActivityKind`); name pointers
/// replaced by [`NAME`] ids.
pub const ACTIVITY: u16 = 1;
/// `id u32, UTF-8 bytes`: a kernel or marker name.
pub const NAME: u16 = 2;
/// `cupti_ns u64, monotonic_ns u64, uncertainty_ns u64`: a clock pair.
pub const CLOCK: u16 = 3;
/// UTF-8 text: something ghostprof should tell the user (no CUPTI, another subscriber, …).
pub const STATUS: u16 = 4;
/// `count u64`: records CUPTI dropped (cumulative).
pub const CUPTI_DROPPED: u16 = 5;
/// `start_ns u64, end_ns u64 (CUPTI time), tensor_pct f64, sm_active_pct f64`: one PM sample
/// of device 0.
pub const PM_SAMPLE: u16 = 6;
/// One NCCL collective as NCCL's profiler plugin API described it at its start event (the
/// injection library is also NCCL's profiler plugin): [`NcclColl`], encoded by
/// [`NcclColl::encode`] and read back by [`NcclColl::decode`].
pub const NCCL_COLL: u16 = 7;
/// What the injection library has cost the job since collection started: [`Cost`], encoded by
/// [`Cost::encode`] and read back by [`Cost::decode`]; cumulative, sent every 50 ms and at exit.
pub const COST: u16 = 8;

/// Bytes of a [`COST`] payload.
pub const COST_BYTES: usize = 40;

/// The payload of a [`COST`] record (all u64, ns unless said):
///
/// ```text
///  0 callbacks        ghostprof's CUPTI callbacks run on the job's threads (launch enter/exit)
///  8 callback_ns      CPU time in them (one in 16 per thread timed, scaled to all)
/// 16 buffer_ns        CPU time in CUPTI's buffer-completion callbacks (walk + forwarding)
/// 24 thread_ns        CPU time of the library's control thread, its start and its exit handler
/// 32 process_cpu_ns   CPU time of the whole process (every thread) over the same interval
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    /// Callbacks run on the job's threads.
    pub callbacks: u64,
    /// CPU time in those callbacks, ns.
    pub callback_ns: u64,
    /// CPU time in buffer-completion callbacks, ns.
    pub buffer_ns: u64,
    /// CPU time of the library's own thread, start and exit handler, ns.
    pub thread_ns: u64,
    /// CPU time of the whole process over the same interval, ns.
    pub process_cpu_ns: u64,
}

impl Cost {
    /// The payload.
    pub fn encode(&self) -> [u8; COST_BYTES] {
        let mut out = [0u8; COST_BYTES];
        for (i, v) in [self.callbacks, self.callback_ns, self.buffer_ns, self.thread_ns, self.process_cpu_ns]
            .into_iter()
            .enumerate()
        {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Reads a payload written by [`Cost::encode`]; None when it is too short (bytes past
    /// [`COST_BYTES`] are ignored: room to grow).
    pub fn decode(p: &[u8]) -> Option<Self> {
        let at = |i: usize| -> Option<u64> { Some(u64::from_le_bytes(p.get(i * 8..i * 8 + 8)?.try_into().ok()?)) };
        Some(Cost {
            callbacks: at(0)?,
            callback_ns: at(1)?,
            buffer_ns: at(2)?,
            thread_ns: at(3)?,
            process_cpu_ns: at(4)?,
        })
    }

    /// CPU time the library cost the job: callbacks + buffers + its own thread (saturating).
    pub fn total_ns(&self) -> u64 {
        self.callback_ns.saturating_add(self.buffer_ns).saturating_add(self.thread_ns)
    }
}

/// Bytes of an [`NCCL_COLL`] payload before its strings.
pub const NCCL_COLL_FIXED: usize = 48;
/// Longest string an [`NCCL_COLL`] record carries (longer ones are cut).
pub const NCCL_COLL_STR_MAX: usize = 63;
/// Largest [`NCCL_COLL`] payload.
pub const NCCL_COLL_MAX: usize = NCCL_COLL_FIXED + 4 * (1 + NCCL_COLL_STR_MAX);

/// The payload of an [`NCCL_COLL`] record:
///
/// ```text
///  0 time_ns u64      CLOCK_MONOTONIC when NCCL started the collective's profiler event
///  8 comm_hash u64    NCCL's commHash of the communicator (the same on every rank)
/// 16 seq u64          NCCL's seqNumber: per communicator *and* function, from 0
/// 24 count u64        elements, as the descriptor's count
/// 32 tid u32          thread that started the event
/// 36 rank i32         rank in the communicator (-1 unknown)
/// 40 nranks i32       ranks in the communicator (-1 unknown: plugin API before v4)
/// 44 n_channels u8, 45 n_warps u8, 46 api_version u8 (the plugin API NCCL used), 47 reserved
/// 48 func, datatype, algo, proto: each `len u8` + that many bytes (NCCL's own names:
///    "AllReduce", "ncclFloat32", "RING", "SIMPLE")
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NcclColl<'a> {
    /// When NCCL started the collective's profiler event (CLOCK_MONOTONIC ns).
    pub time_ns: u64,
    /// NCCL's commHash: the communicator, the same on every rank.
    pub comm_hash: u64,
    /// NCCL's seqNumber: per communicator and operation, from 0.
    pub seq: u64,
    /// Elements (the descriptor's count).
    pub count: u64,
    /// The calling thread.
    pub tid: u32,
    /// Rank in the communicator (-1 unknown).
    pub rank: i32,
    /// Ranks in the communicator (-1 unknown: plugin API before v4).
    pub nranks: i32,
    /// Channels NCCL used.
    pub n_channels: u8,
    /// Warps per channel.
    pub n_warps: u8,
    /// The profiler plugin API version NCCL used.
    pub api_version: u8,
    /// NCCL's function name ("AllReduce").
    pub func: &'a [u8],
    /// NCCL's datatype name ("ncclFloat32").
    pub datatype: &'a [u8],
    /// NCCL's algorithm name ("RING").
    pub algo: &'a [u8],
    /// NCCL's protocol name ("SIMPLE").
    pub proto: &'a [u8],
}

impl<'a> NcclColl<'a> {
    /// Writes the payload into `out`; returns its length. Strings longer than
    /// [`NCCL_COLL_STR_MAX`] are cut.
    pub fn encode(&self, out: &mut [u8; NCCL_COLL_MAX]) -> usize {
        out[0..8].copy_from_slice(&self.time_ns.to_le_bytes());
        out[8..16].copy_from_slice(&self.comm_hash.to_le_bytes());
        out[16..24].copy_from_slice(&self.seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.count.to_le_bytes());
        out[32..36].copy_from_slice(&self.tid.to_le_bytes());
        out[36..40].copy_from_slice(&self.rank.to_le_bytes());
        out[40..44].copy_from_slice(&self.nranks.to_le_bytes());
        out[44] = self.n_channels;
        out[45] = self.n_warps;
        out[46] = self.api_version;
        out[47] = 0;
        let mut at = NCCL_COLL_FIXED;
        for s in [self.func, self.datatype, self.algo, self.proto] {
            let s = &s[..s.len().min(NCCL_COLL_STR_MAX)];
            out[at] = s.len() as u8;
            out[at + 1..at + 1 + s.len()].copy_from_slice(s);
            at += 1 + s.len();
        }
        at
    }

    /// Reads a payload written by [`NcclColl::encode`]; None when it is too short or a string
    /// runs past its end (bytes after the last string are ignored: room to grow).
    pub fn decode(p: &'a [u8]) -> Option<Self> {
        if p.len() < NCCL_COLL_FIXED {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(p[at..at + 8].try_into().unwrap_or_default());
        let u32_at = |at: usize| u32::from_le_bytes(p[at..at + 4].try_into().unwrap_or_default());
        let mut at = NCCL_COLL_FIXED;
        let mut strs: [&[u8]; 4] = [&[]; 4];
        for s in &mut strs {
            let len = *p.get(at)? as usize;
            *s = p.get(at + 1..at + 1 + len)?;
            at += 1 + len;
        }
        Some(NcclColl {
            time_ns: u64_at(0),
            comm_hash: u64_at(8),
            seq: u64_at(16),
            count: u64_at(24),
            tid: u32_at(32),
            rank: u32_at(36) as i32,
            nranks: u32_at(40) as i32,
            n_channels: p[44],
            n_warps: p[45],
            api_version: p[46],
            func: strs[0],
            datatype: strs[1],
            algo: strs[2],
            proto: strs[3],
        })
    }
}
