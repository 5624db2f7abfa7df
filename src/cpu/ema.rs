//! The exponential moving average of the weights (timm's `ModelEmaV3`), one pass over the
//! flat parameter buffer (every tensor of the layout: a ViT has no integer buffers).
//!
//! Per weight, with lerp weight w = 1 − d (d from [`crate::optim::EmaConfig::decay_at`]):
//!   ema ← lerp(ema, param, w)
//! computed as torch's lerp does (ATen's `lerp`, for numerical behaviour at both ends):
//!   |w| < 0.5:  ema + w · (param − ema)
//!   otherwise:  param − (param − ema) · (1 − w)      (w = 1 gives param exactly)

use super::Float;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// One step of the average: ema [n] ← lerp(ema, params [n], weight).
pub fn ema_update<F: Float>(ema: &mut [F], params: &[F], weight: F) {
    assert_eq!(ema.len(), params.len(), "ema_update: buffer sizes");
    let half = F::of(0.5);
    ema.par_chunks_mut(CHUNK)
        .zip(params.par_chunks(CHUNK))
        .for_each(|(e, p)| {
            for (e, &p) in e.iter_mut().zip(p) {
                *e = if weight.abs() < half {
                    *e + weight * (p - *e)
                } else {
                    p - (p - *e) * (F::one() - weight)
                };
            }
        });
}
