//! Every kernel against its CPU op (run in f64 on the same f32 inputs) on fresh random inputs,
//! at shapes that are not multiples of any block size, with outputs poisoned (NaN) before the
//! launch. Device: the emulator, or a GPU with VITK_TEST_DEVICE=cuda.

mod common;
mod gpu_common;
mod reference;

use gpu_common::{check, device, rng, tol, uniform, widen};
use std::sync::Arc;
use vitk::cpu;
use vitk::cpu::AdamW;
use vitk::gpu::kernels::{AttnDims, LinearEpilogue};
use vitk::gpu::{kernels, DView, DeviceBuffer, Runtime};
use vitk::model::{ModelConfig, ParamLayout, Pool};
use vitk::optim::AdamWConfig;

/// Norm-wise relative error allowed per tensor (f32 kernels vs the f64 CPU op).
const TOLERANCES: &[(&str, f64)] = &[
    ("patch_embed.patches", 0.0),
    ("layernorm.out", 1e-5),
    ("layernorm.mean", 1e-5),
    ("layernorm.rstd", 1e-5),
    ("layernorm.dx", 1e-5),
    ("layernorm.dweight", 1e-5),
    ("layernorm.dbias", 1e-5),
    ("gelu.out", 1e-5),
    ("gelu.dx", 1e-5),
    ("reduce.warp_sum", 1e-5),
    ("reduce.block_sum", 1e-5),
    ("matmul.y", 1e-5),
    ("matmul.y_residual", 1e-5),
    ("matmul.y_gelu", 1e-5),
    ("matmul.pre_gelu", 1e-5),
    ("matmul.qkv", 1e-5),
    ("matmul.dx", 1e-5),
    ("matmul.dw", 1e-5),
    ("matmul.db", 1e-5),
    ("attention.out", 1e-5),
    ("attention.probs", 1e-5),
    ("attention.dqkv", 1e-5),
    ("cross_entropy.loss", 1e-5),
    ("cross_entropy.dlogits", 1e-5),
    ("adamw.params", 1e-5),
    ("adamw.m", 1e-5),
    ("adamw.v", 1e-5),
    ("clip.norm", 1e-5),
    ("tokens.x", 1e-5),
    ("tokens.dpatch", 1e-5),
    ("tokens.dpos", 1e-5),
    ("tokens.dcls", 1e-5),
    ("pool.pooled", 1e-5),
    ("pool.dx", 1e-5),
];

const NAN: u8 = 0xFF;

#[test]
fn patch_embed_im2col_matches_cpu() {
    let rt = device();
    let mut rng = rng("patch_embed");
    // (batch, channels, side, patch)
    // ... and the model shapes: CIFAR-10 at patch 4, and 224 at patch 16 (ViT-B/16's input)
    for (b, c, s, p) in [
        (1, 1, 4, 2),
        (3, 3, 20, 4),
        (2, 5, 33, 11),
        (1, 3, 35, 7),
        (8, 3, 32, 4),
        (2, 3, 224, 16),
    ] {
        let case = format!("B={b} C={c} S={s} P={p}");
        let images = uniform(&mut rng, b * c * s * s, 1.0);
        let n = (s / p) * (s / p);
        let mut want = vec![0.0f64; b * n * c * p * p];
        cpu::patch_embed::im2col(&mut want, &widen(&images), b, c, s, p);

        let d_images = DeviceBuffer::from_slice(&rt, &images).unwrap();
        let mut d_patches = DeviceBuffer::<f32>::new(&rt, want.len()).unwrap();
        d_patches.fill_bytes(NAN).unwrap();
        kernels::patch_embed_im2col(&*rt, d_patches.view(), d_images.view(), b, c, s, p).unwrap();
        rt.synchronize().unwrap();
        let name = "patch_embed.patches";
        check(
            &case,
            name,
            tol(TOLERANCES, name),
            &d_patches.to_vec().unwrap(),
            &want,
        );
    }
}

