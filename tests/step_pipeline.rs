//! The queued device step: a captured graph replayed per step gives bit for bit the numbers
//! of the same kernels launched one by one and of the step-by-step API (which copies every
//! input from pageable memory), over steps whose learning rate, batch size and clipping
//! change; outputs come back one step late and in order; a queued step issues no host wait
//! and no pageable copy; and the runtimes refuse what a capture cannot hold. Device: the
//! emulator, or VITK_TEST_DEVICE=cuda.

mod gpu_common;

use std::sync::Arc;

use gpu_common::{device, rng, uniform};
use vitk::engine::{Precision, StepOutput};
use vitk::gpu::{DeviceBuffer, GpuTrainer, Graph, Runtime};
use vitk::model::drop_path::DropPath;
use vitk::model::{init_params, ImageSize, ModelConfig, ParamLayout, Pool};
use vitk::optim::{AdamWConfig, FineTuning};

fn cfg() -> ModelConfig {
    ModelConfig {
        image_size: ImageSize::square(8),
        patch_size: 4,
        in_chans: 3,
        num_classes: 5,
        embed_dim: 16,
        depth: 2,
        num_heads: 2,
        mlp_dim: 24,
        pool: Pool::Cls,
    }
}

const MAX_BATCH: usize = 4;

/// One step's inputs: images, labels, lr, clip.
struct StepIn {
    images: Vec<f32>,
    labels: Vec<u32>,
    lr: f64,
    clip: Option<f64>,
}

/// Seven steps whose learning rate changes every step, whose clipping goes on and off and
/// whose batch size changes in the middle (three shapes, so three graphs).
fn steps(rng: &mut rand::rngs::StdRng) -> Vec<StepIn> {
    let image = 3 * 8 * 8;
    [
        (4, Some(0.5)),
        (4, Some(0.5)),
        (3, None),
        (3, None),
        (4, Some(0.5)),
        (4, None),
        (4, Some(0.5)),
    ]
    .iter()
    .enumerate()
    .map(|(i, &(b, clip))| StepIn {
        images: uniform(rng, b * image, 1.5),
        labels: (0..b as u32).map(|j| (j * 2 + i as u32) % 5).collect(),
        lr: 3e-3 / (1.0 + i as f64),
        clip,
    })
    .collect()
}

fn engine(rt: &Arc<dyn Runtime>, precision: Precision) -> GpuTrainer {
    engine_with(rt, precision, FineTuning::default())
}

fn engine_with(rt: &Arc<dyn Runtime>, precision: Precision, tuning: FineTuning) -> GpuTrainer {
    let c = cfg();
    let params = init_params(&c, &ParamLayout::new(&c), 11);
    GpuTrainer::new(
        rt.clone(),
        &c,
        MAX_BATCH,
        &params,
        AdamWConfig::default(),
        precision,
        tuning,
    )
    .unwrap()
}

const SMOOTHING: f64 = 0.1;

/// The steps through the step-by-step API (each input copied from pageable memory).
fn run_step_by_step(e: &mut GpuTrainer, steps: &[StepIn]) -> Vec<StepOutput> {
    steps
        .iter()
        .map(|s| {
            e.try_forward(&s.images).unwrap();
            e.try_loss(&s.labels, SMOOTHING).unwrap();
            e.try_backward().unwrap();
            e.try_update(s.lr, s.clip).unwrap();
            let st = e.read_stats().unwrap();
            StepOutput {
                loss: st[0] as f64,
                correct: st[1] as usize,
                grad_norm: s.clip.map(|_| st[2] as f64),
            }
        })
        .collect()
}

/// The steps queued as training queues them; checks that each output comes one call late.
fn run_queued(e: &mut GpuTrainer, steps: &[StepIn]) -> Vec<StepOutput> {
    let mut outs = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let late = e
            .submit_step(&s.images, &s.labels, s.lr, SMOOTHING, s.clip)
            .unwrap();
        assert_eq!(
            late.is_some(),
            i > 0,
            "step {i}: the previous step's output"
        );
        outs.extend(late);
    }
    outs.extend(e.finish_steps().unwrap());
    assert!(e.finish_steps().unwrap().is_none(), "nothing left queued");
    outs
}

