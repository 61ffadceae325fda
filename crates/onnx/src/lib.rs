//! ONNX ⇄ subq IR: import of FP32 and QDQ models, export of QDQ models.

mod export;
mod import;
pub mod proto;

pub use export::{export_model, save_model, write_atomically};
pub use import::{import_model, load_model, ImportOptions};

use std::path::PathBuf;

/// Opsets of the default domain that subq reads.
pub const MIN_OPSET: i64 = 11;
pub const MAX_OPSET: i64 = 18;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid ONNX protobuf (corrupt or truncated file?): {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("{path}: model has no graph")]
    NoGraph { path: PathBuf },
    #[error("{path}: default-domain opset {opset} is not supported (subq reads opsets {MIN_OPSET}–{MAX_OPSET})")]
    Opset { path: PathBuf, opset: i64 },
    #[error("{path}: node '{node}': unsupported op {domain}{op_type} (opset {opset})")]
    UnsupportedOp { path: PathBuf, node: String, op_type: String, domain: String, opset: i64 },
    #[error("{path}: node '{node}' ({op_type}, opset {opset}): {reason}")]
    Node { path: PathBuf, node: String, op_type: String, opset: i64, reason: String },
    #[error("{path}: tensor '{name}': {reason}")]
    Tensor { path: PathBuf, name: String, reason: String },
    #[error("{path}: input '{name}': {reason}")]
    Input { path: PathBuf, name: String, reason: String },
    #[error("{path}: {source}")]
    Ir { path: PathBuf, source: subq_ir::IrError },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}
