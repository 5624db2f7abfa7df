//! The training loop: batches from the loader, one engine step each, the LR schedule,
//! logging and progress, evaluation and checkpoints at epoch ends, Ctrl-C and resume.

use super::config::TrainConfig;
use super::evaluate::{evaluate, EvalResult};
use super::metrics::{draw_curves, now_secs, MetricsLog, Record};
use super::run_dir::{LoopPosition, RunDir};
use super::schedule::LrSchedule;
use super::step_report::{Queued, StepReporter, Task};
use crate::data::mixup::{mix_batch, mixup_targets};
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
    /// Also save the state every N steps (for long epochs), not only at epoch ends.
    pub save_every: Option<u64>,
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

/// The best validation result of a run (top-1), kept as best.safetensors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Best {
    pub accuracy: f64,
    pub top5: f64,
    pub epoch: usize,
    pub step: u64,
}

impl Best {
    /// Makes `r` (at `epoch`, `step`) the best when it beats `best` (the first of equals
    /// stays); whether it did.
    fn improve(best: &mut Option<Best>, r: &EvalResult, epoch: usize, step: u64) -> bool {
        let better = best.is_none_or(|b| r.accuracy > b.accuracy);
        if better {
            *best = Some(Best {
                accuracy: r.accuracy,
                top5: r.top5,
                epoch,
                step,
            });
        }
        better
    }
}

/// What a run reports at the end.
#[derive(Debug)]
pub struct Summary {
    pub outcome: Outcome,
    pub steps: u64,
    /// Last validation result of this invocation (None without a validation set).
    pub val: Option<EvalResult>,
    /// The same for the weights' EMA (runs with --ema-decay).
    pub val_ema: Option<EvalResult>,
    /// Best validation top-1 of the whole run (earlier invocations included).
    pub best: Option<Best>,
    /// The same for the weights' EMA (runs with --ema-decay), kept as best_ema.safetensors.
    pub best_ema: Option<Best>,
    /// Training throughput over the steps of this invocation (the first step, which
    /// allocates and faults in the buffers, excluded when there are others).
    pub img_per_s: f64,
    /// Wall time of this invocation's loop, seconds.
    pub wall_secs: f64,
    /// Steps of LR warm-up and steps of the whole schedule.
    pub warmup_steps: u64,
    pub total_steps: u64,
    /// The metrics log written.
    pub log: PathBuf,
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
    let normalize = cfg.normalize();
    let meta = CheckpointMeta {
        config: cfg.model.clone(),
        classes: splits.train.classes.clone(),
        mean: cfg.mean.to_vec(),
        std: cfg.std.to_vec(),
    };
    let val = splits.val;
    let LoopSetup {
        mut loader,
        per_epoch,
        total,
        schedule,
        stop_at,
        log_path,
        mut log,
    } = LoopSetup::new(cfg, run, splits.train, start, opts)?;
    let started = Instant::now();
    let resuming = start.step > 0;
    let progress = Progress::new(opts.progress_bar, start.step, stop_at);
    let mut pos = start;
    let mut last_val = None;
    let mut last_val_ema = None;
    let mut outcome = if pos.step >= stop_at {
        Outcome::StepLimit
    } else {
        Outcome::Finished
    };
    // Engines report each step one call late: `in_flight` is the step queued last, whose
    // output comes with the next step or from `finish_steps`.
    let mut in_flight: Option<Queued> = None;
    let mut best = best_in(&log.records, Weights::Raw);
    let mut best_ema = best_in(&log.records, Weights::Ema);

    let mut reporter = StepReporter::new(
        Task::Training,
        run,
        &mut log,
        &progress,
        per_epoch,
        resuming.then_some(start.step),
    );

