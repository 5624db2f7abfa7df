//! Property tests of the flags: random values at and beyond every bound.
//!
//! - In process: `TrainConfig::validate` accepts a config exactly when every value lies in
//!   the range this file states independently, and otherwise names a flag that is out of
//!   range; the memory estimates take any valid model at any batch without overflow.
//! - The binary: one random value of one numeric flag of `train --check` (`eval`, `profile`
//!   for theirs) per case; it never panics or aborts (exit code 0, or 1 or 2 with a message
//!   naming the flag, or a memory refusal for a value in range).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use vitk::cpu::CpuEngine;
use vitk::engine::Precision;
use vitk::gpu::profile::DryRuntime;
use vitk::gpu::{GpuPretrainer, GpuTrainer};
use vitk::model::{ImageSize, ModelConfig, Pool};
use vitk::optim::AdamWConfig;
use vitk::pretrain::Objective;
use vitk::train::memory::{host_estimate, DataSize, EngineKind};
use vitk::train::{DataSource, ScheduleKind, TrainConfig};

/// Values around the bounds of real-valued flags, and random ones.
fn real() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => prop::sample::select(vec![
            0.0, -0.0, 1.0, -1.0, 0.5, 0.999, 1.0000001, 1e-3, 9.99e-4, 1e-300, 1e300,
            f64::INFINITY, f64::NEG_INFINITY, f64::NAN, f64::MAX, f64::MIN_POSITIVE,
        ]),
        2 => -2.0f64..2.0,
        1 => any::<f64>(),
    ]
}

/// Values around the bounds of whole-number flags, and random ones.
fn whole(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => prop::sample::select(vec![0, 1, 2, max - 1, max, max + 1, usize::MAX]),
        2 => 0..=max + 1,
    ]
}

/// A config with each value drawn around its bounds.
fn any_config() -> impl Strategy<Value = TrainConfig> {
    let model = (
        whole(4096),
        whole(64),
        whole(16384),
        whole(1024),
        whole(64),
        whole(65536),
        // the width: None for a square image
        prop::option::of(whole(4096)),
    );
    let opt = (real(), real(), real(), real(), real(), real(), real());
    let rest = (
        whole(1_000_000),
        whole(512),
        prop::option::of(real()),
        prop::array::uniform3(real()),
        prop::array::uniform3(real()),
        prop::option::of(real()),
        any::<bool>(),
    );
    (model, opt, rest).prop_map(|(m, o, r)| TrainConfig {
        model: ModelConfig {
            image_size: ImageSize {
                height: m.0,
                width: m.6.unwrap_or(m.0),
            },
            patch_size: m.1,
            in_chans: 3,
            num_classes: 10,
            embed_dim: m.2,
            depth: m.3,
            num_heads: m.4,
            mlp_dim: m.5,
            pool: Pool::Cls,
        },
        data: DataSource::Synthetic {
            train: 100,
            val: 10,
            seed: 0,
        },
        epochs: r.0,
        batch_size: r.1,
        lr: o.0,
        min_lr: o.1,
        warmup_epochs: o.2,
        schedule: ScheduleKind::Cosine,
        adamw: AdamWConfig {
            beta1: o.3,
            beta2: o.4,
            eps: 1e-8,
            weight_decay: o.5,
        },
        label_smoothing: o.6,
        clip_grad: r.2,
        augment: true,
        shuffle: true,
        seed: 0,
        mean: r.3.map(|v| v as f32),
        std: r.4.map(|v| v as f32),
        init_from: None,
        recipe: None,
        auto_augment: Default::default(),
        reprob: 0.0,
        aug_repeats: 1,
        mixup: 0.0,
        cutmix: 0.0,
        mixup_switch_prob: 0.5,
        mixup_off_epoch: None,
        ema_decay: None,
        drop_path: 0.0,
        pretrain: None,
        layer_decay: r.5,
        freeze_backbone: r.6,
    })
}

