//! Measuring models: accuracy and fidelity on image folders, latency, per-layer inspection, the
//! scheme table (`schemes`), per-layer ranges and SQNR (`layers`), layer sensitivity
//! (`sensitivity`) and the HTML report (`report`).

pub mod accuracy;
pub mod inspect;
pub mod layers;
pub mod model;
pub mod report;
pub mod schemes;
pub mod sensitivity;

pub use accuracy::{evaluate, evaluate_tensors, median_latency_ms, npy_bytes, EvalOptions, EvalReport, KeptTensors};
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
