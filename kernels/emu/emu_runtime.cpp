// The emulator runtime: device allocations with guard bytes, the kernel registry, and the
// block scheduler that runs every CUDA thread of a block as a fiber.
//
// Execution model: blocks run one after another on the calling host thread (deterministic:
// the same launch always executes in the same order). Within a block, fibers run round-robin
// in linear thread order; a fiber only gives up the CPU at __syncthreads() or a warp
// collective, so a kernel without either runs each thread to completion in turn.
//
// Limits (those of an H200, sm_90): 1024 threads per block (z <= 64), grid y/z <= 65535;
// static shared memory <= 48 KiB (the compile-time limit); static + dynamic <= 227 KiB per
// block, which on a GPU requires the opt-in attribute CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_-
// SIZE_BYTES: the CUDA runtime (src/gpu/cuda.rs) sets it for launches above 48 KiB.
//
// What is reported instead of silently working (a GPU would fail, hang or corrupt):
// - a barrier that not every thread of the block reaches, or threads waiting at different
//   __syncthreads() call sites;
// - a warp collective whose mask names a lane that exited, or lanes of one mask at different
//   collectives; a deadlock of any other kind is described thread by thread;
// - writes past either end of a device buffer passed as a kernel parameter (guard bytes),
//   or past the static/dynamic shared memory of a block;
// - reads (and writes) past the end of a device buffer: every allocation ends (up to < 16
//   bytes of NaN-poisoned alignment slack) at an inaccessible page, and the fault is turned
//   into an error of the launch naming the kernel, the thread, the buffer and the offset;
// - a non-null pointer parameter that is not inside an emulator allocation.
// Device buffers start 16-byte aligned (enough for every vector access a kernel makes; the
// launchers test real alignment, so the same paths run as on a GPU for aligned views).
// A shuffle reading a lane that is not taking part returns all-ones bits (NaN for floats),
// the emulator's version of "undefined".
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_emu.h"
#include "emu_fiber.h"
#include "vitk_emu.h"

namespace vitk_emu {

thread_local const ThreadView* g_thread = nullptr;
thread_local const BlockView* g_block = nullptr;

namespace {

constexpr std::size_t kMaxThreads = 1024;
constexpr std::size_t kMaxStaticShared = 48 * 1024;
constexpr std::size_t kMaxShared = 227 * 1024;
constexpr std::size_t kGuard = 256;       // guard bytes before a device buffer
constexpr std::size_t kAlign = 16;        // alignment of a device buffer's start
constexpr std::size_t kSharedGuard = 64;  // after each shared-memory area
constexpr unsigned char kGuardByte = 0xA5;
constexpr unsigned char kPoisonByte = 0xFF;  // fresh memory reads as NaN / -1
constexpr std::size_t kStackSize = 128 * 1024;

thread_local std::string t_last_error;

int set_error(int code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
int set_error(int code, const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  t_last_error = buf;
  return code;
}

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

const char* base_name(const char* path) {
  const char* s = std::strrchr(path, '/');
  return s ? s + 1 : path;
}

// ---- device allocations ----------------------------------------------------------------------

// One device buffer in its own mapping:
//   [inaccessible page | guard bytes .. | user bytes | slack < 16 | inaccessible page]
// The user bytes end as close to the trailing inaccessible page as 16-byte alignment of the
// start allows, so a read past the end faults (or, within the slack, reads NaN poison).
struct Allocation {
  unsigned char* map;  // start of the mapping (its first page is inaccessible)
  std::size_t map_len;
  unsigned char* user;  // the device pointer
  std::size_t size;
  std::size_t slack;  // poisoned bytes between the end of the buffer and the trailing page
};

std::size_t page_size() { return std::size_t(sysconf(_SC_PAGESIZE)); }

std::mutex g_alloc_mutex;
std::map<std::uintptr_t, Allocation>& allocations() {
  static std::map<std::uintptr_t, Allocation> m;
  return m;
}

// The allocation holding [p, p + bytes), or nullptr. Caller holds g_alloc_mutex.
const Allocation* find_allocation(const void* p, std::size_t bytes, std::uintptr_t* base) {
  auto& m = allocations();
  auto addr = reinterpret_cast<std::uintptr_t>(p);
  auto it = m.upper_bound(addr);
  if (it == m.begin()) return nullptr;
  --it;
  if (addr - it->first > it->second.size || bytes > it->second.size - (addr - it->first))
    return nullptr;
  if (base) *base = it->first;
  return &it->second;
}

// Number of changed guard bytes before the buffer and of changed slack bytes after it;
// restores them.
std::pair<std::size_t, std::size_t> check_guards(const Allocation& a) {
  std::size_t before = 0, after = 0;
  unsigned char* head = a.user - kGuard;
  unsigned char* tail = a.user + a.size;
  for (std::size_t i = 0; i < kGuard; i++)
    if (head[i] != kGuardByte) before++, head[i] = kGuardByte;
  for (std::size_t i = 0; i < a.slack; i++)
    if (tail[i] != kPoisonByte) after++, tail[i] = kPoisonByte;
  return {before, after};
}

// ---- kernel registry ---------------------------------------------------------------------------

std::map<std::string, KernelInfo>& registry() {
  static std::map<std::string, KernelInfo> m;
  return m;
}

// ---- the block scheduler -----------------------------------------------------------------------

enum class State { Runnable, AtBarrier, AtWarp, Done };

struct Thread {
  Fiber fiber;
  ThreadView view;
  State state;
  unsigned linear;
  // the pending warp collective
  WarpOp op;
  unsigned mask;
  std::uint64_t payload;
  int param;
  int width;
  const char* file;
  int line;
  std::uint64_t result;
  // a pending warp instruction (WarpOp::Custom)
  WarpFn custom = nullptr;
  const char* what = nullptr;
  void* lane_data = nullptr;
  // cp.async: copies issued but not committed, and committed groups not yet waited for
  struct Copy {
    void* dst;
    const void* src;
    std::size_t bytes, src_bytes;
  };
  std::vector<Copy> uncommitted;
  std::deque<std::vector<Copy>> groups;
};

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::ShflIdx: return "__shfl_sync";
    case WarpOp::ShflUp: return "__shfl_up_sync";
    case WarpOp::ShflDown: return "__shfl_down_sync";
    case WarpOp::ShflXor: return "__shfl_xor_sync";
    case WarpOp::Ballot: return "__ballot_sync";
    case WarpOp::Sync: return "__syncwarp";
    case WarpOp::Custom: return "a warp-wide instruction";
  }
  return "?";
}

struct SharedSite {
  const void* tag;
  std::size_t offset;
  std::size_t bytes;
};

// One per host thread; reused across launches so stacks are mapped once.
struct Runner {
  Fiber sched;
  std::vector<void*> stacks;
  std::vector<Thread> threads;
  unsigned n = 0;
  BlockView view;
  const KernelInfo* kernel = nullptr;
  void** params = nullptr;
  Thread* cur = nullptr;

