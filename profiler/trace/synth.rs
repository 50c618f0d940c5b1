//! A synthetic but realistic record stream: a repeating training step (forward, backward and
//! optimizer kernels with their launch calls, NCCL all-reduces, a data-loader wait, copies,
//! device samples) with timing jitter. Used by `tools/bench trace` and the format tests, so the
//! sizes they measure are those of a training job, not of a constant.

use super::records::*;
use super::strings::Interner;

/// A small deterministic PRNG (xorshift64*), so runs are reproducible without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (0 becomes 1: xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// `base` scaled by a uniform factor in [1 - pct/100, 1 + pct/100].
    pub fn jitter(&mut self, base: u64, pct: u64) -> u64 {
        let span = base * pct / 100;
        base - span + self.below(2 * span + 1)
    }
}

struct KernelKind {
    name_id: u32,
    duration_ns: u64,
    grid: [u32; 3],
    block: [u32; 3],
    registers: u32,
    shared: u32,
}

/// Generates steps of a data-parallel training job on one device.
pub struct TrainingStream {
    rng: Rng,
    kinds: Vec<KernelKind>,
    step_name: u32,
    pid: u32,
    tid: u32,
    stream: u64,
    nccl_stream: u64,
    comm: u64,
    step: u64,
    seq: u64,
    correlation: u32,
    host_ns: u64,
    device_ns: u64,
    next_sample_ns: u64,
    queue: std::collections::VecDeque<Record>,
    /// name id of the all-reduce kernel, when the stream carries collective kernels
    nccl_kernel: Option<u32>,
}

impl TrainingStream {
    /// A stream seeded with `seed`, its kernel names interned in `interner`.
    pub fn new(seed: u64, interner: &Interner) -> Self {
        let mut rng = Rng::new(seed);
        let mut kinds = Vec::new();
        let layer_kernels = [
            (
                "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1",
                180_000,
                528,
                128,
                168,
                232_448,
            ),
            (
                "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>",
                22_000,
                8192,
                128,
                32,
                0,
            ),
            (
                "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>",
                31_000,
                4096,
                256,
                40,
                0,
            ),
            (
                "flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t>>",
                240_000,
                1024,
                128,
                255,
                98_304,
            ),
            (
                "flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<128, 64, 128, 8>>",
                410_000,
                1024,
                256,
                255,
                131_072,
            ),
            (
                "sm90_xmma_gemm_bf16bf16_bf16f32_f32_nt_n_tilesize256x128x64_warpgroupsize2x1x1",
                350_000,
                264,
                384,
                168,
                232_448,
            ),
            (
                "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t>>",
                12_000,
                640,
                512,
                32,
                16,
            ),
            (
                "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>",
                95_000,
                1320,
                512,
                64,
                0,
            ),
        ];
        for (name, dur, gx, bx, regs, shared) in layer_kernels {
            kinds.push(KernelKind {
                name_id: interner.intern(name),
                duration_ns: dur,
                grid: [gx, 1, 1],
                block: [bx, 1, 1],
                registers: regs,
                shared,
            });
        }
        let t0 = 1_000_000_000_000 + rng.below(1_000_000);
        TrainingStream {
            rng,
            kinds,
            step_name: interner.intern("train_step"),
            pid: 4242,
            tid: 4242,
            stream: 0x7f00_1000,
            nccl_stream: 0x7f00_2000,
            comm: 0x5555_0000_1234,
            step: 0,
            seq: 0,
            correlation: 1,
            host_ns: t0,
            device_ns: t0,
            next_sample_ns: t0,
            queue: Default::default(),
            nccl_kernel: None,
        }
    }

    /// The same stream with each all-reduce's device side as its kernel, as CUPTI records it on
    /// a real job (`ncclDevKernel_…`, on the NCCL stream), instead of an NCCL device record.
    pub fn with_collective_kernels(mut self, interner: &Interner) -> Self {
        self.nccl_kernel =
            Some(interner.intern("ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)"));
        self
    }

    /// Launches kernel kind `k` from the host and runs it on the device.
    fn kernel(&mut self, k: usize) {
        let launch = self.rng.jitter(4_500, 30);
        let api = ApiCall {
            start_ns: self.host_ns,
            end_ns: self.host_ns + launch,
            stream: self.stream,
            arg: 0,
            pid: self.pid,
            tid: self.tid,
            correlation_id: self.correlation,
            call_id: 307, // cuLaunchKernel's CUPTI callback id
            domain: ApiDomain::CudaDriver as u32,
            status: 0,
        };
        self.host_ns += launch + self.rng.jitter(1_500, 50);
        let kind = &self.kinds[k];
        let start = self.device_ns.max(api.end_ns + 2_000) + self.rng.below(1_200);
        let dur = self.rng.jitter(kind.duration_ns, 3);
        let kernel = KernelExec {
            start_ns: start,
            end_ns: start + dur,
            stream: self.stream,
            correlation_id: self.correlation,
            device: 0,
            name_id: kind.name_id,
            grid_x: kind.grid[0],
            grid_y: kind.grid[1],
            grid_z: kind.grid[2],
            block_x: kind.block[0],
            block_y: kind.block[1],
            block_z: kind.block[2],
            registers_per_thread: kind.registers,
            shared_mem_bytes: kind.shared,
            graph_id: 0,
            pid: self.pid,
            flags: 0,
        };
        self.device_ns = start + dur;
        self.correlation += 1;
        self.queue.push_back(api.into());
        self.queue.push_back(kernel.into());
    }

