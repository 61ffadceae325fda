//! Activation-range observers. Each sees every calibration batch of one tensor and proposes the
//! [min, max] that its quantization grid should cover.
//!
//! Min-max needs one pass. Percentile and MSE need a histogram, whose bin edges must be fixed
//! before the data is seen, so they take the range of a first min-max pass and histogram the
//! data in a second pass.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObserverKind {
    /// Smallest and largest value seen.
    MinMax,
    /// Drop this fraction of mass at each end (e.g. 1e-4 keeps the 0.01%–99.99% percentiles).
    Percentile(f64),
    /// The range minimizing the expected squared quantization error (rounding + clipping) of a
    /// uint8 grid over the observed histogram.
    Mse,
}

impl ObserverKind {
    pub fn needs_histogram(&self) -> bool {
        !matches!(self, ObserverKind::MinMax)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MinMax {
    pub min: f32,
    pub max: f32,
    pub seen: bool,
}

impl MinMax {
    pub fn observe(&mut self, data: &[f32]) {
        let (lo, hi) = data.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        if !self.seen {
            (self.min, self.max, self.seen) = (lo, hi, true);
        } else {
            self.min = self.min.min(lo);
            self.max = self.max.max(hi);
        }
    }

    pub fn merge(&mut self, other: &MinMax) {
        if other.seen {
            self.observe(&[other.min, other.max]);
        }
    }
}

pub const HISTOGRAM_BINS: usize = 2048;

/// Fixed-range histogram over [lo, hi].
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub lo: f32,
    pub hi: f32,
    pub counts: Vec<u64>,
}

impl Histogram {
    pub fn new(lo: f32, hi: f32) -> Histogram {
        Histogram { lo, hi: if hi > lo { hi } else { lo + 1e-6 }, counts: vec![0; HISTOGRAM_BINS] }
    }

    fn bin_width(&self) -> f64 {
        (self.hi as f64 - self.lo as f64) / self.counts.len() as f64
    }

    pub fn observe(&mut self, data: &[f32]) {
        let (lo, w, last) = (self.lo as f64, self.bin_width(), self.counts.len() - 1);
        for &x in data {
            // Truncation is the floor here: negatives go to bin 0 first. (`floor` is a library
            // call on x86-64 without SSE4.1, and this loop runs over every calibration value.)
            let t = (x as f64 - lo) / w;
            let b = if t < 0.0 { 0 } else { (t as usize).min(last) };
            self.counts[b] += 1;
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    fn center(&self, i: usize) -> f64 {
        self.lo as f64 + (i as f64 + 0.5) * self.bin_width()
    }

    /// Range keeping all but `tail` of the mass at each end.
    pub fn percentile_range(&self, tail: f64) -> (f32, f32) {
        let total: u64 = self.counts.iter().sum();
        let cut = (tail * total as f64).floor() as u64;
        let w = self.bin_width();
        let (mut acc, mut lo_bin) = (0u64, 0);
        for (i, &c) in self.counts.iter().enumerate() {
            acc += c;
            if acc > cut {
                lo_bin = i;
                break;
            }
        }
        let (mut acc, mut hi_bin) = (0u64, self.counts.len() - 1);
        for (i, &c) in self.counts.iter().enumerate().rev() {
            acc += c;
            if acc > cut {
                hi_bin = i;
                break;
            }
        }
        ((self.lo as f64 + lo_bin as f64 * w) as f32, (self.lo as f64 + (hi_bin + 1) as f64 * w) as f32)
    }

    /// Expected squared error of quantizing the histogram's mass onto a `levels`-step grid over
    /// [lo, hi]: rounding noise step²/12 inside, squared distance to the nearest end outside.
    pub fn quantization_error(&self, lo: f64, hi: f64, levels: usize) -> f64 {
        let step = (hi - lo) / (levels - 1) as f64;
        let mut err = 0.0;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let x = self.center(i);
            let e = if x < lo {
                (lo - x).powi(2)
            } else if x > hi {
                (x - hi).powi(2)
            } else {
                step * step / 12.0
            };
            err += c as f64 * e;
        }
        err
    }

    /// Range minimizing [`Self::quantization_error`] for a uint8 grid. Both ends shrink towards
    /// zero independently on a grid of candidates; an end at 0 (e.g. after ReLU) stays at 0.
    pub fn mse_range(&self) -> (f32, f32) {
        let (lo, hi) = (self.lo.min(0.0) as f64, self.hi.max(0.0) as f64);
        let fractions: Vec<f64> = (1..=100).map(|i| i as f64 / 100.0).collect();
        // With nothing below zero (every ReLU output) all low fractions give the same low end:
        // one evaluation gives the same result as a hundred.
        let low_fractions = if lo == 0.0 { &fractions[..1] } else { &fractions[..] };
        let mut best = (f64::INFINITY, lo, hi);
        // Coarse joint search, then refine the low end with the high end fixed.
        for &fh in &fractions {
            for &fl in low_fractions.iter().step_by(5) {
                let (l, h) = (lo * fl, hi * fh);
                if h - l <= 0.0 {
                    continue;
                }
                let e = self.quantization_error(l, h, 256);
                if e < best.0 {
                    best = (e, l, h);
                }
            }
        }
        let h = best.2;
        for &fl in low_fractions {
            let l = lo * fl;
            if h - l > 0.0 {
                let e = self.quantization_error(l, h, 256);
                if e < best.0 {
                    best = (e, l, h);
                }
            }
        }
        (best.1 as f32, best.2 as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minmax_tracks_extremes_across_batches() {
        let mut m = MinMax::default();
        m.observe(&[1.0, 2.0]);
        m.observe(&[-3.0, 0.5]);
        assert_eq!((m.min, m.max), (-3.0, 2.0));
    }

    #[test]
    fn percentile_drops_outliers() {
        let mut data: Vec<f32> = (0..10000).map(|i| i as f32 / 10000.0).collect();
        data.push(100.0);
        let mut h = Histogram::new(0.0, 100.0);
        h.observe(&data);
        let (lo, hi) = h.percentile_range(1e-3);
        assert!(lo < 0.1 && hi < 1.2, "{lo} {hi}");
    }

    #[test]
    fn mse_clips_a_long_tail_but_not_a_uniform_range() {
        // Uniform data: the full range is optimal (clipping costs more than it saves).
        let uniform: Vec<f32> = (0..100000).map(|i| i as f32 / 100000.0).collect();
        let mut h = Histogram::new(0.0, 1.0);
        h.observe(&uniform);
        let (_, hi) = h.mse_range();
        assert!(hi > 0.97, "uniform hi {hi}");
        // Bulk in [0, 0.5) plus one outlier at 50. Error(h) ≈ (50 − h)² + 1e5·(h/255)²/12, whose
        // minimum is at h = 50 / (1 + 1e5/(255²·12)) ≈ 44.3: one outlier is worth keeping mostly.
        let mut tail: Vec<f32> = (0..100000).map(|i| ((i % 1000) as f32 / 1000.0) * 0.5).collect();
        tail.push(50.0);
        let mut h = Histogram::new(0.0, 50.0);
        h.observe(&tail);
        let (lo, hi) = h.mse_range();
        assert_eq!(lo, 0.0);
        assert!((43.0..46.0).contains(&hi), "tail hi {hi}");
        // The search finds the brute-force optimum over high ends (low end fixed at 0).
        let brute = (1..=1000).map(|i| h.quantization_error(0.0, 50.0 * i as f64 / 1000.0, 256)).fold(f64::INFINITY, f64::min);
        assert!(h.quantization_error(0.0, hi as f64, 256) <= brute * 1.01);
    }
}
