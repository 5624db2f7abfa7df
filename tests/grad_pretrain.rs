//! The pre-training model (src/cpu/pretrain.rs), both objectives. Pixels (SimMIM style):
//! every parameter gradient against central finite differences of the loss in f64 (cls and
//! mean pooling, L1 and L2, norm_pix on and off, square and non-square images), the loss and
//! predictions against a plain f64 forward (tests/reference), and what masking nothing or
//! everything does. Colour (the ViT paper's masked patch prediction): the same gradient
//! checks, the targets and loss against a plain f64 forward, nothing predicted, the
//! substitution by sources, f32 against f64 and AdamW lowering the loss.

mod common;
mod reference;

use common::{assert_close, fd_grad, rand_vec, FD_STEP, GRAD_TOL};
use vitk::cpu::mim::PixelLoss;
use vitk::cpu::{AdamW, CpuPretrainEngine, PixelObjective};
use vitk::data::Normalize;
use vitk::model::{
    init_params, init_pretrain_params, ImageSize, ModelConfig, ParamLayout, Pool, PretrainLayout,
};
use vitk::optim::{AdamWConfig, ParamGroups};
use vitk::pretrain::{Objective, PatchMasks};

const WIDE: ImageSize = ImageSize {
    height: 8,
    width: 12,
};

