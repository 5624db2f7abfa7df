//! vitk: train, evaluate and run Vision Transformers.
//!
//!     vitk train                                   # micro ViT on the built-in synthetic set
//!     vitk train --data cifar-10-batches-bin --model seed --epochs 100
//!     vitk pretrain --data DIR --epochs 50          # masked patch prediction, no labels
//!     vitk train --data DIR --init-from runs/run-1/model.safetensors
//!     vitk eval --data DIR --checkpoint runs/run-1/model.safetensors
//!     vitk predict --checkpoint runs/run-1/model.safetensors cat.png
//!     vitk attention --checkpoint runs/run-1/model.safetensors cat.png --out maps
//!     vitk synth --out synth-bin
//!     vitk profile --model seed --batch-size 128 --precision bf16
//!     vitk info

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "vitk",
    version,
    about = "Vision Transformer training engine (hand-written forward/backward, rayon CPU engine)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a ViT (with no --data: the micro preset on the built-in synthetic set).
    Train(Box<cli::train::TrainArgs>),
    /// Pre-train a ViT's encoder without labels by masked patch prediction (pixels, as
    /// SimMIM, or mean colours, as the ViT paper); fine-tune it with train --init-from.
    Pretrain(Box<cli::pretrain::PretrainArgs>),
    /// Evaluate a checkpoint: accuracy, loss, per-class accuracy, confusion matrix.
    Eval(cli::eval::EvalArgs),
    /// Top-k classes of images under a checkpoint.
    Predict(cli::predict::PredictArgs),
    /// Attention maps of images under a checkpoint: per head of the last block and the
    /// rollout over all blocks, one PNG per image.
    Attention(cli::attention::AttentionArgs),
    /// Write the synthetic data set in the CIFAR-10 binary layout.
    Synth(cli::synth::SynthArgs),
    /// Time a device training step kernel by kernel (without a GPU: count it and model it).
    Profile(cli::profile::ProfileArgs),
    /// Presets, parameter counts, threads and devices.
    Info,
}

fn main() -> ExitCode {
    sigpipe::reset();
    // `train --recipe NAME` is expanded into the recipe's flags before parsing.
    let (args, recipe) = match cli::recipe::expand(std::env::args_os().collect()) {
        Ok(expanded) => expanded,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Train(mut a) => {
            if let Some((recipe, filled)) = recipe {
                println!("{}", cli::recipe::describe(recipe, &filled));
                a.recipe_filled = filled;
            }
            cli::train::run(*a)
        }
        Command::Pretrain(a) => cli::pretrain::run(*a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Predict(a) => cli::predict::run(a),
        Command::Attention(a) => cli::attention::run(a),
        Command::Synth(a) => cli::synth::run(a),
        Command::Profile(a) => cli::profile::run(a),
        Command::Info => cli::info::run(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
