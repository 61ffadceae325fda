//! `subq report`: the HTML page an engineer reads before choosing a scheme (see
//! `subq_eval::report`), written atomically to `OUT/index.html`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use subq_eval::report::{generate, render_html, ReportOptions};
use subq_eval::schemes::EvalSet;

use crate::commands::compare::load_images;
use crate::common::{load_float_graph, PreprocessArgs};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// FP32 ONNX model.
    #[arg(long)]
    pub model: PathBuf,
    /// Calibration images.
    #[arg(long)]
    pub calib: PathBuf,
    /// Use only the first N calibration images (sorted by path).
    #[arg(long)]
    pub calib_limit: Option<usize>,
    /// Evaluation images for the scheme table (never the calibration ones). Without them the
    /// table is left out; everything else is computed on calibration images.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Evaluate on the first N images only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Synsets file for top-1/top-5 in the scheme table.
    #[arg(long, requires = "images")]
    pub labels: Option<PathBuf>,
    /// Output folder; the page is written to OUT/index.html (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Calibration images (the first N) for per-layer activation SQNR and layer sensitivity.
    #[arg(long, default_value_t = 8)]
    pub analysis_images: usize,
    /// Timed single-image runs per scheme-table row (1 thread, median).
    #[arg(long, default_value_t = 10)]
    pub latency_runs: usize,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

/// Create the output folder and check a file can be written there, before minutes of work.
pub fn prepare_output_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the output folder {}", dir.display()))?;
    let probe = dir.join(".subq-write-check");
    subq_onnx::write_atomically(&probe, b"").with_context(|| format!("the output folder {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

pub fn run(a: ReportArgs) -> Result<()> {
    let g = load_float_graph(&a.model)?;
    subq_eval::image_input_shape(&g)?;
    let preprocess = a.preprocess.resolve(&g)?;
    // Images first (a bad folder fails in seconds and creates nothing), then the output folder
    // is checked before the minutes of work.
    let imgs = load_images(&g, &preprocess, &a.calib, a.calib_limit, a.images.as_deref(), a.limit, a.labels.as_deref())?;
    prepare_output_dir(&a.out)?;
    let eval = a.images.is_some().then(|| EvalSet { inputs: &imgs.eval, labels: &imgs.labels, latency_runs: a.latency_runs });
    let opts = ReportOptions { analysis_images: a.analysis_images, input_range: crate::commands::quantize::input_range(&preprocess), cle_strength: subq_quant::QuantConfig::new(subq_quant::Scheme::PerTensor).cle_strength, progress: true };
    let name = a.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| a.model.display().to_string());
    let report = generate(&name, &g, &imgs.calib, eval.as_ref(), &opts)?;
    let html = render_html(&report);
    let path = a.out.join("index.html");
    subq_onnx::write_atomically(&path, html.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {} ({:.0} kB) in {:.0} s", path.display(), html.len() as f64 / 1e3, report.seconds);
    Ok(())
}
