//! `vitk train`: flags -> TrainConfig, data, engine, run directory, the loop, the final line.

use super::data_source;
use super::device::{self, Device, Opened};
use super::model_args::ModelArgs;
use super::parse::{number, number_f32, whole, whole_u64};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vitk::data::{synthetic, AutoAugment, Normalize, Splits};
use vitk::engine::{OptimizerState, Precision, TrainEngine};
use vitk::model::checksum::Verified;
use vitk::model::{
    init_params, init_pretrain_params, load_transfer, read_meta, CheckpointMeta, ImageSize,
    ParamLayout, PretrainLayout, TransferOptions,
};
use vitk::optim::{AdamWConfig, ParamGroups};
use vitk::pretrain::{Objective, PretrainConfig, PretrainEngine};
use vitk::train::log_path::{self, LogPlan};
use vitk::train::memory::{DataSize, Trained};
use vitk::train::{
    self, data_size, DataSource, InitFrom, LoopPosition, Outcome, RecipeUsed, RunDir, RunLock,
    RunOptions, RunStart, ScheduleKind, TrainConfig,
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
    #[arg(long, value_parser = whole, allow_negative_numbers = true)]
    val_split: Option<usize>,
    #[command(flatten)]
    model: ModelArgs,
    /// Epochs, 1..=1000000 [default: 4 on the synthetic set, 100 on a data directory].
    #[arg(long, value_parser = whole, allow_negative_numbers = true)]
    epochs: Option<usize>,
    /// Stop after N optimizer steps in total (the LR schedule still spans all epochs).
    #[arg(long, value_parser = whole_u64, allow_negative_numbers = true)]
    steps: Option<u64>,
    /// Also save the state every N optimizer steps (for long epochs), not only at the end of
    /// each epoch; at least 1.
    #[arg(long, value_parser = whole_u64, allow_negative_numbers = true)]
    save_every: Option<u64>,
    /// Batch size, at most the training set [default: 128].
    #[arg(long, value_parser = whole, allow_negative_numbers = true)]
    batch_size: Option<usize>,
    /// Peak learning rate, > 0 [default: 1e-3].
    #[arg(long, value_parser = number, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Final learning rate of the cosine schedule, in [0, --lr] [default: 1e-5].
    #[arg(long, value_parser = number, allow_negative_numbers = true)]
    min_lr: Option<f64>,
    /// Linear warmup length in epochs (fractions allowed), in [0, --epochs] [default: 1].
    #[arg(long, value_parser = number, allow_negative_numbers = true)]
    warmup_epochs: Option<f64>,
    /// LR schedule after warmup: cosine or constant [default: cosine].
    #[arg(long)]
    schedule: Option<ScheduleKind>,
    /// AdamW weight decay (not on biases, norms, pos_embed, cls_token) [default: 0.05].
    #[arg(long, value_parser = number, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// AdamW beta1, in [0, 1) [default: 0.9].
    #[arg(long, value_parser = number, allow_negative_numbers = true)]
    beta1: Option<f64>,
    /// AdamW beta2, in [0, 1) [default: 0.999].
    #[arg(long, value_parser = number, allow_negative_numbers = true)]
    beta2: Option<f64>,
    /// Label smoothing of the cross-entropy, in [0, 1) [default: 0.1].
    #[arg(long, value_parser = number, allow_negative_numbers = true)]
    label_smoothing: Option<f64>,
    /// Clip the global gradient norm to this value, > 0 [default: no clipping].
    #[arg(long, value_parser = number, allow_negative_numbers = true)]
    clip_grad: Option<f64>,
    /// Normalisation mean per channel of inputs scaled to [0, 1], three values in [0, 1],
    /// e.g. 0.5,0.5,0.5 [default: CIFAR-10's].
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, value_parser = number_f32)]
    mean: Option<Vec<f32>>,
    /// Normalisation std per channel, three values in [0.001, 1], e.g. 0.25,0.25,0.25
    /// [default: CIFAR-10's].
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, value_parser = number_f32)]
    std: Option<Vec<f32>>,
    /// No random crop / flip.
    #[arg(long)]
    no_augment: bool,
    /// Automatic augmentation after crop/flip: none, cifar10 (AutoAugment's CIFAR-10 policy)
    /// or a RandAugment config as timm writes it, e.g. rand-m9-mstd0.5-inc1 [default: none].
    #[arg(long, value_parser = parse_auto_augment)]
    auto_augment: Option<AutoAugment>,
    /// Random erasing probability (timm's per-pixel normal mode), in [0, 1] [default: 0].
    #[arg(long, value_parser = number_f32, allow_negative_numbers = true)]
    reprob: Option<f32>,
    /// Copies of each image per epoch, each augmented differently (DeiT's repeated
    /// augmentation; the epoch keeps its length), 1..=64 [default: 1, off].
    #[arg(long, value_parser = whole, allow_negative_numbers = true)]
    aug_repeats: Option<usize>,
    /// Mixup: each training image blended with its mirror in the batch, λ ~ Beta(A, A), the
    /// targets alike (timm's; label smoothing folded in), A >= 0 [default: 0, off].
    #[arg(long, value_parser = number, allow_negative_numbers = true)]
    mixup: Option<f64>,
    /// CutMix: a box of the mirror image pasted in, λ ~ Beta(A, A), A >= 0 [default: 0, off].
    #[arg(long, value_parser = number, allow_negative_numbers = true)]
    cutmix: Option<f64>,
    /// Probability of CutMix rather than Mixup for a batch when both are on, in [0, 1]
    /// [default: 0.5].
    #[arg(long, value_parser = number, allow_negative_numbers = true)]
    mixup_switch_prob: Option<f64>,
    /// Mixing stops from epoch E on (0-based, as timm's mixup_off_epoch), 1..=1000000
    /// [default: never].
    #[arg(long, value_parser = whole, allow_negative_numbers = true)]
    mixup_off_epoch: Option<usize>,
    /// Keep an exponential moving average of the weights with this decay, in (0, 1) (timm's
    /// ModelEmaV3 with warm-up): evaluated beside them at each epoch end, saved as
    /// model_ema.safetensors [default: off].
    #[arg(long, value_parser = number, allow_negative_numbers = true)]
    ema_decay: Option<f64>,
    /// Stochastic depth: the drop rate of the last block's residual branches (timm's
    /// linspace from 0 at the first block), per sample, in [0, 1) [default: 0, off].
    #[arg(long, value_parser = number, allow_negative_numbers = true)]
    drop_path: Option<f64>,
    /// Visit training records in file order.
    #[arg(long)]
    no_shuffle: bool,
    /// Seed of initialisation, data order and augmentation [default: 0].
    #[arg(long, value_parser = whole_u64, allow_negative_numbers = true)]
    seed: Option<u64>,
    /// Start from pretrained weights (safetensors with vitk's or timm's names): a vitk
    /// checkpoint gives the model's shape and normalisation unless flags change them; at
    /// another --image-size pos_embed is resampled (bicubic, as timm), a head of other
    /// classes is re-initialised.
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// With --init-from at another --patch-size: resize the patch-embedding kernel
    /// (FlexiViT's pseudo-inverse resize) instead of refusing the checkpoint.
    #[arg(long)]
    resample_patch: bool,
    /// Layer-wise learning-rate decay R, in (0, 1] (timm's, as MAE and BEiT fine-tune): the
    /// head and its norm train at the learning rate, block i of L at R^(L-i) times it, the
    /// embeddings at R^(L+1) times it (weight decay scaled alike) [default: off].
    #[arg(long, value_parser = number, allow_negative_numbers = true)]
    layer_decay: Option<f64>,
    /// Linear probe: only the head and its norm (norm, or fc_norm with mean pooling) train;
    /// every other tensor keeps its initial (--init-from) value and gets no backward pass.
    #[arg(long)]
    freeze_backbone: bool,
    /// CPU threads, 1..=1024 [default: all cores].
    #[arg(long, value_parser = whole, allow_negative_numbers = true)]
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
    /// Metrics log (JSON lines) [default: RUN_DIR/metrics.jsonl]. A file elsewhere must be
    /// new (or, with --resume, the log this run started), outside other run directories.
    #[arg(long)]
    log: Option<PathBuf>,
    /// A named recipe: cifar-fast or cifar-best. It fills every flag of its set that is not
    /// given (each one can be overridden); config.json records the values and which flags
    /// the recipe filled. See README, "Recipes".
    #[arg(long)]
    recipe: Option<String>,
    /// The flags the recipe filled (set by main from the expanded command line).
    #[arg(skip)]
    pub recipe_filled: Vec<String>,
    /// Check the flags, the data, the device and the memory estimate, print the plan, and
    /// stop: nothing is written.
    #[arg(long)]
    check: bool,
}

