//! CUPTI activity record layouts (`cupti_activity.h` / `cupti_activity_deprecated.h`, CUDA 12.9,
//! `PACKED_ALIGNMENT` = 8). Offsets in comments; the `const` asserts hold them to the values a
//! C program compiled against the real headers printed (sizes: Kernel9 208, Memcpy5 88,
//! Memset4 88, API 40, Synchronization 40, Marker2 56).

use std::ffi::c_char;
use std::mem::{offset_of, size_of};

/// `CUpti_ActivityKind` values used here.
pub mod kind {
    /// CUPTI_ACTIVITY_KIND_MEMCPY
    pub const MEMCPY: u32 = 1;
    /// CUPTI_ACTIVITY_KIND_MEMSET
    pub const MEMSET: u32 = 2;
    /// CUPTI_ACTIVITY_KIND_KERNEL
    pub const KERNEL: u32 = 3;
    /// CUPTI_ACTIVITY_KIND_DRIVER
    pub const DRIVER: u32 = 4;
    /// CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL
    pub const CONCURRENT_KERNEL: u32 = 10;
    /// CUPTI_ACTIVITY_KIND_MARKER
    pub const MARKER: u32 = 12;
    /// CUPTI_ACTIVITY_KIND_SYNCHRONIZATION
    pub const SYNCHRONIZATION: u32 = 38;
}

/// `CUpti_ActivityKernel9`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct ActivityKernel9 {
    /// 0: CUPTI_ACTIVITY_KIND_KERNEL or _CONCURRENT_KERNEL
    pub kind: u32,
    /// 4: cacheConfig (requested:4, executed:4)
    pub cache_config: u8,
    /// 5
    pub shared_memory_config: u8,
    /// 6
    pub registers_per_thread: u16,
    /// 8: partitionedGlobalCacheRequested
    pub partitioned_global_cache_requested: u32,
    /// 12: partitionedGlobalCacheExecuted
    pub partitioned_global_cache_executed: u32,
    /// 16
    pub start: u64,
    /// 24
    pub end: u64,
    /// 32
    pub completed: u64,
    /// 40
    pub device_id: u32,
    /// 44
    pub context_id: u32,
    /// 48
    pub stream_id: u32,
    /// 52, 56, 60
    pub grid: [i32; 3],
    /// 64, 68, 72
    pub block: [i32; 3],
    /// 76
    pub static_shared_memory: i32,
    /// 80
    pub dynamic_shared_memory: i32,
    /// 84
    pub local_memory_per_thread: u32,
    /// 88
    pub local_memory_total: u32,
    /// 92
    pub correlation_id: u32,
    /// 96
    pub grid_id: i64,
    /// 104
    pub name: *const c_char,
    /// 112
    pub reserved0: *mut u8,
    /// 120
    pub queued: u64,
    /// 128
    pub submitted: u64,
    /// 136
    pub launch_type: u8,
    /// 137
    pub is_shared_memory_carveout_requested: u8,
    /// 138
    pub shared_memory_carveout_requested: u8,
    /// 139
    pub padding: u8,
    /// 140
    pub shared_memory_executed: u32,
    /// 144
    pub graph_node_id: u64,
    /// 152: CUpti_FuncShmemLimitConfig
    pub shmem_limit_config: u32,
    /// 156
    pub graph_id: u32,
    /// 160
    pub p_access_policy_window: *mut u8,
    /// 168
    pub channel_id: u32,
    /// 172: CUpti_ChannelType
    pub channel_type: u32,
    /// 176, 180, 184
    pub cluster: [u32; 3],
    /// 188
    pub cluster_scheduling_policy: u32,
    /// 192
    pub local_memory_total_v2: u64,
    /// 200
    pub max_potential_cluster_size: u32,
    /// 204
    pub max_active_clusters: u32,
}