#[test]
fn layernorm_forward_and_backward_match_cpu() {
    let rt = device();
    let mut rng = rng("layernorm");
    // (rows, dim): rows > 128 make backward blocks own several rows; 1040 x 256 is 16
    // images of `seed` (9 rows per block)
    for (rows, dim) in [
        (1, 7),
        (7, 37),
        (19, 768),
        (130, 100),
        (300, 65),
        (1040, 256),
    ] {
        let case = format!("R={rows} D={dim}");
        let x: Vec<f32> = uniform(&mut rng, rows * dim, 2.0)
            .iter()
            .map(|v| v + 0.5)
            .collect();
        let weight: Vec<f32> = uniform(&mut rng, dim, 0.5)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        let bias = uniform(&mut rng, dim, 0.5);
        let dout = uniform(&mut rng, rows * dim, 1.0);
        // accumulated outputs start from the same random values on both sides
        let dx0 = uniform(&mut rng, rows * dim, 1.0);
        let dw0 = uniform(&mut rng, dim, 1.0);
        let db0 = uniform(&mut rng, dim, 1.0);

        let (x64, w64) = (widen(&x), widen(&weight));
        let mut out = vec![0.0; rows * dim];
        let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
        cpu::layernorm::layernorm_forward(
            &mut out,
            &mut mean,
            &mut rstd,
            &x64,
            &w64,
            &widen(&bias),
            dim,
        );
        let (mut dx, mut dw, mut db) = (widen(&dx0), widen(&dw0), widen(&db0));
        cpu::layernorm::layernorm_backward(
            &mut dx,
            &mut dw,
            &mut db,
            &widen(&dout),
            &x64,
            &mean,
            &rstd,
            &w64,
            dim,
        );

        let d_x = DeviceBuffer::from_slice(&rt, &x).unwrap();
        let d_w = DeviceBuffer::from_slice(&rt, &weight).unwrap();
        let d_b = DeviceBuffer::from_slice(&rt, &bias).unwrap();
        let mut d_out = DeviceBuffer::<f32>::new(&rt, rows * dim).unwrap();
        let mut d_mean = DeviceBuffer::<f32>::new(&rt, rows).unwrap();
        let mut d_rstd = DeviceBuffer::<f32>::new(&rt, rows).unwrap();
        for buf in [&mut d_out, &mut d_mean, &mut d_rstd] {
            buf.fill_bytes(NAN).unwrap();
        }
        kernels::layernorm_forward(
            &*rt,
            d_out.view(),
            d_mean.view(),
            d_rstd.view(),
            d_x.view(),
            d_w.view(),
            d_b.view(),
            dim,
        )
        .unwrap();
        rt.synchronize().unwrap();
        for (name, gpu, cpu) in [
            ("layernorm.out", &d_out, &out),
            ("layernorm.mean", &d_mean, &mean),
            ("layernorm.rstd", &d_rstd, &rstd),
        ] {
            check(
                &case,
                name,
                tol(TOLERANCES, name),
                &gpu.to_vec().unwrap(),
                cpu,
            );
        }

        let d_dout = DeviceBuffer::from_slice(&rt, &dout).unwrap();
        let d_dx = DeviceBuffer::from_slice(&rt, &dx0).unwrap();
        let d_dw = DeviceBuffer::from_slice(&rt, &dw0).unwrap();
        let d_db = DeviceBuffer::from_slice(&rt, &db0).unwrap();
        let mut scratch =
            DeviceBuffer::<f32>::new(&rt, kernels::layernorm_backward_scratch_len(rows, dim))
                .unwrap();
        scratch.fill_bytes(NAN).unwrap();
        kernels::layernorm_backward(
            &*rt,
            d_dx.view(),
            d_dw.view(),
            d_db.view(),
            scratch.view(),
            d_dout.view(),
            d_x.view(),
            d_mean.view(),
            d_rstd.view(),
            d_w.view(),
            dim,
        )
        .unwrap();
        rt.synchronize().unwrap();
        for (name, gpu, cpu) in [
            ("layernorm.dx", &d_dx, &dx),
            ("layernorm.dweight", &d_dw, &dw),
            ("layernorm.dbias", &d_db, &db),
        ] {
            check(
                &case,
                name,
                tol(TOLERANCES, name),
                &gpu.to_vec().unwrap(),
                cpu,
            );
        }
    }
}

#[test]
fn gelu_forward_and_backward_match_cpu() {
    let rt = device();
    let mut rng = rng("gelu");
    // 2^20 + 3 elements pass the 2048-block grid of the elementwise launch twice
    for n in [1, 31, 1000, 4099, 70_001, (1 << 20) + 3] {
        let case = format!("n={n}");
        let x = uniform(&mut rng, n, 4.0);
        let dout = uniform(&mut rng, n, 1.0);
        let mut out = vec![0.0; n];
        cpu::gelu::gelu_forward(&mut out, &widen(&x));
        let mut dx = vec![0.0; n];
        cpu::gelu::gelu_backward(&mut dx, &widen(&dout), &widen(&x));

        let d_x = DeviceBuffer::from_slice(&rt, &x).unwrap();
        let d_dout = DeviceBuffer::from_slice(&rt, &dout).unwrap();
        let mut d_out = DeviceBuffer::<f32>::new(&rt, n).unwrap();
        let mut d_dx = DeviceBuffer::<f32>::new(&rt, n).unwrap();
        d_out.fill_bytes(NAN).unwrap();
        d_dx.fill_bytes(NAN).unwrap();
        kernels::gelu_forward(&*rt, d_out.view(), d_x.view()).unwrap();
        kernels::gelu_backward(&*rt, d_dx.view(), d_dout.view(), d_x.view()).unwrap();
        rt.synchronize().unwrap();
        check(
            &case,
            "gelu.out",
            tol(TOLERANCES, "gelu.out"),
            &d_out.to_vec().unwrap(),
            &out,
        );
        check(
            &case,
            "gelu.dx",
            tol(TOLERANCES, "gelu.dx"),
            &d_dx.to_vec().unwrap(),
            &dx,
        );
    }
}

