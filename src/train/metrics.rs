//! The JSON-lines metrics log (one object per step and per evaluation) and the loss and
//! accuracy curves drawn from it.

use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// One line of metrics.jsonl.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    Step {
        step: u64,
        epoch: usize,
        loss: f64,
        lr: f64,
        img_per_s: f64,
        /// When the step's output arrived, seconds since the Unix epoch (0 in older logs).
        #[serde(default)]
        time: f64,
    },
    /// An evaluation at the end of an epoch (or of the run), with the epoch's figures.
    Eval {
        epoch: usize,
        step: u64,
        val_loss: f64,
        /// Top-1 validation accuracy.
        val_acc: f64,
        /// The fields below are absent (0) in logs of older vitk.
        #[serde(default)]
        val_top5: f64,
        /// Training accuracy over the epoch's steps (of this invocation, after a resume).
        #[serde(default)]
        train_acc: f64,
        /// Wall time of the epoch's steps (of this invocation), seconds.
        #[serde(default)]
        epoch_secs: f64,
        /// Training images per second over the epoch.
        #[serde(default)]
        img_per_s: f64,
        /// Estimated seconds to the end of the run, at the epoch's pace.
        #[serde(default)]
        eta_secs: f64,
        #[serde(default)]
        time: f64,
        /// Validation of the weights' EMA (`--ema-decay`; absent without it and in older logs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        val_acc_ema: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        val_loss_ema: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        val_top5_ema: Option<f64>,
    },
    /// A pre-training run's evaluation at the end of an epoch: the masked-prediction loss
    /// over the validation images with fixed masks (`vitk pretrain`).
    #[serde(rename = "pretrain_eval")]
    PretrainEval {
        epoch: usize,
        step: u64,
        val_loss: f64,
        epoch_secs: f64,
        img_per_s: f64,
        eta_secs: f64,
        time: f64,
    },
    /// The first line of a log kept outside its run directory (`--log`): the run it
    /// belongs to (log_path.rs).
    Run { run_dir: String },
}

impl Record {
    fn step(&self) -> u64 {
        match self {
            Record::Step { step, .. }
            | Record::Eval { step, .. }
            | Record::PretrainEval { step, .. } => *step,
            Record::Run { .. } => 0,
        }
    }
}

/// Appends records to a JSON-lines file and keeps them for the curves.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
    pub records: Vec<Record>,
}