const _: () = {
    assert!(size_of::<ActivityKernel9>() == 208);
    assert!(offset_of!(ActivityKernel9, start) == 16);
    assert!(offset_of!(ActivityKernel9, device_id) == 40);
    assert!(offset_of!(ActivityKernel9, stream_id) == 48);
    assert!(offset_of!(ActivityKernel9, grid) == 52);
    assert!(offset_of!(ActivityKernel9, block) == 64);
    assert!(offset_of!(ActivityKernel9, static_shared_memory) == 76);
    assert!(offset_of!(ActivityKernel9, correlation_id) == 92);
    assert!(offset_of!(ActivityKernel9, grid_id) == 96);
    assert!(offset_of!(ActivityKernel9, name) == 104);
    assert!(offset_of!(ActivityKernel9, queued) == 120);
    assert!(offset_of!(ActivityKernel9, launch_type) == 136);
    assert!(offset_of!(ActivityKernel9, shared_memory_executed) == 140);
    assert!(offset_of!(ActivityKernel9, graph_node_id) == 144);
    assert!(offset_of!(ActivityKernel9, graph_id) == 156);
    assert!(offset_of!(ActivityKernel9, p_access_policy_window) == 160);
    assert!(offset_of!(ActivityKernel9, channel_type) == 172);
    assert!(offset_of!(ActivityKernel9, cluster) == 176);
    assert!(offset_of!(ActivityKernel9, local_memory_total_v2) == 192);
    assert!(offset_of!(ActivityKernel9, max_active_clusters) == 204);
};

/// `CUpti_ActivityMemcpy5`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct ActivityMemcpy5 {
    /// 0: CUPTI_ACTIVITY_KIND_MEMCPY
    pub kind: u32,
    /// 4: CUpti_ActivityMemcpyKind
    pub copy_kind: u8,
    /// 5: CUpti_ActivityMemoryKind of the source
    pub src_kind: u8,
    /// 6
    pub dst_kind: u8,
    /// 7
    pub flags: u8,
    /// 8
    pub bytes: u64,
    /// 16
    pub start: u64,
    /// 24
    pub end: u64,
    /// 32
    pub device_id: u32,
    /// 36
    pub context_id: u32,
    /// 40
    pub stream_id: u32,
    /// 44
    pub correlation_id: u32,
    /// 48
    pub runtime_correlation_id: u32,
    /// 52
    pub pad: u32,
    /// 56
    pub reserved0: *mut u8,
    /// 64
    pub graph_node_id: u64,
    /// 72
    pub graph_id: u32,
    /// 76
    pub channel_id: u32,
    /// 80
    pub channel_type: u32,
    /// 84
    pub pad2: u32,
}

const _: () = {
    assert!(size_of::<ActivityMemcpy5>() == 88);
    assert!(offset_of!(ActivityMemcpy5, bytes) == 8);
    assert!(offset_of!(ActivityMemcpy5, start) == 16);
    assert!(offset_of!(ActivityMemcpy5, device_id) == 32);
    assert!(offset_of!(ActivityMemcpy5, correlation_id) == 44);
    assert!(offset_of!(ActivityMemcpy5, reserved0) == 56);
    assert!(offset_of!(ActivityMemcpy5, graph_node_id) == 64);
    assert!(offset_of!(ActivityMemcpy5, graph_id) == 72);
    assert!(offset_of!(ActivityMemcpy5, channel_type) == 80);
};

/// `CUpti_ActivityMemset4`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct ActivityMemset4 {
    /// 0: CUPTI_ACTIVITY_KIND_MEMSET
    pub kind: u32,
    /// 4
    pub value: u32,
    /// 8
    pub bytes: u64,
    /// 16
    pub start: u64,
    /// 24
    pub end: u64,
    /// 32
    pub device_id: u32,
    /// 36
    pub context_id: u32,
    /// 40
    pub stream_id: u32,
    /// 44
    pub correlation_id: u32,
    /// 48
    pub flags: u16,
    /// 50
    pub memory_kind: u16,
    /// 52
    pub pad: u32,
    /// 56
    pub reserved0: *mut u8,
    /// 64
    pub graph_node_id: u64,
    /// 72
    pub graph_id: u32,
    /// 76
    pub channel_id: u32,
    /// 80
    pub channel_type: u32,
    /// 84
    pub pad2: u32,
}