/// The flags whose value lies outside its range, by the ranges the README documents.
fn out_of_range(c: &TrainConfig) -> Vec<&'static str> {
    let m = &c.model;
    let within = |v: usize, max: usize| (1..=max).contains(&v);
    let mut bad = Vec::new();
    let mut flag = |f: &'static str, ok: bool| {
        if !ok {
            bad.push(f)
        }
    };
    let ImageSize { height, width } = m.image_size;
    flag("--image-size", within(height, 4096) && within(width, 4096));
    let p = m.patch_size.max(1);
    flag(
        "--patch-size",
        within(m.patch_size, height.min(width).max(1))
            && height.is_multiple_of(p)
            && width.is_multiple_of(p),
    );
    flag("--embed-dim", within(m.embed_dim, 16384));
    flag("--depth", within(m.depth, 1024));
    flag(
        "--num-heads",
        within(m.num_heads, m.embed_dim.max(1)) && m.embed_dim.is_multiple_of(m.num_heads.max(1)),
    );
    flag("--mlp-dim", within(m.mlp_dim, 65536));
    flag("--epochs", within(c.epochs, 1_000_000));
    flag("--batch-size", c.batch_size >= 1);
    flag("--lr", c.lr.is_finite() && c.lr > 0.0);
    flag("--min-lr", c.min_lr >= 0.0 && c.min_lr <= c.lr);
    flag(
        "--warmup-epochs",
        c.warmup_epochs >= 0.0 && c.warmup_epochs <= c.epochs as f64,
    );
    flag(
        "--weight-decay",
        c.adamw.weight_decay.is_finite() && c.adamw.weight_decay >= 0.0,
    );
    flag("--beta1", c.adamw.beta1 >= 0.0 && c.adamw.beta1 < 1.0);
    flag("--beta2", c.adamw.beta2 >= 0.0 && c.adamw.beta2 < 1.0);
    flag(
        "--label-smoothing",
        c.label_smoothing >= 0.0 && c.label_smoothing < 1.0,
    );
    flag(
        "--clip-grad",
        c.clip_grad.is_none_or(|g| g.is_finite() && g > 0.0),
    );
    flag("--mean", c.mean.iter().all(|&v| (0.0..=1.0).contains(&v)));
    flag("--std", c.std.iter().all(|&v| (1e-3..=1.0).contains(&v)));
    flag(
        "--layer-decay",
        c.layer_decay.is_none_or(|r| r > 0.0 && r <= 1.0),
    );
    bad
}

#[test]
fn validate_accepts_exactly_the_documented_ranges() {
    let mut runner = TestRunner::new(Config::with_cases(4000));
    runner
        .run(&any_config(), |c| {
            let bad = out_of_range(&c);
            match c.validate() {
                Ok(()) => prop_assert!(bad.is_empty(), "accepted {bad:?} in {c:?}"),
                Err(e) => {
                    prop_assert!(!bad.is_empty(), "refused a valid config: {e}\n{c:?}");
                    prop_assert!(
                        bad.iter().any(|f| e.contains(f)),
                        "'{e}' names none of {bad:?}"
                    );
                    prop_assert!(e.contains("expected") || e.contains("multiple of"), "{e}");
                }
            }
            Ok(())
        })
        .expect("property");
}

/// A valid model of any size within the limits.
fn valid_model() -> impl Strategy<Value = (ModelConfig, usize)> {
    (
        (0u32..=6, 0u32..=6), // image height and width 64 << k
        0u32..=12,            // patch size 1 << k (at most the shorter side)
        1usize..=128,         // head count
        1usize..=128,         // head dim
        1usize..=1024,
        1usize..=65536,
        prop_oneof![1usize..=64, 1usize..=1_000_000_000],
    )
        .prop_map(|(s, p, h, hd, depth, mlp, batch)| {
            let image_size = ImageSize {
                height: 64usize << s.0,
                width: 64usize << s.1,
            };
            let patch_size = (1usize << p).min(image_size.height.min(image_size.width));
            let heads = h.min(16384 / hd);
            (
                ModelConfig {
                    image_size,
                    patch_size,
                    in_chans: 3,
                    num_classes: 10,
                    embed_dim: heads * hd,
                    depth,
                    num_heads: heads,
                    mlp_dim: mlp,
                    pool: Pool::Mean,
                },
                batch,
            )
        })
}

