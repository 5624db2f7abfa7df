//! vitk's weight resampling against timm's (`resample_abs_pos_embed`, `resample_patch_embed`),
//! on reference values computed once with timm: tests/fixtures/resample_timm.safetensors,
//! written by scripts/make_resample_fixture.py.

use safetensors::SafeTensors;
use vitk::model::resample::{resample_patch_kernel, resample_pos_embed};

const D: usize = 6;

fn fixture() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/resample_timm.safetensors"
    );
    std::fs::read(path).expect("the fixture file")
}

fn tensor(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("{name} in the fixture"));
    bytemuck::pod_collect_to_vec(t.data())
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * scale.max(1.0),
            "{what}: element {i} is {g}, timm gives {w}"
        );
    }
}

#[test]
fn pos_embed_matches_timm_with_and_without_a_class_token() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    for prefix in [0, 1] {
        let src = tensor(&st, &format!("pos.p{prefix}.src"));
        for to in [(12, 12), (6, 6), (10, 14)] {
            let want = tensor(&st, &format!("pos.p{prefix}.{}x{}", to.0, to.1));
            let got = resample_pos_embed(&src, prefix, (8, 8), to, D);
            assert_close(&got, &want, &format!("8x8 -> {to:?}, prefix {prefix}"));
            // The class token's row is kept bit for bit.
            assert_eq!(got[..prefix * D], src[..prefix * D]);
        }
    }
    let src = tensor(&st, "pos.p1.src4x6");
    let want = tensor(&st, "pos.p1.4x6to9x5");
    assert_close(
        &resample_pos_embed(&src, 1, (4, 6), (9, 5), D),
        &want,
        "4x6 -> 9x5",
    );
}

#[test]
fn patch_kernel_matches_timm_up_down_and_non_square() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    let src = tensor(&st, "patch.src");
    for to in [(8, 8), (2, 2), (3, 5)] {
        let want = tensor(&st, &format!("patch.{}x{}", to.0, to.1));
        let got = resample_patch_kernel(&src, (4, 4), to).expect("full rank");
        assert_close(&got, &want, &format!("patch 4x4 -> {to:?}"));
    }
}