    while pos.step < stop_at {
        let mut batch = loader.next_batch();
        debug_assert_eq!(
            (batch.epoch, batch.index),
            (pos.epoch, pos.batch),
            "loader and loop disagree"
        );
        let lr = schedule.lr_at(pos.step);
        let queued = Queued::at(pos, lr, batch.len());
        let queued_at = queued.at;
        let targets = mix_targets(cfg, pos, &mut batch.images, &batch.labels);
        let out = engine.train_step(
            &batch.images,
            &batch.labels,
            targets.as_deref(),
            lr,
            cfg.label_smoothing,
            cfg.clip_grad,
        )?;
        if let (Some(done), Some(out)) = (in_flight.replace(queued), out) {
            reporter.report(&done, out.loss, out.correct, queued_at)?;
        }
        pos.step += 1;
        pos.batch += 1;
        let epoch_done = pos.batch as u64 == per_epoch;
        let epoch = pos.epoch;
        if epoch_done {
            pos.epoch += 1;
            pos.batch = 0;
        }
        let interrupted = opts.interrupt.load(Ordering::SeqCst);
        let stopping = pos.step >= stop_at || interrupted;
        let periodic = opts.save_every.is_some_and(|n| pos.step.is_multiple_of(n));
        if epoch_done || stopping || periodic {
            if let (Some(done), Some(out)) = (in_flight.take(), engine.finish_steps()?) {
                reporter.report(&done, out.loss, out.correct, Instant::now())?;
            }
        }
        if epoch_done || stopping {
            let e = reporter.epoch.take();
            let eta_secs = e.secs_per_step() * (stop_at - pos.step) as f64;
            let pace = format!(
                "{} in {:.1} s, {:.0} img/s, eta {}",
                if epoch_done { "epoch" } else { "steps" },
                e.secs,
                e.img_per_s(),
                hms(eta_secs)
            );
            let (mut is_best, mut is_best_ema) = (false, false);
            if !val.is_empty() && (epoch_done || !interrupted) {
                let r = evaluate(engine, &val, normalize).context("validation")?;
                let r_ema = match cfg.ema_decay {
                    Some(_) => Some(evaluate_ema(engine, &val, normalize)?),
                    None => None,
                };
                if !r.loss.is_finite() {
                    bail!(
                        "validation loss is {} after step {} (epoch {epoch}): the parameters diverged; stopping without saving them. {}",
                        r.loss,
                        pos.step,
                        reporter.after_divergence()
                    );
                }
                is_best = Best::improve(&mut best, &r, epoch, pos.step);
                is_best_ema = r_ema
                    .as_ref()
                    .is_some_and(|m| Best::improve(&mut best_ema, m, epoch, pos.step));
                let ema_line = r_ema.as_ref().map_or(String::new(), |m| {
                    format!(" val_loss_ema={:.4} val_acc_ema={:.4}", m.loss, m.accuracy)
                });
                progress.println(&format!(
                    "epoch {epoch} step {}: val_loss={:.4} val_acc={:.4} val_top5={:.4}{ema_line} train_acc={:.4}{} | {pace}",
                    pos.step,
                    r.loss,
                    r.accuracy,
                    r.top5,
                    e.accuracy(),
                    match (is_best, is_best_ema) {
                        (true, true) => " (best, best EMA)",
                        (true, false) => " (best)",
                        (false, true) => " (best EMA)",
                        (false, false) => "",
                    }
                ));
                reporter.push(Record::Eval {
                    epoch,
                    step: pos.step,
                    val_loss: r.loss,
                    val_acc: r.accuracy,
                    val_top5: r.top5,
                    train_acc: e.accuracy(),
                    epoch_secs: e.secs,
                    img_per_s: e.img_per_s(),
                    eta_secs,
                    time: now_secs(),
                    val_acc_ema: r_ema.as_ref().map(|m| m.accuracy),
                    val_loss_ema: r_ema.as_ref().map(|m| m.loss),
                    val_top5_ema: r_ema.as_ref().map(|m| m.top5),
                })?;
                last_val = Some(r);
                last_val_ema = r_ema;
            } else {
                progress.println(&format!(
                    "epoch {epoch} step {}: train_acc={:.4} | {pace}",
                    pos.step,
                    e.accuracy()
                ));
            }
            save(
                run,
                engine,
                &meta,
                pos,
                reporter.log,
                (is_best, is_best_ema),
            )?;
            reporter.saved_at = Some(pos.step);
        } else if periodic {
            save(run, engine, &meta, pos, reporter.log, (false, false))?;
            reporter.saved_at = Some(pos.step);
        }
        if interrupted && pos.step < stop_at {
            outcome = Outcome::Interrupted;
            break;
        }
        if pos.step >= stop_at && stop_at < total {
            outcome = Outcome::StepLimit;
        }
    }
    let img_per_s = reporter.img_per_s(cfg.batch_size);
    progress.finish();
    Ok(Summary {
        outcome,
        steps: pos.step,
        val: last_val,
        val_ema: last_val_ema,
        best,
        best_ema,
        img_per_s,
        wall_secs: started.elapsed().as_secs_f64(),
        warmup_steps: schedule.warmup_steps,
        total_steps: total,
        log: log_path,
    })
}

