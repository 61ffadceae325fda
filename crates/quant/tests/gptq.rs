//! Error-feedback (GPTQ) rounding on the bundled MobileNetV2: it must bring the quantized logits
//! closer to FP32 than round-to-nearest, on images it was not calibrated on, with every weight
//! still on its per-tensor grid.

use std::path::{Path, PathBuf};

use subq_calib::{list_images, preprocess::Preprocess};
use subq_onnx::{load_model, ImportOptions};
use subq_quant::{QuantConfig, Scheme};
use subq_runtime::Fp32Executor;
use subq_tensor::Tensor;

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

fn images(range: std::ops::Range<usize>) -> Vec<Tensor> {
    let items = list_images(&assets().join("images/calib")).unwrap();
    let pre = Preprocess::preset("keras-mobilenet").unwrap();
    items[range].iter().map(|it| Tensor::f32(vec![1, 3, 160, 160], pre.load(&it.path, 160, 160).unwrap()).unwrap()).collect()
}

fn logits_sqnr_db(reference: &Fp32Executor, model: &Fp32Executor, inputs: &[Tensor]) -> f64 {
    let (mut signal, mut noise) = (0f64, 0f64);
    for x in inputs {
        let r = reference.run(vec![x.clone()]).unwrap().remove(0);
        let q = model.run(vec![x.clone()]).unwrap().remove(0);
        for (a, b) in r.as_f32().unwrap().iter().zip(q.as_f32().unwrap()) {
            signal += (*a as f64).powi(2);
            noise += (*a as f64 - *b as f64).powi(2);
        }
    }
    10.0 * (signal / noise).log10()
}

#[test]
fn gptq_rounding_brings_held_out_logits_closer_to_fp32() {
    let fp32 = load_model(&assets().join("models/mobilenetv2_1.0_160_dogs.onnx"), &ImportOptions::default()).unwrap();
    let (calib, held_out) = (images(0..32), images(32..48));
    let mut cfg = QuantConfig::new(Scheme::Subtensor);
    cfg.cle_auto = false;
    cfg.cle = true;
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
