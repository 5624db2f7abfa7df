//! The memory a run will allocate, estimated from the model and batch before anything is
//! allocated, and checked against what the host has (MemAvailable, and a cgroup's limit) or
//! the device has free. Sizes are f64 bytes: any model can be estimated without overflow.

use crate::cpu::{CpuEngine, CpuPretrainEngine};
use crate::data::loader::PREFETCH;
use crate::model::{ModelConfig, ParamLayout, PretrainLayout};
use crate::pretrain::Objective;
use std::path::Path;

const GIB: f64 = (1u64 << 30) as f64;

/// One part of an estimate: what it is, its size, and which flags shrink it.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub what: String,
    pub bytes: f64,
    pub hint: &'static str,
}

/// What a run allocates in one place (the host or a device).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Estimate {
    pub parts: Vec<Part>,
}

/// The data a run holds in memory: images of `image_bytes` each (C·S·S bytes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DataSize {
    pub images: f64,
    pub image_bytes: f64,
    /// Loading makes a second copy (resizing, holding out validation images).
    pub copied_while_loading: bool,
}

/// Where the engine keeps its buffers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EngineKind {
    /// The rayon engine: everything on the host.
    Cpu,
    /// The device engine: `device` bytes on the device (on the host too for the emulator),
    /// `pinned` bytes of pinned host staging.
    Device {
        device: f64,
        pinned: f64,
        device_is_host: bool,
    },
}

pub const HINT_BATCH: &str = "a smaller --batch-size";
pub const HINT_MODEL: &str = "a smaller model (--model, --embed-dim, --depth, --mlp-dim)";
pub const HINT_DATA: &str = "less data in memory (--image-size, --val-split)";

impl Estimate {
    pub fn total(&self) -> f64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }

    fn add(&mut self, what: String, bytes: f64, hint: &'static str) {
        self.parts.push(Part { what, bytes, hint });
    }

    /// Ok when the total fits in `available` bytes (None: unknown, not checked); else an
    /// error with the figures, the largest parts and what to change.
    /// Returns a summary ("about X of Y available on the host").
    pub fn check(&self, place: &str, available: Option<(f64, String)>) -> Result<String, String> {
        let total = self.total();
        let Some((avail, source)) = available else {
            return Ok(format!(
                "about {} on the {place} (available memory unknown: not checked)",
                format_bytes(total)
            ));
        };
        if total <= avail {
            return Ok(format!(
                "about {} of {} available on the {place}",
                format_bytes(total),
                format_bytes(avail)
            ));
        }
        let mut parts: Vec<&Part> = self.parts.iter().collect();
        parts.sort_by(|a, b| b.bytes.total_cmp(&a.bytes));
        let listed: Vec<String> = parts
            .iter()
            .take(3)
            .map(|p| format!("{} {}", p.what, format_bytes(p.bytes)))
            .collect();
        let hint = parts.first().map_or(HINT_BATCH, |p| p.hint);
        Err(format!(
            "not enough memory on the {place}: this run needs about {} and {} is available ({source}); the largest parts: {}. Try {hint}.",
            format_bytes(total),
            format_bytes(avail),
            listed.join(", ")
        ))
    }
}

/// Bytes as "12.3 GiB" / "45.6 MiB".
pub fn format_bytes(b: f64) -> String {
    if b >= GIB {
        format!("{:.1} GiB", b / GIB)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    }
}

/// The host memory of a training run of `cfg` (valid) at `batch` on `engine`, holding `data`.
pub fn host_estimate(
    cfg: &ModelConfig,
    batch: usize,
    data: Option<DataSize>,
    engine: EngineKind,
) -> Estimate {
    host_estimate_of(cfg, batch, data, engine, Trained::default())
}

/// What a run trains beside the engine's buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Trained {
    /// The objective of a pre-training run (`vitk pretrain`: its layout and the decoder's
    /// activations); None for a classifier.
    pub pretrain: Option<Objective>,
    /// An EMA of the weights is kept (`--ema-decay`): one more copy of the parameters.
    pub ema: bool,
}

impl Trained {
    /// The number of trained parameters of `cfg`.
    pub fn params(&self, cfg: &ModelConfig) -> usize {
        match &self.pretrain {
            Some(o) => PretrainLayout::new(cfg, o.decoder_outputs(cfg)).len,
            None => ParamLayout::new(cfg).len,
        }
    }

    /// Bytes of the weights' EMA (f32 parameters), 0 without one.
    pub fn ema_bytes(&self, cfg: &ModelConfig) -> f64 {
        if self.ema {
            4.0 * self.params(cfg) as f64
        } else {
            0.0
        }
    }
}

