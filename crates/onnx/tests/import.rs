//! ONNX import: models built here with the prost structs, the bundled real models, round trips
//! through the exporter, and error reporting on bad input (always Err with a clear message,
//! never a panic).

use std::path::{Path, PathBuf};

use prost::Message;
use subq_ir::{AutoPad, Graph, Op};
use subq_onnx::proto::{
    self, attribute_type as at, data_type as dt, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto,
};
use subq_onnx::{export_model, import_model, load_model, ImportOptions, OnnxError, MAX_OPSET, MIN_OPSET};
use subq_runtime::Fp32Executor;
use subq_tensor::{Tensor, TensorData};

// ---------------------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------------------

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

/// Deterministic pseudo-random floats in [−1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn bytes_of(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}

fn f32_raw(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto { name: name.into(), dims: dims.to_vec(), data_type: dt::FLOAT, raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(), ..Default::default() }
}

fn i64_raw(name: &str, dims: &[i64], data: &[i64]) -> TensorProto {
    TensorProto { name: name.into(), dims: dims.to_vec(), data_type: dt::INT64, raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(), ..Default::default() }
}

fn vi(name: &str, elem_type: i32, dims: &[i64]) -> ValueInfoProto {
    let dim = dims.iter().map(|&d| proto::Dimension { value: Some(proto::DimValue::DimValue(d)) }).collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(proto::TypeProto { tensor_type: Some(proto::TensorTypeProto { elem_type, shape: Some(proto::TensorShapeProto { dim }) }) }),
        doc_string: String::new(),
    }
}

fn f32_vi(name: &str, dims: &[i64]) -> ValueInfoProto {
    vi(name, dt::FLOAT, dims)
}

fn node(op_type: &str, name: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op_type.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

fn a_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::INT, i, ..Default::default() }
}
fn a_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::INTS, ints: ints.to_vec(), ..Default::default() }
}
fn a_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::FLOAT, f, ..Default::default() }
}
fn a_str(name: &str, s: &str) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::STRING, s: s.as_bytes().to_vec(), ..Default::default() }
}
fn a_tensor(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::TENSOR, t: Some(t), ..Default::default() }
}

fn model(opset: i64, nodes: Vec<NodeProto>, initializer: Vec<TensorProto>, input: Vec<ValueInfoProto>, output: Vec<ValueInfoProto>) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opset }],
        producer_name: "subq-tests".into(),
        graph: Some(GraphProto { node: nodes, name: "g".into(), initializer, input, output, ..Default::default() }),
        ..Default::default()
    }
}

const PATH: &str = "test/model.onnx";

fn import(m: &ModelProto) -> Result<Graph, OnnxError> {
    import_model(&m.encode_to_vec(), Path::new(PATH), &ImportOptions::default())
}

#[track_caller]
fn import_err(m: &ModelProto) -> (OnnxError, String) {
    let bytes = m.encode_to_vec();
    import_bytes_err(&bytes)
}

#[track_caller]
fn import_bytes_err(bytes: &[u8]) -> (OnnxError, String) {
    match import_model(bytes, Path::new(PATH), &ImportOptions::default()) {
        Ok(g) => panic!("expected an import error, got a graph with {} nodes", g.nodes.len()),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(PATH), "message does not name the file: {msg}");
            (e, msg)
        }
    }
}

fn run(g: &Graph, inputs: Vec<Tensor>) -> Vec<Tensor> {
    Fp32Executor::new(g).run(inputs).expect("graph runs")
}

