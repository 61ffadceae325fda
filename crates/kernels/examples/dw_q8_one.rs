use subq_kernels::q8::{self, ConvPart, FloatEpilogue, Requant, Scratch};
use subq_kernels::ConvGeometry;
fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (c, hw, k, s, reps) = (a[0], a[1], a[2], a[3], a[4]);
    let pad = k / 2;
    let o = (hw + 2 * pad - k) / s + 1;
    let g = ConvGeometry { in_c: c, in_h: hw, in_w: hw, out_c: c, out_h: o, out_w: o, kernel: [k, k], strides: [s, s], dilations: [1, 1], pad_top: pad, pad_left: pad, group: c };
    let taps = k * k;
    let x: Vec<u8> = (0..g.in_c * g.in_h * g.in_w).map(|i| ((i * 7919) % 256) as u8).collect();
    let w: Vec<i16> = (0..g.out_c * taps).map(|i| ((i * 104729) % 255) as i16 - 127).collect();
    let reals: Vec<f64> = (0..g.out_c).map(|c| 1e-2 * (1.0 + (c % 7) as f64 / 7.0)).collect();
    let (requant, shift) = Requant::common(&reals);
    let mult: Vec<i64> = requant.iter().map(|r| r.multiplier).collect();
    let bias: Vec<i64> = (0..g.out_c).map(|c| (c as i64 - 50) << shift).collect();
    let parts = [ConvPart::new(w, requant, &g)];
    let epi = FloatEpilogue::new(&mult, &bias, shift, 0, 0, 255, None);
    println!("epi ok: {}", epi.as_ref().map_or(0, |e| e.ok.iter().filter(|&&b| b).count()));
    let mut out = vec![0u8; g.out_c * g.out_h * g.out_w];
    let mut scratch = Scratch::default();
    let t0 = std::time::Instant::now();
    for _ in 0..reps {
        q8::conv_q8_epi(&x, 128, &parts, &bias, shift, 0, 0, 255, None, epi.as_ref(), &g, &mut out, &mut scratch);
    }
    println!("{:.1} us", t0.elapsed().as_secs_f64() / reps as f64 * 1e6);
}
