use subq_ir::Graph;
use subq_tensor::Tensor;

use crate::EvalError;

/// Anything that maps one preprocessed image batch to logits: the FP32 executor, the int8
/// engine, or a reference model.
pub trait RunModel: Sync {
    fn run(&self, input: Tensor) -> Result<Tensor, EvalError>;
    /// Short description for reports ("fp32", "int8 engine (3 ops in fp32: …)").
    fn describe(&self) -> String;
}

impl RunModel for subq_runtime::Fp32Executor<'_> {
    fn run(&self, input: Tensor) -> Result<Tensor, EvalError> {
        Ok(subq_runtime::Fp32Executor::run(self, vec![input])?.remove(0))
    }
    fn describe(&self) -> String {
        if self.graph().is_quantized() { "fp32 executor (QDQ as written)".into() } else { "fp32".into() }
    }
}

impl RunModel for subq_runtime::Int8Engine {
    fn run(&self, input: Tensor) -> Result<Tensor, EvalError> {
        Ok(subq_runtime::Int8Engine::run(self, input)?.remove(0))
    }
    fn describe(&self) -> String {
        match self.float_ops().len() {
            0 => "int8 engine (all ops integer)".into(),
            n => format!("int8 engine ({n} ops in fp32: {})", self.float_ops().join(", ")),
        }
    }
}

/// The engine a graph runs on: the int8 engine for QDQ graphs, the FP32 executor otherwise.
pub fn engine_for(g: &Graph) -> Result<Box<dyn RunModel + '_>, EvalError> {
    if g.is_quantized() {
        Ok(Box::new(subq_runtime::Int8Engine::new(g)?))
    } else {
        Ok(Box::new(subq_runtime::Fp32Executor::new(g)))
    }
}

/// (channels, height, width) of the model's single image input, or a clear error when the model
/// does not take one N×3×H×W float image.
pub fn image_input_shape(g: &Graph) -> Result<(usize, usize, usize), EvalError> {
    if g.inputs.len() != 1 {
        return Err(EvalError::Model(format!("model has {} inputs; subq evaluates models with exactly one image input", g.inputs.len())));
    }
    let name = &g.inputs[0];
    let shape = g.shape(name).unwrap_or(&[]);
    let dtype = g.dtypes.get(name).copied();
    match shape {
        [_, 3, h, w] if dtype == Some(subq_tensor::DType::F32) && *h > 1 && *w > 1 => Ok((3, *h, *w)),
        _ => Err(EvalError::Model(format!(
            "model input '{name}' is {} {:?}, not an image: subq expects a float N×3×H×W input",
            dtype.map(|d| d.to_string()).unwrap_or_default(),
            shape
        ))),
    }
}