  unsigned barrier_arrived = 0;
  const char* barrier_file = "";
  int barrier_line = 0;
  unsigned exited = 0;
  std::string error;

  // shared memory: [static arena | guard] and [dynamic | guard]
  std::vector<unsigned char> static_arena = std::vector<unsigned char>(kMaxStaticShared + kSharedGuard);
  std::vector<unsigned char> dynamic_arena;
  std::size_t dynamic_bytes = 0;
  std::vector<SharedSite> sites;  // static layout, identical for every block of a launch
  std::size_t static_used = 0;

  // Memory faults. While blocks run (`in_kernel`), SIGSEGV/SIGBUS in this host thread jumps
  // back to launch() through `fault_jmp` with the faulting address; `buffers` (the launch's
  // pointer parameters) and the fiber stacks name what was hit.
  struct Buffer {
    Allocation alloc;
    std::size_t param;
  };
  std::vector<Buffer> buffers;
  sigjmp_buf fault_jmp;
  volatile sig_atomic_t in_kernel = 0;
  const unsigned char* fault_addr = nullptr;
  bool fault_write = false;
  int fault_signal = 0;

  ~Runner() {
    for (void* s : stacks) munmap(s, kStackSize + page());
  }
  static std::size_t page() { return std::size_t(sysconf(_SC_PAGESIZE)); }

