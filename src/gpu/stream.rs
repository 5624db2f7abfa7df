//! The asynchronous side of a runtime: page-locked (pinned) host buffers that stream-ordered
//! copies read and write while the host goes on, fences that tell the host when the device has
//! passed a point of the stream, captured graphs replayed with one call, and the counts of
//! what a runtime was asked to do (which the tests and `vitk profile` read).
//!
//! Every runtime has one stream: launches, memsets and copies run in the order they are
//! issued. A pageable copy (`upload_bytes`/`download_bytes` of a Rust slice) waits for the
//! stream to drain; the pinned copies here do not, and are the only copies a training step
//! issues.

use std::alloc::Layout;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::error::{GpuError, GpuResult};
use super::runtime::{Elem, Runtime, View};

/// A pinned host address from `Runtime::alloc_host`. Opaque: only passed back to the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPtr(pub(crate) usize);

/// A runtime's handle of a fence (a CUDA event).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FenceId(pub(crate) u64);

/// A runtime's handle of an instantiated graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GraphId(pub(crate) u64);

/// What a runtime has been asked to do since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeCounts {
    /// Kernels launched one by one (not those recorded into graphs or replayed by them).
    pub launches: u64,
    /// Kernels recorded into graphs while capturing.
    pub captured: u64,
    /// Graph replays.
    pub graph_launches: u64,
    /// Host waits for the whole stream: `synchronize` and every pageable copy.
    pub host_syncs: u64,
    /// Copies from or to pageable host memory (each one a host wait).
    pub pageable_copies: u64,
    /// Stream-ordered copies from or to pinned host memory.
    pub async_copies: u64,
    /// Host waits for a fence (a point of the stream issued earlier).
    pub fence_waits: u64,
}

impl RuntimeCounts {
    /// What happened between `before` and `self`.
    pub fn since(&self, before: &RuntimeCounts) -> RuntimeCounts {
        RuntimeCounts {
            launches: self.launches - before.launches,
            captured: self.captured - before.captured,
            graph_launches: self.graph_launches - before.graph_launches,
            host_syncs: self.host_syncs - before.host_syncs,
            pageable_copies: self.pageable_copies - before.pageable_copies,
            async_copies: self.async_copies - before.async_copies,
            fence_waits: self.fence_waits - before.fence_waits,
        }
    }
}

/// The counters a runtime keeps (shared by the implementations).
#[derive(Debug, Default)]
pub struct Counters {
    launches: AtomicU64,
    captured: AtomicU64,
    graph_launches: AtomicU64,
    host_syncs: AtomicU64,
    pageable_copies: AtomicU64,
    async_copies: AtomicU64,
    fence_waits: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn launch(&self, capturing: bool) {
        bump(if capturing {
            &self.captured
        } else {
            &self.launches
        });
    }
    pub fn graph_launch(&self) {
        bump(&self.graph_launches);
    }
    pub fn host_sync(&self) {
        bump(&self.host_syncs);
    }
    /// A pageable copy: also a host wait.
    pub fn pageable_copy(&self) {
        bump(&self.pageable_copies);
        bump(&self.host_syncs);
    }
    pub fn async_copy(&self) {
        bump(&self.async_copies);
    }
    pub fn fence_wait(&self) {
        bump(&self.fence_waits);
    }
    pub fn snapshot(&self) -> RuntimeCounts {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RuntimeCounts {
            launches: r(&self.launches),
            captured: r(&self.captured),
            graph_launches: r(&self.graph_launches),
            host_syncs: r(&self.host_syncs),
            pageable_copies: r(&self.pageable_copies),
            async_copies: r(&self.async_copies),
            fence_waits: r(&self.fence_waits),
        }
    }
}

/// The error of an operation a stream capture does not allow (a host wait, a pageable copy).
pub fn not_while_capturing(op: &str) -> GpuError {
    GpuError::Driver {
        op: op.into(),
        message: "not allowed while a graph is being captured (it would wait for the device)"
            .into(),
    }
}

/// Heap memory standing in for pinned memory on runtimes without a driver (the emulator, the
/// dry run): 64-byte aligned blocks, with the table that frees them and checks that copies
/// stay inside one.
#[derive(Debug, Default)]
pub struct HostHeap {
    blocks: Mutex<HashMap<usize, Layout>>,
}

