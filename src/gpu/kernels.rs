//! Typed launchers, one per kernel of kernels/*.cu: each checks its shapes, picks the launch
//! shape documented at the top of the kernel file, and launches by name.

use super::error::{GpuError, GpuResult};
use super::runtime::{DView, DeviceBuffer, KernelArg, LaunchConfig, Runtime};

const BLOCK: u32 = 256;

fn shape_err(kernel: &str, message: String) -> GpuError {
    GpuError::Shape {
        kernel: kernel.into(),
        message,
    }
}

fn expect_len(kernel: &str, what: &str, buf: DView, want: usize) -> GpuResult<()> {
    if buf.len() == want {
        Ok(())
    } else {
        Err(shape_err(
            kernel,
            format!("{what} has {} elements, expected {want}", buf.len()),
        ))
    }
}

/// Kernel sizes are 32-bit ints on the device.
fn to_i32(kernel: &str, what: &str, v: usize) -> GpuResult<i32> {
    i32::try_from(v).map_err(|_| shape_err(kernel, format!("{what} = {v} exceeds i32::MAX")))
}

/// Threads per block for row-wise kernels: one warp multiple covering the row, at most 256.
fn row_block(dim: usize) -> u32 {
    (dim.div_ceil(32) * 32).clamp(32, BLOCK as usize) as u32
}

/// im2col: images [B, C, S, S] -> patches [B*N, C*P*P], N = (S/P)^2, column order (c, ky, kx).
pub fn patch_embed_im2col(
    rt: &dyn Runtime,
    patches: DView,
    images: DView,
    batch: usize,
    channels: usize,
    side: usize,
    patch: usize,
) -> GpuResult<()> {
    const K: &str = "vitk_patch_embed_im2col";
    if patch == 0 || !side.is_multiple_of(patch) {
        return Err(shape_err(
            K,
            format!("image side {side} is not a multiple of patch {patch}"),
        ));
    }
    let n = (side / patch) * (side / patch);
    expect_len(K, "images", images, batch * channels * side * side)?;
    let total = batch * n * channels * patch * patch;
    expect_len(K, "patches", patches, total)?;
    if total == 0 {
        return Ok(());
    }
    let args = [
        patches.arg(),
        images.arg(),
        KernelArg::I32(to_i32(K, "batch", batch)?),
        KernelArg::I32(to_i32(K, "channels", channels)?),
        KernelArg::I32(to_i32(K, "side", side)?),
        KernelArg::I32(to_i32(K, "patch", patch)?),
    ];
    to_i32(K, "image elements", images.len())?;
    rt.launch(K, LaunchConfig::for_items(total, BLOCK), &args)
}

/// LayerNorm forward over rows of width `dim`: out [R, D], mean [R], rstd [R].
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    rt: &dyn Runtime,
    out: DView,
    mean: DView,
    rstd: DView,
    x: DView,
    weight: DView,
    bias: DView,
    dim: usize,
) -> GpuResult<()> {
    const K: &str = "vitk_layernorm_forward";
    if dim == 0 || !x.len().is_multiple_of(dim) {
        return Err(shape_err(
            K,
            format!("x has {} elements, not rows of {dim}", x.len()),
        ));
    }
    let rows = x.len() / dim;
    expect_len(K, "out", out, x.len())?;
    expect_len(K, "mean", mean, rows)?;
    expect_len(K, "rstd", rstd, rows)?;
    expect_len(K, "weight", weight, dim)?;
    expect_len(K, "bias", bias, dim)?;
    if rows == 0 {
        return Ok(());
    }
    let args = [
        out.arg(),
        mean.arg(),
        rstd.arg(),
        x.arg(),
        weight.arg(),
        bias.arg(),
        KernelArg::I32(to_i32(K, "rows", rows)?),
        KernelArg::I32(to_i32(K, "dim", dim)?),
    ];
    to_i32(K, "x elements", x.len())?;
    let cfg = LaunchConfig {
        grid: (rows as u32, 1, 1),
        block: (row_block(dim), 1, 1),
        shared_bytes: 0,
    };
    rt.launch(K, cfg, &args)
}

/// Blocks used by `layernorm_backward` for `rows` rows: at most 128, each owning a contiguous
/// row range.
fn layernorm_backward_blocks(rows: usize) -> (usize, usize) {
    let blocks = rows.clamp(1, 128);
    let per_block = rows.div_ceil(blocks).max(1);
    (rows.div_ceil(per_block).max(1), per_block)
}

