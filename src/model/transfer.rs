//! Loading pretrained weights into a model of another size or head, as timm does when a
//! checkpoint is loaded into `create_model(..., img_size=..., num_classes=...)`:
//!
//! - `pos_embed` is resampled to the model's patch grid (bicubic, antialiased; the class
//!   token's row kept): [`super::resample`];
//! - a head of another number of classes, or none (an encoder checkpoint), is re-initialised
//!   as a fresh model's; so is a head norm or class token the checkpoint lacks;
//! - another patch size is refused unless the caller asks for the FlexiViT resampling of the
//!   patch-embedding kernel;
//! - any other difference is an error naming the tensor and both shapes.
//!
//! What was adapted comes back as one line per kind, for the run to print and record.

use super::checkpoint::{check_finite, mismatch, read_tensors, CheckpointError, Tensor};
use super::resample::{resample_patch_kernel, resample_pos_embed, Grid};
use super::{init_params, ModelConfig, ParamLayout, Pool};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// How far a checkpoint may be adapted.
#[derive(Clone, Copy, Debug, Default)]
pub struct TransferOptions {
    /// Resize the patch-embedding kernel when the patch size differs (FlexiViT).
    pub resample_patch: bool,
    /// Seed of the initialisation of the tensors that are not loaded (a fresh model's).
    pub seed: u64,
}

/// Weights for the model, and what was done to get them.
#[derive(Clone, Debug)]
pub struct Transferred {
    /// The model's flat parameters.
    pub params: Vec<f32>,
    /// One line per kind: "loaded 58 of 60 tensors", "resampled pos_embed 8x8 -> 12x12", ...
    pub notes: Vec<String>,
}

/// Loads `path` into a model of `cfg`. `source` is the checkpoint's own config when it has
/// one (vitk's metadata); without it (timm's files) the checkpoint's patch grid is taken to
/// be square, as timm assumes.
pub fn load_transfer(
    path: &Path,
    cfg: &ModelConfig,
    source: Option<&ModelConfig>,
    opts: TransferOptions,
) -> Result<Transferred, CheckpointError> {
    let tensors = read_tensors(path)?;
    let layout = ParamLayout::new(cfg);
    let mut params = init_params(cfg, &layout, opts.seed);
    let mut t = Transfer {
        path,
        cfg,
        tensors: &tensors,
        used: BTreeSet::new(),
        notes: Notes::default(),
    };
    for e in &layout.entries {
        let dst = &mut params[e.range.clone()];
        match e.name.as_str() {
            "pos_embed" => t.pos_embed(dst, &e.shape, source)?,
            "patch_embed.proj.weight" => t.patch_kernel(dst, &e.shape, opts.resample_patch)?,
            "head.weight" | "head.bias" => t.head(&e.name, dst, &e.shape)?,
            "cls_token" | "norm.weight" | "norm.bias" | "fc_norm.weight" | "fc_norm.bias" => {
                t.optional(&e.name, dst, &e.shape)?
            }
            name => t.exact(name, dst, &e.shape)?,
        }
    }
    t.leftovers()?;
    check_finite(path, &layout, &params)?;
    let notes = t.notes.lines(layout.entries.len());
    Ok(Transferred { params, notes })
}

/// What the transfer did, gathered per kind.
#[derive(Default)]
struct Notes {
    loaded: usize,
    pos_embed: Option<String>,
    class_row: Option<String>,
    patch: Option<String>,
    head: Option<String>,
    fresh: Vec<String>,
    unused: Vec<String>,
}

impl Notes {
    fn lines(&self, total: usize) -> Vec<String> {
        let mut out = vec![format!("loaded {} of {total} tensors", self.loaded)];
        out.extend(self.pos_embed.iter().cloned());
        out.extend(self.class_row.iter().cloned());
        out.extend(self.patch.iter().cloned());
        out.extend(self.head.iter().cloned());
        if !self.fresh.is_empty() {
            out.push(format!(
                "initialised (not in the checkpoint): {}",
                self.fresh.join(", ")
            ));
        }
        if !self.unused.is_empty() {
            out.push(format!(
                "not used (the model has no such tensor): {}",
                self.unused.join(", ")
            ));
        }
        out
    }
}

