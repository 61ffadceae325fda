//! `subq bench`: latency and throughput of one model on random input, plus peak memory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use rayon::prelude::*;
use serde::Serialize;
use subq_eval::{image_input_shape, RunModel};
use subq_ir::Graph;
use subq_tensor::Tensor;

use crate::common::load_graph;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// ONNX model to time.
    #[arg(long)]
    pub model: PathBuf,
    /// Timed runs (each run is one batch).
    #[arg(long, default_value_t = 100)]
    pub runs: usize,
    /// Untimed runs before timing starts.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// Images per run. Images of a batch run in parallel on the `--threads` pool, so batch > 1
    /// measures throughput; batch 1 measures single-image latency.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Print the results as one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Instead of timing whole runs, time every step of the int8 engine (batch 1, after the
    /// warm-up) and print the time per op kind and the slowest layers (QDQ models only).
    #[arg(long)]
    pub profile: bool,
}

/// The engine that runs `g`. This is the one place to change when another engine (e.g. the
/// int8 executor for QDQ models) implements [`RunModel`].
fn engine<'g>(g: &'g Graph) -> Result<Box<dyn RunModel + 'g>> {
    Ok(subq_eval::engine_for(g)?)
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub engine: String,
    /// Integer kernel set chosen at run time (`portable`, `avx2`, `avx2+avx-vnni`,
    /// `avx2+avx-vnni+avx512-vnni`).
    pub int8_kernels: String,
    /// FP32 kernel set chosen at run time (`portable`, `avx2+fma`, `avx2+fma+avx512`).
    pub fp32_kernels: String,
    /// Shape of one run's input per image: [1, C, H, W].
    pub input_shape: Vec<usize>,
    pub batch: usize,
    /// Size of the rayon pool (`--threads`).
    pub threads: usize,
    pub warmup: usize,
    pub runs: usize,
    /// Wall time of one run (one batch), in milliseconds.
    pub median_ms: f64,
    pub p10_ms: f64,
    pub p90_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    /// batch / median run time.
    pub images_per_s: f64,
    /// Peak resident set size of the process (VmHWM), in MiB; null where /proc is unavailable.
    pub peak_rss_mib: Option<f64>,
}

