use anyhow::{Context, Result};
use clap::Args;
use subq_calib::{list_images, Preprocess, Synsets};
use subq_eval::{evaluate, image_input_shape, EvalOptions};
use subq_runtime::Fp32Executor;

use crate::commands::eval::print_report;
use crate::common::{assets_dir, load_graph};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Evaluate only the first N bundled eval images (default: all 400).
    #[arg(long)]
    pub limit: Option<usize>,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let assets = assets_dir();
    let model = assets.join("models/efficientnet_lite0.onnx");
    println!("subq demo: EfficientNet-Lite0 (bundled) on the bundled ImageNet eval images\n");
    let g = load_graph(&model)?;
    let (_, h, w) = image_input_shape(&g)?;
    let synsets = Synsets::load(&assets.join("imagenet_synsets.txt"))?;
    let mut items = list_images(&assets.join("images/eval")).context("bundled images missing: is this a full clone?")?;
    if let Some(l) = a.limit {
        items.truncate(l);
    }
    let exec = Fp32Executor::new(&g);
    let opts = EvalOptions { preprocess: Preprocess::preset("efficientnet-lite")?, height: h, width: w, synsets: Some(&synsets), reference: None, skip_unreadable: false, progress: true };
    let report = evaluate(&exec, &items, &opts)?;
    print_report(&report);
    Ok(())
}
