//! Executors: [`Fp32Executor`] runs any IR graph in floating point (QDQ nodes included, with
//! their written semantics); the int8 executor runs quantized graphs with integer kernels.

mod fp32;
mod int8;

pub use fp32::{eval_node, qdq_params, Fp32Executor};
pub use int8::Int8Engine;

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
