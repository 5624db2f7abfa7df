//! The run directory: config.json, metrics.jsonl, curves.png, model.safetensors (timm
//! names), model_ema.safetensors (the weights' EMA, with --ema-decay) and state.safetensors
//! (parameters, AdamW moments, the EMA and the loop position, for --resume). Every file is written atomically; an existing run is never overwritten.

use super::config::TrainConfig;
use crate::atomic::write_atomic;
use crate::engine::OptimizerState;
use crate::model::checksum::{self, Verified};
use crate::model::{locate, ParamEntry, ParamLayout};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the loop stands: saved with the state, restored by --resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoopPosition {
    /// Optimizer steps taken.
    pub step: u64,
    /// Epoch of the next batch.
    pub epoch: usize,
    /// Index of the next batch within that epoch.
    pub batch: usize,
}

/// A run directory and the paths of its files.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// Creates a new run directory; refuses one that already holds files other than its
    /// lock (use --resume).
    pub fn create(path: &Path) -> Result<Self, String> {
        if path.exists() {
            let busy = std::fs::read_dir(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .flatten()
                .any(|e| e.file_name() != super::run_lock::LOCK_FILE);
            if busy {
                let dir = Self {
                    path: path.to_path_buf(),
                };
                let hint = if dir.config_path().is_file() && !dir.state_path().is_file() {
                    format!(
                        "it holds a run stopped before its first checkpoint (no {}): nothing to resume; remove it to start again",
                        dir.state_path().display()
                    )
                } else {
                    format!(
                        "choose another --out, or continue it with --resume {}",
                        path.display()
                    )
                };
                return Err(format!(
                    "{}: run directory already exists and is not empty ({hint})",
                    path.display()
                ));
            }
        }
        std::fs::create_dir_all(path)
            .map_err(|e| format!("{}: cannot create run directory: {e}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// The first free `runs/run-N` under `base`.
    pub fn next_free(base: &Path) -> PathBuf {
        (1..)
            .map(|n| base.join(format!("run-{n}")))
            .find(|p| !p.exists())
            .unwrap_or_else(|| base.join("run"))
    }

    /// An existing run to resume: it must hold config.json and state.safetensors.
    pub fn open(path: &Path) -> Result<Self, String> {
        let dir = Self {
            path: path.to_path_buf(),
        };
        if dir.config_path().is_file() && !dir.state_path().is_file() {
            return Err(format!(
                "{}: missing: this run stopped before its first checkpoint (saved at the end of each epoch), so there is nothing to resume; remove {} and start again",
                dir.state_path().display(),
                path.display()
            ));
        }
        for f in [dir.config_path(), dir.state_path()] {
            if !f.is_file() {
                return Err(format!(
                    "{}: missing (expected a run directory written by `vitk train`)",
                    f.display()
                ));
            }
        }
        Ok(dir)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.json")
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }
    pub fn curves_path(&self) -> PathBuf {
        self.path.join("curves.png")
    }
    pub fn model_path(&self) -> PathBuf {
        self.path.join("model.safetensors")
    }
    /// The parameters of the best validation top-1 so far.
    pub fn best_path(&self) -> PathBuf {
        self.path.join("best.safetensors")
    }
    /// The weights' EMA, as a checkpoint (runs with --ema-decay).
    pub fn ema_path(&self) -> PathBuf {
        self.path.join("model_ema.safetensors")
    }
    /// The weights' EMA at its best validation top-1 so far (`--ema-decay`).
    pub fn best_ema_path(&self) -> PathBuf {
        self.path.join("best_ema.safetensors")
    }

    pub fn state_path(&self) -> PathBuf {
        self.path.join("state.safetensors")
    }

    pub fn write_config(&self, cfg: &TrainConfig) -> Result<(), String> {
        let p = self.config_path();
        let text = serde_json::to_string_pretty(cfg).map_err(|e| e.to_string())?;
        write_atomic(&p, text.as_bytes()).map_err(|e| format!("{}: {e}", p.display()))
    }

    pub fn read_config(&self) -> Result<TrainConfig, String> {
        let p = self.config_path();
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a vitk run config: {e}", p.display()))
    }

    /// Saves parameters, optimizer moments, the weights' EMA (`ema`, when on) and loop
    /// position in one file, with the checksum of each tensor ([`checksum`]).
    pub fn save_state(
        &self,
        params: &[f32],
        opt: &OptimizerState,
        ema: Option<&[f32]>,
        pos: LoopPosition,
    ) -> Result<(), String> {
        let p = self.state_path();
        let mut tensors: Vec<(&str, &[u8])> = vec![
            ("params", bytemuck::cast_slice(params)),
            ("adam_m", bytemuck::cast_slice(&opt.m)),
            ("adam_v", bytemuck::cast_slice(&opt.v)),
        ];
        if let Some(e) = ema {
            tensors.push(("ema", bytemuck::cast_slice(e)));
        }
        let mut meta = HashMap::new();
        checksum::stamp(&mut meta, tensors.iter().copied());
        meta.insert(
            "vitk.position".to_string(),
            serde_json::to_string(&pos).unwrap_or_default(),
        );
        meta.insert("vitk.adam_step".to_string(), opt.step.to_string());
        let views = tensors.into_iter().map(|(name, bytes)| {
            let view = TensorView::new(Dtype::F32, vec![bytes.len() / 4], bytes).expect("1-D view");
            (name, view)
        });
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| format!("{}: {e}", p.display()))?;
        write_atomic(&p, &bytes).map_err(|e| format!("{}: {e}", p.display()))
    }

    /// Loads what [`Self::save_state`] wrote for a model laid out by `layout`: sizes are
    /// checked, tensors against their checksums (when the file has them), and values must be
    /// finite (and the second moments not negative), so that a damaged state is refused
    /// here rather than trained into NaN.
    pub fn load_state(&self, layout: &ParamLayout) -> Result<SavedState, String> {
        self.load_state_of(&layout.entries, layout.len)
    }

    /// [`Self::load_state`] for any layout: `entries` (to name a bad value's tensor) of a
    /// buffer of `num_params` scalars (the pre-training layout's, for `vitk pretrain`).
    pub fn load_state_of(
        &self,
        entries: &[ParamEntry],
        num_params: usize,
    ) -> Result<SavedState, String> {
        let p = self.state_path();
        let bad = |what: String| format!("{}: {what}", p.display());
        let bytes = std::fs::read(&p).map_err(|e| bad(e.to_string()))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a valid state file ({e})")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let verified = checksum::verify(&st, Some(&meta)).map_err(|problem| {
            bad(format!(
                "{problem}. The run cannot continue from it: restore the file from a copy, or start a new run from the weights of the same step with --init-from {}",
                self.model_path().display()
            ))
        })?;
        let pos: LoopPosition = meta
            .get("vitk.position")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| bad("missing or invalid vitk.position metadata".into()))?;
        let adam_step: u64 = meta
            .get("vitk.adam_step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("missing or invalid vitk.adam_step metadata".into()))?;
        // `nonneg`: AdamW takes the square root of the second moments.
        let read = |name: &str, nonneg: bool| -> Result<Vec<f32>, String> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("tensor '{name}' is missing")))?;
            if t.dtype() != Dtype::F32 || t.shape() != [num_params] {
                return Err(bad(format!(
                    "tensor '{name}' is {:?} {:?}, expected F32 [{num_params}] (a state of another model configuration?)",
                    t.dtype(),
                    t.shape()
                )));
            }
            let values: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let wrong = |v: f32| !v.is_finite() || (nonneg && v < 0.0);
            if let Some(i) = values.iter().position(|&v| wrong(v)) {
                let (param, k) = locate(entries, i);
                let expected = if nonneg {
                    "a finite value >= 0"
                } else {
                    "a finite value"
                };
                return Err(bad(format!(
                    "tensor '{name}' holds {} at index {i} (element {k} of '{param}'), expected {expected}; the run cannot continue from this state",
                    values[i]
                )));
            }
            Ok(values)
        };
        let params = read("params", false)?;
        let opt = OptimizerState {
            m: read("adam_m", false)?,
            v: read("adam_v", true)?,
            step: adam_step,
        };
        // Present only in states of runs with --ema-decay.
        let ema = match st.tensor("ema") {
            Ok(_) => Some(read("ema", false)?),
            Err(_) => None,
        };
        Ok(SavedState {
            params,
            opt,
            ema,
            pos,
            verified,
        })
    }
}

/// What [`RunDir::load_state`] read.
pub struct SavedState {
    pub params: Vec<f32>,
    pub opt: OptimizerState,
    /// The weights' EMA [P] (runs with --ema-decay).
    pub ema: Option<Vec<f32>>,
    pub pos: LoopPosition,
    /// Whether the file's checksums were checked (older files have none).
    pub verified: Verified,
}