const _: () = {
    assert!(size_of::<ActivityMemset4>() == 88);
    assert!(offset_of!(ActivityMemset4, correlation_id) == 44);
    assert!(offset_of!(ActivityMemset4, flags) == 48);
    assert!(offset_of!(ActivityMemset4, reserved0) == 56);
    assert!(offset_of!(ActivityMemset4, channel_type) == 80);
};

/// `CUpti_ActivityAPI` (driver and runtime API records).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct ActivityApi {
    /// 0: CUPTI_ACTIVITY_KIND_DRIVER
    pub kind: u32,
    /// 4: CUpti_CallbackId
    pub cbid: u32,
    /// 8
    pub start: u64,
    /// 16
    pub end: u64,
    /// 24
    pub process_id: u32,
    /// 28
    pub thread_id: u32,
    /// 32
    pub correlation_id: u32,
    /// 36
    pub return_value: u32,
}

const _: () = {
    assert!(size_of::<ActivityApi>() == 40);
    assert!(offset_of!(ActivityApi, start) == 8);
    assert!(offset_of!(ActivityApi, process_id) == 24);
    assert!(offset_of!(ActivityApi, return_value) == 36);
};

/// `CUpti_ActivitySynchronization`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct ActivitySynchronization {
    /// 0: CUPTI_ACTIVITY_KIND_SYNCHRONIZATION
    pub kind: u32,
    /// 4: CUpti_ActivitySynchronizationType
    pub sync_type: u32,
    /// 8
    pub start: u64,
    /// 16
    pub end: u64,
    /// 24
    pub correlation_id: u32,
    /// 28
    pub context_id: u32,
    /// 32
    pub stream_id: u32,
    /// 36
    pub cuda_event_id: u32,
}

const _: () = {
    assert!(size_of::<ActivitySynchronization>() == 40);
    assert!(offset_of!(ActivitySynchronization, correlation_id) == 24);
    assert!(offset_of!(ActivitySynchronization, cuda_event_id) == 36);
};

/// `CUpti_ActivityMarker2` (NVTX ranges: one START and one END record per range).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct ActivityMarker2 {
    /// 0: CUPTI_ACTIVITY_KIND_MARKER
    pub kind: u32,
    /// 4: CUpti_ActivityFlag (MARKER_START 2, MARKER_END 4)
    pub flags: u32,
    /// 8
    pub timestamp: u64,
    /// 16
    pub id: u32,
    /// 20: CUpti_ActivityObjectKind (THREAD 2)
    pub object_kind: u32,
    /// 24: CUpti_ActivityObjectKindId `pt` = {processId, threadId}, 12 bytes
    pub object_id: [u32; 3],
    /// 36
    pub pad: u32,
    /// 40
    pub name: *const c_char,
    /// 48
    pub domain: *const c_char,
}

const _: () = {
    assert!(size_of::<ActivityMarker2>() == 56);
    assert!(offset_of!(ActivityMarker2, timestamp) == 8);
    assert!(offset_of!(ActivityMarker2, object_id) == 24);
    assert!(offset_of!(ActivityMarker2, name) == 40);
    assert!(offset_of!(ActivityMarker2, domain) == 48);
};

/// Bytes of the record of activity kind `kind` (for walking a buffer), or None.
pub fn record_size(kind: u32) -> Option<usize> {
    Some(match kind {
        kind::KERNEL | kind::CONCURRENT_KERNEL => size_of::<ActivityKernel9>(),
        kind::MEMCPY => size_of::<ActivityMemcpy5>(),
        kind::MEMSET => size_of::<ActivityMemset4>(),
        kind::DRIVER => size_of::<ActivityApi>(),
        kind::SYNCHRONIZATION => size_of::<ActivitySynchronization>(),
        kind::MARKER => size_of::<ActivityMarker2>(),
        _ => return None,
    })
}
