//! Data-free quantization (no images: ranges and bias correction from BN statistics) on the
//! bundled EfficientNet-Lite0, checked against real images it never saw.

use std::path::{Path, PathBuf};

use subq_onnx::{load_model, ImportOptions};
use subq_quant::{QuantConfig, Scheme};
use subq_runtime::Fp32Executor;
use subq_tensor::Tensor;

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

fn reference_inputs(model: &str, count: usize) -> Vec<Tensor> {
    let bytes = std::fs::read(assets().join("reference").join(format!("{model}.inputs.npy"))).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let data = npy.into_vec::<f32>().unwrap();
    let per = data.len() / shape[0];
    (0..count.min(shape[0])).map(|i| Tensor::f32(vec![1, shape[1], shape[2], shape[3]], data[i * per..(i + 1) * per].to_vec()).unwrap()).collect()
}

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
    let (reference, quantized) = (Fp32Executor::new(&fp32), Fp32Executor::new(&q));
    let (mut signal, mut noise) = (0f64, 0f64);
    for x in reference_inputs("efficientnet_lite0", 16) {
        let r = reference.run(vec![x.clone()]).unwrap().remove(0);
        let y = quantized.run(vec![x]).unwrap().remove(0);
        for (a, b) in r.as_f32().unwrap().iter().zip(y.as_f32().unwrap()) {
            signal += (*a as f64).powi(2);
            noise += (*a as f64 - *b as f64).powi(2);
        }
    }
    let sqnr = 10.0 * (signal / noise).log10();
    eprintln!("data-free subtensor logits SQNR on 16 reference images: {sqnr:.2} dB");
    assert!(sqnr > 17.0, "data-free subtensor logits SQNR {sqnr:.2} dB");
}
