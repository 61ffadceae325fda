//! One call from an FP32 graph and calibration inputs to a QDQ graph: what `subq quantize` and
//! `subq compare` run.
//!
//! Order: prepare (fold Pad and BN) → [CLE → high-bias absorption, which needs the equalized
//! graph's own minimums] → calibrate activations → choose weight grids (scheme;
//! for subtensor: clipping analysis and splits) → bias correction (after splitting, so it
//! corrects what the split model really does) → QDQ graph.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use subq_calib::observer::ObserverKind;
use subq_ir::Graph;
use subq_tensor::Tensor;

use crate::subtensor::{make_subtensor_plan, LayerDecision, SubtensorOptions};
use crate::{build_qdq_graph, calibrate_tensors, make_plan, QuantError, WeightScheme};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    PerTensor,
    PerTensorSymmetric,
    PerChannel,
    /// Per-tensor asymmetric uint8 everywhere, with subtensor splits where they pay.
    Subtensor,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::PerTensor => "per-tensor",
            Scheme::PerTensorSymmetric => "per-tensor-symmetric",
            Scheme::PerChannel => "per-channel",
            Scheme::Subtensor => "subtensor",
        }
    }
}

#[derive(Clone, Debug)]
pub struct QuantConfig {
    pub scheme: Scheme,
    pub observer: ObserverKind,
    pub subtensor: SubtensorOptions,
    /// Splits on (subtensor scheme); off keeps clipping and bias correction only.
    pub split: bool,
    pub bias_correction: bool,
    /// Calibration inputs used by empirical bias correction (the first N).
    pub bias_correction_images: usize,
    /// Empirical bias correction matches each layer's FP32 mean after its fused activation
    /// clamp (Relu, ReLU6, equalized bound) instead of before it. Off by default: it made
    /// EfficientNet-Lite0 steady over CLE strengths and gained ~0.5 dB on both bundled models,
    /// but EfficientNet-Lite0's agreement fell 0.5 points, under its target (BENCHMARKS.md,
    /// "Options measured in session 10").
    pub bias_correction_post_activation: bool,
    /// Empirical weight correction (least-squares refit of each layer to its quantized input,
    /// [`crate::weight_correction`]) before each layer's bias correction. On for subtensor:
    /// EfficientNet-Lite0 22.0 → 24.4 dB, MobileNetV2 26.7 → 27.2 dB and 88.25% → 90.25%
    /// agreement (BENCHMARKS.md, "Options measured in session 11"). Needs empirical bias
    /// correction (images); data-free quantization does without.
    pub weight_correction: bool,
    /// Cross-layer equalization before calibration.
    pub cle: bool,
    /// Quantize with and without CLE and keep the one whose logits are closer to FP32 on the
    /// calibration images (CLE helps EfficientNet-Lite0 and hurts MobileNetV2 under per-tensor
    /// activations, so neither default fits both). Overrides `cle`. Without images
    /// (`data_free`) there is nothing to judge on, and CLE is on: the DFQ recipe, and better on
    /// both bundled models (BENCHMARKS.md).
    pub cle_auto: bool,
    /// High-bias absorption after CLE: per-channel offsets that ReLU passes unchanged (the
    /// minimum seen on the calibration images) move into the next conv's bias. Off by default:
    /// with CLE and subtensor splits it cost 0.3–0.4 dB on both bundled models (BENCHMARKS.md).
    pub absorb_biases: bool,
    /// Strength of equalization: scales raised to this power (1 = full DFQ equalization).
    pub cle_strength: f32,
    /// No images: activation ranges and bias correction from BatchNormalization statistics.
    pub data_free: bool,
    /// Rank candidate splits by their measured effect on the logits (8 calibration images)
    /// rather than by the per-layer estimate alone. Off by default: on MobileNetV2 it chose
    /// nearly the same layers (21.6 vs 21.7 dB) at 4× the quantization time.
    pub probe_splits: bool,
    /// Real value range of the model input (from the preprocessing); data-free needs it.
    pub input_range: Option<(f32, f32)>,
    /// Error-feedback (GPTQ) rounding of weights onto their grids, from the second moments of
    /// each layer's input on the calibration images (see [`crate::gptq`]).
    pub gptq: bool,
    /// Put graph outputs computed by a Conv/Gemm (the logits) on a uint8 grid too. Off by
    /// default: they stay the dequantized int32 accumulator (see [`crate::keep_outputs_float`]).
    pub quantize_outputs: bool,
}