struct Transfer<'a> {
    path: &'a Path,
    cfg: &'a ModelConfig,
    tensors: &'a BTreeMap<String, Tensor>,
    used: BTreeSet<&'a str>,
    notes: Notes,
}

impl<'a> Transfer<'a> {
    /// The checkpoint's tensor `name`, marked as used.
    fn take(&mut self, name: &str) -> Option<&'a Tensor> {
        let (key, t) = self.tensors.get_key_value(name)?;
        self.used.insert(key.as_str());
        Some(t)
    }

    fn shape_error(&self, name: &str, got: &[usize], want: &[usize]) -> CheckpointError {
        mismatch(
            self.path,
            format!(
                "tensor '{name}' has shape {got:?}, expected {want:?} for {} (a checkpoint of another architecture?)",
                self.cfg.summary()
            ),
        )
    }

    fn missing(&self, name: &str, want: &[usize]) -> CheckpointError {
        mismatch(
            self.path,
            format!(
                "tensor '{name}' is missing (expected shape {want:?} for {})",
                self.cfg.summary()
            ),
        )
    }

    /// A tensor that must be present with the model's shape.
    fn exact(
        &mut self,
        name: &str,
        dst: &mut [f32],
        want: &[usize],
    ) -> Result<(), CheckpointError> {
        let t = self.take(name).ok_or_else(|| self.missing(name, want))?;
        if t.shape != want {
            return Err(self.shape_error(name, &t.shape, want));
        }
        dst.copy_from_slice(&t.data);
        self.notes.loaded += 1;
        Ok(())
    }

    /// The class token or the head norm: loaded when present, else left initialised.
    fn optional(
        &mut self,
        name: &str,
        dst: &mut [f32],
        want: &[usize],
    ) -> Result<(), CheckpointError> {
        if self.tensors.contains_key(name) {
            self.exact(name, dst, want)
        } else {
            self.notes.fresh.push(name.to_string());
            Ok(())
        }
    }

    /// The head: loaded when it has the model's classes, else re-initialised.
    fn head(&mut self, name: &str, dst: &mut [f32], want: &[usize]) -> Result<(), CheckpointError> {
        let k = self.cfg.num_classes;
        let Some(t) = self.take(name) else {
            self.notes.head = Some(format!(
                "new head: the checkpoint has none, {k} classes initialised"
            ));
            return Ok(());
        };
        if t.shape == want {
            dst.copy_from_slice(&t.data);
            self.notes.loaded += 1;
            return Ok(());
        }
        // [K', D] or [K']: another number of classes is fine, another width is not.
        let same_width = t.shape.len() == want.len() && t.shape[1..] == want[1..];
        if !same_width {
            return Err(self.shape_error(name, &t.shape, want));
        }
        self.notes.head = Some(format!(
            "new head {} -> {k} classes (re-initialised)",
            t.shape[0]
        ));
        Ok(())
    }

    /// `pos_embed` [1, T', D] resampled to [1, T, D].
    fn pos_embed(
        &mut self,
        dst: &mut [f32],
        want: &[usize],
        source: Option<&ModelConfig>,
    ) -> Result<(), CheckpointError> {
        let t = self
            .take("pos_embed")
            .ok_or_else(|| self.missing("pos_embed", want))?;
        let d = self.cfg.embed_dim;
        if t.shape.len() != 3 || t.shape[0] != 1 || t.shape[2] != d {
            return Err(self.shape_error("pos_embed", &t.shape, want));
        }
        let src_prefix = usize::from(self.tensors.contains_key("cls_token"));
        let n_src = t.shape[1].saturating_sub(src_prefix);
        let from = match source {
            Some(s) => s.grid(),
            None => {
                let g = (n_src as f64).sqrt().round() as usize;
                (g, g)
            }
        };
        if from.0 * from.1 != n_src || n_src == 0 {
            return Err(mismatch(
                self.path,
                format!(
                    "tensor 'pos_embed' has {} positions ({} patches{}), which is not the {}x{} patch grid its config gives",
                    t.shape[1],
                    n_src,
                    if src_prefix == 1 { " and the class token" } else { "" },
                    from.0,
                    from.1
                ),
            ));
        }
        let to: Grid = self.cfg.grid();
        let prefix = usize::from(self.cfg.pool == Pool::Cls);
        // The class token's row: kept, dropped (a mean-pooled model), or left initialised.
        let mut pos = t.data.clone();
        match (src_prefix, prefix) {
            (1, 0) => {
                pos.drain(..d);
                self.notes.class_row = Some(
                    "dropped the class token's pos_embed row (the model pools by mean)".into(),
                );
            }
            (0, 1) => {
                pos.splice(0..0, dst[..d].iter().copied());
                self.notes.class_row = Some(
                    "initialised the class token's pos_embed row (the checkpoint has no class token)"
                        .into(),
                );
            }
            _ => {}
        }
        if from != to {
            pos = resample_pos_embed(&pos, prefix, from, to, d);
            self.notes.pos_embed = Some(format!(
                "resampled pos_embed {}x{} -> {}x{} (bicubic, antialiased, as timm)",
                from.0, from.1, to.0, to.1
            ));
        }
        dst.copy_from_slice(&pos);
        self.notes.loaded += 1;
        Ok(())
    }

    /// `patch_embed.proj.weight` [D, C, P', P'] to [D, C, P, P], resampled when allowed.
    fn patch_kernel(
        &mut self,
        dst: &mut [f32],
        want: &[usize],
        resample: bool,
    ) -> Result<(), CheckpointError> {
        let name = "patch_embed.proj.weight";
        let t = self.take(name).ok_or_else(|| self.missing(name, want))?;
        if t.shape == want {
            dst.copy_from_slice(&t.data);
            self.notes.loaded += 1;
            return Ok(());
        }
        if t.shape.len() != 4 || t.shape[..2] != want[..2] {
            return Err(self.shape_error(name, &t.shape, want));
        }
        let (from, to) = ((t.shape[2], t.shape[3]), (want[2], want[3]));
        if !resample {
            return Err(mismatch(
                self.path,
                format!(
                    "the checkpoint's patch size is {}x{} ({name} {:?}), the model's {}x{}: give --patch-size {} to keep it, or --resample-patch to resize the patch-embedding kernel (FlexiViT)",
                    from.0, from.1, t.shape, to.0, to.1, from.0
                ),
            ));
        }
        let w = resample_patch_kernel(&t.data, from, to).ok_or_else(|| {
            mismatch(
                self.path,
                format!("{name}: the {from:?} -> {to:?} resize has no pseudo-inverse"),
            )
        })?;
        dst.copy_from_slice(&w);
        self.notes.patch = Some(format!(
            "resampled {name} {}x{} -> {}x{} (FlexiViT pseudo-inverse)",
            from.0, from.1, to.0, to.1
        ));
        self.notes.loaded += 1;
        Ok(())
    }

    /// Tensors of the checkpoint the model did not take: a class token or head norm of the
    /// other pooling is noted; anything else is another architecture.
    fn leftovers(&mut self) -> Result<(), CheckpointError> {
        let other_pooling = [
            "cls_token",
            "norm.weight",
            "norm.bias",
            "fc_norm.weight",
            "fc_norm.bias",
        ];
        let rest: Vec<&str> = self
            .tensors
            .keys()
            .map(String::as_str)
            .filter(|n| !self.used.contains(n))
            .collect();
        let (noted, foreign): (Vec<&str>, Vec<&str>) =
            rest.into_iter().partition(|n| other_pooling.contains(n));
        if !foreign.is_empty() {
            return Err(mismatch(
                self.path,
                format!(
                    "holds tensors a {} model does not have: {} (a checkpoint of another architecture?)",
                    self.cfg.summary(),
                    foreign.join(", ")
                ),
            ));
        }
        self.notes.unused = noted.into_iter().map(String::from).collect();
        Ok(())
    }
}
