// Fibers for the emulator: one per CUDA thread of a block, switched cooperatively at
// __syncthreads() and warp collectives. x86-64 uses a six-register hand-written switch
// (nanoseconds, no syscalls: ucontext's swapcontext pays a sigprocmask syscall per switch,
// which dominates kernels with many barriers); other targets fall back to ucontext
// (forced with -DVITK_EMU_UCONTEXT, which the self-test script also exercises).
#pragma once
#include <cstddef>

#if !defined(__x86_64__) || defined(VITK_EMU_UCONTEXT)
#include <ucontext.h>
#endif

namespace vitk_emu {

struct Fiber {
#if defined(__x86_64__) && !defined(VITK_EMU_UCONTEXT)
  void* sp = nullptr;  // saved stack pointer while switched out
#else
  ucontext_t uc;
  void (*fn)(void*) = nullptr;
  void* arg = nullptr;
#endif
};

// Prepare `f` to run fn(arg) on [stack, stack + size) at its first switch-in.
// fn must never return: it ends by switching away for the last time.
void fiber_init(Fiber* f, void* stack, std::size_t size, void (*fn)(void*), void* arg);

// Save the current context into `from` and resume `to`.
void fiber_switch(Fiber* from, Fiber* to);

}  // namespace vitk_emu
