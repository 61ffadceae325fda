use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AutoPad {
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

/// 2-D convolution attributes (NCHW input, OIHW weights). `pads` is [top, left, bottom, right];
/// after shape inference `auto_pad` is always `NotSet` and `pads` is explicit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    pub pads: [usize; 4],
    pub auto_pad: AutoPad,
    pub group: usize,
}

impl Conv2d {
    pub fn is_depthwise(&self, in_channels: usize, out_channels: usize) -> bool {
        self.group > 1 && self.group == in_channels && self.group == out_channels
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool2d {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub pads: [usize; 4],
    pub auto_pad: AutoPad,
    pub count_include_pad: bool,
    pub ceil_mode: bool,
}

/// The closed set of operations subq understands. Constant-valued inputs that only configure an
/// op (Clip bounds, Pad amounts, Reshape target) are folded into the variant at import.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// inputs: X, W, [B]
    Conv(Conv2d),
    /// inputs: X, scale, bias, mean, var
    BatchNorm { epsilon: f32 },
    Relu,
    Clip { min: f32, max: f32 },
    Add,
    Mul,
    /// Element-wise minimum of two tensors (broadcasting). Per-channel ReLU6 bounds after
    /// cross-layer equalization are `Min(Relu(x), bound[1,C,1,1])`.
    Min,
    Sigmoid,
    HardSigmoid { alpha: f32, beta: f32 },
    HardSwish,
    GlobalAveragePool,
    AveragePool(Pool2d),
    MaxPool(Pool2d),
    /// Constant-mode padding. `pads` = [x1_begin, x2_begin, …, x1_end, x2_end, …] as in ONNX.
    Pad { pads: Vec<i64>, value: f32 },
    Flatten { axis: i64 },
    Reshape { shape: Vec<i64> },
    /// inputs: A, B, [C]
    Gemm { alpha: f32, beta: f32, trans_a: bool, trans_b: bool },
    MatMul,
    Concat { axis: i64 },
    Softmax { axis: i64 },
    Identity,
    /// inputs: x, y_scale, [y_zero_point]; per-axis when the scale has more than one element.
    QuantizeLinear { axis: i64 },
    /// inputs: x, x_scale, [x_zero_point]
    DequantizeLinear { axis: i64 },
}

impl Op {
    /// The ONNX op type this variant came from / is exported as.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv(_) => "Conv",
            Op::BatchNorm { .. } => "BatchNormalization",
            Op::Relu => "Relu",
            Op::Clip { .. } => "Clip",
            Op::Add => "Add",
            Op::Mul => "Mul",
            Op::Min => "Min",
            Op::Sigmoid => "Sigmoid",
            Op::HardSigmoid { .. } => "HardSigmoid",
            Op::HardSwish => "HardSwish",
            Op::GlobalAveragePool => "GlobalAveragePool",
            Op::AveragePool(_) => "AveragePool",
            Op::MaxPool(_) => "MaxPool",
            Op::Pad { .. } => "Pad",
            Op::Flatten { .. } => "Flatten",
            Op::Reshape { .. } => "Reshape",
            Op::Gemm { .. } => "Gemm",
            Op::MatMul => "MatMul",
            Op::Concat { .. } => "Concat",
            Op::Softmax { .. } => "Softmax",
            Op::Identity => "Identity",
            Op::QuantizeLinear { .. } => "QuantizeLinear",
            Op::DequantizeLinear { .. } => "DequantizeLinear",
        }
    }

    /// (min, max) number of inputs, counting optional ones.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Op::Conv(_) => (2, 3),
            Op::BatchNorm { .. } => (5, 5),
            Op::Add | Op::Mul | Op::Min | Op::MatMul => (2, 2),
            Op::Gemm { .. } => (2, 3),
            Op::QuantizeLinear { .. } | Op::DequantizeLinear { .. } => (2, 3),
            Op::Concat { .. } => (1, usize::MAX),
            _ => (1, 1),
        }
    }

    /// True for element-wise ops applied to a single tensor.
    pub fn is_unary_elementwise(&self) -> bool {
        matches!(
            self,
            Op::Relu | Op::Clip { .. } | Op::Sigmoid | Op::HardSigmoid { .. } | Op::HardSwish | Op::Identity
        )
    }
}