#[test]
fn memory_estimates_take_any_valid_model_without_overflow() {
    let dry = DryRuntime::new();
    let mut runner = TestRunner::new(Config::with_cases(500));
    runner
        .run(&valid_model(), |(cfg, batch)| {
            prop_assert!(cfg.validate().is_ok(), "{cfg:?}");
            let data = Some(DataSize {
                images: 1e6,
                image_bytes: (3 * cfg.image_size.pixels()) as f64,
                copied_while_loading: true,
            });
            let cpu = host_estimate(&cfg, batch, data, EngineKind::Cpu).total();
            let bigger = host_estimate(&cfg, batch + 1, data, EngineKind::Cpu).total();
            prop_assert!(cpu.is_finite() && cpu > 0.0 && bigger >= cpu);
            prop_assert!(CpuEngine::<f32>::buffer_elems(&cfg, batch) > 0.0);
            for p in [Precision::Fp32, Precision::Bf16] {
                let dev = GpuTrainer::device_bytes(&dry, &cfg, batch, p);
                prop_assert!(dev.is_finite() && dev > 0.0, "{dev} for {cfg:?}");
                for objective in [Objective::simmim(), Objective::Colour] {
                    let dev = GpuPretrainer::device_bytes(&dry, &cfg, objective, batch, p);
                    prop_assert!(dev.is_finite() && dev > 0.0, "{dev} for {cfg:?}");
                }
            }
            Ok(())
        })
        .expect("property");
}

fn vitk(args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vitk"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run vitk")
}

/// A tiny CIFAR-layout set and a checkpoint trained on it, made once.
fn fixture() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static F: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let run = tmp.path().join("run");
        let p = |p: &Path| p.to_string_lossy().into_owned();
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let o = vitk(&args(&[
            "synth",
            "--out",
            &p(&data),
            "--train",
            "300",
            "--val",
            "60",
        ]));
        assert!(o.status.success());
        let o = vitk(
            &[
                args(&["train", "--data", &p(&data), "--out", &p(&run)]),
                args(&[
                    "--embed-dim",
                    "16",
                    "--depth",
                    "1",
                    "--num-heads",
                    "2",
                    "--mlp-dim",
                    "16",
                    "--batch-size",
                    "50",
                    "--steps",
                    "1",
                    "--threads",
                    "1",
                    "--device",
                    "cpu",
                ]),
            ]
            .concat(),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (tmp, data, run.join("model.safetensors"))
    })
}

/// How a flag's values are written on the command line.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Whole(u64),
    Real,
    Triple,
}

/// A value for a flag of `kind`: around its bounds, negative, huge, not a number.
fn value(kind: Kind) -> BoxedStrategy<String> {
    let real = real().prop_map(|v| format!("{v}"));
    match kind {
        Kind::Whole(max) => prop_oneof![
            4 => prop::sample::select(vec![0, 1, 2, max - 1, max, max + 1, u64::MAX])
                .prop_map(|v| v.to_string()),
            2 => (0..=max + 1).prop_map(|v| v.to_string()),
            1 => prop::sample::select(vec!["-1", "-0", "1e3", "2.5", "x", "", "18446744073709551616"])
                .prop_map(String::from),
        ]
        .boxed(),
        Kind::Real => prop_oneof![
            6 => real,
            1 => prop::sample::select(vec!["x", "", "1,2", "--"]).prop_map(String::from),
        ]
        .boxed(),
        Kind::Triple => prop_oneof![
            3 => prop::array::uniform3(super_real()).prop_map(|v| v.join(",")),
            1 => prop::collection::vec(super_real(), 1..5).prop_map(|v| v.join(",")),
        ]
        .boxed(),
    }
}

fn super_real() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["0", "1", "0.5", "-0.5", "1e-3", "9e-4", "2", "NaN", "inf", "x"])
            .prop_map(String::from),
        1 => (-2.0f64..2.0).prop_map(|v| format!("{v}")),
    ]
}

/// The numeric flags of `train` with their upper bounds (image sizes kept small: --check
/// loads the data at that size).
const TRAIN_FLAGS: &[(&str, Kind)] = &[
    ("--epochs", Kind::Whole(1_000_000)),
    ("--batch-size", Kind::Whole(300)),
    ("--steps", Kind::Whole(100)),
    ("--seed", Kind::Whole(100)),
    ("--threads", Kind::Whole(1024)),
    ("--val-split", Kind::Whole(360)),
    ("--embed-dim", Kind::Whole(16384)),
    ("--depth", Kind::Whole(1024)),
    ("--num-heads", Kind::Whole(16)),
    ("--mlp-dim", Kind::Whole(65536)),
    ("--patch-size", Kind::Whole(32)),
    ("--image-size", Kind::Whole(256)),
    ("--lr", Kind::Real),
    ("--min-lr", Kind::Real),
    ("--warmup-epochs", Kind::Real),
    ("--weight-decay", Kind::Real),
    ("--beta1", Kind::Real),
    ("--beta2", Kind::Real),
    ("--label-smoothing", Kind::Real),
    ("--clip-grad", Kind::Real),
    ("--layer-decay", Kind::Real),
    ("--mean", Kind::Triple),
    ("--std", Kind::Triple),
];

