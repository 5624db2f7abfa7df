//! What a device step does, kernel by kernel: launches, FLOPs and bytes from each launcher's
//! cost figures, device time from CUDA events where there is a GPU, and a roofline model of an
//! H200 (the time no implementation of that kernel can beat) where there is none.
//!
//! [`Profiler`] wraps any runtime and records the launches of a step; [`DryRuntime`] is a
//! device that runs nothing (allocations are address ranges, copies do nothing), so that the
//! engine's exact launch sequence at any model size can be counted in an instant on a machine
//! without a GPU.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::cuda::{CudaEvent, CudaRuntime};
use super::emu::EMULATED_SMS;
use super::error::GpuResult;
use super::runtime::{Cost, DevicePtr, Launch, Runtime};
use super::stream::{Counters, FenceId, GraphId, HostHeap, HostPtr, RuntimeCounts};

/// The H200 (SXM) figures the roofline model uses, from the vendor's datasheet: leads, not
/// measurements.
pub mod h200 {
    /// Dense bf16 tensor-core peak, FLOP/s. mma.sync (HMMA) kernels reach well under it on
    /// Hopper (wgmma is the full-rate path), so their bound is optimistic.
    pub const BF16_FLOPS: f64 = 990e12;
    /// fp32 (non-tensor) peak, FLOP/s.
    pub const FP32_FLOPS: f64 = 67e12;
    /// HBM3e bandwidth, bytes/s.
    pub const BYTES_PER_S: f64 = 4.8e12;
}

/// The fastest an H200 could run a launch of `kernel` with this cost: the larger of its
/// arithmetic at the unit's peak (tensor cores for the bf16 matmuls and attention, fp32
/// otherwise) and its
/// bytes at the memory bandwidth. Seconds.
pub fn roofline_seconds(kernel: &str, cost: Cost) -> f64 {
    // The tensor-core kernels: vitk_mm_tc_* and vitk_attention_*_tc<hd>.
    let peak = if kernel.starts_with("vitk_mm_tc_") || kernel.contains("_tc") {
        h200::BF16_FLOPS
    } else {
        h200::FP32_FLOPS
    };
    (cost.flops / peak).max(cost.bytes / h200::BYTES_PER_S)
}

/// A device that executes nothing: launches are checked by the launchers and recorded by a
/// [`Profiler`], memory is address ranges (downloads read zeros). Reports an H200's 132 SMs,
/// so launch plans are the ones a GPU would run.
#[derive(Default)]
pub struct DryRuntime {
    next: AtomicU64,
    counters: Counters,
    host: HostHeap,
    capturing: AtomicBool,
}

impl DryRuntime {
    pub fn new() -> Self {
        DryRuntime {
            next: AtomicU64::new(1 << 20),
            ..Default::default()
        }
    }
}