/// Length of the scratch buffer `layernorm_backward` needs for (rows, dim).
pub fn layernorm_backward_scratch_len(rows: usize, dim: usize) -> usize {
    layernorm_backward_blocks(rows).0 * 2 * dim
}

/// LayerNorm backward: dx, dweight and dbias are ACCUMULATED into (see kernels/layernorm.cu);
/// deterministic (per-block partials in `scratch`, reduced in a fixed order).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    rt: &dyn Runtime,
    dx: DView,
    dweight: DView,
    dbias: DView,
    scratch: DView,
    dout: DView,
    x: DView,
    mean: DView,
    rstd: DView,
    weight: DView,
    dim: usize,
) -> GpuResult<()> {
    const K: &str = "vitk_layernorm_backward";
    if dim == 0 || !x.len().is_multiple_of(dim) {
        return Err(shape_err(
            K,
            format!("x has {} elements, not rows of {dim}", x.len()),
        ));
    }
    let rows = x.len() / dim;
    expect_len(K, "dx", dx, x.len())?;
    expect_len(K, "dout", dout, x.len())?;
    expect_len(K, "mean", mean, rows)?;
    expect_len(K, "rstd", rstd, rows)?;
    expect_len(K, "weight", weight, dim)?;
    expect_len(K, "dweight", dweight, dim)?;
    expect_len(K, "dbias", dbias, dim)?;
    if rows == 0 {
        return Ok(());
    }
    let (blocks, per_block) = layernorm_backward_blocks(rows);
    if scratch.len() < blocks * 2 * dim {
        return Err(shape_err(
            K,
            format!(
                "scratch has {} elements, needs {}",
                scratch.len(),
                blocks * 2 * dim
            ),
        ));
    }
    to_i32(K, "x elements", x.len())?;
    let rows_i = to_i32(K, "rows", rows)?;
    let dim_i = to_i32(K, "dim", dim)?;
    let args = [
        dx.arg(),
        scratch.arg(),
        dout.arg(),
        x.arg(),
        mean.arg(),
        rstd.arg(),
        weight.arg(),
        KernelArg::I32(rows_i),
        KernelArg::I32(dim_i),
        KernelArg::I32(per_block as i32),
    ];
    let cfg = LaunchConfig {
        grid: (blocks as u32, 1, 1),
        block: (row_block(dim), 1, 1),
        shared_bytes: 0,
    };
    rt.launch(K, cfg, &args)?;
    let args = [
        dweight.arg(),
        dbias.arg(),
        scratch.arg(),
        KernelArg::I32(blocks as i32),
        KernelArg::I32(dim_i),
    ];
    rt.launch(
        "vitk_layernorm_backward_reduce",
        LaunchConfig::for_items(dim, BLOCK),
        &args,
    )
}

/// Most blocks an elementwise (grid-stride) launch uses: 2048 x 256 threads is two waves of
/// a 132-SM GPU at full occupancy; larger inputs loop (the tests cross this at 2^19 items).
pub const ELEMENTWISE_MAX_BLOCKS: u32 = 2048;

/// Blocks for elementwise kernels: grid-stride loops, so the grid is capped.
fn elementwise(n: usize) -> LaunchConfig {
    let mut cfg = LaunchConfig::for_items(n, BLOCK);
    cfg.grid.0 = cfg.grid.0.min(ELEMENTWISE_MAX_BLOCKS);
    cfg
}

/// Exact GELU forward: out = 0.5 x (1 + erf(x / sqrt 2)).
pub fn gelu_forward(rt: &dyn Runtime, out: DView, x: DView) -> GpuResult<()> {
    const K: &str = "vitk_gelu_forward";
    expect_len(K, "out", out, x.len())?;
    if x.is_empty() {
        return Ok(());
    }
    let args = [out.arg(), x.arg(), KernelArg::I32(to_i32(K, "n", x.len())?)];
    rt.launch(K, elementwise(x.len()), &args)
}

