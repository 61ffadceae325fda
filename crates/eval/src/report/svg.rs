//! Hand-written inline SVG for the report.
//!
//! Why not `plotters`: the report draws ~130 tiny per-channel strips plus three simple charts.
//! Writing the SVG elements directly keeps each strip to one or two `<path>` elements (the page
//! stays small with 1280-channel layers), needs no dependency and no font handling at all (text
//! is plain `<text>` that the browser lays out), and gives exact control over the compact
//! layout. Every string that comes from the model goes through [`esc`].

use std::fmt::Write;

/// HTML/XML escaping for text and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

pub const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];

/// A channel is an outlier in a strip when its range is at least this many times the median's.
pub const OUTLIER: f32 = 4.0;

/// Log-scale charts clip values above this (drawn at the top with a ▲ marker).
pub const LOG_CAP: f64 = 1e4;

/// One layer's per-channel weight ranges as vertical bars from min to max, on a symmetric axis
/// scaled to the layer's largest |w|. Channels are binned into at most `width` columns (a bin
/// keeps the lowest min and highest max, so an outlier channel is never averaged away). Outlier
/// channels — range at least 4× the median channel's — are drawn in red, the rest in blue.
pub fn channel_strip(ranges: &[(f32, f32)], width: usize, height: usize) -> String {
    let (w, h) = (width as f32, height as f32);
    let m = ranges.iter().fold(0f32, |a, &(lo, hi)| a.max(lo.abs()).max(hi.abs())).max(1e-30);
    let mut widths: Vec<f32> = ranges.iter().map(|&(lo, hi)| hi - lo).collect();
    widths.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let median = widths.get(widths.len() / 2).copied().unwrap_or(0.0);
    let cols = ranges.len().min(width).max(1);
    let mut bins = vec![(f32::INFINITY, f32::NEG_INFINITY); cols];
    for (i, &(lo, hi)) in ranges.iter().enumerate() {
        let b = i * cols / ranges.len().max(1);
        bins[b].0 = bins[b].0.min(lo);
        bins[b].1 = bins[b].1.max(hi);
    }
    let y = |v: f32| (h / 2.0 - v / m * (h / 2.0 - 1.0)).clamp(0.0, h);
    let step = w / cols as f32;
    let stroke = (step * 0.8).clamp(0.6, 4.0);
    let (mut narrow, mut wide) = (String::new(), String::new());
    for (i, &(lo, hi)) in bins.iter().enumerate() {
        if !lo.is_finite() {
            continue;
        }
        let x = (i as f32 + 0.5) * step;
        let (y0, y1) = (y(hi), y(lo).max(y(hi) + 0.8));
        let target = if hi - lo >= OUTLIER * median { &mut wide } else { &mut narrow };
        let _ = write!(target, "M{x:.1} {y0:.1}V{y1:.1}");
    }
    let mut s = format!(r##"<svg class="strip" width="{width}" height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg"><line x1="0" x2="{width}" y1="{:.1}" y2="{:.1}" stroke="#ccc" stroke-width="0.5"/>"##, h / 2.0, h / 2.0);
    if !narrow.is_empty() {
        let _ = write!(s, r#"<path d="{narrow}" stroke="{}" stroke-width="{stroke:.1}"/>"#, COLORS[0]);
    }
    if !wide.is_empty() {
        let _ = write!(s, r#"<path d="{wide}" stroke="{}" stroke-width="{stroke:.1}"/>"#, COLORS[3]);
    }
    s.push_str("</svg>");
    s
}

/// A series of a chart: name and one optional value per layer.
pub struct Series<'a> {
    pub name: &'a str,
    pub values: Vec<Option<f64>>,
    /// Bars instead of a line with markers.
    pub bars: bool,
}

/// A chart over layers (x = layer index, names in hover titles), linear or log10 y axis.
pub fn layer_chart(title: &str, y_label: &str, layers: &[String], series: &[Series], log_y: bool, width: usize, height: usize) -> String {
    let (left, right, top, bottom) = (56.0f64, 12.0f64, 28.0f64, 30.0f64);
    let (w, h) = (width as f64, height as f64);
    let tf = |v: f64| if log_y { v.clamp(1.0, LOG_CAP).log10() } else { v };
    let finite: Vec<f64> = series.iter().flat_map(|s| s.values.iter().flatten().copied()).filter(|v| v.is_finite()).map(tf).collect();
    let (mut lo, mut hi) = (finite.iter().cloned().fold(f64::INFINITY, f64::min), finite.iter().cloned().fold(f64::NEG_INFINITY, f64::max));
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    lo = lo.min(0.0);
    if log_y {
        hi = hi.ceil().max(1.0);
        lo = 0.0;
    } else {
        let step = nice_step(hi - lo);
        hi = (hi / step).ceil() * step;
        lo = (lo / step).floor() * step;
    }
    if hi <= lo {
        hi = lo + 1.0;
    }
    let n = layers.len().max(1);
    let px = |i: usize| left + (i as f64 + 0.5) * (w - left - right) / n as f64;
    let py = |v: f64| top + (hi - tf(v).clamp(lo, hi)) / (hi - lo) * (h - top - bottom);
    let mut s = format!(r#"<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">"#);
    let _ = write!(s, r#"<text x="{left}" y="16" font-size="13" font-weight="bold">{}</text>"#, esc(title));
    // Grid and y ticks.
    let ticks: Vec<f64> = if log_y { (lo as i64..=hi as i64).map(|e| e as f64).collect() } else { let st = nice_step(hi - lo); (0..=((hi - lo) / st).round() as i64).map(|k| lo + k as f64 * st).collect() };
    for t in ticks {
        let y = top + (hi - t) / (hi - lo) * (h - top - bottom);
        let label = if log_y { format!("{}{}×", if 10f64.powf(t) >= LOG_CAP { "≥" } else { "" }, fmt_pow10(t)) } else { format!("{t}") };
        let _ = write!(s, r##"<line x1="{left}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##, w - right, left - 4.0, y + 4.0);
    }
    let _ = write!(s, r#"<text transform="translate(12,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#, top + (h - top - bottom) / 2.0, esc(y_label));
    let _ = write!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">layer (in graph order; hover for names)</text>"#, left + (w - left - right) / 2.0, h - 6.0);
    let nb = series.iter().filter(|s| s.bars).count().max(1);
    let slot = (w - left - right) / n as f64;
    let mut bar_k = 0;
    for (k, se) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        if se.bars {
            let bw = (slot * 0.8 / nb as f64).max(0.5);
            for (i, v) in se.values.iter().enumerate() {
                let Some(v) = v.filter(|v| v.is_finite()) else { continue };
                let x = px(i) - slot * 0.4 + bar_k as f64 * bw;
                let (y0, y1) = (py(v), py(if log_y { 1.0 } else { lo.max(0.0) }));
                let _ = write!(s, r#"<rect x="{x:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="{color}"><title>{} — {}: {}</title></rect>"#, y0.min(y1), (y1 - y0).abs().max(0.5), esc(&layers[i]), esc(se.name), fmt_value(v));
                if log_y && v > LOG_CAP {
                    let _ = write!(s, r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle" fill="{color}">▲</text>"#, x + bw / 2.0, y0 - 2.0);
                }
            }
            bar_k += 1;
        } else {
            let mut d = String::new();
            let mut pen_down = false;
            for (i, v) in se.values.iter().enumerate() {
                match v.filter(|v| v.is_finite()) {
                    Some(v) => {
                        let _ = write!(d, "{}{:.1} {:.1}", if pen_down { "L" } else { "M" }, px(i), py(v));
                        pen_down = true;
                    }
                    None => pen_down = false,
                }
            }
            let _ = write!(s, r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.5"/>"#);
            for (i, v) in se.values.iter().enumerate() {
                let Some(v) = v.filter(|v| v.is_finite()) else { continue };
                let _ = write!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="2.2" fill="{color}"><title>{} — {}: {}</title></circle>"#, px(i), py(v), esc(&layers[i]), esc(se.name), fmt_value(v));
            }
        }
    }
    // Legend.
    let mut lx = w - right - 10.0;
    for (k, se) in series.iter().enumerate().rev() {
        lx -= 14.0 + 6.5 * se.name.chars().count() as f64;
        let _ = write!(s, r#"<rect x="{lx:.1}" y="8" width="10" height="10" fill="{}"/><text x="{:.1}" y="17">{}</text>"#, COLORS[k % COLORS.len()], lx + 13.0, esc(se.name));
    }
    s.push_str("</svg>");
    s
}

fn nice_step(span: f64) -> f64 {
    let raw = (span / 6.0).max(1e-9);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|&s| s >= raw).unwrap_or(10.0 * p)
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 1e5 { format!("{v:.1e}") } else { format!("{v:.1}") }
}

fn fmt_pow10(e: f64) -> String {
    let v = 10f64.powf(e);
    if v >= 1e4 { format!("1e{}", e as i64) } else { format!("{v}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(esc(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn strip_bins_keep_outliers() {
        let mut r = vec![(-0.01f32, 0.01f32); 1000];
        r[777] = (-3.0, 2.0);
        let s = channel_strip(&r, 100, 30);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        // The outlier channel is in the red path, the others in the blue one.
        assert_eq!(s.matches("<path").count(), 2, "{s}");
        assert!(s.contains(COLORS[3]));
    }

    #[test]
    fn chart_escapes_layer_names() {
        let layers = vec!["<script>".to_string(), "b".to_string()];
        let s = layer_chart("t", "dB", &layers, &[Series { name: "x", values: vec![Some(1.0), None], bars: false }], false, 300, 120);
        assert!(!s.contains("<script>"));
        assert!(s.contains("&lt;script&gt;"));
    }
}
