//! Attention maps: the engines' attention probabilities ([L, B, H, T, T]) against a plain f64
//! forward of the whole model, and the rollout (Abnar & Zuidema 2020) on cases worked by hand.

mod common;
mod reference;

use common::{assert_close, rand_vec};
use vitk::attention_maps::{image_maps, rollout};
use vitk::cpu::CpuTrainer;
use vitk::engine::TrainEngine;
use vitk::model::{ImageSize, ModelConfig, ParamLayout, Pool};
use vitk::optim::{AdamWConfig, FineTuning};

fn tiny(pool: Pool) -> ModelConfig {
    ModelConfig {
        image_size: ImageSize::square(12),
        patch_size: 4,
        in_chans: 3,
        num_classes: 5,
        embed_dim: 12,
        depth: 3,
        num_heads: 3,
        mlp_dim: 10,
        pool,
    }
}

/// The whole ViT forward in plain f64 loops (tests/reference, no code shared with src/cpu):
/// (logits [B, K], probabilities [L, B, H, T, T]).
fn reference_forward(cfg: &ModelConfig, params: &[f64], images: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let lay = ParamLayout::new(cfg);
    let p = |r: &std::ops::Range<usize>| &params[r.clone()];
    let (c, s, ps, d, m) = (
        cfg.in_chans,
        (cfg.image_size.height, cfg.image_size.width),
        cfg.patch_size,
        cfg.embed_dim,
        cfg.mlp_dim,
    );
    let b = images.len() / cfg.image_len();
    let n = cfg.num_patches();
    let t = cfg.num_tokens();
    let (h, hd) = (cfg.num_heads, cfg.head_dim());
    let patches = reference::im2col(images, b, c, s, ps);
    let emb = reference::linear(
        &patches,
        p(&lay.patch_w),
        Some(p(&lay.patch_b)),
        b * n,
        c * ps * ps,
        d,
    );
    let mut x = reference::tokens(
        &emb,
        p(&lay.pos_embed),
        lay.cls_token.as_ref().map(p),
        b,
        n,
        d,
    );
    let r = b * t;
    let mut all_probs = Vec::new();
    for w in &lay.blocks {
        let (ln1, _, _) = reference::layernorm(&x, p(&w.norm1_w), p(&w.norm1_b), d);
        let qkv = reference::linear(&ln1, p(&w.qkv_w), Some(p(&w.qkv_b)), r, d, 3 * d);
        let (attn, probs) = reference::attention(&qkv, b, t, h, hd);
        all_probs.extend(probs);
        let proj = reference::linear(&attn, p(&w.proj_w), Some(p(&w.proj_b)), r, d, d);
        let x_mid: Vec<f64> = x.iter().zip(&proj).map(|(a, b)| a + b).collect();
        let (ln2, _, _) = reference::layernorm(&x_mid, p(&w.norm2_w), p(&w.norm2_b), d);
        let fc1 = reference::linear(&ln2, p(&w.fc1_w), Some(p(&w.fc1_b)), r, d, m);
        let g: Vec<f64> = fc1.iter().map(|&v| reference::gelu(v)).collect();
        let fc2 = reference::linear(&g, p(&w.fc2_w), Some(p(&w.fc2_b)), r, m, d);
        x = x_mid.iter().zip(&fc2).map(|(a, b)| a + b).collect();
    }
    let pooled = reference::pool(&x, b, t, d, cfg.pool == Pool::Mean);
    let (normed, _, _) = reference::layernorm(&pooled, p(&lay.head_norm_w), p(&lay.head_norm_b), d);
    let logits = reference::linear(
        &normed,
        p(&lay.head_w),
        Some(p(&lay.head_b)),
        b,
        d,
        cfg.num_classes,
    );
    (logits, all_probs)
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Random parameters large enough that attention is far from uniform, and random images,
/// rounded to f32 (what the engine holds).
fn inputs(cfg: &ModelConfig, batch: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let n = ParamLayout::new(cfg).len;
    let params: Vec<f32> = rand_vec(n, seed, 1.0).iter().map(|&v| v as f32).collect();
    let image = cfg.image_len();
    let images: Vec<f32> = rand_vec(batch * image, seed + 1, 1.5)
        .iter()
        .map(|&v| v as f32)
        .collect();
    (params, images)
}

#[test]
fn cpu_probabilities_match_a_plain_forward_and_rows_sum_to_one() {
    for pool in [Pool::Cls, Pool::Mean] {
        let cfg = tiny(pool);
        let batch = 2;
        let (params, images) = inputs(&cfg, batch, 11);
        let mut e = CpuTrainer::new(
            &cfg,
            batch,
            params.clone(),
            AdamWConfig::default(),
            FineTuning::default(),
        )
        .expect("engine");
        let probs = e.attention_probs(&images).expect("probabilities");
        let logits = e.logits(&images).expect("logits");
        let (l, h, t) = (cfg.depth, cfg.num_heads, cfg.num_tokens());
        assert_eq!(
            probs.len(),
            l * batch * h * t * t,
            "[L, B, H, T, T] ({pool})"
        );
        for (i, row) in probs.chunks_exact(t).enumerate() {
            let sum: f64 = row.iter().map(|&v| f64::from(v)).sum();
            assert!((sum - 1.0).abs() <= 1e-5, "row {i} sums to {sum} ({pool})");
            assert!(row.iter().all(|&v| v >= 0.0), "row {i} negative ({pool})");
        }
        let (ref_logits, ref_probs) = reference_forward(&cfg, &to_f64(&params), &to_f64(&images));
        // The reference is the same model: its logits agree too (else the comparison below
        // would compare different things).
        assert_close(
            &format!("logits ({pool})"),
            &to_f64(&logits),
            &ref_logits,
            1e-4,
        );
        assert_close(
            &format!("probabilities ({pool})"),
            &to_f64(&probs),
            &ref_probs,
            1e-5,
        );
        // Not uniform: the test would not see a mix-up of rows, heads or blocks otherwise.
        let spread = ref_probs.iter().cloned().fold(0.0, f64::max) - 1.0 / t as f64;
        assert!(spread > 0.2, "attention too uniform for a test ({spread})");
    }
}

/// The order of the [L, B, H, T, T] layout: block l of image b alone equals the forward of
/// image b alone.
#[test]
fn cpu_probabilities_of_each_image_do_not_depend_on_the_batch() {
    let cfg = tiny(Pool::Cls);
    let (params, images) = inputs(&cfg, 3, 21);
    let mut e = CpuTrainer::new(
        &cfg,
        3,
        params,
        AdamWConfig::default(),
        FineTuning::default(),
    )
    .expect("engine");
    let all = e.attention_probs(&images).expect("probabilities");
    let image = images.len() / 3;
    let per = cfg.num_heads * cfg.num_tokens() * cfg.num_tokens();
    for b in 0..3 {
        let one = e
            .attention_probs(&images[b * image..(b + 1) * image])
            .expect("probabilities");
        for l in 0..cfg.depth {
            // The matmuls block rows differently at another batch size: equal to rounding.
            let (x, y) = (&all[(l * 3 + b) * per..][..per], &one[l * per..][..per]);
            let diff = x
                .iter()
                .zip(y)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(diff <= 1e-6, "block {l}, image {b}: {diff}");
        }
    }
}

#[test]
fn rollout_of_uniform_attention_is_uniform() {
    let (h, t) = (2, 5);
    let uniform = vec![1.0 / t as f32; h * t * t];
    let r = rollout::rollout(&[&uniform, &uniform, &uniform], h, t);
    for (i, v) in r.iter().enumerate() {
        // Â = 0.5 U + 0.5 I and U Â = Â U = U: after three blocks R = 0.875 U + 0.125 I.
        let expect = 0.875 / t as f64 + if i / t == i % t { 0.125 } else { 0.0 };
        // 1/5 in f32 is off by 1e-8 relative.
        assert!((v - expect).abs() < 1e-7, "R[{i}] = {v}, expected {expect}");
    }
    // Its class-token row over the patches is uniform.
    let row = rollout::image_row(&r, t, Pool::Cls);
    let patches = rollout::patch_values(&row, Pool::Cls);
    assert_eq!(patches.len(), t - 1);
    assert!(
        patches.iter().all(|&v| (v - patches[0]).abs() < 1e-9),
        "{patches:?}"
    );
    // Without a class token, the mean row of uniform attention is exactly uniform.
    let one = rollout::rollout(&[&uniform], h, t);
    let mean = rollout::image_row(&one, t, Pool::Mean);
    assert!(
        mean.iter().all(|&v| (v - 1.0 / t as f64).abs() < 1e-7),
        "{mean:?}"
    );
}

#[test]
fn rollout_of_identity_attention_is_the_identity() {
    let (h, t) = (3, 4);
    let mut eye = vec![0.0f32; h * t * t];
    for hh in 0..h {
        for i in 0..t {
            eye[(hh * t + i) * t + i] = 1.0;
        }
    }
    let r = rollout::rollout(&[&eye, &eye], h, t);
    for (i, &v) in r.iter().enumerate() {
        let expect = if i / t == i % t { 1.0 } else { 0.0 };
        assert!((v - expect).abs() < 1e-12, "R[{i}] = {v}");
    }
    // The class token's row: all its mass on itself, none on the patches.
    let row = rollout::image_row(&r, t, Pool::Cls);
    assert_eq!(row[0], 1.0);
    assert!(rollout::patch_values(&row, Pool::Cls)
        .iter()
        .all(|&v| v == 0.0));
}

/// Two blocks of one head over three tokens, worked by hand:
///   A1 = [[.5 .5 0] [0 1 0] [.2 .2 .6]] → Â1 = 0.5 A1 + 0.5 I = [[.75 .25 0] [0 1 0] [.1 .1 .8]]
///   A2 = [[0 0 1] [.5 0 .5] [0 1 0]]    → Â2 = [[.5 0 .5] [.25 .5 .25] [0 .5 .5]]
///   R = Â2 Â1 = [[.425 .175 .4] [.2125 .5875 .2] [.05 .55 .4]]
/// (rows of each Â already sum to 1: renormalising changes nothing here; a second head
/// averaged in is checked below.)
#[test]
fn rollout_of_two_blocks_by_hand() {
    let a1: [f32; 9] = [0.5, 0.5, 0.0, 0.0, 1.0, 0.0, 0.2, 0.2, 0.6];
    let a2: [f32; 9] = [0.0, 0.0, 1.0, 0.5, 0.0, 0.5, 0.0, 1.0, 0.0];
    let r = rollout::rollout(&[&a1, &a2], 1, 3);
    let expect = [0.425, 0.175, 0.4, 0.2125, 0.5875, 0.2, 0.05, 0.55, 0.4];
    for (i, (v, e)) in r.iter().zip(expect).enumerate() {
        assert!((v - e).abs() < 1e-7, "R[{i}] = {v}, expected {e}");
    }
    // The block order matters: Â1 Â2 is another matrix.
    let swapped = rollout::rollout(&[&a2, &a1], 1, 3);
    let diff = swapped
        .iter()
        .zip(expect)
        .map(|(v, e)| (v - e).abs())
        .fold(0.0, f64::max);
    assert!(diff > 0.05, "{swapped:?}");
    // Two heads whose mean is A1 (and A2) give the same rollout.
    let h1: [f32; 9] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.4, 0.0, 0.6];
    let h2: Vec<f32> = a1.iter().zip(h1).map(|(a, b)| 2.0 * a - b).collect();
    let two1: Vec<f32> = h1.iter().copied().chain(h2).collect();
    let two2: Vec<f32> = a2.iter().chain(&a2).copied().collect();
    let r2 = rollout::rollout(&[&two1, &two2], 2, 3);
    for (i, (v, e)) in r2.iter().zip(expect).enumerate() {
        assert!(
            (v - e).abs() < 1e-7,
            "two heads: R[{i}] = {v}, expected {e}"
        );
    }
    // The class token's row over the patches; the mean row over all tokens.
    assert_eq!(
        rollout::patch_values(&rollout::image_row(&r, 3, Pool::Cls), Pool::Cls),
        &r[1..3]
    );
    let mean = rollout::image_row(&r, 3, Pool::Mean);
    let expect_mean = [0.6875 / 3.0, 1.3125 / 3.0, 1.0 / 3.0];
    for (v, e) in mean.iter().zip(expect_mean) {
        assert!((v - e).abs() < 1e-7, "mean row {mean:?}");
    }
}