impl Runtime for DryRuntime {
    fn describe(&self) -> String {
        "dry run (an H200's launch plans, nothing executed)".into()
    }
    fn sm_count(&self) -> usize {
        EMULATED_SMS
    }
    fn alloc_bytes(&self, bytes: usize) -> GpuResult<DevicePtr> {
        // 256-byte aligned ranges, as cuMemAlloc gives.
        let len = (bytes.max(1) as u64).div_ceil(256) * 256;
        Ok(DevicePtr(self.next.fetch_add(len, Ordering::Relaxed)))
    }
    fn free_bytes(&self, _: DevicePtr) -> GpuResult<()> {
        Ok(())
    }
    fn upload_bytes(&self, _: DevicePtr, _: &[u8]) -> GpuResult<()> {
        self.counters.pageable_copy();
        Ok(())
    }
    fn download_bytes(&self, dst: &mut [u8], _: DevicePtr) -> GpuResult<()> {
        self.counters.pageable_copy();
        dst.fill(0);
        Ok(())
    }
    fn memset_bytes(&self, _: DevicePtr, _: u8, _: usize) -> GpuResult<()> {
        Ok(())
    }
    fn launch(&self, _: &Launch) -> GpuResult<()> {
        self.counters.launch(self.capturing.load(Ordering::Relaxed));
        Ok(())
    }
    fn synchronize(&self) -> GpuResult<()> {
        self.counters.host_sync();
        Ok(())
    }
    fn alloc_host(&self, bytes: usize) -> GpuResult<HostPtr> {
        self.host.alloc(bytes)
    }
    fn free_host(&self, ptr: HostPtr) -> GpuResult<()> {
        self.host.free(ptr)
    }
    fn upload_async(&self, _: DevicePtr, src: HostPtr, bytes: usize) -> GpuResult<()> {
        self.counters.async_copy();
        self.host.check("dry async upload", src, bytes)
    }
    fn download_async(&self, dst: HostPtr, _: DevicePtr, bytes: usize) -> GpuResult<()> {
        self.counters.async_copy();
        self.host.check("dry async download", dst, bytes)
    }
    fn fence_create(&self) -> GpuResult<FenceId> {
        Ok(FenceId(self.next.fetch_add(1, Ordering::Relaxed)))
    }
    fn fence_record(&self, _: FenceId) -> GpuResult<()> {
        Ok(())
    }
    fn fence_wait(&self, _: FenceId) -> GpuResult<()> {
        self.counters.fence_wait();
        Ok(())
    }
    fn fence_destroy(&self, _: FenceId) {}
    fn begin_capture(&self) -> GpuResult<()> {
        self.capturing.store(true, Ordering::Relaxed);
        Ok(())
    }
    fn end_capture(&self) -> GpuResult<GraphId> {
        self.capturing.store(false, Ordering::Relaxed);
        Ok(GraphId(self.next.fetch_add(1, Ordering::Relaxed)))
    }
    fn graph_launch(&self, _: GraphId) -> GpuResult<()> {
        self.counters.graph_launch();
        Ok(())
    }
    fn graph_destroy(&self, _: GraphId) {}
    fn counts(&self) -> RuntimeCounts {
        self.counters.snapshot()
    }
}

/// One recorded launch; with CUDA, the events around it.
struct Record {
    kernel: &'static str,
    cost: Cost,
    events: Option<(CudaEvent, CudaEvent)>,
}

/// Per-kernel totals of the recorded launches.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelStats {
    pub calls: usize,
    pub flops: f64,
    pub bytes: f64,
    /// Device time from CUDA events, ms (None without a GPU).
    pub ms: Option<f64>,
    /// The roofline model's lower bound on an H200, ms.
    pub bound_ms: f64,
}

/// What the recorded steps did.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub kernels: BTreeMap<&'static str, KernelStats>,
    /// What the recorded steps asked of the runtime (launches, host waits, copies).
    pub counts: RuntimeCounts,
}

/// A runtime that records every kernel launch of `inner` while recording is on (with `cuda`,
/// each bracketed by CUDA events); launches into a graph capture are recorded without events.
pub struct Profiler {
    inner: Arc<dyn Runtime>,
    cuda: Option<Arc<CudaRuntime>>,
    recording: Mutex<Option<Vec<Record>>>,
    counts_at_start: Mutex<RuntimeCounts>,
    capturing: AtomicBool,
}

impl Profiler {
    pub fn new(inner: Arc<dyn Runtime>, cuda: Option<Arc<CudaRuntime>>) -> Self {
        Profiler {
            inner,
            cuda,
            recording: Mutex::new(None),
            counts_at_start: Mutex::new(RuntimeCounts::default()),
            capturing: AtomicBool::new(false),
        }
    }

    /// Starts recording (forgetting anything recorded before).
    pub fn start(&self) {
        *self.recording.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
        *self
            .counts_at_start
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = self.inner.counts();
    }

