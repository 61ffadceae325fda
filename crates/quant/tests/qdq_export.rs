//! What the QDQ exporter writes for an equalized model, and that the int8 engine runs it as written.

mod common;

use common::{input, seed_fp32_graph};
use subq_ir::Op;
use subq_quant::{quantize, QuantConfig, Scheme};
use subq_runtime::{Fp32Executor, Int8Engine};
use subq_tensor::{DType, Tensor};

#[test]
fn equalized_relu6_bounds_are_uint8_on_the_output_grid_and_the_engine_clamps_exactly() {
    let g = seed_fp32_graph();
    let inputs: Vec<Tensor> = (1..=8).map(input).collect();
    let mut cfg = QuantConfig::new(Scheme::PerTensor);
    cfg.cle = true;
    let (q, _) = quantize(&g, &inputs, &cfg, false).unwrap();
    let mins: Vec<_> = q.nodes.iter().filter(|n| matches!(n.op, Op::Min)).collect();
    assert!(!mins.is_empty(), "CLE should have produced per-channel ReLU6 bounds");
    for m in &mins {
        let dq = q.nodes.iter().find(|n| n.outputs[0] == m.inputs[1]).unwrap_or_else(|| panic!("{}: bound is not computed by a node", m.name));
        assert!(matches!(dq.op, Op::DequantizeLinear { .. }), "{}: bound read from {:?}", m.name, dq.op);
        assert_eq!(q.initializers[&dq.inputs[0]].dtype(), DType::U8, "{}: bound not stored as uint8", m.name);
        // On the Min's own output grid: same scale and zero-point as its QuantizeLinear.
        let quant = q.nodes.iter().find(|n| matches!(n.op, Op::QuantizeLinear { .. }) && n.inputs[0] == m.outputs[0]).expect("Min output quantized");
        assert_eq!(q.initializers[&dq.inputs[1]].to_f32_vec(), q.initializers[&quant.inputs[1]].to_f32_vec());
        assert_eq!(q.initializers[&dq.inputs[2]].to_i32_vec(), q.initializers[&quant.inputs[2]].to_i32_vec());
    }
    // The engine lowers Min(bound) to an integer clamp; the float reading of the file
    // (dequantize → Min → quantize) must agree with it on the logits within rounding.
    let (fp, int8) = (Fp32Executor::new(&q), Int8Engine::new(&q).unwrap());
    for x in (20..24).map(input) {
        let a = fp.run(vec![x.clone()]).unwrap().remove(0).to_f32_vec();
        let b = int8.run(x).unwrap().remove(0).to_f32_vec();
        let peak = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() <= 0.05 * peak.max(1e-3), "written semantics {u} vs engine {v}");
        }
    }
}

#[test]
fn logits_stay_float_by_default_and_the_engine_computes_them_in_integer() {
    let g = seed_fp32_graph();
    let inputs: Vec<Tensor> = (1..=8).map(input).collect();
    for scheme in [Scheme::PerTensor, Scheme::PerChannel, Scheme::Subtensor] {
        let cfg = QuantConfig::new(scheme);
        let (q, summary) = quantize(&g, &inputs, &cfg, false).unwrap();
        assert_eq!(summary.float_outputs, 1, "{scheme:?}");
        let producer = q.nodes.iter().find(|n| n.outputs[0] == "logits").expect("logits produced");
        assert!(matches!(producer.op, Op::Gemm { .. }), "{scheme:?}: logits come from {:?}, not from the Gemm", producer.op);
        assert!(!q.nodes.iter().any(|n| matches!(n.op, Op::QuantizeLinear { .. }) && n.inputs[0] == "logits"), "{scheme:?}: logits quantized");
        // The engine keeps the Gemm integer (no float op) and only dequantizes its accumulator,
        // so it matches the file's float reading far more tightly than one output grid step.
        let (fp, int8) = (Fp32Executor::new(&q), Int8Engine::new(&q).unwrap());
        assert!(int8.float_ops().is_empty(), "{scheme:?}: float ops {:?}", int8.float_ops());
        for x in (20..24).map(input) {
            let a = fp.run(vec![x.clone()]).unwrap().remove(0).to_f32_vec();
            let b = int8.run(x).unwrap().remove(0).to_f32_vec();
            let peak = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (u, v) in a.iter().zip(&b) {
                assert!((u - v).abs() <= 1e-5 * peak.max(1e-3), "{scheme:?}: written semantics {u} vs engine {v}");
            }
        }
    }
    // --quantize-outputs: the logits get their own uint8 grid again.
    let mut cfg = QuantConfig::new(Scheme::PerTensor);
    cfg.quantize_outputs = true;
    let (q, summary) = quantize(&g, &inputs, &cfg, false).unwrap();
    assert_eq!(summary.float_outputs, 0);
    let producer = q.nodes.iter().find(|n| n.outputs[0] == "logits").expect("logits produced");
    assert!(matches!(producer.op, Op::DequantizeLinear { .. }), "logits come from {:?}", producer.op);
}
