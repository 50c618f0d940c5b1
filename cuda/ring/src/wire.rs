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

/// Driver launch entry points (`CUpti_driver_api_trace_cbid`): cuLaunchKernel(_ptsz),
/// cuLaunchKernelEx(_ptsz), cuLaunchCooperativeKernel(_ptsz), cuGraphLaunch(_ptsz). The library
/// records each at its exit (a `CUpti_ActivityAPI`-shaped [`ACTIVITY`] record, kind DRIVER).
pub const LAUNCH_DRIVER_CBIDS: [u32; 8] = [307, 442, 652, 653, 477, 478, 514, 515];
/// Runtime launch entry points (`CUpti_runtime_api_trace_cbid`): cudaLaunchKernel(_ptsz),
/// cudaLaunchKernelExC(_ptsz), cudaLaunchCooperativeKernel(_ptsz), cudaGraphLaunch(_ptsz). A
/// kernel launched through the runtime carries the runtime call's correlation id.
pub const LAUNCH_RUNTIME_CBIDS: [u32; 8] = [211, 214, 430, 431, 269, 270, 311, 312];

/// Whether callback id `cbid` of the driver (`driver`) or runtime API is a kernel or graph launch.
pub fn is_launch_cbid(driver: bool, cbid: u32) -> bool {
    if driver {
        LAUNCH_DRIVER_CBIDS.contains(&cbid)
    } else {
        LAUNCH_RUNTIME_CBIDS.contains(&cbid)
    }
}

/// `time_ns u64` (CLOCK_MONOTONIC): a collection session ended (its consumer cleared the
/// control word): CUPTI's activity kinds are disabled and flushed, the PM session's last
/// samples decoded, and every record of the session is in the ring before this one. Sent once
/// per session, by the library's control thread.
pub const SESSION_END: u16 = 10;

/// One part of a PM blob (PM decode in the collector: the library ships what the device
/// decoded, ghostprof evaluates it): a [`PmPart`] header, then bytes `offset..offset + len` of
/// blob `seq` of PM session `session`. Blob 0 of a session is its [`PmSetup`], every later
/// one a [`PmImage`]; a blob's parts are sent in order, back to back.
pub const PM_PART: u16 = 9;

/// Bytes of a [`PM_PART`] header.
pub const PM_PART_HEADER: usize = 16;
/// Largest blob the collector accepts (bytes).
pub const PM_BLOB_MAX: usize = 16 << 20;
/// Largest counter-data image a [`PmImage`] may declare (bytes; the zeros after its shipped
/// prefix are put back by the collector).
pub const PM_IMAGE_MAX: usize = 64 << 20;
/// Most samples one [`PmImage`] may carry.
pub const PM_SAMPLES_MAX: usize = 65_536;
/// Most metrics, and the longest metric name, chip name and availability image a
/// [`PmSetup`] may carry.
pub const PM_METRICS_MAX: usize = 8;
/// Longest metric or chip name (bytes).
pub const PM_NAME_MAX: usize = 256;
/// Longest counter-availability image (bytes).
pub const PM_AVAILABILITY_MAX: usize = 1 << 20;

/// The header of a [`PM_PART`] record: `session u32, seq u32, total u32, offset u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmPart {
    /// The library's PM session (a new one after each start).
    pub session: u32,
    /// The blob's number in the session (0: the setup).
    pub seq: u32,
    /// The blob's length.
    pub total: u32,
    /// Where this part's bytes go in the blob.
    pub offset: u32,
}