impl TrainArgs {
    /// Whether --resume was given.
    pub fn resuming(&self) -> bool {
        self.resume.is_some()
    }

    /// The run config these flags describe (for a new run).
    /// `init`: the checkpoint of --init-from, whose shape and normalisation are the defaults.
    fn config(
        &self,
        data_classes: usize,
        data_channels: usize,
        init: Option<&CheckpointMeta>,
    ) -> Result<TrainConfig> {
        let mut model = match init {
            Some(meta) => self.model.config_from(&meta.config)?,
            None => self.model.config("micro")?,
        };
        // A pretrained model keeps the normalisation it learned with.
        let default_norm = match init {
            Some(m) if m.mean.len() == 3 && m.std.len() == 3 => Normalize {
                mean: [m.mean[0], m.mean[1], m.mean[2]],
                std: [m.std[0], m.std[1], m.std[2]],
            },
            _ => Normalize::CIFAR10,
        };
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
        let norm = |flag: &str, v: &Option<Vec<f32>>, default: [f32; 3]| -> Result<[f32; 3]> {
            match v.as_deref() {
                None => Ok(default),
                Some(&[a, b, c]) => Ok([a, b, c]),
                Some(v) => bail!(
                    "{flag} {}: expected 3 comma-separated values (one per channel), got {}",
                    v.iter().map(f32::to_string).collect::<Vec<_>>().join(","),
                    v.len()
                ),
            }
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
            mean: norm("--mean", &self.mean, default_norm.mean)?,
            std: norm("--std", &self.std, default_norm.std)?,
            init_from: None,
            recipe: self.recipe.as_ref().map(|name| RecipeUsed {
                name: name.clone(),
                filled: self.recipe_filled.clone(),
            }),
            auto_augment: self.auto_augment.unwrap_or_default(),
            reprob: self.reprob.unwrap_or(0.0),
            aug_repeats: self.aug_repeats.unwrap_or(1),
            mixup: self.mixup.unwrap_or(0.0),
            cutmix: self.cutmix.unwrap_or(0.0),
            mixup_switch_prob: self.mixup_switch_prob.unwrap_or(0.5),
            mixup_off_epoch: self.mixup_off_epoch,
            ema_decay: self.ema_decay,
            drop_path: self.drop_path.unwrap_or(0.0),
            pretrain: None,
            layer_decay: self.layer_decay,
            freeze_backbone: self.freeze_backbone,
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
        // --epochs is allowed: it extends a run (prepare_resume).
        let flags = [
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
            ("--auto-augment", self.auto_augment.is_some()),
            ("--reprob", self.reprob.is_some()),
            ("--aug-repeats", self.aug_repeats.is_some()),
            ("--mixup", self.mixup.is_some()),
            ("--cutmix", self.cutmix.is_some()),
            ("--mixup-switch-prob", self.mixup_switch_prob.is_some()),
            ("--mixup-off-epoch", self.mixup_off_epoch.is_some()),
            ("--ema-decay", self.ema_decay.is_some()),
            ("--drop-path", self.drop_path.is_some()),
            ("--no-shuffle", self.no_shuffle),
            ("--seed", self.seed.is_some()),
            ("--init-from", self.init_from.is_some()),
            ("--resample-patch", self.resample_patch),
            ("--layer-decay", self.layer_decay.is_some()),
            ("--freeze-backbone", self.freeze_backbone),
            ("--out", self.out.is_some()),
        ];
        let given = |f: &[(&'static str, bool)]| -> Vec<&'static str> {
            f.iter().filter(|f| f.1).map(|f| f.0).collect()
        };
        [given(&data), self.model.given(), given(&flags)].concat()
    }
}

/// Loads the data of a new run (its size was checked first: `check_data`); `unlabelled`
/// (pre-training): a folder of images without class subfolders is accepted too.
fn load_data(source: &DataSource, side: ImageSize, unlabelled: bool) -> Result<Splits> {
    Ok(match source {
        DataSource::Dir {
            path,
            val_split,
            allow_partial,
            ..
        } => data_source::load_new(path, side, *val_split, *allow_partial, unlabelled)?,
        DataSource::Synthetic { train, val, seed } => {
            synthetic::generate_splits(*train, *val, *seed)
        }
    })
}

/// What can be checked of the data before it is loaded: the synthetic set's side and batch
/// (a directory's problems are the loader's to name); returned: the size the data takes in
/// memory at `cfg`'s side, and the batch the memory estimate uses (a batch above a
/// directory's images is refused once it is loaded).
fn check_data(cfg: &TrainConfig) -> Result<(Option<DataSize>, usize)> {
    let side = cfg.model.image_size;
    if let DataSource::Synthetic { .. } = cfg.data {
        if side != ImageSize::square(synthetic::SIDE) {
            bail!(
                "--image-size {side}: the synthetic set is {0}x{0}; give --data DIR to train at another size",
                synthetic::SIDE
            );
        }
    }
    let Some(size) = data_size::source_size(&cfg.data) else {
        return Ok((None, cfg.batch_size));
    };
    if matches!(cfg.data, DataSource::Synthetic { .. }) && cfg.batch_size > size.train {
        bail!(
            "--batch-size {} is larger than the training set ({} images at most{}): expected 1..={}",
            cfg.batch_size,
            size.train,
            data_place(&cfg.data),
            size.train
        );
    }
    let held_out_copy = matches!(
        &cfg.data,
        DataSource::Dir { val_split, .. } if size.val == 0 && *val_split != Some(0)
    );
    let data = DataSize {
        images: (size.train + size.val) as f64,
        image_bytes: (size.channels * side.pixels()) as f64,
        copied_while_loading: size.side.map(ImageSize::square) != Some(side) || held_out_copy,
    };
    Ok((Some(data), cfg.batch_size.min(size.train.max(1))))
}

/// " in DIR" for a data directory.
fn data_place(source: &DataSource) -> String {
    match source {
        DataSource::Dir { path, .. } => format!(" in {}", path.display()),
        DataSource::Synthetic { .. } => " in the synthetic set".into(),
    }
}

/// Checks the loaded data against the model and the batch (a resumed config may name data
/// that changed since).
fn check_loaded(cfg: &TrainConfig, splits: &Splits, origin: &str) -> Result<()> {
    let (train, m) = (&splits.train, &cfg.model);
    if train.num_classes() != m.num_classes || train.channels != m.in_chans {
        bail!(
            "the data{} has {} classes of {}-channel images, but {origin} is a model of {} classes of {} channels",
            data_place(&cfg.data),
            train.num_classes(),
            train.channels,
            m.num_classes,
            m.in_chans
        );
    }
    if cfg.batch_size > train.len() {
        bail!(
            "--batch-size {} is larger than the training set ({} images{}): expected 1..={}",
            cfg.batch_size,
            train.len(),
            data_place(&cfg.data),
            train.len()
        );
    }
    Ok(())
}

/// A run ready to train: its config, locked directory, data and starting point.
struct Prepared {
    cfg: TrainConfig,
    run: Option<RunStart>,
    out: PathBuf,
    splits: Splits,
    params: Vec<f32>,
    state: Option<(OptimizerState, LoopPosition)>,
    /// The weights' EMA saved in the state (resume of a run with --ema-decay).
    saved_ema: Option<Vec<f32>>,
    log: LogPlan,
    /// The memory estimate's summary.
    memory: String,
}

/// A new run: every check, then the directory (not with --check). `pretrain`: the settings
/// of a pre-training run (`vitk pretrain`).
fn prepare_new(
    a: &TrainArgs,
    device: &Opened,
    pretrain: Option<PretrainConfig>,
) -> Result<Prepared> {
    if pretrain.is_some() {
        refuse_for_pretraining(a)?;
    }
    if a.allow_partial && a.data.is_none() {
        bail!(
            "--allow-partial applies to a CIFAR-10 directory given with --data; without --data the run uses the built-in synthetic set"
        );
    }
    if a.resample_patch && a.init_from.is_none() {
        bail!("--resample-patch applies to the weights given with --init-from");
    }
    let init_meta = match &a.init_from {
        Some(path) => read_meta(path)?,
        None => None,
    };
    // The data's classes are known once it is loaded; 10 stands in until then.
    let mut cfg = a.config(10, 3, init_meta.as_ref())?;
    cfg.pretrain = pretrain;
    cfg.validate().map_err(anyhow::Error::msg)?;
    device.check_model(&cfg.model)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| RunDir::next_free(&PathBuf::from("runs")));
    if out.exists() {
        // Checked again under the lock; refused here before any work.
        RunLock::check_free(&out).map_err(anyhow::Error::msg)?;
        if !a.check {
            RunDir::create(&out).map_err(anyhow::Error::msg)?;
        }
    }
    let log = log_path::check_log(a.log.as_deref(), &out, false).map_err(anyhow::Error::msg)?;
    let (data_size, batch) = check_data(&cfg)?;
    let memory = device.check_memory(&cfg.model, batch, data_size, trained_of(&cfg)?)?;
    let splits = load_data(&cfg.data, cfg.model.image_size, cfg.pretrain.is_some())?;
    // The config records the data as an absolute path with its fingerprint.
    data_source::pin(&mut cfg.data, &splits)?;
    cfg.model.num_classes = splits.train.num_classes();
    cfg.model.in_chans = splits.train.channels;
    cfg.validate().map_err(anyhow::Error::msg)?;
    check_loaded(&cfg, &splits, "the model")?;
    if cfg.freeze_backbone && a.init_from.is_none() {
        eprintln!(
            "note: --freeze-backbone without --init-from trains a linear probe on a randomly initialised backbone"
        );
    }
    let layout = ParamLayout::new(&cfg.model);
    let params = match &a.init_from {
        Some(path) => {
            let opts = TransferOptions {
                resample_patch: a.resample_patch,
                seed: cfg.seed,
            };
            let source = init_meta.as_ref().map(|m| &m.config);
            let t = load_transfer(path, &cfg.model, source, opts)?;
            for note in &t.notes {
                println!("init from {}: {note}", path.display());
            }
            let path = std::path::absolute(path)
                .with_context(|| format!("resolving {}", path.display()))?;
            cfg.init_from = Some(InitFrom {
                path,
                notes: t.notes,
            });
            t.params
        }
        // --check allocates nothing it does not have to.
        None if a.check => Vec::new(),
        None => match objective_of(&cfg)? {
            Some(o) => {
                let layout = PretrainLayout::new(&cfg.model, o.decoder_outputs(&cfg.model));
                init_pretrain_params(&cfg.model, &layout, cfg.seed)
            }
            None => init_params(&cfg.model, &layout, cfg.seed),
        },
    };
    let run = if a.check {
        None
    } else {
        Some(RunStart::create(&out).map_err(anyhow::Error::msg)?)
    };
    Ok(Prepared {
        cfg,
        run,
        out,
        splits,
        params,
        state: None,
        saved_ema: None,
        log,
        memory,
    })
}

/// A run to resume: locked first, then its config and data checked as a new run's are.
/// `pretraining`: resumed by `vitk pretrain` (the run must be a pre-training run, and a
/// `vitk train` run must not be one).
fn prepare_resume(
    a: &TrainArgs,
    dir: &Path,
    device: &Opened,
    pretraining: bool,
) -> Result<Prepared> {
    let flags = a.run_defining_flags();
    if !flags.is_empty() {
        bail!(
            "{} cannot be combined with --resume: a resumed run keeps the config in {} (only --epochs, to extend it, --steps, --save-every, --threads, --device, --precision, --log, --check and --data, for data that moved, may be given)",
            flags.join(", "),
            dir.join("config.json").display()
        );
    }
    // --check only looks: it takes no lock (and writes no lock file).
    let (run, run_dir) = if a.check {
        RunLock::check_free(dir).map_err(anyhow::Error::msg)?;
        (None, RunDir::open(dir).map_err(anyhow::Error::msg)?)
    } else {
        let (run, stale) = RunStart::resume(dir).map_err(anyhow::Error::msg)?;
        if let Some(stale) = stale {
            let pid = stale.pid.map_or("a process".into(), |p| format!("pid {p}"));
            eprintln!(
                "note: the lock file of {} was left by {pid}, which did not exit cleanly (killed or crashed?); continuing from the last saved state",
                run.dir.path.display()
            );
        }
        let run_dir = run.dir.clone();
        (Some(run), run_dir)
    };
    let mut cfg = run_dir.read_config().map_err(anyhow::Error::msg)?;
    let config = run_dir.config_path();
    match (cfg.pretrain.is_some(), pretraining) {
        (true, false) => bail!(
            "{} is a pre-training run (see {}): continue it with vitk pretrain --resume {0}, or fine-tune its encoder with vitk train --init-from {}",
            dir.display(),
            config.display(),
            run_dir.model_path().display()
        ),
        (false, true) => bail!(
            "{} is a classification run (see {}): continue it with vitk train --resume {0}",
            dir.display(),
            config.display()
        ),
        _ => {}
    }
    if let Some(epochs) = a.epochs {
        extend(&mut cfg, epochs, &config)?;
    }
    cfg.validate()
        .map_err(|e| anyhow!("{}: {e}", config.display()))?;
    device.check_model(&cfg.model)?;
    let log = log_path::check_log(a.log.as_deref(), dir, true).map_err(anyhow::Error::msg)?;
    // Sized at --data when the data moved there (load_for_resume checks that it is the same).
    let mut at = cfg.clone();
    if let (Some(moved), DataSource::Dir { path, .. }) = (&a.data, &mut at.data) {
        path.clone_from(moved);
    }
    let (data_size, batch) =
        check_data(&at).with_context(|| format!("resuming {}", dir.display()))?;
    let memory = device.check_memory(&cfg.model, batch, data_size, trained_of(&cfg)?)?;
    let splits = data_source::load_for_resume(&run_dir, &mut cfg, a.data.as_deref(), !a.check)?;
    check_loaded(&cfg, &splits, &config.display().to_string())?;
    let state = match objective_of(&cfg)? {
        Some(o) => {
            let layout = PretrainLayout::new(&cfg.model, o.decoder_outputs(&cfg.model));
            run_dir.load_state_of(&layout.entries, layout.len)
        }
        None => run_dir.load_state(&ParamLayout::new(&cfg.model)),
    }
    .map_err(anyhow::Error::msg)?;
    if state.verified == Verified::NoChecksum {
        eprintln!(
            "note: {} has no checksums (written by an older vitk): loaded without verification",
            run_dir.state_path().display()
        );
    }
    let (params, opt, pos, saved_ema) = (state.params, state.opt, state.pos, state.ema);
    Ok(Prepared {
        cfg,
        run,
        out: dir.to_path_buf(),
        splits,
        params,
        state: Some((opt, pos)),
        saved_ema,
        log,
        memory,
    })
}

/// `--resume RUN --epochs N`: the run continues to N epochs, its schedule recomputed over them
/// (said, with what changes); config.json is rewritten when the run starts.
fn extend(cfg: &mut TrainConfig, epochs: usize, config: &Path) -> Result<()> {
    if epochs <= cfg.epochs {
        bail!(
            "--epochs {epochs} with --resume: {} records {} epochs; --epochs extends a run, expected more than {}",
            config.display(),
            cfg.epochs,
            cfg.epochs
        );
    }
    let before = cfg.epochs;
    cfg.epochs = epochs;
    cfg.validate().map_err(anyhow::Error::msg)?;
    eprintln!(
        "extending the run from {before} to {epochs} epochs: the {} schedule is recomputed over {epochs} epochs (warm-up unchanged), so the learning rate from here on differs from the finished run's",
        format!("{:?}", cfg.schedule).to_lowercase()
    );
    Ok(())
}

/// The engine of a run: a classifier (`vitk train`) or a pre-training model.
enum Engine {
    Classify(Box<dyn TrainEngine>),
    Pretrain(Box<dyn PretrainEngine>),
}

impl Engine {
    fn describe(&self) -> String {
        match self {
            Engine::Classify(e) => e.describe(),
            Engine::Pretrain(e) => e.describe(),
        }
    }

    /// Resume: the optimizer state beside the parameters the engine holds.
    fn load_optimizer(&mut self, opt: &OptimizerState) -> Result<()> {
        match self {
            Engine::Classify(e) => {
                let params = e.params()?;
                e.load(&params, Some(opt))
            }
            Engine::Pretrain(e) => {
                let params = e.params()?;
                e.load(&params, Some(opt))
            }
        }
    }
}

/// The parameters of the run's model: the classifier's, or the pre-training model's.
fn param_count(cfg: &TrainConfig) -> usize {
    match objective_of(cfg) {
        Ok(Some(o)) => PretrainLayout::new(&cfg.model, o.decoder_outputs(&cfg.model)).len,
        _ => ParamLayout::new(&cfg.model).len,
    }
}

/// The objective of a pre-training run (None for a classification run).
/// What the run of `cfg` trains, for its memory estimate.
fn trained_of(cfg: &TrainConfig) -> Result<Trained> {
    Ok(Trained {
        pretrain: objective_of(cfg)?,
        ema: cfg.ema_config().is_some(),
    })
}

fn objective_of(cfg: &TrainConfig) -> Result<Option<Objective>> {
    cfg.pretrain
        .as_ref()
        .map(|p| p.objective().map_err(anyhow::Error::msg))
        .transpose()
}

/// Flags of `vitk train` that have no meaning for a pre-training run.
fn refuse_for_pretraining(a: &TrainArgs) -> Result<()> {
    let given: Vec<&str> = [
        ("--label-smoothing", a.label_smoothing.is_some()),
        ("--init-from", a.init_from.is_some()),
        ("--resample-patch", a.resample_patch),
        ("--layer-decay", a.layer_decay.is_some()),
        ("--freeze-backbone", a.freeze_backbone),
        ("--mixup", a.mixup.is_some()),
        ("--cutmix", a.cutmix.is_some()),
        ("--mixup-switch-prob", a.mixup_switch_prob.is_some()),
        ("--mixup-off-epoch", a.mixup_off_epoch.is_some()),
        ("--ema-decay", a.ema_decay.is_some()),
        ("--recipe", a.recipe.is_some()),
        ("--drop-path", a.drop_path.is_some()),
    ]
    .iter()
    .filter(|f| f.1)
    .map(|f| f.0)
    .collect();
    if !given.is_empty() {
        bail!(
            "{} cannot be used with vitk pretrain: they apply to classification (fine-tune the pre-trained encoder with vitk train --init-from RUN/model.safetensors)",
            given.join(", ")
        );
    }
    Ok(())
}

/// `--auto-augment VALUE`, its error naming the value and what is expected.
fn parse_auto_augment(v: &str) -> std::result::Result<AutoAugment, String> {
    AutoAugment::parse(v).map_err(|e| e.to_string())
}

/// Flags checked before anything else, whichever the mode.
fn check_flags(a: &TrainArgs) -> Result<()> {
    if a.save_every == Some(0) {
        bail!("--save-every 0 is out of range: expected at least 1 (steps between saves)");
    }
    device::set_threads(a.threads)
}

pub fn run(a: TrainArgs) -> Result<ExitCode> {
    run_mode(a, false, None)
}

/// `vitk train`, or with `pretraining` `vitk pretrain`: a new run with the `settings`, or
/// with --resume the run's own.
pub(super) fn run_mode(
    a: TrainArgs,
    pretraining: bool,
    settings: Option<PretrainConfig>,
) -> Result<ExitCode> {
    check_flags(&a)?;
    let device = device::open(a.device.unwrap_or(Device::Auto), a.precision)?;
    // Set before the run directory exists: a Ctrl-C during the start ends it cleanly.
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

    let p = match &a.resume {
        Some(dir) => prepare_resume(&a, dir, &device, pretraining)?,
        None => prepare_new(&a, &device, settings)?,
    };
    let Some(mut run) = p.run else {
        print_check(&a, &p, &device);
        return Ok(ExitCode::SUCCESS);
    };
    let cfg = p.cfg;
    if p.state.is_none() || a.epochs.is_some() {
        run.dir.write_config(&cfg).map_err(anyhow::Error::msg)?;
    }
    if log_path::claim(&p.log, &run.dir.path).map_err(anyhow::Error::msg)? {
        if let Some(path) = log_path::resolve(&p.log) {
            run.created_file(path);
        }
    }
    let n_params = p.params.len();
    let mut engine = match objective_of(&cfg)? {
        Some(objective) => Engine::Pretrain(device.pretrain_engine(
            &cfg.model,
            objective,
            cfg.normalize(),
            cfg.batch_size,
            p.params,
            cfg.adamw,
        )?),
        None => Engine::Classify(device.engine(
            &cfg.model,
            cfg.batch_size,
            p.params,
            cfg.adamw,
            cfg.tuning(),
            cfg.drop_path(),
        )?),
    };
    let start = match &p.state {
        Some((opt, pos)) => {
            engine.load_optimizer(opt)?;
            eprintln!(
                "resuming {} at step {} (epoch {}, batch {})",
                run.dir.path.display(),
                pos.step,
                pos.epoch,
                pos.batch
            );
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
        p.splits.train.len(),
        p.splits.val.len(),
        p.splits.val_source,
        run.dir.path.display()
    );
    if let Some(line) = describe_tuning(&cfg) {
        println!("{line}");
    }
    if let Some(line) = super::pretrain::describe(&cfg) {
        println!("{line}");
    }
    if interrupt.load(Ordering::SeqCst) {
        bail!("interrupted before the first step: nothing was trained");
    }
    let opts = RunOptions {
        max_steps: a.steps,
        log: log_path::resolve(&p.log),
        interrupt,
        progress_bar: std::io::stderr().is_terminal(),
        save_every: a.save_every,
    };
    let mut engine = match engine {
        Engine::Pretrain(mut engine) => {
            let summary =
                vitk::pretrain::pretrain(&cfg, &run.dir, engine.as_mut(), p.splits, start, &opts)?;
            run.keep();
            return Ok(super::pretrain::finish(&summary, &run.dir));
        }
        Engine::Classify(engine) => engine,
    };
    if let Some(ema) = cfg.ema_config() {
        // A new run averages from its initial weights (timm copies the model at the start).
        let start_from = match (p.saved_ema, &p.state) {
            (Some(saved), _) => saved,
            (None, None) => engine.params()?,
            (None, Some(_)) => bail!(
                "{}: the run has --ema-decay (see {}) but its state holds no 'ema' tensor",
                run.dir.state_path().display(),
                run.dir.config_path().display()
            ),
        };
        engine.start_ema(ema, &start_from)?;
    }
    let summary = train::train(&cfg, &run.dir, engine.as_mut(), p.splits, start, &opts)?;
    run.keep();
    let (val_acc, val_loss) = match &summary.val {
        Some(v) => (format!("{:.4}", v.accuracy), format!("{:.4}", v.loss)),
        None => ("n/a".to_string(), "n/a".to_string()),
    };
    let ema = summary.val_ema.as_ref().map_or(String::new(), |v| {
        format!(" val_acc_ema={:.4} val_loss_ema={:.4}", v.accuracy, v.loss)
    });
    if summary.outcome == Outcome::Interrupted {
        eprintln!(
            "interrupted at step {}: state saved; continue with: vitk train --resume {}",
            summary.steps,
            run.dir.path.display()
        );
    }
    print_summary(&summary, &run.dir);
    println!(
        "final: val_acc={val_acc} val_loss={val_loss}{ema} img_per_s={:.1}",
        summary.img_per_s
    );
    Ok(if summary.outcome == Outcome::Interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// The end of a run: best and last validation accuracy, time, where the files are.
fn print_summary(s: &train::Summary, run: &RunDir) {
    let how = match s.outcome {
        Outcome::Finished => format!("all {} steps of the schedule done", s.total_steps),
        Outcome::StepLimit => format!(
            "stopped by --steps at step {} of {}",
            s.steps, s.total_steps
        ),
        Outcome::Interrupted => format!("interrupted at step {} of {}", s.steps, s.total_steps),
    };
    println!(
        "run summary: {how}, {} in this invocation",
        train::hms(s.wall_secs)
    );
    match (&s.best, &s.val) {
        (Some(b), last) => {
            println!(
                "  best val_acc {:.4} (top-5 {:.4}) at epoch {} (step {}): {}",
                b.accuracy,
                b.top5,
                b.epoch,
                b.step,
                run.best_path().display()
            );
            if let Some(b) = &s.best_ema {
                println!(
                    "  best val_acc_ema {:.4} (top-5 {:.4}) at epoch {} (step {}): {}",
                    b.accuracy,
                    b.top5,
                    b.epoch,
                    b.step,
                    run.best_ema_path().display()
                );
            }
            if let Some(v) = last {
                println!(
                    "  last val_acc {:.4} (top-5 {:.4}), val_loss {:.4}: {}",
                    v.accuracy,
                    v.top5,
                    v.loss,
                    run.model_path().display()
                );
            }
        }
        (None, _) => println!(
            "  no validation set: last weights in {}",
            run.model_path().display()
        ),
    }
    println!(
        "  state (resume): {}; config: {}; metrics: {}; curves: {}",
        run.state_path().display(),
        run.config_path().display(),
        s.log.display(),
        run.curves_path().display()
    );
    if s.steps <= s.warmup_steps {
        println!(
            "  note: the whole run was learning-rate warm-up ({} warm-up steps, {} steps run): the learning rate never reached its peak; train longer or use a shorter --warmup-epochs",
            s.warmup_steps, s.steps
        );
    }
}

/// "fine-tuning: ..." for a run with --layer-decay or --freeze-backbone.
fn describe_tuning(cfg: &TrainConfig) -> Option<String> {
    let tuning = cfg.tuning();
    let depth = cfg.model.depth;
    let mut parts = Vec::new();
    if let Some(r) = tuning.layer_decay {
        parts.push(format!(
            "layer decay {r}: the head at the learning rate, the last block at {r} times it, the embeddings at {r}^{} = {:.3e} times it",
            depth + 1,
            r.powi(depth as i32 + 1)
        ));
    }
    if tuning.freeze_backbone {
        let layout = ParamLayout::new(&cfg.model);
        let groups = ParamGroups::new(&layout, tuning);
        let trains: Vec<&str> = groups
            .tensors
            .iter()
            .filter(|t| !t.frozen)
            .map(|t| t.name.as_str())
            .collect();
        parts.push(format!(
            "backbone frozen: only {} train ({} of {} parameters)",
            trains.join(", "),
            groups.trainable().len(),
            layout.len
        ));
    }
    (!parts.is_empty()).then(|| format!("fine-tuning: {}", parts.join("; ")))
}

/// `--check`: what the run would be, without writing anything.
fn print_check(a: &TrainArgs, p: &Prepared, device: &Opened) {
    let what = if a.resume.is_some() {
        "resume"
    } else {
        "new run"
    };
    println!(
        "check: {what} {}: model {} ({} parameters) on {}, batch {}; train {} images, validation {} ({}); memory: {}; nothing written",
        p.out.display(),
        p.cfg.model.summary(),
        param_count(&p.cfg),
        device.describe(),
        p.cfg.batch_size,
        p.splits.train.len(),
        p.splits.val.len(),
        p.splits.val_source,
        p.memory
    );
    if let Some(line) = describe_tuning(&p.cfg) {
        println!("{line}");
    }
    if let Some(line) = super::pretrain::describe(&p.cfg) {
        println!("{line}");
    }
}