#[test]
fn warp_and_block_sums_are_correct() {
    let rt = device();
    let mut rng = rng("reduce");
    let input = uniform(&mut rng, 32, 1.0);
    let want = vec![input.iter().map(|&v| v as f64).sum::<f64>(); 32];
    let d_in = DeviceBuffer::from_slice(&rt, &input).unwrap();
    let mut d_out = DeviceBuffer::<f32>::new(&rt, 32).unwrap();
    d_out.fill_bytes(NAN).unwrap();
    kernels::test_warp_sum(&*rt, d_out.view(), d_in.view()).unwrap();
    rt.synchronize().unwrap();
    check(
        "32 lanes",
        "reduce.warp_sum",
        tol(TOLERANCES, "reduce.warp_sum"),
        &d_out.to_vec().unwrap(),
        &want,
    );

    // (rows, row length, threads per block): block sizes and lengths not multiples of 32
    for (rows, n, threads) in [
        (3, 1000, 100),
        (2, 77, 32),
        (5, 4097, 1024),
        (4, 300, 257),
        (1, 5, 7),
    ] {
        let case = format!("R={rows} n={n} threads={threads}");
        let input = uniform(&mut rng, rows * n, 1.0);
        let want: Vec<f64> = input
            .chunks(n)
            .map(|r| r.iter().map(|&v| v as f64).sum())
            .collect();
        let d_in = DeviceBuffer::from_slice(&rt, &input).unwrap();
        let mut d_out = DeviceBuffer::<f32>::new(&rt, rows).unwrap();
        d_out.fill_bytes(NAN).unwrap();
        kernels::test_block_sum(&*rt, d_out.view(), d_in.view(), n, threads).unwrap();
        rt.synchronize().unwrap();
        let name = "reduce.block_sum";
        check(
            &case,
            name,
            tol(TOLERANCES, name),
            &d_out.to_vec().unwrap(),
            &want,
        );
    }
}

/// Uploads `data` into a fresh buffer.
fn up(rt: &Arc<dyn Runtime>, data: &[f32]) -> DeviceBuffer<f32> {
    DeviceBuffer::from_slice(rt, data).unwrap()
}

/// A fresh buffer of `n` NaNs.
fn nans(rt: &Arc<dyn Runtime>, n: usize) -> DeviceBuffer<f32> {
    let mut b = DeviceBuffer::<f32>::new(rt, n).unwrap();
    b.fill_bytes(NAN).unwrap();
    b
}

fn get(rt: &Arc<dyn Runtime>, v: DView) -> Vec<f32> {
    rt.synchronize().unwrap();
    v.to_vec(&**rt).unwrap()
}

fn cmp(rt: &Arc<dyn Runtime>, case: &str, name: &str, gpu: DView, cpu: &[f64]) {
    check(case, name, tol(TOLERANCES, name), &get(rt, gpu), cpu);
}

#[test]
fn matmul_linear_forward_backward_match_cpu() {
    let rt = device();
    let mut rng = rng("matmul");
    // (rows, in, out): none a multiple of the 64 x 64 x 16 tiles, some smaller than a tile
    // 1040 x 192 x 200: 16 images of 65 tokens, 17 x 4 tiles and 12 K-steps forward, 65
    // K-steps in the weight gradient
    for (r, i, o) in [
        (1, 1, 1),
        (3, 5, 7),
        (67, 45, 70),
        (130, 17, 65),
        (9, 100, 3),
        (1040, 192, 200),
    ] {
        let case = format!("R={r} I={i} O={o}");
        let x = uniform(&mut rng, r * i, 1.0);
        let w = uniform(&mut rng, o * i, 0.5);
        let b = uniform(&mut rng, o, 0.5);
        let res = uniform(&mut rng, r * o, 1.0);
        let dy = uniform(&mut rng, r * o, 1.0);
        let dw0 = uniform(&mut rng, o * i, 1.0);
        let db0 = uniform(&mut rng, o, 1.0);
        let (x64, w64, b64) = (widen(&x), widen(&w), widen(&b));
        let mut y = vec![0.0; r * o];
        cpu::linear::linear_forward(&mut y, &x64, &w64, Some(&b64), r, i, o);
        let mut yr = vec![0.0; r * o];
        cpu::linear::linear_residual_forward(&mut yr, &widen(&res), &x64, &w64, &b64, r, i, o);
        let mut yg = vec![0.0; r * o];
        cpu::gelu::gelu_forward(&mut yg, &y);
        let (mut dx, mut dw, mut db) = (vec![0.0; r * i], widen(&dw0), widen(&db0));
        cpu::linear::linear_backward(
            Some(&mut dx),
            false,
            &mut dw,
            Some(&mut db),
            &widen(&dy),
            &x64,
            &w64,
            r,
            i,
            o,
        );

        let (dx_, dw_, db_, res_, dy_) = (
            up(&rt, &x),
            up(&rt, &w),
            up(&rt, &b),
            up(&rt, &res),
            up(&rt, &dy),
        );
        let (gy, gyr, gyg, gpre) = (
            nans(&rt, r * o),
            nans(&rt, r * o),
            nans(&rt, r * o),
            nans(&rt, r * o),
        );
        let rtd = &*rt;
        kernels::linear_forward(
            rtd,
            gy.view(),
            dx_.view(),
            dw_.view(),
            db_.view(),
            LinearEpilogue::Bias,
            r,
            i,
            o,
        )
        .unwrap();
        kernels::linear_forward(
            rtd,
            gyr.view(),
            dx_.view(),
            dw_.view(),
            db_.view(),
            LinearEpilogue::Residual(res_.view()),
            r,
            i,
            o,
        )
        .unwrap();
        kernels::linear_forward(
            rtd,
            gyg.view(),
            dx_.view(),
            dw_.view(),
            db_.view(),
            LinearEpilogue::Gelu { pre: gpre.view() },
            r,
            i,
            o,
        )
        .unwrap();
        cmp(&rt, &case, "matmul.y", gy.view(), &y);
        cmp(&rt, &case, "matmul.y_residual", gyr.view(), &yr);
        cmp(&rt, &case, "matmul.y_gelu", gyg.view(), &yg);
        cmp(&rt, &case, "matmul.pre_gelu", gpre.view(), &y);

        let gdx = nans(&rt, r * i);
        let (gdw, gdb) = (up(&rt, &dw0), up(&rt, &db0));
        let scratch = nans(&rt, kernels::colsum_scratch_len(r, o));
        kernels::linear_backward_dx(rtd, gdx.view(), dy_.view(), dw_.view(), r, i, o).unwrap();
        kernels::linear_backward_dw(rtd, gdw.view(), dy_.view(), dx_.view(), r, i, o).unwrap();
        kernels::column_sums_into(rtd, gdb.view(), scratch.view(), dy_.view(), r, o).unwrap();
        cmp(&rt, &case, "matmul.dx", gdx.view(), &dx);
        cmp(&rt, &case, "matmul.dw", gdw.view(), &dw);
        cmp(&rt, &case, "matmul.db", gdb.view(), &db);
    }
    // Many rows: the column sums use several chunks.
    let (r, o) = (9000, 3);
    let dy = uniform(&mut rng, r * o, 1.0);
    let mut db = vec![0.0; o];
    cpu::linear::column_sums_into(&mut db, &widen(&dy), o);
    let gdb = up(&rt, &[0.0; 3]);
    let scratch = nans(&rt, kernels::colsum_scratch_len(r, o));
    kernels::column_sums_into(&*rt, gdb.view(), scratch.view(), up(&rt, &dy).view(), r, o).unwrap();
    cmp(&rt, "R=9000 O=3", "matmul.db", gdb.view(), &db);
}

