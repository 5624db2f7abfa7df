//! Every kernel against its CPU op (run in f64 on the same f32 inputs) on fresh random inputs,
//! at shapes that are not multiples of any block size, with outputs poisoned (NaN) before the
//! launch. Device: the emulator, or a GPU with VITK_TEST_DEVICE=cuda.

mod gpu_common;

use gpu_common::{check, device, rng, tol, uniform, widen};
use vitk::cpu;
use vitk::gpu::{kernels, DeviceBuffer};

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
];

const NAN: u8 = 0xFF;

#[test]
fn patch_embed_im2col_matches_cpu() {
    let rt = device();
    let mut rng = rng("patch_embed");
    // (batch, channels, side, patch)
    for (b, c, s, p) in [(1, 1, 4, 2), (3, 3, 20, 4), (2, 5, 33, 11), (1, 3, 35, 7)] {
        let case = format!("B={b} C={c} S={s} P={p}");
        let images = uniform(&mut rng, b * c * s * s, 1.0);
        let n = (s / p) * (s / p);
        let mut want = vec![0.0f64; b * n * c * p * p];
        cpu::patch_embed::im2col(&mut want, &widen(&images), b, c, s, p);

        let d_images = DeviceBuffer::from_slice(&rt, &images).unwrap();
        let mut d_patches = DeviceBuffer::<f32>::new(&rt, want.len()).unwrap();
        d_patches.fill_bytes(NAN).unwrap();
        kernels::patch_embed_im2col(&*rt, &mut d_patches, &d_images, b, c, s, p).unwrap();
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
    // (rows, dim): rows > 128 make backward blocks own several rows
    for (rows, dim) in [(1, 7), (7, 37), (19, 768), (130, 100), (300, 65)] {
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
            &mut d_out,
            &mut d_mean,
            &mut d_rstd,
            &d_x,
            &d_w,
            &d_b,
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
        let mut d_dx = DeviceBuffer::from_slice(&rt, &dx0).unwrap();
        let mut d_dw = DeviceBuffer::from_slice(&rt, &dw0).unwrap();
        let mut d_db = DeviceBuffer::from_slice(&rt, &db0).unwrap();
        let mut scratch =
            DeviceBuffer::<f32>::new(&rt, kernels::layernorm_backward_scratch_len(rows, dim))
                .unwrap();
        scratch.fill_bytes(NAN).unwrap();
        kernels::layernorm_backward(
            &*rt,
            &mut d_dx,
            &mut d_dw,
            &mut d_db,
            &mut scratch,
            &d_dout,
            &d_x,
            &d_mean,
            &d_rstd,
            &d_w,
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
    for n in [1, 31, 1000, 4099, 70_001] {
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
        kernels::gelu_forward(&*rt, &mut d_out, &d_x).unwrap();
        kernels::gelu_backward(&*rt, &mut d_dx, &d_dout, &d_x).unwrap();
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
    kernels::test_warp_sum(&*rt, &mut d_out, &d_in).unwrap();
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
        kernels::test_block_sum(&*rt, &mut d_out, &d_in, n, threads).unwrap();
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
