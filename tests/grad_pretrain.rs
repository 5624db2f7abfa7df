//! The pixel-prediction pre-training model (src/cpu/pretrain.rs, SimMIM style): every
//! parameter gradient against central finite differences of the loss in f64 (cls and mean
//! pooling, L1 and L2, norm_pix on and off, square and non-square images), the loss and
//! predictions against a plain f64 forward (tests/reference), and what masking nothing or
//! everything does.

mod common;
mod reference;

use common::{assert_close, fd_grad, rand_vec, FD_STEP, GRAD_TOL};
use vitk::cpu::mim::PixelLoss;
use vitk::cpu::{AdamW, CpuPretrainEngine, PixelObjective};
use vitk::model::{
    init_params, init_pretrain_params, ImageSize, ModelConfig, ParamLayout, Pool, PretrainLayout,
};
use vitk::optim::{AdamWConfig, ParamGroups};

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

fn check_gradients(pool: Pool, loss: PixelLoss, norm_pix: bool, image_size: ImageSize) {
    let cfg = tiny(pool, image_size);
    let objective = PixelObjective { loss, norm_pix };
    let layout = PretrainLayout::new(&cfg, cfg.patch_dim());
    let batch = 2;
    let params = params_for(&layout, 200);
    let images = rand_vec(batch * cfg.image_len(), 201, 1.0);
    let mask = mask_for(batch, cfg.num_patches());
    let mut engine = CpuPretrainEngine::<f64>::new(&cfg, objective, batch).expect("valid");

    let numeric = fd_grad(&params, FD_STEP, |p: &[f64]| {
        engine.forward(p, &images, &mask);
        engine.loss()
    });
    engine.forward(&params, &images, &mask);
    engine.loss();
    let mut grads = vec![0.0; layout.len];
    engine.backward(&params, &mut grads);

    for e in &layout.entries {
        let r = e.range.clone();
        let name = format!(
            "{} (pool={pool}, {loss:?}, norm_pix={norm_pix}, {image_size})",
            e.name
        );
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

/// The pre-training model's forward in plain f64 loops (tests/reference; no code shared
/// with src/cpu): (predictions [B, N, K], loss).
fn reference_forward(
    cfg: &ModelConfig,
    objective: PixelObjective,
    params: &[f64],
    images: &[f64],
    mask: &[bool],
) -> (Vec<f64>, f64) {
    let enc = ParamLayout::new(cfg);
    let lay = PretrainLayout::new(cfg, cfg.patch_dim());
    let p = |r: &std::ops::Range<usize>| &params[r.clone()];
    let (c, ps, d, m) = (cfg.in_chans, cfg.patch_size, cfg.embed_dim, cfg.mlp_dim);
    let (sh, sw) = (cfg.image_size.height, cfg.image_size.width);
    let b = images.len() / cfg.image_len();
    let (n, t) = (cfg.num_patches(), cfg.num_tokens());
    let (h, hd) = (cfg.num_heads, cfg.head_dim());
    let k = c * ps * ps;
    let patches = reference::im2col(images, b, c, (sh, sw), ps);
    let mut emb = reference::linear(
        &patches,
        p(&enc.patch_w),
        Some(p(&enc.patch_b)),
        b * n,
        k,
        d,
    );
    for (row, _) in mask.iter().enumerate().filter(|(_, &masked)| masked) {
        emb[row * d..(row + 1) * d].copy_from_slice(p(&lay.mask_token));
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
    let pred = reference::linear(
        &patch_rows,
        p(&lay.decoder_w),
        Some(p(&lay.decoder_b)),
        b * n,
        d,
        k,
    );
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
                let mut engine = CpuPretrainEngine::<f64>::new(&cfg, objective, batch).unwrap();
                engine.forward(&params, &images, &mask);
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
        let mask = vec![false; 2 * cfg.num_patches()];
        let mut engine = CpuPretrainEngine::<f64>::new(&cfg, objective, 2).unwrap();
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
        let mut engine = CpuPretrainEngine::<f64>::new(&cfg, objective, 2).unwrap();

        // Partial mask: change every pixel of one masked patch of image 1.
        let mask = mask_for(2, n);
        let masked = (0..n).find(|&i| mask[n + i]).unwrap();
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
        engine.forward(&params, &images, &mask);
        let before = engine.predictions().to_vec();
        engine.forward(&params, &changed, &mask);
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
        engine.forward(&params, &changed, &mask);
        assert_ne!(engine.predictions(), &before[..], "pool={pool}");

        // Everything masked: zero patch-embedding gradient, non-zero mask-token gradient.
        let all = vec![true; 2 * n];
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
    let mask = mask_for(2, cfg.num_patches());
    let mut e64 = CpuPretrainEngine::<f64>::new(&cfg, objective, 2).unwrap();
    e64.forward(&params, &images, &mask);
    let loss64 = e64.loss();
    let mut g64 = vec![0.0; layout.len];
    e64.backward(&params, &mut g64);

    let to32 = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let to64 = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    let mut e32 = CpuPretrainEngine::<f32>::new(&cfg, objective, 2).unwrap();
    let p32 = to32(&params);
    e32.forward(&p32, &to32(&images), &mask);
    let loss32 = e32.loss();
    let mut g32 = vec![0.0f32; layout.len];
    e32.backward(&p32, &mut g32);
    // f32 rounding through a two-block model: ~1e-6 per op, a few hundred ops deep.
    let tol = 1e-4;
    assert!(
        ((loss32 - loss64) / loss64).abs() <= tol,
        "loss f32 {loss32} vs f64 {loss64}"
    );
    assert_close(
        "predictions f32",
        &to64(e32.predictions()),
        e64.predictions(),
        tol,
    );
    for e in &layout.entries {
        let r = e.range.clone();
        assert_close(
            &format!("{} f32", e.name),
            &to64(&g32[r.clone()]),
            &g64[r],
            tol,
        );
    }
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
        let mut engine = CpuPretrainEngine::<f32>::new(&cfg, objective, 2).unwrap();
        let images: Vec<f32> = rand_vec(2 * cfg.image_len(), 700, 1.0)
            .iter()
            .map(|&v| v as f32)
            .collect();
        engine.forward(&p, &images, &mask_for(2, cfg.num_patches()));
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
        let mask = mask_for(2, cfg.num_patches());
        let mut engine = CpuPretrainEngine::<f32>::new(&cfg, objective, 2).unwrap();
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