impl MetricsLog {
    /// Opens `path` for appending. On resume, records after `keep_through_step` (written
    /// after the state being resumed was saved) are dropped so the log matches the state.
    pub fn open(path: &Path, keep_through_step: Option<u64>) -> io::Result<Self> {
        let mut records = Vec::new();
        if let Some(last) = keep_through_step {
            // The kept lines are written back exactly as they were read: re-serialising
            // parsed floats could change their text.
            let mut text = String::new();
            if path.exists() {
                for line in BufReader::new(File::open(path)?).lines() {
                    let line = line?;
                    // Lines that do not parse (a torn last line after a crash) are dropped.
                    if let Ok(r) = serde_json::from_str::<Record>(&line) {
                        if r.step() <= last {
                            records.push(r);
                            text.push_str(&line);
                            text.push('\n');
                        }
                    }
                }
            }
            crate::atomic::write_atomic(path, text.as_bytes())?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            records,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn push(&mut self, r: Record) -> io::Result<()> {
        writeln!(
            self.file,
            "{}",
            serde_json::to_string(&r).unwrap_or_default()
        )?;
        self.records.push(r);
        Ok(())
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Draws training loss per step with validation loss, validation top-1 and top-5 accuracy per
/// evaluation, and the learning rate per step into a PNG (one evaluation shows as a marker).
pub fn draw_curves(records: &[Record], path: &Path) -> Result<(), String> {
    register_font();
    let mut train: Vec<(f64, f64)> = Vec::new();
    let mut lrs = Vec::new();
    let mut val_loss = Vec::new();
    let mut val_acc = Vec::new();
    let mut val_top5 = Vec::new();
    for r in records {
        match *r {
            Record::Step { step, loss, lr, .. } => {
                if loss.is_finite() {
                    train.push((step as f64, loss));
                }
                lrs.push((step as f64, lr));
            }
            Record::Eval {
                step,
                val_loss: l,
                val_acc: a,
                val_top5: a5,
                ..
            } => {
                if l.is_finite() {
                    val_loss.push((step as f64, l));
                }
                val_acc.push((step as f64, 100.0 * a));
                // older logs have no top-5 (0)
                if a5 > 0.0 {
                    val_top5.push((step as f64, 100.0 * a5));
                }
            }
            Record::PretrainEval {
                step, val_loss: l, ..
            } => {
                if l.is_finite() {
                    val_loss.push((step as f64, l));
                }
            }
            Record::Run { .. } => {}
        }
    }
    let train = smooth(&train, 20);
    let (w, h) = (1500u32, 440u32);
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let panels = root.split_evenly((1, 3));
        let (left, right, lr_area) = (&panels[0], &panels[1], &panels[2]);
        let max_step = train
            .iter()
            .chain(&val_loss)
            .map(|p| p.0)
            .fold(1.0, f64::max);
        let max_loss = train
            .iter()
            .chain(&val_loss)
            .map(|p| p.1)
            .fold(0.1, f64::max)
            * 1.05;
        let mut c = ChartBuilder::on(left)
            .caption("loss", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..max_step, 0.0..max_loss)
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .x_desc("step")
            .draw()
            .map_err(|e| e.to_string())?;
        c.draw_series(LineSeries::new(train, &BLUE))
            .map_err(|e| e.to_string())?
            .label("train (smoothed)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], BLUE));
        c.draw_series(LineSeries::new(val_loss.clone(), RED.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("validation")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], RED));
        c.draw_series(val_loss.iter().map(|&p| Circle::new(p, 3, RED.filled())))
            .map_err(|e| e.to_string())?;
        c.configure_series_labels()
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;

        let mut c = ChartBuilder::on(right)
            .caption("validation accuracy (%)", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(0.0..max_step, 0.0..100.0)
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .x_desc("step")
            .draw()
            .map_err(|e| e.to_string())?;
        c.draw_series(LineSeries::new(val_acc.clone(), GREEN.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("top-1")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], GREEN));
        c.draw_series(val_acc.iter().map(|&p| Circle::new(p, 3, GREEN.filled())))
            .map_err(|e| e.to_string())?;
        let top5 = MAGENTA.mix(0.8);
        c.draw_series(LineSeries::new(val_top5.clone(), top5.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("top-5")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], top5));
        c.draw_series(val_top5.iter().map(|&p| Circle::new(p, 3, top5.filled())))
            .map_err(|e| e.to_string())?;
        c.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;

        let max_lr = lrs.iter().map(|p| p.1).fold(1e-12, f64::max) * 1.05;
        let mut c = ChartBuilder::on(lr_area)
            .caption("learning rate", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..max_step, 0.0..max_lr)
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .x_desc("step")
            .y_label_formatter(&|v| format!("{v:.1e}"))
            .draw()
            .map_err(|e| e.to_string())?;
        c.draw_series(LineSeries::new(lrs, BLACK.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    let img = image::RgbImage::from_raw(w, h, pixels).ok_or("curve buffer size")?;
    let tmp = path.with_extension("png.tmp");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Running mean over `window` points, so a noisy per-step loss reads as a curve.
fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len());
    let mut sum = 0.0;
    for (i, &(x, y)) in points.iter().enumerate() {
        sum += y;
        if i >= window {
            sum -= points[i - window].1;
        }
        out.push((x, sum / (i + 1).min(window) as f64));
    }
    out
}

/// Registers DejaVu Sans as "sans-serif" for plotters' text (once).
pub(crate) fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // DejaVu Sans is embedded by the `dejavu` crate; registration only fails on a bad font.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On resume the kept lines come back byte for byte, whatever their floats (serde_json
    /// without `float_roundtrip` parses "2.3024660921096802" one ulp off), and later lines go.
    #[test]
    fn resume_keeps_earlier_lines_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let kept = concat!(
            r#"{"kind":"step","step":1,"epoch":0,"loss":2.3024660921096802,"lr":0.0001,"img_per_s":12.5}"#,
            "\n",
            r#"{"kind":"eval","epoch":0,"step":2,"val_loss":0.30000000000000004,"val_acc":0.1}"#,
            "\n",
        );
        let dropped = concat!(
            r#"{"kind":"step","step":3,"epoch":1,"loss":1.0,"lr":0.0001,"img_per_s":12.5}"#,
            "\n",
            r#"{"kind":"step","step":4,"#, // a torn last line
        );
        std::fs::write(&path, format!("{kept}{dropped}")).unwrap();
        let log = MetricsLog::open(&path, Some(2)).unwrap();
        assert_eq!(log.records.len(), 2);
        // Parsed exactly too (the curves and any later reader see the logged value).
        assert!(matches!(log.records[0], Record::Step { loss, .. } if loss == 2.3024660921096802));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), kept);
    }

    /// One evaluation is enough for the curves (a marker), and the LR panel is drawn from the
    /// step records.
    #[test]
    fn curves_draw_after_one_evaluation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.png");
        let step = |step, lr| Record::Step {
            step,
            epoch: 0,
            loss: 2.0,
            lr,
            img_per_s: 1.0,
            time: 0.0,
        };
        let eval = Record::Eval {
            epoch: 0,
            step: 2,
            val_loss: 1.5,
            val_acc: 0.5,
            val_top5: 0.9,
            train_acc: 0.4,
            epoch_secs: 1.0,
            img_per_s: 1.0,
            eta_secs: 0.0,
            time: 0.0,
            val_acc_ema: None,
            val_loss_ema: None,
            val_top5_ema: None,
        };
        draw_curves(&[step(1, 1e-4), step(2, 2e-4), eval], &path).unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!((img.width(), img.height()), (1500, 440));
    }
}
