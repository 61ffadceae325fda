//! The scheme table: one FP32 model quantized every way subq offers (FP32, per-channel,
//! per-tensor, per-tensor + CLE + bias correction, subtensor, data-free subtensor), each scored
//! on the same decoded evaluation images. `subq compare` prints it; `subq report` shows it and
//! also reads the quantized graphs and the subtensor decisions.

use serde::Serialize;
use subq_ir::Graph;
use subq_quant::{quantize, QuantConfig, QuantSummary, Scheme};
use subq_tensor::Tensor;

use crate::{engine_for, evaluate_tensors, median_latency_ms, EvalError};

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
pub struct SchemeRow {
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
    /// Top-1 against labels: images right here and wrong in FP32, and the other way round.
    pub images_gained: Option<usize>,
    pub images_lost: Option<usize>,
    pub top1_ci95: Option<(f64, f64)>,
    pub agreement_ci95: Option<(f64, f64)>,
}

impl SchemeRow {
    /// The SQNR cell of the table ("—" for the FP32 row itself).
    pub fn sqnr_text(&self) -> String {
        if self.sqnr_db.is_finite() { format!("{:.2} dB", self.sqnr_db) } else { "—".into() }
    }

    /// The "vs FP32" cell: images right only in this row / only in FP32 ("—" without labels and
    /// for the FP32 row itself).
    pub fn vs_fp32_text(&self) -> String {
        match (self.images_gained, self.images_lost) {
            (Some(g), Some(l)) if self.sqnr_db.is_finite() => format!("+{g} / −{l}"),
            _ => "—".into(),
        }
    }
}

/// One scheme's result: the graph it produced (the FP32 model itself for the first row), its
/// quantization summary, and its scores when evaluation images were given.
pub struct SchemeResult {
    pub label: String,
    pub config: Option<QuantConfig>,
    pub graph: Graph,
    pub summary: Option<QuantSummary>,
    pub row: Option<SchemeRow>,
}

/// Decoded evaluation images, their labels (when known) and how latency is measured.
pub struct EvalSet<'a> {
    pub inputs: &'a [Tensor],
    pub labels: &'a [Option<usize>],
    /// Timed single-image runs per row (1 thread, median).
    pub latency_runs: usize,
}

/// The rows of the table: label and configuration (`None` = the FP32 model itself).
pub fn scheme_configs() -> Vec<(&'static str, Option<QuantConfig>)> {
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

/// A fraction as a percentage with two decimals, "—" when absent.
pub fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.2}%", 100.0 * v)).unwrap_or_else(|| "—".into())
}

/// The table as Markdown. "vs FP32" counts images whose top-1 is right only in this row (+)
/// and only in FP32 (−); a note under the table gives the sampling noise of the percentages.
pub fn markdown(rows: &[SchemeRow]) -> String {
    let mut s = String::from("| scheme | top-1 | vs FP32 | top-5 | agreement | logits SQNR | latency (ms) | size (kB) | quantize (s) | split layers |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        s += &markdown_row(r);
        s.push('\n');
    }
    // Widest half-width (points) over the quantized rows.
    let widest = |ci: fn(&SchemeRow) -> Option<(f64, f64)>| rows.iter().filter(|r| r.sqnr_db.is_finite()).filter_map(ci).map(|(lo, hi)| 50.0 * (hi - lo)).reduce(f64::max);
    let widths: Vec<String> = [("top-1", widest(|r| r.top1_ci95)), ("agreement", widest(|r| r.agreement_ci95))].into_iter().filter_map(|(what, w)| w.map(|w| format!("{what} up to ±{w:.1} points"))).collect();
    if !widths.is_empty() {
        s += &format!("\n95% intervals on these images: {} (Wilson); differences of a few images are sampling noise.\n", widths.join(", "));
    }
    s
}

/// One row of [`markdown`]'s table (no header, no newline), e.g. for progress output.
pub fn markdown_row(r: &SchemeRow) -> String {
    format!("| {} | {} | {} | {} | {:.2}% | {} | {:.2} | {:.1} | {:.1} | {} |", r.scheme, pct(r.top1), r.vs_fp32_text(), pct(r.top5), 100.0 * r.agreement, r.sqnr_text(), r.latency_ms, r.size_kb, r.quantize_s, r.split_layers)
}

