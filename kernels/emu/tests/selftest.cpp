// Emulator self-tests: the emulator must catch what a GPU would fail on, and its warp and
// shared-memory semantics must be right. Built and run by scripts/emu-selftest.sh.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../vitk_emu.h"

namespace {

int g_passed = 0, g_failed = 0;

void check(bool ok, const char* name, const std::string& detail = "") {
  if (ok) {
    g_passed++;
    if (detail.empty()) std::printf("ok    %s\n", name);
    else std::printf("ok    %s\n        (%s)\n", name, detail.c_str());
  } else {
    g_failed++;
    std::printf("FAIL  %s %s\n", name, detail.c_str());
  }
}

template <typename T>
struct Buf {
  void* p = nullptr;
  size_t n;
  explicit Buf(size_t n_) : n(n_) { vitk_emu_alloc(n * sizeof(T), &p); }
  ~Buf() { vitk_emu_free(p); }
  void upload(const std::vector<T>& v) { vitk_emu_memcpy_htod(p, v.data(), n * sizeof(T)); }
  std::vector<T> download() {
    std::vector<T> v(n);
    vitk_emu_memcpy_dtoh(v.data(), p, n * sizeof(T));
    return v;
  }
};

int launch(const char* k, unsigned gx, unsigned bx, size_t shared, std::vector<void*> params,
           std::string* msg) {
  char err[1024] = {0};
  int rc = vitk_emu_launch(k, gx, 1, 1, bx, 1, 1, shared, params.data(), params.size(), err,
                           sizeof err);
  if (msg) *msg = err;
  return rc;
}

bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

}  // namespace

