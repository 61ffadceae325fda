//! The FP32 engine reproduces ONNX Runtime's logits on the shared reference inputs.

mod common;

use common::{argmax, assets, read_npy};

use subq_onnx::{load_model, ImportOptions};
use subq_runtime::Fp32Executor;
use subq_tensor::Tensor;


/// Runs `model` on the reference inputs of `inputs_of` and compares with `logits` file.
/// Returns (max |diff|, max |logit|, top-1 matches).
fn compare(model: &str, inputs_of: &str, logits: &str) -> (f32, f32, usize) {
    let g = load_model(&assets().join("models").join(model), &ImportOptions::default()).unwrap();
    let (shape, x) = read_npy(&assets().join("reference").join(format!("{inputs_of}.inputs.npy")));
    let (lshape, expected) = read_npy(&assets().join("reference").join(logits));
    let exec = Fp32Executor::new(&g);
    let per = x.len() / shape[0];
    let classes = lshape[1];
    let (mut max_diff, mut max_logit, mut top1) = (0f32, 0f32, 0);
    for i in 0..shape[0] {
        let input = Tensor::f32(vec![1, shape[1], shape[2], shape[3]], x[i * per..(i + 1) * per].to_vec()).unwrap();
        let out = exec.run(vec![input]).unwrap().remove(0);
        let got = out.as_f32().unwrap();
        let want = &expected[i * classes..(i + 1) * classes];
        for (a, b) in got.iter().zip(want) {
            max_diff = max_diff.max((a - b).abs());
            max_logit = max_logit.max(b.abs());
        }
        top1 += (argmax(got) == argmax(want)) as usize;
    }
    (max_diff, max_logit, top1)
}

#[test]
fn efficientnet_lite0_matches_onnxruntime() {
    let (d, m, top1) = compare("efficientnet_lite0.onnx", "efficientnet_lite0", "efficientnet_lite0.logits.npy");
    eprintln!("efficientnet_lite0: max|diff| {d:.2e}, max|logit| {m:.2}");
    assert!(d <= 1e-3 * m, "max diff {d} > 1e-3 × {m}");
    assert_eq!(top1, 8);
}

#[test]
fn mobilenetv2_dogs_matches_onnxruntime() {
    let (d, m, top1) = compare("mobilenetv2_1.0_160_dogs.onnx", "mobilenetv2_1.0_160_dogs", "mobilenetv2_1.0_160_dogs.logits.npy");
    eprintln!("mobilenetv2: max|diff| {d:.2e}, max|logit| {m:.2}");
    assert!(d <= 1e-3 * m, "max diff {d} > 1e-3 × {m}");
    assert_eq!(top1, 8);
}

/// QDQ files run with their written semantics (dequantize → float op → quantize) in the FP32
/// executor reproduce ONNX Runtime's outputs for another tool's quantized files.
#[test]
fn ort_qdq_files_written_semantics() {
    for model in ["efficientnet_lite0", "mobilenetv2_1.0_160_dogs"] {
        for scheme in ["per_tensor", "per_channel"] {
            let (d, m, top1) = compare(&format!("{model}.ort_qdq_{scheme}.onnx"), model, &format!("{model}.ort_qdq_{scheme}.logits.npy"));
            eprintln!("{model} {scheme}: max|diff| {d:.3}, max|logit| {m:.2}, top-1 {top1}/8");
            assert!(top1 >= 7, "{model} {scheme}: top-1 agreement {top1}/8");
        }
    }
}

/// The FP32 executor's profiled run gives the same outputs as the plain one; every node has
/// a time slot, and only the nodes that run as steps of their own get a label (`subq bench
/// --profile` on a float model).
#[test]
fn fp32_profiled_run_matches_run() {
    let model = "mobilenetv2_1.0_160_dogs";
    let (shape, x) = read_npy(&assets().join(format!("reference/{model}.inputs.npy")));
    let g = load_model(
        &assets().join(format!("models/{model}.onnx")),
        &ImportOptions::default(),
    )
    .unwrap();
    let exec = Fp32Executor::new(&g);
    let per = x.len() / shape[0];
    let input = Tensor::f32(vec![1, shape[1], shape[2], shape[3]], x[..per].to_vec()).unwrap();
    let mut times = Vec::new();
    let plain = exec.run(vec![input.clone()]).unwrap().remove(0);
    let profiled = exec
        .run_profiled(vec![input], &mut times)
        .unwrap()
        .remove(0);
    assert_eq!(plain.as_f32().unwrap(), profiled.as_f32().unwrap());
    let labels = exec.node_labels();
    assert_eq!(labels.len(), g.nodes.len());
    assert_eq!(times.len(), g.nodes.len());
    // Conv + BatchNormalization + Relu6 run as one step: the followers have no label.
    let steps: Vec<_> = labels.iter().flatten().collect();
    assert!(steps.len() < g.nodes.len());
    assert_eq!(
        steps
            .iter()
            .filter(|(k, _)| k == "conv depthwise 3×3")
            .count(),
        17
    );
    assert!(steps
        .iter()
        .any(|(k, d)| k == "conv 1×1" && d == "320→1280 @ 5×5"));
    assert!(times.iter().sum::<f64>() > 0.0);
}
