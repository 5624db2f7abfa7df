// CUDA-on-CPU shim: lets kernels/*.cu compile as C++17 with the host compiler and run on the
// emulator runtime (emu_runtime.cpp) with CUDA semantics. Included by common.cuh only when
// the compiler is not nvcc/NVRTC. It provides the CUDA vocabulary the kernels use: execution
// space keywords, built-in index variables, barriers, warp collectives, atomics, math
// intrinsics, half/bfloat16 types. Everything that needs the scheduler is implemented in
// emu_runtime.cpp; this header keeps only what must be inline or templated.
#pragma once

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <utility>

// ---- execution-space keywords --------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __constant__ static
// Static shared memory must be declared with VITK_SHARED (common.cuh) so that the emulator
// can give each block its own copy and count it against the limit.
#define __shared__ vitk_use_VITK_SHARED_for_shared_memory

// ---- index types -----------------------------------------------------------------------------
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace vitk_emu {

struct ThreadView {
  uint3 thread_idx;
};
struct BlockView {
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
// Set by the scheduler before each fiber switch-in; fibers of a block share a host thread.
extern thread_local const ThreadView* g_thread;
extern thread_local const BlockView* g_block;

// Blocks the calling fiber until every thread of the block arrives (reports a barrier that
// some threads never reach, and threads waiting at different barriers).
void barrier(const char* file, int line);

enum class WarpOp : int { ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, Sync, Custom };
// One lockstep exchange among the lanes named in `mask`; returns this lane's result.
std::uint64_t warp_collective(WarpOp op, unsigned mask, std::uint64_t payload, int param,
                              int width, const char* file, int line);
unsigned lane_active_mask();

// A warp-wide instruction of the tensor-core family (mma.sync, ldmatrix): every lane of the
// full warp passes a pointer to its own operands; once all 32 have arrived, `fn` runs once
// with the 32 pointers (indexed by lane) and computes every lane's results in place, as the
// hardware would. `what` names the instruction in error messages.
using WarpFn = void (*)(void* const* lanes);
void warp_instruction(void* lane_data, WarpFn fn, const char* what, const char* file, int line);

// Whether [p, p + bytes) lies in the calling block's shared memory (static or dynamic).
bool in_shared(const void* p, std::size_t bytes);
// Reports misuse of a wrapper (a misaligned or non-shared address) as a fault of the launch.
[[noreturn]] void misuse(const char* what, const char* file, int line);

// cp.async, emulated with the latest timing the hardware allows: a copy only lands when a
// cp.async.wait_group that covers its group runs in the issuing thread, so a read of the
// destination before that (or before the barrier that publishes it) sees stale data.
void cp_async(void* dst_shared, const void* src_global, std::size_t bytes, std::size_t src_bytes,
              const char* file, int line);
void cp_async_commit();
void cp_async_wait(int pending, const char* file, int line);

// Abort the whole launch with a message (like a device-side trap).
[[noreturn]] void trap(const char* what, const char* file, int line);

// Per-block shared memory. `tag` identifies the declaration site; every thread of a block
// gets the same storage for the same site.
void* shared_static(const void* tag, std::size_t bytes, std::size_t align);
void* shared_dynamic();

template <typename T>
T* shared_static_typed(std::size_t count, const void* tag) {
  return static_cast<T*>(shared_static(tag, sizeof(T) * count, alignof(T) < 16 ? 16 : alignof(T)));
}

// ---- kernel registry -------------------------------------------------------------------------
using InvokeFn = void (*)(void* kernel, void** params);
using PointersFn = void (*)(void** params, const void** out);
struct KernelInfo {
  const char* name;
  void* kernel;          // the kernel function itself
  InvokeFn invoke;       // calls kernel with params unpacked as cuLaunchKernel does
  PointersFn pointers;   // pointer-typed params, for the guard check after the launch
  std::size_t arity;
  std::size_t pointer_count;
};
bool register_kernel(const KernelInfo& info);

template <typename T>
using Param = std::remove_cv_t<std::remove_reference_t<T>>;

template <typename... Args, std::size_t... I>
void invoke_unpacked(void* kernel, void** params, std::index_sequence<I...>) {
  auto k = reinterpret_cast<void (*)(Args...)>(kernel);
  k(*static_cast<Param<Args>*>(params[I])...);
}

template <typename... Args, std::size_t... I>
void pointers_unpacked(void** params, const void** out, std::index_sequence<I...>) {
  std::size_t n = 0;
  (void)n;
  (void)out;
  ((std::is_pointer<Param<Args>>::value
        ? (void)(out[n++] = *reinterpret_cast<const void* const*>(params[I]))
        : (void)0),
   ...);
}

template <typename... Args>
bool register_kernel_fn(const char* name, void (*kernel)(Args...)) {
  KernelInfo info;
  info.name = name;
  info.kernel = reinterpret_cast<void*>(kernel);
  info.invoke = [](void* k, void** p) {
    invoke_unpacked<Args...>(k, p, std::index_sequence_for<Args...>{});
  };
  info.pointers = [](void** p, const void** out) {
    pointers_unpacked<Args...>(p, out, std::index_sequence_for<Args...>{});
  };
  info.arity = sizeof...(Args);
  info.pointer_count = (std::size_t(0) + ... + (std::is_pointer<Param<Args>>::value ? 1 : 0));
  return register_kernel(info);
}

template <typename T>
std::uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle payload");
  std::uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
T from_bits(std::uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

}  // namespace vitk_emu

#define VITK_EMU_REGISTER(name) \
  static const bool vitk_emu_registered_##name = ::vitk_emu::register_kernel_fn(#name, &name);

// ---- built-in variables ----------------------------------------------------------------------
#define threadIdx (::vitk_emu::g_thread->thread_idx)
#define blockIdx (::vitk_emu::g_block->block_idx)
#define blockDim (::vitk_emu::g_block->block_dim)
#define gridDim (::vitk_emu::g_block->grid_dim)
constexpr int warpSize = 32;

// ---- synchronization -------------------------------------------------------------------------
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::vitk_emu::barrier(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  ::vitk_emu::warp_collective(::vitk_emu::WarpOp::Sync, mask, 0, 0, 32, file, line);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __trap(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::vitk_emu::trap("__trap()", file, line);
}
inline unsigned __activemask() { return ::vitk_emu::lane_active_mask(); }

template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  using namespace ::vitk_emu;
  return from_bits<T>(warp_collective(WarpOp::ShflIdx, mask, to_bits(v), src, width, file, line));
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                 const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using namespace ::vitk_emu;
  return from_bits<T>(
      warp_collective(WarpOp::ShflUp, mask, to_bits(v), int(delta), width, file, line));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                   const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using namespace ::vitk_emu;
  return from_bits<T>(
      warp_collective(WarpOp::ShflDown, mask, to_bits(v), int(delta), width, file, line));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                  const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using namespace ::vitk_emu;
  return from_bits<T>(
      warp_collective(WarpOp::ShflXor, mask, to_bits(v), lane_mask, width, file, line));
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  using namespace ::vitk_emu;
  return unsigned(warp_collective(WarpOp::Ballot, mask, pred != 0, 0, 32, file, line));
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  return __ballot_sync(mask, pred, file, line) != 0;
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  return __ballot_sync(mask, !pred, file, line) == 0;
}

// ---- atomics: real host atomics, so parallel host threads would stay correct ----------------
template <typename T>
T vitk_emu_atomic_update(T* p, T (*f)(T, T), T v) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomic width");
  using Bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  auto* bp = reinterpret_cast<Bits*>(p);
  Bits old_bits = __atomic_load_n(bp, __ATOMIC_SEQ_CST);
  for (;;) {
    T old_v;
    std::memcpy(&old_v, &old_bits, sizeof(T));
    T new_v = f(old_v, v);
    Bits new_bits;
    std::memcpy(&new_bits, &new_v, sizeof(T));
    if (__atomic_compare_exchange_n(bp, &old_bits, new_bits, false, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST))
      return old_v;
  }
}
template <typename T>
T atomicAdd(T* p, T v) {
  return vitk_emu_atomic_update<T>(p, [](T a, T b) { return T(a + b); }, v);
}
template <typename T>
T atomicSub(T* p, T v) {
  return vitk_emu_atomic_update<T>(p, [](T a, T b) { return T(a - b); }, v);
}
template <typename T>
T atomicMax(T* p, T v) {
  return vitk_emu_atomic_update<T>(p, [](T a, T b) { return a > b ? a : b; }, v);
}
template <typename T>
T atomicMin(T* p, T v) {
  return vitk_emu_atomic_update<T>(p, [](T a, T b) { return a < b ? a : b; }, v);
}
template <typename T>
T atomicExch(T* p, T v) {
  return vitk_emu_atomic_update<T>(p, [](T, T b) { return b; }, v);
}
template <typename T>
T atomicCAS(T* p, T compare, T v) {
  __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return compare;  // holds the old value whether or not the exchange happened
}

// ---- math intrinsics (glibc's float functions stand in for the device's) --------------------
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanhf(float x) { return std::tanh(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline int __float_as_int(float x) { return ::vitk_emu::from_bits<int>(::vitk_emu::to_bits(x)); }
inline unsigned __float_as_uint(float x) {
  return ::vitk_emu::from_bits<unsigned>(::vitk_emu::to_bits(x));
}
inline float __int_as_float(int x) { return ::vitk_emu::from_bits<float>(::vitk_emu::to_bits(x)); }
inline float __uint_as_float(unsigned x) {
  return ::vitk_emu::from_bits<float>(::vitk_emu::to_bits(x));
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
inline int __ffs(unsigned x) { return __builtin_ffs(int(x)); }
template <typename T>
T __ldg(const T* p) {
  return *p;
}
// The device's integer and float min/max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }

// ---- half and bfloat16 (storage types with round-to-nearest-even conversions) ---------------
namespace vitk_emu {
inline std::uint16_t f32_to_f16_bits(float f) {
  std::uint32_t x = to_bits(f) & 0xffffffffu;
  std::uint32_t sign = (x >> 16) & 0x8000u;
  std::uint32_t mag = x & 0x7fffffffu;
  if (mag >= 0x7f800000u) return std::uint16_t(sign | (mag > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (mag >= 0x477ff000u) return std::uint16_t(sign | 0x7c00u);  // rounds to infinity
  if (mag < 0x38800000u) {                                        // subnormal or zero in half
    if (mag < 0x33000000u) return std::uint16_t(sign);
    std::uint32_t m = (mag & 0x7fffffu) | 0x800000u;
    int shift = 126 - int(mag >> 23);  // 14 + (113 - exp)
    std::uint32_t h = m >> (shift);
    std::uint32_t rem = m & ((1u << shift) - 1);
    std::uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) h++;
    return std::uint16_t(sign | h);
  }
  std::uint32_t h = ((mag - 0x38000000u) >> 13);
  std::uint32_t rem = mag & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
  return std::uint16_t(sign | h);
}
inline float f16_bits_to_f32(std::uint16_t h) {
  std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t man = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp == 0) {
    if (man == 0) return from_bits<float>(sign);
    float v = std::ldexp(float(man), -24);
    return sign ? -v : v;
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  return from_bits<float>(bits);
}
inline std::uint16_t f32_to_bf16_bits(float f) {
  std::uint32_t x = std::uint32_t(to_bits(f));
  if ((x & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return std::uint16_t(x >> 16);
}
inline float bf16_bits_to_f32(std::uint16_t b) { return from_bits<float>(std::uint32_t(b) << 16); }
}  // namespace vitk_emu

struct __half {
  std::uint16_t x;
  __half() = default;
  __half(float f) : x(::vitk_emu::f32_to_f16_bits(f)) {}
  operator float() const { return ::vitk_emu::f16_bits_to_f32(x); }
};
struct __nv_bfloat16 {
  std::uint16_t x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : x(::vitk_emu::f32_to_bf16_bits(f)) {}
  operator float() const { return ::vitk_emu::bf16_bits_to_f32(x); }
};
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return float(b); }