    /// Stops recording and sums the launches per kernel (waiting for the device first, a wait
    /// not counted).
    pub fn finish(&self) -> GpuResult<Profile> {
        let counts = self.inner.counts().since(
            &self
                .counts_at_start
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        self.inner.synchronize()?;
        let records = self
            .recording
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        let mut p = Profile {
            counts,
            ..Default::default()
        };
        for r in records {
            let k = p.kernels.entry(r.kernel).or_default();
            k.calls += 1;
            k.flops += r.cost.flops;
            k.bytes += r.cost.bytes;
            k.bound_ms += 1e3 * roofline_seconds(r.kernel, r.cost);
            if let (Some((a, b)), Some(cuda)) = (&r.events, &self.cuda) {
                *k.ms.get_or_insert(0.0) += cuda.elapsed_ms(a, b)?;
            }
        }
        Ok(p)
    }

    fn recording(&self) -> bool {
        self.recording.lock().map(|r| r.is_some()).unwrap_or(false)
    }
}

impl Runtime for Profiler {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn sm_count(&self) -> usize {
        self.inner.sm_count()
    }
    fn alloc_bytes(&self, bytes: usize) -> GpuResult<DevicePtr> {
        self.inner.alloc_bytes(bytes)
    }
    fn free_bytes(&self, ptr: DevicePtr) -> GpuResult<()> {
        self.inner.free_bytes(ptr)
    }
    fn upload_bytes(&self, dst: DevicePtr, src: &[u8]) -> GpuResult<()> {
        self.inner.upload_bytes(dst, src)
    }
    fn download_bytes(&self, dst: &mut [u8], src: DevicePtr) -> GpuResult<()> {
        self.inner.download_bytes(dst, src)
    }
    fn memset_bytes(&self, dst: DevicePtr, byte: u8, bytes: usize) -> GpuResult<()> {
        self.inner.memset_bytes(dst, byte, bytes)
    }
    fn launch(&self, launch: &Launch) -> GpuResult<()> {
        if !self.recording() {
            return self.inner.launch(launch);
        }
        let events = match &self.cuda {
            Some(cuda) if !self.capturing.load(Ordering::Relaxed) => {
                let (a, b) = (cuda.event()?, cuda.event()?);
                cuda.record(&a)?;
                self.inner.launch(launch)?;
                cuda.record(&b)?;
                Some((a, b))
            }
            _ => {
                self.inner.launch(launch)?;
                None
            }
        };
        if let Some(r) = self
            .recording
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            r.push(Record {
                kernel: launch.kernel,
                cost: launch.cost,
                events,
            });
        }
        Ok(())
    }
    fn synchronize(&self) -> GpuResult<()> {
        self.inner.synchronize()
    }
    fn alloc_host(&self, bytes: usize) -> GpuResult<HostPtr> {
        self.inner.alloc_host(bytes)
    }
    fn free_host(&self, ptr: HostPtr) -> GpuResult<()> {
        self.inner.free_host(ptr)
    }
    fn upload_async(&self, dst: DevicePtr, src: HostPtr, bytes: usize) -> GpuResult<()> {
        self.inner.upload_async(dst, src, bytes)
    }
    fn download_async(&self, dst: HostPtr, src: DevicePtr, bytes: usize) -> GpuResult<()> {
        self.inner.download_async(dst, src, bytes)
    }
    fn fence_create(&self) -> GpuResult<FenceId> {
        self.inner.fence_create()
    }
    fn fence_record(&self, fence: FenceId) -> GpuResult<()> {
        self.inner.fence_record(fence)
    }
    fn fence_wait(&self, fence: FenceId) -> GpuResult<()> {
        self.inner.fence_wait(fence)
    }
    fn fence_destroy(&self, fence: FenceId) {
        self.inner.fence_destroy(fence)
    }
    fn begin_capture(&self) -> GpuResult<()> {
        self.inner.begin_capture()?;
        self.capturing.store(true, Ordering::Relaxed);
        Ok(())
    }
    fn end_capture(&self) -> GpuResult<GraphId> {
        self.capturing.store(false, Ordering::Relaxed);
        self.inner.end_capture()
    }
    fn graph_launch(&self, graph: GraphId) -> GpuResult<()> {
        self.inner.graph_launch(graph)
    }
    fn graph_destroy(&self, graph: GraphId) {
        self.inner.graph_destroy(graph)
    }
    fn counts(&self) -> RuntimeCounts {
        self.inner.counts()
    }
}
