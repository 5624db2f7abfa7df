//! kernels/matmul.cu (fp32 SIMT) and kernels/matmul_tc.cu (bf16 tensor cores): every linear
//! layer and every backward product, with the fused epilogues of kernels/epilogue.cuh, and the
//! split-K weight gradients with their fixed-order reduction.
//!
//! The operands' precision picks the kernel: fp32 operands run `vitk_matmul` (the exact path),
//! bf16 operands a tensor-core instance. The launcher plans each product ([`matmul_plan`]):
//! the tile (a large one for wide products, a small one when the large tiles would not fill
//! the GPU) and, for weight gradients, how many ways to split the long K = B·T reduction so
//! that every multiprocessor has work.

use super::{
    elementwise, expect_count, expect_len, same_precision, shape_err, Operand, OperandArg,
};
use crate::engine::Precision;
use crate::gpu::error::GpuResult;
use crate::gpu::runtime::{DView, Launch, LaunchConfig, Runtime};

const ACCUMULATE: i32 = 1;
const GELU: i32 = 2;
const QKV: i32 = 4;
const GELU_GRAD: i32 = 8;

/// K per pipeline stage of the tensor-core kernel, and its stages (kernels/matmul_tc.cu).
const TC_BK: usize = 32;
const TC_STAGES: usize = 3;
/// Tile and K step of the fp32 kernel (kernels/matmul.cu).
const SIMT_TILE: usize = 64;
const SIMT_BK: usize = 16;

/// Tensor-core tile shapes (kernels/matmul_tc.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// 128 x 128, 8 warps.
    Large,
    /// 64 x 64, 4 warps.
    Small,
}

impl Tile {
    fn size(self) -> usize {
        match self {
            Tile::Large => 128,
            Tile::Small => 64,
        }
    }
    fn threads(self) -> u32 {
        match self {
            Tile::Large => 256,
            Tile::Small => 128,
        }
    }
    /// Blocks of this tile one multiprocessor runs at once (registers and shared memory).
    fn per_sm(self) -> usize {
        match self {
            Tile::Large => 2,
            Tile::Small => 4,
        }
    }
}

/// How one product launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulPlan {
    pub kernel: &'static str,
    /// The tensor-core tile (None: the fp32 kernel).
    pub tile: Option<Tile>,
    /// Ways the K reduction is split (1: the epilogue runs in the matmul itself).
    pub splits: usize,
    /// K per split.
    pub k_chunk: usize,
    pub cfg: LaunchConfig,
}

/// Where the contiguous dimension of each operand is: A(i, k) = a[i·lda_m + k·lda_k] and
/// B(k, j) = b[k·ldb_k + j·ldb_n], one stride of each being 1.
#[derive(Clone, Copy, Debug)]
struct Strides {
    lda: (usize, usize),
    ldb: (usize, usize),
}

impl Strides {
    /// (A is K-major, its leading dimension, B is K-major, its leading dimension). A size-1
    /// dimension makes both strides 1; the choice then does not matter for the data and is
    /// made so that every case has an instance: A prefers K-major, B N-major.
    fn major(&self) -> (bool, usize, bool, usize) {
        let (a_k, lda) = if self.lda.1 == 1 {
            (true, self.lda.0)
        } else {
            (false, self.lda.1)
        };
        let (b_k, ldb) = if self.ldb.1 == 1 {
            (false, self.ldb.0)
        } else {
            (true, self.ldb.1)
        };
        (a_k, lda, b_k, ldb)
    }
}

