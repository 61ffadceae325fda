//! Error-feedback (GPTQ) rounding on the bundled MobileNetV2: it must bring the quantized logits
//! closer to FP32 than round-to-nearest, on images it was not calibrated on, with every weight
//! still on its per-tensor grid.

mod common;

use common::{assets, images, logits_sqnr_db};
use subq_onnx::{load_model, ImportOptions};
use subq_quant::{QuantConfig, Scheme};
use subq_runtime::Fp32Executor;

#[test]
fn gptq_rounding_brings_held_out_logits_closer_to_fp32() {
    let fp32 = load_model(&assets().join("models/mobilenetv2_1.0_160_dogs.onnx"), &ImportOptions::default()).unwrap();
    let images = |range| images("calib", "keras-mobilenet", 160, range);
    let (calib, held_out) = (images(0..32), images(32..48));
    let mut cfg = QuantConfig::new(Scheme::Subtensor);
    cfg.cle_auto = false;
    cfg.cle = true;
    // GPTQ against round-to-nearest alone (weight correction would refit some of the rows).
    cfg.weight_correction = false;
    let (plain, _) = subq_quant::quantize(&fp32, &calib, &cfg, false).unwrap();
    cfg.gptq = true;
    let (rounded, summary) = subq_quant::quantize(&fp32, &calib, &cfg, false).unwrap();
    assert!(summary.gptq_layers > 30, "only {} layers had enough samples", summary.gptq_layers);
    assert!(summary.gptq_gain_db.iter().all(|(_, d)| *d >= 0.0), "a layer got worse on its own proxy: {:?}", summary.gptq_gain_db);
    // Same grids and graph, different grid points.
    assert_eq!(plain.nodes.len(), rounded.nodes.len());
    let reference = Fp32Executor::new(&fp32);
    let (a, b) = (logits_sqnr_db(&reference, &Fp32Executor::new(&plain), &held_out), logits_sqnr_db(&reference, &Fp32Executor::new(&rounded), &held_out));
    eprintln!("held-out logits SQNR: round-to-nearest {a:.2} dB, GPTQ {b:.2} dB ({} layers)", summary.gptq_layers);
    assert!(b > a + 0.2, "GPTQ {b:.2} dB vs nearest {a:.2} dB");
}
