//! IR → ONNX. Output is deterministic: nodes in graph order, initializers sorted by name,
//! metadata sorted by key, no timestamps.

use std::io::Write;
use std::path::Path;

use prost::Message;
use subq_ir::{Graph, Op};
use subq_tensor::{DType, Tensor, TensorData};

use crate::proto::{self, attribute_type as at, data_type as dt, AttributeProto, NodeProto, TensorProto};
use crate::OnnxError;

fn dtype_code(d: DType) -> i32 {
    match d {
        DType::F32 => dt::FLOAT,
        DType::U8 => dt::UINT8,
        DType::I8 => dt::INT8,
        DType::I32 => dt::INT32,
        DType::I64 => dt::INT64,
    }
}

pub(crate) fn tensor_proto(name: &str, t: &Tensor) -> TensorProto {
    let raw_data: Vec<u8> = match &t.data {
        TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::U8(v) => v.clone(),
        TensorData::I8(v) => v.iter().map(|&x| x as u8).collect(),
        TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        TensorData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    };
    TensorProto {
        dims: t.shape.iter().map(|&d| d as i64).collect(),
        data_type: dtype_code(t.dtype()),
        name: name.to_string(),
        raw_data,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::INTS, ints: v.to_vec(), ..Default::default() }
}
fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::INT, i: v, ..Default::default() }
}
fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: at::FLOAT, f: v, ..Default::default() }
}
fn usizes(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

fn value_info(name: &str, dtype: DType, shape: &[usize]) -> proto::ValueInfoProto {
    let dim = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| proto::Dimension {
            // The batch dimension stays symbolic so that ONNX Runtime can run any batch size.
            value: Some(if i == 0 { proto::DimValue::DimParam("N".into()) } else { proto::DimValue::DimValue(d as i64) }),
        })
        .collect();
    proto::ValueInfoProto {
        name: name.into(),
        r#type: Some(proto::TypeProto { tensor_type: Some(proto::TensorTypeProto { elem_type: dtype_code(dtype), shape: Some(proto::TensorShapeProto { dim }) }) }),
        doc_string: String::new(),
    }
}

/// Serialize a graph as an ONNX model (opset ≥ 13, which per-axis QDQ needs).
pub fn export_model(g: &Graph) -> Vec<u8> {
    let mut extra_inits: Vec<TensorProto> = Vec::new();
    let mut nodes = Vec::with_capacity(g.nodes.len());
    for n in &g.nodes {
        let mut inputs = n.inputs.clone();
        // Trailing omitted optional inputs are dropped; inner ones stay as "".
        while inputs.last().is_some_and(|s| s.is_empty()) {
            inputs.pop();
        }
        let mut attribute = Vec::new();
        let mut add_const = |suffix: &str, t: Tensor, inputs: &mut Vec<String>| {
            let name = format!("{}_{suffix}", n.name);
            extra_inits.push(tensor_proto(&name, &t));
            inputs.push(name);
        };
        match &n.op {
            Op::Conv(c) => {
                attribute.push(ints("dilations", &usizes(&c.dilations)));
                attribute.push(int("group", c.group as i64));
                attribute.push(ints("kernel_shape", &usizes(&c.kernel)));
                attribute.push(ints("pads", &usizes(&c.pads)));
                attribute.push(ints("strides", &usizes(&c.strides)));
            }
            Op::BatchNorm { epsilon } => attribute.push(float("epsilon", *epsilon)),
            Op::Clip { min, max } => {
                add_const("min", Tensor::scalar_f32(*min), &mut inputs);
                add_const("max", Tensor::scalar_f32(*max), &mut inputs);
            }
            Op::HardSigmoid { alpha, beta } => {
                attribute.push(float("alpha", *alpha));
                attribute.push(float("beta", *beta));
            }
            Op::AveragePool(p) | Op::MaxPool(p) => {
                if matches!(n.op, Op::AveragePool(_)) {
                    attribute.push(int("count_include_pad", p.count_include_pad as i64));
                }
                attribute.push(int("ceil_mode", p.ceil_mode as i64));
                attribute.push(ints("kernel_shape", &usizes(&p.kernel)));
                attribute.push(ints("pads", &usizes(&p.pads)));
                attribute.push(ints("strides", &usizes(&p.strides)));
            }
            Op::Pad { pads, value } => {
                add_const("pads", Tensor { shape: vec![pads.len()], data: TensorData::I64(pads.clone()) }, &mut inputs);
                add_const("value", Tensor::scalar_f32(*value), &mut inputs);
            }
            Op::Flatten { axis } => attribute.push(int("axis", *axis)),
            Op::Reshape { shape } => add_const("shape", Tensor { shape: vec![shape.len()], data: TensorData::I64(shape.clone()) }, &mut inputs),
            Op::Gemm { alpha, beta, trans_a, trans_b } => {
                attribute.push(float("alpha", *alpha));
                attribute.push(float("beta", *beta));
                attribute.push(int("transA", *trans_a as i64));
                attribute.push(int("transB", *trans_b as i64));
            }
            Op::Concat { axis } | Op::Softmax { axis } => attribute.push(int("axis", *axis)),
            Op::QuantizeLinear { axis } | Op::DequantizeLinear { axis } => {
                let per_axis = n.inputs.get(1).and_then(|s| g.initializers.get(s)).is_some_and(|t| t.len() > 1);
                if per_axis {
                    attribute.push(int("axis", *axis));
                }
            }
            Op::Relu | Op::Add | Op::Mul | Op::Min | Op::Sigmoid | Op::HardSwish | Op::GlobalAveragePool | Op::MatMul | Op::Identity => {}
        }
        nodes.push(NodeProto { input: inputs, output: n.outputs.clone(), name: n.name.clone(), op_type: n.op.name().into(), attribute, ..Default::default() });
    }
    let mut initializer: Vec<TensorProto> = g.initializers.iter().map(|(k, t)| tensor_proto(k, t)).collect();
    initializer.extend(extra_inits);
    let io = |names: &[String]| -> Vec<proto::ValueInfoProto> {
        names.iter().map(|v| value_info(v, g.dtypes.get(v).copied().unwrap_or(DType::F32), g.shape(v).unwrap_or(&[]))).collect()
    };
    let model = proto::ModelProto {
        ir_version: 8,
        opset_import: vec![proto::OperatorSetIdProto { domain: String::new(), version: g.opset.max(13) }],
        producer_name: "subq".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(proto::GraphProto { node: nodes, name: g.name.clone(), initializer, input: io(&g.inputs), output: io(&g.outputs), ..Default::default() }),
        metadata_props: g.metadata.iter().map(|(k, v)| proto::StringStringEntryProto { key: k.clone(), value: v.clone() }).collect(),
        ..Default::default()
    };
    model.encode_to_vec()
}

/// Write the model atomically: to a temporary file in the same folder, then renamed, so that a
/// failure never leaves a half-written model behind.
pub fn save_model(g: &Graph, path: &Path) -> Result<(), OnnxError> {
    let bytes = export_model(g);
    write_atomically(path, &bytes)
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), OnnxError> {
    let err = |reason: String| OnnxError::Write { path: path.to_path_buf(), reason };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().ok_or_else(|| err("not a file path".into()))?.to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e.to_string()));
    }
    Ok(())
}
