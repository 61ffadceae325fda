use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use subq_calib::list_images;
use subq_calib::observer::ObserverKind;
use subq_quant::calibrate::load_inputs;
use subq_quant::split::SplitKind;
use subq_quant::{quantize, CalibOptions, QuantConfig, QuantSummary, Scheme};

use crate::common::{load_float_graph, write_json, PreprocessArgs, Text, PREPROCESS_KEY};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SchemeArg {
    /// Asymmetric uint8 weights, one scale/zero-point per tensor.
    PerTensor,
    /// Symmetric int8 weights, one scale per tensor.
    PerTensorSymmetric,
    /// Symmetric int8 weights, one scale per output channel (TFLite/ONNX Runtime baseline).
    PerChannel,
    /// Per-tensor uint8 weights with subtensor splits, weight clipping and bias correction.
    Subtensor,
}

impl From<SchemeArg> for Scheme {
    fn from(s: SchemeArg) -> Scheme {
        match s {
            SchemeArg::PerTensor => Scheme::PerTensor,
            SchemeArg::PerTensorSymmetric => Scheme::PerTensorSymmetric,
            SchemeArg::PerChannel => Scheme::PerChannel,
            SchemeArg::Subtensor => Scheme::Subtensor,
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

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SplitArg {
    Outlier,
    ChannelGroup,
    Residual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BiasTargetArg {
    PreActivation,
    PostActivation,
}

#[derive(Args, Debug, Clone)]
pub struct QuantOptions {
    /// Weight quantization scheme. Activations are always per-tensor asymmetric uint8.
    #[arg(long, value_enum, default_value = "per-channel")]
    pub scheme: SchemeArg,
    /// How activation ranges are chosen (default: mse for subtensor, minmax otherwise).
    #[arg(long, value_enum)]
    pub activation_observer: Option<ObserverArg>,
    /// With --activation-observer percentile: fraction dropped at each end.
    #[arg(long, default_value_t = 1e-4)]
    pub percentile_tail: f64,
    /// Subtensor: do not split any layer.
    #[arg(long)]
    pub no_split: bool,
    /// Subtensor: split kinds to try per layer (default: all three, best one per layer).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub split_kinds: Option<Vec<SplitArg>>,
    /// Subtensor: no weight-clipping analysis.
    #[arg(long)]
    pub no_clip: bool,
    /// Turn empirical bias correction off (on by default for subtensor) …
    #[arg(long, conflicts_with = "bias_correction")]
    pub no_bias_correction: bool,
    /// … or on for the other schemes.
    #[arg(long)]
    pub bias_correction: bool,
    /// Calibration images that empirical bias correction averages over (the first N). On
    /// MobileNetV2, 100 instead of 32 gave +1.25 points agreement and +0.4 dB.
    #[arg(long, default_value_t = 100)]
    pub bias_correction_images: usize,
    /// What empirical bias correction matches to FP32, per channel: the layer's output before
    /// its fused Relu/ReLU6 (the usual rule), or after that clamp. `post-activation` keeps the
    /// clamped means right where quantization shrank a channel's spread: on the bundled models
    /// +0.5 dB logits SQNR and steady over --cle-strength, but EfficientNet-Lite0 agrees with
    /// FP32 on 2 fewer of 400 images. Empirical
    /// correction only: --data-free corrects analytically, before the activation.
    #[arg(long, value_enum, default_value_t = BiasTargetArg::PreActivation)]
    pub bias_correction_target: BiasTargetArg,

    /// Empirical weight correction (on by default for subtensor, with images): before each
    /// layer's bias correction, refit its weights by least squares so that, fed its quantized
    /// input, it reproduces the FP32 layer on the FP32 input; kept per output channel only where
    /// the fit on each half of the calibration images also helps on the other half. Grids and
    /// splits are unchanged, so size and latency are too. On the bundled models: EfficientNet-Lite0
    /// 22.0 → 24.4 dB logits SQNR, MobileNetV2 26.7 → 27.2 dB; quantizing takes about twice as long
    #[arg(long, conflicts_with = "no_weight_correction")]
    pub weight_correction: bool,
    /// No weight correction (bias correction alone)
    #[arg(long)]
    pub no_weight_correction: bool,
    /// Subtensor: extra bytes allowed over plain per-tensor, in % of the weight bytes: the split
    /// parts, and CLE's per-channel ReLU6 bounds when CLE is chosen automatically (it is kept only
    /// if both fit; --cle equalizes regardless). Node names are not counted.
    #[arg(long, default_value_t = 1.0)]
    pub size_budget: f64,
    /// Subtensor: extra latency allowed for splits, in % of the model's MACs (a split is charged
    /// its MACs plus 19 (depthwise) or 7 MAC equivalents per output value for the engine's
    /// multi-part output stage).
    #[arg(long, default_value_t = 5.0)]
    pub latency_budget: f64,
    /// Cross-layer equalization before calibration (ReLU6 bounds kept exact per channel).
    /// Default for subtensor: tried both ways, the one closer to FP32 on calibration images kept;
    /// with --data-free (no images to judge on) it is on.
    #[arg(long, conflicts_with = "no_cle")]
    pub cle: bool,
    /// No cross-layer equalization (subtensor otherwise decides automatically).
    #[arg(long)]
    pub no_cle: bool,
    /// High-bias absorption: channel offsets that ReLU passes unchanged move into the next
    /// layer's bias, shrinking activation ranges (off by default: it did not help the bundled
    /// models once CLE and splits are on; see BENCHMARKS.md).
    #[arg(long)]
    pub absorb_biases: bool,
    /// CLE strength: equalization scales raised to this power (1 = full).
    #[arg(long, default_value_t = 0.5)]
    pub cle_strength: f32,
    /// No calibration images: activation ranges and bias correction from BatchNormalization statistics.
    #[arg(long)]
    pub data_free: bool,
    /// Subtensor: rank candidate splits by their measured effect on the model output (slower).
    #[arg(long)]
    pub probe_splits: bool,
    /// Error-feedback (GPTQ) weight rounding: each weight's rounding error is compensated by the
    /// not yet rounded weights of its channel, weighted by the calibration inputs' second
    /// moments; the grids stay per-tensor.
    #[arg(long, conflicts_with = "no_gptq")]
    pub gptq: bool,
    /// No error-feedback rounding (plain round-to-nearest).
    #[arg(long)]
    pub no_gptq: bool,
    /// Put the model outputs (logits) on a uint8 grid as well, for targets whose last layer
    /// must emit 8 bits. By default a graph output computed by a Conv/Gemm stays float: the
    /// layer's int32 accumulator is dequantized, so near-equal top classes do not tie on a
    /// 256-level grid (EfficientNet-Lite0 subtensor: 98.0% → 98.5% agreement with FP32).
    #[arg(long)]
    pub quantize_outputs: bool,
}

impl QuantOptions {
    pub fn config(&self) -> QuantConfig {
        let mut c = QuantConfig::new(self.scheme.into());
        if let Some(o) = self.activation_observer {
            c.observer = match o {
                ObserverArg::Minmax => ObserverKind::MinMax,
                ObserverArg::Percentile => ObserverKind::Percentile(self.percentile_tail),
                ObserverArg::Mse => ObserverKind::Mse,
            };
        }
        if self.no_split {
            c.split = false;
        }
        if let Some(kinds) = &self.split_kinds {
            c.subtensor.kinds = kinds
                .iter()
                .map(|k| match k {
                    SplitArg::Outlier => SplitKind::Outlier,
                    SplitArg::ChannelGroup => SplitKind::ChannelGroup,
                    SplitArg::Residual => SplitKind::Residual,
                })
                .collect();
        }
        c.subtensor.clip_weights = !self.no_clip;
        if self.no_bias_correction {
            c.bias_correction = false;
        }
        if self.bias_correction {
            c.bias_correction = true;
        }
        c.bias_correction_images = self.bias_correction_images.max(1);
        c.bias_correction_post_activation = self.bias_correction_target == BiasTargetArg::PostActivation;
        if self.weight_correction || self.no_weight_correction {
            c.weight_correction = self.weight_correction;
        }
        if self.cle || self.no_cle {
            c.cle_auto = false;
            c.cle = self.cle;
        }
        c.absorb_biases = self.absorb_biases;
        c.cle_strength = self.cle_strength;
        c.data_free = self.data_free;
        c.probe_splits = self.probe_splits;
        if self.gptq || self.no_gptq {
            c.gptq = self.gptq;
        }
        c.quantize_outputs = self.quantize_outputs;
        c.subtensor.size_budget = self.size_budget / 100.0;
        c.subtensor.latency_budget = self.latency_budget / 100.0;
        c
    }
}

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// FP32 ONNX model.
    #[arg(long)]
    pub model: PathBuf,
    /// Folder of calibration images (never the evaluation images). Not needed with --data-free.
    #[arg(long, required_unless_present = "data_free")]
    pub calib: Option<PathBuf>,
    /// Use only the first N calibration images (sorted by path).
    #[arg(long)]
    pub calib_limit: Option<usize>,
    /// Where to write the QDQ ONNX model (written atomically).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Write the quantization summary (per-layer decisions) as JSON ("-" for stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Skip calibration images that cannot be decoded instead of stopping.
    #[arg(long)]
    pub skip_unreadable: bool,
    #[command(flatten)]
    pub quant: QuantOptions,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

/// Real range of the model input that the preprocessing can produce (pixels 0..255).
pub fn input_range(p: &subq_calib::Preprocess) -> (f32, f32) {
    let ends: Vec<f32> = (0..3).flat_map(|c| [(0.0 - p.mean[c]) / p.std[c], (255.0 - p.mean[c]) / p.std[c]]).collect();
    (ends.iter().cloned().fold(f32::INFINITY, f32::min), ends.iter().cloned().fold(f32::NEG_INFINITY, f32::max))
}

pub fn print_summary(s: &QuantSummary, out: &Text) {
    out.line(format_args!("scheme {} · activations {} from {} images · {} BN and {} Pad folded · {} activations fused · CLE {} · {} high biases absorbed", s.scheme, s.observer, s.calibration_images, s.batch_norms_folded, s.pads_folded, s.fused_activations, if s.cle { "on" } else { "off" }, s.biases_absorbed));
    if s.float_outputs > 0 {
        out.line(format_args!("{} model output(s) kept in float: the last layer's int32 accumulator is dequantized, not rounded to uint8 (--quantize-outputs to round it)", s.float_outputs));
    }
    if let Some((off, on)) = s.cle_choice_sqnr_db {
        let note = if s.cle_over_size_budget { "; not kept: with CLE its per-channel ReLU6 bounds and the splits would exceed --size-budget (raise it, or pass --cle, to equalize anyway)" } else { "" };
        out.line(format_args!("CLE chosen automatically: calibration logits SQNR {off:.2} dB without, {on:.2} dB with{note}"));
    }
    if s.gptq_layers > 0 {
        let mean = s.gptq_gain_db.iter().map(|(_, d)| d).sum::<f64>() / s.gptq_layers as f64;
        out.line(format_args!("error-feedback (GPTQ) rounding on {} layers: layer-output error {mean:.2} dB below round-to-nearest on average (calibration data)", s.gptq_layers));
    }
    if !s.weight_corrections.is_empty() {
        let changed: Vec<_> = s.weight_corrections.iter().filter(|(_, c)| c.channels_changed > 0).collect();
        let (channels, of) = s.weight_corrections.iter().fold((0, 0), |(a, b), (_, c)| (a + c.channels_changed, b + c.channels));
        let (before, after) = changed.iter().fold((0.0, 0.0), |(a, b), (_, c)| (a + c.error_before, b + c.error_after));
        let db = if after > 0.0 { 10.0 * (before / after).log10() } else { 0.0 };
        out.line(format_args!("weight correction on {} of {} layers ({channels} of {of} output channels passed the held-out check): their output error {db:.2} dB lower on the calibration images", changed.len(), s.weight_corrections.len()));
    }
    if !s.layers.is_empty() {
        out.line(format_args!(
            "subtensor: {} layers split (+{:.2}% weight bytes, +{:.2}% MACs); bias corrected on {} layers",
            s.split_layers,
            100.0 * s.extra_weight_bytes as f64 / s.weight_bytes.max(1) as f64,
            100.0 * s.extra_macs as f64 / s.total_macs.max(1) as f64,
            s.bias_corrected_layers
        ));
        out.line(format_args!("{:<40} {:<15} {:>9} {:>9} {:>6} {:>9} {:>10}", "layer", "kind", "per-tensor", "clipped", "clip", "final", "split"));
        for l in &s.layers {
            let name: String = l.node.chars().take(40).collect();
            out.line(format_args!("{:<40} {:<15} {:>7.1}dB {:>7.1}dB {:>6.2} {:>7.1}dB {:>10}", name, l.layer, l.sqnr_per_tensor_db, l.sqnr_clipped_db, l.clip, l.final_sqnr_db, l.split.map(|k| format!("{k:?}")).unwrap_or_default()));
        }
        out.line(format_args!("(dB: estimated layer-output SQNR of the weight quantization alone, from calibration statistics)"));
    }
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let g = load_float_graph(&a.model)?;
    let preprocess = a.preprocess.resolve(&g)?;
    subq_eval::image_input_shape(&g)?;
    let mut cfg = a.quant.config();
    cfg.input_range = Some(input_range(&preprocess));
    let inputs = match (&a.calib, cfg.data_free) {
        (Some(dir), false) => {
            let mut items = list_images(dir).context("reading the calibration folder")?;
            if let Some(l) = a.calib_limit {
                items.truncate(l);
            }
            let opts = CalibOptions { observer: cfg.observer, preprocess: preprocess.clone(), skip_unreadable: a.skip_unreadable, progress: true };
            let (inputs, skipped) = load_inputs(&g, &items, &opts).context("loading calibration images")?;
            for s in &skipped {
                eprintln!("warning: skipped unreadable calibration image {s}");
            }
            inputs
        }
        _ => Vec::new(),
    };
    let (mut q, summary) = quantize(&g, &inputs, &cfg, true).context("quantizing")?;
    q.metadata.insert(PREPROCESS_KEY.into(), serde_json::to_string(&preprocess)?);
    q.metadata.insert("subq.scheme".into(), summary.scheme.clone());
    q.metadata.insert("subq.activation_observer".into(), summary.observer.clone());
    q.metadata.insert("subq.calibration_images".into(), summary.calibration_images.to_string());
    subq_onnx::save_model(&q, &a.output)?;
    let size = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    let out = Text::new(a.json.as_deref());
    print_summary(&summary, &out);
    out.line(format_args!("wrote {} ({:.1} kB) in {:.1} s", a.output.display(), size as f64 / 1e3, summary.seconds));
    if let Some(p) = &a.json {
        write_json(p, &summary)?;
    }
    Ok(())
}