fn same_outputs(what: &str, a: &[StepOutput], b: &[StepOutput]) {
    assert_eq!(a.len(), b.len(), "{what}: number of outputs");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.loss.to_bits(), y.loss.to_bits(), "{what}: step {i} loss");
        assert_eq!(x.correct, y.correct, "{what}: step {i} correct");
        assert_eq!(
            x.grad_norm.map(f64::to_bits),
            y.grad_norm.map(f64::to_bits),
            "{what}: step {i} grad norm"
        );
    }
}

fn same_state(what: &str, a: &GpuTrainer, b: &GpuTrainer) {
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert!(
        bits(a.try_params().unwrap()) == bits(b.try_params().unwrap()),
        "{what}: parameters differ"
    );
    let (oa, ob) = (
        a.try_optimizer_state().unwrap(),
        b.try_optimizer_state().unwrap(),
    );
    assert_eq!(oa.step, ob.step, "{what}: step count");
    assert!(bits(oa.m) == bits(ob.m), "{what}: first moments differ");
    assert!(bits(oa.v) == bits(ob.v), "{what}: second moments differ");
}

fn graphs_match_direct_launches(precision: Precision, tuning: FineTuning) {
    let rt = device();
    let steps = steps(&mut rng(&format!("step pipeline {precision}")));
    let mut reference = engine_with(&rt, precision, tuning);
    let want = run_step_by_step(&mut reference, &steps);
    let mut direct = engine_with(&rt, precision, tuning);
    direct.set_graphs(false);
    let mut graphs = engine_with(&rt, precision, tuning);
    graphs.set_graphs(true);
    let got_direct = run_queued(&mut direct, &steps);
    let got_graphs = run_queued(&mut graphs, &steps);
    same_outputs("direct vs step-by-step", &got_direct, &want);
    same_outputs("graphs vs step-by-step", &got_graphs, &want);
    same_state("direct vs step-by-step", &direct, &reference);
    same_state("graphs vs step-by-step", &graphs, &reference);
    assert_eq!(
        graphs.graph_kernels().len(),
        3,
        "one graph per (batch, clip) shape"
    );
    // The training steps moved the parameters (a run that did nothing would also agree).
    let c = cfg();
    let initial = init_params(&c, &ParamLayout::new(&c), 11);
    assert_ne!(
        graphs.try_params().unwrap(),
        initial,
        "parameters unchanged"
    );
}

#[test]
fn graph_replays_match_direct_launches_fp32() {
    graphs_match_direct_launches(Precision::Fp32, FineTuning::default());
}

#[test]
fn graph_replays_match_direct_launches_bf16() {
    graphs_match_direct_launches(Precision::Bf16, FineTuning::default());
}

/// The per-group scalars of layer decay change with the learning rate every step: a replay
/// reads each step's from the device (the group table is constant).
#[test]
fn graph_replays_match_direct_launches_with_layer_decay_and_frozen_backbone() {
    let decay = FineTuning {
        layer_decay: Some(0.7),
        freeze_backbone: false,
    };
    graphs_match_direct_launches(Precision::Fp32, decay);
    let probe = FineTuning {
        layer_decay: Some(0.7),
        freeze_backbone: true,
    };
    graphs_match_direct_launches(Precision::Bf16, probe);
}

/// --layer-decay 1 is the plain step bit for bit on the device (every group scale is 1).
#[test]
fn layer_decay_one_is_the_plain_device_step() {
    let rt = device();
    let steps = steps(&mut rng("layer decay one"));
    let mut plain = engine(&rt, Precision::Fp32);
    let one = FineTuning {
        layer_decay: Some(1.0),
        freeze_backbone: false,
    };
    let mut with_one = engine_with(&rt, Precision::Fp32, one);
    let a = run_queued(&mut plain, &steps);
    let b = run_queued(&mut with_one, &steps);
    same_outputs("layer decay 1 vs none", &b, &a);
    same_state("layer decay 1 vs none", &with_one, &plain);
}

/// Kernels launched by one queued step without graphs (after a first step).
fn step_launches(rt: &Arc<dyn Runtime>, e: &mut GpuTrainer, s: &StepIn) -> u64 {
    e.submit_step(&s.images, &s.labels, s.lr, SMOOTHING, s.clip)
        .unwrap();
    let before = rt.counts();
    e.submit_step(&s.images, &s.labels, s.lr, SMOOTHING, s.clip)
        .unwrap();
    let n = rt.counts().since(&before).launches;
    e.finish_steps().unwrap();
    n
}

