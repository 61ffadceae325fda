//! Pieces shared by several subcommands: model loading, preprocessing flags, JSON output.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use subq_calib::{ChannelOrder, Preprocess, ResizeMode};
use subq_ir::Graph;

/// Metadata key under which `quantize` stores the preprocessing used for calibration.
pub const PREPROCESS_KEY: &str = "subq.preprocess";

pub fn load_graph(path: &Path) -> Result<Graph> {
    // The importer's errors already name the file.
    Ok(subq_onnx::load_model(path, &subq_onnx::ImportOptions::default())?)
}

/// The FP32 graph to quantize. A QDQ model (say, ONNX Runtime's) is turned back into float first
/// (weights dequantized, activation grids dropped, fused ReLU clamps kept) and the user is told:
/// refusing would leave someone who only has the QDQ file stuck.
pub fn load_float_graph(path: &Path) -> Result<Graph> {
    let mut g = load_graph(path)?;
    if g.is_quantized() {
        subq_transforms::dequantize_qdq(&mut g).with_context(|| format!("{}: turning the QDQ model back into float", path.display()))?;
        eprintln!(
            "note: {} is already quantized (QDQ); its weights were dequantized to float and its activation grids dropped, \
             and that float model is quantized again (and is the reference for agreement/SQNR). Start from the FP32 model if you have it.",
            path.display()
        );
    }
    Ok(g)
}

/// Folder with the bundled models and images. Set at build time; `SUBQ_ASSETS` overrides it.
pub fn assets_dir() -> PathBuf {
    std::env::var_os("SUBQ_ASSETS").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets"))
}

#[derive(Args, Clone, Debug, Default)]
pub struct PreprocessArgs {
    /// Preprocessing preset: efficientnet-lite, keras-mobilenet or torchvision. Default: the one
    /// stored in the model by `subq quantize`, else required.
    #[arg(long)]
    pub preset: Option<String>,
    /// crop: resize the shorter side then centre-crop; stretch: resize to the input size.
    #[arg(long, value_parser = ["crop", "stretch"])]
    pub resize_mode: Option<String>,
    /// With --resize-mode crop: fraction of the resized image kept (0.875 → resize to size/0.875).
    #[arg(long)]
    pub crop_ratio: Option<f32>,
    /// Per-channel mean in 0..255 pixel units, e.g. 127.5,127.5,127.5.
    #[arg(long, value_delimiter = ',', num_args = 3)]
    pub mean: Option<Vec<f32>>,
    /// Per-channel std in 0..255 pixel units: input = (pixel − mean) / std.
    #[arg(long, value_delimiter = ',', num_args = 3)]
    pub std: Option<Vec<f32>>,
    /// Channel order of the model input.
    #[arg(long, value_parser = ["rgb", "bgr"])]
    pub channel_order: Option<String>,
}

impl PreprocessArgs {
    /// The preset (or the model's stored preprocessing) with explicit flags applied on top.
    pub fn resolve(&self, g: &Graph) -> Result<Preprocess> {
        let mut p = match (&self.preset, g.metadata.get(PREPROCESS_KEY)) {
            (Some(name), _) => Preprocess::preset(name).with_context(|| format!("known presets: {}", Preprocess::PRESETS.join(", ")))?,
            (None, Some(json)) => serde_json::from_str(json).context("the model's stored preprocessing metadata is invalid")?,
            (None, None) => bail!("no preprocessing known for this model: pass --preset ({}) or explicit --resize-mode/--mean/--std", Preprocess::PRESETS.join(", ")),
        };
        if let Some(m) = &self.resize_mode {
            p.resize_mode = if m == "crop" { ResizeMode::Crop } else { ResizeMode::Stretch };
        }
        if let Some(r) = self.crop_ratio {
            if !(r > 0.0 && r <= 1.0) {
                bail!("--crop-ratio must be in (0, 1], got {r}");
            }
            p.crop_ratio = r;
        }
        if let Some(m) = &self.mean {
            p.mean = [m[0], m[1], m[2]];
        }
        if let Some(s) = &self.std {
            if s.contains(&0.0) {
                bail!("--std values must be non-zero");
            }
            p.std = [s[0], s[1], s[2]];
        }
        if let Some(c) = &self.channel_order {
            p.channel_order = if c == "bgr" { ChannelOrder::Bgr } else { ChannelOrder::Rgb };
        }
        Ok(p)
    }
}

/// Where a command's human-readable text goes: stdout, or stderr when `--json -` puts the JSON on
/// stdout (a script parsing it must find nothing else there).
pub struct Text {
    to_stderr: bool,
}

impl Text {
    pub fn new(json: Option<&Path>) -> Text {
        Text { to_stderr: json == Some(Path::new("-")) }
    }

    pub fn line(&self, text: impl std::fmt::Display) {
        if self.to_stderr {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    }
}

/// Write JSON to a file atomically ("-" = stdout).
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    if path == Path::new("-") {
        print!("{text}");
        return Ok(());
    }
    subq_onnx::write_atomically(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

pub use subq_eval::schemes::pct;

pub fn db(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.2} dB")).unwrap_or_else(|| "—".into())
}

/// The error and its causes as "outer: inner: …" (like `{:#}`), skipping a cause that the message
/// before it already ends with: errors that print their source inline ("cannot read X: <io error>")
/// would otherwise show it twice.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !out.is_empty() && out.ends_with(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}
