//! What the training and pre-training loops do with each step's output as it comes back (one
//! step late: the engines queue a step and return the previous one's): the divergence check,
//! the metrics log, the progress line, the epoch's figures and the run's throughput.

use super::metrics::{now_secs, MetricsLog, Record};
use super::run_dir::{LoopPosition, RunDir};
use super::trainer::Progress;
use anyhow::{bail, Context, Result};
use std::time::Instant;

/// Which loop reports: it names the loss and what can follow a divergence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Task {
    /// `vitk train`: the weights can start a new run with --init-from.
    Training,
    /// `vitk pretrain`.
    Pretraining,
}

/// A step handed to the engine, waiting for its output.
pub(crate) struct Queued {
    /// Its number (1-based: the optimizer steps taken once it is done).
    pub step: u64,
    /// Where the loop stands once it is done (epoch and batch of the step itself).
    pub pos_after: LoopPosition,
    pub lr: f64,
    pub images: usize,
    pub at: Instant,
}

impl Queued {
    /// The step taken from `pos` at `lr` on `images` images, queued now.
    pub fn at(pos: LoopPosition, lr: f64, images: usize) -> Self {
        Queued {
            step: pos.step + 1,
            pos_after: LoopPosition {
                step: pos.step + 1,
                ..pos
            },
            lr,
            images,
            at: Instant::now(),
        }
    }
}

/// Logs each step's output as it comes back.
pub(crate) struct StepReporter<'a> {
    pub task: Task,
    pub run: &'a RunDir,
    pub log: &'a mut MetricsLog,
    pub progress: &'a Progress,
    pub per_epoch: u64,
    /// The step of the last checkpoint of this run, if any (named when stopping on a
    /// diverged loss).
    pub saved_at: Option<u64>,
    timed_images: usize,
    timed_secs: f64,
    /// The first step (buffers faulted in, the step graph captured), excluded from the
    /// throughput when there are others.
    first_step_secs: Option<f64>,
    /// The current epoch's steps.
    pub epoch: EpochStats,
}

impl<'a> StepReporter<'a> {
    /// `saved_at`: a resumed run starts from the checkpoint it was saved at; a new one has none.
    pub fn new(
        task: Task,
        run: &'a RunDir,
        log: &'a mut MetricsLog,
        progress: &'a Progress,
        per_epoch: u64,
        saved_at: Option<u64>,
    ) -> Self {
        StepReporter {
            task,
            run,
            log,
            progress,
            per_epoch,
            saved_at,
            timed_images: 0,
            timed_secs: 0.0,
            first_step_secs: None,
            epoch: EpochStats::default(),
        }
    }

    /// Reports `done`, whose `loss` and `correct` (samples right; 0 when not counted) came
    /// back. `end`: when the next step was queued (or, for the last one, when it was waited
    /// for). A step's time is the gap between its queueing and the next one's: with one step
    /// in flight, once the queue is full, the engine's time per step (CPU: its computation and
    /// the host's share; device: the device time when the device is the bottleneck).
    pub fn report(&mut self, done: &Queued, loss: f64, correct: usize, end: Instant) -> Result<()> {
        if !loss.is_finite() {
            bail!(
                "{} loss is {loss} at step {} (epoch {}): stopping. {}",
                match self.task {
                    Task::Training => "training",
                    Task::Pretraining => "pre-training",
                },
                done.step,
                done.pos_after.epoch,
                self.after_divergence()
            );
        }
        let secs = end.duration_since(done.at).as_secs_f64();
        if self.first_step_secs.is_none() {
            self.first_step_secs = Some(secs);
        } else {
            self.timed_images += done.images;
            self.timed_secs += secs;
        }
        let img_per_s = done.images as f64 / secs.max(1e-9);
        self.epoch
            .add(done.pos_after.epoch, done.images, correct, secs);
        self.log
            .push(Record::Step {
                step: done.step,
                epoch: done.pos_after.epoch,
                loss,
                lr: done.lr,
                img_per_s,
                time: now_secs(),
            })
            .with_context(|| format!("{}: cannot write", self.log.path().display()))?;
        self.progress
            .step(done.pos_after, self.per_epoch, loss, done.lr, img_per_s);
        Ok(())
    }

