// Context switch behind emu_fiber.h. Only callee-saved state is switched (rbx, rbp,
// r12-r15, rsp): the switch is an ordinary call, so the compiler already assumes every
// other register is clobbered. Kernels never change MXCSR / x87 control words.
#include "emu_fiber.h"

#include <cstdint>

#if defined(__x86_64__) && !defined(VITK_EMU_UCONTEXT)

extern "C" void vitk_fiber_switch_asm(void** save_sp, void* load_sp);
extern "C" void vitk_fiber_entry_asm();

asm(R"(
  .text
  .globl vitk_fiber_switch_asm
  .hidden vitk_fiber_switch_asm
  .type vitk_fiber_switch_asm,@function
vitk_fiber_switch_asm:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size vitk_fiber_switch_asm, .-vitk_fiber_switch_asm

  .globl vitk_fiber_entry_asm
  .hidden vitk_fiber_entry_asm
  .type vitk_fiber_entry_asm,@function
vitk_fiber_entry_asm:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size vitk_fiber_entry_asm, .-vitk_fiber_entry_asm
)");

namespace vitk_emu {

void fiber_init(Fiber* f, void* stack, std::size_t size, void (*fn)(void*), void* arg) {
  // The first switch-in pops six registers and returns into vitk_fiber_entry_asm (popping
  // the return address too) with rsp == top, 16-byte aligned, as the SysV ABI wants right
  // before its `call` (the callee then sees rsp = 8 mod 16 and may use aligned SSE spills).
  auto top = (reinterpret_cast<std::uintptr_t>(stack) + size) & ~std::uintptr_t(15);
  auto* sp = reinterpret_cast<void**>(top - 56);
  sp[0] = nullptr;                                             // r15
  sp[1] = nullptr;                                             // r14
  sp[2] = reinterpret_cast<void*>(fn);                         // r13
  sp[3] = arg;                                                 // r12
  sp[4] = nullptr;                                             // rbx
  sp[5] = nullptr;                                             // rbp
  sp[6] = reinterpret_cast<void*>(&vitk_fiber_entry_asm);      // return address, at top - 8
  f->sp = sp;
}

void fiber_switch(Fiber* from, Fiber* to) { vitk_fiber_switch_asm(&from->sp, to->sp); }

}  // namespace vitk_emu

#else

namespace vitk_emu {

namespace {
// makecontext passes int arguments only: the Fiber pointer travels as two 32-bit halves.
void trampoline(unsigned hi, unsigned lo) {
  auto* f = reinterpret_cast<Fiber*>((std::uintptr_t(hi) << 32) | std::uintptr_t(lo));
  f->fn(f->arg);
}
}  // namespace

void fiber_init(Fiber* f, void* stack, std::size_t size, void (*fn)(void*), void* arg) {
  f->fn = fn;
  f->arg = arg;
  getcontext(&f->uc);
  f->uc.uc_stack.ss_sp = stack;
  f->uc.uc_stack.ss_size = size;
  f->uc.uc_link = nullptr;
  auto p = reinterpret_cast<std::uintptr_t>(f);
  makecontext(&f->uc, reinterpret_cast<void (*)()>(trampoline), 2, unsigned(p >> 32),
              unsigned(p & 0xffffffffu));
}

void fiber_switch(Fiber* from, Fiber* to) { swapcontext(&from->uc, &to->uc); }

}  // namespace vitk_emu

#endif
