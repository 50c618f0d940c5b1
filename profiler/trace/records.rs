//! The event model: every record a collector produces, as a fixed-layout `Pod` struct with a
//! compile-time size assert, plus the column schema each kind is stored with. One macro
//! invocation below is the single definition of a kind: its struct, its id, its columns, its
//! encoder and decoder, and its slot in [`Record`] and [`RecordBatch`].
//!
//! Times are CLOCK_MONOTONIC nanoseconds. Names are ids into the trace's interned strings.
//! Enum-valued fields are stored as `u32` (see the enums at the end) so a record stays `Pod`
//! and an unknown value from a newer writer is still readable.

use super::columns::{put_varint, unzigzag, zigzag, Column, ColumnDesc, Cursor, Encoding};
use super::error::DecodeError;

/// What every record kind provides to the chunk codec.
pub trait RecordKind: bytemuck::Pod + Default {
    /// The kind's id.
    const KIND: Kind;
    /// The kind's columns, in storage order: one per field.
    const COLUMNS: &'static [ColumnDesc];
    /// The time the record is indexed under (its start).
    fn time_ns(&self) -> u64;
    /// When the record's interval ends (its start for point events).
    fn end_ns(&self) -> u64;
    /// Ids of interned strings the record refers to.
    fn string_refs(&self, _f: &mut dyn FnMut(u32)) {}
    /// Appends `rows` to one buffer per column (`cols.len()` == `COLUMNS.len()`).
    fn encode(rows: &[Self], cols: &mut [Vec<u8>]);
    /// Appends `n` rows read from one cursor per column (written by [`RecordKind::encode`]).
    fn decode_into(cols: &mut [Cursor<'_>], n: usize, out: &mut Vec<Self>) -> Result<(), DecodeError>;
}

macro_rules! enc_desc {
    (GapFrom($o:ident)) => {
        Encoding::GapFrom(stringify!($o))
    };
    (Paired) => {
        Encoding::Paired
    };
    (Raw) => {
        Encoding::Raw
    };
    (Delta) => {
        Encoding::Delta
    };
    (Xor) => {
        Encoding::Xor
    };
    (From($o:ident)) => {
        Encoding::From(stringify!($o))
    };
    (Prev($o:ident)) => {
        Encoding::Prev(stringify!($o))
    };
}

/// Encodes one column of a block of rows into `$out`; `$st` carries the column's prediction
/// state from one block to the next.
macro_rules! encode_col {
    ($rows:ident, $out:ident, $st:ident, $f:ident, Raw) => {
        for r in $rows {
            put_varint($out, Column::to_u64(r.$f));
        }
    };
    ($rows:ident, $out:ident, $st:ident, $f:ident, Delta) => {
        for r in $rows {
            let v = Column::to_u64(r.$f);
            put_varint($out, zigzag(v.wrapping_sub(*$st) as i64));
            *$st = v;
        }
    };
    ($rows:ident, $out:ident, $st:ident, $f:ident, Xor) => {
        for r in $rows {
            let v = Column::to_u64(r.$f);
            put_varint($out, v ^ *$st);
            *$st = v;
        }
    };
    ($rows:ident, $out:ident, $st:ident, $f:ident, From($o:ident)) => {
        for r in $rows {
            let v = Column::to_u64(r.$f);
            put_varint($out, zigzag(v.wrapping_sub(Column::to_u64(r.$o)) as i64));
        }
    };
    ($rows:ident, $out:ident, $st:ident, $f:ident, Prev($o:ident)) => {
        for r in $rows {
            let v = Column::to_u64(r.$f);
            put_varint($out, zigzag(v.wrapping_sub(*$st) as i64));
            *$st = Column::to_u64(r.$o);
        }
    };
    ($rows:ident, $out:ident, $st:ident, $f:ident, GapFrom($e:ident)) => {
        for r in $rows {
            let (s, e) = (Column::to_u64(r.$f), Column::to_u64(r.$e));
            put_varint($out, zigzag(s.wrapping_sub(*$st) as i64));
            put_varint($out, zigzag(e.wrapping_sub(s) as i64));
            *$st = e;
        }
    };
    ($rows:ident, $out:ident, $st:ident, $f:ident, Paired) => {};
}

macro_rules! narrow {
    ($cur:ident, $v:expr, $kind:ident, $f:ident) => {
        Column::from_u64($v).ok_or_else(|| {
            DecodeError::new($cur.offset(), concat!("value out of range for ", stringify!($kind), ".", stringify!($f)))
        })?
    };
}

/// Decodes one column of a block of rows (the inverse of `encode_col`).
macro_rules! decode_col {
    ($cur:ident, $rows:ident, $st:ident, $kind:ident, $f:ident, Raw) => {
        for r in $rows.iter_mut() {
            let s = $cur.varint()?;
            r.$f = narrow!($cur, s, $kind, $f);
        }
    };
    ($cur:ident, $rows:ident, $st:ident, $kind:ident, $f:ident, Delta) => {
        for r in $rows.iter_mut() {
            let v = $st.wrapping_add(unzigzag($cur.varint()?) as u64);
            r.$f = narrow!($cur, v, $kind, $f);
            *$st = v;
        }
    };
    ($cur:ident, $rows:ident, $st:ident, $kind:ident, $f:ident, Xor) => {
        for r in $rows.iter_mut() {
            let v = $cur.varint()? ^ *$st;
            r.$f = narrow!($cur, v, $kind, $f);
            *$st = v;
        }
    };
    ($cur:ident, $rows:ident, $st:ident, $kind:ident, $f:ident, From($o:ident)) => {
        for r in $rows.iter_mut() {
            let v = Column::to_u64(r.$o).wrapping_add(unzigzag($cur.varint()?) as u64);
            r.$f = narrow!($cur, v, $kind, $f);
        }
    };
    ($cur:ident, $rows:ident, $st:ident, $kind:ident, $f:ident, Prev($o:ident)) => {
        for r in $rows.iter_mut() {
            let v = $st.wrapping_add(unzigzag($cur.varint()?) as u64);
            r.$f = narrow!($cur, v, $kind, $f);
            *$st = Column::to_u64(r.$o);
        }
    };
    ($cur:ident, $rows:ident, $st:ident, $kind:ident, $f:ident, GapFrom($e:ident)) => {
        for r in $rows.iter_mut() {
            let s = $st.wrapping_add(unzigzag($cur.varint()?) as u64);
            let e = s.wrapping_add(unzigzag($cur.varint()?) as u64);
            r.$f = narrow!($cur, s, $kind, $f);
            r.$e = narrow!($cur, e, $kind, $e);
            *$st = e;
        }
    };
    ($cur:ident, $rows:ident, $st:ident, $kind:ident, $f:ident, Paired) => {};
}

/// Rows per block: columns are coded block by block so the rows being worked on stay in cache.
pub const BLOCK_ROWS: usize = 256;

macro_rules! record_kinds {
    ($(
        $(#[$doc:meta])*
        $name:ident = $id:literal, $key:literal, $vec:ident, size $size:literal, time $time:ident, end $endf:ident,
        strings [$($sref:ident),*] {
            $( $(#[$fdoc:meta])* $field:ident : $ty:ty => $enc:ident $(($arg:ident))? ),* $(,)?
        }
    )*) => {
        $(
            $(#[$doc])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
            pub struct $name {
                $( $(#[$fdoc])* pub $field: $ty, )*
            }
            const _: () = assert!(std::mem::size_of::<$name>() == $size);

            impl RecordKind for $name {
                const KIND: Kind = Kind::$name;
                const COLUMNS: &'static [ColumnDesc] = &[
                    $( ColumnDesc { name: stringify!($field), ty: stringify!($ty), encoding: enc_desc!($enc $(($arg))?) } ),*
                ];
                #[inline]
                fn time_ns(&self) -> u64 {
                    self.$time
                }
                #[inline]
                fn end_ns(&self) -> u64 {
                    self.$endf.max(self.$time)
                }
                #[allow(unused_variables)]
                fn string_refs(&self, f: &mut dyn FnMut(u32)) {
                    $( f(self.$sref); )*
                }
                fn encode(rows: &[Self], cols: &mut [Vec<u8>]) {
                    let mut state = [0u64; <Self as RecordKind>::COLUMNS.len()];
                    for block in rows.chunks(BLOCK_ROWS) {
                        let mut ci = 0usize;
                        $( {
                            #[allow(unused_variables)]
                            let (out, st) = (&mut cols[ci], &mut state[ci]);
                            encode_col!(block, out, st, $field, $enc $(($arg))?);
                            ci += 1;
                        } )*
                        let _ = ci;
                    }
                }
                fn decode_into(cols: &mut [Cursor<'_>], n: usize, out: &mut Vec<Self>) -> Result<(), DecodeError> {
                    let mut state = [0u64; <Self as RecordKind>::COLUMNS.len()];
                    let start = out.len();
                    out.resize(start + n, Self::default());
                    for block in out[start..].chunks_mut(BLOCK_ROWS) {
                        let mut ci = 0usize;
                        $( {
                            #[allow(unused_variables)]
                            let (cur, st) = (&mut cols[ci], &mut state[ci]);
                            decode_col!(cur, block, st, $name, $field, $enc $(($arg))?);
                            ci += 1;
                        } )*
                        let _ = ci;
                    }
                    Ok(())
                }
            }

            impl From<$name> for Record {
                fn from(r: $name) -> Record {
                    Record::$name(r)
                }
            }
        )*

        /// Record kind ids as stored in chunk section headers. Id 0 is the string table.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum Kind {
            $( #[doc = concat!("[`", stringify!($name), "`] records.")] $name = $id, )*
        }

        impl Kind {
            /// Every kind this build knows, in id order.
            pub const ALL: &'static [Kind] = &[ $( Kind::$name, )* ];

            /// The kind with this id, or None for an id this build does not know.
            pub fn from_id(id: u16) -> Option<Kind> {
                match id {
                    $( $id => Some(Kind::$name), )*
                    _ => None,
                }
            }

            /// Stable lowercase name used in `info` output and the JSON schema.
            pub fn key(self) -> &'static str {
                match self {
                    $( Kind::$name => $key, )*
                }
            }

            /// In-memory size of one record (the "raw" size `info` reports).
            pub fn record_size(self) -> usize {
                match self {
                    $( Kind::$name => $size, )*
                }
            }

            /// The kind's columns, in storage order.
            pub fn columns(self) -> &'static [ColumnDesc] {
                match self {
                    $( Kind::$name => <$name as RecordKind>::COLUMNS, )*
                }
            }
        }

        /// Any one record, as collectors hand them to the pipeline.
        #[derive(Clone, Copy, Debug, PartialEq)]
        pub enum Record {
            $( #[doc = concat!("A [`", stringify!($name), "`].")] $name($name), )*
        }

        impl Record {
            /// The record's kind.
            pub fn kind(&self) -> Kind {
                match self {
                    $( Record::$name(_) => Kind::$name, )*
                }
            }

            /// The time the record is indexed under (its start), CLOCK_MONOTONIC ns.
            pub fn time_ns(&self) -> u64 {
                match self {
                    $( Record::$name(r) => r.time_ns(), )*
                }
            }

            /// Calls `f` with the id of every interned string the record refers to.
            pub fn string_refs(&self, f: &mut dyn FnMut(u32)) {
                match self {
                    $( Record::$name(r) => r.string_refs(f), )*
                }
            }

            /// The record's fixed-layout bytes.
            pub fn as_bytes(&self) -> &[u8] {
                match self {
                    $( Record::$name(r) => bytemuck::bytes_of(r), )*
                }
            }
        }

        /// Records grouped by kind: what a chunk holds, column-friendly.
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct RecordBatch {
            $( #[doc = concat!("The [`", stringify!($name), "`] records.")] pub $vec: Vec<$name>, )*
        }

        impl RecordBatch {
            /// Adds one record to the rows of its kind.
            pub fn push(&mut self, rec: Record) {
                match rec {
                    $( Record::$name(r) => self.$vec.push(r), )*
                }
            }

            /// Appends a record of `kind` from its fixed-layout bytes (None if the length is wrong).
            pub fn push_raw(&mut self, kind: Kind, bytes: &[u8]) -> Option<()> {
                match kind {
                    $( Kind::$name => self.$vec.push(bytemuck::try_pod_read_unaligned(bytes).ok()?), )*
                }
                Some(())
            }

            /// Total records of every kind.
            pub fn len(&self) -> usize {
                0 $( + self.$vec.len() )*
            }

            /// No records of any kind.
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            /// Records of `kind`.
            pub fn count(&self, kind: Kind) -> usize {
                match kind {
                    $( Kind::$name => self.$vec.len(), )*
                }
            }

            /// Bytes the records take in memory as fixed rows.
            pub fn raw_bytes(&self) -> usize {
                0 $( + self.$vec.len() * $size )*
            }

            /// Removes every record (keeps the allocations).
            pub fn clear(&mut self) {
                $( self.$vec.clear(); )*
            }

            /// Moves every record of `other` into this batch.
            pub fn append(&mut self, mut other: RecordBatch) {
                $( if self.$vec.is_empty() { self.$vec = std::mem::take(&mut other.$vec); } else { self.$vec.append(&mut other.$vec); } )*
            }

            /// Moves the second half of every kind's rows into a new batch.
            pub fn split_half(&mut self) -> RecordBatch {
                RecordBatch { $( $vec: { let at = self.$vec.len() / 2; self.$vec.split_off(at) }, )* }
            }

            /// Earliest record start and latest record end, or None when empty.
            pub fn time_range(&self) -> Option<(u64, u64)> {
                let mut lo = u64::MAX;
                let mut hi = 0u64;
                $( for r in &self.$vec {
                    lo = lo.min(r.time_ns());
                    hi = hi.max(r.end_ns());
                } )*
                (lo <= hi).then_some((lo, hi))
            }

            /// Calls `f` with every string id every record refers to (repeats included).
            pub fn for_each_string_ref(&self, f: &mut dyn FnMut(u32)) {
                $( for r in &self.$vec { r.string_refs(f); } )*
            }

            /// Calls `f(kind, rows, encoder)` for each non-empty kind, in id order; the encoder
            /// fills one buffer per column.
            pub(crate) fn encode_sections(&self, mut f: impl FnMut(Kind, usize, &dyn Fn(&mut [Vec<u8>]))) {
                $( if !self.$vec.is_empty() {
                    let rows = &self.$vec;
                    f(Kind::$name, rows.len(), &|cols: &mut [Vec<u8>]| <$name as RecordKind>::encode(rows, cols));
                } )*
            }

            /// Decodes one section of `kind` with `n` rows (one cursor per column) and appends it.
            pub(crate) fn decode_section(&mut self, kind: Kind, cols: &mut [Cursor<'_>], n: usize) -> Result<(), DecodeError> {
                match kind {
                    $( Kind::$name => <$name as RecordKind>::decode_into(cols, n, &mut self.$vec)?, )*
                }
                Ok(())
            }

            /// Iterates every record as a [`Record`], kind by kind.
            pub fn iter(&self) -> impl Iterator<Item = Record> + '_ {
                std::iter::empty()
                    $( .chain(self.$vec.iter().map(|r| Record::$name(*r))) )*
            }
        }
    };
}

record_kinds! {
    /// A kernel execution on a device (CUPTI CONCURRENT_KERNEL).
    KernelExec = 1, "kernel", kernels, size 80, time start_ns, end end_ns, strings [name_id] {
        /// start, CLOCK_MONOTONIC ns
        start_ns: u64 => GapFrom(end_ns),
        /// end, CLOCK_MONOTONIC ns
        end_ns: u64 => Paired,
        /// CUPTI stream id
        stream: u64 => Delta,
        /// CUPTI correlation id: joins the launching API call
        correlation_id: u32 => Delta,
        /// CUDA device id
        device: u32 => Raw,
        /// kernel name (string id)
        name_id: u32 => Raw,
        /// grid size in blocks, x
        grid_x: u32 => Raw,
        /// grid size in blocks, y
        grid_y: u32 => Raw,
        /// grid size in blocks, z
        grid_z: u32 => Raw,
        /// block size in threads, x
        block_x: u32 => Raw,
        /// block size in threads, y
        block_y: u32 => Raw,
        /// block size in threads, z
        block_z: u32 => Raw,
        /// registers per thread
        registers_per_thread: u32 => Raw,
        /// static + dynamic shared memory per block
        shared_mem_bytes: u32 => Raw,
        /// CUDA graph id, 0 when not launched from a graph
        graph_id: u32 => Raw,
        /// process id
        pid: u32 => Raw,
        /// [`KERNEL_COOPERATIVE`] and friends
        flags: u32 => Raw,
    }

    /// A memcpy or memset on a device; `kind` is a [`MemOpKind`].
    MemOp = 2, "memop", memops, size 48, time start_ns, end end_ns, strings [] {
        /// start, CLOCK_MONOTONIC ns
        start_ns: u64 => Delta,
        /// end, CLOCK_MONOTONIC ns
        end_ns: u64 => From(start_ns),
        /// bytes copied or set
        bytes: u64 => Raw,
        /// CUPTI stream id
        stream: u64 => Delta,
        /// CUPTI correlation id: joins the API call
        correlation_id: u32 => Delta,
        /// CUDA device id
        device: u32 => Raw,
        /// a [`MemOpKind`]
        kind: u32 => Raw,
        /// process id
        pid: u32 => Raw,
    }

    /// A host API call (CUDA driver/runtime or a probed library); `domain` is an [`ApiDomain`],
    /// `call_id` the function within it.
    ApiCall = 3, "api", api_calls, size 56, time start_ns, end end_ns, strings [] {
        /// start, CLOCK_MONOTONIC ns
        start_ns: u64 => Delta,
        /// end, CLOCK_MONOTONIC ns
        end_ns: u64 => From(start_ns),
        /// the stream waited on (a probed stream synchronize), 0 otherwise
        stream: u64 => Delta,
        /// call-specific: bytes of a copy, the event of an event sync, 0 otherwise
        arg: u64 => Raw,
        /// process id
        pid: u32 => Raw,
        /// thread id
        tid: u32 => Raw,
        /// CUPTI correlation id (probed calls: 0, or the rank for ncclCommInitRank)
        correlation_id: u32 => Delta,
        /// the function within `domain` (CUPTI callback id or [`ProbedApi`])
        call_id: u32 => Raw,
        /// an [`ApiDomain`]
        domain: u32 => Raw,
        /// return code of the call (CUresult / ncclResult_t), 0 = success
        status: i32 => Raw,
    }

    /// An NCCL collective: the host call (`phase` = Host) or its device kernel (`phase` = Device).
    NcclColl = 4, "nccl", nccl, size 88, time start_ns, end end_ns, strings [] {
        /// start, CLOCK_MONOTONIC ns
        start_ns: u64 => Delta,
        /// end, CLOCK_MONOTONIC ns
        end_ns: u64 => From(start_ns),
        /// the communicator (ncclComm_t pointer)
        comm: u64 => Raw,
        /// per-communicator sequence number, matches instances across ranks
        seq: u64 => Delta,
        /// elements (the call's count argument)
        count: u64 => Raw,
        /// count × the element size of `dtype`
        bytes: u64 => Raw,
        /// the CUstream the call was given
        stream: u64 => Delta,
        /// process id
        pid: u32 => Raw,
        /// thread id
        tid: u32 => Raw,
        /// rank in the communicator
        rank: u32 => Raw,
        /// ranks in the communicator
        nranks: u32 => Raw,
        /// a [`CollOp`]
        op: u32 => Raw,
        /// an [`NcclDtype`]
        dtype: u32 => Raw,
        /// an [`NcclPhase`]
        phase: u32 => Raw,
        /// CUDA device id (u32::MAX for host calls)
        device: u32 => Raw,
    }

    /// A host thread off-CPU for [start_ns, end_ns); `reason` is a [`StallReason`].
    HostStall = 5, "stall", stalls, size 32, time start_ns, end end_ns, strings [] {
        /// start, CLOCK_MONOTONIC ns
        start_ns: u64 => Delta,
        /// end, CLOCK_MONOTONIC ns
        end_ns: u64 => From(start_ns),
        /// process id
        pid: u32 => Raw,
        /// thread id
        tid: u32 => Raw,
        /// a [`StallReason`]
        reason: u32 => Raw,
        /// syscall number in progress when the thread left the CPU, -1 if none
        syscall: i32 => Raw,
    }

    /// One device sample (NVML, GPM or CUPTI PM sampling); `metric` is a [`Metric`].
    DeviceSample = 6, "sample", samples, size 32, time time_ns, end time_ns, strings [] {
        /// when it was sampled, CLOCK_MONOTONIC ns
        time_ns: u64 => Delta,
        /// the reading, in the metric's unit
        value: f64 => Xor,
        /// device index (NVML index for NVML samples)
        device: u32 => Raw,
        /// a [`Metric`]
        metric: u32 => Raw,
        /// process whose view of the device this is (CUPTI samples); 0 for host-wide (NVML)
        pid: u32 => Raw,
        /// padding, 0
        reserved: u32 => Raw,
    }

    /// A training step (NVTX range, kernel-name regex or detected period); `source` is a [`StepSource`].
    StepMarker = 7, "step", steps, size 40, time start_ns, end end_ns, strings [name_id] {
        /// start, CLOCK_MONOTONIC ns
        start_ns: u64 => Delta,
        /// end, CLOCK_MONOTONIC ns
        end_ns: u64 => From(start_ns),
        /// step number
        step: u64 => Delta,
        /// process id
        pid: u32 => Raw,
        /// range or kernel name it was found by (string id)
        name_id: u32 => Raw,
        /// a [`StepSource`]
        source: u32 => Raw,
        /// CUDA device id (0 for NVTX ranges)
        device: u32 => Raw,
    }

    /// A process seen during the recording.
    ProcessInfo = 8, "process", processes, size 24, time time_ns, end time_ns, strings [name_id, cmdline_id] {
        /// when it was seen, CLOCK_MONOTONIC ns
        time_ns: u64 => Delta,
        /// process id
        pid: u32 => Raw,
        /// parent process id
        ppid: u32 => Raw,
        /// process name (string id)
        name_id: u32 => Raw,
        /// command line (string id)
        cmdline_id: u32 => Raw,
    }

    /// A thread seen during the recording.
    ThreadInfo = 9, "thread", threads, size 24, time time_ns, end time_ns, strings [name_id] {
        /// when it was seen, CLOCK_MONOTONIC ns
        time_ns: u64 => Delta,
        /// process id
        pid: u32 => Raw,
        /// thread id
        tid: u32 => Raw,
        /// thread name (string id)
        name_id: u32 => Raw,
        /// padding, 0
        reserved: u32 => Raw,
    }

    /// A library mapped into a traced process; `lib` is a [`LibKind`].
    LibraryInfo = 10, "library", libraries, size 32, time time_ns, end time_ns, strings [path_id] {
        /// when it was seen, CLOCK_MONOTONIC ns
        time_ns: u64 => Delta,
        /// load address (start of its first mapping)
        base: u64 => Raw,
        /// process id
        pid: u32 => Raw,
        /// file path (string id)
        path_id: u32 => Raw,
        /// a [`LibKind`]
        lib: u32 => Raw,
        /// padding, 0
        reserved: u32 => Raw,
    }

    /// A pair of simultaneous readings of CLOCK_MONOTONIC and another clock (`domain`: a
    /// [`ClockDomain`]), used to map device timestamps onto the host clock.
    ClockSync = 11, "clock_sync", clock_syncs, size 32, time monotonic_ns, end monotonic_ns, strings [] {
        /// the CLOCK_MONOTONIC reading, ns
        monotonic_ns: u64 => Delta,
        /// the other clock's reading, ns
        other_ns: u64 => Delta,
        /// half the round trip of the two readings: the pair's error bound
        uncertainty_ns: u64 => Raw,
        /// a [`ClockDomain`]
        domain: u32 => Raw,
        /// device id of the other clock (0 for the CUPTI clock)
        device: u32 => Raw,
    }

    /// Cumulative count of records lost at one place (`source`: [`Source`], `cause`: [`DropCause`]).
    Drops = 12, "drops", drops, size 24, time time_ns, end time_ns, strings [] {
        /// when the count was taken, CLOCK_MONOTONIC ns
        time_ns: u64 => Delta,
        /// records lost so far (cumulative)
        count: u64 => Raw,
        /// a [`Source`]
        source: u32 => Raw,
        /// a [`DropCause`]
        cause: u32 => Raw,
    }

    /// A kernel or graph launch seen on the host (eBPF uprobe at the call's entry); `api` is a
    /// [`ProbedApi`]. Its device execution is a [`KernelExec`] (CUPTI) joined by stream and order.
    KernelLaunch = 13, "launch", launches, size 64, time time_ns, end time_ns, strings [] {
        /// the call's entry, CLOCK_MONOTONIC ns
        time_ns: u64 => Delta,
        /// CUfunction handle (CUgraphExec for graph launches)
        func: u64 => Raw,
        /// the CUstream passed to the launch
        stream: u64 => Delta,
        /// process id
        pid: u32 => Raw,
        /// thread id
        tid: u32 => Raw,
        /// grid size in blocks, x
        grid_x: u32 => Raw,
        /// grid size in blocks, y
        grid_y: u32 => Raw,
        /// grid size in blocks, z
        grid_z: u32 => Raw,
        /// block size in threads, x
        block_x: u32 => Raw,
        /// block size in threads, y
        block_y: u32 => Raw,
        /// block size in threads, z
        block_z: u32 => Raw,
        /// dynamic shared memory per block, bytes
        shared_mem_bytes: u32 => Raw,
        /// a [`ProbedApi`]: the launch function called
        api: u32 => Raw,
    }

    /// The name of a CUfunction handle in one process (from cuModuleGetFunction / cuFuncGetName).
    FunctionName = 14, "function", functions, size 24, time time_ns, end time_ns, strings [name_id] {
        /// when it was seen, CLOCK_MONOTONIC ns
        time_ns: u64 => Delta,
        /// CUfunction handle
        func: u64 => Raw,
        /// process id
        pid: u32 => Raw,
        /// kernel name (string id)
        name_id: u32 => Raw,
    }

    /// A read/write/fsync-family syscall on a regular file by a traced thread: its whole
    /// duration, on-CPU copying included, is time the thread spent in file I/O (data loading,
    /// checkpoints). Off-CPU parts inside it also appear as [`HostStall`]s.
    FileIo = 15, "file_io", file_io, size 40, time start_ns, end end_ns, strings [] {
        /// start, CLOCK_MONOTONIC ns
        start_ns: u64 => Delta,
        /// end, CLOCK_MONOTONIC ns
        end_ns: u64 => From(start_ns),
        /// bytes read or written (0 outside the read and write families)
        bytes: u64 => Raw,
        /// process id
        pid: u32 => Raw,
        /// thread id
        tid: u32 => Raw,
        /// file descriptor
        fd: i32 => Raw,
        /// syscall number
        syscall: i32 => Raw,
    }

    /// Something the reviewer of the trace should know about how it was recorded (a collector
    /// off, CUPTI held by another subscriber, PM sampling unavailable): the session's notes,
    /// written when the session ends. `pid` 0: the whole session.
    SessionNote = 16, "note", notes, size 16, time time_ns, end time_ns, strings [text_id] {
        /// when it was seen, CLOCK_MONOTONIC ns
        time_ns: u64 => Delta,
        /// process the note is about (0: the whole session)
        pid: u32 => Raw,
        /// the note (string id)
        text_id: u32 => Raw,
    }

    /// NCCL's own account of one collective (its profiler plugin API, through the injection
    /// library): the algorithm and protocol it chose. Joins the [`NcclColl`] host call of the
    /// same process by communicator, operation and per-operation order (docs/trace-format.md).
    NcclAlgo = 17, "nccl_algo", nccl_algos, size 80, time time_ns, end time_ns, strings [algo_id, proto_id] {
        /// when NCCL started the collective's profiler event (inside the host call, or at
        /// ncclGroupEnd for a grouped one)
        time_ns: u64 => Delta,
        /// NCCL's commHash: identifies the communicator, the same on every rank
        comm_hash: u64 => Xor,
        /// NCCL's seqNumber: per communicator and operation, from 0
        seq: u64 => Delta,
        /// elements (the descriptor's count)
        count: u64 => Raw,
        /// process id
        pid: u32 => Raw,
        /// thread id
        tid: u32 => Raw,
        /// rank in the communicator (u32::MAX unknown)
        rank: u32 => Raw,
        /// ranks in the communicator (u32::MAX unknown: plugin API before v4)
        nranks: u32 => Raw,
        /// a [`CollOp`] (u32::MAX: a function this build does not know)
        op: u32 => Raw,
        /// an [`NcclDtype`] (u32::MAX unknown)
        dtype: u32 => Raw,
        /// NCCL's algorithm name ("RING", "TREE", "NVLS", …)
        algo_id: u32 => Raw,
        /// NCCL's protocol name ("LL", "LL128", "SIMPLE")
        proto_id: u32 => Raw,
        /// channels NCCL used
        n_channels: u32 => Raw,
        /// warps per channel
        n_warps: u32 => Raw,
        /// the profiler plugin API version NCCL used (1..=4)
        api_version: u32 => Raw,
        /// padding, 0
        reserved: u32 => Raw,
    }

    /// What the CUPTI injection library cost one traced process, measured inside it
    /// (cumulative since collection started in it; the last record of a process is its total).
    ProfilerCost = 18, "cost", costs, size 56, time time_ns, end time_ns, strings [] {
        /// when ghostprof received it, CLOCK_MONOTONIC ns
        time_ns: u64 => Delta,
        /// ghostprof's CUPTI callbacks run on the job's threads
        callbacks: u64 => Delta,
        /// CPU time in those callbacks, ns
        callback_ns: u64 => Delta,
        /// CPU time in CUPTI's buffer-completion callbacks (walk and forwarding), ns
        buffer_ns: u64 => Delta,
        /// CPU time of the library's own thread, its start and its exit handler, ns
        thread_ns: u64 => Delta,
        /// CPU time of the whole process (every thread) over the same interval, ns
        job_cpu_ns: u64 => Delta,
        /// process id
        pid: u32 => Raw,
        /// padding, 0
        reserved: u32 => Raw,
    }
}

impl ProfilerCost {
    /// CPU time the library cost the process: callbacks + buffers + its own thread (saturating).
    pub fn total_ns(&self) -> u64 {
        self.callback_ns.saturating_add(self.buffer_ns).saturating_add(self.thread_ns)
    }
}

/// `KernelExec::flags`: launched with cuLaunchCooperativeKernel.
pub const KERNEL_COOPERATIVE: u32 = 1;
/// `KernelExec::flags`: replayed work (a step re-run after a restart): ghost compute.
pub const KERNEL_REPLAYED: u32 = 2;

macro_rules! u32_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $v:ident = $n:literal => $s:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum $name { $($(#[$vdoc])* $v = $n),* }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v),*];

            /// The value stored as `v`, or None for a value this build doesn't know.
            pub fn from_u32(v: u32) -> Option<Self> {
                match v { $($n => Some($name::$v),)* _ => None }
            }

            /// The value's stable lowercase name (what `name_of` returns).
            pub fn name(self) -> &'static str {
                match self { $($name::$v => $s,)* }
            }

            /// The name of a stored value, or `unknown(N)` for a value this build doesn't know.
            pub fn name_of(v: u32) -> String {
                Self::from_u32(v).map(|e| e.name().to_string()).unwrap_or_else(|| format!("unknown({v})"))
            }
        }
    };
}

u32_enum! {
    /// Why a host thread was off-CPU.
    StallReason {
        /// blocked in another syscall, or none known
        Other = 0 => "other",
        /// waiting on a futex (locks, condition variables)
        Futex = 1 => "futex",
        /// in a file read/write/sync syscall
        Io = 2 => "io",
        /// blocked outside any syscall: a major page fault (or reclaim)
        PageFault = 3 => "page_fault",
        /// runnable but descheduled (preempted)
        Preempted = 4 => "preempted",
        /// in nanosleep / clock_nanosleep
        Sleep = 5 => "sleep",
        /// in poll, select or epoll_wait
        Poll = 6 => "poll",
        /// woken but waiting in the run queue for a CPU
        RunQueue = 7 => "run_queue",
    }
}

u32_enum! {
    /// Memory operation kinds.
    MemOpKind {
        /// a copy of an unknown direction
        Unknown = 0 => "unknown",
        /// copy host to device
        HtoD = 1 => "htod",
        /// copy device to host
        DtoH = 2 => "dtoh",
        /// copy device to device (same device)
        DtoD = 3 => "dtod",
        /// copy host to host
        HtoH = 4 => "htoh",
        /// copy peer to peer (between devices)
        PtoP = 5 => "ptop",
        /// a memset
        Memset = 8 => "memset",
    }
}

u32_enum! {
    /// Which API an [`ApiCall`] belongs to. CUPTI domains use CUPTI callback ids as `call_id`;
    /// `Probe` uses [`ProbedApi`] (the functions ghostprof's uprobes see).
    ApiDomain {
        /// the CUDA driver API (CUPTI)
        CudaDriver = 1 => "cuda_driver",
        /// the CUDA runtime API (CUPTI)
        CudaRuntime = 2 => "cuda_runtime",
        /// NCCL calls
        Nccl = 3 => "nccl",
        /// NVTX markers and ranges
        Nvtx = 4 => "nvtx",
        /// functions probed by eBPF (`call_id` is a [`ProbedApi`])
        Probe = 5 => "probe",
    }
}

u32_enum! {
    /// Host functions probed by eBPF (mirrors `enum gp_api` in ebpf/ghostprof.h).
    ProbedApi {
        /// `cuLaunchKernel`
        LaunchKernel = 1 => "cuLaunchKernel",
        /// `cuLaunchKernel_ptsz`
        LaunchKernelPtsz = 2 => "cuLaunchKernel_ptsz",
        /// `cuLaunchKernelEx`
        LaunchKernelEx = 3 => "cuLaunchKernelEx",
        /// `cuLaunchKernelEx_ptsz`
        LaunchKernelExPtsz = 4 => "cuLaunchKernelEx_ptsz",
        /// `cuLaunchCooperativeKernel`
        LaunchCooperativeKernel = 5 => "cuLaunchCooperativeKernel",
        /// `cuGraphLaunch`
        GraphLaunch = 6 => "cuGraphLaunch",
        /// `cuGraphLaunch_ptsz`
        GraphLaunchPtsz = 7 => "cuGraphLaunch_ptsz",
        /// `cuStreamSynchronize`
        StreamSynchronize = 8 => "cuStreamSynchronize",
        /// `cuCtxSynchronize`
        CtxSynchronize = 9 => "cuCtxSynchronize",
        /// `cuEventSynchronize`
        EventSynchronize = 10 => "cuEventSynchronize",
        /// `cuMemcpyHtoD`
        MemcpyHtoD = 11 => "cuMemcpyHtoD",
        /// `cuMemcpyDtoH`
        MemcpyDtoH = 12 => "cuMemcpyDtoH",
        /// `cuMemcpyDtoD`
        MemcpyDtoD = 13 => "cuMemcpyDtoD",
        /// `cuMemcpy`
        Memcpy = 14 => "cuMemcpy",
        /// `cuModuleGetFunction`
        ModuleGetFunction = 15 => "cuModuleGetFunction",
        /// `cuFuncGetName`
        FuncGetName = 16 => "cuFuncGetName",
        /// `ncclGroupStart`
        NcclGroupStart = 17 => "ncclGroupStart",
        /// `ncclGroupEnd`
        NcclGroupEnd = 18 => "ncclGroupEnd",
        /// `ncclCommInitRank`
        NcclCommInitRank = 19 => "ncclCommInitRank",
        /// `ncclAllReduce`
        NcclAllReduce = 32 => "ncclAllReduce",
        /// `ncclAllGather`
        NcclAllGather = 33 => "ncclAllGather",
        /// `ncclReduceScatter`
        NcclReduceScatter = 34 => "ncclReduceScatter",
        /// `ncclBroadcast`
        NcclBroadcast = 35 => "ncclBroadcast",
        /// `ncclReduce`
        NcclReduce = 36 => "ncclReduce",
        /// `ncclSend`
        NcclSend = 37 => "ncclSend",
        /// `ncclRecv`
        NcclRecv = 38 => "ncclRecv",
    }
}

impl ApiCall {
    /// True for a kernel or graph launch seen by CUPTI (the injection library's launch
    /// callbacks, or CUPTI's API activity): the same evidence of a launching thread as a
    /// [`KernelLaunch`], where `record` left the per-launch uprobes off for a process whose
    /// CUPTI sees its launches.
    pub fn is_launch(&self) -> bool {
        let driver = self.domain == ApiDomain::CudaDriver as u32;
        (driver || self.domain == ApiDomain::CudaRuntime as u32)
            && ghostprof_ring::wire::is_launch_cbid(driver, self.call_id)
    }
}

impl ProbedApi {
    /// True for the calls that block the host until the device catches up.
    pub fn is_sync(self) -> bool {
        matches!(
            self,
            ProbedApi::StreamSynchronize
                | ProbedApi::CtxSynchronize
                | ProbedApi::EventSynchronize
                | ProbedApi::MemcpyHtoD
                | ProbedApi::MemcpyDtoH
                | ProbedApi::MemcpyDtoD
                | ProbedApi::Memcpy
        )
    }
}

u32_enum! {
    /// NCCL collective operations.
    CollOp {
        /// all-reduce
        AllReduce = 0 => "all_reduce",
        /// all-gather
        AllGather = 1 => "all_gather",
        /// reduce-scatter
        ReduceScatter = 2 => "reduce_scatter",
        /// broadcast
        Broadcast = 3 => "broadcast",
        /// reduce
        Reduce = 4 => "reduce",
        /// point-to-point send
        Send = 5 => "send",
        /// point-to-point receive
        Recv = 6 => "recv",
        /// all-to-all
        AllToAll = 7 => "all_to_all",
    }
}

u32_enum! {
    /// Whether an [`NcclColl`] is the host call or the device kernel.
    NcclPhase {
        /// the host call
        Host = 0 => "host",
        /// the device kernel
        Device = 1 => "device",
    }
}

u32_enum! {
    /// NCCL data types (values of `ncclDataType_t`).
    NcclDtype {
        /// `ncclInt8`
        Int8 = 0 => "int8",
        /// `ncclUint8`
        Uint8 = 1 => "uint8",
        /// `ncclInt32`
        Int32 = 2 => "int32",
        /// `ncclUint32`
        Uint32 = 3 => "uint32",
        /// `ncclInt64`
        Int64 = 4 => "int64",
        /// `ncclUint64`
        Uint64 = 5 => "uint64",
        /// `ncclFloat16`
        Float16 = 6 => "float16",
        /// `ncclFloat32`
        Float32 = 7 => "float32",
        /// `ncclFloat64`
        Float64 = 8 => "float64",
        /// `ncclBfloat16`
        Bfloat16 = 9 => "bfloat16",
        /// `ncclFloat8e4m3`
        Float8e4m3 = 10 => "float8_e4m3",
        /// `ncclFloat8e5m2`
        Float8e5m2 = 11 => "float8_e5m2",
    }
}

impl NcclDtype {
    /// Bytes per element.
    pub fn size_bytes(self) -> u64 {
        match self {
            NcclDtype::Int8 | NcclDtype::Uint8 | NcclDtype::Float8e4m3 | NcclDtype::Float8e5m2 => 1,
            NcclDtype::Float16 | NcclDtype::Bfloat16 => 2,
            NcclDtype::Int32 | NcclDtype::Uint32 | NcclDtype::Float32 => 4,
            NcclDtype::Int64 | NcclDtype::Uint64 | NcclDtype::Float64 => 8,
        }
    }
}

u32_enum! {
    /// Device sample metrics.
    Metric {
        /// NVML GPU utilization, percent
        GpuUtilPercent = 1 => "gpu_util_percent",
        /// NVML memory utilization, percent
        MemUtilPercent = 2 => "mem_util_percent",
        /// NVML memory used, bytes
        MemUsedBytes = 3 => "mem_used_bytes",
        /// SM clock (NVML), MHz
        SmClockMhz = 4 => "sm_clock_mhz",
        /// power draw (NVML), watts
        PowerWatts = 5 => "power_watts",
        /// fraction (0-1) of the interval SMs were active
        SmActive = 6 => "sm_active",
        /// SM occupancy, fraction (0-1)
        SmOccupancy = 7 => "sm_occupancy",
        /// fraction (0-1) of the interval tensor cores were active
        TensorActive = 8 => "tensor_active",
        /// DRAM bandwidth used, fraction (0-1) of peak
        DramBandwidth = 9 => "dram_bandwidth",
        /// fraction (0-1) of the interval FMA pipes were active
        FmaActive = 10 => "fma_active",
        /// length of the PM sample that starts at this time (ns); the sample's other metrics
        /// (fractions of it) share its timestamp
        SampleIntervalNs = 11 => "sample_interval_ns",
        /// memory clock (NVML), MHz
        MemClockMhz = 12 => "mem_clock_mhz",
    }
}

u32_enum! {
    /// Where a step boundary came from.
    StepSource {
        /// an NVTX push/pop range recorded by the job (CUPTI marker activity)
        Nvtx = 1 => "nvtx",
        /// a kernel whose name matches `--step-regex` starts each step
        KernelRegex = 2 => "kernel_regex",
        /// the period detected in the kernel sequence when neither NVTX nor a regex found steps
        Periodicity = 3 => "periodicity",
        /// boundaries written by a tool or test that knows them (no collector produces this value)
        User = 4 => "user",
    }
}

impl StepSource {
    /// What a report calls the source of a device's steps: `none` when none were found, and
    /// `regex` for [`StepSource::KernelRegex`] (the report's word since its first schema).
    pub fn report_name(source: Option<StepSource>) -> &'static str {
        match source {
            Some(StepSource::KernelRegex) => "regex",
            Some(s) => s.name(),
            None => "none",
        }
    }
}

u32_enum! {
    /// Which library a [`LibraryInfo`] is.
    LibKind {
        /// any other library
        Other = 0 => "other",
        /// libcuda (the driver)
        Cuda = 1 => "libcuda",
        /// libcudart
        CudaRuntime = 2 => "libcudart",
        /// libnccl
        Nccl = 3 => "libnccl",
        /// libcupti
        Cupti = 4 => "libcupti",
        /// libcublas
        Cublas = 5 => "libcublas",
    }
}

u32_enum! {
    /// Clock domains mapped onto CLOCK_MONOTONIC.
    ClockDomain {
        /// CUPTI's timestamp clock
        Cupti = 1 => "cupti",
        /// CLOCK_REALTIME (wall clock)
        Realtime = 2 => "realtime",
    }
}

u32_enum! {
    /// Producers of records; drops are counted per source.
    Source {
        /// the eBPF collectors (host probes, off-CPU)
        Ebpf = 1 => "ebpf",
        /// the CUPTI rings of the injection library
        Cupti = 2 => "cupti",
        /// the NVML sampler
        Nvml = 3 => "nvml",
        /// CUPTI PM sampling
        PmSampling = 4 => "pm_sampling",
        /// readings of /proc
        Procfs = 5 => "procfs",
        /// generated records (benchmarks, tests)
        Synthetic = 6 => "synthetic",
    }
}

u32_enum! {
    /// Where a record was lost.
    DropCause {
        /// the pipeline queue from a collector to the writer was full
        QueueFull = 1 => "queue_full",
        /// a BPF ring buffer reservation failed
        RingbufFull = 2 => "ringbuf_full",
        /// the shared-memory ring from the injection library was full
        ShmRingFull = 3 => "shm_ring_full",
        /// CUPTI reported dropped activity records
        CuptiBuffer = 4 => "cupti_buffer",
        /// the writer stopped (I/O error) before the record could be written
        WriterStopped = 5 => "writer_stopped",
        /// a record failed validation (malformed input from a collector)
        Malformed = 6 => "malformed",
        /// a name from the job over a string-table cap (length is cut, not counted; distinct
        /// names or bytes per process or in all): the name became `<name limit>`
        NameLimit = 7 => "name_limit",
        /// a status note from the job over the per-process cap of distinct notes
        NoteLimit = 8 => "note_limit",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicted_columns_refer_to_earlier_columns() {
        for kind in Kind::ALL {
            let cols = kind.columns();
            for (i, c) in cols.iter().enumerate() {
                if let Encoding::From(o) | Encoding::Prev(o) = c.encoding {
                    let j = cols.iter().position(|x| x.name == o);
                    assert!(
                        matches!(j, Some(j) if j < i),
                        "{:?}.{} predicts from {o}, which must come earlier",
                        kind,
                        c.name
                    );
                }
            }
        }
    }

    #[test]
    fn kinds_have_unique_ids_and_keys() {
        let mut ids: Vec<u16> = Kind::ALL.iter().map(|k| *k as u16).collect();
        ids.dedup();
        assert_eq!(ids.len(), Kind::ALL.len());
        assert!(!ids.contains(&0), "id 0 is the string table");
        let mut keys: Vec<&str> = Kind::ALL.iter().map(|k| k.key()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), Kind::ALL.len());
    }
}
