//! The training loop: batches from the loader, one engine step each, the LR schedule,
//! logging and progress, evaluation and checkpoints at epoch ends, Ctrl-C and resume.

use super::config::TrainConfig;
use super::evaluate::{evaluate, EvalResult};
use super::metrics::{draw_curves, MetricsLog, Record};
use super::run_dir::{LoopPosition, RunDir};
use super::schedule::LrSchedule;
use crate::data::{BatchLoader, LoaderConfig, Normalize, Splits};
use crate::engine::TrainEngine;
use crate::model::{save_checkpoint, CheckpointMeta};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// How a run is driven (not part of its config: none of these change the numbers).
pub struct RunOptions {
    /// Stop after this many optimizer steps in total (the schedule still spans all epochs).
    pub max_steps: Option<u64>,
    /// Metrics log path (default: RUN_DIR/metrics.jsonl).
    pub log: Option<PathBuf>,
    /// Set by the Ctrl-C handler: save the state and stop after the current step.
    pub interrupt: Arc<AtomicBool>,
    /// Draw a progress bar (a terminal) instead of periodic plain lines.
    pub progress_bar: bool,
}

/// Why the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// All epochs done.
    Finished,
    /// --steps reached.
    StepLimit,
    /// Ctrl-C: the state is saved, --resume continues.
    Interrupted,
}

/// What a run reports at the end.
#[derive(Debug)]
pub struct Summary {
    pub outcome: Outcome,
    pub steps: u64,
    /// Last validation result (None without a validation set).
    pub val: Option<EvalResult>,
    /// Training throughput over the steps of this invocation (the first step, which
    /// allocates and faults in the buffers, excluded when there are others).
    pub img_per_s: f64,
}

/// Runs (or continues from `start`) the training described by `cfg` in `run`.
pub fn train(
    cfg: &TrainConfig,
    run: &RunDir,
    engine: &mut dyn TrainEngine,
    splits: Splits,
    start: LoopPosition,
    opts: &RunOptions,
) -> Result<Summary> {
    let normalize = Normalize {
        mean: cfg.mean,
        std: cfg.std,
    };
    let meta = CheckpointMeta {
        config: cfg.model.clone(),
        classes: splits.train.classes.clone(),
        mean: cfg.mean.to_vec(),
        std: cfg.std.to_vec(),
    };
    let loader_cfg = LoaderConfig {
        batch_size: cfg.batch_size,
        shuffle: cfg.shuffle,
        augment: cfg.augment,
        // As timm's training loader: every step sees a full batch.
        drop_last: true,
        seed: cfg.seed,
        normalize,
    };
    let val = splits.val;
    let mut loader = BatchLoader::new(Arc::new(splits.train), loader_cfg, start.epoch, start.batch)
        .context("training data")?;
    let per_epoch = loader.batches_per_epoch() as u64;
    let total = per_epoch * cfg.epochs as u64;
    let schedule = LrSchedule {
        kind: cfg.schedule,
        base_lr: cfg.lr,
        min_lr: cfg.min_lr,
        warmup_steps: (cfg.warmup_epochs * per_epoch as f64).round() as u64,
        total_steps: total,
    };
    let stop_at = opts.max_steps.map_or(total, |s| s.min(total));
    let log_path = opts.log.clone().unwrap_or_else(|| run.metrics_path());
    let resuming = start.step > 0;
    let mut log = MetricsLog::open(&log_path, resuming.then_some(start.step))
        .with_context(|| format!("{}: cannot open the metrics log", log_path.display()))?;

    let progress = Progress::new(opts.progress_bar, start.step, stop_at);
    let mut pos = start;
    let mut last_val = None;
    let (mut timed_images, mut timed_secs, mut first_step_secs) = (0usize, 0.0f64, None);
    let mut saved_at = start.step;
    let mut outcome = if pos.step >= stop_at {
        Outcome::StepLimit
    } else {
        Outcome::Finished
    };

    while pos.step < stop_at {
        let batch = loader.next_batch();
        debug_assert_eq!(
            (batch.epoch, batch.index),
            (pos.epoch, pos.batch),
            "loader and loop disagree"
        );
        let lr = schedule.lr_at(pos.step);
        let t0 = Instant::now();
        let out = engine.train_step(
            &batch.images,
            &batch.labels,
            lr,
            cfg.label_smoothing,
            cfg.clip_grad,
        )?;
        let secs = t0.elapsed().as_secs_f64();
        if !out.loss.is_finite() {
            bail!(
                "training loss is {} at step {} (epoch {}): stopping; the last saved checkpoint in {} (step {saved_at}) is kept. Try a lower --lr or --clip-grad.",
                out.loss,
                pos.step + 1,
                pos.epoch,
                run.path.display()
            );
        }
        if first_step_secs.is_none() {
            first_step_secs = Some(secs);
        } else {
            timed_images += batch.len();
            timed_secs += secs;
        }
        pos.step += 1;
        pos.batch += 1;
        let epoch_done = pos.batch as u64 == per_epoch;
        let img_per_s = batch.len() as f64 / secs;
        log.push(Record::Step {
            step: pos.step,
            epoch: pos.epoch,
            loss: out.loss,
            lr,
            img_per_s,
        })
        .with_context(|| format!("{}: cannot write", log.path().display()))?;
        progress.step(pos, per_epoch, out.loss, lr, img_per_s);
        let epoch = pos.epoch;
        if epoch_done {
            pos.epoch += 1;
            pos.batch = 0;
        }
        let interrupted = opts.interrupt.load(Ordering::SeqCst);
        let stopping = pos.step >= stop_at || interrupted;
        if epoch_done || stopping {
            if !val.is_empty() && (epoch_done || !interrupted) {
                let r = evaluate(engine, &val, normalize).context("validation")?;
                if !r.loss.is_finite() {
                    bail!(
                        "validation loss is {} after step {} (epoch {epoch}): the parameters diverged; stopping without saving them. The last saved checkpoint in {} (step {saved_at}) is kept. Try a lower --lr or --clip-grad.",
                        r.loss,
                        pos.step,
                        run.path.display()
                    );
                }
                progress.println(&format!(
                    "epoch {epoch} step {}: val_loss={:.4} val_acc={:.4}",
                    pos.step, r.loss, r.accuracy
                ));
                log.push(Record::Eval {
                    epoch,
                    step: pos.step,
                    val_loss: r.loss,
                    val_acc: r.accuracy,
                })
                .with_context(|| format!("{}: cannot write", log.path().display()))?;
                last_val = Some(r);
            }
            save(run, engine, &meta, pos, &log)?;
            saved_at = pos.step;
        }
        if interrupted && pos.step < stop_at {
            outcome = Outcome::Interrupted;
            break;
        }
        if pos.step >= stop_at && stop_at < total {
            outcome = Outcome::StepLimit;
        }
    }
    progress.finish();
    let img_per_s = if timed_secs > 0.0 {
        timed_images as f64 / timed_secs
    } else {
        first_step_secs.map_or(0.0, |s| cfg.batch_size as f64 / s)
    };
    Ok(Summary {
        outcome,
        steps: pos.step,
        val: last_val,
        img_per_s,
    })
}

