//! The preprocessing presets must reproduce the Pillow-made reference input
//! tensors in assets/reference/ (first 8 eval images, sorted by file name).

use std::path::{Path, PathBuf};

use subq_calib::{list_images, Preprocess};

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

fn check(model: &str, preset: &str) {
    let bytes = std::fs::read(assets().join(format!("reference/{model}.inputs.npy"))).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let reference: Vec<f32> = npy.into_vec().unwrap();
    assert_eq!(shape.len(), 4, "{model}: expected N×3×H×W, got {shape:?}");
    assert_eq!(shape[1], 3);
    let (n, h, w) = (shape[0], shape[2], shape[3]);
    let per = 3 * h * w;

    let items = list_images(&assets().join("images/eval")).unwrap();
    let p = Preprocess::preset(preset).unwrap();
    let mut worst_mean = 0f32;
    for (i, item) in items.iter().take(n).enumerate() {
        let ours = p.load(&item.path, h, w).unwrap();
        assert_eq!(ours.len(), per);
        let r = &reference[i * per..(i + 1) * per];
        let mean = ours.iter().zip(r).map(|(a, b)| (a - b).abs()).sum::<f32>() / per as f32;
        let max = ours
            .iter()
            .zip(r)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "{model} [{i}] {}: mean |diff| {mean:.6}, max |diff| {max:.4}",
            item.path.display()
        );
        assert!(
            mean <= 0.01,
            "{model} image {i}: mean |diff| {mean} > 0.01 (max {max})"
        );
        worst_mean = worst_mean.max(mean);
    }
    println!("{model}: worst per-image mean |diff| {worst_mean:.6}");
    // The resize is bit-exact, so what remains is JPEG decoder rounding
    // (image/zune-jpeg vs Pillow's libjpeg-turbo), ~1.5e-4. Much more means
    // the geometry or resampler drifted even if the 0.01 budget still holds.
    assert!(
        worst_mean <= 1e-3,
        "{model}: worst mean |diff| {worst_mean} > 1e-3"
    );
}

#[test]
fn efficientnet_lite0_matches_reference() {
    check("efficientnet_lite0", "efficientnet-lite");
}

#[test]
fn mobilenetv2_dogs_matches_reference() {
    check("mobilenetv2_1.0_160_dogs", "keras-mobilenet");
}

/// The resampler alone is bit-exact with Pillow (no JPEG decoder in the loop):
/// downscale (antialiased), upscale, and one axis only in each direction.
#[test]
fn bilinear_resize_is_bit_exact_with_pillow() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let src = image::open(data.join("pillow_src_61x47.png"))
        .unwrap()
        .to_rgb8();
    let p = Preprocess {
        resize_mode: subq_calib::ResizeMode::Stretch,
        crop_ratio: 1.0,
        mean: [0.0; 3],
        std: [1.0; 3],
        channel_order: subq_calib::ChannelOrder::Rgb,
    };
    for (w, h) in [(20usize, 15usize), (100, 80), (61, 13), (7, 47)] {
        let want = image::open(data.join(format!("pillow_bilinear_{w}x{h}.png")))
            .unwrap()
            .to_rgb8();
        let got = p.apply(&src, h, w).unwrap();
        let mut mismatches = 0;
        for (x, y, px) in want.enumerate_pixels() {
            for c in 0..3 {
                if got[c * w * h + y as usize * w + x as usize] != px[c] as f32 {
                    mismatches += 1;
                }
            }
        }
        assert_eq!(
            mismatches, 0,
            "{w}×{h}: {mismatches} values differ from Pillow"
        );
    }
}
