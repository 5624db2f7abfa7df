//! Which tensors train and at which rate: timm's `param_groups_layer_decay` (layer-wise LR
//! decay) and the linear probe (`--freeze-backbone`), computed once from the
//! [`ParamLayout`] and given to both engines at construction.
//!
//! Layer ids, by timm name (timm's `VisionTransformer.group_matcher`): 0 for `cls_token`,
//! `pos_embed`, `patch_embed.*`; i + 1 for `blocks.i.*`; L + 1 for everything after the
//! blocks (`norm.*` / `fc_norm.*`, `head.*`). A tensor of layer id `id` trains at
//! lr·R^(L+1−id) (the head at the base rate, block i at R^(L−i), the embeddings at R^(L+1));
//! as in PyTorch's AdamW with a per-group lr, the scale multiplies both the step and the
//! decoupled weight decay. Frozen tensors (everything but the head and its norm) get no
//! gradient, no update and no weight decay; in timm's order they are a prefix of the
//! layout, so the trainable tensors are one contiguous span of the flat buffer.

use crate::model::{ParamEntry, ParamLayout, PretrainLayout};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// The fine-tuning controls of a run (`--layer-decay`, `--freeze-backbone`); the default
/// trains every tensor at the base rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FineTuning {
    /// R in (0, 1]: layer-wise LR decay (None: every tensor at the base rate).
    pub layer_decay: Option<f64>,
    /// Only the head and its norm train (a linear probe).
    pub freeze_backbone: bool,
}

/// How one tensor of the layout trains.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorPlan {
    /// timm name (as in the layout).
    pub name: String,
    /// Position in the flat buffer.
    pub range: Range<usize>,
    /// Whether AdamW decays it (the layout's flag).
    pub decay: bool,
    /// timm's layer id: 0 embeddings, i + 1 block i, L + 1 after the blocks.
    pub layer_id: usize,
    /// Multiplier of the learning rate: R^(L+1−layer_id), 1 without layer decay.
    pub lr_scale: f64,
    /// No gradient, no update.
    pub frozen: bool,
    /// Index into [`ParamGroups::groups`] (meaningful for trainable tensors).
    pub group: usize,
}

/// One optimizer group of the device kernel: tensors that share a rate and a decay flag.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Group {
    pub lr_scale: f64,
    pub decay: bool,
}

/// Every tensor's plan, the distinct groups, and the span of the trainable tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGroups {
    /// One per layout entry, in layout order.
    pub tensors: Vec<TensorPlan>,
    /// Distinct (lr_scale, decay) of the trainable tensors, in order of first appearance
    /// (without layer decay: at most two).
    pub groups: Vec<Group>,
    /// The trainable tensors' part of the flat buffer (all of it unless frozen).
    trainable: Range<usize>,
    /// Whether the backward pass stops after the head norm.
    freeze_backbone: bool,
}