/// Token-major qkv [B, T, 3D] -> head-major [3, B, H, T, hd].
fn head_major(qkv: &[f32], b: usize, t: usize, h: usize, hd: usize) -> Vec<f32> {
    let d = h * hd;
    let mut out = vec![0.0; qkv.len()];
    for s in 0..3 {
        for bi in 0..b {
            for hi in 0..h {
                for ti in 0..t {
                    for e in 0..hd {
                        out[(((s * b + bi) * h + hi) * t + ti) * hd + e] =
                            qkv[(bi * t + ti) * 3 * d + s * d + hi * hd + e];
                    }
                }
            }
        }
    }
    out
}

#[test]
fn qkv_matmul_writes_head_major() {
    let rt = device();
    let mut rng = rng("qkv");
    // ... and `seed`'s shape (T = 65, H = 8, hd = 32)
    for (b, t, h, hd) in [(2, 5, 2, 3), (3, 17, 3, 7), (1, 70, 1, 5), (2, 65, 8, 32)] {
        let case = format!("B={b} T={t} H={h} hd={hd}");
        let d = h * hd;
        let x = uniform(&mut rng, b * t * d, 1.0);
        let w = uniform(&mut rng, 3 * d * d, 0.5);
        let bias = uniform(&mut rng, 3 * d, 0.5);
        let mut y = vec![0.0; b * t * 3 * d];
        cpu::linear::linear_forward(
            &mut y,
            &widen(&x),
            &widen(&w),
            Some(&widen(&bias)),
            b * t,
            d,
            3 * d,
        );
        let y32: Vec<f32> = y.iter().map(|&v| v as f32).collect();
        let want = widen(&head_major(&y32, b, t, h, hd));
        let out = nans(&rt, want.len());
        kernels::qkv_forward(
            &*rt,
            out.view(),
            up(&rt, &x).view(),
            up(&rt, &w).view(),
            up(&rt, &bias).view(),
            b,
            t,
            h,
            d,
        )
        .unwrap();
        cmp(&rt, &case, "matmul.qkv", out.view(), &want);
    }
}