/// model.safetensors, state.safetensors and curves.png, each written atomically.
fn save(
    run: &RunDir,
    engine: &dyn TrainEngine,
    meta: &CheckpointMeta,
    pos: LoopPosition,
    log: &MetricsLog,
) -> Result<()> {
    let params = engine.params()?;
    let layout = crate::model::ParamLayout::new(&meta.config);
    save_checkpoint(&run.model_path(), &layout, &params, meta)?;
    run.save_state(&params, &engine.optimizer_state()?, pos)
        .map_err(anyhow::Error::msg)?;
    // The curves are a convenience: failing to draw them must not stop training.
    if let Err(e) = draw_curves(&log.records, &run.curves_path()) {
        eprintln!(
            "warning: {}: could not draw the curves: {e}",
            run.curves_path().display()
        );
    }
    Ok(())
}

/// A progress bar on a terminal, plain lines elsewhere (logs, CI).
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
}

impl Progress {
    fn new(bar: bool, start: u64, total: u64) -> Self {
        let bar = bar.then(|| {
            let b = ProgressBar::new(total).with_position(start);
            let style = ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            b.set_style(style);
            b
        });
        Self { bar, total }
    }

    fn step(&self, pos: LoopPosition, per_epoch: u64, loss: f64, lr: f64, img_per_s: f64) {
        let msg = format!(
            "epoch {} loss {loss:.4} lr {lr:.2e} {img_per_s:.0} img/s",
            pos.epoch
        );
        match &self.bar {
            Some(b) => {
                b.set_position(pos.step);
                b.set_message(msg);
            }
            None => {
                let every = (per_epoch / 5).max(1);
                if pos.step.is_multiple_of(every) || pos.step == self.total {
                    eprintln!("step {}/{} {msg}", pos.step, self.total);
                }
            }
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
