//! Model checkpoints as safetensors with timm's names and shapes, so that a vitk checkpoint
//! loads in `timm.create_model(..., checkpoint_path=...)` and timm weights load in vitk.
//!
//! vitk writes its model config, class names and input normalisation into the safetensors
//! metadata (`vitk.config`, `vitk.classes`, `vitk.normalize`); a file without them (one
//! written by timm) loads with a config given by the caller. Every tensor's checksum is in
//! the metadata too ([`super::checksum`]) and is verified when the file carries it.

use super::checksum;
use super::{ModelConfig, ParamEntry, ParamLayout};
use crate::atomic::write_atomic;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// What a checkpoint carries besides the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub config: ModelConfig,
    /// Class names, [K].
    pub classes: Vec<String>,
    /// Per-channel input mean and std the model was trained with.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// A checkpoint that could not be read or written, naming the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The cause is part of the message and deliberately not a `source()`: anyhow's `{:#}`
    /// prints the source chain too, which would say it twice.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file ({reason})")]
    Corrupt { path: PathBuf, reason: String },
    /// Tensor bytes that differ from the checksums recorded when the file was written.
    #[error("{path}: {problem}")]
    Damaged { path: PathBuf, problem: String },
    #[error("{path}: {problem}")]
    Mismatch { path: PathBuf, problem: String },
}

pub(crate) fn mismatch(path: &Path, problem: impl Into<String>) -> CheckpointError {
    CheckpointError::Mismatch {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Saves `params` (laid out by `layout`) with timm names and the metadata, atomically.
pub fn save_checkpoint(
    path: &Path,
    layout: &ParamLayout,
    params: &[f32],
    meta: &CheckpointMeta,
) -> Result<(), CheckpointError> {
    assert_eq!(
        params.len(),
        layout.len,
        "save_checkpoint: parameter buffer"
    );
    save_tensors(path, &layout.entries, params, meta)
}

/// Writes the tensors `entries` of `params` (a buffer they index into) with the vitk
/// metadata, as [`save_checkpoint`] does for a whole model: also for part of a model (the
/// pre-trained encoder without a head) or another layout (the pre-training decoder).
pub fn save_tensors(
    path: &Path,
    entries: &[ParamEntry],
    params: &[f32],
    meta: &CheckpointMeta,
) -> Result<(), CheckpointError> {
    let tensors: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|e| {
            (
                e.name.as_str(),
                bytemuck::cast_slice(&params[e.range.clone()]),
            )
        })
        .collect();
    let mut info = HashMap::new();
    checksum::stamp(&mut info, tensors.iter().copied());
    let views = entries.iter().zip(&tensors).map(|(e, (_, bytes))| {
        let view = TensorView::new(Dtype::F32, e.shape.clone(), bytes).expect("shape matches data");
        (e.name.clone(), view)
    });
    info.insert("format".to_string(), "pt".to_string());
    // Serialising these plain structs cannot fail.
    info.insert(
        "vitk.config".to_string(),
        serde_json::to_string(&meta.config).unwrap_or_default(),
    );
    info.insert(
        "vitk.classes".to_string(),
        serde_json::to_string(&meta.classes).unwrap_or_default(),
    );
    info.insert(
        "vitk.normalize".to_string(),
        serde_json::json!({"mean": meta.mean, "std": meta.std}).to_string(),
    );
    let bytes =
        safetensors::serialize(views, Some(info)).map_err(|e| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    write_atomic(path, &bytes).map_err(|cause| CheckpointError::Io {
        path: path.to_path_buf(),
        cause,
    })
}

/// Reads the vitk metadata of a checkpoint (None for a file without it, such as timm's).
pub fn read_meta(path: &Path) -> Result<Option<CheckpointMeta>, CheckpointError> {
    let bytes = read(path)?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(path, e))?;
    let Some(map) = header.metadata() else {
        return Ok(None);
    };
    let Some(config) = map.get("vitk.config") else {
        return Ok(None);
    };
    let bad = |what: &str, e: serde_json::Error| {
        mismatch(path, format!("metadata {what} is not valid: {e}"))
    };
    let config: ModelConfig = serde_json::from_str(config).map_err(|e| bad("vitk.config", e))?;
    let classes: Vec<String> = match map.get("vitk.classes") {
        Some(c) => serde_json::from_str(c).map_err(|e| bad("vitk.classes", e))?,
        None => (0..config.num_classes).map(|k| k.to_string()).collect(),
    };
    #[derive(Deserialize)]
    struct Norm {
        mean: Vec<f32>,
        std: Vec<f32>,
    }
    let norm: Norm = match map.get("vitk.normalize") {
        Some(n) => serde_json::from_str(n).map_err(|e| bad("vitk.normalize", e))?,
        None => Norm {
            mean: vec![0.0; config.in_chans],
            std: vec![1.0; config.in_chans],
        },
    };
    Ok(Some(CheckpointMeta {
        config,
        classes,
        mean: norm.mean,
        std: norm.std,
    }))
}

/// One tensor of a checkpoint, converted to f32.
pub(crate) struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Every tensor of a checkpoint by name (F32, F16 or BF16, converted to f32), after checking
/// them against the file's checksums when it has them.
pub(crate) fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>, CheckpointError> {
    let bytes = read(path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(path, e))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(path, e))?;
    checksum::verify(&st, header.metadata().as_ref()).map_err(|problem| {
        CheckpointError::Damaged {
            path: path.to_path_buf(),
            problem,
        }
    })?;
    let mut out = BTreeMap::new();
    for (name, t) in st.tensors() {
        let raw = t.data();
        let data: Vec<f32> = match t.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(mismatch(
                    path,
                    format!("tensor '{name}' has dtype {other:?}, expected F32, F16 or BF16"),
                ))
            }
        };
        let shape = t.shape().to_vec();
        out.insert(name, Tensor { shape, data });
    }
    Ok(out)
}