fn tiny(pool: Pool, image_size: ImageSize) -> ModelConfig {
    ModelConfig {
        image_size,
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

/// Parameters of order one (not the init's 0.02) so every nonlinearity is exercised, and no
/// L1 residual is exactly 0; LayerNorm weights near 1.
fn params_for(layout: &PretrainLayout, seed: u64) -> Vec<f64> {
    let mut params = rand_vec(layout.len, seed, 0.5);
    for e in layout
        .entries
        .iter()
        .filter(|e| e.name.contains("norm") && e.name.ends_with("weight"))
    {
        params[e.range.clone()].iter_mut().for_each(|v| *v += 1.0);
    }
    params
}

/// mask [B, N] with masked and visible patches in every image.
fn mask_for(batch: usize, n: usize) -> Vec<bool> {
    let mask: Vec<bool> = (0..batch * n).map(|i| (i * 5 + 2) % 7 < 3).collect();
    for img in mask.chunks(n) {
        assert!(img.iter().any(|&m| m) && img.iter().any(|&m| !m));
    }
    mask
}

/// The pixel objective's masks for `mask` [B, N]: the token exactly where masked.
fn pixel_masks(mask: &[bool], n: usize) -> PatchMasks {
    PatchMasks {
        predicted: mask.iter().map(|&m| m as u8).collect(),
        sources: mask
            .iter()
            .enumerate()
            .map(|(i, &m)| if m { -1 } else { (i % n) as i32 })
            .collect(),
        patches: n,
    }
}

fn pixels(loss: PixelLoss, norm_pix: bool) -> Objective {
    Objective::Pixels(PixelObjective { loss, norm_pix })
}

/// A pixel engine (the normalisation plays no part in the pixel objective).
fn pixel_engine<F: vitk::cpu::Float>(
    cfg: &ModelConfig,
    objective: PixelObjective,
    batch: usize,
) -> CpuPretrainEngine<F> {
    CpuPretrainEngine::new(cfg, Objective::Pixels(objective), Normalize::NONE, batch)
        .expect("valid")
}

fn check_gradients(pool: Pool, loss: PixelLoss, norm_pix: bool, image_size: ImageSize) {
    let cfg = tiny(pool, image_size);
    let batch = 2;
    let images = rand_vec(batch * cfg.image_len(), 201, 1.0);
    let masks = pixel_masks(&mask_for(batch, cfg.num_patches()), cfg.num_patches());
    check_model_gradients(
        &cfg,
        pixels(loss, norm_pix),
        Normalize::NONE,
        &images,
        &masks,
        &format!("pool={pool}, {loss:?}, norm_pix={norm_pix}, {image_size}"),
    );
}

/// Every parameter's gradient of `objective`'s loss on (images, masks) against central
/// finite differences in f64, parameters of order one.
fn check_model_gradients(
    cfg: &ModelConfig,
    objective: Objective,
    normalize: Normalize,
    images: &[f64],
    masks: &PatchMasks,
    case: &str,
) {
    let layout = PretrainLayout::new(cfg, objective.decoder_outputs(cfg));
    let batch = masks.batch();
    let params = params_for(&layout, 200);
    let mut engine =
        CpuPretrainEngine::<f64>::new(cfg, objective, normalize, batch).expect("valid");

    let numeric = fd_grad(&params, FD_STEP, |p: &[f64]| {
        engine.forward(p, images, masks);
        engine.loss()
    });
    engine.forward(&params, images, masks);
    engine.loss();
    let mut grads = vec![0.0; layout.len];
    engine.backward(&params, &mut grads);

    for e in &layout.entries {
        let r = e.range.clone();
        let name = format!("{} ({case})", e.name);
        // Every tensor of this model reaches the loss: a zero gradient would make the
        // check vacuous.
        assert!(
            numeric[r.clone()].iter().any(|g| g.abs() > 1e-8),
            "{name}: zero gradient"
        );
        assert_close(&name, &grads[r.clone()], &numeric[r], GRAD_TOL);
    }
}

#[test]
fn gradients_cls_pool_l1_non_square() {
    check_gradients(Pool::Cls, PixelLoss::L1, false, WIDE);
}

#[test]
fn gradients_cls_pool_l2_norm_pix() {
    check_gradients(Pool::Cls, PixelLoss::L2, true, ImageSize::square(8));
}

#[test]
fn gradients_cls_pool_l1_norm_pix_non_square() {
    check_gradients(Pool::Cls, PixelLoss::L1, true, WIDE);
}

#[test]
fn gradients_mean_pool_l2_non_square() {
    check_gradients(Pool::Mean, PixelLoss::L2, false, WIDE);
}

#[test]
fn gradients_mean_pool_l1_norm_pix() {
    check_gradients(Pool::Mean, PixelLoss::L1, true, ImageSize::square(8));
}

#[test]
fn gradients_mean_pool_l2_norm_pix_non_square() {
    check_gradients(Pool::Mean, PixelLoss::L2, true, WIDE);
}

/// The pre-training model's encoder and decoder in plain f64 loops (tests/reference; no code
/// shared with src/cpu): the decoder's outputs [B, N, K] with `outputs` = K, the patch
/// embeddings substituted by `sources` [B, N] (−1 the mask token, else that patch's).
fn reference_outputs(
    cfg: &ModelConfig,
    outputs: usize,
    params: &[f64],
    images: &[f64],
    sources: &[i32],
) -> Vec<f64> {
    let enc = ParamLayout::new(cfg);
    let lay = PretrainLayout::new(cfg, outputs);
    let p = |r: &std::ops::Range<usize>| &params[r.clone()];
    let (c, ps, d, m) = (cfg.in_chans, cfg.patch_size, cfg.embed_dim, cfg.mlp_dim);
    let (sh, sw) = (cfg.image_size.height, cfg.image_size.width);
    let b = images.len() / cfg.image_len();
    let (n, t) = (cfg.num_patches(), cfg.num_tokens());
    let (h, hd) = (cfg.num_heads, cfg.head_dim());
    let k = c * ps * ps;
    let patches = reference::im2col(images, b, c, (sh, sw), ps);
    let pe = reference::linear(
        &patches,
        p(&enc.patch_w),
        Some(p(&enc.patch_b)),
        b * n,
        k,
        d,
    );
    let mut emb = pe.clone();
    for (row, &src) in sources.iter().enumerate() {
        let from = if src < 0 {
            p(&lay.mask_token)
        } else {
            let r = row / n * n + src as usize;
            &pe[r * d..(r + 1) * d]
        };
        emb[row * d..(row + 1) * d].copy_from_slice(from);
    }
    let mut x = reference::tokens(
        &emb,
        p(&enc.pos_embed),
        enc.cls_token.as_ref().map(p),
        b,
        n,
        d,
    );
    let r = b * t;
    for w in &enc.blocks {
        let (ln1, _, _) = reference::layernorm(&x, p(&w.norm1_w), p(&w.norm1_b), d);
        let qkv = reference::linear(&ln1, p(&w.qkv_w), Some(p(&w.qkv_b)), r, d, 3 * d);
        let (attn, _) = reference::attention(&qkv, b, t, h, hd);
        let proj = reference::linear(&attn, p(&w.proj_w), Some(p(&w.proj_b)), r, d, d);
        let x_mid: Vec<f64> = x.iter().zip(&proj).map(|(a, b)| a + b).collect();
        let (ln2, _, _) = reference::layernorm(&x_mid, p(&w.norm2_w), p(&w.norm2_b), d);
        let fc1 = reference::linear(&ln2, p(&w.fc1_w), Some(p(&w.fc1_b)), r, d, m);
        let g: Vec<f64> = fc1.iter().map(|&v| reference::gelu(v)).collect();
        let fc2 = reference::linear(&g, p(&w.fc2_w), Some(p(&w.fc2_b)), r, m, d);
        x = x_mid.iter().zip(&fc2).map(|(a, b)| a + b).collect();
    }
    // The final norm on every token (timm's `norm`; `fc_norm` for mean pooling), then the
    // decoder on the patch tokens only.
    let (normed, _, _) = reference::layernorm(&x, p(&enc.head_norm_w), p(&enc.head_norm_b), d);
    let prefix = t - n;
    let patch_rows: Vec<f64> = (0..b)
        .flat_map(|bi| normed[(bi * t + prefix) * d..(bi + 1) * t * d].to_vec())
        .collect();
    reference::linear(
        &patch_rows,
        p(&lay.decoder_w),
        Some(p(&lay.decoder_b)),
        b * n,
        d,
        outputs,
    )
}

/// The pixel model's forward in plain f64: (predictions [B, N, K], loss).
fn reference_forward(
    cfg: &ModelConfig,
    objective: PixelObjective,
    params: &[f64],
    images: &[f64],
    mask: &[bool],
) -> (Vec<f64>, f64) {
    let (c, ps, n) = (cfg.in_chans, cfg.patch_size, cfg.num_patches());
    let (sh, sw) = (cfg.image_size.height, cfg.image_size.width);
    let b = images.len() / cfg.image_len();
    let k = c * ps * ps;
    let sources = pixel_masks(mask, n).sources;
    let pred = reference_outputs(cfg, k, params, images, &sources);
    // Targets in MAE's patchify order, (ky·P + kx)·C + c, normalised per patch with the
    // unbiased variance under norm_pix.
    let gw = sw / ps;
    let mut loss = 0.0;
    let mut masked = 0;
    for bi in 0..b {
        for pi in 0..n {
            if !mask[bi * n + pi] {
                continue;
            }
            masked += 1;
            let (py, px) = (pi / gw, pi % gw);
            let mut target = Vec::with_capacity(k);
            for ky in 0..ps {
                for kx in 0..ps {
                    for ci in 0..c {
                        let (y, xx) = (py * ps + ky, px * ps + kx);
                        target.push(images[((bi * c + ci) * sh + y) * sw + xx]);
                    }
                }
            }
            if objective.norm_pix {
                let mean = target.iter().sum::<f64>() / k as f64;
                let var =
                    target.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (k - 1) as f64;
                target
                    .iter_mut()
                    .for_each(|v| *v = (*v - mean) / (var + 1e-6).sqrt());
            }
            let row = &pred[(bi * n + pi) * k..(bi * n + pi + 1) * k];
            let err: f64 = row
                .iter()
                .zip(&target)
                .map(|(q, tv)| match objective.loss {
                    PixelLoss::L1 => (q - tv).abs(),
                    PixelLoss::L2 => (q - tv) * (q - tv),
                })
                .sum();
            loss += err / k as f64;
        }
    }
    (pred, loss / masked as f64)
}

#[test]
fn loss_and_predictions_match_a_plain_forward() {
    for (pool, size) in [(Pool::Cls, WIDE), (Pool::Mean, ImageSize::square(8))] {
        for loss in [PixelLoss::L1, PixelLoss::L2] {
            for norm_pix in [false, true] {
                let cfg = tiny(pool, size);
                let objective = PixelObjective { loss, norm_pix };
                let layout = PretrainLayout::new(&cfg, cfg.patch_dim());
                let batch = 2;
                let params = params_for(&layout, 300);
                let images = rand_vec(batch * cfg.image_len(), 301, 1.0);
                let mask = mask_for(batch, cfg.num_patches());
                let mut engine = pixel_engine::<f64>(&cfg, objective, batch);
                engine.forward(&params, &images, &pixel_masks(&mask, cfg.num_patches()));
                let got = engine.loss();
                let (pred, want) = reference_forward(&cfg, objective, &params, &images, &mask);
                let case = format!("pool={pool}, {loss:?}, norm_pix={norm_pix}, {size}");
                assert_close(
                    &format!("predictions ({case})"),
                    engine.predictions(),
                    &pred,
                    1e-12,
                );
                assert!(
                    want > 0.1,
                    "{case}: reference loss {want} too small to compare"
                );
                assert!(
                    ((got - want) / want).abs() <= 1e-12,
                    "{case}: loss {got} vs reference {want}"
                );
            }
        }
    }
}

#[test]
fn masking_nothing_gives_zero_loss_and_zero_gradients() {
    for pool in [Pool::Cls, Pool::Mean] {
        let cfg = tiny(pool, WIDE);
        let objective = PixelObjective {
            loss: PixelLoss::L2,
            norm_pix: false,
        };
        let layout = PretrainLayout::new(&cfg, cfg.patch_dim());
        let params = params_for(&layout, 400);
        let images = rand_vec(2 * cfg.image_len(), 401, 1.0);
        let mask = pixel_masks(&vec![false; 2 * cfg.num_patches()], cfg.num_patches());
        let mut engine = pixel_engine::<f64>(&cfg, objective, 2);
        engine.forward(&params, &images, &mask);
        assert_eq!(engine.loss(), 0.0, "pool={pool}");
        // backward adds to grads: any entry it touches with a non-zero value shows.
        let mut grads = vec![0.0; layout.len];
        engine.backward(&params, &mut grads);
        for e in &layout.entries {
            assert!(
                grads[e.range.clone()].iter().all(|&g| g == 0.0),
                "{} (pool={pool}): non-zero gradient with nothing masked",
                e.name
            );
        }
    }
}

/// Masked patches' embeddings are replaced before the encoder: the predictions do not depend
/// on a masked patch's pixels (so no gradient reaches its embedding), and with every patch
/// masked the patch embedding gets no gradient at all while the mask token does.
#[test]
fn masked_patches_embeddings_get_no_gradient() {
    for pool in [Pool::Cls, Pool::Mean] {
        let cfg = tiny(pool, WIDE);
        let objective = PixelObjective {
            loss: PixelLoss::L1,
            norm_pix: true,
        };
        let layout = PretrainLayout::new(&cfg, cfg.patch_dim());
        let params = params_for(&layout, 500);
        let images = rand_vec(2 * cfg.image_len(), 501, 1.0);
        let n = cfg.num_patches();
        let mut engine = pixel_engine::<f64>(&cfg, objective, 2);

        // Partial mask: change every pixel of one masked patch of image 1.
        let mask = mask_for(2, n);
        let masked = (0..n).find(|&i| mask[n + i]).unwrap();
        let masks = pixel_masks(&mask, n);
        let (gw, ps, (sh, sw)) = (
            cfg.image_size.width / cfg.patch_size,
            cfg.patch_size,
            (cfg.image_size.height, cfg.image_size.width),
        );
        let mut changed = images.clone();
        for ci in 0..cfg.in_chans {
            for y in 0..ps {
                for x in 0..ps {
                    let (yy, xx) = ((masked / gw) * ps + y, (masked % gw) * ps + x);
                    changed[((cfg.in_chans + ci) * sh + yy) * sw + xx] += 0.75;
                }
            }
        }
        engine.forward(&params, &images, &masks);
        let before = engine.predictions().to_vec();
        engine.forward(&params, &changed, &masks);
        assert_eq!(
            engine.predictions(),
            &before[..],
            "pool={pool}: a masked patch's pixels reached the predictions"
        );
        // The same change to a visible patch does reach them (the test can fail).
        let visible = (0..n).find(|&i| !mask[n + i]).unwrap();
        let mut changed = images.clone();
        for ci in 0..cfg.in_chans {
            let (yy, xx) = ((visible / gw) * ps, (visible % gw) * ps);
            changed[((cfg.in_chans + ci) * sh + yy) * sw + xx] += 0.75;
        }
        engine.forward(&params, &changed, &masks);
        assert_ne!(engine.predictions(), &before[..], "pool={pool}");

        // Everything masked: zero patch-embedding gradient, non-zero mask-token gradient.
        let all = pixel_masks(&vec![true; 2 * n], n);
        engine.forward(&params, &images, &all);
        assert!(engine.loss() > 0.0);
        let mut grads = vec![0.0; layout.len];
        engine.backward(&params, &mut grads);
        for name in ["patch_embed.proj.weight", "patch_embed.proj.bias"] {
            let r = layout.get(name).unwrap().range.clone();
            assert!(
                grads[r].iter().all(|&g| g == 0.0),
                "{name} (pool={pool}): gradient through masked patches"
            );
        }
        let r = layout.mask_token.clone();
        assert!(
            grads[r].iter().any(|&g| g.abs() > 1e-8),
            "mask_token (pool={pool}): zero gradient"
        );
    }
}

/// The encoder keeps the classification layout's names and offsets; `head.*` is gone and
/// the mask token and decoder follow.
#[test]
fn layout_is_the_encoder_prefix_then_token_and_decoder() {
    for pool in [Pool::Cls, Pool::Mean] {
        let cfg = tiny(pool, WIDE);
        let cls = ParamLayout::new(&cfg);
        let pre = PretrainLayout::new(&cfg, cfg.patch_dim());
        assert_eq!(pre.encoder_len, cls.head_w.start);
        let encoder: Vec<_> = cls
            .entries
            .iter()
            .filter(|e| !e.name.starts_with("head."))
            .cloned()
            .collect();
        assert_eq!(&pre.entries[..encoder.len()], &encoder[..]);
        let tail: Vec<(&str, &[usize], bool)> = pre.entries[encoder.len()..]
            .iter()
            .map(|e| (e.name.as_str(), &e.shape[..], e.decay))
            .collect();
        assert_eq!(
            tail,
            [
                ("mask_token", &[1, 1, 6][..], false),
                ("decoder.weight", &[48, 6][..], true),
                ("decoder.bias", &[48][..], false),
            ]
        );
        assert_eq!(pre.len, pre.decoder_b.end);
        assert_eq!(pre.mask_token.start, pre.encoder_len);
    }
}

/// The f32 engine (the one that will train) computes what the f64 one does, to f32
/// rounding: loss, predictions and gradients.
#[test]
fn f32_engine_matches_f64() {
    let cfg = tiny(Pool::Cls, WIDE);
    let objective = PixelObjective {
        loss: PixelLoss::L2,
        norm_pix: true,
    };
    let layout = PretrainLayout::new(&cfg, cfg.patch_dim());
    let params = params_for(&layout, 600);
    let images = rand_vec(2 * cfg.image_len(), 601, 1.0);
    let mask = pixel_masks(&mask_for(2, cfg.num_patches()), cfg.num_patches());
    let e64 = pixel_engine::<f64>(&cfg, objective, 2);
    let e32 = pixel_engine::<f32>(&cfg, objective, 2);
    assert_f32_matches_f64("pixels", &layout, &params, &images, &mask, e64, e32);
}

/// Runs `e64` and `e32` forward and backward on the same batch and checks that the f32
/// engine computes what the f64 one does, to f32 rounding: loss, predictions and every
/// gradient. f32 rounding through a two-block model: ~1e-6 per op, a few hundred ops deep.
/// Returns the engines, for the objective's own checks.
fn assert_f32_matches_f64(
    what: &str,
    layout: &PretrainLayout,
    params: &[f64],
    images: &[f64],
    masks: &PatchMasks,
    mut e64: CpuPretrainEngine<f64>,
    mut e32: CpuPretrainEngine<f32>,
) -> (CpuPretrainEngine<f64>, CpuPretrainEngine<f32>) {
    e64.forward(params, images, masks);
    let loss64 = e64.loss();
    let mut g64 = vec![0.0; layout.len];
    e64.backward(params, &mut g64);

    let to32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let to64 = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    let p32 = to32(params);
    e32.forward(&p32, &to32(images), masks);
    let loss32 = e32.loss();
    let mut g32 = vec![0.0f32; layout.len];
    e32.backward(&p32, &mut g32);
    let tol = 1e-4;
    assert!(
        ((loss32 - loss64) / loss64).abs() <= tol,
        "{what}: loss f32 {loss32} vs f64 {loss64}"
    );
    assert_close(
        &format!("{what}: predictions f32"),
        &to64(e32.predictions()),
        e64.predictions(),
        tol,
    );
    for e in &layout.entries {
        let r = e.range.clone();
        assert_close(
            &format!("{what}: {} f32", e.name),
            &to64(&g32[r.clone()]),
            &g64[r],
            tol,
        );
    }
    (e64, e32)
}

/// The initialisation: the encoder exactly as the classifier's with the same seed, the mask
/// token a normal of std 0.02 (truncated at ±2 absolute, as timm's `trunc_normal_`), the decoder uniform in ±1/√D; a model
/// that runs.
#[test]
fn init_draws_the_encoder_as_the_classifier_and_the_new_tensors_in_range() {
    for pool in [Pool::Cls, Pool::Mean] {
        let cfg = ModelConfig {
            embed_dim: 48,
            num_heads: 4,
            ..tiny(pool, WIDE)
        };
        let layout = PretrainLayout::new(&cfg, cfg.patch_dim());
        let p = init_pretrain_params(&cfg, &layout, 9);
        assert_eq!(p.len(), layout.len);
        let cls = init_params(&cfg, &ParamLayout::new(&cfg), 9);
        assert_eq!(&p[..layout.encoder_len], &cls[..layout.encoder_len]);
        assert_eq!(p, init_pretrain_params(&cfg, &layout, 9), "deterministic");
        assert_ne!(
            p,
            init_pretrain_params(&cfg, &layout, 10),
            "depends on the seed"
        );

        let token = &p[layout.mask_token.clone()];
        let std = (token.iter().map(|v| v * v).sum::<f32>() / token.len() as f32).sqrt();
        assert!((0.01..0.03).contains(&std), "mask_token std {std}");
        let bound = 1.0 / (cfg.embed_dim as f32).sqrt();
        for r in [layout.decoder_w.clone(), layout.decoder_b.clone()] {
            let v = &p[r];
            assert!(v.iter().all(|x| x.abs() <= bound));
            let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert!(
                max > 0.5 * bound,
                "decoder values up to {max}, bound {bound}"
            );
        }

        let objective = PixelObjective {
            loss: PixelLoss::L1,
            norm_pix: true,
        };
        let mut engine = pixel_engine::<f32>(&cfg, objective, 2);
        let images: Vec<f32> = rand_vec(2 * cfg.image_len(), 700, 1.0)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let n = cfg.num_patches();
        engine.forward(&p, &images, &pixel_masks(&mask_for(2, n), n));
        let loss = engine.loss();
        assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
    }
}

/// The optimizer plan of the pre-training layout: every tensor trainable at the base rate,
/// decayed as the layout says.
#[test]
fn pretraining_groups_train_everything_at_the_base_rate() {
    let cfg = tiny(Pool::Cls, WIDE);
    let layout = PretrainLayout::new(&cfg, cfg.patch_dim());
    let groups = ParamGroups::pretraining(&layout);
    assert_eq!(groups.trainable(), 0..layout.len);
    assert!(!groups.backbone_frozen());
    assert_eq!(groups.tensors.len(), layout.entries.len());
    for (t, e) in groups.tensors.iter().zip(&layout.entries) {
        assert_eq!((&t.name, &t.range, t.decay), (&e.name, &e.range, e.decay));
        assert!(!t.frozen && t.lr_scale == 1.0, "{}", t.name);
    }
    let id = |name: &str| {
        groups
            .tensors
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .layer_id
    };
    assert_eq!(id("patch_embed.proj.weight"), 0);
    assert_eq!(id("blocks.1.mlp.fc2.bias"), 2);
    assert_eq!(id("mask_token"), 3);
    assert_eq!(groups.groups.len(), 2);
}

/// A few AdamW steps of the f32 engine on one batch from the initialisation lower the
/// masked loss well below where it starts (both poolings).
#[test]
fn adamw_steps_lower_the_loss() {
    for pool in [Pool::Cls, Pool::Mean] {
        let cfg = ModelConfig {
            embed_dim: 16,
            num_heads: 2,
            mlp_dim: 32,
            ..tiny(pool, WIDE)
        };
        let objective = PixelObjective {
            loss: PixelLoss::L2,
            norm_pix: true,
        };
        let layout = PretrainLayout::new(&cfg, cfg.patch_dim());
        let groups = ParamGroups::pretraining(&layout);
        let mut params = init_pretrain_params(&cfg, &layout, 3);
        let images: Vec<f32> = rand_vec(2 * cfg.image_len(), 800, 1.0)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let mask = pixel_masks(&mask_for(2, cfg.num_patches()), cfg.num_patches());
        let mut engine = pixel_engine::<f32>(&cfg, objective, 2);
        let mut opt = AdamW::<f32>::new(AdamWConfig::default(), layout.len);
        let mut losses = Vec::new();
        for _ in 0..60 {
            engine.forward(&params, &images, &mask);
            losses.push(engine.loss());
            let mut grads = vec![0.0f32; layout.len];
            engine.backward(&params, &mut grads);
            opt.update(&groups, &mut params, &grads, 1e-2);
        }
        let (first, last) = (losses[0], *losses.last().unwrap());
        assert!(
            last.is_finite() && last < 0.5 * first,
            "pool={pool}: loss {first} -> {last}"
        );
    }
}

// ---- The colour objective (the ViT paper's masked patch prediction) ----

/// The colour images' normalisation: not the identity, so the targets' un-normalising is
/// exercised.
const COLOUR_NORM: Normalize = Normalize::CIFAR10;

/// Images [B, 3, S_h, S_w] whose patches have different mean colours (a per-patch, per-channel
/// offset plus small noise), so the targets cover several of the 512 classes.
fn colour_images(cfg: &ModelConfig, batch: usize, seed: u64) -> Vec<f64> {
    let (sh, sw, ps) = (cfg.image_size.height, cfg.image_size.width, cfg.patch_size);
    let gw = sw / ps;
    let offsets = rand_vec(batch * 3 * cfg.num_patches(), seed, 1.8);
    let noise = rand_vec(batch * cfg.image_len(), seed + 1, 0.3);
    (0..batch * cfg.image_len())
        .map(|i| {
            let (bc, y, x) = (i / (sh * sw), i / sw % sh, i % sw);
            offsets[bc * cfg.num_patches() + (y / ps) * gw + x / ps] + noise[i]
        })
        .collect()
}

/// BERT-style masks for B images of N ≥ 4 patches, every kind of position in each image
/// (o = the image's index): o the mask token, o + 1 the embedding of patch o (itself replaced
/// by the token: the gather reads the original embeddings), o + 2 predicted but unchanged,
/// the rest visible. Patch o + 1 reaches no position.
fn colour_masks(batch: usize, n: usize) -> PatchMasks {
    assert!(n >= 4);
    let mut m = PatchMasks {
        predicted: vec![0; batch * n],
        sources: (0..batch * n).map(|i| (i % n) as i32).collect(),
        patches: n,
    };
    for b in 0..batch {
        let at = |j: usize| b * n + (b + j) % n;
        m.predicted[at(0)] = 1;
        m.sources[at(0)] = -1;
        m.predicted[at(1)] = 1;
        m.sources[at(1)] = (b % n) as i32;
        m.predicted[at(2)] = 1;
    }
    m
}

fn colour_engine<F: vitk::cpu::Float>(cfg: &ModelConfig, batch: usize) -> CpuPretrainEngine<F> {
    CpuPretrainEngine::new(cfg, Objective::Colour, COLOUR_NORM, batch).expect("valid")
}

#[test]
fn colour_gradients_cls_pool_non_square() {
    let cfg = tiny(Pool::Cls, WIDE);
    let masks = colour_masks(2, cfg.num_patches());
    check_model_gradients(
        &cfg,
        Objective::Colour,
        COLOUR_NORM,
        &colour_images(&cfg, 2, 210),
        &masks,
        "colour, pool=cls, 8x12",
    );
}

#[test]
fn colour_gradients_mean_pool_non_square() {
    let cfg = tiny(Pool::Mean, WIDE);
    let masks = colour_masks(2, cfg.num_patches());
    check_model_gradients(
        &cfg,
        Objective::Colour,
        COLOUR_NORM,
        &colour_images(&cfg, 2, 220),
        &masks,
        "colour, pool=mean, 8x12",
    );
}

/// The colour model's targets and loss in plain f64 (no code shared with src/cpu): each
/// patch's mean of x·std + mean per channel, 3 bits per channel, class r·64 + g·8 + b; the
/// mean over predicted patches of logsumexp(logits) − logits[class]. (classes [B, N], logits
/// [B, N, 512], loss.)
fn reference_colour(
    cfg: &ModelConfig,
    params: &[f64],
    images: &[f64],
    masks: &PatchMasks,
) -> (Vec<u32>, Vec<f64>, f64) {
    let logits = reference_outputs(cfg, 512, params, images, &masks.sources);
    let (ps, n) = (cfg.patch_size, cfg.num_patches());
    let (sh, sw) = (cfg.image_size.height, cfg.image_size.width);
    let b = masks.batch();
    let gw = sw / ps;
    let mut classes = Vec::with_capacity(b * n);
    for bi in 0..b {
        for pi in 0..n {
            let (py, px) = (pi / gw, pi % gw);
            let mut class = 0;
            for ci in 0..3 {
                let mut sum = 0.0;
                for y in py * ps..(py + 1) * ps {
                    for x in px * ps..(px + 1) * ps {
                        let v = images[((bi * 3 + ci) * sh + y) * sw + x];
                        sum += v * f64::from(COLOUR_NORM.std[ci]) + f64::from(COLOUR_NORM.mean[ci]);
                    }
                }
                let level = (sum / (ps * ps) as f64 * 8.0).floor().clamp(0.0, 7.0) as u32;
                class = class * 8 + level;
            }
            classes.push(class);
        }
    }
    let (mut loss, mut count) = (0.0, 0);
    for (row, _) in masks.predicted.iter().enumerate().filter(|(_, &p)| p != 0) {
        let l = &logits[row * 512..(row + 1) * 512];
        let max = l.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        let lse = max + l.iter().map(|&v| (v - max).exp()).sum::<f64>().ln();
        loss += lse - l[classes[row] as usize];
        count += 1;
    }
    (classes, logits, loss / count as f64)
}

#[test]
fn colour_targets_logits_and_loss_match_a_plain_forward() {
    for (pool, size) in [(Pool::Cls, WIDE), (Pool::Mean, ImageSize::square(8))] {
        let cfg = tiny(pool, size);
        let layout = PretrainLayout::new(&cfg, 512);
        let params = params_for(&layout, 310);
        let images = colour_images(&cfg, 2, 311);
        let masks = colour_masks(2, cfg.num_patches());
        let mut engine = colour_engine::<f64>(&cfg, 2);
        assert_eq!(engine.layout().len, layout.len);
        engine.forward(&params, &images, &masks);
        let got = engine.loss();
        let (classes, logits, want) = reference_colour(&cfg, &params, &images, &masks);
        let case = format!("colour, pool={pool}, {size}");
        assert_eq!(engine.colour_targets(), &classes[..], "{case}: classes");
        let mut distinct = classes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() >= 4, "{case}: classes {classes:?} too alike");
        assert!(engine.targets().is_empty(), "{case}: pixel targets");
        assert_close(
            &format!("logits ({case})"),
            engine.predictions(),
            &logits,
            1e-12,
        );
        assert!(want > 0.1, "{case}: reference loss {want} too small");
        assert!(
            ((got - want) / want).abs() <= 1e-12,
            "{case}: loss {got} vs reference {want}"
        );
    }
}

#[test]
fn colour_nothing_predicted_gives_zero_loss_and_zero_gradients() {
    for pool in [Pool::Cls, Pool::Mean] {
        let cfg = tiny(pool, WIDE);
        let layout = PretrainLayout::new(&cfg, 512);
        let params = params_for(&layout, 410);
        let images = colour_images(&cfg, 2, 411);
        // Substitutions still happen (mask tokens, a copied patch), but no loss covers them.
        let mut masks = colour_masks(2, cfg.num_patches());
        masks.predicted.fill(0);
        let mut engine = colour_engine::<f64>(&cfg, 2);
        engine.forward(&params, &images, &masks);
        assert_eq!(engine.loss(), 0.0, "pool={pool}");
        let mut grads = vec![0.0; layout.len];
        engine.backward(&params, &mut grads);
        for e in &layout.entries {
            assert!(
                grads[e.range.clone()].iter().all(|&g| g == 0.0),
                "{} (pool={pool}): non-zero gradient with nothing predicted",
                e.name
            );
        }
    }
}

/// The substitution by sources: a patch that no position receives does not reach the
/// logits, one copied to another position does (even though its own position holds the mask
/// token); and the pixel objective refuses masks that copy patches.
#[test]
fn colour_substitution_follows_the_sources() {
    for pool in [Pool::Cls, Pool::Mean] {
        let cfg = tiny(pool, WIDE);
        let layout = PretrainLayout::new(&cfg, 512);
        let params = params_for(&layout, 510);
        let images = colour_images(&cfg, 2, 511);
        let n = cfg.num_patches();
        let masks = colour_masks(2, n);
        let mut engine = colour_engine::<f64>(&cfg, 2);
        engine.forward(&params, &images, &masks);
        let before = engine.predictions().to_vec();
        // Image 1 (o = 1): patch 2 reaches no position, patch 1 is copied to position 2.
        let bump = |patch: usize| {
            let mut changed = images.clone();
            let (ps, sw, sh) = (cfg.patch_size, cfg.image_size.width, cfg.image_size.height);
            let (py, px) = (patch / (sw / ps), patch % (sw / ps));
            for ci in 0..3 {
                changed[((3 + ci) * sh + py * ps) * sw + px * ps] += 0.75;
            }
            changed
        };
        assert_eq!(masks.sources[n + 2], 1);
        assert!(!masks.sources[n..].contains(&2));
        engine.forward(&params, &bump(2), &masks);
        assert_eq!(
            engine.predictions(),
            &before[..],
            "pool={pool}: a patch no position receives reached the logits"
        );
        engine.forward(&params, &bump(1), &masks);
        assert_ne!(
            engine.predictions(),
            &before[..],
            "pool={pool}: a copied patch did not reach the logits"
        );
    }
    let cfg = tiny(Pool::Cls, WIDE);
    let masks = colour_masks(2, cfg.num_patches());
    let images = colour_images(&cfg, 2, 512);
    let objective = PixelObjective {
        loss: PixelLoss::L2,
        norm_pix: false,
    };
    let mut engine = pixel_engine::<f64>(&cfg, objective, 2);
    let params = params_for(engine.layout(), 513);
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.forward(&params, &images, &masks)
    }));
    assert!(refused.is_err(), "pixel engine took colour masks");
    // Colour classes are defined on RGB images only.
    let grey = ModelConfig {
        in_chans: 1,
        ..cfg.clone()
    };
    assert!(CpuPretrainEngine::<f32>::new(&grey, Objective::Colour, COLOUR_NORM, 2).is_err());
}

