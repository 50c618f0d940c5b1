//! [`SimRecord`]: one simulated device op (kernel, memcpy, memset, collective) or one host
//! interval (driver API call, synchronization wait, host stall, NVTX-like range), all on
//! CLOCK_MONOTONIC. libcuda appends them; libcupti turns them into CUPTI activity records;
//! gpusim-train turns them into the ground truth. The layout is `#[repr(C)]` because the three
//! shared objects exchange it through `gpusim_*` C symbols.

/// What a [`SimRecord`] describes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A kernel on the device timeline; FLOPs > 0 makes it a compute kernel.
    Kernel = 1,
    /// A memcpy on the device timeline; `copy_kind` says the direction.
    Memcpy = 2,
    /// A memset on the device timeline.
    Memset = 3,
    /// A collective kernel: `[start, transfer_start)` waits for peers, the rest moves data.
    Collective = 4,
    /// A host thread inside a driver API call (`cbid` = CUPTI driver callback id).
    Api = 5,
    /// A host thread blocked in a synchronization call (`sync_kind` in `copy_kind`).
    SyncWait = 6,
    /// A host thread off-CPU for a reason outside the driver (I/O, data loader, checkpoint).
    HostStall = 7,
    /// A user range (NVTX-like), e.g. one training step.
    Marker = 8,
    /// Host time that belongs to no step (process start-up, init): idle.other if the GPU is idle.
    HostOther = 9,
}

impl RecordKind {
    /// Decode the `kind` field; unknown values come from a mismatched library version.
    pub fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::Kernel,
            2 => Self::Memcpy,
            3 => Self::Memset,
            4 => Self::Collective,
            5 => Self::Api,
            6 => Self::SyncWait,
            7 => Self::HostStall,
            8 => Self::Marker,
            9 => Self::HostOther,
            _ => return None,
        })
    }
}

/// `copy_kind` of a collective: NCCL's algorithm and protocol ids (`NCCL_ALGO_*`,
/// `NCCL_PROTO_*`) as `(algo + 1) << 4 | proto`; 0 means none was chosen.
pub fn collective_algo_code(algo: u32, proto: u32) -> u32 {
    (algo + 1) << 4 | (proto & 0xf)
}

/// The (algorithm, protocol) names of a collective's `copy_kind` (None for 0 or unknown ids).
pub fn collective_algo_names(code: u32) -> Option<(&'static str, &'static str)> {
    let algo = match (code >> 4).checked_sub(1)? {
        0 => "TREE",
        1 => "RING",
        _ => return None,
    };
    let proto = match code & 0xf {
        0 => "LL",
        1 => "LL128",
        2 => "SIMPLE",
        _ => return None,
    };
    Some((algo, proto))
}

/// CUPTI's memcpy kinds (`CUpti_ActivityMemcpyKind`) used in `copy_kind` of memcpy records.
pub const COPY_HTOD: u32 = 1;
/// Device to host (`CUPTI_ACTIVITY_MEMCPY_KIND_DTOH`).
pub const COPY_DTOH: u32 = 2;

/// Bytes kept of a kernel or range name (longer names are truncated at a char boundary).
pub const NAME_BYTES: usize = 92;

/// One record of the simulated device or of a host thread. Times are CLOCK_MONOTONIC ns.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SimRecord {
    /// A [`RecordKind`] as u32.
    pub kind: u32,
    /// Stream id (0 is the NULL stream); 0 for host records.
    pub stream_id: u32,
    /// Device ordinal.
    pub device_id: u32,
    /// Context id.
    pub context_id: u32,
    /// Links a device op to the API call that enqueued it (CUPTI correlation id).
    pub correlation_id: u32,
    /// CUPTI driver callback id for `Api` records; 0 otherwise.
    pub cbid: u32,
    /// Host thread id (gettid) that issued it.
    pub thread_id: u32,
    /// Memcpy direction for `Memcpy`, `CUpti_ActivitySynchronizationType` for `SyncWait`, the
    /// NCCL algorithm and protocol for `Collective` ([`collective_algo_code`]; 0: none).
    pub copy_kind: u32,
    /// Start (device ops: when the op began executing; host: interval start).
    pub start_ns: u64,
    /// Collectives: when the last rank arrived (transfer starts); others: equal to `start_ns`.
    pub transfer_start_ns: u64,
    /// End of execution or of the host interval.
    pub end_ns: u64,
    /// When the host enqueued it (device ops); equal to `start_ns` for host records.
    pub enqueue_ns: u64,
    /// Floating-point operations the op performs (0 = no FLOP attribution).
    pub flops: u64,
    /// Bytes moved (memcpy/memset/collective payload).
    pub bytes: u64,
    /// Grid dimensions (kernels).
    pub grid: [u32; 3],
    /// Block dimensions (kernels).
    pub block: [u32; 3],
    /// Dynamic shared memory per block (kernels).
    pub shared_mem_bytes: u32,
    /// Collective sequence number on its communicator, or 0.
    pub sequence: u32,
    /// `pthread_self()` of the issuing thread, truncated to 32 bits: CUPTI's default `threadId`
    /// (`CUPTI_ACTIVITY_THREAD_ID_TYPE_DEFAULT`); `thread_id` is the `SYSTEM` kind.
    pub pthread_id: u32,
    /// NUL-padded UTF-8 name (kernel, collective, range or API function).
    pub name: [u8; NAME_BYTES],
}

const _: () = assert!(std::mem::size_of::<SimRecord>() == 208);

impl SimRecord {
    /// A zeroed record of `kind`.
    pub fn new(kind: RecordKind) -> Self {
        Self {
            kind: kind as u32,
            stream_id: 0,
            device_id: 0,
            context_id: 1,
            correlation_id: 0,
            cbid: 0,
            thread_id: 0,
            pthread_id: 0,
            copy_kind: 0,
            start_ns: 0,
            transfer_start_ns: 0,
            end_ns: 0,
            enqueue_ns: 0,
            flops: 0,
            bytes: 0,
            grid: [1; 3],
            block: [1; 3],
            shared_mem_bytes: 0,
            sequence: 0,
            name: [0; NAME_BYTES],
        }
    }

    /// The decoded kind, if known.
    pub fn kind(&self) -> Option<RecordKind> {
        RecordKind::from_u32(self.kind)
    }

    /// Store `name`, truncated to fit with a terminating NUL.
    pub fn set_name(&mut self, name: &str) {
        let mut len = name.len().min(NAME_BYTES - 1);
        while !name.is_char_boundary(len) {
            len -= 1;
        }
        self.name = [0; NAME_BYTES];
        self.name[..len].copy_from_slice(&name.as_bytes()[..len]);
    }

    /// The stored name.
    pub fn name(&self) -> &str {
        let len = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_BYTES);
        std::str::from_utf8(&self.name[..len]).unwrap_or("")
    }

    /// Duration in ns (0 if the record is malformed).
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_truncate_on_char_boundaries() {
        let mut rec = SimRecord::new(RecordKind::Kernel);
        rec.set_name("ampere_bf16_gemm");
        assert_eq!(rec.name(), "ampere_bf16_gemm");
        let long = "é".repeat(80);
        rec.set_name(&long);
        // At most NAME_BYTES - 1 = 91 bytes, cut back to a char boundary: 45 two-byte chars.
        assert_eq!(rec.name().len(), 90);
    }
}