impl HostHeap {
    fn blocks(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Layout>> {
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn alloc(&self, bytes: usize) -> GpuResult<HostPtr> {
        let bad = |message: String| GpuError::Memory {
            op: "pinned alloc".into(),
            message,
        };
        let layout =
            Layout::from_size_align(bytes.max(1), 64).map_err(|e| bad(format!("{bytes}: {e}")))?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            return Err(bad(format!("out of host memory for {bytes} bytes")));
        }
        self.blocks().insert(p as usize, layout);
        Ok(HostPtr(p as usize))
    }

    pub fn free(&self, p: HostPtr) -> GpuResult<()> {
        let layout = self.blocks().remove(&p.0).ok_or_else(|| GpuError::Memory {
            op: "pinned free".into(),
            message: format!("{:#x} is not a pinned buffer of this runtime", p.0),
        })?;
        // SAFETY: allocated by `alloc` with this layout, out of the table so freed once.
        unsafe { std::alloc::dealloc(p.0 as *mut u8, layout) };
        Ok(())
    }

    /// Checks that [p, p + bytes) lies inside one block.
    pub fn check(&self, op: &str, p: HostPtr, bytes: usize) -> GpuResult<()> {
        let inside = self
            .blocks()
            .iter()
            .any(|(&start, l)| p.0 >= start && p.0 + bytes <= start + l.size());
        if inside {
            Ok(())
        } else {
            Err(GpuError::Memory {
                op: op.into(),
                message: format!(
                    "{bytes} bytes at host address {:#x} are not inside a pinned buffer",
                    p.0
                ),
            })
        }
    }
}

impl Drop for HostHeap {
    fn drop(&mut self) {
        for (p, layout) in self.blocks().drain() {
            // SAFETY: allocated by `alloc` with this layout and never freed.
            unsafe { std::alloc::dealloc(p as *mut u8, layout) };
        }
    }
}

/// `len` elements of pinned host memory, freed on drop. The device reads and writes it through
/// [`PinnedBuffer::upload_to`] and [`PinnedBuffer::download_from`] at their place in the
/// stream, so its contents belong to the device from such a copy until a fence recorded after
/// it has been waited for: the owner (the engine's step slots) must not touch it in between.
pub struct PinnedBuffer<T: Elem> {
    rt: Arc<dyn Runtime>,
    ptr: HostPtr,
    len: usize,
    _elem: PhantomData<T>,
}

// SAFETY: the buffer owns its allocation like a Box<[T]>; T: Pod is Send + Sync.
unsafe impl<T: Elem> Send for PinnedBuffer<T> {}
unsafe impl<T: Elem> Sync for PinnedBuffer<T> {}

impl<T: Elem> PinnedBuffer<T> {
    /// Zero-filled.
    pub fn new(rt: &Arc<dyn Runtime>, len: usize) -> GpuResult<Self> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| GpuError::Memory {
                op: "pinned alloc".into(),
                message: format!("{len} elements overflow usize"),
            })?;
        let ptr = rt.alloc_host(bytes.max(1))?;
        let mut b = PinnedBuffer {
            rt: rt.clone(),
            ptr,
            len,
            _elem: PhantomData,
        };
        b.as_mut_slice().fill(T::zeroed());
        Ok(b)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `alloc_host` returned at least len * size_of::<T>() bytes aligned to 64 (a
        // page on CUDA), zero-initialised in `new`; T is Pod.
        unsafe { std::slice::from_raw_parts(self.ptr.0 as *const T, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as `as_slice`; `&mut self` makes this the only host reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.0 as *mut T, self.len) }
    }

    fn fits(&self, op: &str, n: usize) -> GpuResult<()> {
        if n <= self.len {
            Ok(())
        } else {
            Err(GpuError::Memory {
                op: op.into(),
                message: format!(
                    "a view of {n} elements, the pinned buffer holds {}",
                    self.len
                ),
            })
        }
    }

    /// Enqueues a copy of the first `dst.len()` elements to `dst`.
    pub fn upload_to(&self, dst: View<T>) -> GpuResult<()> {
        self.fits("async upload", dst.len())?;
        self.rt
            .upload_async(dst.device_ptr(), self.ptr, dst.bytes())
    }

    /// Enqueues a copy of `src` into the first `src.len()` elements.
    pub fn download_from(&mut self, src: View<T>) -> GpuResult<()> {
        self.fits("async download", src.len())?;
        self.rt
            .download_async(self.ptr, src.device_ptr(), src.bytes())
    }
}

impl<T: Elem> Drop for PinnedBuffer<T> {
    fn drop(&mut self) {
        // A copy still in flight may read or write it: wait for the stream first.
        let _ = self.rt.synchronize();
        let _ = self.rt.free_host(self.ptr);
    }
}

/// A point of the stream the host can wait for.
pub struct Fence {
    rt: Arc<dyn Runtime>,
    id: FenceId,
}

impl Fence {
    pub fn new(rt: &Arc<dyn Runtime>) -> GpuResult<Self> {
        Ok(Fence {
            rt: rt.clone(),
            id: rt.fence_create()?,
        })
    }

    /// Marks the current end of the stream.
    pub fn record(&self) -> GpuResult<()> {
        self.rt.fence_record(self.id)
    }

    /// Waits until the device has passed the last `record` (at once if never recorded).
    pub fn wait(&self) -> GpuResult<()> {
        self.rt.fence_wait(self.id)
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        self.rt.fence_destroy(self.id);
    }
}

/// An instantiated graph: the kernels, memsets and copies issued between `begin_capture`
/// and `end_capture`, with their arguments as they were then, replayed by one call.
pub struct Graph {
    rt: Arc<dyn Runtime>,
    id: GraphId,
    /// Kernels in the graph.
    pub kernels: u64,
}

impl Graph {
    /// Captures what `record` issues on `rt` (nothing runs until [`Graph::launch`]). The
    /// capture is ended whatever `record` returns, so the stream stays usable after an error.
    pub fn capture(
        rt: &Arc<dyn Runtime>,
        record: impl FnOnce() -> GpuResult<()>,
    ) -> GpuResult<Self> {
        let before = rt.counts().captured;
        rt.begin_capture()?;
        let recorded = record();
        let ended = rt.end_capture();
        match (recorded, ended) {
            (Ok(()), Ok(id)) => Ok(Graph {
                rt: rt.clone(),
                id,
                kernels: rt.counts().captured - before,
            }),
            (Err(e), Ok(id)) => {
                rt.graph_destroy(id);
                Err(e)
            }
            (Err(e), Err(_)) | (Ok(()), Err(e)) => Err(e),
        }
    }

    /// Enqueues one replay.
    pub fn launch(&self) -> GpuResult<()> {
        self.rt.graph_launch(self.id)
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        self.rt.graph_destroy(self.id);
    }
}
