//! Data-free quantization (no images: ranges and bias correction from BN statistics) on the
//! bundled EfficientNet-Lite0, checked against real images it never saw.

mod common;

use common::{assets, images, logits_sqnr_db};
use subq_onnx::{load_model, ImportOptions};
use subq_quant::{QuantConfig, Scheme};
use subq_runtime::Fp32Executor;

/// EfficientNet-Lite0's preprocessing, (x − 127) / 128.
const INPUT_RANGE: (f32, f32) = (-127.0 / 128.0, 1.0);

/// A ReLU6 that CLE leaves alone (the head's, before pooling) gets its whole [0, 6] as range, as
/// does the pooling over it: BN's normal model (mean + 4σ = 3.6 here) would clip the values
/// that trained ReLU6 layers push to 6.
#[test]
fn a_fixed_relu6_keeps_its_whole_range_without_data() {
    let mut g = load_model(&assets().join("models/efficientnet_lite0.onnx"), &ImportOptions::default()).unwrap();
    let prep = subq_transforms::prepare_for_quantization(&mut g).unwrap();
    let calib = subq_quant::data_free::data_free_calibration(&g, &prep.bn_stats, INPUT_RANGE).unwrap();
    assert_eq!(calib.ranges["head_relu"], (0.0, 6.0));
    assert_eq!(calib.ranges["pool"], (0.0, 6.0));
    // A conv output without a clip keeps the normal model's range (mean ± 4σ, finite).
    let (lo, hi) = calib.ranges["b15_project_bn"];
    assert!(lo < 0.0 && hi > 0.0 && hi < 1e3, "b15_project_bn range ({lo}, {hi})");
}

/// The default data-free subtensor model (CLE on, BN statistics carried through it) stays close
/// to FP32 on real images: 20.1 dB of logits SQNR on the 400 evaluation images, where clipping the
/// head at mean + 4σ gave 13.5 dB and no CLE 12.1 dB (BENCHMARKS.md).
#[test]
fn data_free_subtensor_stays_close_to_fp32_on_real_images() {
    let fp32 = load_model(&assets().join("models/efficientnet_lite0.onnx"), &ImportOptions::default()).unwrap();
    let mut cfg = QuantConfig::new(Scheme::Subtensor);
    cfg.data_free = true;
    cfg.input_range = Some(INPUT_RANGE);
    let (q, summary) = subq_quant::quantize(&fp32, &[], &cfg, false).unwrap();
    assert!(summary.cle, "data-free subtensor should equalize by default");
    let eval = images("eval", "efficientnet-lite", 224, 0..16);
    let sqnr = logits_sqnr_db(&Fp32Executor::new(&fp32), &Fp32Executor::new(&q), &eval);
    eprintln!("data-free subtensor logits SQNR on 16 evaluation images: {sqnr:.2} dB");
    assert!(sqnr > 17.0, "data-free subtensor logits SQNR {sqnr:.2} dB");
}
