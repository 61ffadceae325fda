//! `subq sensitivity`: rank layers by the logits SQNR of quantizing each one alone (see
//! `subq_eval::sensitivity`). The same table is section 5 of `subq report`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use subq_eval::sensitivity::layer_sensitivity;

use crate::commands::compare::load_images;
use crate::common::{load_float_graph, write_json, PreprocessArgs, Text};

#[derive(Args, Debug)]
pub struct SensitivityArgs {
    /// FP32 ONNX model.
    #[arg(long)]
    pub model: PathBuf,
    /// Calibration images (activation ranges and the SQNR are measured on them).
    #[arg(long)]
    pub calib: PathBuf,
    /// Use only the first N calibration images (sorted by path).
    #[arg(long, default_value_t = 16)]
    pub calib_limit: usize,
    /// Write the ranking as JSON ("-" for stdout, then no table is printed).
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

pub fn run(a: SensitivityArgs) -> Result<()> {
    let g = load_float_graph(&a.model)?;
    subq_eval::image_input_shape(&g)?;
    let preprocess = a.preprocess.resolve(&g)?;
    let imgs = load_images(&g, &preprocess, &a.calib, Some(a.calib_limit), None, None, None)?;
    let ranking = layer_sensitivity(&g, &imgs.calib, true)?;
    let out = Text::new(a.json.as_deref());
    out.line(format_args!("{} — layer sensitivity on {} calibration images (one layer quantized per-tensor at a time, worst first)", a.model.display(), imgs.calib.len()));
    out.line(format_args!("{:>4} {:<48} {:<18} {:>11} {:>11} {:>10} {:>10}", "rank", "layer", "kind", "logits SQNR", "weight SQNR", "max/median", "max/min"));
    for l in &ranking {
        let name: String = l.node.chars().take(48).collect();
        let fmt = |x: Option<f32>| x.map(subq_eval::layers::format_spread).unwrap_or_default();
        out.line(format_args!("{:>4} {:<48} {:<18} {:>8.2} dB {:>8.2} dB {:>10} {:>10}", l.rank, name, l.kind, l.logits_sqnr_db, l.weight_sqnr_db, fmt(l.channel_outlier_ratio), fmt(l.channel_range_spread)));
    }
    if let Some(p) = &a.json {
        write_json(p, &ranking)?;
    }
    Ok(())
}
