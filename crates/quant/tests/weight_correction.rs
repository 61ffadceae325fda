//! Empirical weight correction on the bundled MobileNetV2 (subtensor, no CLE): corrected on some
//! calibration images, the quantized model must be closer to FP32 on *other* images than with
//! bias correction alone. This also checks the plumbing: each corrected layer's new weights must
//! be what the rest of the pass computes with. Measured: 23.4 dB → 25.7 dB; a version whose
//! quantized graph kept computing with the old weights, and so fitted every later layer to them,
//! gave 4.3 dB here.

mod common;

use common::{assets, images, logits_sqnr_db};
use subq_onnx::{load_model, ImportOptions};
use subq_quant::{QuantConfig, Scheme};
use subq_runtime::Fp32Executor;

#[test]
fn weight_correction_brings_held_out_logits_closer_to_fp32() {
    let fp32 = load_model(&assets().join("models/mobilenetv2_1.0_160_dogs.onnx"), &ImportOptions::default()).unwrap();
    let calib = images("calib", "keras-mobilenet", 160, 0..32);
    let held_out = images("eval", "keras-mobilenet", 160, 0..24);
    let mut cfg = QuantConfig::new(Scheme::Subtensor);
    cfg.cle_auto = false;
    cfg.cle = false;
    cfg.bias_correction_images = calib.len();
    let reference = Fp32Executor::new(&fp32);
    let mut sqnr = |correct: bool| -> (f64, usize) {
        cfg.weight_correction = correct;
        let (q, s) = subq_quant::quantize(&fp32, &calib, &cfg, false).unwrap();
        let changed = s.weight_corrections.iter().filter(|(_, c)| c.channels_changed > 0).count();
        (logits_sqnr_db(&reference, &Fp32Executor::new(&q), &held_out), changed)
    };
    let (plain, none) = sqnr(false);
    let (corrected, layers) = sqnr(true);
    eprintln!("held-out logits SQNR: bias correction {plain:.2} dB, with weight correction {corrected:.2} dB ({layers} layers changed)");
    assert_eq!(none, 0);
    assert!(layers >= 20, "only {layers} layers corrected");
    assert!(corrected > plain + 0.5, "weight correction {corrected:.2} dB vs {plain:.2} dB");
}
