/* C ABI of the CUDA emulator (emu_runtime.cpp), mirrored by src/gpu/emu.rs.
 * Every call returns a VITK_EMU_* code; on failure vitk_emu_last_error() describes it
 * (per host thread). Device pointers are emulator allocations with guard bytes around them.
 * Launches are synchronous: when vitk_emu_launch returns, the kernel has finished. */
#ifndef VITK_EMU_H
#define VITK_EMU_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  VITK_EMU_OK = 0,
  VITK_EMU_INVALID_VALUE = 1,  /* bad pointer, range outside an allocation, wrong param count */
  VITK_EMU_NOT_FOUND = 2,      /* no kernel of that name is registered */
  VITK_EMU_LAUNCH_CONFIG = 3,  /* too many threads, too much shared memory, zero dims */
  VITK_EMU_KERNEL_FAULT = 4,   /* barrier/warp collective misuse, __trap, shared overflow */
  VITK_EMU_OUT_OF_BOUNDS = 5,  /* guard bytes of a buffer changed during the launch */
  VITK_EMU_OUT_OF_MEMORY = 6
};

int vitk_emu_alloc(size_t bytes, void** out);
int vitk_emu_free(void* ptr);
int vitk_emu_memcpy_htod(void* dst, const void* src, size_t bytes);
int vitk_emu_memcpy_dtoh(void* dst, const void* src, size_t bytes);
int vitk_emu_memcpy_dtod(void* dst, const void* src, size_t bytes);
int vitk_emu_memset(void* dst, int byte, size_t bytes);

/* params[i] points at the value of kernel parameter i, exactly as for cuLaunchKernel;
 * num_params must equal the kernel's parameter count. On failure the message is also written
 * (NUL-terminated, truncated) into err[0..err_len) when err is not NULL. */
int vitk_emu_launch(const char* kernel, unsigned grid_x, unsigned grid_y, unsigned grid_z,
                    unsigned block_x, unsigned block_y, unsigned block_z, size_t shared_bytes,
                    void** params, size_t num_params, char* err, size_t err_len);

const char* vitk_emu_last_error(void);
size_t vitk_emu_kernel_count(void);
const char* vitk_emu_kernel_name(size_t index);
/* Limits the emulator enforces (documented in emu_runtime.cpp). */
size_t vitk_emu_max_threads_per_block(void);
size_t vitk_emu_max_shared_bytes(void);

#ifdef __cplusplus
}
#endif

#endif