  void* stack(unsigned i) {
    while (stacks.size() <= i) {
      // Lazily committed; the lowest page is a guard so a runaway stack faults loudly.
      void* s = mmap(nullptr, kStackSize + page(), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (s == MAP_FAILED) return nullptr;
      mprotect(s, page(), PROT_NONE);
      stacks.push_back(s);
    }
    return static_cast<unsigned char*>(stacks[i]) + page();
  }

  std::string where(const Thread& t) const {
    return format("thread (%u,%u,%u) of block (%u,%u,%u)", t.view.thread_idx.x,
                  t.view.thread_idx.y, t.view.thread_idx.z, view.block_idx.x, view.block_idx.y,
                  view.block_idx.z);
  }

  // Called from inside a fiber: record the error and leave for good.
  [[noreturn]] void fail(const std::string& msg) {
    if (error.empty()) error = msg;
    fiber_switch(&cur->fiber, &sched);
    __builtin_unreachable();  // the scheduler never resumes a fiber after an error
  }

  void yield() {
    Thread* t = cur;
    fiber_switch(&t->fiber, &sched);
  }

  std::string deadlock_report() const {
    std::string s = format("deadlock in block (%u,%u,%u):", view.block_idx.x, view.block_idx.y,
                           view.block_idx.z);
    unsigned at_barrier = 0;
    for (unsigned i = 0; i < n; i++)
      if (threads[i].state == State::AtBarrier) at_barrier++;
    if (at_barrier)
      s += format(" %u of %u threads wait at __syncthreads (%s:%d), %u exited;", at_barrier, n,
                  base_name(barrier_file), barrier_line, exited);
    int shown = 0;
    for (unsigned i = 0; i < n && shown < 4; i++) {
      const Thread& t = threads[i];
      if (t.state != State::AtWarp) continue;
      s += format(" %s waits in %s(mask 0x%08x) at %s:%d;", where(t).c_str(), op_name(t.op),
                  t.mask, base_name(t.file), t.line);
      shown++;
    }
    return s;
  }

  // Runs one block to completion; false with `error` set on a fault.
  bool run_block() {
    barrier_arrived = 0;
    exited = 0;
    const dim3 bd = view.block_dim;
    for (unsigned i = 0; i < n; i++) {
      Thread& t = threads[i];
      t.linear = i;
      t.view.thread_idx = {i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
      t.state = State::Runnable;
      t.uncommitted.clear();
      t.groups.clear();
      fiber_init(&t.fiber, stack(i), kStackSize, &thread_main, &t);
    }
    // Fresh shared memory holds garbage on a GPU: poison it so reads-before-writes show.
    std::memset(static_arena.data(), kPoisonByte, static_used + kSharedGuard);
    std::memset(dynamic_arena.data(), kPoisonByte, dynamic_bytes);
    std::memset(dynamic_arena.data() + dynamic_bytes, kGuardByte, kSharedGuard);

    g_block = &view;
    for (;;) {
      bool ran = false, all_done = true;
      for (unsigned i = 0; i < n; i++) {
        Thread& t = threads[i];
        if (t.state == State::Runnable) {
          ran = true;
          cur = &t;
          g_thread = &t.view;
          fiber_switch(&sched, &t.fiber);
          if (!error.empty()) return false;
        }
        if (t.state != State::Done) all_done = false;
      }
      if (all_done) break;
      if (!ran) {
        error = deadlock_report();
        return false;
      }
    }
    return check_shared_guards();
  }

  bool check_shared_guards() {
    // Static sites are packed in order; a write past the last one lands in the unused arena
    // tail, so the guard right after the used part is what catches it.
    for (std::size_t i = static_used; i < static_used + kSharedGuard; i++)
      if (static_arena[i] != kPoisonByte) {
        error = format("wrote past the end of its %zu bytes of static shared memory in block (%u,%u,%u)",
                       static_used, view.block_idx.x, view.block_idx.y, view.block_idx.z);
        return false;
      }
    for (std::size_t i = 0; i < kSharedGuard; i++)
      if (dynamic_arena[dynamic_bytes + i] != kGuardByte) {
        error = format("wrote past the end of its %zu bytes of dynamic shared memory in block (%u,%u,%u)",
                       dynamic_bytes, view.block_idx.x, view.block_idx.y, view.block_idx.z);
        return false;
      }
    return true;
  }

  std::string describe_fault() const {
    const std::string who = cur ? where(*cur) : std::string("the block scheduler");
    const char* did = fault_write ? "wrote" : "read";
    const unsigned char* a = fault_addr;
    for (const Buffer& b : buffers) {
      const Allocation& m = b.alloc;
      if (a < m.map || a >= m.map + m.map_len) continue;
      if (a >= m.user)
        return format("%s %s at byte offset %zu of the %zu-byte buffer of pointer parameter "
                      "#%zu, past its end",
                      who.c_str(), did, std::size_t(a - m.user), m.size, b.param);
      return format("%s %s %zu bytes before the start of the %zu-byte buffer of pointer "
                    "parameter #%zu",
                    who.c_str(), did, std::size_t(m.user - a), m.size, b.param);
    }
    for (void* s : stacks) {
      const auto* lo = static_cast<const unsigned char*>(s);
      if (a >= lo && a < lo + page())
        return format("%s overflowed its %zu-byte fiber stack (too much local memory)",
                      who.c_str(), kStackSize);
    }
    return format("%s %s address %p (%s), which is inside none of the launch's buffers",
                  who.c_str(), did, static_cast<const void*>(a),
                  fault_signal == SIGBUS ? "SIGBUS" : "SIGSEGV");
  }

  static void thread_main(void* arg);
};

thread_local Runner* g_runner = nullptr;

// ---- memory faults -----------------------------------------------------------------------------

struct sigaction g_old_segv, g_old_bus;

// A fault inside a kernel becomes an error of its launch; any other fault goes to the handler
// that was installed before (Rust's stack-overflow handler, or the default action).
void on_fault(int sig, siginfo_t* info, void* ctx) {
  Runner* r = g_runner;
  if (r && r->in_kernel) {
    r->in_kernel = 0;
    r->fault_signal = sig;
    r->fault_addr = static_cast<const unsigned char*>(info->si_addr);
#if defined(__x86_64__)
    // Page-fault error code, bit 1: the access was a write.
    r->fault_write = (static_cast<ucontext_t*>(ctx)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#else
    r->fault_write = false;
#endif
    siglongjmp(r->fault_jmp, 1);
  }
  const struct sigaction& old = sig == SIGBUS ? g_old_bus : g_old_segv;
  if (old.sa_flags & SA_SIGINFO) {
    old.sa_sigaction(sig, info, ctx);
    return;
  }
  if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN) {
    old.sa_handler(sig);
    return;
  }
  signal(sig, SIG_DFL);  // returning re-executes the access, which now ends the process
}

void install_fault_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
  });
}

