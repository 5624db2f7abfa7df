//! `vitk pretrain`: masked image modelling without labels. The flags of `vitk train` (data,
//! model, schedule, AdamW, device, run directory, resume) plus the objective's; the run
//! itself goes through `vitk train`'s preparation (cli/train.rs) and the pre-training loop.

use super::parse::number;
use super::train::{self, TrainArgs};
use anyhow::{bail, Result};
use clap::Args;
use std::process::ExitCode;
use vitk::pretrain::trainer::{pretrain_path, reconstructions_path};
use vitk::pretrain::{Objective, PretrainConfig, PretrainSummary};
use vitk::train::{hms, Outcome, RunDir, TrainConfig};

#[derive(Args)]
pub struct PretrainArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// What is predicted: pixels (SimMIM: masked patches replaced by a learned mask token,
    /// their pixels predicted, L1 or L2) or color (the ViT paper: patches corrupted as BERT
    /// does, their mean colour predicted in 512 classes) [default: pixels].
    #[arg(long)]
    objective: Option<String>,
    /// Fraction of each image's patches masked (pixels) or corrupted (color), in (0, 1]
    /// [default: 0.6 for pixels, 0.5 for color].
    #[arg(long, value_parser = number, allow_negative_numbers = true)]
    mask_ratio: Option<f64>,
    /// Pixel loss over the masked patches: l1 (SimMIM) or l2 (MAE) [default: l1].
    #[arg(long)]
    loss: Option<String>,
    /// Predict each patch's pixels normalised by the patch's own mean and std (MAE's
    /// norm_pix_loss) instead of the raw (normalised-image) values.
    #[arg(long)]
    norm_pix: bool,
}

pub fn run(a: PretrainArgs) -> Result<ExitCode> {
    let given = [
        ("--objective", a.objective.is_some()),
        ("--mask-ratio", a.mask_ratio.is_some()),
        ("--loss", a.loss.is_some()),
        ("--norm-pix", a.norm_pix),
    ];
    let settings = if a.train.resuming() {
        let flags: Vec<&str> = given.iter().filter(|f| f.1).map(|f| f.0).collect();
        if !flags.is_empty() {
            bail!(
                "{} cannot be combined with --resume: a resumed run keeps the settings in its config.json",
                flags.join(", ")
            );
        }
        None
    } else {
        let objective = a.objective.unwrap_or_else(|| "pixels".into());
        let default_ratio = match objective.as_str() {
            "color" => Objective::Colour.default_mask_ratio(),
            _ => Objective::simmim().default_mask_ratio(),
        };
        let settings = PretrainConfig {
            objective,
            mask_ratio: a.mask_ratio.unwrap_or(default_ratio),
            loss: a.loss.unwrap_or_else(|| "l1".into()),
            norm_pix: a.norm_pix,
        };
        settings.validate().map_err(anyhow::Error::msg)?;
        Some(settings)
    };
    train::run_mode(a.train, true, settings)
}

/// "pre-training: ..." for a pre-training run's header.
pub fn describe(cfg: &TrainConfig) -> Option<String> {
    let p = cfg.pretrain.as_ref()?;
    Some(match p.objective.as_str() {
        "color" => format!(
            "pre-training: color objective, {}% of the patches corrupted (80% mask token, 10% another patch, 10% unchanged), their mean colour predicted (512 classes)",
            p.mask_ratio * 100.0
        ),
        _ => format!(
            "pre-training: pixels objective, {}% of the patches masked, their pixels predicted, {} loss{}",
            p.mask_ratio * 100.0,
            p.loss.to_uppercase(),
            if p.norm_pix {
                ", targets normalised per patch"
            } else {
                ""
            }
        ),
    })
}

/// The end of a pre-training run: what was done, where the files are, the final line.
pub fn finish(s: &PretrainSummary, run: &RunDir) -> ExitCode {
    let how = match s.outcome {
        Outcome::Finished => format!("all {} steps of the schedule done", s.total_steps),
        Outcome::StepLimit => format!(
            "stopped by --steps at step {} of {}",
            s.steps, s.total_steps
        ),
        Outcome::Interrupted => {
            eprintln!(
                "interrupted at step {}: state saved; continue with: vitk pretrain --resume {}",
                s.steps,
                run.path.display()
            );
            format!("interrupted at step {} of {}", s.steps, s.total_steps)
        }
    };
    println!(
        "run summary: {how}, {} in this invocation",
        hms(s.wall_secs)
    );
    println!(
        "  encoder (fine-tune with vitk train --init-from): {}",
        run.model_path().display()
    );
    println!(
        "  mask token and decoder: {}; reconstructions: {}",
        pretrain_path(run).display(),
        reconstructions_path(run).display()
    );
    println!(
        "  state (resume): {}; config: {}; metrics: {}; curves: {}",
        run.state_path().display(),
        run.config_path().display(),
        s.log.display(),
        run.curves_path().display()
    );
    let val_loss = s
        .val_loss
        .map_or_else(|| "n/a".to_string(), |l| format!("{l:.4}"));
    println!("final: val_loss={val_loss} img_per_s={:.1}", s.img_per_s);
    if s.outcome == Outcome::Interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    }
}
