use image::{Rgb, RgbImage};
use subq_calib::{CalibError, ChannelOrder, Preprocess, ResizeMode};

fn raw(mode: ResizeMode, ratio: f32, order: ChannelOrder) -> Preprocess {
    Preprocess {
        resize_mode: mode,
        crop_ratio: ratio,
        mean: [0.0; 3],
        std: [1.0; 3],
        channel_order: order,
    }
}

/// Deterministic pseudo-random image, so resampling bugs can't hide behind flat regions.
fn noise(w: u32, h: u32, seed: u32) -> RgbImage {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    RgbImage::from_fn(w, h, |_, _| {
        let mut px = [0u8; 3];
        for p in &mut px {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            *p = (s >> 24) as u8;
        }
        Rgb(px)
    })
}

/// Value at channel `c`, row `y`, column `x` of a CHW tensor of width `w`, height `h`.
fn at(t: &[f32], h: usize, w: usize, c: usize, y: usize, x: usize) -> f32 {
    t[c * h * w + y * w + x]
}

#[test]
fn stretch_of_constant_image_is_normalized_constant() {
    let colour = [10u8, 200, 91];
    let img = RgbImage::from_pixel(37, 23, Rgb(colour));
    for preset in Preprocess::PRESETS {
        let p = Preprocess {
            resize_mode: ResizeMode::Stretch,
            ..Preprocess::preset(preset).unwrap()
        };
        // Both upscaling (23 → 40) and downscaling (37 → 16).
        let out = p.apply(&img, 40, 16).unwrap();
        assert_eq!(out.len(), 3 * 40 * 16);
        for c in 0..3 {
            let want = (colour[c] as f32 - p.mean[c]) / p.std[c];
            for v in &out[c * 640..(c + 1) * 640] {
                assert!(
                    (v - want).abs() < 1e-6,
                    "{preset} channel {c}: {v} != {want}"
                );
            }
        }
    }
}

#[test]
fn bgr_swaps_channels() {
    let img = noise(50, 30, 1);
    for mode in [ResizeMode::Stretch, ResizeMode::Crop] {
        let rgb = raw(mode, 0.875, ChannelOrder::Rgb)
            .apply(&img, 20, 24)
            .unwrap();
        let bgr = raw(mode, 0.875, ChannelOrder::Bgr)
            .apply(&img, 20, 24)
            .unwrap();
        let plane = 20 * 24;
        assert_eq!(&bgr[..plane], &rgb[2 * plane..]);
        assert_eq!(&bgr[plane..2 * plane], &rgb[plane..2 * plane]);
        assert_eq!(&bgr[2 * plane..], &rgb[..plane]);
        assert_ne!(
            &rgb[..plane],
            &rgb[2 * plane..],
            "test image must differ per channel"
        );
    }
}

#[test]
fn mean_and_std_are_per_output_channel() {
    let img = RgbImage::from_pixel(4, 4, Rgb([10, 20, 30]));
    let p = Preprocess {
        mean: [1.0, 2.0, 3.0],
        std: [2.0, 4.0, 8.0],
        ..raw(ResizeMode::Stretch, 1.0, ChannelOrder::Bgr)
    };
    let out = p.apply(&img, 4, 4).unwrap();
    // Output channel 0 is blue (30), normalized with mean[0] / std[0].
    assert_eq!(out[0], (30.0 - 1.0) / 2.0);
    assert_eq!(out[16], (20.0 - 2.0) / 4.0);
    assert_eq!(out[32], (10.0 - 3.0) / 8.0);
}

#[test]
fn crop_without_resize_takes_centre_window() {
    // Shorter side already equals the target, so only the crop acts; pixel
    // values encode their source coordinates.
    let img = RgbImage::from_fn(9, 4, |x, y| Rgb([x as u8, y as u8, 7]));
    let out = raw(ResizeMode::Crop, 1.0, ChannelOrder::Rgb)
        .apply(&img, 4, 4)
        .unwrap();
    // Margin 9 - 4 = 5 is odd: the reference convention floors, so left = 2.
    for y in 0..4 {
        for x in 0..4 {
            assert_eq!(at(&out, 4, 4, 0, y, x), (x + 2) as f32);
            assert_eq!(at(&out, 4, 4, 1, y, x), y as f32);
        }
    }
    // Portrait: the vertical margin is cropped instead.
    let img = RgbImage::from_fn(4, 10, |x, y| Rgb([x as u8, y as u8, 7]));
    let out = raw(ResizeMode::Crop, 1.0, ChannelOrder::Rgb)
        .apply(&img, 4, 4)
        .unwrap();
    for y in 0..4 {
        assert_eq!(at(&out, 4, 4, 1, y, 0), (y + 3) as f32);
        assert_eq!(at(&out, 4, 4, 0, y, 3), 3.0);
    }
}

#[test]
fn crop_equals_stretch_to_shorter_side_size_then_centre_crop() {
    // 600×400 at 224 / 0.875: shorter side → 256, longer → round(600·256/400) = 384,
    // crop at ((384-224)/2, (256-224)/2) = (80, 16).
    // 401×333 (portrait flip below): 333 → 256, 401 → round(401·256/333) = 308.
    for (iw, ih, rw, rh) in [
        (600u32, 400u32, 384usize, 256usize),
        (333, 401, 256, 308),
        (401, 333, 308, 256),
    ] {
        let img = noise(iw, ih, iw);
        let crop = raw(ResizeMode::Crop, 0.875, ChannelOrder::Rgb)
            .apply(&img, 224, 224)
            .unwrap();
        let full = raw(ResizeMode::Stretch, 1.0, ChannelOrder::Rgb)
            .apply(&img, rh, rw)
            .unwrap();
        let (left, top) = ((rw - 224) / 2, (rh - 224) / 2);
        for c in 0..3 {
            for y in 0..224 {
                for x in 0..224 {
                    assert_eq!(
                        at(&crop, 224, 224, c, y, x),
                        at(&full, rh, rw, c, y + top, x + left),
                        "{iw}×{ih}: mismatch at c={c} y={y} x={x}"
                    );
                }
            }
        }
    }
}

