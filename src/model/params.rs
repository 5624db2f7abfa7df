//! Parameter layout: every named tensor is an (offset, shape) view into one flat buffer, in
//! timm's state-dict order. Gradients and AdamW moments share the layout.

use super::{ModelConfig, Pool};
use std::ops::Range;

/// One named tensor of the flat buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamEntry {
    /// timm state-dict name, e.g. `blocks.0.attn.qkv.weight`.
    pub name: String,
    /// timm shape, e.g. [3D, D].
    pub shape: Vec<usize>,
    /// Position in the flat buffer.
    pub range: Range<usize>,
    /// Whether AdamW decays it: matrices yes; biases, LayerNorm weights, pos_embed and
    /// cls_token no (timm's `param_groups_weight_decay` with `no_weight_decay()`).
    pub decay: bool,
}

/// The parameters of one transformer block.
#[derive(Clone, Debug)]
pub struct BlockParams {
    pub norm1_w: Range<usize>,
    pub norm1_b: Range<usize>,
    pub qkv_w: Range<usize>,
    pub qkv_b: Range<usize>,
    pub proj_w: Range<usize>,
    pub proj_b: Range<usize>,
    pub norm2_w: Range<usize>,
    pub norm2_b: Range<usize>,
    pub fc1_w: Range<usize>,
    pub fc1_b: Range<usize>,
    pub fc2_w: Range<usize>,
    pub fc2_b: Range<usize>,
}

/// Where each parameter lives in the flat buffer.
#[derive(Clone, Debug)]
pub struct ParamLayout {
    /// `cls_token` [1, 1, D] (cls pooling only).
    pub cls_token: Option<Range<usize>>,
    /// `pos_embed` [1, T, D].
    pub pos_embed: Range<usize>,
    /// `patch_embed.proj.weight` [D, C, P, P], used as [D, C·P·P].
    pub patch_w: Range<usize>,
    pub patch_b: Range<usize>,
    pub blocks: Vec<BlockParams>,
    /// `norm.*` (cls) or `fc_norm.*` (mean), [D].
    pub head_norm_w: Range<usize>,
    pub head_norm_b: Range<usize>,
    /// `head.weight` [K, D].
    pub head_w: Range<usize>,
    pub head_b: Range<usize>,
    /// All tensors in state-dict order.
    pub entries: Vec<ParamEntry>,
    /// Total number of scalars.
    pub len: usize,
}

struct Builder {
    entries: Vec<ParamEntry>,
    len: usize,
}

impl Builder {
    fn add(&mut self, name: String, shape: &[usize], decay: bool) -> Range<usize> {
        let n: usize = shape.iter().product();
        let range = self.len..self.len + n;
        self.len += n;
        self.entries.push(ParamEntry {
            name,
            shape: shape.to_vec(),
            range: range.clone(),
            decay,
        });
        range
    }
}

impl ParamLayout {
    /// The layout of `cfg` (which must be valid).
    pub fn new(cfg: &ModelConfig) -> Self {
        let (d, m, k) = (cfg.embed_dim, cfg.mlp_dim, cfg.num_classes);
        let (c, p) = (cfg.in_chans, cfg.patch_size);
        let mut b = Builder {
            entries: Vec::new(),
            len: 0,
        };
        let cls_token =
            (cfg.pool == Pool::Cls).then(|| b.add("cls_token".into(), &[1, 1, d], false));
        let pos_embed = b.add("pos_embed".into(), &[1, cfg.num_tokens(), d], false);
        let patch_w = b.add("patch_embed.proj.weight".into(), &[d, c, p, p], true);
        let patch_b = b.add("patch_embed.proj.bias".into(), &[d], false);
        let blocks = (0..cfg.depth)
            .map(|i| {
                let mut add = |suffix: &str, shape: &[usize]| {
                    b.add(format!("blocks.{i}.{suffix}"), shape, shape.len() >= 2)
                };
                BlockParams {
                    norm1_w: add("norm1.weight", &[d]),
                    norm1_b: add("norm1.bias", &[d]),
                    qkv_w: add("attn.qkv.weight", &[3 * d, d]),
                    qkv_b: add("attn.qkv.bias", &[3 * d]),
                    proj_w: add("attn.proj.weight", &[d, d]),
                    proj_b: add("attn.proj.bias", &[d]),
                    norm2_w: add("norm2.weight", &[d]),
                    norm2_b: add("norm2.bias", &[d]),
                    fc1_w: add("mlp.fc1.weight", &[m, d]),
                    fc1_b: add("mlp.fc1.bias", &[m]),
                    fc2_w: add("mlp.fc2.weight", &[d, m]),
                    fc2_b: add("mlp.fc2.bias", &[d]),
                }
            })
            .collect();
        let norm = match cfg.pool {
            Pool::Cls => "norm",
            Pool::Mean => "fc_norm",
        };
        let head_norm_w = b.add(format!("{norm}.weight"), &[d], false);
        let head_norm_b = b.add(format!("{norm}.bias"), &[d], false);
        let head_w = b.add("head.weight".into(), &[k, d], true);
        let head_b = b.add("head.bias".into(), &[k], false);
        Self {
            cls_token,
            pos_embed,
            patch_w,
            patch_b,
            blocks,
            head_norm_w,
            head_norm_b,
            head_w,
            head_b,
            entries: b.entries,
            len: b.len,
        }
    }

    /// The entry called `name`.
    pub fn get(&self, name: &str) -> Option<&ParamEntry> {
        self.entries.iter().find(|e| e.name == name)
    }
}