/// The tensor-core instance for (tile, layouts, output precision), if there is one.
fn tc_kernel(tile: Tile, a_k: bool, b_k: bool, out: Precision) -> Option<&'static str> {
    use Precision::{Bf16, Fp32};
    Some(match (tile, a_k, b_k, out) {
        (Tile::Large, true, true, Fp32) => "vitk_mm_tc_L_kk_f32",
        (Tile::Large, true, true, Bf16) => "vitk_mm_tc_L_kk_bf16",
        (Tile::Small, true, true, Fp32) => "vitk_mm_tc_S_kk_f32",
        (Tile::Small, true, true, Bf16) => "vitk_mm_tc_S_kk_bf16",
        (Tile::Large, true, false, Fp32) => "vitk_mm_tc_L_kn_f32",
        (Tile::Large, true, false, Bf16) => "vitk_mm_tc_L_kn_bf16",
        (Tile::Small, true, false, Fp32) => "vitk_mm_tc_S_kn_f32",
        (Tile::Small, true, false, Bf16) => "vitk_mm_tc_S_kn_bf16",
        (Tile::Large, false, false, Fp32) => "vitk_mm_tc_L_mn_f32",
        (Tile::Small, false, false, Fp32) => "vitk_mm_tc_S_mn_f32",
        _ => return None,
    })
}

/// Dynamic shared memory of a tensor-core instance: 3 stages of an A and a B tile of bf16,
/// rows padded by 8 elements (kernels/tile.cuh).
fn tc_shared_bytes(tile: Tile, a_k: bool, b_k: bool) -> usize {
    let t = tile.size();
    let tile_elems = |k_major: bool| {
        if k_major {
            t * (TC_BK + 8)
        } else {
            TC_BK * (t + 8)
        }
    };
    TC_STAGES * (tile_elems(a_k) + tile_elems(b_k)) * 2
}

/// Splits of a K reduction over `tiles` output tiles so that about `target` blocks run, each
/// split at least `min_chunk` long; returns (splits, K per split rounded up to `step`).
fn split_k(k: usize, tiles: usize, target: usize, min_chunk: usize, step: usize) -> (usize, usize) {
    let max_splits = (k / min_chunk).max(1);
    let want = target.div_ceil(tiles.max(1)).clamp(1, max_splits);
    let chunk = k.div_ceil(want).div_ceil(step).max(1) * step;
    (k.div_ceil(chunk).max(1), chunk)
}

/// The launch plan of an M x N x K product. `splittable`: the epilogue is a plain accumulate
/// into fp32 (weight gradients), so the K reduction may be split.
pub fn matmul_plan(
    sms: usize,
    precision: Precision,
    a_kmajor: bool,
    b_kmajor: bool,
    out: Precision,
    (m, n, k): (usize, usize, usize),
    splittable: bool,
) -> Option<MatmulPlan> {
    let sms = sms.max(1);
    match precision {
        Precision::Fp32 => {
            let tiles = m.div_ceil(SIMT_TILE) * n.div_ceil(SIMT_TILE);
            let (splits, k_chunk) = if splittable {
                split_k(k, tiles, 2 * sms, 8 * SIMT_BK, SIMT_BK)
            } else {
                (1, k.max(1))
            };
            Some(MatmulPlan {
                kernel: "vitk_matmul",
                tile: None,
                splits,
                k_chunk,
                cfg: LaunchConfig {
                    grid: (
                        n.div_ceil(SIMT_TILE) as u32,
                        m.div_ceil(SIMT_TILE) as u32,
                        splits as u32,
                    ),
                    block: (256, 1, 1),
                    shared_bytes: 0,
                },
            })
        }
        Precision::Bf16 => {
            let tiles = |t: Tile| m.div_ceil(t.size()) * n.div_ceil(t.size());
            // Large tiles when they fill every SM; split products use small tiles (a quarter
            // of the partial sums to write and read back).
            let tile = if !splittable && tiles(Tile::Large) >= Tile::Large.per_sm() * sms {
                Tile::Large
            } else {
                Tile::Small
            };
            let (splits, k_chunk) = if splittable {
                split_k(k, tiles(tile), tile.per_sm() * sms, 4 * TC_BK, TC_BK)
            } else {
                (1, k.max(1))
            };
            Some(MatmulPlan {
                kernel: tc_kernel(tile, a_kmajor, b_kmajor, out)?,
                tile: Some(tile),
                splits,
                k_chunk,
                cfg: LaunchConfig {
                    grid: (
                        n.div_ceil(tile.size()) as u32,
                        m.div_ceil(tile.size()) as u32,
                        splits as u32,
                    ),
                    block: (tile.threads(), 1, 1),
                    shared_bytes: tc_shared_bytes(tile, a_kmajor, b_kmajor) as u32,
                },
            })
        }
    }
}