/// Layer id of a timm name in a model of `depth` blocks (timm's group matcher:
/// `^cls_token|pos_embed|patch_embed` → 0, `^blocks\.(\d+)` → i + 1, the rest → L + 1).
pub fn layer_id(name: &str, depth: usize) -> usize {
    if name.starts_with("cls_token") || name.contains("pos_embed") || name.contains("patch_embed") {
        return 0;
    }
    name.strip_prefix("blocks.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|i| i.parse::<usize>().ok())
        .map_or(depth + 1, |i| i + 1)
}

/// Whether a tensor trains in a linear probe: the head and its norm.
fn probe_trains(name: &str) -> bool {
    ["head.", "norm.", "fc_norm."]
        .iter()
        .any(|p| name.starts_with(p))
}

impl ParamGroups {
    /// The plan of `layout` under `ft` (`ft.layer_decay` must lie in (0, 1]:
    /// `TrainConfig::validate` checks it).
    pub fn new(layout: &ParamLayout, ft: FineTuning) -> Self {
        Self::build(&layout.entries, layout.blocks.len(), layout.len, ft)
    }

    /// The plan of the pre-training layout: every tensor trains at the base rate (no layer
    /// decay, nothing frozen), decayed as the layout says (`mask_token` and `decoder.bias`
    /// not, `decoder.weight` yes); `mask_token` and `decoder.*` take layer id L + 1.
    pub fn pretraining(layout: &PretrainLayout) -> Self {
        let depth = layout
            .entries
            .iter()
            .filter(|e| e.name.starts_with("blocks.") && e.name.ends_with(".norm1.weight"))
            .count();
        Self::build(&layout.entries, depth, layout.len, FineTuning::default())
    }

    fn build(entries: &[ParamEntry], depth: usize, len: usize, ft: FineTuning) -> Self {
        let mut groups: Vec<Group> = Vec::new();
        let tensors: Vec<TensorPlan> = entries
            .iter()
            .map(|e| {
                let layer_id = layer_id(&e.name, depth);
                let lr_scale = ft
                    .layer_decay
                    .map_or(1.0, |r| r.powi((depth + 1 - layer_id) as i32));
                let frozen = ft.freeze_backbone && !probe_trains(&e.name);
                let g = Group {
                    lr_scale,
                    decay: e.decay,
                };
                let group = match groups.iter().position(|&x| x == g) {
                    Some(i) => i,
                    None if frozen => 0,
                    None => {
                        groups.push(g);
                        groups.len() - 1
                    }
                };
                TensorPlan {
                    name: e.name.clone(),
                    range: e.range.clone(),
                    decay: e.decay,
                    layer_id,
                    lr_scale,
                    frozen,
                    group,
                }
            })
            .collect();
        let start = tensors
            .iter()
            .find(|t| !t.frozen)
            .map_or(len, |t| t.range.start);
        debug_assert!(
            tensors.iter().all(|t| if t.frozen {
                t.range.end <= start
            } else {
                t.range.start >= start
            }),
            "frozen tensors are a prefix of the layout"
        );
        ParamGroups {
            tensors,
            groups,
            trainable: start..len,
            freeze_backbone: ft.freeze_backbone,
        }
    }

    /// Every tensor trains at the base rate.
    pub fn all(layout: &ParamLayout) -> Self {
        Self::new(layout, FineTuning::default())
    }

    /// The trainable tensors' span of the flat buffer (gradients outside it stay zero).
    pub fn trainable(&self) -> Range<usize> {
        self.trainable.clone()
    }

    /// Whether only the head and its norm train (backward stops after the head norm).
    pub fn backbone_frozen(&self) -> bool {
        self.freeze_backbone
    }

    /// The group index of every element of [`Self::trainable`] (the device kernel's table).
    pub fn group_table(&self) -> Vec<u16> {
        let mut table = vec![0u16; self.trainable.len()];
        let base = self.trainable.start;
        for t in self.tensors.iter().filter(|t| !t.frozen) {
            let g = u16::try_from(t.group).expect("at most 2(L + 2) groups, L <= 1024");
            table[t.range.start - base..t.range.end - base].fill(g);
        }
        table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, Pool};

    fn layout(pool: Pool) -> ParamLayout {
        ParamLayout::new(&ModelConfig {
            image_size: crate::model::ImageSize::square(8),
            patch_size: 4,
            in_chans: 3,
            num_classes: 5,
            embed_dim: 8,
            depth: 2,
            num_heads: 2,
            mlp_dim: 12,
            pool,
        })
    }

    /// L = 2: every tensor's multiplier is R^(L+1−id) with timm's ids, by name.
    #[test]
    fn layer_decay_multipliers_follow_timm_grouping() {
        let r: f64 = 0.75;
        for pool in [Pool::Cls, Pool::Mean] {
            let lay = layout(pool);
            let g = ParamGroups::new(
                &lay,
                FineTuning {
                    layer_decay: Some(r),
                    freeze_backbone: false,
                },
            );
            assert_eq!(g.tensors.len(), lay.entries.len());
            for t in &g.tensors {
                let id = if [
                    "cls_token",
                    "pos_embed",
                    "patch_embed.proj.weight",
                    "patch_embed.proj.bias",
                ]
                .contains(&t.name.as_str())
                {
                    0
                } else if t.name.starts_with("blocks.0.") {
                    1
                } else if t.name.starts_with("blocks.1.") {
                    2
                } else {
                    assert!(
                        [
                            "norm.weight",
                            "norm.bias",
                            "fc_norm.weight",
                            "fc_norm.bias",
                            "head.weight",
                            "head.bias"
                        ]
                        .contains(&t.name.as_str()),
                        "unexpected tensor {}",
                        t.name
                    );
                    3
                };
                assert_eq!(t.layer_id, id, "{}", t.name);
                let want = [r * r * r, r * r, r, 1.0][id];
                assert!(
                    (t.lr_scale - want).abs() <= 1e-15,
                    "{}: scale {} vs {want}",
                    t.name,
                    t.lr_scale
                );
                assert!(!t.frozen);
            }
            // the embeddings, both blocks and the head: 4 rates x decay / no decay
            assert_eq!(g.groups.len(), 8, "{pool}: {:?}", g.groups);
            assert_eq!(g.trainable(), 0..lay.len);
        }
    }

    #[test]
    fn without_controls_every_tensor_trains_at_the_base_rate() {
        let lay = layout(Pool::Cls);
        let g = ParamGroups::all(&lay);
        assert!(g.tensors.iter().all(|t| t.lr_scale == 1.0 && !t.frozen));
        assert_eq!(g.groups.len(), 2, "decay and no decay");
        assert_eq!(g.trainable(), 0..lay.len);
        let table = g.group_table();
        for t in &g.tensors {
            let want = g.groups[t.group];
            assert_eq!(want.decay, t.decay, "{}", t.name);
            assert!(table[t.range.clone()]
                .iter()
                .all(|&x| x as usize == t.group));
        }
    }

    /// Only norm/fc_norm and head train, and they are the end of the buffer.
    #[test]
    fn freeze_backbone_trains_the_head_and_its_norm_only() {
        for (pool, norm) in [(Pool::Cls, "norm."), (Pool::Mean, "fc_norm.")] {
            let lay = layout(pool);
            let g = ParamGroups::new(
                &lay,
                FineTuning {
                    layer_decay: None,
                    freeze_backbone: true,
                },
            );
            let trains: Vec<&str> = g
                .tensors
                .iter()
                .filter(|t| !t.frozen)
                .map(|t| t.name.as_str())
                .collect();
            let want = [
                format!("{norm}weight"),
                format!("{norm}bias"),
                "head.weight".into(),
                "head.bias".into(),
            ];
            assert_eq!(trains, want, "{pool}");
            assert_eq!(g.trainable(), lay.head_norm_w.start..lay.len);
            assert!(g.backbone_frozen());
            assert_eq!(g.group_table().len(), lay.len - lay.head_norm_w.start);
            // norms and biases: no decay; head.weight: decay
            assert_eq!(g.groups.len(), 2);
        }
    }

    #[test]
    fn layer_ids_of_timm_names() {
        assert_eq!(layer_id("cls_token", 12), 0);
        assert_eq!(layer_id("pos_embed", 12), 0);
        assert_eq!(layer_id("patch_embed.proj.weight", 12), 0);
        assert_eq!(layer_id("blocks.0.norm1.weight", 12), 1);
        assert_eq!(layer_id("blocks.11.mlp.fc2.bias", 12), 12);
        assert_eq!(layer_id("norm.weight", 12), 13);
        assert_eq!(layer_id("fc_norm.bias", 12), 13);
        assert_eq!(layer_id("head.weight", 12), 13);
    }
}
