//! `subq`: read an FP32 ONNX CNN, quantize it to 8 bits (per-tensor, per-channel, subtensor),
//! write a QDQ ONNX file, run it on subq's engines and measure it.

mod commands;
mod common;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "subq", version, about = "Post-training int8 quantization for mobile CNNs (MobileNet, EfficientNet-Lite)", long_about = "subq reads an FP32 ONNX model, analyses and quantizes it (per-tensor, per-channel or per-tensor with subtensor splits), writes a standard QDQ ONNX file and evaluates it on its own engines.\n\nStart with `subq demo` (bundled model and images), then `subq inspect --model M.onnx` and `subq eval --help`.")]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score a model on an image folder: top-1/top-5 against labels, agreement and SQNR against a reference model.
    Eval(commands::eval::EvalArgs),
    /// Per-layer table: op, shapes, parameters, MACs, weight ranges and per-channel range spread.
    Inspect(commands::inspect::InspectArgs),
    /// Calibrate on images and write a quantized QDQ ONNX model.
    Quantize(commands::quantize::QuantizeArgs),
    /// Table of schemes for one model: FP32, per-channel, per-tensor, CLE + bias correction, subtensor, data-free subtensor.
    Compare(commands::compare::CompareArgs),
    /// Run the main job on the bundled model and images (no arguments needed).
    Demo(commands::demo::DemoArgs),
    /// Measure latency: median/p10/p90 per image, threads, peak memory.
    Bench(commands::bench::BenchArgs),
    /// Write an HTML report (OUT/index.html): per-channel weight ranges before/after CLE, per-layer SQNR per scheme, split decisions, the compare table, layer sensitivity.
    Report(commands::report::ReportArgs),
    /// Rank layers by the logits SQNR of quantizing each one alone (per-tensor), worst first.
    Sensitivity(commands::sensitivity::SensitivityArgs),
}

fn main() {
    let cli = Cli::parse();
    if let Some(t) = cli.threads {
        // Only fails if a pool already exists, which cannot happen this early.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(t.max(1)).build_global();
    }
    let result = match cli.command {
        Command::Eval(a) => commands::eval::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Demo(a) => commands::demo::run(a),
        Command::Quantize(a) => commands::quantize::run(a),
        Command::Compare(a) => commands::compare::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Report(a) => commands::report::run(a),
        Command::Sensitivity(a) => commands::sensitivity::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {}", common::error_chain(&e));
        std::process::exit(1);
    }
}
