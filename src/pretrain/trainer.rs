//! The pre-training loop (`vitk pretrain`): batches from the loader with masks drawn per image
//! from (seed, epoch, position), one engine step each, the LR schedule, the metrics log and
//! progress, and at each epoch end the validation loss, reconstructions.png and the
//! checkpoints; Ctrl-C, `--steps`, `--save-every` and resume as `vitk train` does them.

use super::reconstructions::{
    patch_stats, patchify, render, to_byte, unpatchify, Reconstruction, MAX_IMAGES,
};
use super::{Objective, PatchMasks, PretrainEngine};
use crate::atomic::write_atomic;
use crate::attention_maps::render::png_bytes;
use crate::cpu::mim::NORM_PIX_EPS;
use crate::cpu::mim_colour::{COLOUR_CLASSES, COLOUR_LEVELS};
use crate::data::{eval_batches, Dataset, Normalize, Splits};
use crate::model::{save_tensors, CheckpointMeta, PretrainLayout};
use crate::train::metrics::{draw_curves, now_secs, MetricsLog, Record};
use crate::train::step_report::{Queued, StepReporter, Task};
use crate::train::trainer::{LoopSetup, Progress};
use crate::train::{hms, LoopPosition, Outcome, RunDir, RunOptions, TrainConfig};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The epoch key of the validation masks: one fixed set of masks for the whole run, so that
/// the validation loss of one epoch compares with the next (training epochs never reach it).
pub const VALIDATION_EPOCH: u64 = u64::MAX;

/// What a pre-training run reports at the end.
#[derive(Debug)]
pub struct PretrainSummary {
    pub outcome: Outcome,
    pub steps: u64,
    /// The last validation loss of this invocation (None without validation images).
    pub val_loss: Option<f64>,
    /// Training throughput of this invocation (the first step excluded when there are others).
    pub img_per_s: f64,
    pub wall_secs: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub log: PathBuf,
}

/// pretrain.safetensors: the mask token and the decoder, beside the encoder's model.safetensors.
pub fn pretrain_path(run: &RunDir) -> PathBuf {
    run.path.join("pretrain.safetensors")
}

/// reconstructions.png, redrawn at each epoch end.
pub fn reconstructions_path(run: &RunDir) -> PathBuf {
    run.path.join("reconstructions.png")
}

