//! The run directory: config.json, metrics.jsonl, curves.png, model.safetensors (timm
//! names) and state.safetensors (parameters, AdamW moments and the loop position, for
//! --resume). Every file is written atomically; an existing run is never overwritten.

use super::config::TrainConfig;
use crate::atomic::write_atomic;
use crate::engine::OptimizerState;
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

    /// Saves parameters, optimizer moments and loop position in one file.
    pub fn save_state(
        &self,
        params: &[f32],
        opt: &OptimizerState,
        pos: LoopPosition,
    ) -> Result<(), String> {
        let p = self.state_path();
        let tensors = [
            ("params", params),
            ("adam_m", &opt.m[..]),
            ("adam_v", &opt.v[..]),
        ]
        .map(|(name, data)| {
            let view = TensorView::new(Dtype::F32, vec![data.len()], bytemuck::cast_slice(data))
                .expect("1-D view");
            (name, view)
        });
        let mut meta = HashMap::new();
        meta.insert(
            "vitk.position".to_string(),
            serde_json::to_string(&pos).unwrap_or_default(),
        );
        meta.insert("vitk.adam_step".to_string(), opt.step.to_string());
        let bytes = safetensors::serialize(tensors, Some(meta))
            .map_err(|e| format!("{}: {e}", p.display()))?;
        write_atomic(&p, &bytes).map_err(|e| format!("{}: {e}", p.display()))
    }

    /// Loads what [`Self::save_state`] wrote, checking sizes against `num_params`.
    pub fn load_state(
        &self,
        num_params: usize,
    ) -> Result<(Vec<f32>, OptimizerState, LoopPosition), String> {
        let p = self.state_path();
        let bad = |what: String| format!("{}: {what}", p.display());
        let bytes = std::fs::read(&p).map_err(|e| bad(e.to_string()))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a valid state file ({e})")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let pos: LoopPosition = meta
            .get("vitk.position")
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| bad("missing or invalid vitk.position metadata".into()))?;
        let adam_step: u64 = meta
            .get("vitk.adam_step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("missing or invalid vitk.adam_step metadata".into()))?;
        let read = |name: &str| -> Result<Vec<f32>, String> {
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
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let params = read("params")?;
        let opt = OptimizerState {
            m: read("adam_m")?,
            v: read("adam_v")?,
            step: adam_step,
        };
        Ok((params, opt, pos))
    }
}
