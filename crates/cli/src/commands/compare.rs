//! `subq compare`: the scheme table (FP32, per-channel, per-tensor, per-tensor + CLE + bias
//! correction, subtensor, data-free subtensor) for one model.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use subq_calib::{label_of, list_images, Synsets};
use subq_eval::image_input_shape;
use subq_eval::schemes::{markdown, markdown_row, run_schemes, scheme_configs, EvalSet, SchemeRow};
use subq_quant::calibrate::load_inputs;
use subq_quant::CalibOptions;

use crate::common::{load_float_graph, write_json, PreprocessArgs, Text};

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// FP32 ONNX model.
    #[arg(long)]
    pub model: PathBuf,
    /// Calibration images.
    #[arg(long)]
    pub calib: PathBuf,
    /// Evaluation images (never the calibration ones).
    #[arg(long)]
    pub images: PathBuf,
    /// Synsets file for top-1/top-5; without it only agreement and SQNR are reported.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    #[arg(long)]
    pub calib_limit: Option<usize>,
    /// Evaluate on the first N images only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Timed single-image runs per row (1 thread, median).
    #[arg(long, default_value_t = 30)]
    pub latency_runs: usize,
    /// Write the table as JSON ("-" for stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write the Markdown table to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Every quantized row puts the model outputs (logits) on a uint8 grid too (as `subq
    /// quantize --quantize-outputs`); by default they stay the dequantized int32 accumulator.
    #[arg(long)]
    pub quantize_outputs: bool,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

/// Calibration and evaluation images decoded once, with labels: what `compare` and `report` share.
pub struct LoadedImages {
    pub calib: Vec<subq_tensor::Tensor>,
    pub eval: Vec<subq_tensor::Tensor>,
    pub labels: Vec<Option<usize>>,
}

/// List, truncate and decode the calibration folder and (when given) the evaluation folder,
/// resolving labels up front so that an unknown label fails before any inference.
pub fn load_images(g: &subq_ir::Graph, preprocess: &subq_calib::Preprocess, calib: &std::path::Path, calib_limit: Option<usize>, images: Option<&std::path::Path>, limit: Option<usize>, labels: Option<&std::path::Path>) -> Result<LoadedImages> {
    let mut calib_items = list_images(calib).context("reading the calibration folder")?;
    if let Some(l) = calib_limit {
        calib_items.truncate(l.max(1));
    }
    let mut eval_items = match images {
        Some(dir) => list_images(dir).context("reading the evaluation folder")?,
        None => Vec::new(),
    };
    if let Some(l) = limit {
        eval_items.truncate(l.max(1));
    }
    let synsets = labels.map(Synsets::load).transpose()?;
    let labels: Vec<Option<usize>> = match &synsets {
        Some(s) => eval_items.iter().map(|it| label_of(it, s).map(Some)).collect::<Result<_, _>>()?,
        None => vec![None; eval_items.len()],
    };
    // Both folders are decoded once and reused by every row (the observer is not used to load).
    let opts = CalibOptions { observer: subq_calib::observer::ObserverKind::MinMax, preprocess: preprocess.clone(), skip_unreadable: false, progress: true };
    let (calib, _) = load_inputs(g, &calib_items, &opts).context("loading calibration images")?;
    let eval = if eval_items.is_empty() { Vec::new() } else { load_inputs(g, &eval_items, &opts).context("loading evaluation images")?.0 };
    Ok(LoadedImages { calib, eval, labels })
}

pub fn run(a: CompareArgs) -> Result<()> {
    let g = load_float_graph(&a.model)?;
    let (_, h, w) = image_input_shape(&g)?;
    let preprocess = a.preprocess.resolve(&g)?;
    let imgs = load_images(&g, &preprocess, &a.calib, a.calib_limit, Some(&a.images), a.limit, a.labels.as_deref())?;
    let eval = EvalSet { inputs: &imgs.eval, labels: &imgs.labels, latency_runs: a.latency_runs };
    let mut configs = scheme_configs();
    for c in configs.iter_mut().filter_map(|(_, c)| c.as_mut()) {
        c.quantize_outputs = a.quantize_outputs;
    }
    let results = run_schemes(&g, &imgs.calib, Some(&eval), configs, crate::commands::quantize::input_range(&preprocess), true, |r| {
        if let Some(row) = &r.row {
            eprintln!("{}", markdown_row(row));
        }
    })?;
    let table: Vec<SchemeRow> = results.into_iter().filter_map(|r| r.row).collect();
    let md = markdown(&table);
    let out = Text::new(a.json.as_deref());
    out.line(format_args!("{} — {} eval images, {} calibration images, {}×{}\n", a.model.display(), imgs.eval.len(), imgs.calib.len(), h, w));
    out.line(md.trim_end());
    if let Some(p) = &a.markdown {
        subq_onnx::write_atomically(p, md.as_bytes())?;
    }
    if let Some(p) = &a.json {
        write_json(p, &table)?;
    }
    Ok(())
}
