//! Whole-model gradient check in f64: every parameter gradient of a tiny ViT against central
//! finite differences of the loss, per named tensor, for both pool modes.

mod common;

use common::{assert_close, fd_grad, rand_vec, FD_STEP, GRAD_TOL};
use vitk::cpu::CpuEngine;
use vitk::model::drop_path::StepDrops;
use vitk::model::{ImageSize, ModelConfig, ParamLayout, Pool};

fn tiny(pool: Pool) -> ModelConfig {
    ModelConfig {
        image_size: ImageSize::square(8),
        patch_size: 4,
        in_chans: 3,
        num_classes: 5,
        embed_dim: 6,
        depth: 2,
        num_heads: 2,
        mlp_dim: 10,
        pool,
    }
}

fn check_model(pool: Pool, smoothing: f64, image_size: ImageSize) {
    check_model_dropping(pool, smoothing, image_size, None);
}

/// [`check_model`] with stochastic depth: the same fixed keep flags in every forward pass.
fn check_model_dropping(
    pool: Pool,
    smoothing: f64,
    image_size: ImageSize,
    drops: Option<&StepDrops>,
) {
    let cfg = ModelConfig {
        image_size,
        ..tiny(pool)
    };
    let layout = ParamLayout::new(&cfg);
    let batch = 3;
    // Parameters of order one (not the init's 0.02) so every nonlinearity is exercised;
    // LayerNorm weights near 1.
    let mut params = rand_vec(layout.len, 100, 0.5);
    for e in layout
        .entries
        .iter()
        .filter(|e| e.name.contains("norm") && e.name.ends_with("weight"))
    {
        params[e.range.clone()].iter_mut().for_each(|v| *v += 1.0);
    }
    let images = rand_vec(batch * cfg.image_len(), 101, 1.0);
    let labels = [1u32, 4, 0];
    let mut engine = CpuEngine::<f64>::new(&cfg, batch).expect("valid config");

    let mut loss_of = |p: &[f64]| {
        engine.forward_dropping(p, &images, drops);
        engine.loss(&labels, smoothing).loss
    };
    let numeric = fd_grad(&params, FD_STEP, &mut loss_of);

    let mut engine = CpuEngine::<f64>::new(&cfg, batch).expect("valid config");
    engine.forward_dropping(&params, &images, drops);
    engine.loss(&labels, smoothing);
    let mut grads = vec![0.0; layout.len];
    engine.backward(&params, &mut grads);

    for e in &layout.entries {
        let r = e.range.clone();
        let name = format!("{} (pool={pool}, {image_size})", e.name);
        // A gradient that is identically zero would make the check vacuous.
        assert!(
            numeric[r.clone()].iter().any(|g| g.abs() > 1e-8),
            "{name}: zero gradient"
        );
        assert_close(&name, &grads[r.clone()], &numeric[r], GRAD_TOL);
    }
}

#[test]
fn whole_model_gradients_cls_pool() {
    check_model(Pool::Cls, 0.1, ImageSize::square(8));
}

#[test]
fn whole_model_gradients_mean_pool() {
    check_model(Pool::Mean, 0.0, ImageSize::square(8));
}

/// A non-square input: 8 x 12 at patch 4, a 2 x 3 grid.
#[test]
fn whole_model_gradients_non_square() {
    let wide = ImageSize {
        height: 8,
        width: 12,
    };
    check_model(Pool::Cls, 0.1, wide);
    check_model(Pool::Mean, 0.0, wide);
}

/// Stochastic depth with fixed flags: every branch of both blocks drops one of the three
/// samples (a different one per branch), so each branch's scale 1/(1 − p) and its zero for a
/// dropped sample are both checked; no branch drops all (its gradients would be zero).
#[test]
fn whole_model_gradients_drop_path() {
    let drops = StepDrops {
        rates: vec![0.25, 0.5],
        keep: vec![
            [vec![true, false, true], vec![false, true, true]],
            [vec![true, true, false], vec![true, false, true]],
        ],
    };
    check_model_dropping(Pool::Cls, 0.1, ImageSize::square(8), Some(&drops));
    check_model_dropping(Pool::Mean, 0.0, ImageSize::square(8), Some(&drops));
}

/// Gradients accumulate across backward calls (zeroing is the caller's job).
#[test]
fn backward_accumulates_into_gradients() {
    let cfg = tiny(Pool::Cls);
    let layout = ParamLayout::new(&cfg);
    let params = rand_vec(layout.len, 7, 0.5);
    let images = rand_vec(2 * 3 * 8 * 8, 8, 1.0);
    let mut engine = CpuEngine::<f64>::new(&cfg, 2).expect("valid config");
    engine.forward(&params, &images);
    engine.loss(&[0, 1], 0.0);
    let mut once = vec![0.0; layout.len];
    engine.backward(&params, &mut once);
    let mut twice = once.clone();
    engine.backward(&params, &mut twice);
    let doubled: Vec<f64> = once.iter().map(|g| 2.0 * g).collect();
    assert_close("accumulated gradients", &twice, &doubled, 1e-14);
}