/// A linear probe on the device: the step launches no backward kernel of the blocks or the
/// embedding (fewer kernels per step and per captured graph), on a fixed batch the loss
/// falls, the head and its norm move, and every other tensor stays bit for bit as it
/// started, with zero moments.
#[test]
fn a_frozen_backbone_skips_the_backbone_backward_on_the_device() {
    let rt = device();
    let frozen = FineTuning {
        layer_decay: None,
        freeze_backbone: true,
    };
    let fixed = &steps(&mut rng("frozen backbone"))[0];
    let mut plain = engine(&rt, Precision::Fp32);
    plain.set_graphs(false);
    let mut probe = engine_with(&rt, Precision::Fp32, frozen);
    probe.set_graphs(false);
    let (all, head) = (
        step_launches(&rt, &mut plain, fixed),
        step_launches(&rt, &mut probe, fixed),
    );
    println!("kernels per step: full backward {all}, frozen backbone {head}");
    // Per block the backward launches at least 4 dX products, 4 weight gradients, 2
    // LayerNorm backwards and the attention backward; then pooling, tokens, patch embedding.
    let depth = cfg().depth as u64;
    assert!(
        head + 11 * depth + 3 <= all,
        "frozen backbone: {head} kernels per step, full backward {all}"
    );

    let mut e = engine_with(&rt, Precision::Fp32, frozen);
    e.set_graphs(true);
    let c = cfg();
    let layout = ParamLayout::new(&c);
    let initial = init_params(&c, &layout, 11);
    let mut losses = Vec::new();
    for _ in 0..20 {
        losses.extend(
            e.submit_step(&fixed.images, &fixed.labels, 3e-2, SMOOTHING, Some(1.0))
                .unwrap(),
        );
    }
    losses.extend(e.finish_steps().unwrap());
    let (first, last) = (losses[0].loss, losses[losses.len() - 1].loss);
    assert!(last < 0.8 * first, "loss {first} -> {last}");
    let kernels = e.graph_kernels();
    let mut full = engine(&rt, Precision::Fp32);
    full.set_graphs(true);
    step_launches(&rt, &mut full, fixed);
    assert!(
        kernels[0] + 11 * depth + 3 <= full.graph_kernels()[0],
        "graph kernels: frozen {kernels:?}, full {:?}",
        full.graph_kernels()
    );
    let after = e.try_params().unwrap();
    let opt = e.try_optimizer_state().unwrap();
    let trainable = layout.head_norm_w.start;
    for entry in &layout.entries {
        let r = entry.range.clone();
        let same = after[r.clone()]
            .iter()
            .zip(&initial[r.clone()])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        if r.start < trainable {
            assert!(same, "frozen {} changed", entry.name);
            assert!(
                opt.m[r.clone()].iter().all(|&x| x.to_bits() == 0)
                    && opt.v[r].iter().all(|&x| x.to_bits() == 0),
                "frozen {} has moments",
                entry.name
            );
        } else {
            assert!(!same, "{} did not train", entry.name);
        }
    }
}

/// A queued step, once its graph exists: one graph replay, no other launch, no host wait,
/// no pageable copy; images, labels and AdamW scalars up and the statistics down through
/// pinned memory; one fence wait (for the step before). Without graphs, the same minus the
/// replay plus every kernel launched.
#[test]
fn a_queued_step_never_waits_for_the_device() {
    let rt = device();
    let mut rng = rng("queued step counts");
    let steps = steps(&mut rng);
    let s = &steps[0];
    for graphs in [true, false] {
        let mut e = engine(&rt, Precision::Fp32);
        e.set_graphs(graphs);
        e.submit_step(&s.images, &s.labels, s.lr, SMOOTHING, s.clip)
            .unwrap();
        let before = rt.counts();
        e.submit_step(&s.images, &s.labels, s.lr, SMOOTHING, s.clip)
            .unwrap();
        let c = rt.counts().since(&before);
        println!("graphs={graphs}: {c:?}");
        assert_eq!(c.host_syncs, 0, "graphs={graphs}: host waits");
        assert_eq!(c.pageable_copies, 0, "graphs={graphs}: pageable copies");
        assert_eq!(c.async_copies, 4, "graphs={graphs}: pinned copies");
        assert_eq!(c.fence_waits, 1, "graphs={graphs}: fence waits");
        assert_eq!(c.captured, 0, "graphs={graphs}: nothing captured again");
        if graphs {
            assert_eq!((c.launches, c.graph_launches), (0, 1), "graph step");
        } else {
            assert_eq!(c.graph_launches, 0, "direct step replays no graph");
            // 2 blocks: the launches per block plus those of the embedding, head and update
            assert!(
                c.launches > 20,
                "direct step launched {} kernels",
                c.launches
            );
        }
        e.finish_steps().unwrap();
    }
}