/// Exact GELU backward; dx is OVERWRITTEN.
pub fn gelu_backward(rt: &dyn Runtime, dx: DView, dout: DView, x: DView) -> GpuResult<()> {
    const K: &str = "vitk_gelu_backward";
    expect_len(K, "dx", dx, x.len())?;
    expect_len(K, "dout", dout, x.len())?;
    if x.is_empty() {
        return Ok(());
    }
    let args = [
        dx.arg(),
        dout.arg(),
        x.arg(),
        KernelArg::I32(to_i32(K, "n", x.len())?),
    ];
    rt.launch(K, elementwise(x.len()), &args)
}

/// Test kernel: one warp; every element of `out` [32] receives the sum of `input` [32].
pub fn test_warp_sum(rt: &dyn Runtime, out: DView, input: DView) -> GpuResult<()> {
    const K: &str = "vitk_test_warp_sum";
    expect_len(K, "out", out, 32)?;
    expect_len(K, "input", input, 32)?;
    let cfg = LaunchConfig {
        grid: (1, 1, 1),
        block: (32, 1, 1),
        shared_bytes: 0,
    };
    rt.launch(K, cfg, &[out.arg(), input.arg()])
}

/// Test kernel: out[r] = sum of row r of `input` [R, n], one block of `threads` per row.
pub fn test_block_sum(
    rt: &dyn Runtime,
    out: DView,
    input: DView,
    n: usize,
    threads: u32,
) -> GpuResult<()> {
    const K: &str = "vitk_test_block_sum";
    if n == 0 || !input.len().is_multiple_of(n) {
        return Err(shape_err(
            K,
            format!("input has {} elements, not rows of {n}", input.len()),
        ));
    }
    let rows = input.len() / n;
    expect_len(K, "out", out, rows)?;
    let cfg = LaunchConfig {
        grid: (rows as u32, 1, 1),
        block: (threads, 1, 1),
        shared_bytes: 0,
    };
    rt.launch(
        K,
        cfg,
        &[out.arg(), input.arg(), KernelArg::I32(to_i32(K, "n", n)?)],
    )
}

// ---- matmul.cu -------------------------------------------------------------------------

const MM_TILE: usize = 64;
const MM_ACCUMULATE: i32 = 1;
const MM_GELU: i32 = 2;
const MM_QKV: i32 = 4;

/// One launch of `vitk_matmul`: C[M, N] (=|+=) epilogue(A(i, k) B(k, j)), see kernels/matmul.cu.
struct Gemm {
    c: DView,
    aux: Option<DView>,
    a: DView,
    b: DView,
    bias: Option<DView>,
    residual: Option<DView>,
    m: usize,
    n: usize,
    k: usize,
    lda: (usize, usize),
    ldb: (usize, usize),
    flags: i32,
    qkv: (usize, usize),
}

fn null_or(v: Option<DView>) -> KernelArg {
    v.map(|v| v.arg())
        .unwrap_or(KernelArg::Ptr(super::DevicePtr(0)))
}

