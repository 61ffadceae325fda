//! `subq report`: one self-contained HTML page (inline SVG, no external files) with what a
//! quantization engineer looks at before choosing a scheme — per-channel weight ranges before
//! and after CLE, per-layer weight and activation SQNR under per-tensor / per-channel /
//! subtensor, where subtensor placed its splits and why, the scheme table of `subq compare`,
//! and the layer sensitivity ranking.

pub mod svg;

use std::fmt::Write;
use std::time::Instant;

use serde::Serialize;
use subq_ir::Graph;
use subq_quant::QuantSummary;
use subq_tensor::Tensor;

use crate::layers::{layer_ranges, layer_sqnr, prepared, progress_bar, LayerRanges, LayerSqnr};
use crate::schemes::{run_schemes, scheme_configs, EvalSet, SchemeRow};
use crate::sensitivity::{layer_sensitivity, LayerSensitivity};
use crate::EvalError;
use svg::{channel_strip, esc, layer_chart, Series};

/// Schemes whose per-layer SQNR the report shows (labels of [`scheme_configs`]).
pub const SQNR_SCHEMES: [&str; 3] = ["per-tensor", "per-channel", "subtensor"];

pub struct ReportOptions {
    /// Calibration images (the first N) used for activation SQNR and layer sensitivity.
    pub analysis_images: usize,
    /// Real range of the model input (from the preprocessing): data-free quantization needs it.
    pub input_range: (f32, f32),
    pub cle_strength: f32,
    pub progress: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerRow {
    pub node: String,
    pub kind: String,
    /// One entry per [`SQNR_SCHEMES`] scheme.
    pub sqnr: Vec<LayerSqnr>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub input_hw: (usize, usize),
    pub calibration_images: usize,
    pub evaluation_images: Option<usize>,
    pub analysis_images: usize,
    pub ranges: Vec<LayerRanges>,
    pub layers: Vec<LayerRow>,
    /// The subtensor row's quantization summary (per-layer split decisions).
    pub subtensor: Option<QuantSummary>,
    /// `subq compare`'s table (empty without evaluation images).
    pub table: Vec<SchemeRow>,
    pub sensitivity: Vec<LayerSensitivity>,
    pub seconds: f64,
}

/// Compute everything the report shows.
pub fn generate(model: &str, fp32: &Graph, calib: &[Tensor], eval: Option<&EvalSet>, opts: &ReportOptions) -> Result<Report, EvalError> {
    let started = Instant::now();
    let (_, h, w) = crate::image_input_shape(fp32)?;
    if calib.is_empty() {
        return Err(EvalError::Model("the report needs at least one calibration image".into()));
    }
    let analysis = &calib[..opts.analysis_images.clamp(1, calib.len())];
    if opts.progress {
        eprintln!("== weight ranges (BN folded, with and without CLE)");
    }
    let ranges = layer_ranges(fp32, opts.cle_strength)?;
    // Without evaluation images only the schemes whose per-layer SQNR is shown are quantized.
    let configs = scheme_configs().into_iter().filter(|(label, _)| eval.is_some() || SQNR_SCHEMES.contains(label)).collect();
    let results = run_schemes(fp32, calib, eval, configs, opts.input_range, opts.progress, |r| {
        if let (true, Some(row)) = (opts.progress, &r.row) {
            eprintln!("{}", crate::schemes::markdown_row(row));
        }
    })?;
    let bar = progress_bar(SQNR_SCHEMES.len() * analysis.len(), "per-layer SQNR", opts.progress);
    let mut per_scheme = Vec::new();
    for name in SQNR_SCHEMES {
        let r = results.iter().find(|r| r.label == name).ok_or_else(|| EvalError::Model(format!("scheme {name} missing")))?;
        let cle = r.summary.as_ref().is_some_and(|s| s.cle);
        let strength = r.config.as_ref().map_or(opts.cle_strength, |c| c.cle_strength);
        let reference = prepared(fp32, cle.then_some(strength))?;
        per_scheme.push(layer_sqnr(&reference, &r.graph, analysis, &bar)?);
    }
    bar.finish_and_clear();
    let layers = ranges
        .iter()
        .map(|l| LayerRow { node: l.node.clone(), kind: l.kind.clone(), sqnr: per_scheme.iter().map(|m| m.get(&l.node).cloned().unwrap_or_default()).collect() })
        .collect();
    if opts.progress {
        eprintln!("== layer sensitivity on {} calibration images", analysis.len());
    }
    let sensitivity = layer_sensitivity(fp32, analysis, opts.progress)?;
    let subtensor = results.iter().find(|r| r.label == "subtensor").and_then(|r| r.summary.clone());
    let table = results.into_iter().filter_map(|r| r.row).collect();
    Ok(Report {
        model: model.to_string(),
        input_hw: (h, w),
        calibration_images: calib.len(),
        evaluation_images: eval.map(|e| e.inputs.len()),
        analysis_images: analysis.len(),
        ranges,
        layers,
        subtensor,
        table,
        sensitivity,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn db(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.1}"),
        Some(_) => "∞".into(),
        None => "—".into(),
    }
}

fn spread_text(s: f32) -> String {
    crate::layers::format_spread(s)
}

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.2}%", 100.0 * v)).unwrap_or_else(|| "—".into())
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px 32px;color:#222;max-width:1340px}h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:3px}\
p{margin:4px 0 8px;line-height:1.4}.meta{color:#555}table{border-collapse:collapse;font-size:12px}td,th{padding:2px 6px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}\
th{background:#f4f4f4;position:sticky;top:0}td.l,th.l{text-align:left}td.name{text-align:left;max-width:330px;overflow:hidden;text-overflow:ellipsis;font-family:monospace;font-size:11px}\
tr.split td{background:#fff4e0}.bad{color:#b00;font-weight:bold}.bar{display:inline-block;height:9px;background:#d62728;vertical-align:middle}svg.strip{display:block}\
nav a{margin-right:14px}.key{display:inline-block;width:10px;height:10px;margin:0 3px 0 10px}code{background:#f4f4f4;padding:0 3px}";

/// The report as one HTML page.
pub fn render_html(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>subq report — {}</title><style>{STYLE}</style></head><body>", esc(&r.model));
    let _ = writeln!(s, "<h1>subq report — {}</h1>", esc(&r.model));
    let _ = writeln!(
        s,
        "<p class=\"meta\">input {}×{} · {} Conv/Gemm layers · {} calibration images ({} for the per-layer SQNR and sensitivity) · {} · generated in {:.0} s</p>",
        r.input_hw.0,
        r.input_hw.1,
        r.ranges.len(),
        r.calibration_images,
        r.analysis_images,
        r.evaluation_images.map_or("no evaluation images".to_string(), |n| format!("{n} evaluation images")),
        r.seconds
    );
    s.push_str("<nav><a href=\"#schemes\">Schemes</a><a href=\"#ranges\">Weight ranges</a><a href=\"#sqnr\">Per-layer SQNR</a><a href=\"#splits\">Split decisions</a><a href=\"#sensitivity\">Layer sensitivity</a></nav>\n");
    schemes_section(&mut s, r);
    ranges_section(&mut s, r);
    sqnr_section(&mut s, r);
    splits_section(&mut s, r);
    sensitivity_section(&mut s, r);
    s.push_str("</body></html>\n");
    s
}

fn schemes_section(s: &mut String, r: &Report) {
    s.push_str("<section id=\"schemes\"><h2>1. Schemes: accuracy, fidelity, latency, size</h2>\n");
    if r.table.is_empty() {
        s.push_str("<p>Not measured: pass <code>--images DIR</code> (evaluation images, never the calibration ones) and optionally <code>--labels SYNSETS</code>.</p></section>\n");
        return;
    }
    s.push_str("<p>The rows of <code>subq compare</code>. Agreement: top-1 equal to FP32's; SQNR over all logits of all evaluation images. Latency: median of single-image runs on one thread (noisy on a shared machine; compare rows within one report). Every weight is per-tensor except in the per-channel row.</p>\n<table><tr><th class=\"l\">scheme</th><th>top-1</th><th>vs FP32</th><th>top-5</th><th>agreement</th><th>logits SQNR</th><th>latency (ms)</th><th>size (kB)</th><th>quantize (s)</th><th>split layers</th><th class=\"l\">engine</th></tr>\n");
    for row in &r.table {
        let _ = writeln!(
            s,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}%</td><td>{}</td><td>{:.2}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td class=\"l\">{}</td></tr>",
            esc(&row.scheme),
            pct(row.top1),
            row.vs_fp32_text(),
            pct(row.top5),
            100.0 * row.agreement,
            row.sqnr_text(),
            row.latency_ms,
            row.size_kb,
            row.quantize_s,
            row.split_layers,
            esc(&row.engine)
        );
    }
    s.push_str("</table></section>\n");
}

fn ranges_section(s: &mut String, r: &Report) {
    s.push_str("<section id=\"ranges\"><h2>2. Weight ranges per output channel (after BN folding, before and after CLE)</h2>\n");
    s.push_str("<p><b>Max/median</b> = widest / median channel range (max − min): how many times coarser one per-tensor grid is for a typical channel than its own grid (8× = 3 bits of the 8 lost; red from 8×). <b>Max/min</b> = widest / narrowest channel: dominated by near-dead channels, which carry nothing. Each strip draws every output channel as a bar from its min to its max weight, on the layer's own symmetric scale (± the value shown); <span class=\"key\" style=\"background:#d62728\"></span>outlier channels (range ≥ 4× the median channel's), <span class=\"key\" style=\"background:#1f77b4\"></span>the rest. A few red bars over a flat blue line is the case one per-tensor grid fails on. CLE columns: after cross-layer equalization as <code>--cle</code> applies it.</p>\n");
    let names: Vec<String> = r.ranges.iter().map(|l| l.node.clone()).collect();
    let chart = layer_chart(
        "Max/median channel range per layer (log scale)",
        "max / median",
        &names,
        &[
            Series { name: "BN folded", values: r.ranges.iter().map(|l| Some(l.outlier_ratio_folded() as f64)).collect(), bars: true },
            Series { name: "after CLE", values: r.ranges.iter().map(|l| Some(l.outlier_ratio_equalized() as f64)).collect(), bars: true },
        ],
        true,
        1300,
        220,
    );
    s.push_str(&chart);
    s.push_str("\n<table><tr><th>#</th><th class=\"l\">layer</th><th class=\"l\">kind</th><th>channels</th><th>max/median</th><th>max/min</th><th>±max |w|</th><th class=\"l\">BN folded</th><th>max/median</th><th>max/min</th><th>±max |w|</th><th class=\"l\">after CLE</th></tr>\n");
    for (i, l) in r.ranges.iter().enumerate() {
        let absmax = |v: &[(f32, f32)]| v.iter().fold(0f32, |a, &(lo, hi)| a.max(lo.abs()).max(hi.abs()));
        let cls = |x: f32| if x >= 8.0 { " class=\"bad\"" } else { "" };
        let (of, oe) = (l.outlier_ratio_folded(), l.outlier_ratio_equalized());
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td class=\"name\" title=\"{n}\">{n}</td><td class=\"l\">{}</td><td>{}</td><td{}>{}</td><td>{}</td><td>{:.3}</td><td class=\"l\">{}</td><td{}>{}</td><td>{}</td><td>{:.3}</td><td class=\"l\">{}</td></tr>",
            i,
            esc(&l.kind),
            l.folded.len(),
            cls(of),
            spread_text(of),
            spread_text(l.spread_folded()),
            absmax(&l.folded),
            channel_strip(&l.folded, 240, 26),
            cls(oe),
            spread_text(oe),
            spread_text(l.spread_equalized()),
            absmax(&l.equalized),
            channel_strip(&l.equalized, 240, 26),
            n = esc(&l.node)
        );
    }
    s.push_str("</table></section>\n");
}

fn sqnr_section(s: &mut String, r: &Report) {
    s.push_str("<section id=\"sqnr\"><h2>3. Per-layer SQNR under per-tensor, per-channel and subtensor</h2>\n");
    let _ = writeln!(s, "<p>Weight SQNR: 10·log10(Σw² / Σ(w − ŵ)²) of each layer's weight (ŵ: the sum of its dequantized parts; measured against the equalized weight when the scheme chose CLE). Activation SQNR: the layer's quantized output (after a fused ReLU/ReLU6) against the float model on {} calibration images — the error accumulated up to that layer, so it falls along the network; a sudden drop marks a layer that hurts.</p>", r.analysis_images);
    let names: Vec<String> = r.layers.iter().map(|l| l.node.clone()).collect();
    let series = |f: &dyn Fn(&LayerSqnr) -> Option<f64>| -> Vec<Series> { SQNR_SCHEMES.iter().enumerate().map(|(k, name)| Series { name, values: r.layers.iter().map(|l| l.sqnr.get(k).and_then(f)).collect(), bars: false }).collect() };
    s.push_str(&layer_chart("Weight SQNR per layer", "dB", &names, &series(&|x| x.weight_db), false, 1300, 240));
    s.push('\n');
    s.push_str(&layer_chart("Activation SQNR per layer (accumulated)", "dB", &names, &series(&|x| x.activation_db), false, 1300, 240));
    s.push_str("\n<table><tr><th>#</th><th class=\"l\">layer</th><th class=\"l\">kind</th>");
    for n in SQNR_SCHEMES {
        let _ = write!(s, "<th>weight {n}</th>");
    }
    for n in SQNR_SCHEMES {
        let _ = write!(s, "<th>act. {n}</th>");
    }
    s.push_str("</tr>\n");
    for (i, l) in r.layers.iter().enumerate() {
        let _ = write!(s, "<tr><td>{i}</td><td class=\"name\" title=\"{n}\">{n}</td><td class=\"l\">{}</td>", esc(&l.kind), n = esc(&l.node));
        for x in &l.sqnr {
            let _ = write!(s, "<td>{}</td>", db(x.weight_db));
        }
        for x in &l.sqnr {
            let _ = write!(s, "<td>{}</td>", db(x.activation_db));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table><p>(dB; — = not applicable.)</p></section>\n");
}

fn splits_section(s: &mut String, r: &Report) {
    s.push_str("<section id=\"splits\"><h2>4. Subtensor: where splits were placed and why</h2>\n");
    let Some(sum) = &r.subtensor else {
        s.push_str("<p>No subtensor run.</p></section>\n");
        return;
    };
    let _ = writeln!(
        s,
        "<p>{} layers split (+{:.2}% weight bytes, +{:.2}% MACs within the budgets); bias corrected on {} layers; CLE {}{}. Activation ranges: {}. The dB columns are <code>subq quantize</code>'s estimates of each layer's output SQNR from its weight quantization alone (calibration statistics); the greedy choice takes the largest error reduction per unit of size/latency budget first. Split rows are highlighted.</p>",
        sum.split_layers,
        100.0 * sum.extra_weight_bytes as f64 / sum.weight_bytes.max(1) as f64,
        100.0 * sum.extra_macs as f64 / sum.total_macs.max(1) as f64,
        sum.bias_corrected_layers,
        if sum.cle { "on" } else { "off" },
        sum.cle_choice_sqnr_db.map_or(String::new(), |(off, on)| format!(" (chosen on calibration logits: {off:.2} dB without, {on:.2} dB with)")),
        esc(&sum.observer)
    );
    s.push_str("<table><tr><th class=\"l\">layer</th><th class=\"l\">kind</th><th>params</th><th>per-tensor</th><th>clip</th><th>clipped</th><th>outlier</th><th>channel-group</th><th>residual</th><th>final</th><th class=\"l\">split</th><th class=\"l\">reason</th></tr>\n");
    for l in &sum.layers {
        let cand = |k: &str| l.sqnr_split_db.iter().find(|(kind, _)| format!("{kind:?}").eq_ignore_ascii_case(&k.replace('-', ""))).map(|(_, v)| format!("{v:.1}")).unwrap_or_else(|| "—".into());
        let _ = writeln!(
            s,
            "<tr{}><td class=\"name\" title=\"{n}\">{n}</td><td class=\"l\">{}</td><td>{}</td><td>{:.1}</td><td>{:.2}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
            if l.split.is_some() { " class=\"split\"" } else { "" },
            esc(&l.layer),
            l.params,
            l.sqnr_per_tensor_db,
            l.clip,
            l.sqnr_clipped_db,
            cand("outlier"),
            cand("channel-group"),
            cand("residual"),
            l.final_sqnr_db,
            l.split.map(|k| format!("{k:?}")).unwrap_or_default(),
            esc(&l.reason),
            n = esc(&l.node)
        );
    }
    s.push_str("</table></section>\n");
}

fn sensitivity_section(s: &mut String, r: &Report) {
    s.push_str("<section id=\"sensitivity\"><h2>5. Layer sensitivity (worst first)</h2>\n");
    let _ = writeln!(s, "<p>Each layer quantized alone — its weight on one per-tensor uint8 grid and its output activation on the calibrated uint8 grid (min/max), every other layer FP32 — and the logits compared with FP32 on {} calibration images. Low SQNR = the layers per-tensor quantization hurts most; they are the candidates for per-channel, splits or higher precision. Also: <code>subq sensitivity --model M --calib DIR --json -</code>.</p>", r.analysis_images);
    let worst = r.sensitivity.iter().map(|l| l.logits_sqnr_db).filter(|v| v.is_finite()).fold(f64::INFINITY, f64::min);
    let best = r.sensitivity.iter().map(|l| l.logits_sqnr_db).filter(|v| v.is_finite()).fold(f64::NEG_INFINITY, f64::max);
    s.push_str("<table><tr><th>rank</th><th class=\"l\">layer</th><th class=\"l\">kind</th><th>logits SQNR (dB)</th><th class=\"l\"></th><th>weight SQNR (dB)</th><th>max/median</th><th>max/min</th></tr>\n");
    for l in &r.sensitivity {
        // Bar length: how far below the best layer this one is.
        let len = if best > worst && l.logits_sqnr_db.is_finite() { 200.0 * (best - l.logits_sqnr_db) / (best - worst) } else { 0.0 };
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td class=\"name\" title=\"{n}\">{n}</td><td class=\"l\">{}</td><td>{}</td><td class=\"l\"><span class=\"bar\" style=\"width:{len:.0}px\"></span></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            l.rank,
            esc(&l.kind),
            db(Some(l.logits_sqnr_db)),
            db(Some(l.weight_sqnr_db)),
            l.channel_outlier_ratio.map_or("—".into(), spread_text),
            l.channel_range_spread.map_or("—".into(), spread_text),
            n = esc(&l.node)
        );
    }
    s.push_str("</table></section>\n");
}
