//! Every function-preserving pass keeps the FP32 outputs of the real models.

use std::path::{Path, PathBuf};

use subq_ir::{Graph, Op};
use subq_onnx::{load_model, ImportOptions};
use subq_runtime::Fp32Executor;
use subq_tensor::Tensor;

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

pub fn reference_inputs(model: &str, count: usize) -> Vec<Tensor> {
    let bytes = std::fs::read(assets().join("reference").join(format!("{model}.inputs.npy"))).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let data = npy.into_vec::<f32>().unwrap();
    let per = data.len() / shape[0];
    (0..count.min(shape[0])).map(|i| Tensor::f32(vec![1, shape[1], shape[2], shape[3]], data[i * per..(i + 1) * per].to_vec()).unwrap()).collect()
}

fn load(model: &str) -> Graph {
    load_model(&assets().join("models").join(format!("{model}.onnx")), &ImportOptions::default()).unwrap()
}

/// Largest |a − b| over the logits of `inputs`, relative to the largest |logit|.
fn relative_change(before: &Graph, after: &Graph, inputs: &[Tensor]) -> f32 {
    let (e0, e1) = (Fp32Executor::new(before), Fp32Executor::new(after));
    let (mut diff, mut peak) = (0f32, 0f32);
    for x in inputs {
        let a = e0.run(vec![x.clone()]).unwrap().remove(0);
        let b = e1.run(vec![x.clone()]).unwrap().remove(0);
        for (p, q) in a.as_f32().unwrap().iter().zip(b.as_f32().unwrap()) {
            diff = diff.max((p - q).abs());
            peak = peak.max(p.abs());
        }
    }
    diff / peak
}

#[test]
fn bn_fold_preserves_outputs_on_both_models() {
    for model in ["efficientnet_lite0", "mobilenetv2_1.0_160_dogs"] {
        let g = load(model);
        let bn_before = g.nodes.iter().filter(|n| matches!(n.op, Op::BatchNorm { .. })).count();
        let mut folded = g.clone();
        let n = subq_transforms::fold_batch_norms(&mut folded).unwrap();
        assert_eq!(n, bn_before, "{model}: every BN follows a conv and must fold");
        assert!(folded.nodes.iter().all(|n| !matches!(n.op, Op::BatchNorm { .. })));
        let rel = relative_change(&g, &folded, &reference_inputs(model, 2));
        eprintln!("{model}: {n} BN folded, relative logit change {rel:.2e}");
        assert!(rel < 1e-4, "{model}: BN folding changed the outputs by {rel}");
    }
}

#[test]
fn pad_fold_preserves_outputs_on_mobilenetv2() {
    let model = "mobilenetv2_1.0_160_dogs";
    let g = load(model);
    let mut folded = g.clone();
    let n = subq_transforms::fold_pads(&mut folded).unwrap();
    assert_eq!(n, 4, "the four explicit Pads before stride-2 depthwise convs fold");
    assert!(folded.nodes.iter().all(|n| !matches!(n.op, Op::Pad { .. })));
    let rel = relative_change(&g, &folded, &reference_inputs(model, 2));
    assert!(rel < 1e-5, "pad folding changed the outputs by {rel}");
}

#[test]
fn cle_preserves_outputs_and_keeps_relu6_exact() {
    for model in ["efficientnet_lite0", "mobilenetv2_1.0_160_dogs"] {
        let mut g = load(model);
        subq_transforms::prepare_for_quantization(&mut g).unwrap();
        let mut eq = g.clone();
        let pairs = subq_transforms::equalize(&mut eq, 1.0, 2).unwrap();
        assert!(pairs > 20, "{model}: only {pairs} conv pairs equalized");
        // Every ReLU6 that was equalized became Relu → Min(per-channel bound), none a plain Relu.
        let clips_before = g.nodes.iter().filter(|n| matches!(n.op, Op::Clip { .. })).count();
        let clips_after = eq.nodes.iter().filter(|n| matches!(n.op, Op::Clip { .. })).count();
        let mins = eq.nodes.iter().filter(|n| matches!(n.op, Op::Min)).count();
        assert_eq!(clips_before, clips_after + mins, "{model}: a ReLU6 lost its bound");
        // Only ReLU6s between two convs are rescaled; the head's (before pooling) keeps its Clip,
        // whose one bound costs nothing, rather than a Min over a tensor of one repeated value.
        assert!(clips_after >= 1, "{model}: the head's ReLU6 became a Min");
        for n in eq.nodes.iter().filter(|n| matches!(n.op, Op::Min)) {
            let feeds_conv = eq.nodes.iter().filter(|c| c.inputs.contains(&n.outputs[0])).all(|c| matches!(c.op, Op::Conv(_)));
            assert!(feeds_conv, "{model}: bound {} does not feed a conv", n.name);
        }
        // Scales are bounded (dead channels keep s = 1), so no bound explodes: at most 6 · 32 per
        // pass, two passes.
        for n in eq.nodes.iter().filter(|n| matches!(n.op, Op::Min)) {
            let top = eq.initializers[&n.inputs[1]].to_f32_vec().into_iter().fold(0.0f32, f32::max);
            assert!(top <= 6.0 * 32.0 * 32.0 * 1.0001, "{model}: {} bound {top}", n.name);
        }
        let rel = relative_change(&g, &eq, &reference_inputs(model, 2));
        eprintln!("{model}: {pairs} pairs, {mins} ReLU6 with per-channel bounds, relative logit change {rel:.2e}");
        assert!(rel < 1e-4, "{model}: CLE changed the outputs by {rel}");
    }
}