    fn all_reduce(&mut self, bytes: u64) {
        let host = self.rng.jitter(9_000, 20);
        let start = self.device_ns + self.rng.below(3_000);
        let wait = self.rng.below(400_000); // a late peer
        let transfer = bytes / 150; // ~150 GB/s bus bandwidth
        let common = NcclColl {
            comm: self.comm,
            seq: self.seq,
            count: bytes / 2,
            bytes,
            stream: self.nccl_stream,
            pid: self.pid,
            tid: self.tid,
            rank: 0,
            nranks: 8,
            op: CollOp::AllReduce as u32,
            dtype: NcclDtype::Bfloat16 as u32,
            ..Default::default()
        };
        self.queue.push_back(
            NcclColl { start_ns: self.host_ns, end_ns: self.host_ns + host, phase: NcclPhase::Host as u32, ..common }
                .into(),
        );
        if self.nccl_kernel.is_none() {
            self.queue.push_back(
                NcclColl {
                    start_ns: start,
                    end_ns: start + wait + transfer,
                    phase: NcclPhase::Device as u32,
                    device: 0,
                    ..common
                }
                .into(),
            );
        }
        if let Some(name_id) = self.nccl_kernel {
            self.queue.push_back(
                KernelExec {
                    start_ns: start,
                    end_ns: start + wait + transfer,
                    stream: self.nccl_stream,
                    correlation_id: self.correlation,
                    device: 0,
                    name_id,
                    grid_x: 32,
                    grid_y: 1,
                    grid_z: 1,
                    block_x: 640,
                    block_y: 1,
                    block_z: 1,
                    pid: self.pid,
                    ..Default::default()
                }
                .into(),
            );
            self.correlation += 1;
        }
        self.host_ns += host;
        self.seq += 1;
    }

    fn samples_until(&mut self, t: u64) {
        while self.next_sample_ns < t {
            let busy = 90.0 + self.rng.below(100) as f64 / 10.0;
            let tensor = (self.rng.below(4000) as f64) / 10_000.0;
            let ts = self.next_sample_ns;
            self.queue.push_back(
                DeviceSample {
                    time_ns: ts,
                    value: busy,
                    device: 0,
                    metric: Metric::GpuUtilPercent as u32,
                    pid: self.pid,
                    reserved: 0,
                }
                .into(),
            );
            self.queue.push_back(
                DeviceSample {
                    time_ns: ts,
                    value: tensor,
                    device: 0,
                    metric: Metric::TensorActive as u32,
                    pid: self.pid,
                    reserved: 0,
                }
                .into(),
            );
            self.next_sample_ns += 1_000_000;
        }
    }

    /// One training step's records.
    fn step(&mut self) {
        let step_start = self.host_ns;
        // Data loader: the main thread waits on a futex for the next batch.
        let wait = self.rng.jitter(800_000, 40);
        self.queue.push_back(
            HostStall {
                start_ns: self.host_ns,
                end_ns: self.host_ns + wait,
                pid: self.pid,
                tid: self.tid,
                reason: StallReason::Futex as u32,
                syscall: 202,
            }
            .into(),
        );
        self.host_ns += wait;
        let copy = self.rng.jitter(120_000, 5);
        self.queue.push_back(
            MemOp {
                start_ns: self.host_ns + 3_000,
                end_ns: self.host_ns + 3_000 + copy,
                bytes: 16 << 20,
                stream: self.stream,
                correlation_id: self.correlation,
                device: 0,
                kind: MemOpKind::HtoD as u32,
                pid: self.pid,
            }
            .into(),
        );
        self.correlation += 1;
        self.device_ns = self.device_ns.max(self.host_ns + 3_000 + copy);
        for _layer in 0..24 {
            for k in [2, 0, 3, 0, 1, 0] {
                self.kernel(k);
            }
        }
        for layer in 0..24 {
            for k in [5, 4, 5, 1, 2, 6] {
                self.kernel(k);
            }
            if layer % 4 == 3 {
                self.all_reduce(64 << 20);
            }
        }
        self.kernel(7);
        self.queue.push_back(
            StepMarker {
                start_ns: step_start,
                end_ns: self.device_ns,
                step: self.step,
                pid: self.pid,
                name_id: self.step_name,
                source: StepSource::Nvtx as u32,
                device: 0,
            }
            .into(),
        );
        self.samples_until(self.device_ns);
        self.host_ns = self.host_ns.max(self.device_ns);
        self.step += 1;
    }
}

impl Iterator for TrainingStream {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.queue.is_empty() {
            self.step();
        }
        self.queue.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_deterministic_and_mixed() {
        let a: Vec<Record> = TrainingStream::new(7, &Interner::new()).take(5000).collect();
        let b: Vec<Record> = TrainingStream::new(7, &Interner::new()).take(5000).collect();
        assert_eq!(a, b);
        let mut batch = RecordBatch::default();
        a.iter().for_each(|r| batch.push(*r));
        for kind in
            [Kind::KernelExec, Kind::ApiCall, Kind::NcclColl, Kind::HostStall, Kind::DeviceSample, Kind::StepMarker]
        {
            assert!(batch.count(kind) > 0, "{kind:?} missing from the stream");
        }
        // Kernels on one stream never overlap and the step takes tens of ms, as on a real GPU.
        for w in batch.kernels.windows(2) {
            assert!(w[1].start_ns >= w[0].end_ns);
        }
        let step = &batch.steps[0];
        assert!((20_000_000..200_000_000).contains(&(step.end_ns - step.start_ns)));
    }
}
