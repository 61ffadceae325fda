use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use subq_calib::observer::ObserverKind;
use subq_calib::list_images;
use subq_quant::{calibrate, make_plan, build_qdq_graph, CalibOptions, WeightScheme};

use crate::common::{load_graph, PreprocessArgs, PREPROCESS_KEY};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SchemeArg {
    /// Asymmetric uint8 weights, one scale/zero-point per tensor.
    PerTensor,
    /// Symmetric int8 weights, one scale per tensor.
    PerTensorSymmetric,
    /// Symmetric int8 weights, one scale per output channel (TFLite/ONNX Runtime baseline).
    PerChannel,
}

impl From<SchemeArg> for WeightScheme {
    fn from(s: SchemeArg) -> WeightScheme {
        match s {
            SchemeArg::PerTensor => WeightScheme::PerTensor,
            SchemeArg::PerTensorSymmetric => WeightScheme::PerTensorSymmetric,
            SchemeArg::PerChannel => WeightScheme::PerChannel,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ObserverArg {
    /// Full observed range.
    Minmax,
    /// Drop --percentile-tail of the mass at each end.
    Percentile,
    /// Range minimizing the expected squared quantization error (histogram search).
    Mse,
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// FP32 ONNX model.
    #[arg(long)]
    pub model: PathBuf,
    /// Folder of calibration images (never the evaluation images).
    #[arg(long)]
    pub calib: PathBuf,
    /// Use only the first N calibration images (sorted by path).
    #[arg(long)]
    pub calib_limit: Option<usize>,
    /// Weight quantization scheme. Activations are always per-tensor asymmetric uint8.
    #[arg(long, value_enum, default_value = "per-channel")]
    pub scheme: SchemeArg,
    /// How activation ranges are chosen from the calibration data.
    #[arg(long, value_enum, default_value = "minmax")]
    pub activation_observer: ObserverArg,
    /// With --activation-observer percentile: fraction dropped at each end.
    #[arg(long, default_value_t = 1e-4)]
    pub percentile_tail: f64,
    /// Where to write the QDQ ONNX model (written atomically).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Skip calibration images that cannot be decoded instead of stopping.
    #[arg(long)]
    pub skip_unreadable: bool,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let started = Instant::now();
    let mut g = load_graph(&a.model)?;
    if g.is_quantized() {
        bail!("{} is already quantized (it has QuantizeLinear/DequantizeLinear nodes); give subq the FP32 model", a.model.display());
    }
    let preprocess = a.preprocess.resolve(&g)?;
    subq_eval::image_input_shape(&g)?;
    let prep = subq_transforms::prepare_for_quantization(&mut g).context("preparing the graph")?;
    let mut items = list_images(&a.calib).context("reading the calibration folder")?;
    if let Some(l) = a.calib_limit {
        items.truncate(l);
    }
    let observer = match a.activation_observer {
        ObserverArg::Minmax => ObserverKind::MinMax,
        ObserverArg::Percentile => ObserverKind::Percentile(a.percentile_tail),
        ObserverArg::Mse => ObserverKind::Mse,
    };
    let opts = CalibOptions { observer, preprocess: preprocess.clone(), skip_unreadable: a.skip_unreadable, progress: true };
    let calib = calibrate(&g, &items, &opts).context("calibrating")?;
    for s in &calib.skipped {
        eprintln!("warning: skipped unreadable calibration image {s}");
    }
    let scheme: WeightScheme = a.scheme.into();
    let plan = make_plan(&g, &calib, scheme)?;
    let mut q = build_qdq_graph(&g, &plan)?;
    q.metadata.insert(PREPROCESS_KEY.into(), serde_json::to_string(&preprocess)?);
    q.metadata.insert("subq.scheme".into(), scheme.name().into());
    q.metadata.insert("subq.activation_observer".into(), format!("{observer:?}"));
    q.metadata.insert("subq.calibration_images".into(), calib.images.to_string());
    subq_onnx::save_model(&q, &a.output)?;
    let size = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({:.1} kB): {} weights, {:?} activation ranges from {} images; {} BN and {} Pad folded; {} activations fused; {:.1} s",
        a.output.display(),
        size as f64 / 1e3,
        scheme.name(),
        observer,
        calib.images,
        prep.batch_norms_folded,
        prep.pads_folded,
        plan.fused_activations.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
