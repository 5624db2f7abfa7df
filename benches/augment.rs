//! Criterion bench of the training loader's per-sample augmentation on 32x32 CIFAR-sized
//! images, on one thread (so the throughput is images/s per core):
//!
//!     cargo bench --bench augment
//!
//! - crop_flip: random crop (4-pixel zero padding) + flip + normalisation (the default);
//! - rand_augment: + RandAugment rand-m9-mstd0.5-inc1;
//! - rand_augment_erasing: + random erasing, p = 0.25;
//! - cifar10_erasing: AutoAugment's CIFAR-10 policy + random erasing, p = 0.25;
//!
//! and the whole loader (`loader/...`: batches of 256 from `BatchLoader::with_recipe`, samples
//! on all of rayon's threads), whose throughput is images/s for the machine; `cifar_best` is
//! `--recipe cifar-best`'s: AutoAugment, erasing, 3 repeats, then Mixup/CutMix of each batch on
//! the training thread, as the training loop does.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use std::time::Duration;
use vitk::data::mixup::{mix_batch, MixupConfig};
use vitk::data::recipe::{AugmentRecipe, Pipeline, Workspace};
use vitk::data::{AutoAugment, BatchLoader, Dataset, LoaderConfig, Normalize};
use vitk::model::ImageSize;

const IMAGES: usize = 256;
const LEN: usize = 3 * 32 * 32;

fn pipeline(c: &mut Criterion) {
    // Cheap deterministic pixels; the ops' cost barely depends on the values.
    let images: Vec<u8> = (0..IMAGES * LEN)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut out = vec![0f32; LEN];
    let mut g = c.benchmark_group("augment");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(IMAGES as u64));
    let policy = |s: &str| AutoAugment::parse(s).expect("policy");
    for (name, recipe) in [
        ("crop_flip", AugmentRecipe::OFF),
        (
            "rand_augment",
            AugmentRecipe {
                auto_augment: policy("rand-m9-mstd0.5-inc1"),
                ..AugmentRecipe::OFF
            },
        ),
        (
            "rand_augment_erasing",
            AugmentRecipe {
                auto_augment: policy("rand-m9-mstd0.5-inc1"),
                reprob: 0.25,
                ..AugmentRecipe::OFF
            },
        ),
        (
            "cifar10_erasing",
            AugmentRecipe {
                auto_augment: policy("cifar10"),
                reprob: 0.25,
                ..AugmentRecipe::OFF
            },
        ),
    ] {
        let p = Pipeline::new(
            3,
            ImageSize::square(32),
            true,
            recipe,
            Normalize::CIFAR10,
            0,
        )
        .expect("pipeline");
        let mut work = Workspace::default();
        let mut epoch = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                // A fresh epoch per iteration: new draws, as in training.
                epoch += 1;
                for (pos, img) in images.chunks_exact(LEN).enumerate() {
                    p.run(img, &mut out, epoch, pos, &mut work);
                }
            })
        });
    }
    g.finish();
}

fn loader(c: &mut Criterion) {
    let n = 4096;
    let images: Vec<u8> = (0..n * LEN)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let labels = (0..n).map(|i| (i % 10) as u16).collect();
    let classes = (0..10).map(|k| k.to_string()).collect();
    let ds = Arc::new(Dataset::new(images, labels, classes, 3, 32).expect("dataset"));
    let batch = 256;
    let mut g = c.benchmark_group("loader");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(batch as u64));
    // cifar-best's Mixup 0.8 / CutMix 1.0, switch 0.5, smoothing 0.1
    let mixup = MixupConfig {
        mixup_alpha: 0.8,
        cutmix_alpha: 1.0,
        switch_prob: 0.5,
        label_smoothing: 0.1,
    };
    for (name, policy, reprob, repeats, mix) in [
        ("crop_flip", "none", 0.0, 1, None),
        (
            "rand_augment_erasing_repeats",
            "rand-m9-mstd0.5-inc1",
            0.25,
            3,
            None,
        ),
        ("cifar_best", "cifar10", 0.25, 3, Some(mixup)),
    ] {
        let recipe = AugmentRecipe {
            auto_augment: AutoAugment::parse(policy).expect("policy"),
            reprob,
            aug_repeats: repeats,
        };
        let cfg = LoaderConfig {
            drop_last: true,
            ..LoaderConfig::train(batch, 0)
        };
        let mut l = BatchLoader::with_recipe(ds.clone(), cfg, recipe, 0, 0).expect("loader");
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut batch = l.next_batch();
                if let Some(m) = &mix {
                    let (epoch, index) = (batch.epoch as u64, batch.index as u64);
                    let size = ImageSize::square(32);
                    let targets = mix_batch(
                        m,
                        0,
                        epoch,
                        index,
                        &mut batch.images,
                        &batch.labels,
                        3,
                        size,
                        10,
                    );
                    return (batch, Some(targets));
                }
                (batch, None)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, pipeline, loader);
criterion_main!(benches);