/// Calibration runs the executor with an observer; on an equalized graph (Relu → Min bounds) its
/// outputs must equal a plain run's, and every observed Min output must respect its bound.
#[test]
fn observed_runs_of_an_equalized_graph_match_plain_runs() {
    let model = "mobilenetv2_1.0_160_dogs";
    let mut g = load(model);
    subq_transforms::prepare_for_quantization(&mut g).unwrap();
    subq_transforms::equalize(&mut g, 0.5, 2).unwrap();
    let exec = Fp32Executor::new(&g);
    let x = reference_inputs(model, 1).remove(0);
    let plain = exec.run(vec![x.clone()]).unwrap().remove(0);
    let mut observed_values = std::collections::HashMap::new();
    let observed = exec.run_observed(vec![x], &mut |name, t| {
        observed_values.insert(name.to_string(), t.clone());
    }).unwrap().remove(0);
    assert_eq!(plain.as_f32().unwrap(), observed.as_f32().unwrap());
    for n in g.nodes.iter().filter(|n| matches!(n.op, Op::Min)) {
        let bound = g.initializers[&n.inputs[1]].to_f32_vec();
        let out = &observed_values[&n.outputs[0]];
        let inner: usize = out.shape[2..].iter().product();
        for (i, chunk) in out.as_f32().unwrap().chunks(inner).enumerate() {
            let b = bound[i % bound.len()];
            assert!(chunk.iter().all(|&v| v <= b + 1e-6 && v >= 0.0), "{}: channel {} exceeds its bound {b}", n.name, i % bound.len());
        }
    }
}

/// The factors `equalize_with_scales` reports are the ones each conv output was really divided by
/// (both passes together), so the BN statistics that data-free quantization starts from can follow
/// the channels.
#[test]
fn cle_reports_how_each_conv_output_was_scaled() {
    let model = "mobilenetv2_1.0_160_dogs";
    let mut g = load(model);
    let prep = subq_transforms::prepare_for_quantization(&mut g).unwrap();
    let mut eq = g.clone();
    let (_, scales) = subq_transforms::equalize_with_scales(&mut eq, 0.5, 2).unwrap();
    assert!(scales.len() > 20, "only {} conv outputs scaled", scales.len());
    let x = reference_inputs(model, 1).remove(0);
    let observe = |graph: &Graph| {
        let mut seen = std::collections::HashMap::new();
        Fp32Executor::new(graph).run_observed(vec![x.clone()], &mut |name, t| {
            seen.insert(name.to_string(), t.clone());
        }).unwrap();
        seen
    };
    let (before, after) = (observe(&g), observe(&eq));
    let mut bn = prep.bn_stats.clone();
    subq_transforms::rescale_bn_stats(&mut bn, &scales);
    for (value, s) in &scales {
        assert!(s.iter().any(|&v| (v - 1.0).abs() > 0.01), "{value}: all factors 1");
        let (b, a) = (before[value].as_f32().unwrap(), after[value].as_f32().unwrap());
        let inner = b.len() / s.len();
        let peak = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (p, q)) in b.iter().zip(a).enumerate() {
            assert!((p - q * s[i / inner]).abs() <= 1e-4 * peak, "{value}[{i}]: {p} before, {q} · {} after", s[i / inner]);
        }
        // Every scaled output was a folded BN's, and its statistics moved with it.
        let ((b0, g0), (b1, g1)) = (&prep.bn_stats[value], &bn[value]);
        for c in 0..s.len() {
            assert!((b1[c] * s[c] - b0[c]).abs() <= 1e-5 * b0[c].abs().max(1.0) && (g1[c] * s[c] - g0[c]).abs() <= 1e-5 * g0[c].abs().max(1.0), "{value} channel {c}");
        }
    }
}