/// Mixup/CutMix of the training batch at `pos` (images [B, C, S_h, S_w], normalised, mixed
/// in place) and its soft targets [B, K] with the label smoothing folded in; `None` when the
/// run does not mix. From `--mixup-off-epoch` on, nothing is mixed but the targets stay soft
/// (λ = 1: the smoothed one-hot), as timm's loop once `mixup_enabled` is off.
pub fn mix_targets(
    cfg: &TrainConfig,
    pos: LoopPosition,
    images: &mut [f32],
    labels: &[u32],
) -> Option<Vec<f32>> {
    let m = cfg.mixup_config()?;
    let classes = cfg.model.num_classes;
    if !cfg.mixes_epoch(pos.epoch) {
        return Some(mixup_targets(labels, classes, 1.0, m.label_smoothing));
    }
    let (targets, _) = mix_batch(
        &m,
        cfg.seed,
        pos.epoch as u64,
        pos.batch as u64,
        images,
        labels,
        cfg.model.in_chans,
        cfg.model.image_size,
        classes,
    );
    Some(targets)
}

/// What both training loops (this one and `pretrain::trainer`) start from: the loader at the
/// run's position, the schedule over the whole run, where the loop stops and the metrics log
/// (records after a resumed state dropped).
pub(crate) struct LoopSetup {
    pub loader: BatchLoader,
    pub per_epoch: u64,
    /// Steps of the whole schedule.
    pub total: u64,
    pub schedule: LrSchedule,
    /// The last step of this invocation (`--steps`).
    pub stop_at: u64,
    pub log_path: PathBuf,
    pub log: MetricsLog,
}

impl LoopSetup {
    pub(crate) fn new(
        cfg: &TrainConfig,
        run: &RunDir,
        train: crate::data::Dataset,
        start: LoopPosition,
        opts: &RunOptions,
    ) -> Result<Self> {
        let loader_cfg = LoaderConfig {
            batch_size: cfg.batch_size,
            shuffle: cfg.shuffle,
            augment: cfg.augment,
            // As timm's training loader: every step sees a full batch.
            drop_last: true,
            seed: cfg.seed,
            normalize: cfg.normalize(),
        };
        let loader = BatchLoader::with_recipe(
            Arc::new(train),
            loader_cfg,
            cfg.augment_recipe(),
            start.epoch,
            start.batch,
        )
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
        let log = MetricsLog::open(&log_path, (start.step > 0).then_some(start.step))
            .with_context(|| format!("{}: cannot open the metrics log", log_path.display()))?;
        Ok(Self {
            loader,
            per_epoch,
            total,
            schedule,
            stop_at,
            log_path,
            log,
        })
    }
}

/// Which weights a validation result is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Weights {
    Raw,
    /// The weights' EMA (`--ema-decay`).
    Ema,
}

/// The best validation top-1 of `weights` in the records (the first of equals), for a
/// resumed run.
fn best_in(records: &[Record], weights: Weights) -> Option<Best> {
    records.iter().fold(None, |best: Option<Best>, r| {
        let Record::Eval {
            epoch,
            step,
            val_acc,
            val_top5,
            val_acc_ema,
            val_top5_ema,
            ..
        } = *r
        else {
            return best;
        };
        let (accuracy, top5) = match weights {
            Weights::Raw => (val_acc, val_top5),
            Weights::Ema => match val_acc_ema {
                Some(a) => (a, val_top5_ema.unwrap_or(0.0)),
                None => return best,
            },
        };
        if best.is_none_or(|b| accuracy > b.accuracy) {
            Some(Best {
                accuracy,
                top5,
                epoch,
                step,
            })
        } else {
            best
        }
    })
}