impl PmPart {
    /// Splits `blob` into [`PM_PART`] payloads of at most `max_payload` bytes and hands each
    /// to `push` (false from `push`: the rest is not sent, and false is returned).
    pub fn send(session: u32, seq: u32, blob: &[u8], max_payload: usize, mut push: impl FnMut(&[u8]) -> bool) -> bool {
        let step = max_payload.saturating_sub(PM_PART_HEADER).max(1);
        let mut payload = Vec::with_capacity(max_payload.min(blob.len() + PM_PART_HEADER));
        let mut offset = 0usize;
        loop {
            let end = (offset + step).min(blob.len());
            payload.clear();
            for v in [session, seq, blob.len() as u32, offset as u32] {
                payload.extend_from_slice(&v.to_le_bytes());
            }
            payload.extend_from_slice(&blob[offset..end]);
            if !push(&payload) {
                return false;
            }
            offset = end;
            if offset >= blob.len() {
                return true;
            }
        }
    }

    /// The header and the bytes of a [`PM_PART`] payload; None when it is shorter than the
    /// header or its bytes run past `total`.
    pub fn decode(p: &[u8]) -> Option<(PmPart, &[u8])> {
        let at = |i: usize| -> Option<u32> { Some(u32::from_le_bytes(p.get(i * 4..i * 4 + 4)?.try_into().ok()?)) };
        let part = PmPart { session: at(0)?, seq: at(1)?, total: at(2)?, offset: at(3)? };
        let bytes = &p[PM_PART_HEADER..];
        (part.offset as u64 + bytes.len() as u64 <= part.total as u64).then_some((part, bytes))
    }
}

/// Reads little-endian fields off the front of a byte slice (None past its end).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }
    fn sized(&mut self, max: usize) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > max {
            return None;
        }
        self.bytes(n)
    }
}

/// Blob 0 of a PM session: what evaluating its images needs besides the images (the host
/// API's inputs), `interval_ns u64, chip (len u32 + bytes), availability (len u32 + bytes),
/// metric count u32, each metric (len u32 + bytes)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmSetup<'a> {
    /// The sampling interval (GPU time, ns).
    pub interval_ns: u64,
    /// `cuptiDeviceGetChipName`'s name.
    pub chip: &'a [u8],
    /// `cuptiPmSamplingGetCounterAvailability`'s image.
    pub availability: &'a [u8],
    /// The metrics configured, in the order evaluation returns them.
    pub metrics: Vec<&'a [u8]>,
}

impl<'a> PmSetup<'a> {
    /// The blob.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.chip.len() + self.availability.len());
        out.extend_from_slice(&self.interval_ns.to_le_bytes());
        for b in [self.chip, self.availability] {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        out.extend_from_slice(&(self.metrics.len() as u32).to_le_bytes());
        for m in &self.metrics {
            out.extend_from_slice(&(m.len() as u32).to_le_bytes());
            out.extend_from_slice(m);
        }
        out
    }

    /// Reads a blob written by [`PmSetup::encode`]; None when it is cut short or over a cap
    /// ([`PM_NAME_MAX`], [`PM_AVAILABILITY_MAX`], [`PM_METRICS_MAX`]).
    pub fn decode(blob: &'a [u8]) -> Option<Self> {
        let mut r = Reader(blob);
        let interval_ns = r.u64()?;
        let chip = r.sized(PM_NAME_MAX)?;
        let availability = r.sized(PM_AVAILABILITY_MAX)?;
        let n = r.u32()? as usize;
        if n > PM_METRICS_MAX {
            return None;
        }
        let metrics = (0..n).map(|_| r.sized(PM_NAME_MAX)).collect::<Option<Vec<_>>>()?;
        Some(PmSetup { interval_ns, chip, availability, metrics })
    }
}

/// A later blob of a PM session: the samples one decode completed, `samples u32, image_bytes
/// u32, samples × (start u64, end u64: CUPTI time, from `cuptiPmSamplingCounterDataGetSampleInfo`,
/// which needs the job's sampling object), then the counter-data image up to its last non-zero
/// byte` (the rest of its `image_bytes` are zeros: only the filled part travels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PmImage<'a> {
    /// Each sample's [start, end) in CUPTI time.
    pub times: Vec<(u64, u64)>,
    /// The whole image's size.
    pub image_bytes: usize,
    /// The image up to its last non-zero byte.
    pub prefix: &'a [u8],
}