#[test]
fn attention_forward_and_backward_match_cpu() {
    let rt = device();
    let mut rng = rng("attention");
    // (B, T, H, hd, stage): odd T and hd, T above a warp, and the global-memory path
    for (b, t, h, hd, stage) in [
        (1, 1, 1, 1, true),
        (2, 5, 2, 3, true),
        (2, 37, 3, 7, true),
        (1, 65, 2, 33, true),
        (2, 37, 3, 7, false),
        (1, 90, 1, 40, true), // 4 * 90 * 41 * 4 bytes > 48 KiB: backward falls back
        (2, 65, 8, 32, true), // `seed`: staged forward and backward
        (1, 197, 3, 64, true), // ViT-Ti/16 at 224: too large to stage, both fall back
    ] {
        let case = format!("B={b} T={t} H={h} hd={hd} stage={stage}");
        let d = h * hd;
        let qkv = uniform(&mut rng, b * t * 3 * d, 1.5);
        let dout = uniform(&mut rng, b * t * d, 1.0);
        let s = cpu::attention::AttnShape {
            batch: b,
            tokens: t,
            heads: h,
            head_dim: hd,
        };
        let (mut out, mut probs) = (vec![0.0; b * t * d], vec![0.0; b * h * t * t]);
        let qkv64 = widen(&qkv);
        cpu::attention::attention_forward(&mut out, &mut probs, &qkv64, s);
        let mut dqkv = vec![0.0; b * t * 3 * d];
        cpu::attention::attention_backward(&mut dqkv, &widen(&dout), &probs, &qkv64, s);

        let hm = up(&rt, &head_major(&qkv, b, t, h, hd));
        let n = b * t * d;
        let (q, k, v) = (
            hm.view().slice(0, n),
            hm.view().slice(n, n),
            hm.view().slice(2 * n, n),
        );
        let dims = AttnDims {
            batch: b,
            heads: h,
            tokens: t,
            head_dim: hd,
        };
        let (g_out, g_probs) = (nans(&rt, n), nans(&rt, b * h * t * t));
        kernels::attention_forward(&*rt, g_out.view(), g_probs.view(), q, k, v, dims, stage)
            .unwrap();
        cmp(&rt, &case, "attention.out", g_out.view(), &out);
        cmp(&rt, &case, "attention.probs", g_probs.view(), &probs);
        let (g_dqkv, g_ds) = (nans(&rt, 3 * n), nans(&rt, b * h * t * t));
        kernels::attention_backward(
            &*rt,
            g_dqkv.view(),
            g_ds.view(),
            up(&rt, &dout).view(),
            g_probs.view(),
            q,
            k,
            v,
            dims,
            stage,
        )
        .unwrap();
        cmp(&rt, &case, "attention.dqkv", g_dqkv.view(), &dqkv);
    }
}

#[test]
fn cross_entropy_matches_cpu() {
    let rt = device();
    let mut rng = rng("cross_entropy");
    for (b, k, eps) in [
        (1, 1, 0.0),
        (3, 10, 0.1),
        (37, 5, 0.0),
        (9, 1000, 0.2),
        (300, 33, 0.1),
        (512, 10, 0.1), // a batch of 512: 64 rows per warp
    ] {
        let case = format!("B={b} K={k} eps={eps}");
        let logits = uniform(&mut rng, b * k, 4.0);
        let labels: Vec<u32> = (0..b).map(|i| ((i * 7 + 3) % k) as u32).collect();
        let mut dl = vec![0.0; b * k];
        let st = cpu::loss::cross_entropy(&widen(&logits), &labels, k, eps, Some(&mut dl));
        let stats = nans(&rt, 4);
        let g_dl = nans(&rt, b * k);
        let g_labels = DeviceBuffer::from_slice(&rt, &labels).unwrap();
        kernels::cross_entropy(
            &*rt,
            stats.view(),
            g_dl.view(),
            up(&rt, &logits).view(),
            &g_labels,
            b,
            k,
            eps as f32,
        )
        .unwrap();
        let s = get(&rt, stats.view());
        check(
            &case,
            "cross_entropy.loss",
            tol(TOLERANCES, "cross_entropy.loss"),
            &s[..1],
            &[st.loss],
        );
        assert_eq!(s[1] as usize, st.correct, "{case}: correct count");
        cmp(&rt, &case, "cross_entropy.dlogits", g_dl.view(), &dl);
    }
}

fn tiny_config(pool: Pool) -> ModelConfig {
    ModelConfig {
        image_size: 8,
        patch_size: 4,
        in_chans: 3,
        num_classes: 5,
        embed_dim: 12,
        depth: 2,
        num_heads: 2,
        mlp_dim: 20,
        pool,
    }
}

/// A model of 1.23 M parameters: past the 65,536 threads of the norm's grid-stride loop and
/// the 2048 x 256 threads of the AdamW launch.
fn large_config() -> ModelConfig {
    ModelConfig {
        image_size: 16,
        patch_size: 4,
        in_chans: 3,
        num_classes: 10,
        embed_dim: 160,
        depth: 4,
        num_heads: 4,
        mlp_dim: 640,
        pool: Pool::Cls,
    }
}

#[test]
fn adamw_and_clipping_match_cpu() {
    let rt = device();
    let mut rng = rng("adamw");
    let small = ParamLayout::new(&tiny_config(Pool::Cls));
    let large = ParamLayout::new(&large_config());
    assert!(large.len > 1_200_000);
    for (layout, clip, steps) in [
        (&small, None, 3u64),
        (&small, Some(0.5), 2),
        (&small, Some(1e6), 1),
        (&large, Some(0.5), 2),
        (&large, None, 1),
    ] {
        adamw_case(&rt, &mut rng, layout, clip, steps);
    }
}

