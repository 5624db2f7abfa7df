//! The emulator reports what a GPU would fail on, through the Rust runtime. These test the
//! emulator itself, so they always run on it (the fault kernels exist only there).

use std::sync::Arc;

use vitk::gpu::emu::EmuRuntime;
use vitk::gpu::{kernels, DeviceBuffer, GpuError, KernelArg, Launch, LaunchConfig, Runtime};

fn emu() -> Arc<dyn Runtime> {
    Arc::new(EmuRuntime::new())
}

fn cfg(grid: u32, block: u32, shared_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid: (grid, 1, 1),
        block: (block, 1, 1),
        shared_bytes,
    }
}

/// Launches `kernel` with raw parameters (as cuLaunchKernel would get them).
fn launch(
    rt: &Arc<dyn Runtime>,
    kernel: &'static str,
    cfg: LaunchConfig,
    args: &[KernelArg],
) -> Result<(), GpuError> {
    let mut l = Launch::new(kernel, cfg);
    for a in args {
        l = match *a {
            KernelArg::Ptr(p) => l.raw_ptr(p),
            KernelArg::I32(v) => l.bits(v),
            other => panic!("unsupported test argument {other:?}"),
        };
    }
    l.run(&**rt)
}

fn kernel_error(r: Result<(), GpuError>) -> String {
    match r {
        Err(GpuError::Kernel { message, .. }) => message,
        other => panic!("expected a kernel error, got {other:?}"),
    }
}

#[test]
fn barrier_not_reached_by_all_threads_is_reported() {
    let rt = emu();
    let out = DeviceBuffer::<i32>::new(&rt, 64).unwrap();
    let msg = kernel_error(launch(
        &rt,
        "vitk_emutest_barrier_exit",
        cfg(1, 64, 0),
        &[out.arg()],
    ));
    assert!(msg.contains("barrier not reached"), "{msg}");
}

#[test]
fn out_of_bounds_write_is_reported_naming_the_kernel() {
    let rt = emu();
    let out = DeviceBuffer::<f32>::new(&rt, 100).unwrap();
    let msg = kernel_error(launch(
        &rt,
        "vitk_emutest_write_past_end",
        cfg(1, 128, 0),
        &[out.arg(), KernelArg::I32(100)],
    ));
    assert!(
        msg.contains("vitk_emutest_write_past_end")
            && msg.contains(
                "wrote at byte offset 400 of the 400-byte buffer of pointer parameter #0"
            ),
        "{msg}"
    );
    // Inside the alignment slack (101 floats = 404 bytes, slack 12): caught by the slack check.
    let out = DeviceBuffer::<f32>::new(&rt, 101).unwrap();
    let msg = kernel_error(launch(
        &rt,
        "vitk_emutest_write_past_end",
        cfg(1, 128, 0),
        &[out.arg(), KernelArg::I32(101)],
    ));
    assert!(msg.contains("slack bytes past its end"), "{msg}");
}