impl<'a> PmImage<'a> {
    /// The blob of `times` and `image` (its trailing zeros left out).
    pub fn encode(times: &[(u64, u64)], image: &[u8]) -> Vec<u8> {
        let used = image.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let mut out = Vec::with_capacity(8 + times.len() * 16 + used);
        out.extend_from_slice(&(times.len() as u32).to_le_bytes());
        out.extend_from_slice(&(image.len() as u32).to_le_bytes());
        for (a, b) in times {
            out.extend_from_slice(&a.to_le_bytes());
            out.extend_from_slice(&b.to_le_bytes());
        }
        out.extend_from_slice(&image[..used]);
        out
    }

    /// Reads a blob written by [`PmImage::encode`]; None when it is cut short, over a cap
    /// ([`PM_SAMPLES_MAX`], [`PM_IMAGE_MAX`]) or its prefix is longer than its image.
    pub fn decode(blob: &'a [u8]) -> Option<Self> {
        let mut r = Reader(blob);
        let n = r.u32()? as usize;
        let image_bytes = r.u32()? as usize;
        if n > PM_SAMPLES_MAX || image_bytes > PM_IMAGE_MAX {
            return None;
        }
        let times = (0..n).map(|_| Some((r.u64()?, r.u64()?))).collect::<Option<Vec<_>>>()?;
        let prefix = r.0;
        (prefix.len() <= image_bytes).then_some(PmImage { times, image_bytes, prefix })
    }

    /// The whole image: the prefix and its zeros.
    pub fn image(&self) -> Vec<u8> {
        let mut image = vec![0u8; self.image_bytes];
        image[..self.prefix.len()].copy_from_slice(self.prefix);
        image
    }
}

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

#[cfg(test)]
mod pm_tests {
    use super::*;

    #[test]
    fn pm_blobs_round_trip_through_parts() {
        let setup = PmSetup {
            interval_ns: 50_000,
            chip: b"GH100",
            availability: &[7u8; 100_000],
            metrics: vec![b"a.pct".as_slice(), b"b.pct".as_slice()],
        };
        let blob = setup.encode();
        let mut parts = Vec::new();
        assert!(PmPart::send(3, 0, &blob, 65_536, |p| {
            parts.push(p.to_vec());
            true
        }));
        assert_eq!(parts.len(), 2, "100 KB in parts of 64 KiB");
        let mut whole = Vec::new();
        for p in &parts {
            let (h, bytes) = PmPart::decode(p).unwrap_or_else(|| panic!("part"));
            assert_eq!((h.session, h.seq, h.total as usize, h.offset as usize), (3, 0, blob.len(), whole.len()));
            whole.extend_from_slice(bytes);
        }
        assert_eq!(PmSetup::decode(&whole), Some(setup));
        let mut image = vec![0u8; 4096];
        image[..10].copy_from_slice(b"GPSIMPM1\x05\x00");
        let times = [(10u64, 20u64), (20, 30)];
        let blob = PmImage::encode(&times, &image);
        assert_eq!(blob.len(), 8 + 32 + 9, "only the image's filled part travels");
        let back = PmImage::decode(&blob).unwrap_or_else(|| panic!("image"));
        assert_eq!(back.times, times);
        assert_eq!(back.image(), image);
        for cut in 0..blob.len().min(40) {
            assert_eq!(PmImage::decode(&blob[..cut]), None, "cut at {cut}");
        }
        let mut lying = blob.clone();
        lying[4..8].copy_from_slice(&2u32.to_le_bytes()); // image smaller than its prefix
        assert_eq!(PmImage::decode(&lying), None);
        lying[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(PmImage::decode(&lying), None);
        let mut part = vec![0u8; 20];
        part[8..12].copy_from_slice(&3u32.to_le_bytes()); // total 3, 4 bytes at offset 0
        assert_eq!(PmPart::decode(&part), None);
        assert_eq!(PmPart::decode(&part[..15]), None);
    }
}