fn adamw_case(
    rt: &Arc<dyn Runtime>,
    rng: &mut rand::rngs::StdRng,
    layout: &ParamLayout,
    clip: Option<f64>,
    steps: u64,
) {
    let rt = rt.clone();
    let n = layout.len;
    let cfg = AdamWConfig::default();
    let case = format!("n={n} clip={clip:?} steps={steps}");
    let p0 = uniform(rng, n, 1.0);
    let mut cpu_opt = AdamW::<f64>::new(cfg, n);
    let mut p = widen(&p0);
    let (gp, gm, gv) = (up(&rt, &p0), up(&rt, &vec![0.0; n]), up(&rt, &vec![0.0; n]));
    let mask: Vec<u8> = {
        let mut m = vec![0u8; n];
        for e in &layout.entries {
            if e.decay {
                m[e.range.clone()].fill(1);
            }
        }
        m
    };
    let decay = DeviceBuffer::from_slice(&rt, &mask).unwrap();
    let stats = nans(&rt, 4);
    let partial = DeviceBuffer::<f64>::new(&rt, kernels::NORM_BLOCKS).unwrap();
    for t in 1..=steps {
        let g = uniform(rng, n, 0.3);
        let mut g64 = widen(&g);
        let lr = 1e-2 / t as f64;
        let gg = up(&rt, &g);
        if let Some(max) = clip {
            let norm = vitk::cpu::clip_grad_norm(&mut g64, max);
            kernels::grad_norm_clip(&*rt, stats.view(), &partial, gg.view(), max).unwrap();
            let s = get(&rt, stats.view());
            check(
                &case,
                "clip.norm",
                tol(TOLERANCES, "clip.norm"),
                &s[2..3],
                &[norm],
            );
        }
        cpu_opt.update(layout, &mut p, &g64, lr);
        kernels::adamw(
            &*rt,
            gp.view(),
            gm.view(),
            gv.view(),
            gg.view(),
            &decay,
            clip.map(|_| stats.view()),
            kernels::AdamWStep::new(&cfg, t, lr),
        )
        .unwrap();
    }
    cmp(&rt, &case, "adamw.params", gp.view(), &p);
    cmp(&rt, &case, "adamw.m", gm.view(), &cpu_opt.m);
    cmp(&rt, &case, "adamw.v", gv.view(), &cpu_opt.v);
}

#[test]
fn tokens_and_pooling_match_cpu() {
    let rt = device();
    let mut rng = rng("tokens");
    for (b, n, d, cls) in [
        (1, 1, 1, true),
        (3, 7, 13, true),
        (2, 9, 33, false),
        (5, 64, 37, true),
        (8, 64, 256, true), // `seed`
    ] {
        let case = format!("B={b} N={n} D={d} cls={cls}");
        let t = n + usize::from(cls);
        let patch = uniform(&mut rng, b * n * d, 1.0);
        let pos = uniform(&mut rng, t * d, 1.0);
        let c = uniform(&mut rng, d, 1.0);
        let dx = uniform(&mut rng, b * t * d, 1.0);
        let dpos0 = uniform(&mut rng, t * d, 1.0);
        let dcls0 = uniform(&mut rng, d, 1.0);
        let c64 = widen(&c);
        let mut x = vec![0.0; b * t * d];
        cpu::tokens::tokens_forward(
            &mut x,
            &widen(&patch),
            &widen(&pos),
            cls.then_some(&c64[..]),
            d,
        );
        let (mut dpatch, mut dpos, mut dcls) = (vec![0.0; b * n * d], widen(&dpos0), widen(&dcls0));
        cpu::tokens::tokens_backward(
            &mut dpatch,
            &mut dpos,
            cls.then_some(&mut dcls[..]),
            &widen(&dx),
            d,
        );

        let gc = up(&rt, &c);
        let gx = nans(&rt, b * t * d);
        kernels::tokens_forward(
            &*rt,
            gx.view(),
            up(&rt, &patch).view(),
            up(&rt, &pos).view(),
            cls.then(|| gc.view()),
            b,
            d,
        )
        .unwrap();
        cmp(&rt, &case, "tokens.x", gx.view(), &x);
        let (gdp, gdpos, gdcls) = (nans(&rt, b * n * d), up(&rt, &dpos0), up(&rt, &dcls0));
        let gdx = up(&rt, &dx);
        kernels::tokens_backward(
            &*rt,
            gdp.view(),
            gdpos.view(),
            cls.then(|| gdcls.view()),
            gdx.view(),
            b,
            d,
        )
        .unwrap();
        cmp(&rt, &case, "tokens.dpatch", gdp.view(), &dpatch);
        cmp(&rt, &case, "tokens.dpos", gdpos.view(), &dpos);
        if cls {
            cmp(&rt, &case, "tokens.dcls", gdcls.view(), &dcls);
        }

        for pool in [Pool::Cls, Pool::Mean] {
            let case = format!("{case} pool={pool}");
            let dp = uniform(&mut rng, b * d, 1.0);
            let mut pooled = vec![0.0; b * d];
            cpu::pooling::pool_forward(&mut pooled, &widen(&dx), t, d, pool);
            let mut pdx = vec![0.0; b * t * d];
            cpu::pooling::pool_backward(&mut pdx, &widen(&dp), t, d, pool);
            let (gp, gpdx) = (nans(&rt, b * d), nans(&rt, b * t * d));
            let mean = pool == Pool::Mean;
            kernels::pool_forward(&*rt, gp.view(), gdx.view(), b, t, d, mean).unwrap();
            kernels::pool_backward(&*rt, gpdx.view(), up(&rt, &dp).view(), b, t, d, mean).unwrap();
            cmp(&rt, &case, "pool.pooled", gp.view(), &pooled);
            cmp(&rt, &case, "pool.dx", gpdx.view(), &pdx);
        }
    }
}

