//! `vitk train`: flags -> TrainConfig, data, engine, run directory, the loop, the final line.

use super::data_source;
use super::device::{self, Device};
use super::model_args::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vitk::data::{synthetic, Normalize};
use vitk::engine::Precision;
use vitk::model::checksum::Verified;
use vitk::model::{init_params, load_weights, ParamLayout};
use vitk::optim::AdamWConfig;
use vitk::train::{
    self, DataSource, LoopPosition, Outcome, RunDir, RunOptions, ScheduleKind, TrainConfig,
};

/// Synthetic set of the default run: sizes and epochs that reach >= 95% validation
/// accuracy with the micro preset in well under two minutes on two cores.
const SYNTH_TRAIN: usize = 10_000;
const SYNTH_VAL: usize = 2_000;
const SYNTH_EPOCHS: usize = 4;
/// Epochs when training on a data directory.
const DATA_EPOCHS: usize = 100;

/// Every option that defines the run is optional here so that `--resume` can refuse the
/// ones that would change it; defaults are applied in `config()` and shown in `--help`.
#[derive(Args, Default)]
pub struct TrainArgs {
    /// Data directory: CIFAR-10 binary (data_batch_*.bin) or an ImageFolder (one subfolder per
    /// class). Without it, the built-in synthetic set. With --resume: the run's data at a new
    /// place (it must be the same data: its fingerprint is checked).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Train on a CIFAR-10 directory with some of data_batch_1..5.bin missing (a warning
    /// says how many batches and records are used) instead of refusing it.
    #[arg(long)]
    allow_partial: bool,
    /// Training records held out for validation when the data has no test/val split
    /// [default: 10% of the training records, at most 5000].
    #[arg(long)]
    val_split: Option<usize>,
    #[command(flatten)]
    model: ModelArgs,
    /// Epochs [default: 4 on the synthetic set, 100 on a data directory].
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after N optimizer steps in total (the LR schedule still spans all epochs).
    #[arg(long)]
    steps: Option<u64>,
    /// Batch size [default: 128].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate [default: 1e-3].
    #[arg(long)]
    lr: Option<f64>,
    /// Final learning rate of the cosine schedule [default: 1e-5].
    #[arg(long)]
    min_lr: Option<f64>,
    /// Linear warmup length in epochs (fractions allowed) [default: 1].
    #[arg(long)]
    warmup_epochs: Option<f64>,
    /// LR schedule after warmup: cosine or constant [default: cosine].
    #[arg(long)]
    schedule: Option<ScheduleKind>,
    /// AdamW weight decay (not on biases, norms, pos_embed, cls_token) [default: 0.05].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// AdamW beta1 [default: 0.9].
    #[arg(long)]
    beta1: Option<f64>,
    /// AdamW beta2 [default: 0.999].
    #[arg(long)]
    beta2: Option<f64>,
    /// Label smoothing of the cross-entropy [default: 0.1].
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// Clip the global gradient norm to this value [default: no clipping].
    #[arg(long)]
    clip_grad: Option<f64>,
    /// Normalisation mean per channel, e.g. 0.5,0.5,0.5 [default: CIFAR-10's].
    #[arg(long, value_delimiter = ',', num_args = 3)]
    mean: Option<Vec<f32>>,
    /// Normalisation std per channel [default: CIFAR-10's].
    #[arg(long, value_delimiter = ',', num_args = 3)]
    std: Option<Vec<f32>>,
    /// No random crop / flip.
    #[arg(long)]
    no_augment: bool,
    /// Visit training records in file order.
    #[arg(long)]
    no_shuffle: bool,
    /// Seed of initialisation, data order and augmentation [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Start from these weights (safetensors, timm names and shapes for this model config).
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// CPU threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Device [default: auto].
    /// auto (a working CUDA device, else the CPU), cpu, cuda[:N], emu (the emulator).
    #[arg(long)]
    device: Option<Device>,
    /// Arithmetic of the device engine: fp32 or bf16 (mixed precision: bf16 matmuls on
    /// tensor cores, fp32 master weights) [default: bf16 on CUDA, fp32 on emu and the CPU].
    #[arg(long)]
    precision: Option<Precision>,
    /// Continue the run in this directory from its last saved state.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Run directory [default: runs/run-N, the first free N].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Metrics log (JSON lines) [default: RUN_DIR/metrics.jsonl].
    #[arg(long)]
    log: Option<PathBuf>,
}