Runner& runner() {
  thread_local Runner r;
  return r;
}

void Runner::thread_main(void* arg) {
  auto* t = static_cast<Thread*>(arg);
  Runner* r = g_runner;
  r->kernel->invoke(r->kernel->kernel, r->params);
  if (!t->uncommitted.empty())
    r->fail(format("%s exited with %zu cp.async copies never committed (cp.async.commit_group)",
                   r->where(*t).c_str(), t->uncommitted.size()));
  t->groups.clear();  // committed prefetches nobody waits for: harmless, dropped
  t->state = State::Done;
  r->exited++;
  if (r->barrier_arrived > 0)
    r->fail(format("%s exited while %u threads wait at __syncthreads (%s:%d): a barrier not "
                   "reached by every thread of the block",
                   r->where(*t).c_str(), r->barrier_arrived, base_name(r->barrier_file),
                   r->barrier_line));
  // Lanes already waiting on a collective that names this lane can never complete.
  unsigned base = t->linear & ~31u, lane = t->linear & 31u;
  for (unsigned l = 0; l < 32 && base + l < r->n; l++) {
    const Thread& o = r->threads[base + l];
    if (o.state == State::AtWarp && (o.mask >> lane & 1u))
      r->fail(format("%s exited while %s waits in %s(mask 0x%08x) at %s:%d, which names it",
                     r->where(*t).c_str(), r->where(o).c_str(), op_name(o.op), o.mask,
                     base_name(o.file), o.line));
  }
  fiber_switch(&t->fiber, &r->sched);
  __builtin_unreachable();
}

// Computes the results of a complete collective for every lane of `group`.
void finish_collective(Runner* r, unsigned base, unsigned group, const Thread& first) {
  if (first.op == WarpOp::Custom) {
    void* lanes[32];
    for (unsigned l = 0; l < 32; l++) lanes[l] = r->threads[base + l].lane_data;
    first.custom(lanes);
    for (unsigned l = 0; l < 32; l++) r->threads[base + l].state = State::Runnable;
    return;
  }
  unsigned ballot = 0;
  for (unsigned l = 0; l < 32; l++)
    if ((group >> l & 1u) && r->threads[base + l].payload != 0) ballot |= 1u << l;
  const unsigned w = unsigned(first.width);
  for (unsigned l = 0; l < 32; l++) {
    if (!(group >> l & 1u)) continue;
    Thread& t = r->threads[base + l];
    unsigned seg = l & ~(w - 1), src = l;
    switch (t.op) {
      case WarpOp::Ballot: t.result = ballot; break;
      case WarpOp::Sync: t.result = 0; break;
      default:
        switch (t.op) {
          case WarpOp::ShflIdx: src = seg + (unsigned(t.param) & (w - 1)); break;
          case WarpOp::ShflUp: src = (l - seg) >= unsigned(t.param) ? l - unsigned(t.param) : l; break;
          case WarpOp::ShflDown: src = (l - seg) + unsigned(t.param) < w ? l + unsigned(t.param) : l; break;
          case WarpOp::ShflXor: src = l ^ unsigned(t.param); if (src >= seg + w) src = l; break;
          default: break;
        }
        if (src == l) t.result = t.payload;
        else if (src < 32 && (group >> src & 1u)) t.result = r->threads[base + src].payload;
        else t.result = ~std::uint64_t(0);  // reading a lane outside the mask: undefined
    }
    t.state = State::Runnable;
  }
}

}  // namespace

// ---- called from kernels through cuda_emu.h ------------------------------------------------