/// Split-K workspace (f32 elements) a weight gradient dW [O, I] += dYᵀ X over `rows` rows
/// needs on `rt` in `precision`: the partial products and the partial bias sums.
pub fn splitk_workspace_len(
    rt: &dyn Runtime,
    precision: Precision,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> usize {
    let (a_k, b_k) = (false, false); // dYᵀ is M-major, X is N-major
    matmul_plan(
        rt.sm_count(),
        precision,
        a_k,
        b_k,
        Precision::Fp32,
        (out_dim, in_dim, rows),
        true,
    )
    .map_or(0, |p| {
        if p.splits > 1 {
            p.splits * out_dim * (in_dim + 1)
        } else {
            0
        }
    })
}

/// One product C (=|+=) epilogue(A · B), see kernels/epilogue.cuh.
struct Gemm {
    c: Operand,
    aux: Option<Operand>,
    dbias: Option<DView>,
    ws: Option<DView>,
    a: Operand,
    b: Operand,
    bias: Option<DView>,
    residual: Option<DView>,
    m: usize,
    n: usize,
    k: usize,
    strides: Strides,
    flags: i32,
    /// (tokens, heads) of the QKV scatter.
    qkv: (usize, usize),
}

fn gemm(rt: &dyn Runtime, kname: &'static str, g: Gemm) -> GpuResult<()> {
    let (m, n, k) = (g.m, g.n, g.k);
    if m == 0 || n == 0 {
        return Ok(());
    }
    let p = g.a.precision();
    same_precision(kname, p, &[("B", g.b)])?;
    if let Some(aux) = g.aux {
        same_precision(kname, g.c.precision(), &[("aux", aux)])?;
    }
    let splittable = g.flags == ACCUMULATE
        && g.aux.is_none()
        && g.bias.is_none()
        && g.residual.is_none()
        && g.c.precision() == Precision::Fp32;
    let (a_k, lda, b_k, ldb) = g.strides.major();
    let plan = matmul_plan(
        rt.sm_count(),
        p,
        a_k,
        b_k,
        g.c.precision(),
        (m, n, k),
        splittable,
    )
    .ok_or_else(|| {
        shape_err(
            kname,
            format!(
                "no kernel for {p} operands with A {}-major, B {}-major, {} output",
                if a_k { "K" } else { "M" },
                if b_k { "K" } else { "N" },
                g.c.precision()
            ),
        )
    })?;
    if p == Precision::Fp32 && g.c.precision() != Precision::Fp32 {
        return Err(shape_err(kname, "fp32 operands need an fp32 output".into()));
    }
    if plan.cfg.grid.1 > 65_535 {
        return Err(shape_err(kname, format!("{m} rows exceed 65535 row tiles")));
    }
    let ws = if plan.splits > 1 {
        let need = plan.splits * m * (n + 1);
        match g.ws {
            Some(ws) if ws.len() >= need => Some(ws),
            other => {
                return Err(shape_err(
                    kname,
                    format!(
                        "split-K workspace has {} elements, needs {need}",
                        other.map_or(0, |w| w.len())
                    ),
                ))
            }
        }
    } else {
        None
    };
    for (what, v) in [("M", m), ("N", n), ("K", k), ("lda", lda), ("ldb", ldb)] {
        i32::try_from(v).map_err(|_| shape_err(kname, format!("{what} = {v} > i32::MAX")))?;
    }
    // Work: 2MNK flops; A, B read once, C written (read too when accumulating).
    let eb = g.a.elem_bytes() as f64;
    let ob = g.c.elem_bytes() as f64;
    let mn = (m * n) as f64;
    let mut bytes = eb * ((m * k) + (k * n)) as f64 + ob * mn;
    if g.flags & ACCUMULATE != 0 {
        bytes += ob * mn;
    }
    if g.aux.is_some() {
        bytes += ob * mn;
    }
    if g.residual.is_some() {
        bytes += 4.0 * mn;
    }
    let flops = 2.0 * mn * k as f64;
    let launch = Launch::new(plan.kernel, plan.cfg).cost(flops, bytes);
    let launch = match p {
        Precision::Fp32 => launch
            .operand(g.c)
            .operand_opt(g.aux)
            .opt(g.dbias)
            .opt(ws)
            .operand(g.a)
            .operand(g.b)
            .opt(g.bias)
            .opt(g.residual)
            .int("M", m)
            .int("N", n)
            .int("K", k)
            .int("lda", g.strides.lda.0)
            .int("lda", g.strides.lda.1)
            .int("ldb", g.strides.ldb.0)
            .int("ldb", g.strides.ldb.1)
            .int("K chunk", plan.k_chunk)
            .bits(g.flags)
            .int("tokens", g.qkv.0)
            .int("heads", g.qkv.1),
        Precision::Bf16 => {
            // 16-byte cp.async needs the operand and its rows 16-byte aligned.
            let vec = |op: Operand, ld: usize| op.aligned_to(16) && ld.is_multiple_of(8);
            launch
                .operand(g.c)
                .operand_opt(g.aux)
                .opt(g.dbias)
                .opt(ws)
                .operand(g.a)
                .operand(g.b)
                .opt(g.bias)
                .opt(g.residual)
                .int("M", m)
                .int("N", n)
                .int("K", k)
                .int("lda", lda)
                .int("ldb", ldb)
                .int("K chunk", plan.k_chunk)
                .bits(g.flags)
                .flag(vec(g.a, lda))
                .flag(vec(g.b, ldb))
                .int("tokens", g.qkv.0)
                .int("heads", g.qkv.1)
        }
    };
    launch.run(rt)?;
    if let Some(ws) = ws {
        let c = g.c.f32(kname, "C")?;
        let items = m * n + g.dbias.map_or(0, |_| m);
        let s = plan.splits as f64;
        Launch::new("vitk_splitk_reduce", elementwise(items))
            .ptr(c)
            .opt(g.dbias)
            .ptr(ws)
            .int("splits", plan.splits)
            .int("M", m)
            .int("N", n)
            .cost(s * items as f64, 4.0 * (s + 2.0) * items as f64)
            .run(rt)?;
    }
    Ok(())
}

/// The epilogue of a forward linear layer.
#[derive(Clone, Copy, Debug)]
pub enum LinearEpilogue {
    /// y = x Wᵀ + b
    Bias,
    /// y = residual + x Wᵀ + b (attention projection, fc2; y and the residual are fp32)
    Residual(DView),
    /// y = gelu(x Wᵀ + b), with the pre-activation x Wᵀ + b written to `pre` (fc1)
    Gelu { pre: Operand },
}

/// y [R, O] = epilogue(x [R, I] · w [O, I]ᵀ + b [O]); x and w fp32 or both bf16, y fp32 or bf16.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward(
    rt: &dyn Runtime,
    y: Operand,
    x: Operand,
    w: Operand,
    b: DView,
    epilogue: LinearEpilogue,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> GpuResult<()> {
    const K: &str = "linear_forward";
    expect_count(K, "y", y.len(), rows * out_dim)?;
    expect_count(K, "x", x.len(), rows * in_dim)?;
    expect_count(K, "w", w.len(), out_dim * in_dim)?;
    expect_len(K, "b", b, out_dim)?;
    let (mut residual, mut aux, mut flags) = (None, None, 0);
    match epilogue {
        LinearEpilogue::Bias => {}
        LinearEpilogue::Residual(r) => {
            expect_len(K, "residual", r, rows * out_dim)?;
            y.f32(K, "y of a residual epilogue")?;
            residual = Some(r);
        }
        LinearEpilogue::Gelu { pre } => {
            expect_count(K, "pre", pre.len(), rows * out_dim)?;
            aux = Some(pre);
            flags = GELU;
        }
    }
    gemm(
        rt,
        K,
        Gemm {
            c: y,
            aux,
            dbias: None,
            ws: None,
            a: x,
            b: w,
            bias: Some(b),
            residual,
            m: rows,
            n: out_dim,
            k: in_dim,
            strides: Strides {
                lda: (in_dim, 1),
                ldb: (1, in_dim),
            },
            flags,
            qkv: (1, 1),
        },
    )
}

/// The fused QKV product: x [B·T, D] · w [3D, D]ᵀ + b [3D], written head-major into
/// qkv [3, B, H, T, hd] (q, then k, then v).
#[allow(clippy::too_many_arguments)]
pub fn qkv_forward(
    rt: &dyn Runtime,
    qkv: Operand,
    x: Operand,
    w: Operand,
    b: DView,
    batch: usize,
    tokens: usize,
    heads: usize,
    dim: usize,
) -> GpuResult<()> {
    const K: &str = "qkv_forward";
    if heads == 0 || !dim.is_multiple_of(heads) {
        return Err(shape_err(
            K,
            format!("D = {dim} is not a multiple of H = {heads}"),
        ));
    }
    let rows = batch * tokens;
    expect_count(K, "qkv", qkv.len(), rows * 3 * dim)?;
    expect_count(K, "x", x.len(), rows * dim)?;
    expect_count(K, "w", w.len(), 3 * dim * dim)?;
    expect_len(K, "b", b, 3 * dim)?;
    gemm(
        rt,
        K,
        Gemm {
            c: qkv,
            aux: None,
            dbias: None,
            ws: None,
            a: x,
            b: w,
            bias: Some(b),
            residual: None,
            m: rows,
            n: 3 * dim,
            k: dim,
            strides: Strides {
                lda: (dim, 1),
                ldb: (1, dim),
            },
            flags: QKV,
            qkv: (tokens, heads),
        },
    )
}

/// dx [R, I] = dy [R, O] · w [O, I] (overwritten), times gelu'(pre) elementwise when
/// `gelu_pre` [R, I] is given (fc2's dX straight into fc1's pre-activation gradient).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_dx(
    rt: &dyn Runtime,
    dx: Operand,
    dy: Operand,
    w: Operand,
    gelu_pre: Option<Operand>,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> GpuResult<()> {
    const K: &str = "linear_backward_dx";
    expect_count(K, "dx", dx.len(), rows * in_dim)?;
    expect_count(K, "dy", dy.len(), rows * out_dim)?;
    expect_count(K, "w", w.len(), out_dim * in_dim)?;
    if let Some(pre) = gelu_pre {
        expect_count(K, "gelu_pre", pre.len(), rows * in_dim)?;
    }
    gemm(
        rt,
        K,
        Gemm {
            c: dx,
            aux: gelu_pre,
            dbias: None,
            ws: None,
            a: dy,
            b: w,
            bias: None,
            residual: None,
            m: rows,
            n: in_dim,
            k: out_dim,
            strides: Strides {
                lda: (out_dim, 1),
                ldb: (in_dim, 1),
            },
            flags: if gelu_pre.is_some() { GELU_GRAD } else { 0 },
            qkv: (1, 1),
        },
    )
}

/// dw [O, I] += dy [R, O]ᵀ · x [R, I] and db [O] += Σ_r dy[r] in the same pass; split over
/// the R rows with the partial sums in `ws` (see [`splitk_workspace_len`]).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_dw(
    rt: &dyn Runtime,
    dw: DView,
    db: Option<DView>,
    ws: DView,
    dy: Operand,
    x: Operand,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> GpuResult<()> {
    const K: &str = "linear_backward_dw";
    expect_len(K, "dw", dw, out_dim * in_dim)?;
    if let Some(db) = db {
        expect_len(K, "db", db, out_dim)?;
    }
    expect_count(K, "dy", dy.len(), rows * out_dim)?;
    expect_count(K, "x", x.len(), rows * in_dim)?;
    gemm(
        rt,
        K,
        Gemm {
            c: Operand::F32(dw),
            aux: None,
            dbias: db,
            ws: Some(ws),
            a: dy,
            b: x,
            bias: None,
            residual: None,
            m: out_dim,
            n: in_dim,
            k: rows,
            strides: Strides {
                lda: (1, out_dim),
                ldb: (in_dim, 1),
            },
            flags: ACCUMULATE,
            qkv: (1, 1),
        },
    )
}
