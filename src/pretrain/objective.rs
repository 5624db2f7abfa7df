//! What `vitk pretrain` predicts (`--objective`): pixels (SimMIM / MAE style) or the mean
//! colour of each corrupted patch (the ViT paper's masked patch prediction).

use crate::cpu::mim::PixelLoss;
use crate::cpu::mim_colour::COLOUR_CLASSES;
use crate::cpu::PixelObjective;
use crate::model::ModelConfig;

/// The pre-training objective: what the decoder predicts, how masks are drawn and how the
/// prediction is scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    /// A random `--mask-ratio` of the patches replaced by the mask token; the decoder predicts
    /// every masked patch's P·P·C pixels; L1 or L2 over the masked patches.
    Pixels(PixelObjective),
    /// A random `--mask-ratio` of the patches corrupted as BERT does (80% mask token, 10% another
    /// patch of the image, 10% unchanged); the decoder predicts each corrupted patch's mean colour,
    /// 3 bits per channel (512 classes), scored by cross-entropy.
    Colour,
}

impl Objective {
    /// Outputs of the linear decoder per patch token: P·P·C pixel values or 512 colour classes.
    pub fn decoder_outputs(&self, cfg: &ModelConfig) -> usize {
        match self {
            Objective::Pixels(_) => cfg.patch_dim(),
            Objective::Colour => COLOUR_CLASSES,
        }
    }

    /// "pixels" or "color" (the `--objective` value).
    pub fn name(&self) -> &'static str {
        match self {
            Objective::Pixels(_) => "pixels",
            Objective::Colour => "color",
        }
    }

    /// The default of the objective's mask ratio: SimMIM's 0.6 for pixels, the ViT paper's 0.5
    /// for colours.
    pub fn default_mask_ratio(&self) -> f64 {
        match self {
            Objective::Pixels(_) => 0.6,
            Objective::Colour => 0.5,
        }
    }

    /// The pixel objective with SimMIM's defaults (L1, raw targets).
    pub fn simmim() -> Self {
        Objective::Pixels(PixelObjective {
            loss: PixelLoss::L1,
            norm_pix: false,
        })
    }
}
