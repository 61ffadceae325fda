//! Layer sensitivity: a synthetic graph where one layer is built to break per-tensor
//! quantization, and the bundled MobileNetV2, whose outlier depthwise layers must rank worse
//! than its well-behaved layers.

use std::path::Path;

use subq_eval::sensitivity::layer_sensitivity;
use subq_ir::{AutoPad, Conv2d, Graph, Node, Op};
use subq_tensor::{DType, Tensor};

fn rnd(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn conv(k: usize, group: usize) -> Op {
    Op::Conv(Conv2d { kernel: [k, k], strides: [1, 1], dilations: [1, 1], pads: [k / 2; 4], auto_pad: AutoPad::NotSet, group })
}

/// x[1,8,6,6] → depthwise "a" → Relu → depthwise "b" → Relu → pointwise "c" → y.
/// "b" has one output channel 1000× wider than the others (the per-tensor grid then rounds the
/// other seven channels away), and "c" ignores that channel, so the outlier carries nothing.
fn synthetic() -> Graph {
    let c = 8;
    let mut g = Graph { name: "synthetic".into(), opset: 13, ..Default::default() };
    g.inputs.push("x".into());
    g.outputs.push("y".into());
    g.shapes.insert("x".into(), vec![1, c, 6, 6]);
    g.dtypes.insert("x".into(), DType::F32);
    let mut wb = rnd(c * 9, 2);
    wb[..9].iter_mut().for_each(|w| *w *= 1000.0);
    let mut wc = rnd(c * c, 3);
    (0..c).for_each(|o| wc[o * c] = 0.0);
    for (name, shape, v) in [("wa", vec![c, 1, 3, 3], rnd(c * 9, 1)), ("wb", vec![c, 1, 3, 3], wb), ("wc", vec![c, c, 1, 1], wc)] {
        g.initializers.insert(name.into(), Tensor::f32(shape, v).unwrap());
    }
    let node = |name: &str, op: Op, inputs: &[&str], out: &str| Node { name: name.into(), op, inputs: inputs.iter().map(|s| s.to_string()).collect(), outputs: vec![out.into()] };
    g.nodes = vec![
        node("a", conv(3, c), &["x", "wa"], "a_out"),
        node("a_relu", Op::Relu, &["a_out"], "a_act"),
        node("b", conv(3, c), &["a_act", "wb"], "b_out"),
        node("b_relu", Op::Relu, &["b_out"], "b_act"),
        node("c", conv(1, 1), &["b_act", "wc"], "y"),
    ];
    subq_ir::infer_shapes(&mut g).unwrap();
    g
}

#[test]
fn the_layer_built_to_break_per_tensor_ranks_first() {
    let g = synthetic();
    let inputs: Vec<Tensor> = (0..4).map(|i| Tensor::f32(vec![1, 8, 6, 6], rnd(8 * 36, 10 + i)).unwrap()).collect();
    let r = layer_sensitivity(&g, &inputs, false).unwrap();
    let names: Vec<&str> = r.iter().map(|l| l.node.as_str()).collect();
    assert_eq!(names.len(), 3, "{r:?}");
    assert_eq!(names[0], "b", "{r:?}");
    let sqnr = |n: &str| r.iter().find(|l| l.node == n).unwrap().logits_sqnr_db;
    assert!(sqnr("b") + 10.0 < sqnr("a") && sqnr("b") + 10.0 < sqnr("c"), "{r:?}");
    // The activation quantized with "b" is the Relu's output (the int8 model fuses the Relu).
    assert_eq!(r[0].activation, "b_act");
    assert!(r[0].channel_range_spread.unwrap() > 100.0);
    assert_eq!(r.iter().map(|l| l.rank).collect::<Vec<_>>(), vec![1, 2, 3]);
}

#[test]
fn mobilenet_outlier_layers_rank_worse_than_well_behaved_ones() {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    let g = subq_onnx::load_model(&assets.join("models/mobilenetv2_1.0_160_dogs.onnx"), &Default::default()).unwrap();
    let pre = subq_calib::Preprocess::preset("keras-mobilenet").unwrap();
    let mut files: Vec<_> = std::fs::read_dir(assets.join("images/calib")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let inputs: Vec<Tensor> = files.iter().take(4).map(|p| Tensor::f32(vec![1, 3, 160, 160], pre.load(p, 160, 160).unwrap()).unwrap()).collect();
    let r = layer_sensitivity(&g, &inputs, false).unwrap();
    assert_eq!(r.len(), 53, "one entry per Conv/Gemm layer");
    assert!(r.windows(2).all(|w| w[0].logits_sqnr_db <= w[1].logits_sqnr_db), "not sorted worst first");
    let median = r[r.len() / 2].logits_sqnr_db;
    // Near-dead channels (spread ≥ 1e4) carry no signal; among the others, the depthwise layer
    // with the widest per-channel spread hurts more than the median layer, and the layer with
    // the narrowest spread hurts less.
    let spread = |l: &subq_eval::sensitivity::LayerSensitivity| l.channel_range_spread.unwrap_or(f32::INFINITY);
    let widest = r.iter().filter(|l| l.kind.starts_with("depthwise") && spread(l) < 1e4).max_by(|a, b| spread(a).total_cmp(&spread(b))).unwrap();
    let narrowest = r.iter().min_by(|a, b| spread(a).total_cmp(&spread(b))).unwrap();
    assert!(widest.logits_sqnr_db < median, "widest-spread layer {} ({}×) at {:.1} dB, median {median:.1} dB", widest.node, spread(widest), widest.logits_sqnr_db);
    assert!(narrowest.logits_sqnr_db > median, "narrowest-spread layer {} at {:.1} dB, median {median:.1} dB", narrowest.node, narrowest.logits_sqnr_db);
    // The first depthwise layer (281× spread after BN folding) is the classic MobileNetV2 failure.
    assert!(r[..3].iter().any(|l| l.node == "expanded_conv_depthwise"), "{:?}", &r[..3]);
}

/// The scheme table of a model without BatchNormalization (nothing for data-free quantization to
/// read) leaves out the data-free row instead of failing the whole table.
#[test]
fn scheme_table_skips_data_free_without_batch_norm_statistics() {
    use subq_eval::schemes::{run_schemes, scheme_configs};
    let g = synthetic();
    let inputs: Vec<Tensor> = (0..4).map(|i| Tensor::f32(vec![1, 8, 6, 6], rnd(8 * 36, 20 + i)).unwrap()).collect();
    let configs: Vec<_> = scheme_configs().into_iter().filter(|(label, _)| ["per-tensor", "data-free subtensor"].contains(label)).collect();
    assert_eq!(configs.len(), 2);
    let rows = run_schemes(&g, &inputs, None, configs, (-1.0, 1.0), false, |_| {}).unwrap();
    let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, vec!["per-tensor"]);
}