impl QuantConfig {
    pub fn new(scheme: Scheme) -> QuantConfig {
        let sub = scheme == Scheme::Subtensor;
        QuantConfig { scheme, observer: if sub { ObserverKind::Mse } else { ObserverKind::MinMax }, subtensor: SubtensorOptions::default(), split: sub, bias_correction: sub, bias_correction_images: 100, bias_correction_post_activation: false, weight_correction: sub, cle: false, cle_auto: sub, absorb_biases: false, cle_strength: 0.5, data_free: false, probe_splits: false, input_range: None, gptq: false, quantize_outputs: false }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct QuantSummary {
    pub scheme: String,
    pub observer: String,
    pub calibration_images: usize,
    pub batch_norms_folded: usize,
    pub pads_folded: usize,
    pub fused_activations: usize,
    /// Graph outputs left in float (dequantized accumulators), see `QuantConfig::quantize_outputs`.
    pub float_outputs: usize,
    pub split_layers: usize,
    pub extra_weight_bytes: usize,
    pub weight_bytes: usize,
    pub extra_macs: usize,
    pub total_macs: usize,
    pub bias_corrected_layers: usize,
    pub cle: bool,
    /// Conv pairs whose constant offsets were absorbed into the next bias.
    pub biases_absorbed: usize,
    /// Layers whose weights were rounded with error feedback (GPTQ).
    pub gptq_layers: usize,
    /// Per such layer: the drop of its output error against round-to-nearest (dB, calibration data).
    pub gptq_gain_db: Vec<(String, f64)>,
    /// Per layer that empirical weight correction considered: output channels changed and the
    /// calibration error E‖W x_f − Ŵ x_q‖² before and after.
    pub weight_corrections: Vec<(String, crate::weight_correction::Corrected)>,
    /// Bytes of CLE's per-channel ReLU6 bounds in the file (one uint8 per bounded channel).
    pub bound_bytes: usize,
    /// With automatic CLE: whether equalizing would have put the splits and bounds over the size
    /// budget (and so was not kept).
    pub cle_over_size_budget: bool,
    /// With automatic CLE: calibration-set logits SQNR without and with CLE.
    pub cle_choice_sqnr_db: Option<(f64, f64)>,
    pub seconds: f64,
    pub layers: Vec<LayerDecision>,
}

pub fn quantize(fp32: &Graph, inputs: &[Tensor], cfg: &QuantConfig, progress: bool) -> Result<(Graph, QuantSummary), QuantError> {
    let started = Instant::now();
    if cfg.cle_auto && !cfg.data_free {
        let mut off = cfg.clone();
        off.cle_auto = false;
        off.cle = false;
        let mut on = off.clone();
        on.cle = true;
        let (q_off, s_off) = quantize(fp32, inputs, &off, progress)?;
        let (q_on, s_on) = quantize(fp32, inputs, &on, progress)?;
        // Judge on (a few of) the calibration images: never on evaluation data.
        let probe = &inputs[..inputs.len().min(16)];
        let (a, b) = (calib_sqnr(fp32, &q_off, probe)?, calib_sqnr(fp32, &q_on, probe)?);
        // CLE's per-channel ReLU6 bounds are bytes the per-tensor file does not have, so they
        // share the size budget with the splits: equalization is kept only if both fit (without
        // it there are no bounds, and the splits fit by construction). Measured: with CLE,
        // EfficientNet-Lite0's splits and bounds take 1.06% of its weight bytes.
        let over_budget = s_on.extra_weight_bytes + s_on.bound_bytes > (cfg.subtensor.size_budget * s_on.weight_bytes as f64) as usize;
        let (q, mut s) = if b > a && !over_budget { (q_on, s_on) } else { (q_off, s_off) };
        s.cle_choice_sqnr_db = Some((a, b));
        s.cle_over_size_budget = over_budget;
        s.seconds = started.elapsed().as_secs_f64();
        return Ok((q, s));
    }
    let mut g = fp32.clone();
    let mut prep = subq_transforms::prepare_for_quantization(&mut g).map_err(|e| QuantError::Invalid(e.to_string()))?;
    let cle = cfg.cle || (cfg.cle_auto && cfg.data_free);
    if cle {
        let (_, scales) = subq_transforms::equalize_with_scales(&mut g, cfg.cle_strength, 2).map_err(|e| QuantError::Invalid(e.to_string()))?;
        // Data-free ranges and bias correction start from the BN statistics: they follow the channels.
        subq_transforms::rescale_bn_stats(&mut prep.bn_stats, &scales);
    }
    let mut biases_absorbed = 0;
    if cfg.absorb_biases && !cfg.data_free && !inputs.is_empty() {
        let seen = calibrate_tensors(&g, inputs, ObserverKind::MinMax, false)?;
        let lower: std::collections::BTreeMap<String, Vec<f32>> = seen.moments.into_iter().map(|(k, m)| (k, m.min)).collect();
        biases_absorbed = subq_transforms::absorb_high_biases(&mut g, &lower).map_err(|e| QuantError::Invalid(e.to_string()))?;
    }
    let reference = g.clone();
    let calib = if cfg.data_free {
        let range = cfg.input_range.ok_or_else(|| QuantError::Invalid("data-free quantization needs the input value range (from the preprocessing)".into()))?;
        if prep.bn_stats.is_empty() {
            return Err(QuantError::Invalid("data-free quantization needs BatchNormalization statistics and this model has none; calibrate with images".into()));
        }
        crate::data_free::data_free_calibration(&g, &prep.bn_stats, range)?
    } else {
        if inputs.is_empty() {
            return Err(QuantError::Invalid("no calibration inputs".into()));
        }
        calibrate_tensors(&g, inputs, cfg.observer, progress)?
    };
    let observer = if cfg.data_free { "BN statistics (data-free)".to_string() } else { format!("{:?}", cfg.observer) };
    let mut summary = QuantSummary { scheme: cfg.scheme.name().into(), observer, calibration_images: if cfg.data_free { 0 } else { inputs.len() }, batch_norms_folded: prep.batch_norms_folded, pads_folded: prep.pads_folded, ..Default::default() };
    let mut plan = match cfg.scheme {
        Scheme::Subtensor => {
            let mut opts = cfg.subtensor.clone();
            if !cfg.split {
                opts.kinds.clear();
            }
            // Probe splits on the model output with a few calibration images (not with data-free).
            let probe_inputs = &inputs[..inputs.len().min(8)];
            let fp32_logits = reference_logits(&g, probe_inputs)?;
            let measure = |p: &crate::QuantPlan| -> Result<f64, QuantError> { Ok(logits_error(&build_qdq_graph(&g, p)?, probe_inputs, &fp32_logits)?.1) };
            let probe: Option<crate::subtensor::Probe> = if probe_inputs.is_empty() || !cfg.probe_splits { None } else { Some(&measure) };
            let sp = make_subtensor_plan(&g, &calib, &opts, probe)?;
            summary.split_layers = sp.layers.iter().filter(|l| l.split.is_some()).count();
            summary.extra_weight_bytes = sp.extra_bytes;
            summary.weight_bytes = sp.total_bytes;
            summary.extra_macs = sp.extra_macs;
            summary.total_macs = sp.total_macs;
            summary.layers = sp.layers;
            sp.plan
        }
        Scheme::PerTensor => make_plan(&g, &calib, WeightScheme::PerTensor)?,
        Scheme::PerTensorSymmetric => make_plan(&g, &calib, WeightScheme::PerTensorSymmetric)?,
        Scheme::PerChannel => make_plan(&g, &calib, WeightScheme::PerChannel)?,
    };
    if !cfg.quantize_outputs {
        summary.float_outputs = crate::keep_outputs_float(&g, &mut plan);
    }
    if cfg.gptq && !cfg.data_free {
        // Before bias correction, which then removes the mean shift of the final rounding.
        summary.gptq_gain_db = crate::gptq::apply(&g, &mut plan, inputs)?;
        summary.gptq_layers = summary.gptq_gain_db.len();
    }
    summary.fused_activations = plan.fused_activations.len();
    summary.bound_bytes = g.nodes.iter().filter(|n| plan.attached_bounds.contains_key(&n.name)).filter_map(|n| g.initializer(n.inputs.get(1)?)).map(|t| t.len()).sum();
    summary.cle = cle;
    summary.biases_absorbed = biases_absorbed;
    if cfg.bias_correction {
        summary.bias_corrected_layers = if cfg.data_free {
            crate::bias_correction::analytic(&mut g, &plan, &calib.moments)
        } else {
            let n = cfg.bias_correction_images.min(inputs.len()).max(1);
            let (layers, weights) = crate::bias_correction::empirical(&mut g, &reference, &mut plan, &inputs[..n], cfg.bias_correction_post_activation, cfg.weight_correction)?;
            summary.weight_corrections = weights;
            layers
        };
    }
    let q = build_qdq_graph(&g, &plan)?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok((q, summary))
}

/// The FP32 graph's logits on `inputs`.
fn reference_logits(fp32: &Graph, inputs: &[Tensor]) -> Result<Vec<Tensor>, QuantError> {
    let exec = subq_runtime::Fp32Executor::new(fp32);
    inputs.iter().map(|x| exec.run(vec![x.clone()]).map(|mut o| o.remove(0)).map_err(Into::into)).collect()
}

/// Signal and noise power of the int8 engine running `q` on `inputs` against `reference` logits.
fn logits_error(q: &Graph, inputs: &[Tensor], reference: &[Tensor]) -> Result<(f64, f64), QuantError> {
    let e = subq_runtime::Int8Engine::new(q)?;
    let (mut signal, mut noise) = (0f64, 0f64);
    for (x, r) in inputs.iter().zip(reference) {
        let y = e.run(x.clone())?.remove(0);
        for (p, q) in r.as_f32().map_err(|e| QuantError::Invalid(e.to_string()))?.iter().zip(y.as_f32().map_err(|e| QuantError::Invalid(e.to_string()))?) {
            signal += (*p as f64).powi(2);
            noise += ((p - q) as f64).powi(2);
        }
    }
    Ok((signal, noise))
}

/// Logits SQNR of the int8 engine running `q` against the FP32 graph on `inputs`.
fn calib_sqnr(fp32: &Graph, q: &Graph, inputs: &[Tensor]) -> Result<f64, QuantError> {
    let (signal, noise) = logits_error(q, inputs, &reference_logits(fp32, inputs)?)?;
    Ok(10.0 * (signal / noise.max(1e-30)).log10())
}