impl TrainArgs {
    /// The run config these flags describe (for a new run).
    fn config(&self, data_classes: usize, data_channels: usize) -> Result<TrainConfig> {
        let mut model = self.model.config("micro")?;
        model.num_classes = data_classes;
        model.in_chans = data_channels;
        let data = match &self.data {
            Some(path) => DataSource::Dir {
                path: path.clone(),
                val_split: self.val_split,
                allow_partial: self.allow_partial,
                fingerprint: None,
            },
            None => DataSource::Synthetic {
                train: SYNTH_TRAIN,
                val: self.val_split.unwrap_or(SYNTH_VAL),
                seed: self.seed.unwrap_or(0),
            },
        };
        let norm = |v: &Option<Vec<f32>>, default: [f32; 3]| -> [f32; 3] {
            v.as_ref().map_or(default, |v| [v[0], v[1], v[2]])
        };
        let cfg = TrainConfig {
            model,
            data,
            epochs: self.epochs.unwrap_or(if self.data.is_some() {
                DATA_EPOCHS
            } else {
                SYNTH_EPOCHS
            }),
            batch_size: self.batch_size.unwrap_or(128),
            lr: self.lr.unwrap_or(1e-3),
            min_lr: self.min_lr.unwrap_or(1e-5),
            warmup_epochs: self.warmup_epochs.unwrap_or(1.0),
            schedule: self.schedule.unwrap_or(ScheduleKind::Cosine),
            adamw: AdamWConfig {
                beta1: self.beta1.unwrap_or(0.9),
                beta2: self.beta2.unwrap_or(0.999),
                eps: 1e-8,
                weight_decay: self.weight_decay.unwrap_or(0.05),
            },
            label_smoothing: self.label_smoothing.unwrap_or(0.1),
            clip_grad: self.clip_grad,
            augment: !self.no_augment,
            shuffle: !self.no_shuffle,
            seed: self.seed.unwrap_or(0),
            mean: norm(&self.mean, Normalize::CIFAR10.mean),
            std: norm(&self.std, Normalize::CIFAR10.std),
        };
        cfg.validate().map_err(anyhow::Error::msg)?;
        Ok(cfg)
    }