#[test]
fn out_of_bounds_read_faults_naming_the_kernel_and_the_emulator_goes_on() {
    let rt = emu();
    let input = DeviceBuffer::from_slice(&rt, &[1.0f32; 100]).unwrap();
    let out = DeviceBuffer::<f32>::new(&rt, 100).unwrap();
    let msg = kernel_error(launch(
        &rt,
        "vitk_emutest_read_past_end",
        cfg(2, 64, 0),
        &[out.arg(), input.arg(), KernelArg::I32(100)],
    ));
    assert!(
        msg.contains("vitk_emutest_read_past_end")
            && msg.contains("thread (35,0,0) of block (1,0,0)")
            && msg
                .contains("read at byte offset 400 of the 400-byte buffer of pointer parameter #1"),
        "{msg}"
    );
    // A read inside the alignment slack (1 float past a 101-float buffer) returns NaN.
    let input = DeviceBuffer::from_slice(&rt, &[1.0f32; 101]).unwrap();
    let out = DeviceBuffer::<f32>::new(&rt, 101).unwrap();
    launch(
        &rt,
        "vitk_emutest_read_past_end",
        cfg(1, 128, 0),
        &[out.arg(), input.arg(), KernelArg::I32(101)],
    )
    .unwrap();
    let got = out.to_vec().unwrap();
    assert!(
        got[..100].iter().all(|&v| v == 1.0) && got[100].is_nan(),
        "{got:?}"
    );
    // The fault left the emulator usable: an in-bounds launch on this thread works.
    let input = DeviceBuffer::from_slice(&rt, &[2.0f32; 33]).unwrap();
    let out = DeviceBuffer::<f32>::new(&rt, 32).unwrap();
    launch(
        &rt,
        "vitk_emutest_read_past_end",
        cfg(1, 32, 0),
        &[out.arg(), input.arg(), KernelArg::I32(32)],
    )
    .unwrap();
    assert_eq!(out.to_vec().unwrap(), vec![2.0; 32]);
}

#[test]
fn launch_limits_are_reported() {
    let rt = emu();
    let out = DeviceBuffer::<f32>::new(&rt, 2048).unwrap();
    let input = DeviceBuffer::<f32>::new(&rt, 2048).unwrap();
    let msg = kernel_error(launch(
        &rt,
        "vitk_test_warp_sum",
        cfg(1, 1025, 0),
        &[out.arg(), input.arg()],
    ));
    assert!(msg.contains("1025"), "{msg}");
    let msg = kernel_error(launch(
        &rt,
        "vitk_emutest_dynamic_shared",
        cfg(1, 64, 228 * 1024),
        &[out.arg(), input.arg()],
    ));
    assert!(msg.contains("shared"), "{msg}");
}

#[test]
fn shuffle_with_an_exited_lane_is_reported() {
    let rt = emu();
    let out = DeviceBuffer::<f32>::new(&rt, 32).unwrap();
    let msg = kernel_error(launch(
        &rt,
        "vitk_emutest_shfl_exited",
        cfg(1, 32, 0),
        &[out.arg()],
    ));
    assert!(msg.contains("exited"), "{msg}");
}

#[test]
fn dynamic_shared_memory_works() {
    let rt = emu();
    let (blocks, threads) = (3usize, 96usize);
    let data: Vec<f32> = (0..blocks * threads).map(|i| i as f32).collect();
    let input = DeviceBuffer::from_slice(&rt, &data).unwrap();
    let out = DeviceBuffer::<f32>::new(&rt, data.len()).unwrap();
    launch(
        &rt,
        "vitk_emutest_dynamic_shared",
        cfg(blocks as u32, threads as u32, (threads * 4) as u32),
        &[out.arg(), input.arg()],
    )
    .unwrap();
    let got = out.to_vec().unwrap();
    for b in 0..blocks {
        for t in 0..threads {
            assert_eq!(got[b * threads + t], data[b * threads + threads - 1 - t]);
        }
    }
}

#[test]
fn wrong_argument_count_and_unknown_kernels_are_errors() {
    let rt = emu();
    let out = DeviceBuffer::<f32>::new(&rt, 32).unwrap();
    let msg = kernel_error(launch(
        &rt,
        "vitk_test_warp_sum",
        cfg(1, 32, 0),
        &[out.arg()],
    ));
    assert!(msg.contains("parameters"), "{msg}");
    kernel_error(launch(&rt, "no_such_kernel", cfg(1, 32, 0), &[]));
}

