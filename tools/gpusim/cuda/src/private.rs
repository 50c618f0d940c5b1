//! The private `gpusim_*` entry points (see `gpusim_core::abi`): how libcupti, libnccl and the
//! workload read the record log and place work on this process's simulated device.

use std::ffi::c_void;

use gpusim_core::clock::now_ns;
use gpusim_core::ffi::guard;
use gpusim_core::record::SimRecord;

use crate::device::{self, pthread_id, thread_id};
use crate::types::stream_id;

/// `u64 gpusim_record_count(void)`.
#[no_mangle]
pub extern "C" fn gpusim_record_count() -> u64 {
    guard(0, || device::lock().records.len() as u64)
}

/// `u64 gpusim_read_records(u64 first, SimRecord *out, u64 capacity)`.
#[no_mangle]
pub extern "C" fn gpusim_read_records(first: u64, out: *mut SimRecord, capacity: u64) -> u64 {
    guard(0, || {
        if out.is_null() {
            return 0;
        }
        let dev = device::lock();
        let first = (first as usize).min(dev.records.len());
        let n = (dev.records.len() - first).min(capacity as usize);
        // SAFETY: the caller provides room for `capacity` >= n records.
        unsafe { std::ptr::copy_nonoverlapping(dev.records[first..].as_ptr(), out, n) };
        n as u64
    })
}

/// `u64 gpusim_stream_ready_ns(CUstream)`.
#[no_mangle]
pub extern "C" fn gpusim_stream_ready_ns(stream: *mut c_void) -> u64 {
    guard(0, || device::lock().ready_ns(stream_id(stream), now_ns()))
}

/// `int gpusim_enqueue_device_op(CUstream, SimRecord *rec)`: 0 on success.
#[no_mangle]
pub extern "C" fn gpusim_enqueue_device_op(stream: *mut c_void, rec: *mut SimRecord) -> i32 {
    guard(-1, || {
        if rec.is_null() {
            return -1;
        }
        // SAFETY: non-null pointer to a record owned by the caller.
        let rec = unsafe { &mut *rec };
        rec.stream_id = stream_id(stream);
        let mut dev = device::lock();
        rec.correlation_id = dev.push_device_op(*rec);
        0
    })
}

/// `void gpusim_push_host(const SimRecord *rec)`.
#[no_mangle]
pub extern "C" fn gpusim_push_host(rec: *const SimRecord) {
    guard((), || {
        if rec.is_null() {
            return;
        }
        // SAFETY: non-null pointer to a record owned by the caller.
        let mut rec = unsafe { *rec };
        rec.thread_id = thread_id();
        rec.pthread_id = pthread_id();
        let mut dev = device::lock();
        rec.correlation_id = dev.next_correlation_id();
        dev.records.push(rec);
    })
}