/// An error naming the first non-finite value of `params`, if any.
pub(crate) fn check_finite(
    path: &Path,
    layout: &ParamLayout,
    params: &[f32],
) -> Result<(), CheckpointError> {
    match params.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => {
            let (name, k) = locate(&layout.entries, i);
            Err(mismatch(
                path,
                format!(
                    "tensor '{name}' holds {} at element {k} (expected finite values)",
                    params[i]
                ),
            ))
        }
    }
}

/// Loads the weights of a checkpoint for a model of `cfg`: every tensor of the layout must
/// be present with timm's shape (F32, F16 or BF16), and no other tensor may be present
/// (timm's `load_state_dict(strict=True)`). Tensors are checked against the file's
/// checksums when it has them, and every value must be finite. (`--init-from` loads with
/// [`super::transfer`], which also adapts a checkpoint to another size or head.)
pub fn load_weights(path: &Path, cfg: &ModelConfig) -> Result<Vec<f32>, CheckpointError> {
    let layout = ParamLayout::new(cfg);
    let tensors = read_tensors(path)?;
    let expected: HashSet<&str> = layout.entries.iter().map(|e| e.name.as_str()).collect();
    let extra: Vec<&str> = tensors
        .keys()
        .map(String::as_str)
        .filter(|n| !expected.contains(n))
        .collect();
    if !extra.is_empty() {
        return Err(mismatch(
            path,
            format!(
                "holds tensors a {} model does not have: {} (a checkpoint of another configuration?)",
                cfg.summary(),
                extra.join(", ")
            ),
        ));
    }
    let mut params = vec![0.0f32; layout.len];
    for e in &layout.entries {
        let t = tensors.get(&e.name).ok_or_else(|| {
            mismatch(
                path,
                format!(
                    "tensor '{}' is missing (expected shape {:?} for {})",
                    e.name,
                    e.shape,
                    cfg.summary()
                ),
            )
        })?;
        if t.shape != e.shape {
            return Err(mismatch(
                path,
                format!(
                    "tensor '{}' has shape {:?}, expected {:?} for {} (a checkpoint of another configuration?)",
                    e.name,
                    t.shape,
                    e.shape,
                    cfg.summary()
                ),
            ));
        }
        params[e.range.clone()].copy_from_slice(&t.data);
    }
    check_finite(path, &layout, &params)?;
    Ok(params)
}

/// Loads a vitk checkpoint: its metadata and weights.
pub fn load_checkpoint(path: &Path) -> Result<(CheckpointMeta, Vec<f32>), CheckpointError> {
    let meta = read_meta(path)?.ok_or_else(|| {
        mismatch(path, "has no vitk metadata (vitk.config); for timm weights use --init-from with a model config")
    })?;
    meta.config
        .validate()
        .map_err(|e| mismatch(path, e.to_string()))?;
    let params = load_weights(path, &meta.config)?;
    Ok((meta, params))
}

/// The tensor holding element `i` of a flat parameter buffer, and the element's index in it.
pub(crate) fn locate(entries: &[ParamEntry], i: usize) -> (&str, usize) {
    entries
        .iter()
        .find(|e| e.range.contains(&i))
        .map_or(("?", i), |e| (e.name.as_str(), i - e.range.start))
}

fn read(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    std::fs::read(path).map_err(|cause| CheckpointError::Io {
        path: path.to_path_buf(),
        cause,
    })
}

fn corrupt(path: &Path, e: safetensors::SafeTensorError) -> CheckpointError {
    CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}