// ---- hostile numerics -------------------------------------------------------------------------

const U32: f64 = f32::EPSILON as f64 / 2.0;

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Scores of about ±200 (a softmax without its max subtraction overflows), at a staged and an
/// unstaged shape, against the plain f64 reference.
#[test]
fn attention_with_scores_of_200() {
    let rt = device();
    let mut rng = rng("attention_large_scores");
    for (b, t, h, hd, stage) in [(2, 37, 2, 16, true), (1, 70, 2, 16, false)] {
        let d = h * hd;
        let qkv = uniform(&mut rng, b * t * 3 * d, 14.0);
        let q64 = widen(&qkv);
        let max_score = max_abs_score(&q64, b, t, h, hd);
        let case = format!("B={b} T={t} H={h} hd={hd} stage={stage} max|score|={max_score:.0}");
        assert!(max_score > 150.0, "{case}: scores are not large");
        let dout = uniform(&mut rng, b * t * d, 1.0);
        let (out, probs) = reference::attention(&q64, b, t, h, hd);
        let dqkv = reference::attention_grad(&q64, &widen(&dout), b, t, h, hd);
        // A score carries ≈ (hd + 2)·u·Σ|q||k| ≤ (hd + 2)·u·|score|·√hd-ish of rounding, which
        // moves its probability by that much relatively; everything downstream inherits it.
        let tol = 4.0 * max_score * hd as f64 * U32;
        let hm = up(&rt, &head_major(&qkv, b, t, h, hd));
        let n = b * t * d;
        let (q, k, v) = (
            hm.view().slice(0, n),
            hm.view().slice(n, n),
            hm.view().slice(2 * n, n),
        );
        let dims = AttnDims {
            batch: b,
            heads: h,
            tokens: t,
            head_dim: hd,
        };
        let (g_out, g_probs) = (nans(&rt, n), nans(&rt, b * h * t * t));
        kernels::attention_forward(&*rt, g_out.view(), g_probs.view(), q, k, v, dims, stage)
            .unwrap();
        check(&case, "attention.out", tol, &get(&rt, g_out.view()), &out);
        check(
            &case,
            "attention.probs",
            tol,
            &get(&rt, g_probs.view()),
            &probs,
        );
        let (g_dqkv, g_ds) = (nans(&rt, 3 * n), nans(&rt, b * h * t * t));
        kernels::attention_backward(
            &*rt,
            g_dqkv.view(),
            g_ds.view(),
            up(&rt, &dout).view(),
            g_probs.view(),
            q,
            k,
            v,
            dims,
            stage,
        )
        .unwrap();
        check(
            &case,
            "attention.dqkv",
            tol,
            &get(&rt, g_dqkv.view()),
            &dqkv,
        );
    }
}

/// Largest |q·k|/√hd over all (batch, head, i, j) of token-major qkv.
fn max_abs_score(qkv: &[f64], b: usize, t: usize, h: usize, hd: usize) -> f64 {
    let d = h * hd;
    let mut m = 0.0f64;
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..t {
                for j in 0..t {
                    let s: f64 = (0..hd)
                        .map(|e| {
                            qkv[(bi * t + i) * 3 * d + hi * hd + e]
                                * qkv[(bi * t + j) * 3 * d + d + hi * hd + e]
                        })
                        .sum();
                    m = m.max((s / (hd as f64).sqrt()).abs());
                }
            }
        }
    }
    m
}