#[test]
fn shape_checks_reject_bad_buffers_before_launch() {
    let rt = emu();
    let x = DeviceBuffer::<f32>::new(&rt, 10).unwrap();
    let out = DeviceBuffer::<f32>::new(&rt, 9).unwrap();
    let (mean, rstd, w) = (
        DeviceBuffer::<f32>::new(&rt, 2).unwrap(),
        DeviceBuffer::<f32>::new(&rt, 2).unwrap(),
        DeviceBuffer::<f32>::new(&rt, 5).unwrap(),
    );
    assert!(matches!(
        kernels::layernorm_forward(
            &*rt,
            out.view().into(),
            mean.view(),
            rstd.view(),
            x.view(),
            w.view(),
            w.view(),
            5
        ),
        Err(GpuError::Shape { .. })
    ));
}

#[test]
fn cp_async_misuse_is_reported_or_visible() {
    let rt = emu();
    let input = DeviceBuffer::from_slice(&rt, &[1.0f32, 2.0, 3.0, 4.0]).unwrap();
    let out = DeviceBuffer::<f32>::new(&rt, 32).unwrap();
    let msg = kernel_error(launch(
        &rt,
        "vitk_emutest_cp_async_uncommitted",
        cfg(1, 32, 0),
        &[out.arg(), input.arg()],
    ));
    assert!(msg.contains("never committed"), "{msg}");
    // Never waited for: the copy has not landed when the shared memory is read.
    launch(
        &rt,
        "vitk_emutest_cp_async_no_wait",
        cfg(1, 32, 0),
        &[out.arg(), input.arg()],
    )
    .unwrap();
    let got = out.to_vec().unwrap();
    assert!(got.iter().all(|v| v.is_nan()), "{got:?}");
}

#[test]
fn tensor_core_wrapper_misuse_is_reported() {
    let rt = emu();
    let out = DeviceBuffer::<f32>::new(&rt, 32).unwrap();
    let msg = kernel_error(launch(
        &rt,
        "vitk_emutest_ldmatrix_misaligned",
        cfg(1, 32, 0),
        &[out.arg()],
    ));
    assert!(msg.contains("16-byte aligned"), "{msg}");
    let msg = kernel_error(launch(
        &rt,
        "vitk_emutest_mma_partial_warp",
        cfg(1, 16, 0),
        &[out.arg()],
    ));
    assert!(msg.contains("full warp"), "{msg}");
}

/// Every kernel name a launcher in src/gpu/kernels uses is registered with the emulator (and
/// so exists in kernels/*.cu under that name).
#[test]
fn every_launched_kernel_is_registered() {
    let names = EmuRuntime::kernel_names();
    // The launchers' sources, embedded so the test needs no source tree where it runs.
    let sources = [
        include_str!("../src/gpu/kernels/attention.rs"),
        include_str!("../src/gpu/kernels/drop_path.rs"),
        include_str!("../src/gpu/kernels/ema.rs"),
        include_str!("../src/gpu/kernels/layernorm.rs"),
        include_str!("../src/gpu/kernels/loss.rs"),
        include_str!("../src/gpu/kernels/matmul.rs"),
        include_str!("../src/gpu/kernels/mim.rs"),
        include_str!("../src/gpu/kernels/mim_colour.rs"),
        include_str!("../src/gpu/kernels/optim.rs"),
        include_str!("../src/gpu/kernels/patch.rs"),
        include_str!("../src/gpu/kernels/reduce.rs"),
        include_str!("../src/gpu/kernels/tokens.rs"),
    ];
    let files =
        std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gpu/kernels"))
            .map(|d| d.count())
            .unwrap_or(sources.len() + 1);
    assert_eq!(
        files,
        sources.len() + 1,
        "a launcher file is missing from this list (+ mod.rs)"
    );
    let mut launched = Vec::new();
    for text in sources {
        for piece in text.split('"').skip(1).step_by(2) {
            if piece.starts_with("vitk_")
                && piece.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                launched.push(piece.to_string());
            }
        }
    }
    assert!(launched.len() > 30, "found only {launched:?}");
    for k in &launched {
        assert!(
            names.iter().any(|n| n == k),
            "{k} is launched but not registered"
        );
    }
}
