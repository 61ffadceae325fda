use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::common::load_graph;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// ONNX model to inspect.
    #[arg(long)]
    pub model: PathBuf,
    /// Show the weights as stored, without folding BatchNormalization into the convolutions
    /// first (folded weights are what quantization sees).
    #[arg(long)]
    pub no_fold: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}G", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        n => n.to_string(),
    }
}

pub fn run(a: InspectArgs) -> Result<()> {
    let mut g = load_graph(&a.model)?;
    let folded = if a.no_fold || g.is_quantized() { 0 } else { subq_transforms::fold_batch_norms(&mut g)? };
    let info = subq_eval::inspect::inspect(&g);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("{} — {} nodes{}", a.model.display(), g.nodes.len(), if folded > 0 { format!(" ({folded} BatchNormalization folded into convolutions)") } else { String::new() });
    println!("{:<4} {:<34} {:<20} {:<16} {:<16} {:>8} {:>8} {:>9} {:>9} {:>9}", "#", "node", "kind", "input", "output", "params", "MACs", "w min", "w max", "ch spread");
    for (i, l) in info.layers.iter().enumerate() {
        let f = |v: Option<f32>| v.map(|x| format!("{x:.3}")).unwrap_or_default();
        let spread = l.channel_range_spread.map(|x| if x.is_finite() { format!("{x:.1}x") } else { "inf".into() }).unwrap_or_default();
        let name: String = l.node.chars().take(34).collect();
        println!("{:<4} {:<34} {:<20} {:<16} {:<16} {:>8} {:>8} {:>9} {:>9} {:>9}", i, name, l.kind, format!("{:?}", l.input_shape), format!("{:?}", l.output_shape), human(l.params), human(l.macs), f(l.weight_min), f(l.weight_max), spread);
    }
    println!("total: {} parameters, {} MACs, {:.2} MB as FP32", human(info.total_params), human(info.total_macs), info.fp32_bytes as f64 / 1e6);
    println!("ch spread = largest / smallest per-output-channel weight range: the factor by which one per-tensor grid is too coarse for the narrowest channel.");
    Ok(())
}