    /// Appends `record` to the metrics log.
    pub fn push(&mut self, record: Record) -> Result<()> {
        self.log
            .push(record)
            .with_context(|| format!("{}: cannot write", self.log.path().display()))
    }

    /// The training throughput of this invocation: the first step excluded when there are
    /// others, else a batch of `batch` over the first step's time.
    pub fn img_per_s(&self, batch: usize) -> f64 {
        if self.timed_secs > 0.0 {
            self.timed_images as f64 / self.timed_secs
        } else {
            self.first_step_secs.map_or(0.0, |s| batch as f64 / s)
        }
    }

    /// What is left after a divergence, and what to try. Loaded states are verified
    /// (checksums, finite values), so the usual cause is the learning rate; --resume keeps
    /// the config.
    pub fn after_divergence(&self) -> String {
        let run = self.run.path.display();
        match self.saved_at {
            Some(step) => {
                let restart = match self.task {
                    Task::Training => format!(
                        " (--init-from {} starts it from those weights)",
                        self.run.model_path().display()
                    ),
                    Task::Pretraining => String::new(),
                };
                format!(
                    "The last saved checkpoint in {run} (step {step}) is kept. Try a lower --lr or --clip-grad in a new run{restart}."
                )
            }
            None => format!(
                "No checkpoint has been saved in this run yet (one is written at each epoch end and when the run stops), so there is nothing in {run} to resume. Try a lower --lr or --clip-grad."
            ),
        }
    }
}

/// The steps of one epoch as their outputs came back (this invocation's part of it).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct EpochStats {
    epoch: Option<usize>,
    steps: u64,
    images: usize,
    correct: usize,
    pub(crate) secs: f64,
}

impl EpochStats {
    pub(crate) fn add(&mut self, epoch: usize, images: usize, correct: usize, secs: f64) {
        if self.epoch != Some(epoch) {
            *self = EpochStats {
                epoch: Some(epoch),
                ..Default::default()
            };
        }
        self.steps += 1;
        self.images += images;
        self.correct += correct;
        self.secs += secs;
    }
    /// The figures so far, and a fresh start.
    pub(crate) fn take(&mut self) -> EpochStats {
        std::mem::take(self)
    }
    pub(crate) fn accuracy(&self) -> f64 {
        self.correct as f64 / self.images.max(1) as f64
    }
    pub(crate) fn img_per_s(&self) -> f64 {
        self.images as f64 / self.secs.max(1e-9)
    }
    pub(crate) fn secs_per_step(&self) -> f64 {
        self.secs / self.steps.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_divergence_names_the_loss_the_checkpoint_and_what_can_follow() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let run = RunDir::create(&tmp.path().join("run")).expect("run dir");
        let mut log = MetricsLog::open(&run.metrics_path(), None).expect("log");
        let progress = Progress::new(false, 0, 10);
        let mut r = StepReporter::new(Task::Pretraining, &run, &mut log, &progress, 5, Some(3));
        let start = LoopPosition {
            step: 0,
            epoch: 0,
            batch: 0,
        };
        let done = Queued::at(start, 1e-3, 8);
        let e = r.report(&done, f64::NAN, 0, Instant::now()).unwrap_err();
        let e = e.to_string();
        assert!(
            e.starts_with("pre-training loss is NaN at step 1 (epoch 0)"),
            "{e}"
        );
        assert!(
            e.contains("(step 3) is kept") && !e.contains("--init-from"),
            "{e}"
        );
        r.task = Task::Training;
        assert!(r.after_divergence().contains("--init-from"));
        r.saved_at = None;
        assert!(r
            .after_divergence()
            .starts_with("No checkpoint has been saved"));
        // A finite loss is logged and counted.
        r.report(&done, 0.5, 6, Instant::now()).expect("report");
        assert_eq!(r.epoch.accuracy(), 0.75);
    }
}