/// Quantize `g` under every configuration of `configs` (calibrating on `calib`; data-free rows
/// use none) and, with `eval`, score each against labels and the FP32 row's logits. `on_row` is
/// called after each row (for progress output). `input_range` is the real range of the model
/// input that the preprocessing produces (data-free quantization needs it).
pub fn run_schemes(
    g: &Graph,
    calib: &[Tensor],
    eval: Option<&EvalSet>,
    configs: Vec<(&'static str, Option<QuantConfig>)>,
    input_range: (f32, f32),
    progress: bool,
    mut on_row: impl FnMut(&SchemeResult),
) -> Result<Vec<SchemeResult>, EvalError> {
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().map_err(|e| EvalError::Model(e.to_string()))?;
    let mut reference: Option<Vec<Vec<f32>>> = None;
    let mut out = Vec::new();
    let has_bn_statistics = g.nodes.iter().any(|n| matches!(n.op, subq_ir::Op::BatchNorm { .. }));
    for (label, cfg) in configs {
        // Data-free quantization reads BatchNormalization statistics; a model without them (e.g.
        // one already folded, or a QDQ file turned back into float) gets no such row.
        if cfg.as_ref().is_some_and(|c| c.data_free) && !has_bn_statistics {
            eprintln!("note: no '{label}' row: the model has no BatchNormalization statistics");
            continue;
        }
        if progress {
            eprintln!("== {label}");
        }
        let (graph, summary) = match &cfg {
            None => (g.clone(), None),
            Some(c) => {
                let mut c = c.clone();
                c.input_range = Some(input_range);
                let inputs: &[Tensor] = if c.data_free { &[] } else { calib };
                let (q, s) = quantize(g, inputs, &c, progress).map_err(|e| EvalError::Model(format!("quantizing {label}: {e}")))?;
                (q, Some(s))
            }
        };
        let row = match eval {
            None => None,
            Some(ev) => {
                let engine = engine_for(&graph)?;
                let (report, logits) = evaluate_tensors(engine.as_ref(), ev.inputs, ev.labels, reference.as_deref(), progress)?;
                let first = ev.inputs.first().ok_or_else(|| EvalError::Model("no evaluation images".into()))?;
                let latency = one_thread.install(|| median_latency_ms(engine.as_ref(), first, 3, ev.latency_runs))?;
                if reference.is_none() {
                    reference = Some(logits);
                }
                Some(SchemeRow {
                    scheme: label.into(),
                    top1: report.top1,
                    top5: report.top5,
                    agreement: report.agreement.unwrap_or(1.0),
                    sqnr_db: report.sqnr_db.unwrap_or(f64::INFINITY),
                    latency_ms: latency,
                    size_kb: subq_onnx::export_model(&graph).len() as f64 / 1e3,
                    quantize_s: summary.as_ref().map_or(0.0, |s| s.seconds),
                    split_layers: summary.as_ref().map_or(0, |s| s.split_layers),
                    engine: engine.describe(),
                    images_gained: report.images_gained,
                    images_lost: report.images_lost,
                    top1_ci95: report.top1_ci95,
                    agreement_ci95: report.agreement_ci95,
                })
            }
        };
        let result = SchemeResult { label: label.into(), config: cfg, graph, summary, row };
        on_row(&result);
        out.push(result);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scheme: &str, sqnr_db: f64, labelled: bool) -> SchemeRow {
        let n = 400;
        SchemeRow {
            scheme: scheme.into(),
            top1: labelled.then_some(0.89),
            top5: labelled.then_some(0.965),
            agreement: if sqnr_db.is_finite() { 0.98 } else { 1.0 },
            sqnr_db,
            latency_ms: 10.0,
            size_kb: 4829.7,
            quantize_s: 1.0,
            split_layers: 5,
            engine: "int8".into(),
            images_gained: labelled.then_some(2),
            images_lost: labelled.then_some(1),
            top1_ci95: labelled.then(|| crate::accuracy::wilson95(356, n)),
            agreement_ci95: Some(crate::accuracy::wilson95(if sqnr_db.is_finite() { 392 } else { n }, n)),
        }
    }

    #[test]
    fn markdown_has_the_vs_fp32_column_and_the_interval_note() {
        let md = markdown(&[row("FP32", f64::INFINITY, true), row("subtensor", 21.8, true)]);
        let lines: Vec<&str> = md.lines().collect();
        assert!(lines[0].starts_with("| scheme | top-1 | vs FP32 | top-5 | agreement | logits SQNR |"), "{md}");
        assert_eq!(lines[2], "| FP32 | 89.00% | — | 96.50% | 100.00% | — | 10.00 | 4829.7 | 1.0 | 5 |");
        assert_eq!(lines[3], "| subtensor | 89.00% | +2 / −1 | 96.50% | 98.00% | 21.80 dB | 10.00 | 4829.7 | 1.0 | 5 |");
        // The FP32 row (agreement 100% by definition) does not widen the note's intervals.
        assert_eq!(lines[5], "95% intervals on these images: top-1 up to ±3.1 points, agreement up to ±1.4 points (Wilson); differences of a few images are sampling noise.");
        let unlabelled = markdown(&[row("FP32", f64::INFINITY, false), row("subtensor", 21.8, false)]);
        assert!(unlabelled.contains("| subtensor | — | — | — | 98.00% |"), "{unlabelled}");
        assert!(unlabelled.ends_with("\n95% intervals on these images: agreement up to ±1.4 points (Wilson); differences of a few images are sampling noise.\n"), "{unlabelled}");
    }
}