void barrier(const char* file, int line) {
  Runner* r = g_runner;
  Thread* t = r->cur;
  if (r->exited > 0)
    r->fail(format("%s reached __syncthreads (%s:%d) after %u threads of the block exited: a "
                   "barrier not reached by every thread of the block",
                   r->where(*t).c_str(), base_name(file), line, r->exited));
  if (r->barrier_arrived == 0) {
    r->barrier_file = file;
    r->barrier_line = line;
  } else if (line != r->barrier_line || std::strcmp(file, r->barrier_file) != 0) {
    r->fail(format("%s waits at __syncthreads (%s:%d) while others wait at %s:%d",
                   r->where(*t).c_str(), base_name(file), line, base_name(r->barrier_file),
                   r->barrier_line));
  }
  t->state = State::AtBarrier;
  if (++r->barrier_arrived == r->n) {
    for (unsigned i = 0; i < r->n; i++)
      if (r->threads[i].state == State::AtBarrier) r->threads[i].state = State::Runnable;
    r->barrier_arrived = 0;
    return;
  }
  while (t->state != State::Runnable) r->yield();
}

namespace {
std::uint64_t collective(WarpOp op, unsigned mask, std::uint64_t payload, int param, int width,
                         WarpFn custom, const char* what, void* lane_data, const char* file,
                         int line) {
  Runner* r = g_runner;
  Thread* t = r->cur;
  const unsigned lane = t->linear & 31u, base = t->linear & ~31u;
  const char* name = custom ? what : op_name(op);
  if (!(mask >> lane & 1u))
    r->fail(format("%s calls %s at %s:%d with mask 0x%08x, which does not name its own lane %u",
                   r->where(*t).c_str(), name, base_name(file), line, mask, lane));
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    r->fail(format("%s: %s at %s:%d with width %d (must be a power of two <= 32)",
                   r->where(*t).c_str(), name, base_name(file), line, width));
  if (custom && r->n - base < 32)
    r->fail(format("%s: %s at %s:%d needs a full warp of 32 threads; this warp has %u",
                   r->where(*t).c_str(), name, base_name(file), line, r->n - base));
  t->op = op;
  t->mask = mask;
  t->payload = payload;
  t->param = param;
  t->width = width;
  t->file = file;
  t->line = line;
  t->custom = custom;
  t->what = what;
  t->lane_data = lane_data;
  t->state = State::AtWarp;

  // Lanes beyond the end of a partial last warp do not exist: they are not waited for.
  const unsigned existing = r->n - base >= 32 ? 0xffffffffu : (1u << (r->n - base)) - 1u;
  const unsigned group = mask & existing;
  bool complete = true;
  for (unsigned l = 0; l < 32; l++) {
    if (!(group >> l & 1u)) continue;
    const Thread& o = r->threads[base + l];
    if (o.state == State::Done)
      r->fail(format("%s calls %s(mask 0x%08x) at %s:%d, but lane %u named in the mask has "
                     "exited",
                     r->where(*t).c_str(), name, mask, base_name(file), line, l));
    if (o.state != State::AtWarp) {
      complete = false;
      continue;
    }
    if (o.mask != mask || o.op != op || o.width != width || o.custom != custom)
      r->fail(format("warp lanes disagree: %s is in %s(mask 0x%08x) at %s:%d while %s is in "
                     "%s(mask 0x%08x) at %s:%d",
                     r->where(*t).c_str(), name, mask, base_name(file), line,
                     r->where(o).c_str(), o.custom ? o.what : op_name(o.op), o.mask,
                     base_name(o.file), o.line));
  }
  if (complete) finish_collective(r, base, group, *t);
  while (t->state != State::Runnable) r->yield();
  return t->result;
}
}  // namespace

std::uint64_t warp_collective(WarpOp op, unsigned mask, std::uint64_t payload, int param,
                              int width, const char* file, int line) {
  return collective(op, mask, payload, param, width, nullptr, nullptr, nullptr, file, line);
}

void warp_instruction(void* lane_data, WarpFn fn, const char* what, const char* file, int line) {
  collective(WarpOp::Custom, 0xffffffffu, 0, 0, 32, fn, what, lane_data, file, line);
}

bool in_shared(const void* p, std::size_t bytes) {
  Runner* r = g_runner;
  const auto* a = static_cast<const unsigned char*>(p);
  const unsigned char* st = r->static_arena.data();
  const unsigned char* dy = r->dynamic_arena.data();
  return (a >= st && a + bytes <= st + r->static_used) ||
         (a >= dy && a + bytes <= dy + r->dynamic_bytes);
}

void misuse(const char* what, const char* file, int line) {
  Runner* r = g_runner;
  r->fail(format("%s: %s at %s:%d", r->where(*r->cur).c_str(), what, base_name(file), line));
}