const EVAL_FLAGS: &[(&str, Kind)] = &[
    ("--batch-size", Kind::Whole(1 << 40)),
    ("--val-split", Kind::Whole(360)),
    ("--threads", Kind::Whole(1024)),
];

const PROFILE_FLAGS: &[(&str, Kind)] = &[
    ("--batch-size", Kind::Whole(4)),
    ("--classes", Kind::Whole(65536)),
    ("--steps", Kind::Whole(3)),
    ("--warmup", Kind::Whole(3)),
];

/// One flag of `flags` with a value.
fn flag_value(
    flags: &'static [(&'static str, Kind)],
) -> impl Strategy<Value = (&'static str, String)> {
    prop::sample::select(flags).prop_flat_map(|(f, k)| value(k).prop_map(move |v| (f, v)))
}

/// Runs `base` with `flag value` in place of the base's own value of that flag, and checks
/// the outcome.
fn run_case(base: &[&str], flag: &str, value: &str) -> Result<(), TestCaseError> {
    let mut args: Vec<String> = Vec::new();
    let mut i = 0;
    while i < base.len() {
        if base[i] == flag {
            i += 2;
            continue;
        }
        args.push(base[i].to_string());
        i += 1;
    }
    // `--flag=value`: a value starting with '-' is the value, whatever clap guesses.
    args.push(format!("{flag}={value}"));
    let o = vitk(&args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let code = o.status.code();
    prop_assert!(
        matches!(code, Some(0..=2)),
        "{args:?}: exit {:?} (a panic is 101, an abort 134, a signal none):\n{err}",
        o.status
    );
    prop_assert!(!err.contains("panicked"), "{args:?}:\n{err}");
    if code != Some(0) {
        prop_assert!(
            err.contains(flag) || err.contains("not enough memory"),
            "{args:?}: the error does not name {flag}:\n{err}"
        );
    }
    Ok(())
}

/// Cases per command (each one process).
const CASES: u32 = 160;

#[test]
fn train_flags_never_panic_and_errors_name_the_flag() {
    let (tmp, data, _) = fixture();
    let out = tmp.path().join("never-written");
    let (data, out) = (data.to_string_lossy(), out.to_string_lossy());
    let base = [
        "train",
        "--check",
        "--device",
        "cpu",
        "--data",
        &data,
        "--out",
        &out,
        "--embed-dim",
        "16",
        "--depth",
        "1",
        "--num-heads",
        "2",
        "--mlp-dim",
        "16",
        "--batch-size",
        "50",
        "--threads",
        "1",
    ];
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    runner
        .run(&flag_value(TRAIN_FLAGS), |(f, v)| run_case(&base, f, &v))
        .expect("property");
    assert!(!tmp.path().join("never-written").exists(), "--check wrote");
}

#[test]
fn eval_and_profile_flags_never_panic_and_errors_name_the_flag() {
    let (_, data, ckpt) = fixture();
    let (data, ckpt) = (data.to_string_lossy(), ckpt.to_string_lossy());
    let eval = [
        "eval",
        "--device",
        "cpu",
        "--data",
        &data,
        "--checkpoint",
        &ckpt,
    ];
    let mut runner = TestRunner::new(Config::with_cases(CASES / 4));
    runner
        .run(&flag_value(EVAL_FLAGS), |(f, v)| run_case(&eval, f, &v))
        .expect("property");
    let profile = [
        "profile",
        "--device",
        "dry",
        "--embed-dim",
        "16",
        "--depth",
        "1",
        "--num-heads",
        "2",
        "--mlp-dim",
        "16",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
    ];
    let mut runner = TestRunner::new(Config::with_cases(CASES / 4));
    runner
        .run(&flag_value(PROFILE_FLAGS), |(f, v)| {
            run_case(&profile, f, &v)
        })
        .expect("property");
}
