//! Quantization: calibration ([`calibrate`]), the [`QuantPlan`] that says which tensor gets which
//! parameters ([`plan`]), and the QDQ graph built from it ([`qdq`]). The QDQ graph is what both
//! the ONNX exporter writes and the int8 engine lowers, so the two cannot disagree.

pub mod calibrate;
pub mod plan;
pub mod qdq;

pub use calibrate::{calibrate, calibrate_tensors, CalibOptions, Calibration, ChannelMoments};
pub use plan::{make_plan, QuantPlan, WeightPart, WeightScheme};
pub use qdq::build_qdq_graph;

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error(transparent)]
    Calib(#[from] subq_calib::CalibError),
    #[error(transparent)]
    Runtime(#[from] subq_runtime::RuntimeError),
    #[error(transparent)]
    Ir(#[from] subq_ir::IrError),
    #[error("{0}")]
    Invalid(String),
}