void cp_async(void* dst, const void* src, std::size_t bytes, std::size_t src_bytes,
              const char* file, int line) {
  Runner* r = g_runner;
  if (bytes != 4 && bytes != 8 && bytes != 16)
    r->fail(format("%s: cp.async of %zu bytes at %s:%d (4, 8 or 16)", r->where(*r->cur).c_str(),
                   bytes, base_name(file), line));
  if (src_bytes > bytes)
    r->fail(format("%s: cp.async src-size %zu above its %zu bytes at %s:%d",
                   r->where(*r->cur).c_str(), src_bytes, bytes, base_name(file), line));
  if (reinterpret_cast<std::uintptr_t>(dst) % bytes || reinterpret_cast<std::uintptr_t>(src) % bytes)
    r->fail(format("%s: cp.async of %zu bytes with a misaligned address (dst %p, src %p) at %s:%d",
                   r->where(*r->cur).c_str(), bytes, dst, src, base_name(file), line));
  if (!in_shared(dst, bytes))
    r->fail(format("%s: cp.async destination %p is not in the block's shared memory at %s:%d",
                   r->where(*r->cur).c_str(), dst, base_name(file), line));
  r->cur->uncommitted.push_back({dst, src, bytes, src_bytes});
}

void cp_async_commit() {
  Thread* t = g_runner->cur;
  t->groups.push_back(std::move(t->uncommitted));
  t->uncommitted.clear();
}

void cp_async_wait(int pending, const char* file, int line) {
  Runner* r = g_runner;
  Thread* t = r->cur;
  if (pending < 0)
    r->fail(format("%s: cp.async.wait_group %d at %s:%d", r->where(*t).c_str(), pending,
                   base_name(file), line));
  // Complete every group but the newest `pending`, oldest first.
  while (t->groups.size() > std::size_t(pending)) {
    for (const auto& c : t->groups.front()) {
      std::memcpy(c.dst, c.src, c.src_bytes);
      std::memset(static_cast<unsigned char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
    }
    t->groups.pop_front();
  }
}

unsigned lane_active_mask() {
  Runner* r = g_runner;
  const unsigned base = r->cur->linear & ~31u;
  unsigned m = 0;
  for (unsigned l = 0; l < 32 && base + l < r->n; l++)
    if (r->threads[base + l].state != State::Done) m |= 1u << l;
  return m;
}

void trap(const char* what, const char* file, int line) {
  Runner* r = g_runner;
  r->fail(format("%s: %s at %s:%d", r->where(*r->cur).c_str(), what, base_name(file), line));
}

void* shared_static(const void* tag, std::size_t bytes, std::size_t align) {
  Runner* r = g_runner;
  for (const SharedSite& s : r->sites)
    if (s.tag == tag) return r->static_arena.data() + s.offset;
  std::size_t off = (r->static_used + align - 1) / align * align;
  if (off + bytes > kMaxStaticShared)
    r->fail(format("static shared memory of %zu bytes exceeds the %zu-byte limit",
                   off + bytes, kMaxStaticShared));
  if (off + bytes + r->dynamic_bytes > kMaxShared)
    r->fail(format("static (%zu) + dynamic (%zu) shared memory exceeds the %zu-byte limit",
                   off + bytes, r->dynamic_bytes, kMaxShared));
  r->sites.push_back({tag, off, bytes});
  std::memset(r->static_arena.data() + r->static_used, kPoisonByte,
              off + bytes + kSharedGuard - r->static_used);
  r->static_used = off + bytes;
  return r->static_arena.data() + off;
}

void* shared_dynamic() { return g_runner->dynamic_arena.data(); }

bool register_kernel(const KernelInfo& info) {
  auto& m = registry();
  if (m.count(info.name)) {
    std::fprintf(stderr, "vitk emulator: kernel %s registered twice\n", info.name);
    std::abort();
  }
  m[info.name] = info;
  return true;
}

}  // namespace vitk_emu

// ---- C ABI ---------------------------------------------------------------------------------------

using namespace vitk_emu;