#[test]
fn colour_f32_engine_matches_f64() {
    let cfg = tiny(Pool::Mean, WIDE);
    let layout = PretrainLayout::new(&cfg, 512);
    let params = params_for(&layout, 610);
    let images = colour_images(&cfg, 2, 611);
    let masks = colour_masks(2, cfg.num_patches());
    let (e64, e32) = (colour_engine::<f64>(&cfg, 2), colour_engine::<f32>(&cfg, 2));
    let (e64, e32) = assert_f32_matches_f64("colour", &layout, &params, &images, &masks, e64, e32);
    assert_eq!(e32.colour_targets(), e64.colour_targets());
}

/// A few AdamW steps (ParamGroups::pretraining, from init_pretrain_params of the colour
/// layout) of the f32 engine on one batch lower the masked cross-entropy well below where it
/// starts, near ln 512 (both poolings).
#[test]
fn colour_adamw_steps_lower_the_loss() {
    for pool in [Pool::Cls, Pool::Mean] {
        let cfg = ModelConfig {
            embed_dim: 16,
            num_heads: 2,
            mlp_dim: 32,
            ..tiny(pool, WIDE)
        };
        let layout = PretrainLayout::new(&cfg, Objective::Colour.decoder_outputs(&cfg));
        let groups = ParamGroups::pretraining(&layout);
        let mut params = init_pretrain_params(&cfg, &layout, 4);
        assert_eq!(params.len(), layout.len);
        let images: Vec<f32> = colour_images(&cfg, 2, 810)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let masks = colour_masks(2, cfg.num_patches());
        let mut engine = colour_engine::<f32>(&cfg, 2);
        let mut opt = AdamW::<f32>::new(AdamWConfig::default(), layout.len);
        let mut losses = Vec::new();
        for _ in 0..60 {
            engine.forward(&params, &images, &masks);
            losses.push(engine.loss());
            let mut grads = vec![0.0f32; layout.len];
            engine.backward(&params, &mut grads);
            opt.update(&groups, &mut params, &grads, 1e-2);
        }
        let (first, last) = (losses[0], *losses.last().unwrap());
        assert!(
            (first - 512f64.ln()).abs() < 1.0,
            "pool={pool}: initial loss {first}, not near ln 512"
        );
        assert!(
            last.is_finite() && last < 0.5 * first,
            "pool={pool}: loss {first} -> {last}"
        );
    }
}
