//! Helpers for the GPU tests: which device runs them (`VITK_TEST_DEVICE`: emulator by default,
//! `cuda` for a real GPU, never silently skipped), fresh seeds that are printed so a failure
//! can be replayed (`VITK_TEST_SEED`), and per-tensor norm-wise comparisons.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vitk::gpu::{DeviceKind, Runtime};

/// The runtime selected by VITK_TEST_DEVICE. A requested device that cannot be opened fails
/// the test with the reason: it is never replaced by another one.
pub fn device() -> Arc<dyn Runtime> {
    let want = std::env::var("VITK_TEST_DEVICE").unwrap_or_default();
    let kind = DeviceKind::parse(&want).unwrap_or_else(|e| panic!("VITK_TEST_DEVICE: {e}"));
    let rt = vitk::gpu::open(kind)
        .unwrap_or_else(|e| panic!("VITK_TEST_DEVICE={want:?}: cannot open the device: {e}"));
    println!("device: {}", rt.describe());
    rt
}

/// A fresh random generator for one test, seeded from the clock unless VITK_TEST_SEED is set.
pub fn rng(test: &str) -> StdRng {
    let seed = match std::env::var("VITK_TEST_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("VITK_TEST_SEED={s:?} is not a u64")),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    println!("{test}: seed {seed} (replay with VITK_TEST_SEED={seed})");
    StdRng::seed_from_u64(seed)
}

/// `n` values uniform in [-scale, scale).
pub fn uniform(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// ‖gpu − cpu‖ / ‖cpu‖ (absolute when cpu is zero); NaN or infinity anywhere gives NaN.
pub fn norm_rel_err(gpu: &[f32], cpu: &[f64]) -> f64 {
    assert_eq!(gpu.len(), cpu.len(), "lengths differ");
    if gpu.iter().any(|v| !v.is_finite()) || cpu.iter().any(|v| !v.is_finite()) {
        return f64::NAN;
    }
    let diff = gpu
        .iter()
        .zip(cpu)
        .map(|(&g, &c)| (g as f64 - c).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm = cpu.iter().map(|c| c * c).sum::<f64>().sqrt();
    if norm == 0.0 {
        diff
    } else {
        diff / norm
    }
}

/// Compares one named tensor against its tolerance; NaN never passes (`!(err <= tol)`).
pub fn check(case: &str, name: &str, tol: f64, gpu: &[f32], cpu: &[f64]) {
    let err = norm_rel_err(gpu, cpu);
    println!("  {case} {name}: rel err {err:.3e} (tol {tol:.0e})");
    assert!(
        err <= tol,
        "{case}: {name}: norm-wise relative error {err:e} > {tol:e}"
    );
}

/// Looks up the tolerance stored beside a tensor name.
pub fn tol(table: &[(&str, f64)], name: &str) -> f64 {
    table
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, t)| t)
        .unwrap_or_else(|| panic!("no tolerance for {name}"))
}

/// Unit roundoff of bf16 (8 significant bits) and of fp32.
pub const U16: f64 = 1.0 / 256.0;
pub const U32: f64 = f32::EPSILON as f64 / 2.0;

/// Norm-wise tolerance of a tensor reached through `n` independent bf16 roundings: each moves
/// a value by u16/√3 in the mean square and they add in quadrature; 3x that.
pub fn bf16_tol(n: usize) -> f64 {
    3.0 * (n as f64).sqrt() * U16 / 3f64.sqrt()
}

/// The values a tensor of precision `p` holds for `v` (bf16: rounded to nearest even).
pub fn held(p: vitk::engine::Precision, v: &[f32]) -> Vec<f32> {
    match p {
        vitk::engine::Precision::Fp32 => v.to_vec(),
        vitk::engine::Precision::Bf16 => v
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect(),
    }
}

/// Device buffers of one test, kept alive while their views are in use: fp32 or bf16 copies
/// of host data and NaN-filled outputs.
pub struct Dev {
    pub rt: Arc<dyn Runtime>,
    f32s: Vec<vitk::gpu::DeviceBuffer<f32>>,
    b16s: Vec<vitk::gpu::DeviceBuffer<half::bf16>>,
}

impl Dev {
    pub fn new(rt: &Arc<dyn Runtime>) -> Self {
        Dev {
            rt: rt.clone(),
            f32s: vec![],
            b16s: vec![],
        }
    }

    pub fn f32(&mut self, data: &[f32]) -> vitk::gpu::DView {
        let b = vitk::gpu::DeviceBuffer::from_slice(&self.rt, data).expect("upload");
        let v = b.view();
        self.f32s.push(b);
        v
    }

    /// `n` NaNs (an output poisoned before its kernel runs).
    pub fn nan(&mut self, n: usize) -> vitk::gpu::DView {
        self.f32(&vec![f32::NAN; n])
    }

    pub fn bf16(&mut self, data: &[f32]) -> vitk::gpu::BView {
        let h: Vec<half::bf16> = data.iter().map(|&x| half::bf16::from_f32(x)).collect();
        let b = vitk::gpu::DeviceBuffer::from_slice(&self.rt, &h).expect("upload");
        let v = b.view();
        self.b16s.push(b);
        v
    }

    /// `data` in precision `p` (bf16: rounded), starting `skew` elements into its buffer
    /// (skew 1 makes a bf16 operand misaligned for 16-byte loads).
    pub fn operand(
        &mut self,
        p: vitk::engine::Precision,
        data: &[f32],
        skew: usize,
    ) -> vitk::gpu::Operand {
        let mut padded = vec![0.0; skew];
        padded.extend_from_slice(data);
        match p {
            vitk::engine::Precision::Fp32 => {
                vitk::gpu::Operand::F32(self.f32(&padded).slice(skew, data.len()))
            }
            vitk::engine::Precision::Bf16 => {
                vitk::gpu::Operand::Bf16(self.bf16(&padded).slice(skew, data.len()))
            }
        }
    }

    /// A NaN-filled output of `n` elements in precision `p`.
    pub fn out(&mut self, p: vitk::engine::Precision, n: usize) -> vitk::gpu::Operand {
        self.operand(p, &vec![f32::NAN; n], 0)
    }

    /// An operand's values (after the device finished), widened.
    pub fn get(&self, v: vitk::gpu::Operand) -> Vec<f32> {
        self.rt.synchronize().expect("synchronize");
        match v {
            vitk::gpu::Operand::F32(v) => v.to_vec(&*self.rt).expect("download"),
            vitk::gpu::Operand::Bf16(v) => v
                .to_vec(&*self.rt)
                .expect("download")
                .iter()
                .map(|x| x.to_f32())
                .collect(),
        }
    }

    pub fn get32(&self, v: vitk::gpu::DView) -> Vec<f32> {
        self.get(vitk::gpu::Operand::F32(v))
    }
}

/// Runs `vitk COMMAND` (train or pretrain) for 12 steps of a one-block model on the synthetic
/// set on `device` in `precision`, with `extra` flags, into a run directory under `dir`, and
/// returns the per-step losses of its metrics log. VITK_BIN: the binary of a GPU bundle
/// (scripts/gpu-bundle.sh), elsewhere than where cargo built it.
pub fn short_run_losses(
    command: &str,
    device: &str,
    precision: &str,
    extra: &[&str],
    dir: &std::path::Path,
) -> Vec<f64> {
    let run = dir.join(format!(
        "{command}-{device}-{precision}-{}",
        extra.join("-")
    ));
    let bin = std::env::var("VITK_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vitk").into());
    let model = ["--model", "micro", "--embed-dim", "16", "--depth", "1"];
    let widths = ["--num-heads", "2", "--mlp-dim", "24", "--patch-size", "8"];
    let steps = ["--batch-size", "16", "--steps", "12", "--lr", "3e-3"];
    let schedule = ["--warmup-epochs", "0", "--schedule", "constant"];
    let out = std::process::Command::new(bin)
        .args([command, "--device", device, "--precision", precision])
        .args(extra)
        .args(model)
        .args(widths)
        .args(steps)
        .args(schedule)
        .args([
            "--val-split",
            "16",
            "--no-augment",
            "--threads",
            "2",
            "--out",
        ])
        .arg(&run)
        .output()
        .expect("run vitk");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "vitk {command} --device {device} failed:\n{text}"
    );
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics.jsonl");
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "step")
        .map(|v| v["loss"].as_f64().expect("loss"))
        .collect()
}
