//! Measuring models: accuracy and fidelity on image folders, latency, and per-layer inspection.

pub mod accuracy;
pub mod inspect;
pub mod model;
pub mod schemes;

pub use accuracy::{evaluate, evaluate_tensors, median_latency_ms, EvalOptions, EvalReport};
pub use model::{engine_for, image_input_shape, RunModel};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Calib(#[from] subq_calib::CalibError),
    #[error(transparent)]
    Runtime(#[from] subq_runtime::RuntimeError),
    #[error(transparent)]
    Quant(#[from] subq_quant::QuantError),
    #[error("{0}")]
    Model(String),
    #[error("{path}: {reason}")]
    Image { path: String, reason: String },
}