/// [`host_estimate`] of the run `trained` describes.
pub fn host_estimate_of(
    cfg: &ModelConfig,
    batch: usize,
    data: Option<DataSize>,
    engine: EngineKind,
    trained: Trained,
) -> Estimate {
    let mut e = Estimate::default();
    let pretrain = trained.pretrain;
    let n = trained.params(cfg) as f64;
    let b = batch as f64;
    let image = cfg.image_len() as f64;
    match engine {
        EngineKind::Cpu => {
            e.add(
                format!("parameters, gradients and AdamW moments ({n} parameters)"),
                16.0 * n,
                HINT_MODEL,
            );
            e.add(
                format!("activations at --batch-size {batch}"),
                4.0 * match pretrain {
                    Some(o) => CpuPretrainEngine::<f32>::buffer_elems(cfg, &o, batch),
                    None => CpuEngine::<f32>::buffer_elems(cfg, batch),
                },
                HINT_BATCH,
            );
        }
        EngineKind::Device {
            device,
            pinned,
            device_is_host,
        } => {
            // the f32 parameters, their bf16 copy and the optimizer group table (u16), built here
            e.add(
                format!("parameters on the host ({n} parameters)"),
                8.0 * n,
                HINT_MODEL,
            );
            e.add(
                format!("pinned staging at --batch-size {batch}"),
                pinned,
                HINT_BATCH,
            );
            if device_is_host {
                e.add(
                    format!("emulated device memory at --batch-size {batch}"),
                    device,
                    HINT_BATCH,
                );
            }
        }
    }
    if trained.ema && matches!(engine, EngineKind::Cpu) {
        e.add(
            "the weights' EMA".into(),
            trained.ema_bytes(cfg),
            HINT_MODEL,
        );
    }
    // Saving a checkpoint copies the parameters and moments (and the EMA) and serialises them.
    e.add(
        "checkpoint writing".into(),
        24.0 * n + 2.0 * trained.ema_bytes(cfg),
        HINT_MODEL,
    );
    // Batches prefetched, the one in use and one being built; an evaluation batch.
    e.add(
        format!("batches in flight at --batch-size {batch}"),
        (PREFETCH as f64 + 3.0) * b * image * 4.0,
        HINT_BATCH,
    );
    if let Some(d) = data {
        let bytes = d.images * d.image_bytes;
        let copies = if d.copied_while_loading { 2.0 } else { 1.0 };
        e.add(
            format!(
                "the data set ({} images of {} bytes)",
                d.images, d.image_bytes
            ),
            bytes * copies,
            HINT_DATA,
        );
    }
    e
}

/// The device memory of a run whose engine allocates `device` bytes.
pub fn device_estimate(batch: usize, device: f64) -> Estimate {
    Estimate {
        parts: vec![Part {
            what: format!("parameters, moments and activations at --batch-size {batch}"),
            bytes: device,
            hint: HINT_BATCH,
        }],
    }
}

/// Memory the host can give this process: MemAvailable of /proc/meminfo, lowered to what a
/// cgroup (v2) limit leaves; None when unreadable (then nothing is checked).
pub fn host_available() -> Option<(f64, String)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let avail = kib * 1024.0;
    let cgroup = Path::new("/sys/fs/cgroup");
    let read = |f: &str| -> Option<f64> {
        std::fs::read_to_string(cgroup.join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    match (read("memory.max"), read("memory.current")) {
        (Some(max), Some(cur)) if max - cur < avail => Some((
            (max - cur).max(0.0),
            "the cgroup's memory.max less memory.current".into(),
        )),
        _ => Some((avail, "MemAvailable in /proc/meminfo".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_the_figures_and_the_largest_part() {
        let e = Estimate {
            parts: vec![
                Part {
                    what: "a".into(),
                    bytes: GIB,
                    hint: HINT_MODEL,
                },
                Part {
                    what: "b".into(),
                    bytes: 3.0 * GIB,
                    hint: HINT_BATCH,
                },
            ],
        };
        assert!(e.check("host", Some((4.0 * GIB, "x".into()))).is_ok());
        assert!(e.check("host", None).is_ok());
        let err = e.check("host", Some((2.0 * GIB, "x".into()))).unwrap_err();
        assert!(err.contains("4.0 GiB") && err.contains("2.0 GiB"), "{err}");
        assert!(err.contains("b 3.0 GiB, a 1.0 GiB"), "{err}");
        assert!(err.contains(HINT_BATCH), "{err}");
    }

    #[test]
    fn an_ema_costs_one_copy_of_the_weights_and_its_checkpoint() {
        let cfg = ModelConfig::preset("micro").expect("micro");
        let n = ParamLayout::new(&cfg).len as f64;
        let with = |ema, engine| {
            host_estimate_of(
                &cfg,
                8,
                None,
                engine,
                Trained {
                    pretrain: None,
                    ema,
                },
            )
            .total()
        };
        // CPU: the average itself, then its copy and serialisation when saved
        let cpu = EngineKind::Cpu;
        assert_eq!(with(true, cpu) - with(false, cpu), 12.0 * n);
        // device: the average lives on the device; the host only saves it
        let dev = EngineKind::Device {
            device: 1.0,
            pinned: 1.0,
            device_is_host: false,
        };
        assert_eq!(with(true, dev) - with(false, dev), 8.0 * n);
        assert_eq!(
            Trained {
                pretrain: None,
                ema: true
            }
            .ema_bytes(&cfg),
            4.0 * n
        );
    }

    #[test]
    fn host_memory_is_readable_here() {
        // Linux CI: /proc/meminfo exists, so the check is not silently skipped.
        if Path::new("/proc/meminfo").exists() {
            let (b, _) = host_available().expect("MemAvailable");
            assert!(b > 0.0);
        }
    }
}
