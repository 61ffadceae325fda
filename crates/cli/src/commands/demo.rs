use anyhow::Result;
use clap::Args;

use crate::commands::compare::{self, CompareArgs};
use crate::common::{assets_dir, PreprocessArgs};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Evaluate only the first N bundled eval images (default: all 400).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use only the first N bundled calibration images (default: all 100).
    #[arg(long)]
    pub calib_limit: Option<usize>,
}

/// `subq compare` on the bundled EfficientNet-Lite0 with the bundled calibration and evaluation
/// images: FP32, per-channel, per-tensor, per-tensor + CLE + bias correction, subtensor and
/// data-free subtensor side by side.
pub fn run(a: DemoArgs) -> Result<()> {
    let assets = assets_dir();
    println!("subq demo: EfficientNet-Lite0 (bundled), 100 calibration and 400 evaluation ImageNet images (bundled)\n");
    compare::run(CompareArgs {
        model: assets.join("models/efficientnet_lite0.onnx"),
        calib: assets.join("images/calib"),
        images: assets.join("images/eval"),
        labels: Some(assets.join("imagenet_synsets.txt")),
        calib_limit: a.calib_limit,
        limit: a.limit,
        latency_runs: 30,
        json: None,
        markdown: None,
        quantize_outputs: false,
        preprocess: PreprocessArgs { preset: Some("efficientnet-lite".into()), ..Default::default() },
    })
}
