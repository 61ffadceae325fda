//! Function-preserving graph passes on FP32 graphs, one pass per file.

pub mod bn_fold;

pub use bn_fold::fold_batch_norms;

#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("pass {pass}: node '{node}': {reason}")]
    Node { pass: &'static str, node: String, reason: String },
    #[error(transparent)]
    Ir(#[from] subq_ir::IrError),
}
