//! The tensor-core wrappers of kernels/common.cuh (ldmatrix, mma.sync, cp.async), each through
//! a one-warp test kernel (kernels/tile_tests.cu) against plain loops that follow the PTX ISA's
//! documented fragment layouts. On the emulator (default) these check the emulated twins; with
//! VITK_TEST_DEVICE=cuda they check the inline PTX, so both are held to the same layouts.

mod gpu_common;

use gpu_common::{device, rng, uniform};
use half::bf16;
use rand::Rng;
use vitk::gpu::{DeviceBuffer, Launch, LaunchConfig};

fn one_block(threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid: (1, 1, 1),
        block: (threads, 1, 1),
        shared_bytes: 0,
    }
}

fn bits(v: bf16) -> u32 {
    u32::from(v.to_bits())
}

#[test]
fn ldmatrix_delivers_the_documented_fragments() {
    let rt = device();
    let mut rng = rng("ldmatrix");
    // 32 rows of 8: matrix i is rows 8i..8i+7; distinct values so any misplacement shows.
    let vals: Vec<bf16> = (0..256)
        .map(|_| bf16::from_f32(rng.random_range(-100.0..100.0f32).round()))
        .collect();
    let input = DeviceBuffer::from_slice(&rt, &vals).unwrap();
    for count in [2usize, 4] {
        for trans in [false, true] {
            let mut out = DeviceBuffer::<u32>::new(&rt, 128).unwrap();
            out.fill_bytes(0xAB).unwrap();
            Launch::new("vitk_test_ldmatrix", one_block(32))
                .ptr(out.view())
                .ptr(input.view())
                .flag(trans)
                .int("count", count)
                .run(&*rt)
                .unwrap();
            rt.synchronize().unwrap();
            let got = out.to_vec().unwrap();
            for lane in 0..32 {
                for i in 0..count {
                    // element (r, c) of matrix i
                    let at = |r: usize, c: usize| vals[(8 * i + r) * 8 + c];
                    let (lo, hi) = if trans {
                        (
                            at(2 * (lane % 4), lane / 4),
                            at(2 * (lane % 4) + 1, lane / 4),
                        )
                    } else {
                        (
                            at(lane / 4, 2 * (lane % 4)),
                            at(lane / 4, 2 * (lane % 4) + 1),
                        )
                    };
                    let want = bits(lo) | (bits(hi) << 16);
                    assert_eq!(
                        got[lane * 4 + i],
                        want,
                        "x{count} trans={trans}: lane {lane} register {i}"
                    );
                }
            }
        }
    }
}

#[test]
fn mma_computes_c_plus_a_b_in_the_documented_layout() {
    let rt = device();
    let mut rng = rng("mma");
    for case in 0..4 {
        let a: Vec<bf16> = uniform(&mut rng, 16 * 16, 2.0)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        let b: Vec<bf16> = uniform(&mut rng, 16 * 8, 2.0)
            .into_iter()
            .map(bf16::from_f32)
            .collect();
        let c = uniform(&mut rng, 16 * 8, 4.0);
        let mut d = DeviceBuffer::<f32>::new(&rt, 128).unwrap();
        d.fill_bytes(0xFF).unwrap();
        let (ga, gb, gc) = (
            DeviceBuffer::from_slice(&rt, &a).unwrap(),
            DeviceBuffer::from_slice(&rt, &b).unwrap(),
            DeviceBuffer::from_slice(&rt, &c).unwrap(),
        );
        Launch::new("vitk_test_mma", one_block(32))
            .ptr(d.view())
            .ptr(ga.view())
            .ptr(gb.view())
            .ptr(gc.view())
            .run(&*rt)
            .unwrap();
        rt.synchronize().unwrap();
        let got = d.to_vec().unwrap();
        for m in 0..16 {
            for n in 0..8 {
                let (mut want, mut scale) = (c[m * 8 + n] as f64, (c[m * 8 + n] as f64).abs());
                for k in 0..16 {
                    let p = a[m * 16 + k].to_f64() * b[k * 8 + n].to_f64();
                    want += p;
                    scale += p.abs();
                }
                // bf16 products are exact in fp32; 17 fp32 additions at most round each
                // by u = 2^-24 of the running magnitude.
                let tol = 17.0 * scale * f32::EPSILON as f64 / 2.0;
                let g = got[m * 8 + n] as f64;
                assert!(
                    (g - want).abs() <= tol,
                    "case {case}: D[{m}][{n}] = {g}, want {want} (tol {tol:e})"
                );
            }
        }
    }
}

#[test]
fn cp_async_pipeline_copies_and_zero_fills() {
    let rt = device();
    let mut rng = rng("cp_async");
    // lengths: one partial chunk, exact rounds, several rounds with a partial tail
    for n in [3usize, 256, 1001] {
        let input = uniform(&mut rng, n, 10.0);
        let rounded = n.div_ceil(4) * 4;
        let gin = DeviceBuffer::from_slice(&rt, &input).unwrap();
        let mut out = DeviceBuffer::<f32>::new(&rt, rounded).unwrap();
        out.fill_bytes(0xFF).unwrap();
        Launch::new("vitk_test_cp_async", one_block(64))
            .ptr(out.view())
            .ptr(gin.view())
            .int("n", n)
            .run(&*rt)
            .unwrap();
        rt.synchronize().unwrap();
        let got = out.to_vec().unwrap();
        assert_eq!(&got[..n], &input[..], "n={n}: copied values");
        assert!(
            got[n..].iter().all(|&v| v == 0.0),
            "n={n}: zero fill {:?}",
            &got[n..]
        );
    }
}