/// Runs (or continues from `start`) the pre-training `cfg` describes (`cfg.pretrain` set)
/// in `run`.
pub fn pretrain(
    cfg: &TrainConfig,
    run: &RunDir,
    engine: &mut dyn PretrainEngine,
    splits: Splits,
    start: LoopPosition,
    opts: &RunOptions,
) -> Result<PretrainSummary> {
    let settings = cfg
        .pretrain
        .as_ref()
        .context("pretrain: the config has no pre-training settings")?;
    let objective = settings.objective().map_err(anyhow::Error::msg)?;
    let ratio = settings.mask_ratio;
    let normalize = cfg.normalize();
    let layout = PretrainLayout::new(&cfg.model, objective.decoder_outputs(&cfg.model));
    let meta = CheckpointMeta {
        config: cfg.model.clone(),
        classes: splits.train.classes.clone(),
        mean: cfg.mean.to_vec(),
        std: cfg.std.to_vec(),
    };
    let patches = cfg.model.num_patches();
    let val = splits.val;
    // The pictured images: the first validation images, else the first training images.
    let pictured = first_images(if val.is_empty() { &splits.train } else { &val });
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
    let mut outcome = if pos.step >= stop_at {
        Outcome::StepLimit
    } else {
        Outcome::Finished
    };
    let mut last_val = None;
    // Engines report each step one call late: `in_flight` is the step queued last.
    let mut in_flight: Option<Queued> = None;
    let mut reporter = StepReporter::new(
        Task::Pretraining,
        run,
        &mut log,
        &progress,
        per_epoch,
        resuming.then_some(start.step),
    );

    while pos.step < stop_at {
        let batch = loader.next_batch();
        let b = batch.len();
        let first = (batch.index * cfg.batch_size) as u64;
        let masks = PatchMasks::draw(
            &objective,
            cfg.seed,
            batch.epoch as u64,
            first..first + b as u64,
            patches,
            ratio,
        );
        let lr = schedule.lr_at(pos.step);
        let queued = Queued::at(pos, lr, b);
        let queued_at = queued.at;
        let out = engine.pretrain_step(&batch.images, &masks, lr, cfg.clip_grad)?;
        if let (Some(done), Some(out)) = (in_flight.replace(queued), out) {
            reporter.report(&done, out.loss, 0, queued_at)?;
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
                reporter.report(&done, out.loss, 0, Instant::now())?;
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
            if !val.is_empty() && (epoch_done || !interrupted) {
                let loss = validation_loss(
                    engine, &val, normalize, &objective, cfg.seed, ratio, patches,
                )?;
                if !loss.is_finite() {
                    bail!(
                        "validation loss is {loss} after step {} (epoch {epoch}): the parameters diverged; stopping without saving them. {}",
                        pos.step,
                        reporter.after_divergence()
                    );
                }
                progress.println(&format!(
                    "epoch {epoch} step {}: val_loss={loss:.4} | {pace}",
                    pos.step
                ));
                reporter.push(Record::PretrainEval {
                    epoch,
                    step: pos.step,
                    val_loss: loss,
                    epoch_secs: e.secs,
                    img_per_s: e.img_per_s(),
                    eta_secs,
                    time: now_secs(),
                })?;
                last_val = Some(loss);
            } else {
                progress.println(&format!("epoch {epoch} step {} | {pace}", pos.step));
            }
            save(run, engine, &layout, &meta, pos, reporter.log)?;
            draw_reconstructions(run, engine, &pictured, cfg, &objective, pos.step, epoch)?;
            reporter.saved_at = Some(pos.step);
        } else if periodic {
            save(run, engine, &layout, &meta, pos, reporter.log)?;
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
    Ok(PretrainSummary {
        outcome,
        steps: pos.step,
        val_loss: last_val,
        img_per_s,
        wall_secs: started.elapsed().as_secs_f64(),
        warmup_steps: schedule.warmup_steps,
        total_steps: total,
        log: log_path,
    })
}

/// The masked-prediction loss over `val` with the run's fixed validation masks (position =
/// index in the set), weighted by images.
pub fn validation_loss(
    engine: &mut dyn PretrainEngine,
    val: &Dataset,
    normalize: Normalize,
    objective: &Objective,
    seed: u64,
    ratio: f64,
    patches: usize,
) -> Result<f64> {
    let mut sum = 0.0;
    let mut first = 0u64;
    for batch in eval_batches(val, engine.max_batch(), normalize)? {
        let b = batch.len() as u64;
        let masks = PatchMasks::draw(
            objective,
            seed,
            VALIDATION_EPOCH,
            first..first + b,
            patches,
            ratio,
        );
        let (loss, _) = engine.evaluate(&batch.images, &masks)?;
        sum += loss * b as f64;
        first += b;
    }
    Ok(sum / first.max(1) as f64)
}

/// The first [`MAX_IMAGES`] images of `data` (u8 [n, C, S_h, S_w]), the ones
/// reconstructions.png shows at every epoch.
fn first_images(data: &Dataset) -> Dataset {
    let n = data.len().min(MAX_IMAGES);
    Dataset {
        images: data.images[..n * data.channels * data.size.pixels()].to_vec(),
        labels: data.labels[..n].to_vec(),
        classes: data.classes.clone(),
        channels: data.channels,
        size: data.size,
    }
}

/// model.safetensors (the encoder with timm's names, no head: what `vitk train --init-from`
/// fine-tunes), pretrain.safetensors (mask token and decoder), state.safetensors (everything,
/// for --resume) and curves.png, each written atomically.
fn save(
    run: &RunDir,
    engine: &dyn PretrainEngine,
    layout: &PretrainLayout,
    meta: &CheckpointMeta,
    pos: LoopPosition,
    log: &MetricsLog,
) -> Result<()> {
    let params = engine.params()?;
    let (encoder, pretraining): (Vec<_>, Vec<_>) = layout
        .entries
        .iter()
        .cloned()
        .partition(|e| e.range.end <= layout.encoder_len);
    save_tensors(&run.model_path(), &encoder, &params, meta)?;
    save_tensors(&pretrain_path(run), &pretraining, &params, meta)?;
    run.save_state(&params, &engine.optimizer_state()?, None, pos)
        .map_err(anyhow::Error::msg)?;
    if let Err(e) = draw_curves(&log.records, &run.curves_path()) {
        eprintln!(
            "warning: {}: could not draw the curves: {e}",
            run.curves_path().display()
        );
    }
    Ok(())
}

/// reconstructions.png of the pictured images with their validation masks after `step`
/// (in epoch `epoch`, 0-based as the log counts): original, masked
/// input and the model's prediction (pixels: the predicted patches over the visible ones, as
/// SimMIM and MAE show them; colour: each predicted patch filled with its predicted mean
/// colour). A picture that cannot be drawn is a warning, not the end of the run.
fn draw_reconstructions(
    run: &RunDir,
    engine: &mut dyn PretrainEngine,
    pictured: &Dataset,
    cfg: &TrainConfig,
    objective: &Objective,
    step: u64,
    epoch: usize,
) -> Result<()> {
    if pictured.is_empty() || pictured.channels != 3 {
        return Ok(());
    }
    let normalize = cfg.normalize();
    let ratio = cfg.pretrain.as_ref().map_or(0.0, |p| p.mask_ratio);
    let (size, patch) = (cfg.model.image_size, cfg.model.patch_size);
    let n = cfg.model.num_patches();
    let Some(batch) = eval_batches(pictured, pictured.len(), normalize)?.next() else {
        return Ok(());
    };
    let b = batch.len();
    let masks = PatchMasks::draw(objective, cfg.seed, VALIDATION_EPOCH, 0..b as u64, n, ratio);
    let (loss, pred) = engine.evaluate(&batch.images, &masks)?;
    let k = pred.len() / (b * n).max(1);
    let image_len = 3 * size.pixels();
    let mut columns = Vec::with_capacity(b);
    for i in 0..b {
        let original = &pictured.images[i * image_len..(i + 1) * image_len];
        let x = &batch.images[i * image_len..(i + 1) * image_len];
        let mask = &masks.predicted[i * n..(i + 1) * n];
        let p = &pred[i * n * k..(i + 1) * n * k];
        let predicted = match objective {
            Objective::Pixels(o) => {
                let stats = o
                    .norm_pix
                    .then(|| patch_stats(&patchify(x, size, patch), k, NORM_PIX_EPS));
                unpatchify(p, size, patch, cfg.mean, cfg.std, stats.as_deref())
            }
            Objective::Colour => Ok(colour_image(p, size, patch)),
        };
        let reconstruction = paste_visible(
            &predicted.map_err(anyhow::Error::msg)?,
            original,
            size,
            patch,
            mask,
        );
        columns.push((original, mask, reconstruction));
    }
    let columns: Vec<Reconstruction> = columns
        .iter()
        .map(|(original, mask, reconstruction)| Reconstruction {
            original,
            mask,
            reconstruction,
        })
        .collect();
    let header = format!(
        "{} objective, mask ratio {ratio}: step {step} (epoch {epoch}), loss {loss:.4} on these images",
        objective.name(),
    );
    let path = reconstructions_path(run);
    let drawn = render(&columns, size, patch, &header)
        .and_then(|sheet| png_bytes(&sheet))
        .and_then(|png| write_atomic(&path, &png).map_err(|e| e.to_string()));
    if let Err(e) = drawn {
        eprintln!("warning: {}: could not draw: {e}", path.display());
    }
    Ok(())
}

/// `reconstruction` with the visible patches (mask 0) taken from `original`: the model is
/// asked for the masked ones only. Images [3, S_h, S_w], mask [N].
fn paste_visible(
    reconstruction: &[u8],
    original: &[u8],
    size: crate::model::ImageSize,
    patch: usize,
    mask: &[u8],
) -> Vec<u8> {
    let (h, w) = (size.height, size.width);
    let (_, gw) = size.grid(patch);
    reconstruction
        .iter()
        .zip(original)
        .enumerate()
        .map(|(i, (&r, &o))| {
            let (y, x) = (i / w % h, i % w);
            if mask[(y / patch) * gw + x / patch] == 0 {
                o
            } else {
                r
            }
        })
        .collect()
}

/// An image [3, S_h, S_w] with each patch filled by the centre of its arg-max colour class
/// (logits [N, 512]: class r·64 + g·8 + b, level l ↦ (l + 0.5)/8).
fn colour_image(logits: &[f32], size: crate::model::ImageSize, patch: usize) -> Vec<u8> {
    let (h, w) = (size.height, size.width);
    let (_, gw) = size.grid(patch);
    let levels = COLOUR_LEVELS as usize;
    let class: Vec<usize> = logits
        .chunks_exact(COLOUR_CLASSES)
        .map(crate::train::evaluate::argmax)
        .collect();
    let mut out = vec![0u8; 3 * h * w];
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let k = class[(y / patch) * gw + x / patch];
                let level = k / levels.pow(2 - c as u32) % levels;
                out[(c * h + y) * w + x] = to_byte((level as f32 + 0.5) / levels as f32);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ImageSize;

    #[test]
    fn visible_patches_come_from_the_original() {
        // 2x4 image of 2x2 patches: patch 0 masked (reconstruction), patch 1 visible.
        let size = ImageSize {
            height: 2,
            width: 4,
        };
        let original: Vec<u8> = (0..24).collect();
        let reconstruction = vec![200u8; 24];
        let out = paste_visible(&reconstruction, &original, size, 2, &[1, 0]);
        for c in 0..3 {
            for y in 0..2 {
                for x in 0..4 {
                    let i = (c * 2 + y) * 4 + x;
                    let want = if x < 2 { 200 } else { original[i] };
                    assert_eq!(out[i], want, "channel {c} ({y}, {x})");
                }
            }
        }
    }

    #[test]
    fn predicted_colours_fill_their_patches_with_the_class_centre() {
        // Two 2x2 patches side by side; patch 0's arg-max is class (r, g, b) = (7, 0, 3),
        // patch 1's is (0, 5, 1).
        let size = ImageSize {
            height: 2,
            width: 4,
        };
        let mut logits = vec![0.0f32; 2 * COLOUR_CLASSES];
        logits[7 * 64 + 3] = 1.0;
        logits[COLOUR_CLASSES + 5 * 8 + 1] = 1.0;
        let img = colour_image(&logits, size, 2);
        let centre = |l: usize| to_byte((l as f32 + 0.5) / 8.0);
        for (c, (left, right)) in [(7, 0), (0, 5), (3, 1)].into_iter().enumerate() {
            for y in 0..2 {
                for x in 0..4 {
                    let want = if x < 2 { centre(left) } else { centre(right) };
                    assert_eq!(img[(c * 2 + y) * 4 + x], want, "channel {c} ({y}, {x})");
                }
            }
        }
    }
}
