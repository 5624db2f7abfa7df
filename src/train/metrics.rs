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
    },
    Eval {
        epoch: usize,
        step: u64,
        val_loss: f64,
        val_acc: f64,
    },
    /// The first line of a log kept outside its run directory (`--log`): the run it
    /// belongs to (log_path.rs).
    Run { run_dir: String },
}

impl Record {
    fn step(&self) -> u64 {
        match self {
            Record::Step { step, .. } | Record::Eval { step, .. } => *step,
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

/// Draws training loss per step, validation loss and accuracy per evaluation into a PNG.
pub fn draw_curves(records: &[Record], path: &Path) -> Result<(), String> {
    register_font();
    let mut train: Vec<(f64, f64)> = Vec::new();
    let mut val_loss = Vec::new();
    let mut val_acc = Vec::new();
    for r in records {
        match *r {
            Record::Step { step, loss, .. } if loss.is_finite() => train.push((step as f64, loss)),
            Record::Eval {
                step,
                val_loss: l,
                val_acc: a,
                ..
            } => {
                val_loss.push((step as f64, l));
                val_acc.push((step as f64, 100.0 * a));
            }
            _ => {}
        }
    }
    let train = smooth(&train, 20);
    let (w, h) = (1200u32, 480u32);
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (left, right) = root.split_horizontally(w / 2);
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
        let mut c = ChartBuilder::on(&left)
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
        c.configure_series_labels()
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;

        let mut c = ChartBuilder::on(&right)
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
            .map_err(|e| e.to_string())?;
        c.draw_series(val_acc.iter().map(|&p| Circle::new(p, 3, GREEN.filled())))
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

fn register_font() {
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
}