/// Rows of variance ≈ eps and constant rows (reference::hostile_layernorm_rows): eps = 1e-5
/// instead of 1e-6 halves rstd on them.
#[test]
fn layernorm_rows_of_tiny_and_zero_variance() {
    let rt = device();
    let mut rng = rng("layernorm_hostile");
    let (r, d, offset) = (6, 256, 0.25);
    let x = reference::hostile_layernorm_rows(r, d, offset, 71);
    let w: Vec<f32> = uniform(&mut rng, d, 0.5).iter().map(|v| v + 1.0).collect();
    let b = uniform(&mut rng, d, 0.5);
    let dout = uniform(&mut rng, r * d, 1.0);
    let (w64, b64) = (widen(&w), widen(&b));
    let (out, mean, rstd) = reference::layernorm(&x, &w64, &b64, d);
    let [dx, dw, db] = reference::layernorm_grads(&widen(&dout), &x, &w64, d);
    // The block-wide mean's rounding (≤ (log2(D) + 2)·u·offset for one element per thread
    // and a tree) shifts x̂ by that times rstd (≤ 1000); 4x margin.
    let tol = 4.0 * ((d as f64).log2() + 2.0) * U32 * offset * 1000.0;
    let case = format!(
        "R={r} D={d} offset={offset} rstd={:.0}..{:.0}",
        rstd[0], rstd[1]
    );
    let (g_out, g_mean, g_rstd) = (nans(&rt, r * d), nans(&rt, r), nans(&rt, r));
    let (gx, gw) = (up(&rt, &to_f32(&x)), up(&rt, &w));
    kernels::layernorm_forward(
        &*rt,
        g_out.view(),
        g_mean.view(),
        g_rstd.view(),
        gx.view(),
        gw.view(),
        up(&rt, &b).view(),
        d,
    )
    .unwrap();
    let got_out = get(&rt, g_out.view());
    check(&case, "layernorm.out", tol, &got_out, &out);
    check(
        &case,
        "layernorm.mean",
        1e-6,
        &get(&rt, g_mean.view()),
        &mean,
    );
    check(
        &case,
        "layernorm.rstd",
        1e-5,
        &get(&rt, g_rstd.view()),
        &rstd,
    );
    for row in (1..r).step_by(2) {
        assert_eq!(
            &got_out[row * d..(row + 1) * d],
            &b[..],
            "constant row {row} is not the bias"
        );
    }
    let (g_dx, g_dw, g_db) = (
        up(&rt, &vec![0.0; r * d]),
        up(&rt, &vec![0.0; d]),
        up(&rt, &vec![0.0; d]),
    );
    let scratch = nans(&rt, kernels::layernorm_backward_scratch_len(r, d));
    kernels::layernorm_backward(
        &*rt,
        g_dx.view(),
        g_dw.view(),
        g_db.view(),
        scratch.view(),
        up(&rt, &dout).view(),
        gx.view(),
        g_mean.view(),
        g_rstd.view(),
        gw.view(),
        d,
    )
    .unwrap();
    check(&case, "layernorm.dx", tol, &get(&rt, g_dx.view()), &dx);
    check(&case, "layernorm.dweight", tol, &get(&rt, g_dw.view()), &dw);
    check(&case, "layernorm.dbias", 1e-5, &get(&rt, g_db.view()), &db);
}

/// Exact ties (the first arg-max counts), all-equal rows and logits of ±1e4
/// (reference::hostile_logits), at a batch spread over every warp.
#[test]
fn cross_entropy_with_ties_equal_rows_and_huge_logits() {
    let rt = device();
    let (b, k) = (40, 10);
    let (logits, labels) = reference::hostile_logits(b, k, 81);
    for eps in [0.0, 0.1] {
        let case = format!("hostile rows B={b} K={k} eps={eps}");
        let (loss, correct, dl) = reference::cross_entropy(&logits, &labels, k, eps);
        let (stats, g_dl) = (nans(&rt, 4), nans(&rt, b * k));
        let g_labels = DeviceBuffer::from_slice(&rt, &labels).unwrap();
        kernels::cross_entropy(
            &*rt,
            stats.view(),
            g_dl.view(),
            up(&rt, &to_f32(&logits)).view(),
            &g_labels,
            b,
            k,
            eps as f32,
        )
        .unwrap();
        let s = get(&rt, stats.view());
        assert_eq!(s[1] as usize, correct, "{case}: correct count");
        // Row losses up to ~2e4 summed over 40 rows in fp32: ≤ 40·u relative.
        check(&case, "cross_entropy.loss", 1e-5, &s[..1], &[loss]);
        check(
            &case,
            "cross_entropy.dlogits",
            1e-5,
            &get(&rt, g_dl.view()),
            &dl,
        );
    }
}

/// GELU at the ends of erf's and exp's ranges, element by element: erfc keeps the lower tail's
/// relative precision (1 + erf would return 0 below x ≈ −5.5 in fp32).
#[test]
fn gelu_at_the_ends_of_its_range() {
    let rt = device();
    let mut x: Vec<f32> = Vec::new();
    for i in 0..=280 {
        let v = -12.0 + i as f32 * 0.025; // −12 .. −5
        x.extend([v, -v]);
    }
    x.extend([40.0, 88.0, 1e4, -1e4, 0.0, -0.0, 1e-30, -1e-30]);
    let n = x.len();
    let (gx, g_out, g_dx) = (up(&rt, &x), nans(&rt, n), nans(&rt, n));
    kernels::gelu_forward(&*rt, g_out.view(), gx.view()).unwrap();
    kernels::gelu_backward(&*rt, g_dx.view(), up(&rt, &vec![1.0; n]).view(), gx.view()).unwrap();
    let (out, dx) = (get(&rt, g_out.view()), get(&rt, g_dx.view()));
    for i in 0..n {
        let v = x[i] as f64;
        // erfc(z) and exp(−z²) have condition number ≈ 2z² = x²: the rounding of x/√2 and
        // x²/2 (u each) costs x²·u relative, plus a few ulps of erfcf/expf themselves.
        let tol = (2.0 * v * v + 32.0) * U32;
        for (name, got, want) in [
            ("gelu", out[i], reference::gelu(v)),
            ("gelu'", dx[i], reference::gelu_grad(v)),
        ] {
            let err = (got as f64 - want).abs();
            assert!(
                err <= tol * want.abs() + 1e-37,
                "{name}({v}) = {got} vs {want}: relative error {:e} > {tol:e}",
                err / want.abs()
            );
        }
    }
}