/// Capture records without running, refuses host waits and pageable copies, ends even when
/// what it records fails, and replays what it recorded.
#[test]
fn capture_records_refuses_host_waits_and_replays() {
    let rt = device();
    let mut buf = DeviceBuffer::<f32>::new(&rt, 8).unwrap();
    buf.upload(&[1.0; 8]).unwrap();
    let view = buf.view();
    let graph = Graph::capture(&rt, || view.fill_bytes(&*rt, 0)).unwrap();
    assert_eq!(
        buf.to_vec().unwrap(),
        vec![1.0; 8],
        "capture ran the memset"
    );
    graph.launch().unwrap();
    assert_eq!(buf.to_vec().unwrap(), vec![0.0; 8], "replay did not run it");

    let refused = Graph::capture(&rt, || view.upload(&*rt, &[2.0; 8]));
    assert!(refused.is_err(), "a pageable copy was captured");
    let refused = Graph::capture(&rt, || rt.synchronize());
    assert!(refused.is_err(), "a host wait was captured");
    // the runtime is usable after the failed captures
    buf.upload(&[3.0; 8]).unwrap();
    assert_eq!(buf.to_vec().unwrap(), vec![3.0; 8]);
    let again = Graph::capture(&rt, || view.fill_bytes(&*rt, 0)).unwrap();
    again.launch().unwrap();
    assert_eq!(buf.to_vec().unwrap(), vec![0.0; 8]);
}

/// Stochastic depth on the queued steps: graph replays (one graph per shape, each replay
/// reading its own step's staged scales) give bit for bit the steps launched one by one, and
/// differ from the steps without it; a step launches 4 more kernels per dropped block (the
/// add after proj and fc2, the scaled dY before their backward), none at p = 0.
#[test]
fn drop_path_graph_replays_match_direct_launches() {
    let rt = device();
    let steps = steps(&mut rng("drop path pipeline"));
    let dp = Some(DropPath { rate: 0.5, seed: 3 });
    for precision in [Precision::Fp32, Precision::Bf16] {
        let with_drop = |graphs: bool| {
            let mut e = engine(&rt, precision).with_drop_path(dp).unwrap();
            e.set_graphs(graphs);
            e
        };
        let (mut direct, mut graphs) = (with_drop(false), with_drop(true));
        let got_direct = run_queued(&mut direct, &steps);
        let got_graphs = run_queued(&mut graphs, &steps);
        same_outputs("drop-path graphs vs direct", &got_graphs, &got_direct);
        same_state("drop-path graphs vs direct", &graphs, &direct);
        let mut plain = engine(&rt, precision);
        let got_plain = run_queued(&mut plain, &steps);
        assert!(
            got_plain
                .iter()
                .zip(&got_graphs)
                .any(|(a, b)| a.loss != b.loss),
            "{precision}: drop-path changed no loss"
        );
    }
    let fixed = &steps[0];
    let launches = |dp: Option<DropPath>| {
        let mut e = engine(&rt, Precision::Fp32).with_drop_path(dp).unwrap();
        e.set_graphs(false);
        step_launches(&rt, &mut e, fixed)
    };
    let (off, zero, on) = (
        launches(None),
        launches(dp.map(|d| DropPath { rate: 0.0, ..d })),
        launches(dp),
    );
    println!("kernels per step: drop-path off {off}, p = 0 {zero}, p = 0.5 {on}");
    // depth 2: rates [0, 0.5], one dropped block
    assert_eq!((zero, on), (off, off + 4), "kernels per step");
}
