//! Listing labelled images from a folder.

use std::path::{Path, PathBuf};

use crate::error::CalibError;
use crate::labels::Synsets;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageItem {
    pub path: PathBuf,
    /// WordNet id (`n` + 8 digits) taken from the parent folder or file name.
    pub wnid: Option<String>,
}

/// List images under `dir`, sorted by path, in either layout:
///
/// * flat: `DIR/n01440764_tench.JPEG` — wnid is the file-name prefix before
///   the first `_`, if it looks like a WordNet id (`n` + 8 digits);
/// * ImageFolder: `DIR/<wnid>/*.JPEG` — wnid is the parent folder name if it
///   looks like a WordNet id, else the file-name prefix as above.
///
/// Only files with a `.jpg`, `.jpeg` or `.png` extension (any case) directly
/// in `dir` or in its immediate subfolders are listed; other files (README,
/// label files, hidden files...) are ignored. Files are not opened here, so an
/// unreadable image only surfaces as an error when it is decoded.
pub fn list_images(dir: &Path) -> Result<Vec<ImageItem>, CalibError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CalibError::Io { path, source }
    };
    let meta = std::fs::metadata(dir).map_err(io_err(dir))?;
    if !meta.is_dir() {
        return Err(CalibError::NotADirectory {
            dir: dir.to_path_buf(),
        });
    }

    let mut items = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.is_dir() {
            let folder_wnid = path
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| is_wnid(n))
                .map(str::to_string);
            for sub in std::fs::read_dir(&path).map_err(io_err(&path))? {
                let sub = sub.map_err(io_err(&path))?.path();
                if sub.is_file() && is_image_file(&sub) {
                    let wnid = folder_wnid.clone().or_else(|| wnid_from_file_name(&sub));
                    items.push(ImageItem { path: sub, wnid });
                }
            }
        } else if path.is_file() && is_image_file(&path) {
            let wnid = wnid_from_file_name(&path);
            items.push(ImageItem { path, wnid });
        }
    }
    if items.is_empty() {
        return Err(CalibError::NoImages {
            dir: dir.to_path_buf(),
        });
    }
    items.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(items)
}

/// Class index of `item` in `synsets`.
pub fn label_of(item: &ImageItem, synsets: &Synsets) -> Result<usize, CalibError> {
    item.wnid
        .as_deref()
        .and_then(|w| synsets.index_of(w))
        .ok_or_else(|| CalibError::UnknownLabel {
            path: item.path.clone(),
            wnid: item.wnid.clone(),
        })
}

/// `n` followed by exactly 8 ASCII digits.
pub fn is_wnid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 9 && b[0] == b'n' && b[1..].iter().all(u8::is_ascii_digit)
}

fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        .unwrap_or(false)
}

fn wnid_from_file_name(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    let prefix = stem.split('_').next()?;
    is_wnid(prefix).then(|| prefix.to_string())
}