/// Per-channel minimum of every value over `inputs` (what the quantizer feeds high-bias absorption).
fn channel_minimums(g: &Graph, inputs: &[Tensor]) -> std::collections::BTreeMap<String, Vec<f32>> {
    let exec = Fp32Executor::new(g);
    let mut mins: std::collections::BTreeMap<String, Vec<f32>> = Default::default();
    for x in inputs {
        exec.run_observed(vec![x.clone()], &mut |name, t| {
            if t.shape.len() != 4 {
                return;
            }
            let (c, inner) = (t.shape[1], t.shape[2] * t.shape[3]);
            let m = mins.entry(name.to_string()).or_insert_with(|| vec![f32::INFINITY; c]);
            for (i, chunk) in t.as_f32().unwrap().chunks(inner).enumerate() {
                m[i % c] = chunk.iter().fold(m[i % c], |a, &b| a.min(b));
            }
        })
        .unwrap();
    }
    mins
}

#[test]
fn high_bias_absorption_preserves_outputs_and_shrinks_ranges() {
    for model in ["efficientnet_lite0", "mobilenetv2_1.0_160_dogs"] {
        let mut g = load(model);
        subq_transforms::prepare_for_quantization(&mut g).unwrap();
        subq_transforms::equalize(&mut g, 0.5, 2).unwrap();
        let inputs = reference_inputs(model, 3);
        let mins = channel_minimums(&g, &inputs);
        let mut absorbed = g.clone();
        let pairs = subq_transforms::absorb_high_biases(&mut absorbed, &mins).unwrap();
        assert!(pairs > 5, "{model}: only {pairs} pairs absorbed");
        // Exact on the images whose minimums were used (x ≥ c there).
        let rel = relative_change(&g, &absorbed, &inputs);
        eprintln!("{model}: {pairs} pairs absorbed, relative logit change {rel:.2e}");
        assert!(rel < 1e-4, "{model}: absorption changed the outputs by {rel}");
        // Some activation between the pairs now starts lower: a bound was lowered somewhere.
        let lowered = g.nodes.iter().filter(|n| matches!(n.op, Op::Min)).any(|n| {
            let (a, b) = (g.initializers[&n.inputs[1]].to_f32_vec(), absorbed.initializers[&n.inputs[1]].to_f32_vec());
            a.iter().zip(&b).any(|(x, y)| y < x)
        });
        assert!(lowered, "{model}: no ReLU6 bound moved");
    }
}

/// A QDQ file turned back into float computes what the file computes, minus activation rounding:
/// close to the file's written semantics, and to the original FP32 model for a per-channel file.
#[test]
fn dequantized_qdq_models_match_their_files() {
    for (qdq, fp32, min_db) in [("efficientnet_lite0.ort_qdq_per_channel", "efficientnet_lite0", 15.0), ("mobilenetv2_1.0_160_dogs.ort_qdq_per_tensor", "mobilenetv2_1.0_160_dogs", 0.0)] {
        let file = load(qdq);
        let mut g = file.clone();
        let removed = subq_transforms::dequantize_qdq(&mut g).unwrap();
        assert!(!g.is_quantized(), "{qdq}: Q/DQ nodes left");
        assert!(removed > 100, "{qdq}: only {removed} nodes removed");
        // The graph ends in a real op, not a stand-in for the removed DequantizeLinear.
        for o in &g.outputs {
            let p = g.nodes.iter().find(|n| n.outputs.contains(o)).unwrap_or_else(|| panic!("{qdq}: output {o} not produced"));
            assert!(!matches!(p.op, Op::Identity), "{qdq}: output {o} comes from an Identity");
        }
        // Every weight is float now.
        for n in g.nodes.iter().filter(|n| matches!(n.op, Op::Conv(_) | Op::Gemm { .. })) {
            assert_eq!(g.initializers[&n.inputs[1]].dtype(), subq_tensor::DType::F32, "{qdq}: {} weight", n.name);
        }
        let inputs = reference_inputs(fp32, 2);
        let sqnr = |a: &Graph, b: &Graph| {
            let (ea, eb) = (Fp32Executor::new(a), Fp32Executor::new(b));
            let (mut s, mut n) = (0f64, 0f64);
            for x in &inputs {
                let (p, q) = (ea.run(vec![x.clone()]).unwrap().remove(0).to_f32_vec(), eb.run(vec![x.clone()]).unwrap().remove(0).to_f32_vec());
                for (u, v) in p.iter().zip(&q) {
                    s += (*u as f64).powi(2);
                    n += ((u - v) as f64).powi(2);
                }
            }
            10.0 * (s / n.max(1e-30)).log10()
        };
        let vs_file = sqnr(&file, &g);
        let vs_fp32 = sqnr(&load(fp32), &g);
        eprintln!("{qdq}: {removed} nodes removed; logits SQNR {vs_file:.1} dB vs the QDQ file, {vs_fp32:.1} dB vs FP32");
        assert!(vs_file > 12.0, "{qdq}: dequantized model drifts from its file ({vs_file:.1} dB)");
        assert!(vs_fp32 > min_db, "{qdq}: {vs_fp32:.1} dB vs FP32");
    }
}
