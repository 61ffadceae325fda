//! Error type for the calibration data crate. Every variant names the file or
//! directory involved so a user can find the offending input.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot decode image {path}: {reason}")]
    Image { path: PathBuf, reason: String },

    #[error("no images (.jpg, .jpeg, .png) found in {dir}")]
    NoImages { dir: PathBuf },

    #[error("{dir} is not a directory")]
    NotADirectory { dir: PathBuf },

    #[error("{}", unknown_label_msg(path, wnid))]
    UnknownLabel { path: PathBuf, wnid: Option<String> },

    #[error("bad synsets file {path}, line {line}: {reason}")]
    BadSynsets {
        path: PathBuf,
        /// 1-based, as shown by editors.
        line: usize,
        reason: String,
    },

    /// Preprocessing parameters or output size that cannot be applied.
    #[error("invalid preprocessing: {reason}")]
    InvalidConfig { reason: String },

    #[error("unknown preprocessing preset '{name}' (known presets: {})", crate::preprocess::Preprocess::PRESETS.join(", "))]
    UnknownPreset { name: String },
}

fn unknown_label_msg(path: &std::path::Path, wnid: &Option<String>) -> String {
    match wnid {
        Some(w) => format!(
            "cannot label image {}: WordNet id '{w}' is not in the synsets file",
            path.display()
        ),
        None => format!(
            "cannot label image {}: no WordNet id (expected a file name like \
             'n01440764_*.JPEG' or a parent folder named like 'n01440764')",
            path.display()
        ),
    }
}
