//! Quantization: calibration ([`calibrate`]), the [`QuantPlan`] that says which tensor gets which
//! parameters ([`plan`]), and the QDQ graph built from it ([`qdq`]). The QDQ graph is what both
//! the ONNX exporter writes and the int8 engine lowers, so the two cannot disagree.

pub mod bias_correction;
pub mod calibrate;
pub mod data_free;
pub mod gptq;
pub mod pipeline;
pub mod plan;
pub mod qdq;
pub mod split;
pub mod subtensor;
pub mod weight_correction;

pub use calibrate::{calibrate, calibrate_tensors, CalibOptions, Calibration, ChannelMoments};
pub use plan::{keep_outputs_float, make_plan, QuantPlan, WeightPart, WeightScheme};
pub use qdq::{build_qdq_graph, build_qdq_graph_with_map};

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
pub use subtensor::{make_subtensor_plan, LayerDecision, SubtensorOptions, SubtensorPlan};
pub use pipeline::{quantize, QuantConfig, QuantSummary, Scheme};
