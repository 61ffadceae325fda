//! Executors: [`Fp32Executor`] runs any IR graph in floating point (QDQ nodes included, with
//! their written semantics); the int8 executor runs quantized graphs with integer kernels.

mod fp32;
mod int8;

pub use fp32::{eval_node, qdq_params, Fp32Executor};
pub use int8::Int8Engine;
/// The integer kernel set chosen at run time (for reports).
pub use subq_kernels::q8::kernel_set;
/// The FP32 kernel set chosen at run time (for reports).
pub use subq_kernels::f32::kernel_set as fp32_kernel_set;

use subq_kernels::ConvGeometry;

/// The geometry of a 2-D Conv from its input and output shapes (NCHW, as shape inference
/// recorded them).
pub(crate) fn conv_geometry(c: &subq_ir::Conv2d, in_shape: &[usize], out_shape: &[usize]) -> ConvGeometry {
    ConvGeometry { in_c: in_shape[1], in_h: in_shape[2], in_w: in_shape[3], out_c: out_shape[1], out_h: out_shape[2], out_w: out_shape[3], kernel: c.kernel, strides: c.strides, dilations: c.dilations, pad_top: c.pads[0], pad_left: c.pads[1], group: c.group }
}

/// `(kind, detail)` of a conv for profiles (`subq bench --profile`), the same for both
/// executors: e.g. `("conv 1×1", "96→24 @ 20×20")`, with ` /2` for a strided one.
pub(crate) fn conv_label(g: &ConvGeometry) -> (String, String) {
    let kind = if g.is_depthwise() {
        format!("conv depthwise {}×{}", g.kernel[0], g.kernel[1])
    } else if g.is_pointwise() {
        "conv 1×1".to_string()
    } else if g.out_h * g.out_w == 1 {
        "conv/gemm 1×1 map".to_string()
    } else {
        format!("conv {}×{}", g.kernel[0], g.kernel[1])
    };
    let stride = if g.strides == [1, 1] { String::new() } else { format!(" /{}", g.strides[0]) };
    (kind, format!("{}→{} @ {}×{}{stride}", g.in_c, g.out_c, g.out_h, g.out_w))
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("node '{node}' ({op}): {reason}")]
    Node { node: String, op: String, reason: String },
    #[error("input '{name}': expected shape {expected:?}, got {actual:?}")]
    InputShape { name: String, expected: Vec<usize>, actual: Vec<usize> },
    #[error("missing graph input '{0}'")]
    MissingInput(String),
    #[error("{0}")]
    Other(String),
}