/// "1h 02m 03s", "4m 05s", "6s".
pub fn hms(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s:02}s"),
        _ => format!("{h}h {m:02}m {s:02}s"),
    }
}

/// The validation result of the weights' EMA: the average swapped in for the evaluation
/// and back out (bitwise).
fn evaluate_ema(
    engine: &mut dyn TrainEngine,
    val: &crate::data::Dataset,
    normalize: Normalize,
) -> Result<EvalResult> {
    engine.swap_ema()?;
    let r = evaluate(engine, val, normalize).context("validation of the EMA weights");
    // Swapped back even when the evaluation failed, so that what is saved stays right.
    engine.swap_ema()?;
    r
}

/// model.safetensors, model_ema.safetensors (with --ema-decay), state.safetensors and
/// curves.png, each written atomically.
/// `best`: the parameters (first) and the EMA (second) are the best validation results so
/// far, also saved as best.safetensors and best_ema.safetensors.
fn save(
    run: &RunDir,
    engine: &dyn TrainEngine,
    meta: &CheckpointMeta,
    pos: LoopPosition,
    log: &MetricsLog,
    best: (bool, bool),
) -> Result<()> {
    let params = engine.params()?;
    let layout = crate::model::ParamLayout::new(&meta.config);
    save_checkpoint(&run.model_path(), &layout, &params, meta)?;
    if best.0 {
        save_checkpoint(&run.best_path(), &layout, &params, meta)?;
    }
    let ema = engine.ema_params()?;
    if let Some(e) = &ema {
        save_checkpoint(&run.ema_path(), &layout, e, meta)?;
        if best.1 {
            save_checkpoint(&run.best_ema_path(), &layout, e, meta)?;
        }
    }
    run.save_state(&params, &engine.optimizer_state()?, ema.as_deref(), pos)
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
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
}

impl Progress {
    pub(crate) fn new(bar: bool, start: u64, total: u64) -> Self {
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

    pub(crate) fn step(
        &self,
        pos: LoopPosition,
        per_epoch: u64,
        loss: f64,
        lr: f64,
        img_per_s: f64,
    ) {
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

    pub(crate) fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(step: u64, acc: f64, ema: Option<(f64, f64)>) -> Record {
        Record::Eval {
            epoch: step as usize,
            step,
            val_loss: 1.0,
            val_acc: acc,
            val_top5: acc + 0.1,
            train_acc: 0.0,
            epoch_secs: 0.0,
            img_per_s: 0.0,
            eta_secs: 0.0,
            time: 0.0,
            val_acc_ema: ema.map(|e| e.0),
            val_loss_ema: ema.map(|_| 1.0),
            val_top5_ema: ema.map(|e| e.1),
        }
    }

    #[test]
    fn a_resumed_run_finds_the_best_of_the_weights_and_of_their_ema_apart() {
        let records = [
            eval(1, 0.5, Some((0.4, 0.8))),
            eval(2, 0.7, Some((0.6, 0.9))),
            eval(3, 0.7, Some((0.65, 0.95))),
            eval(4, 0.6, Some((0.65, 0.99))),
        ];
        let raw = best_in(&records, Weights::Raw).expect("raw");
        // the first of equals
        assert_eq!((raw.step, raw.accuracy, raw.top5), (2, 0.7, 0.7 + 0.1));
        let ema = best_in(&records, Weights::Ema).expect("ema");
        assert_eq!((ema.step, ema.accuracy, ema.top5), (3, 0.65, 0.95));
        // a log without the EMA's figures has no best EMA
        assert_eq!(best_in(&[eval(1, 0.5, None)], Weights::Ema), None);
    }
}
