//! The parameter layout of the pixel-prediction pre-training model (SimMIM style): the
//! encoder of [`ParamLayout`] without `head.*`, then `mask_token` and the linear decoder.

use super::{ModelConfig, ParamEntry, ParamLayout};
use std::ops::Range;

/// Where each pre-training parameter lives in one flat buffer: the encoder tensors of
/// [`ParamLayout::new`] (`cls_token`, `pos_embed`, `patch_embed.*`, `blocks.*`, `norm.*` or
/// `fc_norm.*`) at exactly the offsets they have there, i.e. the classification layout's
/// prefix before `head.*`; then `mask_token` [1, 1, D], `decoder.weight` [K, D] and
/// `decoder.bias` [K], K the decoder's outputs per patch token: P·P·C pixel values in the
/// order of [`crate::cpu::mim::patch_targets`] (MAE's patchify: (ky·P + kx)·C + c) for the
/// pixel objective, 512 colour classes for the colour objective.
#[derive(Clone, Debug)]
pub struct PretrainLayout {
    /// K, the decoder's outputs per patch token.
    pub outputs: usize,
    /// The encoder's tensors occupy `0..encoder_len` (= the classification layout's
    /// `head_w.start`), laid out as [`ParamLayout::new`] lays them out.
    pub encoder_len: usize,
    /// `mask_token` [1, 1, D] (not decayed, as SimMIM's `no_weight_decay`).
    pub mask_token: Range<usize>,
    /// `decoder.weight` [K, D] (decayed).
    pub decoder_w: Range<usize>,
    /// `decoder.bias` [K] (not decayed).
    pub decoder_b: Range<usize>,
    /// All tensors in buffer order.
    pub entries: Vec<ParamEntry>,
    /// Total number of scalars.
    pub len: usize,
}

impl PretrainLayout {
    /// The layout of `cfg` (which must be valid; `num_classes` plays no part) with a decoder
    /// of `outputs` values per patch token (`Objective::decoder_outputs`).
    pub fn new(cfg: &ModelConfig, outputs: usize) -> Self {
        let cls = ParamLayout::new(cfg);
        let encoder_len = cls.head_w.start;
        // head.* are the classification layout's last two tensors.
        debug_assert_eq!(cls.head_b.end, cls.len);
        let mut entries: Vec<ParamEntry> = cls
            .entries
            .into_iter()
            .filter(|e| e.range.end <= encoder_len)
            .collect();
        let (d, k) = (cfg.embed_dim, outputs);
        let mut len = encoder_len;
        let mut add = |name: &str, shape: &[usize], decay: bool| {
            let n: usize = shape.iter().product();
            let range = len..len + n;
            len += n;
            entries.push(ParamEntry {
                name: name.into(),
                shape: shape.to_vec(),
                range: range.clone(),
                decay,
            });
            range
        };
        let mask_token = add("mask_token", &[1, 1, d], false);
        let decoder_w = add("decoder.weight", &[k, d], true);
        let decoder_b = add("decoder.bias", &[k], false);
        Self {
            outputs,
            encoder_len,
            mask_token,
            decoder_w,
            decoder_b,
            entries,
            len,
        }
    }

    /// The entry called `name`.
    pub fn get(&self, name: &str) -> Option<&ParamEntry> {
        self.entries.iter().find(|e| e.name == name)
    }
}
