// Tiles for tensor-core kernels: bf16 shared-memory tiles in their two layouts, how a block
// fills one from global memory (cp.async), and how a warp reads m16n8k16 fragments out of it
// (ldmatrix). The fragment layouts live here once; kernels read as load tile / load fragment /
// mma (the wrappers and their emulated twins are in common.cuh).
//
// A tile holds ROWS rows of COLS bf16, the contiguous dimension along a row, and each row is
// padded by 8 elements (16 bytes): 8 consecutive rows then start an odd number of 16-byte
// units apart, so the 8 row addresses of one ldmatrix matrix fall in 8 different bank groups
// (no conflicts), and every row start stays 16-byte aligned for cp.async and ldmatrix.
//   K-major tile:  rows = M (or N) of the block, columns = the BK of one pipeline stage.
//   MN-major tile: rows = the BK of the stage, columns = M (or N) of the block.
#pragma once
#include "common.cuh"

template <int ROWS, int COLS>
struct VitkTile {
  static constexpr int LD = COLS + 8;
  static constexpr int ELEMS = ROWS * LD;
  static_assert(COLS % 8 == 0 && (LD / 8) % 2 == 1, "rows must be an odd number of 16 B apart");
};

// Fills a stage tile from a global matrix G whose contiguous dimension is the tile's columns:
// tile(r, c) = G[(row0 + r) * ld + col0 + c] when row0 + r < rows and col0 + c < cols, else 0.
// 16-byte chunks of 8 elements: through cp.async when `vec` (G and ld 16-byte aligned),
// partial chunks zero-filled by the copy itself; else element by element (synchronous).
template <int ROWS, int COLS, int THREADS>
__device__ __forceinline__ void vitk_load_tile(vitk_bf16* tile, const vitk_bf16* g, long long ld,
                                               int row0, int rows, int col0, int cols, bool vec) {
  constexpr int LD = VitkTile<ROWS, COLS>::LD;
  constexpr int CHUNKS = ROWS * COLS / 8;
  for (int ch = threadIdx.x; ch < CHUNKS; ch += THREADS) {
    const int r = ch / (COLS / 8), c = (ch % (COLS / 8)) * 8;
    const int gr = row0 + r, gc = col0 + c;
    vitk_bf16* dst = tile + r * LD + c;
    if (vec) {
      const int valid = gr < rows ? min(8, max(0, cols - gc)) : 0;
      const vitk_bf16* src = valid ? g + (long long)gr * ld + gc : g;
      vitk_cp_async16(dst, src, valid * 2);
    } else {
      for (int e = 0; e < 8; e++)
        dst[e].bits = (gr < rows && gc + e < cols) ? g[(long long)gr * ld + gc + e].bits
                                                   : (unsigned short)0;
    }
  }
}

// The A fragment (16 x 16 at rows m0, columns k0 of A) from a K-major tile [BM][BK + 8]:
// matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), (m 8-15, k 8-15) = a[0..3].
template <int LD>
__device__ __forceinline__ void vitk_frag_a_kmajor(unsigned (&a)[4], const vitk_bf16* tile, int m0,
                                                   int k0) {
  const int lane = threadIdx.x & 31;
  vitk_ldmatrix<4, false>(a, tile + (m0 + (lane & 15)) * LD + k0 + (lane >> 4) * 8);
}

// The A fragment from an M-major tile [BK][BM + 8] (A(m, k) at tile[k][m]): the same four
// matrices stored transposed, read with .trans.
template <int LD>
__device__ __forceinline__ void vitk_frag_a_mmajor(unsigned (&a)[4], const vitk_bf16* tile, int m0,
                                                   int k0) {
  const int lane = threadIdx.x & 31, j = lane >> 3, r = lane & 7;
  vitk_ldmatrix<4, true>(a, tile + (k0 + (j >> 1) * 8 + r) * LD + m0 + (j & 1) * 8);
}

// Two B fragments (k0..k0+15 x n0..n0+7 and n0+8..n0+15) from a K-major tile [BN][BK + 8]
// (B(k, n) at tile[n][k]): matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7),
// (n 8-15, k 8-15) = b0[0], b0[1], b1[0], b1[1].
template <int LD>
__device__ __forceinline__ void vitk_frag_b_kmajor(unsigned (&b0)[2], unsigned (&b1)[2],
                                                   const vitk_bf16* tile, int n0, int k0) {
  const int lane = threadIdx.x & 31, j = lane >> 3, r = lane & 7;
  unsigned x[4];
  vitk_ldmatrix<4, false>(x, tile + (n0 + (j >> 1) * 8 + r) * LD + k0 + (j & 1) * 8);
  b0[0] = x[0];
  b0[1] = x[1];
  b1[0] = x[2];
  b1[1] = x[3];
}

// The same two B fragments from an N-major tile [BK][BN + 8] (B(k, n) at tile[k][n]): matrices
// (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15), read with .trans.
template <int LD>
__device__ __forceinline__ void vitk_frag_b_nmajor(unsigned (&b0)[2], unsigned (&b1)[2],
                                                   const vitk_bf16* tile, int n0, int k0) {
  const int lane = threadIdx.x & 31, j = lane >> 3, r = lane & 7;
  unsigned x[4];
  vitk_ldmatrix<4, true>(x, tile + (k0 + (j & 1) * 8 + r) * LD + n0 + (j >> 1) * 8);
  b0[0] = x[0];
  b0[1] = x[1];
  b1[0] = x[2];
  b1[1] = x[3];
}