/// Percentile `q` (0..=100) of sorted values, linearly interpolated (numpy's default).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Peak resident set size (VmHWM) in MiB, from /proc/self/status.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Deterministic pseudo-random values in [-1, 1) (xorshift64*), roughly the range of a
/// normalized image.
fn random_input(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D);
            ((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let g = load_graph(&a.model)?;
    let (c, h, w) = image_input_shape(&g)?;
    if a.profile {
        return profile(&a, &g, (c, h, w));
    }
    let model = engine(&g)?;
    let shape = vec![1, c, h, w];
    let inputs: Vec<Tensor> = (0..a.batch)
        .map(|i| Tensor::f32(shape.clone(), random_input(c * h * w, 0x5EED + i as u64)).map_err(|e| anyhow::anyhow!("{e}")))
        .collect::<Result<_>>()?;

    // RunModel::run takes its input by value: the copies are made before the clock starts.
    let run_once = |mut batch: Vec<Tensor>| -> Result<()> {
        if batch.len() == 1 {
            model.run(batch.pop().unwrap())?;
        } else {
            batch.into_par_iter().try_for_each(|x| model.run(x).map(drop))?;
        }
        Ok(())
    };
    for _ in 0..a.warmup {
        run_once(inputs.clone()).with_context(|| format!("running {}", a.model.display()))?;
    }
    let mut times = Vec::with_capacity(a.runs);
    for _ in 0..a.runs {
        let batch = inputs.clone();
        let t0 = Instant::now();
        run_once(batch).with_context(|| format!("running {}", a.model.display()))?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let mean_ms = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(|x, y| x.total_cmp(y));
    let median_ms = percentile(&times, 50.0);
    let report = BenchReport {
        model: a.model.display().to_string(),
        engine: model.describe(),
        int8_kernels: subq_runtime::kernel_set().to_string(),
        fp32_kernels: subq_runtime::fp32_kernel_set().to_string(),
        input_shape: shape,
        batch: a.batch,
        threads: rayon::current_num_threads(),
        warmup: a.warmup,
        runs: a.runs,
        median_ms,
        p10_ms: percentile(&times, 10.0),
        p90_ms: percentile(&times, 90.0),
        mean_ms,
        min_ms: times[0],
        images_per_s: a.batch as f64 * 1e3 / median_ms,
        peak_rss_mib: peak_rss_mib(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let per = if a.batch == 1 { "per image".to_string() } else { format!("per batch of {}", a.batch) };
    println!("model:      {}", report.model);
    println!("engine:     {}", report.engine);
    println!("kernels:    int8 {}, fp32 {} (chosen at run time; SUBQ_SIMD=avx512, avxvnni, avx2 or portable to compare)", report.int8_kernels, report.fp32_kernels);
    println!("input:      {:?} × batch {}", report.input_shape, report.batch);
    println!("threads:    {}", report.threads);
    println!("runs:       {} (+{} warm-up)", report.runs, report.warmup);
    println!("latency:    median {:.3} ms, p10 {:.3} ms, p90 {:.3} ms ({per})", report.median_ms, report.p10_ms, report.p90_ms);
    println!("throughput: {:.1} images/s", report.images_per_s);
    println!("peak RSS:   {}", report.peak_rss_mib.map(|m| format!("{m:.1} MiB")).unwrap_or_else(|| "n/a".into()));
    Ok(())
}

/// Time per step, summed over runs: (kind, detail, total seconds).
#[derive(Debug, Serialize)]
pub struct StepProfile {
    pub kind: String,
    pub detail: String,
    pub ms: f64,
}

/// Per-kind totals (ms per image, share, step count) from per-step times, largest first.
fn by_kind(steps: &[StepProfile]) -> Vec<(String, f64, usize)> {
    let mut kinds: Vec<(String, f64, usize)> = Vec::new();
    for s in steps {
        match kinds.iter_mut().find(|k| k.0 == s.kind) {
            Some(k) => {
                k.1 += s.ms;
                k.2 += 1;
            }
            None => kinds.push((s.kind.clone(), s.ms, 1)),
        }
    }
    kinds.sort_by(|x, y| y.1.total_cmp(&x.1));
    kinds
}

/// `subq bench --profile`: every engine step timed over `runs` single-image runs (the int8
/// engine's steps for a QDQ model, the FP32 executor's nodes otherwise).
fn profile(a: &BenchArgs, g: &Graph, (c, h, w): (usize, usize, usize)) -> Result<()> {
    let x = Tensor::f32(vec![1, c, h, w], random_input(c * h * w, 0x5EED)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut times = Vec::new();
    let steps: Vec<StepProfile> = if g.is_quantized() {
        let e = subq_runtime::Int8Engine::new(g)?;
        for _ in 0..a.warmup {
            e.run(x.clone())?;
        }
        for _ in 0..a.runs {
            e.run_profiled(x.clone(), &mut times)?;
        }
        e.step_labels().into_iter().zip(&times).map(|((kind, detail), &t)| StepProfile { kind, detail, ms: t * 1e3 / a.runs as f64 }).collect()
    } else {
        let e = subq_runtime::Fp32Executor::new(g);
        for _ in 0..a.warmup {
            e.run(vec![x.clone()])?;
        }
        for _ in 0..a.runs {
            e.run_profiled(vec![x.clone()], &mut times)?;
        }
        // Nodes fused into a conv have no time of their own.
        e.node_labels().into_iter().zip(&times).filter_map(|(label, &t)| label.map(|(kind, detail)| StepProfile { kind, detail, ms: t * 1e3 / a.runs as f64 })).collect()
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&steps)?);
        return Ok(());
    }
    let total: f64 = steps.iter().map(|s| s.ms).sum();
    println!("model:   {}", a.model.display());
    println!("threads: {}, runs: {} (+{} warm-up), steps: {}", rayon::current_num_threads(), a.runs, a.warmup, steps.len());
    println!("total of the steps: {total:.3} ms per image (mean)\n");
    println!("{:<28} {:>9} {:>7} {:>6}", "op kind", "ms", "share", "steps");
    for (k, ms, n) in by_kind(&steps) {
        println!("{k:<28} {ms:>9.3} {:>6.1}% {n:>6}", 100.0 * ms / total.max(f64::MIN_POSITIVE));
    }
    let mut order: Vec<usize> = (0..steps.len()).collect();
    order.sort_by(|&x, &y| steps[y].ms.total_cmp(&steps[x].ms));
    println!("\nslowest steps:");
    for &i in order.iter().take(15) {
        let s = &steps[i];
        println!("  #{i:<4} {:<28} {:<24} {:>8.3} ms", s.kind, s.detail, s.ms);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 5.0);
        assert!((percentile(&v, 10.0) - 1.4).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 90.0), 7.0);
    }

    #[test]
    fn by_kind_sums_and_sorts() {
        let s = |k: &str, ms| StepProfile { kind: k.into(), detail: String::new(), ms };
        let k = by_kind(&[s("add", 1.0), s("conv 1×1", 2.0), s("add", 2.5)]);
        assert_eq!(k, vec![("add".to_string(), 3.5, 2), ("conv 1×1".to_string(), 2.0, 1)]);
    }

    #[test]
    fn random_input_is_in_range_and_deterministic() {
        let a = random_input(1000, 1);
        assert!(a.iter().all(|&x| (-1.0..1.0).contains(&x)));
        assert_eq!(a, random_input(1000, 1));
        assert_ne!(a, random_input(1000, 2));
    }
}