extern "C" {

int vitk_emu_alloc(size_t bytes, void** out) {
  if (!out) return set_error(VITK_EMU_INVALID_VALUE, "alloc: null output pointer");
  const std::size_t page = page_size();
  if (bytes > (std::size_t(1) << 46))
    return set_error(VITK_EMU_OUT_OF_MEMORY, "alloc: %zu bytes exceed the emulator's limit",
                     bytes);
  const std::size_t span = (bytes + kAlign - 1) / kAlign * kAlign;  // bytes + slack
  const std::size_t body = (kGuard + span + page - 1) / page * page;
  const std::size_t len = body + 2 * page;
  void* m = mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED)
    return set_error(VITK_EMU_OUT_OF_MEMORY, "alloc: out of host memory for %zu bytes", bytes);
  auto* map = static_cast<unsigned char*>(m);
  if (mprotect(map + page, body, PROT_READ | PROT_WRITE) != 0) {
    munmap(m, len);
    return set_error(VITK_EMU_OUT_OF_MEMORY, "alloc: out of host memory for %zu bytes", bytes);
  }
  unsigned char* user = map + page + body - span;
  std::memset(user - kGuard, kGuardByte, kGuard);
  std::memset(user, kPoisonByte, span);
  std::lock_guard<std::mutex> lock(g_alloc_mutex);
  allocations()[reinterpret_cast<std::uintptr_t>(user)] = {map, len, user, bytes, span - bytes};
  *out = user;
  return VITK_EMU_OK;
}

int vitk_emu_free(void* ptr) {
  if (!ptr) return VITK_EMU_OK;
  std::lock_guard<std::mutex> lock(g_alloc_mutex);
  auto it = allocations().find(reinterpret_cast<std::uintptr_t>(ptr));
  if (it == allocations().end())
    return set_error(VITK_EMU_INVALID_VALUE, "free: %p is not an emulator allocation", ptr);
  munmap(it->second.map, it->second.map_len);
  allocations().erase(it);
  return VITK_EMU_OK;
}

static int check_range(const char* what, const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_alloc_mutex);
  if (!find_allocation(p, bytes, nullptr))
    return set_error(VITK_EMU_INVALID_VALUE,
                     "%s: [%p, +%zu bytes) is not inside one emulator allocation", what, p, bytes);
  return VITK_EMU_OK;
}

int vitk_emu_memcpy_htod(void* dst, const void* src, size_t bytes) {
  if (int e = check_range("memcpy_htod", dst, bytes)) return e;
  if (bytes) std::memcpy(dst, src, bytes);
  return VITK_EMU_OK;
}

int vitk_emu_memcpy_dtoh(void* dst, const void* src, size_t bytes) {
  if (int e = check_range("memcpy_dtoh", src, bytes)) return e;
  if (bytes) std::memcpy(dst, src, bytes);
  return VITK_EMU_OK;
}

int vitk_emu_memcpy_dtod(void* dst, const void* src, size_t bytes) {
  if (int e = check_range("memcpy_dtod (source)", src, bytes)) return e;
  if (int e = check_range("memcpy_dtod (destination)", dst, bytes)) return e;
  if (bytes) std::memmove(dst, src, bytes);
  return VITK_EMU_OK;
}

int vitk_emu_memset(void* dst, int byte, size_t bytes) {
  if (int e = check_range("memset", dst, bytes)) return e;
  if (bytes) std::memset(dst, byte, bytes);
  return VITK_EMU_OK;
}

