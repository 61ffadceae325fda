use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use subq_calib::{list_images, Synsets};
use subq_eval::{evaluate, image_input_shape, EvalOptions, EvalReport, RunModel};
use subq_runtime::Fp32Executor;

use crate::common::{db, load_graph, pct, write_json, PreprocessArgs, Text};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// ONNX model to evaluate (FP32, or QDQ: then the int8 engine runs it).
    #[arg(long)]
    pub model: PathBuf,
    /// Image folder: flat (n01440764_tench.JPEG) or ImageFolder (DIR/n01440764/*.JPEG).
    #[arg(long)]
    pub images: PathBuf,
    /// Synsets file (one "wnid name" per line, line number = class index). Without it only
    /// fidelity to --reference is measured.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// FP32 model to compare against: top-1 agreement and logits SQNR.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Evaluate only the first N images (sorted by path).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write the results as JSON to this file ("-" for stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Engine for a QDQ model: int8 (integer kernels, the default) or fp32 (the file's written
    /// semantics: dequantize → float op → quantize, as ONNX Runtime runs it with optimizations off).
    #[arg(long, value_parser = ["int8", "fp32"], default_value = "int8")]
    pub engine: String,
    /// Skip images that cannot be decoded (listed in the report) instead of stopping.
    #[arg(long)]
    pub skip_unreadable: bool,
    /// Save the preprocessed model inputs as float32 .npy [N, 3, H, W], in image order, so
    /// another runtime can be fed exactly the same tensors (`tools/ort_eval.py --inputs`).
    #[arg(long)]
    pub save_inputs: Option<PathBuf>,
    /// Save the model's logits as float32 .npy [N, classes], in image order.
    #[arg(long)]
    pub save_logits: Option<PathBuf>,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

pub fn print_report(r: &EvalReport, out: &Text) {
    out.line(format_args!("model:      {}", r.model));
    out.line(format_args!("images:     {}{}", r.n, if r.skipped.is_empty() { String::new() } else { format!(" ({} unreadable, skipped)", r.skipped.len()) }));
    let ci = |c: Option<(f64, f64)>| c.map(|(lo, hi)| format!(" (95% interval {:.1}–{:.1}%)", 100.0 * lo, 100.0 * hi)).unwrap_or_default();
    if r.top1.is_some() {
        out.line(format_args!("top-1:      {}{}", pct(r.top1), ci(r.top1_ci95)));
        out.line(format_args!("top-5:      {}", pct(r.top5)));
    }
    if r.agreement.is_some() {
        if r.reference_top1.is_some() {
            out.line(format_args!("ref top-1:  {}", pct(r.reference_top1)));
        }
        if let (Some(g), Some(l)) = (r.images_gained, r.images_lost) {
            let images = |n: usize| if n == 1 { "1 image".to_string() } else { format!("{n} images") };
            out.line(format_args!("vs ref:     {} right only here, {} right only in the reference", images(g), images(l)));
        }
        out.line(format_args!("agreement:  {} (top-1 equal to the reference){}", pct(r.agreement), ci(r.agreement_ci95)));
        out.line(format_args!("SQNR:       {} (logits vs reference)", db(r.sqnr_db)));
        if let (Some(free), Some(gain)) = (r.sqnr_offset_free_db, r.logits_gain) {
            out.line(format_args!("            {} without each image's common logit offset (it changes no ranking); logits gain {gain:.3}", db(Some(free))));
        }
    }
}

pub fn run(a: EvalArgs) -> Result<()> {
    let g = load_graph(&a.model)?;
    let (_, h, w) = image_input_shape(&g)?;
    let preprocess = a.preprocess.resolve(&g)?;
    let mut items = list_images(&a.images)?;
    if let Some(l) = a.limit {
        items.truncate(l);
    }
    let synsets = a.labels.as_ref().map(|p| Synsets::load(p)).transpose()?;
    let reference_graph = a.reference.as_ref().map(|p| load_graph(p)).transpose()?;
    let reference_exec = reference_graph.as_ref().map(Fp32Executor::new);
    let engine: Box<dyn RunModel> = if a.engine == "fp32" { Box::new(Fp32Executor::new(&g)) } else { subq_eval::engine_for(&g)? };
    let model: &dyn RunModel = engine.as_ref();
    let opts = EvalOptions {
        preprocess,
        height: h,
        width: w,
        synsets: synsets.as_ref(),
        reference: reference_exec.as_ref().map(|r| r as &dyn RunModel),
        skip_unreadable: a.skip_unreadable,
        progress: true,
        keep_tensors: a.save_inputs.is_some() || a.save_logits.is_some(),
    };
    let (report, kept) = evaluate(model, &items, &opts).with_context(|| format!("evaluating {}", a.model.display()))?;
    let out = Text::new(a.json.as_deref());
    print_report(&report, &out);
    if let Some(kept) = kept {
        let classes = kept.logits.first().map_or(0, Vec::len);
        for (path, rows, shape) in [(&a.save_inputs, &kept.inputs, vec![3, h, w]), (&a.save_logits, &kept.logits, vec![classes])] {
            if let Some(path) = path {
                let bytes = subq_eval::npy_bytes(rows, &shape).with_context(|| format!("encoding {}", path.display()))?;
                subq_onnx::write_atomically(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    if let Some(path) = &a.json {
        write_json(path, &report)?;
    }
    Ok(())
}