fn gemm(rt: &dyn Runtime, kname: &str, g: Gemm) -> GpuResult<()> {
    const K: &str = "vitk_matmul";
    let (m, n, k) = (g.m, g.n, g.k);
    if m == 0 || n == 0 {
        return Ok(());
    }
    let i = |what: &str, v: usize| to_i32(kname, what, v);
    let args = [
        g.c.arg(),
        null_or(g.aux),
        g.a.arg(),
        g.b.arg(),
        null_or(g.bias),
        null_or(g.residual),
        KernelArg::I32(i("M", m)?),
        KernelArg::I32(i("N", n)?),
        KernelArg::I32(i("K", k)?),
        KernelArg::I32(i("lda", g.lda.0)?),
        KernelArg::I32(i("lda", g.lda.1)?),
        KernelArg::I32(i("ldb", g.ldb.0)?),
        KernelArg::I32(i("ldb", g.ldb.1)?),
        KernelArg::I32(g.flags),
        KernelArg::I32(i("tokens", g.qkv.0)?),
        KernelArg::I32(i("heads", g.qkv.1)?),
    ];
    let cfg = LaunchConfig {
        grid: (
            n.div_ceil(MM_TILE) as u32,
            to_i32(kname, "row tiles", m.div_ceil(MM_TILE))?.min(65_535) as u32,
            1,
        ),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    if m.div_ceil(MM_TILE) > 65_535 {
        return Err(shape_err(kname, format!("{m} rows exceed 65535 tiles")));
    }
    rt.launch(K, cfg, &args)
}

/// The epilogue of a forward linear layer.
#[derive(Clone, Copy, Debug)]
pub enum LinearEpilogue {
    /// y = x Wᵀ + b
    Bias,
    /// y = residual + x Wᵀ + b (attention projection, fc2)
    Residual(DView),
    /// y = gelu(x Wᵀ + b), with the pre-activation x Wᵀ + b written to `pre` (fc1)
    Gelu { pre: DView },
}

/// y [R, O] = epilogue(x [R, I] · w [O, I]ᵀ + b [O]).
#[allow(clippy::too_many_arguments)]
pub fn linear_forward(
    rt: &dyn Runtime,
    y: DView,
    x: DView,
    w: DView,
    b: DView,
    epilogue: LinearEpilogue,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> GpuResult<()> {
    const K: &str = "linear_forward";
    expect_len(K, "y", y, rows * out_dim)?;
    expect_len(K, "x", x, rows * in_dim)?;
    expect_len(K, "w", w, out_dim * in_dim)?;
    expect_len(K, "b", b, out_dim)?;
    let (mut residual, mut aux, mut flags) = (None, None, 0);
    match epilogue {
        LinearEpilogue::Bias => {}
        LinearEpilogue::Residual(r) => {
            expect_len(K, "residual", r, rows * out_dim)?;
            residual = Some(r);
        }
        LinearEpilogue::Gelu { pre } => {
            expect_len(K, "pre", pre, rows * out_dim)?;
            aux = Some(pre);
            flags = MM_GELU;
        }
    }
    gemm(
        rt,
        K,
        Gemm {
            c: y,
            aux,
            a: x,
            b: w,
            bias: Some(b),
            residual,
            m: rows,
            n: out_dim,
            k: in_dim,
            lda: (in_dim, 1),
            ldb: (1, in_dim),
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
    qkv: DView,
    x: DView,
    w: DView,
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
    expect_len(K, "qkv", qkv, rows * 3 * dim)?;
    expect_len(K, "x", x, rows * dim)?;
    expect_len(K, "w", w, 3 * dim * dim)?;
    expect_len(K, "b", b, 3 * dim)?;
    gemm(
        rt,
        K,
        Gemm {
            c: qkv,
            aux: None,
            a: x,
            b: w,
            bias: Some(b),
            residual: None,
            m: rows,
            n: 3 * dim,
            k: dim,
            lda: (dim, 1),
            ldb: (1, dim),
            flags: MM_QKV,
            qkv: (tokens, heads),
        },
    )
}

/// dx [R, I] = dy [R, O] · w [O, I] (overwritten).
pub fn linear_backward_dx(
    rt: &dyn Runtime,
    dx: DView,
    dy: DView,
    w: DView,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> GpuResult<()> {
    const K: &str = "linear_backward_dx";
    expect_len(K, "dx", dx, rows * in_dim)?;
    expect_len(K, "dy", dy, rows * out_dim)?;
    expect_len(K, "w", w, out_dim * in_dim)?;
    if out_dim == 0 {
        return dx.fill_bytes(rt, 0);
    }
    gemm(
        rt,
        K,
        Gemm {
            c: dx,
            aux: None,
            a: dy,
            b: w,
            bias: None,
            residual: None,
            m: rows,
            n: in_dim,
            k: out_dim,
            lda: (out_dim, 1),
            ldb: (in_dim, 1),
            flags: 0,
            qkv: (1, 1),
        },
    )
}

/// dw [O, I] += dy [R, O]ᵀ · x [R, I].
pub fn linear_backward_dw(
    rt: &dyn Runtime,
    dw: DView,
    dy: DView,
    x: DView,
    rows: usize,
    in_dim: usize,
    out_dim: usize,
) -> GpuResult<()> {
    const K: &str = "linear_backward_dw";
    expect_len(K, "dw", dw, out_dim * in_dim)?;
    expect_len(K, "dy", dy, rows * out_dim)?;
    expect_len(K, "x", x, rows * in_dim)?;
    gemm(
        rt,
        K,
        Gemm {
            c: dw,
            aux: None,
            a: dy,
            b: x,
            bias: None,
            residual: None,
            m: out_dim,
            n: in_dim,
            k: rows,
            lda: (1, out_dim),
            ldb: (in_dim, 1),
            flags: MM_ACCUMULATE,
            qkv: (1, 1),
        },
    )
}

/// Rows per chunk of the deterministic column sums.
fn colsum_chunks(rows: usize) -> (usize, usize) {
    let per = rows.div_ceil(256).max(32);
    (rows.div_ceil(per).max(1), per)
}

/// Scratch elements `column_sums_into` needs for a [rows, cols] matrix.
pub fn colsum_scratch_len(rows: usize, cols: usize) -> usize {
    colsum_chunks(rows).0 * cols
}

/// acc [C] += Σ_r m [R, C] (bias gradients), deterministic: fixed row chunks, then the chunk
/// partials (in `scratch`) added in order.
pub fn column_sums_into(
    rt: &dyn Runtime,
    acc: DView,
    scratch: DView,
    m: DView,
    rows: usize,
    cols: usize,
) -> GpuResult<()> {
    const K: &str = "vitk_colsum_partial";
    expect_len(K, "acc", acc, cols)?;
    expect_len(K, "matrix", m, rows * cols)?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let (chunks, per) = colsum_chunks(rows);
    if scratch.len() < chunks * cols {
        return Err(shape_err(
            K,
            format!(
                "scratch has {} elements, needs {}",
                scratch.len(),
                chunks * cols
            ),
        ));
    }
    let cfg = LaunchConfig {
        grid: (cols.div_ceil(BLOCK as usize) as u32, chunks as u32, 1),
        block: (BLOCK, 1, 1),
        shared_bytes: 0,
    };
    let ci = to_i32(K, "cols", cols)?;
    rt.launch(
        K,
        cfg,
        &[
            scratch.arg(),
            m.arg(),
            KernelArg::I32(to_i32(K, "rows", rows)?),
            KernelArg::I32(ci),
            KernelArg::I32(per as i32),
        ],
    )?;
    rt.launch(
        "vitk_colsum_reduce",
        LaunchConfig::for_items(cols, BLOCK),
        &[
            acc.arg(),
            scratch.arg(),
            KernelArg::I32(chunks as i32),
            KernelArg::I32(ci),
        ],
    )
}

// ---- attention.cu ----------------------------------------------------------------------

/// Shared memory a kernel may use without opting in (portable across sm_80/sm_90).
const PORTABLE_SHARED: usize = 48 * 1024;

/// Shape of one attention call: batch, heads, tokens, head dim.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub batch: usize,
    pub heads: usize,
    pub tokens: usize,
    pub head_dim: usize,
}

impl AttnDims {
    /// Elements of one of q, k, v (or of the attention output): B·H·T·hd.
    pub fn head_len_pub(&self) -> usize {
        self.head_len()
    }
    fn head_len(&self) -> usize {
        self.batch * self.heads * self.tokens * self.head_dim
    }
    fn probs_len(&self) -> usize {
        self.batch * self.heads * self.tokens * self.tokens
    }
    /// (staged flag, dynamic shared bytes) for `mats` matrices of [T, hd + 1].
    fn staging(&self, mats: usize, allow: bool) -> (i32, u32) {
        let bytes = mats * self.tokens * (self.head_dim + 1) * 4;
        if allow && bytes <= PORTABLE_SHARED {
            (1, bytes as u32)
        } else {
            (0, 0)
        }
    }
    fn check(&self, k: &str) -> GpuResult<()> {
        if self.head_dim == 0 || self.tokens == 0 || self.heads == 0 {
            return Err(shape_err(k, format!("empty attention shape {self:?}")));
        }
        to_i32(k, "B*H*T*T", self.probs_len())?;
        to_i32(k, "B*T*3D", self.head_len() * 3)?;
        Ok(())
    }
    fn ints(&self, k: &str) -> GpuResult<[KernelArg; 4]> {
        Ok([
            KernelArg::I32(to_i32(k, "heads", self.heads)?),
            KernelArg::I32(to_i32(k, "tokens", self.tokens)?),
            KernelArg::I32(to_i32(k, "head_dim", self.head_dim)?),
            KernelArg::F32((1.0 / (self.head_dim as f64).sqrt()) as f32),
        ])
    }
}

fn attn_cfg(s: &AttnDims, shared: u32) -> LaunchConfig {
    LaunchConfig {
        grid: ((s.batch * s.heads) as u32, 1, 1),
        block: (256, 1, 1),
        shared_bytes: shared,
    }
}

/// out [B, T, D], probs [B, H, T, T] from head-major q, k, v [B, H, T, hd]. `stage` lets K
/// and V go through shared memory when they fit (false forces the global-memory path).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    rt: &dyn Runtime,
    out: DView,
    probs: DView,
    q: DView,
    k: DView,
    v: DView,
    s: AttnDims,
    stage: bool,
) -> GpuResult<()> {
    const K: &str = "vitk_attention_forward";
    s.check(K)?;
    for (name, buf) in [("out", out), ("q", q), ("k", k), ("v", v)] {
        expect_len(K, name, buf, s.head_len())?;
    }
    expect_len(K, "probs", probs, s.probs_len())?;
    if s.batch == 0 {
        return Ok(());
    }
    let (staged, shared) = s.staging(2, stage);
    let [a, b, c, d] = s.ints(K)?;
    let args = [
        out.arg(),
        probs.arg(),
        q.arg(),
        k.arg(),
        v.arg(),
        a,
        b,
        c,
        d,
        KernelArg::I32(staged),
    ];
    rt.launch(K, attn_cfg(&s, shared), &args)
}

/// dqkv [B, T, 3D] (overwritten, token-major) from dout [B, T, D], probs and head-major
/// q, k, v; `ds` [B, H, T, T] is scratch.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    rt: &dyn Runtime,
    dqkv: DView,
    ds: DView,
    dout: DView,
    probs: DView,
    q: DView,
    k: DView,
    v: DView,
    s: AttnDims,
    stage: bool,
) -> GpuResult<()> {
    const K: &str = "vitk_attention_backward";
    s.check(K)?;
    for (name, buf) in [("dout", dout), ("q", q), ("k", k), ("v", v)] {
        expect_len(K, name, buf, s.head_len())?;
    }
    expect_len(K, "dqkv", dqkv, 3 * s.head_len())?;
    expect_len(K, "probs", probs, s.probs_len())?;
    expect_len(K, "ds", ds, s.probs_len())?;
    if s.batch == 0 {
        return Ok(());
    }
    let (staged, shared) = s.staging(4, stage);
    let [a, b, c, d] = s.ints(K)?;
    let args = [
        dqkv.arg(),
        ds.arg(),
        dout.arg(),
        probs.arg(),
        q.arg(),
        k.arg(),
        v.arg(),
        a,
        b,
        c,
        d,
        KernelArg::I32(staged),
    ];
    rt.launch(K, attn_cfg(&s, shared), &args)
}

// ---- loss.cu -----------------------------------------------------------------------------

/// Cross-entropy with label smoothing: stats[0] = mean loss, stats[1] = correct count,
/// dlogits [B, K] overwritten. Labels must be < K (the data layer checks them).
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    rt: &dyn Runtime,
    stats: DView,
    dlogits: DView,
    logits: DView,
    labels: &DeviceBuffer<u32>,
    batch: usize,
    classes: usize,
    smoothing: f32,
) -> GpuResult<()> {
    const K: &str = "vitk_cross_entropy";
    if stats.len() < 2 {
        return Err(shape_err(K, "stats needs 2 elements".into()));
    }
    expect_len(K, "logits", logits, batch * classes)?;
    expect_len(K, "dlogits", dlogits, batch * classes)?;
    if labels.len() < batch || batch == 0 || classes == 0 {
        return Err(shape_err(
            K,
            format!(
                "{} labels for a batch of {batch}, {classes} classes",
                labels.len()
            ),
        ));
    }
    let args = [
        stats.arg(),
        dlogits.arg(),
        logits.arg(),
        labels.arg(),
        KernelArg::I32(to_i32(K, "batch", batch)?),
        KernelArg::I32(to_i32(K, "classes", classes)?),
        KernelArg::F32(smoothing),
    ];
    let cfg = LaunchConfig {
        grid: (1, 1, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    rt.launch(K, cfg, &args)
}

// ---- optim.cu ----------------------------------------------------------------------------

/// Blocks of the first pass of the gradient norm (the length of its f64 partials buffer).
pub const NORM_BLOCKS: usize = 256;

/// stats[2] = ‖grads‖₂, stats[3] = min(1, max_norm / (norm + 1e-6)), deterministic.
pub fn grad_norm_clip(
    rt: &dyn Runtime,
    stats: DView,
    partial: &DeviceBuffer<f64>,
    grads: DView,
    max_norm: f64,
) -> GpuResult<()> {
    const K: &str = "vitk_sumsq_partial";
    if stats.len() < 4 || partial.len() < NORM_BLOCKS {
        return Err(shape_err(
            K,
            "stats needs 4 elements, partial NORM_BLOCKS".into(),
        ));
    }
    let cfg = LaunchConfig {
        grid: (NORM_BLOCKS as u32, 1, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    rt.launch(
        K,
        cfg,
        &[
            partial.arg(),
            grads.arg(),
            KernelArg::I64(grads.len() as i64),
        ],
    )?;
    let one = LaunchConfig {
        grid: (1, 1, 1),
        block: (32, 1, 1),
        shared_bytes: 0,
    };
    rt.launch(
        "vitk_clip_coef",
        one,
        &[
            stats.arg(),
            partial.arg(),
            KernelArg::I32(NORM_BLOCKS as i32),
            KernelArg::F64(max_norm),
        ],
    )
}

/// The per-step scalars of AdamW, computed on the host in f64 as src/train/adamw.rs does.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub keep: f32,
    pub step_size: f32,
    pub bc2_sqrt: f32,
    pub b1c: f32,
    pub b2: f32,
    pub b2c: f32,
    pub eps: f32,
}

impl AdamWStep {
    /// Scalars of step `t` (1-based) at rate `lr` (src/optim.rs), in f32.
    pub fn new(cfg: &crate::optim::AdamWConfig, t: u64, lr: f64) -> Self {
        let s = crate::optim::AdamWScalars::new(cfg, t, lr);
        AdamWStep {
            keep: s.keep as f32,
            step_size: s.step_size as f32,
            bc2_sqrt: s.bc2_sqrt as f32,
            b1c: s.b1c as f32,
            b2: s.b2 as f32,
            b2c: s.b2c as f32,
            eps: s.eps as f32,
        }
    }
}

/// One AdamW update of params, m, v with grads (times stats[3] when `clip_stats` is given);
/// `decay` [n] is 1 where weight decay applies.
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    rt: &dyn Runtime,
    params: DView,
    m: DView,
    v: DView,
    grads: DView,
    decay: &DeviceBuffer<u8>,
    clip_stats: Option<DView>,
    s: AdamWStep,
) -> GpuResult<()> {
    const K: &str = "vitk_adamw";
    let n = params.len();
    for (name, b) in [("m", m), ("v", v), ("grads", grads)] {
        expect_len(K, name, b, n)?;
    }
    if decay.len() != n {
        return Err(shape_err(
            K,
            format!("decay mask has {} elements, expected {n}", decay.len()),
        ));
    }
    if n == 0 {
        return Ok(());
    }
    let args = [
        params.arg(),
        m.arg(),
        v.arg(),
        grads.arg(),
        decay.arg(),
        null_or(clip_stats),
        KernelArg::I64(n as i64),
        KernelArg::F32(s.keep),
        KernelArg::F32(s.step_size),
        KernelArg::F32(s.bc2_sqrt),
        KernelArg::F32(s.b1c),
        KernelArg::F32(s.b2),
        KernelArg::F32(s.b2c),
        KernelArg::F32(s.eps),
    ];
    rt.launch(K, elementwise(n), &args)
}

// ---- tokens.cu ---------------------------------------------------------------------------

/// x [B, T, D] = [cls] + patch [B, N, D] + pos [T, D].
pub fn tokens_forward(
    rt: &dyn Runtime,
    x: DView,
    patch: DView,
    pos: DView,
    cls: Option<DView>,
    batch: usize,
    dim: usize,
) -> GpuResult<()> {
    const K: &str = "vitk_tokens_forward";
    let prefix = usize::from(cls.is_some());
    if dim == 0 || !pos.len().is_multiple_of(dim) || pos.len() / dim < prefix {
        return Err(shape_err(
            K,
            format!("pos has {} elements, not rows of {dim}", pos.len()),
        ));
    }
    let t = pos.len() / dim;
    expect_len(K, "x", x, batch * t * dim)?;
    expect_len(K, "patch", patch, batch * (t - prefix) * dim)?;
    if let Some(c) = cls {
        expect_len(K, "cls", c, dim)?;
    }
    if x.is_empty() {
        return Ok(());
    }
    let args = [
        x.arg(),
        patch.arg(),
        pos.arg(),
        null_or(cls),
        KernelArg::I32(to_i32(K, "batch", batch)?),
        KernelArg::I32(to_i32(K, "tokens", t)?),
        KernelArg::I32(to_i32(K, "dim", dim)?),
    ];
    to_i32(K, "x elements", x.len())?;
    rt.launch(K, LaunchConfig::for_items(x.len(), BLOCK), &args)
}

/// dpatch [B, N, D] = dx without the cls row (overwritten); dpos [T, D] += Σ_b dx[b];
/// dcls [D] += Σ_b dx[b, 0].
pub fn tokens_backward(
    rt: &dyn Runtime,
    dpatch: DView,
    dpos: DView,
    dcls: Option<DView>,
    dx: DView,
    batch: usize,
    dim: usize,
) -> GpuResult<()> {
    const K: &str = "vitk_tokens_backward_patch";
    let prefix = usize::from(dcls.is_some());
    if dim == 0 || !dpos.len().is_multiple_of(dim) || dpos.len() / dim < prefix {
        return Err(shape_err(
            K,
            format!("dpos has {} elements, not rows of {dim}", dpos.len()),
        ));
    }
    let t = dpos.len() / dim;
    expect_len(K, "dx", dx, batch * t * dim)?;
    expect_len(K, "dpatch", dpatch, batch * (t - prefix) * dim)?;
    if let Some(c) = dcls {
        expect_len(K, "dcls", c, dim)?;
    }
    if dx.is_empty() {
        return Ok(());
    }
    to_i32(K, "dx elements", dx.len())?;
    let (b, ti, d) = (
        KernelArg::I32(to_i32(K, "batch", batch)?),
        KernelArg::I32(to_i32(K, "tokens", t)?),
        KernelArg::I32(to_i32(K, "dim", dim)?),
    );
    if !dpatch.is_empty() {
        rt.launch(
            K,
            LaunchConfig::for_items(dpatch.len(), BLOCK),
            &[
                dpatch.arg(),
                dx.arg(),
                b,
                ti,
                d,
                KernelArg::I32(prefix as i32),
            ],
        )?;
    }
    rt.launch(
        "vitk_tokens_backward_pos",
        LaunchConfig::for_items(t * dim, BLOCK),
        &[dpos.arg(), null_or(dcls), dx.arg(), b, ti, d],
    )
}

/// pooled [B, D] from x [B, T, D]: token 0 (cls) or the mean over tokens.
pub fn pool_forward(
    rt: &dyn Runtime,
    pooled: DView,
    x: DView,
    batch: usize,
    tokens: usize,
    dim: usize,
    mean: bool,
) -> GpuResult<()> {
    const K: &str = "vitk_pool_forward";
    expect_len(K, "pooled", pooled, batch * dim)?;
    expect_len(K, "x", x, batch * tokens * dim)?;
    if pooled.is_empty() || tokens == 0 {
        return Ok(());
    }
    to_i32(K, "x elements", x.len())?;
    rt.launch(
        K,
        LaunchConfig::for_items(pooled.len(), BLOCK),
        &[
            pooled.arg(),
            x.arg(),
            KernelArg::I32(batch as i32),
            KernelArg::I32(tokens as i32),
            KernelArg::I32(dim as i32),
            KernelArg::I32(i32::from(mean)),
        ],
    )
}

/// dx [B, T, D] (overwritten) from dpooled [B, D].
pub fn pool_backward(
    rt: &dyn Runtime,
    dx: DView,
    dpooled: DView,
    batch: usize,
    tokens: usize,
    dim: usize,
    mean: bool,
) -> GpuResult<()> {
    const K: &str = "vitk_pool_backward";
    expect_len(K, "dpooled", dpooled, batch * dim)?;
    expect_len(K, "dx", dx, batch * tokens * dim)?;
    if dx.is_empty() {
        return Ok(());
    }
    to_i32(K, "dx elements", dx.len())?;
    rt.launch(
        K,
        LaunchConfig::for_items(dx.len(), BLOCK),
        &[
            dx.arg(),
            dpooled.arg(),
            KernelArg::I32(batch as i32),
            KernelArg::I32(tokens as i32),
            KernelArg::I32(dim as i32),
            KernelArg::I32(i32::from(mean)),
        ],
    )
}
