//! `subq compare`: the scheme table (FP32, per-channel, per-tensor, per-tensor + CLE + bias
//! correction, subtensor, data-free subtensor) for one model.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use subq_calib::{label_of, list_images, Synsets};
use subq_eval::{engine_for, evaluate_tensors, image_input_shape, median_latency_ms};
use subq_quant::calibrate::load_inputs;
use subq_quant::{quantize, CalibOptions, QuantConfig, Scheme};

use crate::common::{load_float_graph, pct, write_json, PreprocessArgs};

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
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub scheme: String,
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    pub agreement: f64,
    pub sqnr_db: f64,
    pub latency_ms: f64,
    pub size_kb: f64,
    pub quantize_s: f64,
    pub split_layers: usize,
    pub engine: String,
}

pub fn rows() -> Vec<(&'static str, Option<QuantConfig>)> {
    let mut cle_bc = QuantConfig::new(Scheme::PerTensor);
    cle_bc.cle = true;
    cle_bc.bias_correction = true;
    let mut data_free = QuantConfig::new(Scheme::Subtensor);
    data_free.data_free = true;
    vec![
        ("FP32", None),
        ("per-channel", Some(QuantConfig::new(Scheme::PerChannel))),
        ("per-tensor", Some(QuantConfig::new(Scheme::PerTensor))),
        ("per-tensor + CLE + bias corr.", Some(cle_bc)),
        ("subtensor", Some(QuantConfig::new(Scheme::Subtensor))),
        ("data-free subtensor", Some(data_free)),
    ]
}

pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from("| scheme | top-1 | top-5 | agreement | logits SQNR | latency (ms) | size (kB) | quantize (s) | split layers |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let sqnr = if r.sqnr_db.is_finite() { format!("{:.2} dB", r.sqnr_db) } else { "—".into() };
        s += &format!("| {} | {} | {} | {:.2}% | {} | {:.2} | {:.1} | {:.1} | {} |\n", r.scheme, pct(r.top1), pct(r.top5), 100.0 * r.agreement, sqnr, r.latency_ms, r.size_kb, r.quantize_s, r.split_layers);
    }
    s
}

pub fn run(a: CompareArgs) -> Result<()> {
    let g = load_float_graph(&a.model)?;
    let (_, h, w) = image_input_shape(&g)?;
    let preprocess = a.preprocess.resolve(&g)?;
    let mut calib_items = list_images(&a.calib).context("reading the calibration folder")?;
    if let Some(l) = a.calib_limit {
        calib_items.truncate(l);
    }
    let mut eval_items = list_images(&a.images).context("reading the evaluation folder")?;
    if let Some(l) = a.limit {
        eval_items.truncate(l);
    }
    let synsets = a.labels.as_ref().map(|p| Synsets::load(p)).transpose()?;
    let labels: Vec<Option<usize>> = match &synsets {
        Some(s) => eval_items.iter().map(|it| label_of(it, s).map(Some)).collect::<Result<_, _>>()?,
        None => vec![None; eval_items.len()],
    };
    // Both folders are decoded once and reused by every row (the observer is not used to load).
    let opts = CalibOptions { observer: subq_calib::observer::ObserverKind::MinMax, preprocess: preprocess.clone(), skip_unreadable: false, progress: true };
    let (calib_inputs, _) = load_inputs(&g, &calib_items, &opts)?;
    let (eval_inputs, _) = load_inputs(&g, &eval_items, &opts)?;
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let mut reference: Option<Vec<Vec<f32>>> = None;
    let mut table = Vec::new();
    for (label, cfg) in rows() {
        eprintln!("== {label}");
        let (graph, summary) = match &cfg {
            None => (g.clone(), None),
            Some(c) => {
                let mut c = c.clone();
                c.input_range = Some(crate::commands::quantize::input_range(&preprocess));
                let c = &c;
                let inputs: &[subq_tensor::Tensor] = if c.data_free { &[] } else { &calib_inputs };
                let (q, s) = quantize(&g, inputs, c, true).with_context(|| format!("quantizing {label}"))?;
                (q, Some(s))
            }
        };
        let engine = engine_for(&graph)?;
        let (report, logits) = evaluate_tensors(engine.as_ref(), &eval_inputs, &labels, reference.as_deref(), true)?;
        let latency = one_thread.install(|| median_latency_ms(engine.as_ref(), &eval_inputs[0], 3, a.latency_runs))?;
        let size = subq_onnx::export_model(&graph).len();
        table.push(Row {
            scheme: label.into(),
            top1: report.top1,
            top5: report.top5,
            agreement: report.agreement.unwrap_or(1.0),
            sqnr_db: report.sqnr_db.unwrap_or(f64::INFINITY),
            latency_ms: latency,
            size_kb: size as f64 / 1e3,
            quantize_s: summary.as_ref().map_or(0.0, |s| s.seconds),
            split_layers: summary.as_ref().map_or(0, |s| s.split_layers),
            engine: engine.describe(),
        });
        if reference.is_none() {
            reference = Some(logits);
        }
        eprintln!("{}", markdown(&table[table.len() - 1..]).lines().last().unwrap_or_default());
    }
    let md = markdown(&table);
    println!("{} — {} eval images, {} calibration images, {}×{}\n", a.model.display(), eval_inputs.len(), calib_inputs.len(), h, w);
    print!("{md}");
    if let Some(p) = &a.markdown {
        subq_onnx::write_atomically(p, md.as_bytes())?;
    }
    if let Some(p) = &a.json {
        write_json(p, &table)?;
    }
    Ok(())
}