    /// Flags that define a run, which --resume takes from the run's config.json instead.
    fn run_defining_flags(&self) -> Vec<&'static str> {
        // --data is allowed: it names the run's data at a new place.
        let data = [
            ("--val-split", self.val_split.is_some()),
            ("--allow-partial", self.allow_partial),
        ];
        let flags = [
            ("--epochs", self.epochs.is_some()),
            ("--batch-size", self.batch_size.is_some()),
            ("--lr", self.lr.is_some()),
            ("--min-lr", self.min_lr.is_some()),
            ("--warmup-epochs", self.warmup_epochs.is_some()),
            ("--schedule", self.schedule.is_some()),
            ("--weight-decay", self.weight_decay.is_some()),
            ("--beta1", self.beta1.is_some()),
            ("--beta2", self.beta2.is_some()),
            ("--label-smoothing", self.label_smoothing.is_some()),
            ("--clip-grad", self.clip_grad.is_some()),
            ("--mean", self.mean.is_some()),
            ("--std", self.std.is_some()),
            ("--no-augment", self.no_augment),
            ("--no-shuffle", self.no_shuffle),
            ("--seed", self.seed.is_some()),
            ("--init-from", self.init_from.is_some()),
            ("--out", self.out.is_some()),
        ];
        let given = |f: &[(&'static str, bool)]| -> Vec<&'static str> {
            f.iter().filter(|f| f.1).map(|f| f.0).collect()
        };
        [given(&data), self.model.given(), given(&flags)].concat()
    }
}

pub fn run(a: TrainArgs) -> Result<ExitCode> {
    device::set_threads(a.threads)?;
    let (cfg, run_dir, splits, params, state) = match &a.resume {
        Some(dir) => {
            let flags = a.run_defining_flags();
            if !flags.is_empty() {
                bail!(
                    "{} cannot be combined with --resume: a resumed run keeps the config in {} (only --steps, --threads, --device, --log and --data, for data that moved, may be given)",
                    flags.join(", "),
                    dir.join("config.json").display()
                );
            }
            let run_dir = RunDir::open(dir).map_err(anyhow::Error::msg)?;
            let mut cfg = run_dir.read_config().map_err(anyhow::Error::msg)?;
            let splits = data_source::load_for_resume(&run_dir, &mut cfg, a.data.as_deref())?;
            let state = run_dir
                .load_state(&ParamLayout::new(&cfg.model))
                .map_err(anyhow::Error::msg)?;
            if state.verified == Verified::NoChecksum {
                eprintln!(
                    "note: {} has no checksums (written by an older vitk): loaded without verification",
                    run_dir.state_path().display()
                );
            }
            let (params, opt, pos) = (state.params, state.opt, state.pos);
            eprintln!(
                "resuming {} at step {} (epoch {}, batch {})",
                dir.display(),
                pos.step,
                pos.epoch,
                pos.batch
            );
            (cfg, run_dir, splits, params, Some((opt, pos)))
        }
        None => {
            let side = a.model.image_size.unwrap_or(32);
            let splits = match &a.data {
                Some(path) => data_source::load_new(path, side, a.val_split, a.allow_partial)?,
                None if a.allow_partial => bail!(
                    "--allow-partial applies to a CIFAR-10 directory given with --data; without --data the run uses the built-in synthetic set"
                ),
                None => synthetic::generate_splits(
                    SYNTH_TRAIN,
                    a.val_split.unwrap_or(SYNTH_VAL),
                    a.seed.unwrap_or(0),
                ),
            };
            let mut cfg = a.config(splits.train.num_classes(), splits.train.channels)?;
            data_source::pin(&mut cfg.data, &splits)?;
            let layout = ParamLayout::new(&cfg.model);
            let params = match &a.init_from {
                Some(path) => load_weights(path, &cfg.model)?,
                None => init_params(&cfg.model, &layout, cfg.seed),
            };
            let out = a
                .out
                .clone()
                .unwrap_or_else(|| RunDir::next_free(&PathBuf::from("runs")));
            let run_dir = RunDir::create(&out).map_err(anyhow::Error::msg)?;
            run_dir.write_config(&cfg).map_err(anyhow::Error::msg)?;
            (cfg, run_dir, splits, params, None)
        }
    };

    let n_params = params.len();
    let mut engine = device::engine(
        a.device.unwrap_or(Device::Auto),
        a.precision,
        &cfg.model,
        cfg.batch_size,
        params,
        cfg.adamw,
    )?;
    let start = match &state {
        Some((opt, pos)) => {
            let p = engine.params()?;
            engine.load(&p, Some(opt))?;
            *pos
        }
        None => LoopPosition {
            step: 0,
            epoch: 0,
            batch: 0,
        },
    };
    println!(
        "model {} ({n_params} parameters) on {}; train {} images, validation {} ({}); run {}",
        cfg.model.summary(),
        engine.describe(),
        splits.train.len(),
        splits.val.len(),
        splits.val_source,
        run_dir.path.display()
    );

    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            // A second Ctrl-C while the state is being saved: leave at once.
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: finishing this step and saving the state (Ctrl-C again to quit at once)"
        );
    })
    .context("installing the Ctrl-C handler")?;

    let opts = RunOptions {
        max_steps: a.steps,
        log: a.log.clone(),
        interrupt,
        progress_bar: std::io::stderr().is_terminal(),
    };
    let summary = train::train(&cfg, &run_dir, engine.as_mut(), splits, start, &opts)?;
    let (val_acc, val_loss) = match &summary.val {
        Some(v) => (format!("{:.4}", v.accuracy), format!("{:.4}", v.loss)),
        None => ("n/a".to_string(), "n/a".to_string()),
    };
    if summary.outcome == Outcome::Interrupted {
        eprintln!(
            "interrupted at step {}: state saved; continue with: vitk train --resume {}",
            summary.steps,
            run_dir.path.display()
        );
    }
    println!(
        "final: val_acc={val_acc} val_loss={val_loss} img_per_s={:.1}",
        summary.img_per_s
    );
    Ok(if summary.outcome == Outcome::Interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}