static int launch(const char* name, dim3 grid, dim3 block, size_t shared_bytes, void** params,
                  size_t num_params) {
  if (!name) return set_error(VITK_EMU_INVALID_VALUE, "launch: null kernel name");
  auto it = registry().find(name);
  if (it == registry().end())
    return set_error(VITK_EMU_NOT_FOUND, "launch: no kernel named '%s' in the emulator", name);
  const KernelInfo& k = it->second;
  if (num_params != k.arity)
    return set_error(VITK_EMU_INVALID_VALUE, "kernel '%s' takes %zu parameters, got %zu", name,
                     k.arity, num_params);
  if (k.arity && !params)
    return set_error(VITK_EMU_INVALID_VALUE, "kernel '%s': null parameter array", name);
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (!grid.x || !grid.y || !grid.z || !threads)
    return set_error(VITK_EMU_LAUNCH_CONFIG, "kernel '%s': zero-sized grid or block", name);
  if (threads > kMaxThreads || block.x > 1024 || block.y > 1024 || block.z > 64)
    return set_error(VITK_EMU_LAUNCH_CONFIG,
                     "kernel '%s': block (%u,%u,%u) has %llu threads; the limit is %zu per block "
                     "(x,y <= 1024, z <= 64)",
                     name, block.x, block.y, block.z, threads, kMaxThreads);
  if (grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    return set_error(VITK_EMU_LAUNCH_CONFIG, "kernel '%s': grid (%u,%u,%u) exceeds the limits",
                     name, grid.x, grid.y, grid.z);
  if (shared_bytes > kMaxShared)
    return set_error(VITK_EMU_LAUNCH_CONFIG,
                     "kernel '%s': %zu bytes of dynamic shared memory exceed the %zu-byte limit",
                     name, shared_bytes, kMaxShared);

  // The buffers this launch may touch: pointer parameters must be device pointers, and their
  // guards are checked afterwards.
  std::vector<const void*> ptrs(k.pointer_count);
  if (k.pointer_count) k.pointers(params, ptrs.data());
  std::vector<std::pair<std::uintptr_t, size_t>> touched;  // (base, index of the pointer param)
  Runner& r = runner();
  if (g_runner)
    return set_error(VITK_EMU_INVALID_VALUE, "kernel '%s' launched from inside a kernel", name);
  r.buffers.clear();
  {
    std::lock_guard<std::mutex> lock(g_alloc_mutex);
    for (size_t i = 0; i < ptrs.size(); i++) {
      if (!ptrs[i]) continue;
      std::uintptr_t base = 0;
      const Allocation* a = find_allocation(ptrs[i], 0, &base);
      if (!a)
        return set_error(VITK_EMU_INVALID_VALUE,
                         "kernel '%s': pointer parameter #%zu (%p) is not an emulator allocation",
                         name, i, ptrs[i]);
      touched.push_back({base, i});
      r.buffers.push_back({*a, i});
    }
  }
  install_fault_handler();
  r.n = unsigned(threads);
  if (r.threads.size() < r.n) r.threads.resize(r.n);
  for (unsigned i = 0; i < r.n; i++)
    if (!r.stack(i)) return set_error(VITK_EMU_OUT_OF_MEMORY, "cannot map fiber stacks");
  r.kernel = &k;
  r.params = params;
  r.error.clear();
  r.sites.clear();
  r.static_used = 0;
  r.dynamic_bytes = shared_bytes;
  r.dynamic_arena.assign(shared_bytes + kSharedGuard, kPoisonByte);
  r.view.block_dim = block;
  r.view.grid_dim = grid;

  g_runner = &r;
  r.cur = nullptr;
  bool ok = true;
  if (sigsetjmp(r.fault_jmp, 1) == 0) {
    r.in_kernel = 1;
    for (unsigned z = 0; ok && z < grid.z; z++)
      for (unsigned y = 0; ok && y < grid.y; y++)
        for (unsigned x = 0; ok && x < grid.x; x++) {
          r.view.block_idx = {x, y, z};
          ok = r.run_block();
        }
    r.in_kernel = 0;
  } else {
    // A memory fault in a fiber: its block is abandoned (fibers are re-initialised by the
    // next launch) and the launch fails.
    ok = false;
    r.error = r.describe_fault();
  }
  g_runner = nullptr;
  g_thread = nullptr;
  g_block = nullptr;

  // Guards are checked even after a fault, so an out-of-bounds write is never lost.
  std::string oob;
  {
    std::lock_guard<std::mutex> lock(g_alloc_mutex);
    for (auto& [base, param] : touched) {
      auto a = allocations().find(base);
      if (a == allocations().end()) continue;
      auto [before, after] = check_guards(a->second);
      if ((before || after) && oob.empty())
        oob = format("kernel '%s' wrote outside the %zu-byte buffer of pointer parameter #%zu "
                     "(%zu guard bytes changed before its start, %zu slack bytes past its end)",
                     name, a->second.size, param, before, after);
    }
  }
  if (!ok)
    return set_error(VITK_EMU_KERNEL_FAULT, "kernel '%s': %s%s%s", name, r.error.c_str(),
                     oob.empty() ? "" : "; also ", oob.c_str());
  if (!oob.empty()) return set_error(VITK_EMU_OUT_OF_BOUNDS, "%s", oob.c_str());
  return VITK_EMU_OK;
}

int vitk_emu_launch(const char* kernel, unsigned grid_x, unsigned grid_y, unsigned grid_z,
                    unsigned block_x, unsigned block_y, unsigned block_z, size_t shared_bytes,
                    void** params, size_t num_params, char* err, size_t err_len) {
  int rc = launch(kernel, dim3(grid_x, grid_y, grid_z), dim3(block_x, block_y, block_z),
                  shared_bytes, params, num_params);
  if (rc != VITK_EMU_OK && err && err_len) {
    std::strncpy(err, t_last_error.c_str(), err_len - 1);
    err[err_len - 1] = '\0';
  }
  return rc;
}

const char* vitk_emu_last_error(void) { return t_last_error.c_str(); }

size_t vitk_emu_kernel_count(void) { return registry().size(); }

const char* vitk_emu_kernel_name(size_t index) {
  if (index >= registry().size()) return nullptr;
  auto it = registry().begin();
  std::advance(it, index);
  return it->first.c_str();
}

size_t vitk_emu_max_threads_per_block(void) { return kMaxThreads; }
size_t vitk_emu_max_shared_bytes(void) { return kMaxShared; }

}  // extern "C"
