//! AdamW on the CPU (torch.optim.AdamW with per-group rates; the update rule is written out
//! in src/optim.rs) and clip_grad_norm_, over the flat parameter buffer.

use super::Float;
use crate::optim::{AdamWConfig, AdamWScalars, ParamGroups};
use rayon::prelude::*;

/// Optimizer state: the two moments in the parameter layout, and the step count.
#[derive(Clone, Debug)]
pub struct AdamW<F: Float> {
    pub cfg: AdamWConfig,
    pub m: Vec<F>,
    pub v: Vec<F>,
    /// Steps taken so far.
    pub step: u64,
}

const CHUNK: usize = 1 << 14;

impl AdamW<f32> {
    /// The moments and step count, to save.
    pub fn state(&self) -> crate::engine::OptimizerState {
        crate::engine::OptimizerState {
            m: self.m.clone(),
            v: self.v.clone(),
            step: self.step,
        }
    }

    /// Replaces the moments and step count (resume); the sizes must match.
    pub fn load_state(&mut self, o: &crate::engine::OptimizerState) -> Result<(), String> {
        let n = self.m.len();
        if o.m.len() != n || o.v.len() != n {
            return Err(format!(
                "optimizer state of {} and {} values for a model of {n} parameters",
                o.m.len(),
                o.v.len()
            ));
        }
        self.m.copy_from_slice(&o.m);
        self.v.copy_from_slice(&o.v);
        self.step = o.step;
        Ok(())
    }
}

impl<F: Float> AdamW<F> {
    pub fn new(cfg: AdamWConfig, num_params: usize) -> Self {
        Self {
            cfg,
            m: vec![F::zero(); num_params],
            v: vec![F::zero(); num_params],
            step: 0,
        }
    }

    /// One update of the trainable tensors of `params` with `grads` at base learning rate
    /// `lr`, each at its group's rate lr·s (`groups`: the same layout as the buffers);
    /// frozen tensors and their moments are not touched.
    pub fn update(&mut self, groups: &ParamGroups, params: &mut [F], grads: &[F], lr: f64) {
        let n = self.m.len();
        assert!(
            params.len() == n && grads.len() == n && groups.trainable().end == n,
            "AdamW: buffer sizes"
        );
        self.step += 1;
        for e in groups.tensors.iter().filter(|t| !t.frozen) {
            // Scalars as PyTorch computes them: in double precision at the group's rate, then
            // used in F (lr·1 is lr: without layer decay, the base rate's scalars exactly).
            let s = AdamWScalars::new(&self.cfg, self.step, lr * e.lr_scale);
            let (step_size, bc2_sqrt) = (F::of(s.step_size), F::of(s.bc2_sqrt));
            let (b1c, b2, b2c, eps) = (F::of(s.b1c), F::of(s.b2), F::of(s.b2c), F::of(s.eps));
            let keep = if e.decay { F::of(s.keep) } else { F::one() };
            let r = e.range.clone();
            params[r.clone()]
                .par_chunks_mut(CHUNK)
                .zip(grads[r.clone()].par_chunks(CHUNK))
                .zip(
                    self.m[r.clone()]
                        .par_chunks_mut(CHUNK)
                        .zip(self.v[r].par_chunks_mut(CHUNK)),
                )
                .for_each(|((p, g), (m, v))| {
                    for i in 0..p.len() {
                        let gi = g[i];
                        p[i] *= keep;
                        m[i] += b1c * (gi - m[i]);
                        v[i] = b2 * v[i] + b2c * gi * gi;
                        let denom = v[i].sqrt() / bc2_sqrt + eps;
                        p[i] -= step_size * m[i] / denom;
                    }
                });
        }
    }
}

/// The global L2 norm of a gradient buffer, accumulated in f64 over fixed chunks (the
/// result does not depend on the thread count).
pub fn global_norm<F: Float>(grads: &[F]) -> f64 {
    let partials: Vec<f64> = grads
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&g| g.to_f64() * g.to_f64()).sum())
        .collect();
    partials.iter().sum::<f64>().sqrt()
}

/// torch.nn.utils.clip_grad_norm_: scales `grads` by min(1, max_norm / (norm + 1e-6)).
/// Returns the norm before clipping.
pub fn clip_grad_norm<F: Float>(grads: &mut [F], max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        let coef = F::of(coef);
        grads
            .par_chunks_mut(CHUNK)
            .for_each(|c| c.iter_mut().for_each(|g| *g *= coef));
    }
    norm
}