/// A row of 0.5·A + 0.5·I that does not sum to 1 (probabilities rounded in f32, or a row
/// summing to 0.8) is renormalised.
#[test]
fn rollout_renormalises_rows() {
    let a: [f32; 4] = [0.6, 0.2, 0.3, 0.3]; // rows sum to 0.8 and 0.6
    let r = rollout::rollout(&[&a], 1, 2);
    // row 0: (0.8, 0.1) / 0.9; row 1: (0.15, 0.65) / 0.8
    let expect = [0.8 / 0.9, 0.1 / 0.9, 0.15 / 0.8, 0.65 / 0.8];
    for (v, e) in r.iter().zip(expect) {
        assert!((v - e).abs() < 1e-7, "{r:?}");
    }
}

/// The per-image maps pick the right slices of [L, B, H, T, T]: the last block's heads, the
/// class token's row without the class token, and the rollout of the image's own blocks.
#[test]
fn image_maps_read_the_image_and_the_last_block() {
    let cfg = tiny(Pool::Cls);
    let batch = 2;
    let (params, images) = inputs(&cfg, batch, 31);
    let mut e = CpuTrainer::new(
        &cfg,
        batch,
        params,
        AdamWConfig::default(),
        FineTuning::default(),
    )
    .expect("engine");
    let probs = e.attention_probs(&images).expect("probabilities");
    let (h, t, n) = (cfg.num_heads, cfg.num_tokens(), cfg.num_patches());
    let per = h * t * t;
    for b in 0..batch {
        let maps = image_maps(&probs, &cfg, batch, b);
        assert_eq!(maps.heads.len(), h);
        let last = &probs[((cfg.depth - 1) * batch + b) * per..][..per];
        for (hh, m) in maps.heads.iter().enumerate() {
            assert_eq!(m.len(), n);
            let cls_row = &last[hh * t * t..][..t]; // query 0 of head hh
            for (j, &v) in m.iter().enumerate() {
                assert_eq!(
                    v,
                    f64::from(cls_row[j + 1]),
                    "image {b} head {hh} patch {j}"
                );
            }
        }
        let blocks: Vec<&[f32]> = (0..cfg.depth)
            .map(|l| &probs[(l * batch + b) * per..][..per])
            .collect();
        let r = rollout::rollout(&blocks, h, t);
        assert_eq!(maps.rollout, r[1..t].to_vec(), "image {b} rollout");
    }
    // Mean pooling: each head's map is the mean attention a patch receives.
    let cfg = tiny(Pool::Mean);
    let (params, images) = inputs(&cfg, 1, 41);
    let mut e = CpuTrainer::new(
        &cfg,
        1,
        params,
        AdamWConfig::default(),
        FineTuning::default(),
    )
    .expect("engine");
    let probs = e.attention_probs(&images).expect("probabilities");
    let (t, per) = (
        cfg.num_tokens(),
        cfg.num_heads * cfg.num_tokens() * cfg.num_tokens(),
    );
    let last = &probs[(cfg.depth - 1) * per..][..per];
    let maps = image_maps(&probs, &cfg, 1, 0);
    for j in 0..t {
        let col: f64 = (0..t).map(|i| f64::from(last[i * t + j])).sum::<f64>() / t as f64;
        assert!((maps.heads[0][j] - col).abs() < 1e-12, "patch {j}");
    }
    let total: f64 = maps.rollout.iter().sum();
    assert!(
        (total - 1.0).abs() < 1e-6,
        "mean rollout row sums to {total}"
    );
}

#[test]
fn normalise_spans_zero_to_one() {
    let v = rollout::normalise(&[2.0, 4.0, 3.0]);
    assert_eq!(v, vec![0.0, 1.0, 0.5]);
    assert_eq!(rollout::normalise(&[0.3, 0.3]), vec![0.0, 0.0]);
    assert_eq!(rollout::normalise(&[f64::NAN, 1.0]), vec![0.0, 0.0]);
}
