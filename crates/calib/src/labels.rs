//! Class labels as WordNet synsets, one per line: `wnid name words...`.
//! The 0-based line number is the class index the model outputs.

use std::collections::HashMap;
use std::path::Path;

use crate::error::CalibError;

#[derive(Clone, Debug)]
pub struct Synsets {
    wnids: Vec<String>,
    names: Vec<String>,
    index: HashMap<String, usize>,
}

impl Synsets {
    pub fn load(path: &Path) -> Result<Synsets, CalibError> {
        let text = std::fs::read_to_string(path).map_err(|source| CalibError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse synsets text; `path` is used only in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Synsets, CalibError> {
        let bad = |line: usize, reason: String| CalibError::BadSynsets {
            path: path.to_path_buf(),
            line: line + 1,
            reason,
        };
        let mut wnids = Vec::new();
        let mut names = Vec::new();
        let mut index = HashMap::new();
        // A trailing newline is normal; a blank line in the middle would shift
        // every later class index, so it is an error rather than skipped.
        let body = text.strip_suffix('\n').unwrap_or(text);
        if body.trim().is_empty() {
            return Err(bad(0, "file has no entries".into()));
        }
        for (i, line) in body.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let (wnid, name) = match line.trim().split_once(char::is_whitespace) {
                Some((w, n)) => (w, n.trim()),
                None => (line.trim(), ""),
            };
            if wnid.is_empty() {
                return Err(bad(
                    i,
                    "empty line (each line must be 'wnid name...')".into(),
                ));
            }
            if index.insert(wnid.to_string(), i).is_some() {
                return Err(bad(i, format!("duplicate WordNet id '{wnid}'")));
            }
            wnids.push(wnid.to_string());
            names.push(if name.is_empty() { wnid } else { name }.to_string());
        }
        Ok(Synsets {
            wnids,
            names,
            index,
        })
    }

    pub fn index_of(&self, wnid: &str) -> Option<usize> {
        self.index.get(wnid).copied()
    }

    /// Human-readable class name. Panics if `idx >= len()` (like slice indexing).
    pub fn name(&self, idx: usize) -> &str {
        &self.names[idx]
    }

    /// WordNet id of class `idx`. Panics if `idx >= len()` (like slice indexing).
    pub fn wnid(&self, idx: usize) -> &str {
        &self.wnids[idx]
    }

    pub fn len(&self) -> usize {
        self.wnids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.wnids.is_empty()
    }
}