int main() {
  std::string msg;

  {  // barrier not reached by every thread -> reported, not a hang
    Buf<int> out(64);
    int rc = launch("vitk_emutest_barrier_exit", 1, 64, 0, {&out.p}, &msg);
    check(rc == VITK_EMU_KERNEL_FAULT && contains(msg, "barrier not reached"),
          "barrier not reached by all threads is reported", msg);
  }
  {
    Buf<int> out(64);
    int rc = launch("vitk_emutest_divergent_barrier", 1, 64, 0, {&out.p}, &msg);
    check(rc == VITK_EMU_KERNEL_FAULT && contains(msg, "__syncthreads"),
          "threads at different barriers are reported", msg);
  }
  {  // thread limit
    Buf<float> out(2048), in(2048);
    int rc = launch("vitk_test_warp_sum", 1, 1025, 0, {&out.p, &in.p}, &msg);
    check(rc == VITK_EMU_LAUNCH_CONFIG && contains(msg, "1025"),
          "launch over the thread limit is reported", msg);
  }
  {  // shared memory limit
    Buf<float> out(64), in(64);
    int rc = launch("vitk_emutest_dynamic_shared", 1, 64, 228 * 1024, {&out.p, &in.p}, &msg);
    check(rc == VITK_EMU_LAUNCH_CONFIG && contains(msg, "shared"),
          "launch over the shared memory limit is reported", msg);
  }
  {  // out-of-bounds write caught by the guard bytes
    Buf<float> out(100);
    int n = 100;
    int rc = launch("vitk_emutest_write_past_end", 1, 128, 0, {&out.p, &n}, &msg);
    check(rc == VITK_EMU_OUT_OF_BOUNDS && contains(msg, "vitk_emutest_write_past_end") &&
              contains(msg, "after its end"),
          "out-of-bounds write is reported naming the kernel", msg);
    n = 99;  // the guards were repaired: a correct launch passes again
    rc = launch("vitk_emutest_write_past_end", 1, 128, 0, {&out.p, &n}, &msg);
    check(rc == VITK_EMU_OK, "in-bounds write after a reported one passes", msg);
  }
  {  // parameter count and pointer checks
    Buf<float> out(32);
    int rc = launch("vitk_test_warp_sum", 1, 32, 0, {&out.p}, &msg);
    check(rc == VITK_EMU_INVALID_VALUE, "wrong parameter count is reported", msg);
    std::vector<float> host(32);
    void* hp = host.data();
    rc = launch("vitk_test_warp_sum", 1, 32, 0, {&out.p, &hp}, &msg);
    check(rc == VITK_EMU_INVALID_VALUE && contains(msg, "not an emulator allocation"),
          "host pointer as a kernel parameter is reported", msg);
    rc = launch("no_such_kernel", 1, 32, 0, {}, &msg);
    check(rc == VITK_EMU_NOT_FOUND, "unknown kernel is reported", msg);
  }
  {  // warp shuffle reduction
    Buf<float> out(32), in(32);
    std::vector<float> v(32);
    float want = 0;
    for (int i = 0; i < 32; i++) want += (v[i] = 0.5f * i - 3.0f);
    in.upload(v);
    int rc = launch("vitk_test_warp_sum", 1, 32, 0, {&out.p, &in.p}, &msg);
    auto got = out.download();
    bool ok = rc == 0;
    for (float g : got) ok = ok && std::fabs(g - want) < 1e-4f;
    check(ok, "warp shuffle reduction gives the sum on every lane", msg);
  }
  {  // shuffle naming an exited lane
    Buf<float> out(32);
    int rc = launch("vitk_emutest_shfl_exited", 1, 32, 0, {&out.p}, &msg);
    check(rc == VITK_EMU_KERNEL_FAULT && contains(msg, "exited"),
          "shuffle with an exited lane in its mask is reported", msg);
  }
  {  // ballot / shfl / shfl_up
    Buf<unsigned> ballots(2);
    Buf<int> rot(64), up(64);
    int rc = launch("vitk_emutest_warp_ops", 1, 64, 0, {&ballots.p, &rot.p, &up.p}, &msg);
    auto b = ballots.download();
    auto r = rot.download();
    auto u = up.download();
    unsigned want = 0;
    for (int l = 0; l < 32; l += 3) want |= 1u << l;
    bool ok = rc == 0 && b[0] == want && b[1] == want;
    for (int t = 0; t < 64; t++) {
      int lane = t & 31, base = t & ~31;
      ok = ok && r[t] == base + (lane + 1) % 32 && u[t] == (lane == 0 ? t : t - 1);
    }
    check(ok, "ballot, shfl and shfl_up exchange among the lanes", msg);
  }
  {  // dynamic shared memory
    const int blocks = 3, threads = 96;
    Buf<float> out(blocks * threads), in(blocks * threads);
    std::vector<float> v(blocks * threads);
    for (size_t i = 0; i < v.size(); i++) v[i] = float(i);
    in.upload(v);
    int rc = launch("vitk_emutest_dynamic_shared", blocks, threads, threads * sizeof(float),
                    {&out.p, &in.p}, &msg);
    auto got = out.download();
    bool ok = rc == 0;
    for (int b = 0; b < blocks; b++)
      for (int t = 0; t < threads; t++)
        ok = ok && got[b * threads + t] == v[b * threads + threads - 1 - t];
    check(ok, "dynamic shared memory works", msg);
    rc = launch("vitk_emutest_dynamic_shared", 1, threads, threads * sizeof(float) - 4,
                {&out.p, &in.p}, &msg);
    check(rc == VITK_EMU_KERNEL_FAULT && contains(msg, "dynamic shared"),
          "write past dynamic shared memory is reported", msg);
  }
  {  // static shared memory is per block
    Buf<int> out(4);
    int rc = launch("vitk_emutest_static_shared", 4, 50, 0, {&out.p}, &msg);
    auto got = out.download();
    bool ok = rc == 0;
    for (int b = 0; b < 4; b++) ok = ok && got[b] == 50 + 1000 * b;
    check(ok, "static shared memory and shared atomics are per block", msg);
  }
  // block reduction for block and row sizes that are not multiples of 32
  for (unsigned threads : {32u, 100u, 257u, 1024u, 7u}) {
    const int rows = 3, n = 1000;
    Buf<float> out(rows), in(rows * n);
    std::vector<float> v(rows * n);
    std::vector<double> want(rows, 0.0);
    for (int i = 0; i < rows * n; i++) {
      v[i] = float((i * 37) % 101) * 0.01f - 0.5f;
      want[i / n] += v[i];
    }
    in.upload(v);
    int nn = n;
    int rc = launch("vitk_test_block_sum", rows, threads, 0, {&out.p, &in.p, &nn}, &msg);
    auto got = out.download();
    bool ok = rc == 0;
    for (int r = 0; r < rows; r++) ok = ok && std::fabs(got[r] - want[r]) < 1e-3;
    std::string name = "block reduction, block of " + std::to_string(threads) + ", row of 1000";
    check(ok, name.c_str(), msg);
  }

  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