/// A small CNN touching most ops: Conv (stride 2, pads) → BatchNorm → Clip (input form) →
/// depthwise Conv (auto_pad SAME_UPPER) → HardSwish → Add (residual) → GlobalAveragePool →
/// Flatten → Gemm (transB) → Softmax. Input [1,3,8,8], output [1,5].
fn small_cnn() -> ModelProto {
    let inits = vec![
        f32_raw("w1", &[4, 3, 3, 3], &values(108, 1)),
        f32_raw("b1", &[4], &values(4, 2)),
        f32_raw("bn_scale", &[4], &[1.0, 0.5, 2.0, 1.5]),
        f32_raw("bn_bias", &[4], &values(4, 3)),
        f32_raw("bn_mean", &[4], &values(4, 4)),
        f32_raw("bn_var", &[4], &[0.5, 1.0, 1.5, 2.0]),
        f32_raw("clip_lo", &[], &[0.0]),
        f32_raw("clip_hi", &[], &[6.0]),
        f32_raw("w2", &[4, 1, 3, 3], &values(36, 5)),
        f32_raw("w3", &[5, 4], &values(20, 6)),
        f32_raw("b3", &[5], &values(5, 7)),
    ];
    let nodes = vec![
        node("Conv", "conv1", &["x", "w1", "b1"], &["c1"], vec![a_ints("kernel_shape", &[3, 3]), a_ints("strides", &[2, 2]), a_ints("pads", &[1, 1, 1, 1])]),
        node("BatchNormalization", "bn1", &["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], &["n1"], vec![a_float("epsilon", 1e-3)]),
        node("Clip", "relu6", &["n1", "clip_lo", "clip_hi"], &["r1"], vec![]),
        node("Conv", "dw", &["r1", "w2"], &["c2"], vec![a_int("group", 4), a_str("auto_pad", "SAME_UPPER")]),
        node("HardSwish", "hs", &["c2"], &["h2"], vec![]),
        node("Add", "res", &["h2", "r1"], &["s2"], vec![]),
        node("GlobalAveragePool", "gap", &["s2"], &["p"], vec![]),
        node("Flatten", "flat", &["p"], &["f"], vec![a_int("axis", 1)]),
        node("Gemm", "fc", &["f", "w3", "b3"], &["logits"], vec![a_int("transB", 1)]),
        node("Softmax", "prob", &["logits"], &["y"], vec![a_int("axis", -1)]),
    ];
    model(13, nodes, inits, vec![f32_vi("x", &[1, 3, 8, 8])], vec![f32_vi("y", &[1, 5])])
}

fn small_cnn_input() -> Tensor {
    Tensor::f32(vec![1, 3, 8, 8], values(192, 42)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Round trip and determinism
// ---------------------------------------------------------------------------------------------

#[test]
fn small_cnn_imports_with_expected_ops_and_shapes() {
    let g = import(&small_cnn()).unwrap();
    let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
    assert_eq!(ops, ["Conv", "BatchNormalization", "Clip", "Conv", "HardSwish", "Add", "GlobalAveragePool", "Flatten", "Gemm", "Softmax"]);
    assert_eq!(g.shape("c1"), Some(&[1, 4, 4, 4][..]));
    assert_eq!(g.shape("y"), Some(&[1, 5][..]));
    let y = run(&g, vec![small_cnn_input()]).remove(0);
    let sum: f32 = y.as_f32().unwrap().iter().sum();
    assert!((sum - 1.0).abs() < 1e-5, "softmax output sums to {sum}");
}

#[test]
fn import_export_import_gives_the_same_graph_and_outputs() {
    let g1 = import(&small_cnn()).unwrap();
    let bytes = export_model(&g1);
    let g2 = import_model(&bytes, Path::new("exported.onnx"), &ImportOptions::default()).unwrap();
    assert_eq!(g1.nodes, g2.nodes, "nodes (names, ops with attributes, inputs, outputs)");
    assert_eq!(g1.initializers, g2.initializers, "initializers");
    assert_eq!(g1.inputs, g2.inputs);
    assert_eq!(g1.outputs, g2.outputs);
    assert_eq!(g1.shapes, g2.shapes);
    assert_eq!(g1.dtypes, g2.dtypes);
    let (y1, y2) = (run(&g1, vec![small_cnn_input()]), run(&g2, vec![small_cnn_input()]));
    assert_eq!(y1, y2, "outputs differ after the round trip");
}

#[test]
fn export_is_deterministic_and_a_fixed_point_of_import() {
    let g1 = import(&small_cnn()).unwrap();
    let first = export_model(&g1);
    assert_eq!(first, export_model(&g1), "exporting the same graph twice gives different bytes");
    // Exporting what was re-imported gives the same bytes again (no constants pile up, no
    // duplicate initializer names).
    let g2 = import_model(&first, Path::new("exported.onnx"), &ImportOptions::default()).unwrap();
    let second = export_model(&g2);
    assert!(first == second, "export(import(export(g))) differs from export(g)");
    let m = ModelProto::decode(&second[..]).unwrap();
    let names: Vec<&str> = m.graph.as_ref().unwrap().initializer.iter().map(|t| t.name.as_str()).collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(names.len(), unique.len(), "duplicate initializer names: {names:?}");
}

#[test]
fn folded_config_constants_do_not_stay_as_initializers() {
    // Clip bounds are folded into Op::Clip; they are not weights of the imported graph.
    let g = import(&small_cnn()).unwrap();
    assert!(!g.initializers.contains_key("clip_lo") && !g.initializers.contains_key("clip_hi"), "{:?}", g.initializers.keys().collect::<Vec<_>>());
    assert!(g.initializers.contains_key("w1"));
}

// ---------------------------------------------------------------------------------------------
// Bundled real models
// ---------------------------------------------------------------------------------------------

fn load_asset(name: &str) -> Graph {
    load_model(&assets().join("models").join(name), &ImportOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn bundled_fp32_models_import() {
    for (name, hw) in [("efficientnet_lite0.onnx", 224), ("mobilenetv2_1.0_160_dogs.onnx", 160)] {
        let g = load_asset(name);
        assert!(!g.is_quantized(), "{name}");
        assert_eq!(g.inputs.len(), 1, "{name}");
        let s = g.shape(&g.inputs[0]).unwrap();
        assert_eq!(s.len(), 4, "{name}: input shape {s:?}");
        assert!(s[1..].contains(&hw), "{name}: input shape {s:?}");
        assert!(g.nodes.iter().any(|n| matches!(n.op, Op::Conv(_))), "{name}");
        g.validate().unwrap();
    }
}

#[test]
fn bundled_ort_qdq_models_import() {
    for base in ["efficientnet_lite0", "mobilenetv2_1.0_160_dogs"] {
        for kind in ["per_tensor", "per_channel"] {
            let name = format!("{base}.ort_qdq_{kind}.onnx");
            let g = load_asset(&name);
            assert!(g.is_quantized(), "{name}");
            let per_axis = g
                .nodes
                .iter()
                .any(|n| matches!(n.op, Op::DequantizeLinear { .. }) && g.initializer(&n.inputs[1]).is_some_and(|s| s.len() > 1));
            assert_eq!(per_axis, kind == "per_channel", "{name}: per-axis DequantizeLinear present = {per_axis}");
            g.validate().unwrap();
        }
    }
}

#[test]
fn bundled_qdq_model_round_trips_through_export_with_identical_outputs() {
    let g1 = load_asset("mobilenetv2_1.0_160_dogs.ort_qdq_per_channel.onnx");
    let g2 = import_model(&export_model(&g1), Path::new("exported.onnx"), &ImportOptions::default()).unwrap();
    let ops = |g: &Graph| g.nodes.iter().map(|n| (n.name.clone(), n.op.name())).collect::<Vec<_>>();
    assert_eq!(ops(&g1), ops(&g2));
    let shape = g1.shape(&g1.inputs[0]).unwrap().to_vec();
    let n: usize = shape.iter().product();
    let x = Tensor::f32(shape, values(n, 9)).unwrap();
    assert_eq!(run(&g1, vec![x.clone()]), run(&g2, vec![x]));
}

// ---------------------------------------------------------------------------------------------
// Tensor encodings
// ---------------------------------------------------------------------------------------------

/// Graph reading one constant of every element type: Add(x, w_f32) → Reshape(shape_i64) → y0;
/// DequantizeLinear of uint8 / int8 / int32 constants → y1, y2, y3; Add(x, w_f64) → y4.
fn typed_constants_model(inits: Vec<TensorProto>) -> ModelProto {
    let nodes = vec![
        node("Add", "add", &["x", "w"], &["a"], vec![]),
        node("Reshape", "reshape", &["a", "shape"], &["y0"], vec![]),
        node("DequantizeLinear", "dq_u8", &["q_u8", "s", "zp_u8"], &["y1"], vec![]),
        node("DequantizeLinear", "dq_i8", &["q_i8", "s", "zp_i8"], &["y2"], vec![]),
        node("DequantizeLinear", "dq_i32", &["q_i32", "s"], &["y3"], vec![]),
        node("Add", "add64", &["x", "w64"], &["y4"], vec![]),
    ];
    let outputs = ["y0", "y1", "y2", "y3", "y4"].iter().map(|n| f32_vi(n, &[])).collect();
    model(13, nodes, inits, vec![f32_vi("x", &[1, 2, 2])], outputs)
}

fn typed_inits(raw: bool) -> Vec<TensorProto> {
    let w = [1.5f32, -2.0, 0.25, 3.0];
    let shape = [1i64, 4];
    let q_u8 = [0u8, 127, 128, 255];
    let q_i8 = [-128i8, -1, 0, 127];
    let q_i32 = [-100_000i32, 0, 7, 2_000_000];
    let w64 = [0.5f64, -1.25, 1e-3, 4.0];
    let t = |name: &str, dims: &[i64], data_type: i32| TensorProto { name: name.into(), dims: dims.to_vec(), data_type, ..Default::default() };
    let mut v = vec![
        t("w", &[1, 2, 2], dt::FLOAT),
        t("shape", &[2], dt::INT64),
        t("q_u8", &[4], dt::UINT8),
        t("zp_u8", &[], dt::UINT8),
        t("q_i8", &[4], dt::INT8),
        t("zp_i8", &[], dt::INT8),
        t("q_i32", &[4], dt::INT32),
        t("s", &[], dt::FLOAT),
        t("w64", &[1, 2, 2], dt::DOUBLE),
    ];
    if raw {
        v[0].raw_data = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        v[1].raw_data = shape.iter().flat_map(|x| x.to_le_bytes()).collect();
        v[2].raw_data = q_u8.to_vec();
        v[3].raw_data = vec![128];
        v[4].raw_data = q_i8.iter().map(|&x| x as u8).collect();
        v[5].raw_data = vec![(-3i8) as u8];
        v[6].raw_data = q_i32.iter().flat_map(|x| x.to_le_bytes()).collect();
        v[7].raw_data = 0.5f32.to_le_bytes().to_vec();
        v[8].raw_data = w64.iter().flat_map(|x| x.to_le_bytes()).collect();
    } else {
        // The typed fields ONNX uses when raw_data is absent: float_data, int64_data, and
        // int32_data for every 8/16/32-bit integer type; double_data for doubles.
        v[0].float_data = w.to_vec();
        v[1].int64_data = shape.to_vec();
        v[2].int32_data = q_u8.iter().map(|&x| x as i32).collect();
        v[3].int32_data = vec![128];
        v[4].int32_data = q_i8.iter().map(|&x| x as i32).collect();
        v[5].int32_data = vec![-3];
        v[6].int32_data = q_i32.to_vec();
        v[7].float_data = vec![0.5];
        v[8].double_data = w64.to_vec();
    }
    v
}

#[test]
fn typed_data_fields_equal_raw_data() {
    let typed = import(&typed_constants_model(typed_inits(false))).unwrap();
    let raw = import(&typed_constants_model(typed_inits(true))).unwrap();
    assert_eq!(typed.nodes, raw.nodes);
    assert_eq!(typed.initializers, raw.initializers);
    // Spot-check decoded values against the literals.
    assert_eq!(raw.initializers["w"], Tensor::f32(vec![1, 2, 2], vec![1.5, -2.0, 0.25, 3.0]).unwrap());
    assert_eq!(raw.initializers["q_u8"].data, TensorData::U8(vec![0, 127, 128, 255]));
    assert_eq!(raw.initializers["q_i8"].data, TensorData::I8(vec![-128, -1, 0, 127]));
    assert_eq!(raw.initializers["zp_i8"].data, TensorData::I8(vec![-3]));
    assert_eq!(raw.initializers["q_i32"].data, TensorData::I32(vec![-100_000, 0, 7, 2_000_000]));
    assert_eq!(raw.initializers["w64"].data, TensorData::F32(vec![0.5, -1.25, 1e-3, 4.0]));
    assert!(matches!(&raw.nodes[1].op, Op::Reshape { shape } if shape == &[1, 4]));
    // And the graph computes the same thing either way: dq_u8 = (q − 128)·0.5.
    let x = Tensor::f32(vec![1, 2, 2], vec![1., 2., 3., 4.]).unwrap();
    let (a, b) = (run(&typed, vec![x.clone()]), run(&raw, vec![x]));
    assert_eq!(a, b);
    assert_eq!(a[1].as_f32().unwrap(), &[-64.0, -0.5, 0.0, 63.5]);
}

// ---------------------------------------------------------------------------------------------
// Op-specific import rules
// ---------------------------------------------------------------------------------------------

#[test]
fn constant_nodes_become_initializers() {
    // Constant(value tensor) feeds Add; Constant(value_float) is Clip's max; Constant(value_ints)
    // is Reshape's shape. No Constant node survives.
    let nodes = vec![
        node("Constant", "c_tensor", &[], &["k"], vec![a_tensor("value", f32_raw("", &[1, 4], &[1., 2., 3., 4.]))]),
        node("Constant", "c_float", &[], &["hi"], vec![AttributeProto { name: "value_float".into(), r#type: at::FLOAT, f: 2.5, ..Default::default() }]),
        node("Constant", "c_ints", &[], &["shape"], vec![a_ints("value_ints", &[2, 2])]),
        node("Add", "add", &["x", "k"], &["a"], vec![]),
        node("Clip", "clip", &["a", "", "hi"], &["c"], vec![]),
        node("Reshape", "reshape", &["c", "shape"], &["y"], vec![]),
    ];
    let g = import(&model(13, nodes, vec![], vec![f32_vi("x", &[1, 4])], vec![f32_vi("y", &[2, 2])])).unwrap();
    let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
    assert_eq!(ops, ["Add", "Clip", "Reshape"]);
    assert_eq!(g.initializers["k"], Tensor::f32(vec![1, 4], vec![1., 2., 3., 4.]).unwrap());
    assert_eq!(g.nodes[1].op, Op::Clip { min: f32::NEG_INFINITY, max: 2.5 });
    assert_eq!(g.nodes[2].op, Op::Reshape { shape: vec![2, 2] });
    // x + [1,2,3,4] clipped at 2.5, reshaped: [0,0,0,0] → [1, 2, 2.5, 2.5].
    let y = run(&g, vec![Tensor::zeros_f32(vec![1, 4])]).remove(0);
    assert_eq!(y, Tensor::f32(vec![2, 2], vec![1., 2., 2.5, 2.5]).unwrap());
}

#[test]
fn dropout_becomes_identity() {
    // Opset 13 Dropout with ratio input and an unused mask output.
    let nodes = vec![node("Dropout", "drop", &["x", "ratio"], &["y", "mask"], vec![])];
    let g = import(&model(13, nodes, vec![f32_raw("ratio", &[], &[0.2])], vec![f32_vi("x", &[1, 3])], vec![f32_vi("y", &[1, 3])])).unwrap();
    assert_eq!(g.nodes.len(), 1);
    assert_eq!(g.nodes[0].op, Op::Identity);
    assert_eq!(g.nodes[0].inputs, ["x"]);
    assert_eq!(g.nodes[0].outputs, ["y"]);
    let x = Tensor::f32(vec![1, 3], vec![1., -2., 3.]).unwrap();
    assert_eq!(run(&g, vec![x.clone()]), vec![x]);
}

#[test]
fn clip_input_form_reads_min_and_max_constants() {
    let clip = |inputs: &[&str]| {
        let nodes = vec![node("Clip", "clip", inputs, &["y"], vec![])];
        let inits = vec![f32_raw("lo", &[], &[-1.0]), f32_raw("hi", &[], &[6.0])];
        import(&model(13, nodes, inits, vec![f32_vi("x", &[1, 2])], vec![f32_vi("y", &[1, 2])])).unwrap()
    };
    let g = clip(&["x", "lo", "hi"]);
    assert_eq!(g.nodes[0].op, Op::Clip { min: -1.0, max: 6.0 });
    assert_eq!(g.nodes[0].inputs, ["x"]);
    assert_eq!(clip(&["x", "", "hi"]).nodes[0].op, Op::Clip { min: f32::NEG_INFINITY, max: 6.0 });
    assert_eq!(clip(&["x", "lo"]).nodes[0].op, Op::Clip { min: -1.0, max: f32::INFINITY });
    assert_eq!(clip(&["x"]).nodes[0].op, Op::Clip { min: f32::NEG_INFINITY, max: f32::INFINITY });
}

#[test]
fn clip_with_non_constant_bound_is_rejected() {
    let nodes = vec![node("Clip", "clip", &["x", "lo"], &["y"], vec![])];
    let m = model(13, nodes, vec![], vec![f32_vi("x", &[1, 2]), f32_vi("lo", &[])], vec![f32_vi("y", &[1, 2])]);
    let (_, msg) = import_err(&m);
    assert!(msg.contains("'clip'") && msg.contains("'lo'") && msg.contains("constant"), "{msg}");
}

#[test]
fn opset_below_minimum_is_rejected_so_clip_attribute_form_never_applies() {
    // subq reads opsets 11..=18; Clip's attribute form only exists before opset 11.
    assert_eq!(MIN_OPSET, 11);
    let nodes = vec![node("Clip", "clip", &["x"], &["y"], vec![a_float("min", 0.0), a_float("max", 6.0)])];
    let m = model(10, nodes, vec![], vec![f32_vi("x", &[1, 2])], vec![f32_vi("y", &[1, 2])]);
    let (e, msg) = import_err(&m);
    assert!(matches!(e, OnnxError::Opset { opset: 10, .. }), "{e:?}");
    assert!(msg.contains("opset 10") && msg.contains("11") && msg.contains("18"), "{msg}");
}

#[test]
fn every_supported_opset_is_accepted() {
    for opset in MIN_OPSET..=MAX_OPSET {
        let nodes = vec![node("Relu", "relu", &["x"], &["y"], vec![])];
        let g = import(&model(opset, nodes, vec![], vec![f32_vi("x", &[1, 2])], vec![f32_vi("y", &[1, 2])])).unwrap_or_else(|e| panic!("opset {opset}: {e}"));
        assert_eq!(g.opset, opset);
    }
}

fn conv_model(attrs: Vec<AttributeProto>, hw: i64) -> ModelProto {
    let nodes = vec![node("Conv", "conv", &["x", "w"], &["y"], attrs)];
    model(13, nodes, vec![f32_raw("w", &[1, 1, 3, 3], &[1.0; 9])], vec![f32_vi("x", &[1, 1, hw, hw])], vec![f32_vi("y", &[])])
}

#[test]
fn conv_auto_pad_same_upper_and_lower_resolve_to_explicit_pads() {
    // 4×4 input, 3×3 kernel, stride 2: output ceil(4/2) = 2, total pad (2−1)·2 + 3 − 4 = 1,
    // which SAME_UPPER puts at the end (bottom/right) and SAME_LOWER at the beginning.
    for (mode, pads) in [("SAME_UPPER", [0, 0, 1, 1]), ("SAME_LOWER", [1, 1, 0, 0])] {
        let g = import(&conv_model(vec![a_str("auto_pad", mode), a_ints("strides", &[2, 2])], 4)).unwrap();
        match &g.nodes[0].op {
            Op::Conv(c) => {
                assert_eq!(c.pads, pads, "{mode}");
                assert_eq!(c.auto_pad, AutoPad::NotSet, "{mode}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(g.shape("y"), Some(&[1, 1, 2, 2][..]), "{mode}");
    }
    // 5×5, stride 1: total pad 2, split evenly.
    let g = import(&conv_model(vec![a_str("auto_pad", "SAME_UPPER")], 5)).unwrap();
    assert!(matches!(&g.nodes[0].op, Op::Conv(c) if c.pads == [1, 1, 1, 1]));
    assert_eq!(g.shape("y"), Some(&[1, 1, 5, 5][..]));
}

#[test]
fn pad_reads_pads_and_constant_value_inputs() {
    // ONNX pads [x1_begin, x2_begin, …, x1_end, …]: one row on top, one column on the right.
    let nodes = vec![node("Pad", "pad", &["x", "pads", "v"], &["y"], vec![a_str("mode", "constant")])];
    let inits = vec![i64_raw("pads", &[8], &[0, 0, 1, 0, 0, 0, 0, 1]), f32_raw("v", &[], &[0.5])];
    let g = import(&model(13, nodes, inits, vec![f32_vi("x", &[1, 1, 2, 2])], vec![f32_vi("y", &[])])).unwrap();
    assert_eq!(g.nodes[0].op, Op::Pad { pads: vec![0, 0, 1, 0, 0, 0, 0, 1], value: 0.5 });
    assert_eq!(g.nodes[0].inputs, ["x"]);
    assert_eq!(g.shape("y"), Some(&[1, 1, 3, 3][..]));
    let y = run(&g, vec![Tensor::f32(vec![1, 1, 2, 2], vec![1., 2., 3., 4.]).unwrap()]).remove(0);
    assert_eq!(y.as_f32().unwrap(), &[0.5, 0.5, 0.5, 1., 2., 0.5, 3., 4., 0.5]);
}

#[test]
fn pad_with_axes_input_expands_to_all_axes() {
    // Opset 18: pads [1, 2] for axes [3] → begin 1 / end 2 on the last axis only.
    let nodes = vec![node("Pad", "pad", &["x", "pads", "", "axes"], &["y"], vec![])];
    let inits = vec![i64_raw("pads", &[2], &[1, 2]), i64_raw("axes", &[1], &[3])];
    let g = import(&model(18, nodes, inits, vec![f32_vi("x", &[1, 1, 2, 2])], vec![f32_vi("y", &[])])).unwrap();
    assert_eq!(g.nodes[0].op, Op::Pad { pads: vec![0, 0, 0, 1, 0, 0, 0, 2], value: 0.0 });
    assert_eq!(g.shape("y"), Some(&[1, 1, 2, 5][..]));
}

#[test]
fn pad_reflect_mode_is_rejected() {
    let nodes = vec![node("Pad", "pad", &["x", "pads"], &["y"], vec![a_str("mode", "reflect")])];
    let m = model(13, nodes, vec![i64_raw("pads", &[8], &[0; 8])], vec![f32_vi("x", &[1, 1, 2, 2])], vec![f32_vi("y", &[])]);
    let (_, msg) = import_err(&m);
    assert!(msg.contains("'pad'") && msg.contains("reflect"), "{msg}");
}

#[test]
fn symbolic_batch_dimension_takes_the_import_batch() {
    let mut m = conv_model(vec![], 3);
    m.graph.as_mut().unwrap().input[0] = {
        let mut v = f32_vi("x", &[1, 1, 3, 3]);
        let dims = &mut v.r#type.as_mut().unwrap().tensor_type.as_mut().unwrap().shape.as_mut().unwrap().dim;
        dims[0].value = Some(proto::DimValue::DimParam("N".into()));
        v
    };
    let g = import_model(&m.encode_to_vec(), Path::new(PATH), &ImportOptions { batch: 4 }).unwrap();
    assert_eq!(g.shape("x"), Some(&[4, 1, 3, 3][..]));
}

// ---------------------------------------------------------------------------------------------
// Errors: Err with a message naming the problem, never a panic
// ---------------------------------------------------------------------------------------------

#[test]
fn truncated_real_model_is_a_decode_error() {
    let bytes = std::fs::read(assets().join("models/mobilenetv2_1.0_160_dogs.onnx")).unwrap();
    let (e, msg) = import_bytes_err(&bytes[..bytes.len() / 2]);
    assert!(matches!(e, OnnxError::Decode { .. }), "{e:?}");
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn many_truncation_points_never_panic() {
    // Cut the small CNN at every byte offset: each prefix is an error or (for prefixes that
    // happen to be a complete message) a valid graph, never a panic.
    let bytes = small_cnn().encode_to_vec();
    for cut in 0..bytes.len() {
        let _ = import_model(&bytes[..cut], Path::new(PATH), &ImportOptions::default());
    }
}

#[test]
fn random_garbage_bytes_are_an_error() {
    for seed in 0..32 {
        let bytes = bytes_of(1000 + seed as usize * 37, seed);
        let (e, _) = import_bytes_err(&bytes);
        assert!(matches!(e, OnnxError::Decode { .. } | OnnxError::NoGraph { .. }), "seed {seed}: {e:?}");
    }
}

#[test]
fn text_file_is_an_error() {
    let (e, _) = import_bytes_err(b"this is not an onnx model, just some text\n");
    assert!(matches!(e, OnnxError::Decode { .. } | OnnxError::NoGraph { .. }), "{e:?}");
}

#[test]
fn empty_file_is_an_error() {
    let (e, msg) = import_bytes_err(&[]);
    assert!(matches!(e, OnnxError::NoGraph { .. } | OnnxError::Decode { .. }), "{e:?}");
    assert!(msg.contains("no graph") || msg.contains("not a valid ONNX"), "{msg}");
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let path = assets().join("models/does_not_exist.onnx");
    let e = load_model(&path, &ImportOptions::default()).unwrap_err();
    assert!(matches!(e, OnnxError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("does_not_exist.onnx"), "{e}");
}

#[test]
fn unsupported_op_names_node_op_and_opset() {
    let nodes = vec![node("LSTM", "encoder_lstm", &["x"], &["y"], vec![a_int("hidden_size", 8)])];
    let m = model(13, nodes, vec![], vec![f32_vi("x", &[1, 1, 4])], vec![f32_vi("y", &[])]);
    let (e, msg) = import_err(&m);
    assert!(matches!(e, OnnxError::UnsupportedOp { .. }), "{e:?}");
    assert!(msg.contains("encoder_lstm") && msg.contains("LSTM") && msg.contains("opset 13"), "{msg}");
}

#[test]
fn unnamed_unsupported_node_is_identified_by_its_output() {
    let nodes = vec![node("Tanh", "", &["x"], &["tanh_out"], vec![])];
    let (_, msg) = import_err(&model(13, nodes, vec![], vec![f32_vi("x", &[1, 2])], vec![f32_vi("tanh_out", &[])]));
    assert!(msg.contains("tanh_out") && msg.contains("Tanh"), "{msg}");
}

#[test]
fn unsupported_conv_attribute_is_named() {
    let (e, msg) = import_err(&conv_model(vec![a_str("activation", "relu")], 4));
    assert!(matches!(e, OnnxError::Node { .. }), "{e:?}");
    assert!(msg.contains("'conv'") && msg.contains("Conv") && msg.contains("unsupported attribute 'activation'"), "{msg}");
}

#[test]
fn malformed_conv_attributes_are_errors() {
    for (attrs, what) in [
        (vec![a_ints("strides", &[0, 1])], "strides"),
        (vec![a_ints("pads", &[1, 1])], "pads"),
        (vec![a_ints("kernel_shape", &[5, 5])], "kernel_shape"),
        (vec![a_str("auto_pad", "SAME_MIDDLE")], "SAME_MIDDLE"),
        (vec![a_int("group", 0)], "group"),
        (vec![a_int("group", -3)], "group"),
    ] {
        let (_, msg) = import_err(&conv_model(attrs, 4));
        assert!(msg.contains("'conv'") && msg.contains(what), "{what}: {msg}");
    }
}

#[test]
fn unsupported_opset_21_is_rejected() {
    let nodes = vec![node("Relu", "relu", &["x"], &["y"], vec![])];
    let (e, msg) = import_err(&model(21, nodes, vec![], vec![f32_vi("x", &[1, 2])], vec![f32_vi("y", &[])]));
    assert!(matches!(e, OnnxError::Opset { opset: 21, .. }), "{e:?}");
    assert!(msg.contains("opset 21"), "{msg}");
}

#[test]
fn missing_default_domain_opset_is_rejected() {
    let mut m = model(13, vec![node("Relu", "relu", &["x"], &["y"], vec![])], vec![], vec![f32_vi("x", &[1, 2])], vec![f32_vi("y", &[])]);
    m.opset_import = vec![OperatorSetIdProto { domain: "com.microsoft".into(), version: 1 }];
    let (e, _) = import_err(&m);
    assert!(matches!(e, OnnxError::Opset { .. }), "{e:?}");
}

#[test]
fn non_default_domain_op_is_rejected_with_its_domain() {
    let mut n = node("FusedConv", "fused", &["x", "w"], &["y"], vec![]);
    n.domain = "com.microsoft".into();
    let mut m = model(13, vec![n], vec![f32_raw("w", &[1, 1, 3, 3], &[1.0; 9])], vec![f32_vi("x", &[1, 1, 4, 4])], vec![f32_vi("y", &[])]);
    m.opset_import.push(OperatorSetIdProto { domain: "com.microsoft".into(), version: 1 });
    let (e, msg) = import_err(&m);
    assert!(matches!(e, OnnxError::UnsupportedOp { .. }), "{e:?}");
    assert!(msg.contains("com.microsoft") && msg.contains("FusedConv") && msg.contains("'fused'"), "{msg}");
}

#[test]
fn external_data_tensor_is_rejected() {
    let mut m = conv_model(vec![], 4);
    let w = &mut m.graph.as_mut().unwrap().initializer[0];
    w.raw_data.clear();
    w.data_location = 1;
    w.external_data = vec![proto::StringStringEntryProto { key: "location".into(), value: "weights.bin".into() }];
    let (e, msg) = import_err(&m);
    assert!(matches!(e, OnnxError::Tensor { .. }), "{e:?}");
    assert!(msg.contains("'w'") && msg.contains("external data"), "{msg}");
}

#[test]
fn raw_data_with_wrong_byte_count_is_rejected() {
    let mut m = conv_model(vec![], 4);
    m.graph.as_mut().unwrap().initializer[0].raw_data.truncate(10);
    let (e, msg) = import_err(&m);
    assert!(matches!(e, OnnxError::Tensor { .. }), "{e:?}");
    assert!(msg.contains("'w'") && msg.contains("raw_data has 10 bytes") && msg.contains("36"), "{msg}");
}

#[test]
fn typed_data_with_wrong_element_count_is_rejected() {
    let mut m = conv_model(vec![], 4);
    let w = &mut m.graph.as_mut().unwrap().initializer[0];
    w.raw_data.clear();
    w.float_data = vec![1.0; 5];
    let (_, msg) = import_err(&m);
    assert!(msg.contains("'w'") && msg.contains("9 elements"), "{msg}");
}

#[test]
fn unsupported_tensor_element_type_is_rejected() {
    let mut m = conv_model(vec![], 4);
    let w = &mut m.graph.as_mut().unwrap().initializer[0];
    w.data_type = 10; // float16
    let (_, msg) = import_err(&m);
    assert!(msg.contains("'w'") && msg.contains("element type 10"), "{msg}");
}

#[test]
fn conv_weight_that_is_a_graph_input_is_rejected() {
    let nodes = vec![node("Conv", "conv", &["x", "w"], &["y"], vec![])];
    let m = model(13, nodes, vec![], vec![f32_vi("x", &[1, 1, 4, 4]), f32_vi("w", &[1, 1, 3, 3])], vec![f32_vi("y", &[])]);
    let (e, msg) = import_err(&m);
    assert!(matches!(e, OnnxError::Node { .. }), "{e:?}");
    assert!(msg.contains("'conv'") && msg.contains("weight must be a constant"), "{msg}");
}

#[test]
fn conv_channel_mismatch_is_an_import_error() {
    let nodes = vec![node("Conv", "conv", &["x", "w"], &["y"], vec![])];
    let m = model(13, nodes, vec![f32_raw("w", &[1, 2, 3, 3], &[1.0; 18])], vec![f32_vi("x", &[1, 3, 4, 4])], vec![f32_vi("y", &[])]);
    let (e, msg) = import_err(&m);
    assert!(matches!(e, OnnxError::Ir { .. }), "{e:?}");
    assert!(msg.contains("'conv'") && msg.contains("input channels 3"), "{msg}");
}

#[test]
fn undefined_node_input_is_an_error() {
    let nodes = vec![node("Relu", "relu", &["nowhere"], &["y"], vec![])];
    let (_, msg) = import_err(&model(13, nodes, vec![], vec![f32_vi("x", &[1, 2])], vec![f32_vi("y", &[])]));
    assert!(msg.contains("nowhere"), "{msg}");
}

#[test]
fn non_static_spatial_input_dimension_is_rejected() {
    let mut m = conv_model(vec![], 4);
    let dims = &mut m.graph.as_mut().unwrap().input[0].r#type.as_mut().unwrap().tensor_type.as_mut().unwrap().shape.as_mut().unwrap().dim;
    dims[2].value = Some(proto::DimValue::DimParam("H".into()));
    let (e, msg) = import_err(&m);
    assert!(matches!(e, OnnxError::Input { .. }), "{e:?}");
    assert!(msg.contains("'x'") && msg.contains("dimension 2"), "{msg}");
}

#[test]
fn zero_sized_conv_weight_is_an_error_not_a_panic() {
    let nodes = vec![node("Conv", "conv", &["x", "w"], &["y"], vec![])];
    let m = model(13, nodes, vec![f32_raw("w", &[1, 1, 0, 3], &[])], vec![f32_vi("x", &[1, 1, 4, 4])], vec![f32_vi("y", &[])]);
    let (_, msg) = import_err(&m);
    assert!(msg.contains("'conv'"), "{msg}");
}

/// Operator-format ops whose quantization cannot be expressed as QDQ here are refused with the
/// node, the op and the reason: a bias whose input scale is not a constant, a channels-last
/// average pool.
#[test]
fn operator_format_ops_that_cannot_become_qdq_name_node_and_reason() {
    let u8_scalar = |name: &str, v: u8| TensorProto { name: name.into(), data_type: dt::UINT8, raw_data: vec![v], ..Default::default() };
    let i8_w = TensorProto { name: "w".into(), data_type: dt::INT8, dims: vec![2, 1, 1, 1], raw_data: vec![3, 250], ..Default::default() };
    let i32_b = TensorProto { name: "b".into(), data_type: dt::INT32, dims: vec![2], raw_data: [5i32, -7].iter().flat_map(|v| v.to_le_bytes()).collect(), ..Default::default() };
    let inits = vec![f32_raw("ws", &[], &[0.01]), f32_raw("ys", &[], &[0.05]), u8_scalar("zp", 128), u8_scalar("yzp", 0), i8_w, i32_b, TensorProto { name: "wzp".into(), data_type: dt::INT8, raw_data: vec![0], ..Default::default() }];
    // The input scale comes from a graph input, not a constant.
    let nodes = vec![
        node("QuantizeLinear", "q", &["x", "xs", "zp"], &["xq"], vec![]),
        node("QLinearConv", "stem_qconv", &["xq", "xs", "zp", "w", "ws", "wzp", "ys", "yzp", "b"], &["y"], vec![]),
    ];
    let m = model(13, nodes, inits.clone(), vec![f32_vi("x", &[1, 1, 4, 4]), f32_vi("xs", &[])], vec![f32_vi("y", &[])]);
    let (e, msg) = import_err(&m);
    assert!(matches!(e, OnnxError::Node { .. }), "{e:?}");
    assert!(msg.contains("stem_qconv") && msg.contains("QLinearConv") && msg.contains("'xs' must be a constant"), "{msg}");
    let nodes = vec![
        node("QuantizeLinear", "q", &["x", "ws", "zp"], &["xq"], vec![]),
        NodeProto { domain: "com.microsoft".into(), ..node("QLinearGlobalAveragePool", "head_pool", &["xq", "ws", "zp", "ys", "yzp"], &["y"], vec![a_int("channels_last", 1)]) },
    ];
    let (_, msg) = import_err(&model(13, nodes, inits, vec![f32_vi("x", &[1, 1, 4, 4])], vec![f32_vi("y", &[])]));
    assert!(msg.contains("head_pool") && msg.contains("channels_last"), "{msg}");
}