#[test]
fn output_shape_for_non_square_targets() {
    let img = noise(300, 200, 3);
    for mode in [ResizeMode::Stretch, ResizeMode::Crop] {
        let out = raw(mode, 0.875, ChannelOrder::Rgb)
            .apply(&img, 96, 128)
            .unwrap();
        assert_eq!(out.len(), 3 * 96 * 128);
        // A very wide target from a tall image must not read outside the image.
        let out = raw(mode, 0.875, ChannelOrder::Rgb)
            .apply(&noise(20, 300, 4), 10, 200)
            .unwrap();
        assert_eq!(out.len(), 3 * 10 * 200);
    }
}

#[test]
fn invalid_parameters_are_errors() {
    let img = noise(10, 10, 5);
    let p = raw(ResizeMode::Crop, 0.875, ChannelOrder::Rgb);
    assert!(matches!(
        p.apply(&img, 0, 10),
        Err(CalibError::InvalidConfig { .. })
    ));
    assert!(matches!(
        p.apply(&RgbImage::new(0, 5), 4, 4),
        Err(CalibError::InvalidConfig { .. })
    ));
    for bad in [0.0, -1.0, 1.5, f32::NAN] {
        let q = Preprocess {
            crop_ratio: bad,
            ..p.clone()
        };
        assert!(
            matches!(q.apply(&img, 4, 4), Err(CalibError::InvalidConfig { .. })),
            "ratio {bad}"
        );
    }
    let q = Preprocess {
        std: [1.0, 0.0, 1.0],
        ..p.clone()
    };
    assert!(matches!(
        q.apply(&img, 4, 4),
        Err(CalibError::InvalidConfig { .. })
    ));
}

#[test]
fn presets_and_unknown_preset() {
    for name in Preprocess::PRESETS {
        Preprocess::preset(name).unwrap();
    }
    let err = Preprocess::preset("resnet-caffe").unwrap_err();
    assert!(matches!(err, CalibError::UnknownPreset { .. }));
    let msg = err.to_string();
    assert!(msg.contains("resnet-caffe"), "{msg}");
    for name in Preprocess::PRESETS {
        assert!(msg.contains(name), "message should list '{name}': {msg}");
    }
}

#[test]
fn serde_uses_kebab_case() {
    let p = Preprocess::preset("efficientnet-lite").unwrap();
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["resize_mode"], "crop");
    assert_eq!(json["channel_order"], "rgb");
    let back: Preprocess = serde_json::from_value(json).unwrap();
    assert_eq!(back, p);
}

#[test]
fn undecodable_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let p = Preprocess::preset("torchvision").unwrap();

    let garbage = dir.path().join("garbage.jpg");
    std::fs::write(&garbage, b"this is not a jpeg at all").unwrap();
    let err = p.load(&garbage, 224, 224).unwrap_err();
    assert!(
        matches!(&err, CalibError::Image { path, .. } if path == &garbage),
        "{err:?}"
    );
    assert!(err.to_string().contains("garbage.jpg"), "{err}");

    // JPEG magic followed by junk.
    let fake = dir.path().join("fake.jpeg");
    std::fs::write(&fake, [0xFF, 0xD8, 0xFF, 0xE0, 0, 16, b'J', b'F', 0, 0, 1]).unwrap();
    assert!(matches!(
        p.load(&fake, 224, 224),
        Err(CalibError::Image { .. })
    ));

    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    assert!(p.load(&empty, 224, 224).is_err());

    let missing = dir.path().join("missing.jpg");
    assert!(matches!(
        p.load(&missing, 224, 224),
        Err(CalibError::Io { .. })
    ));

    // A truncated real JPEG may decode partially or fail; either way no panic.
    let real = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets/images/eval/n01484850_great_white_shark.JPEG");
    let bytes = std::fs::read(real).unwrap();
    for cut in [2, 100, bytes.len() / 2] {
        let t = dir.path().join(format!("trunc{cut}.jpg"));
        std::fs::write(&t, &bytes[..cut]).unwrap();
        let _ = p.load(&t, 224, 224);
    }
}

#[test]
fn grayscale_and_rgba_pngs_load_as_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let p = raw(ResizeMode::Stretch, 1.0, ChannelOrder::Rgb);

    let gray = dir.path().join("gray.png");
    image::GrayImage::from_pixel(6, 5, image::Luma([77]))
        .save(&gray)
        .unwrap();
    let out = p.load(&gray, 3, 3).unwrap();
    assert!(out.iter().all(|&v| v == 77.0), "{out:?}");

    let rgba = dir.path().join("rgba.PNG");
    image::RgbaImage::from_pixel(6, 5, image::Rgba([1, 2, 3, 0]))
        .save_with_format(&rgba, image::ImageFormat::Png)
        .unwrap();
    let out = p.load(&rgba, 3, 3).unwrap();
    assert_eq!((out[0], out[9], out[18]), (1.0, 2.0, 3.0));
}
