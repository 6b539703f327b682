//! Rust-level breakdown of the hot paths (no Python):
//! `cargo run --release --no-default-features --example speed`
use _drift_core::compare::{compare_many, compare_numeric, ks::ks_2samp_pvalue, Pair};
use _drift_core::sketch::numeric::{update_many_rows, NumericReference, NumericSketch};
use std::time::Instant;

/// xorshift uniforms in (0, 1) and what the benchmarks draw from them.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    fn cauchy(&mut self) -> f64 {
        (std::f64::consts::PI * (self.uniform() - 0.5)).tan()
    }
}

fn main() {
    let mut rng = Rng(12345);
    let reference: Vec<f64> = (0..1_000_000).map(|_| rng.normal()).collect();
    let x: Vec<f64> = (0..10_000_000).map(|_| rng.normal() * 1.1 + 0.1).collect();
    let r = NumericReference::build(&reference, 1024, 10).unwrap();
    {
        let mut sk = NumericSketch::new(&r);
        sk.update(&r, &x[..1000]).unwrap();
        let t = Instant::now();
        let mut acc = 0.0;
        let reps = 10_000;
        for _ in 0..reps {
            acc += std::hint::black_box(compare_numeric(&r, &sk).unwrap()).ks;
        }
        println!(
            "compare_numeric (1000-value window): {:.2} us ({acc:.1})",
            t.elapsed().as_secs_f64() / reps as f64 * 1e6
        );
        let t = Instant::now();
        let mut acc = 0.0;
        for i in 0..10_000 {
            acc += ks_2samp_pvalue(0.03 + i as f64 * 1e-7, 1_000_000, 1000);
        }
        println!(
            "ks_2samp_pvalue: {:.2} us ({acc:.1})",
            t.elapsed().as_secs_f64() / 1e4 * 1e6
        );
    }
    window_report(&mut rng);
    let cauchy_ref: Vec<f64> = (0..1_000_000).map(|_| rng.cauchy()).collect();
    let cauchy: Vec<f64> = (0..10_000_000).map(|_| rng.cauchy()).collect();
    let rc = NumericReference::build(&cauchy_ref, 1024, 10).unwrap();
    for (name, r, x) in [("normal", &r, &x), ("cauchy", &rc, &cauchy)] {
        println!("{name} lookup: {}", r.index().describe());
        let mut best = (0.0f64, 0.0f64);
        for _ in 0..3 {
            let mut sk = NumericSketch::new(r);
            let t = Instant::now();
            sk.update(r, x).unwrap();
            let update = x.len() as f64 / t.elapsed().as_secs_f64() / 1e6;
            let mut counts = vec![0u32; r.index().n_slots()];
            let t = Instant::now();
            r.index().count_into(x, &mut counts);
            let count = x.len() as f64 / t.elapsed().as_secs_f64() / 1e6;
            best = (best.0.max(update), best.1.max(count));
        }
        println!(
            "{name} update: {:.0} M values/s (count_into only: {:.0} M values/s)",
            best.0, best.1
        );
    }
}

/// The window report of the Python benchmark without Python: 1000 references of 10k rows;
/// per window, new sketches, 1000 rows from a row-major matrix, the comparisons.
fn window_report(rng: &mut Rng) {
    let (features, rows, ref_rows) = (1000, 1000, 10_000);
    let scale: Vec<f64> = (0..features)
        .map(|j| 0.5 + 1.5 * j as f64 / features as f64)
        .collect();
    let refs: Vec<NumericReference> = (0..features)
        .map(|j| {
            let v: Vec<f64> = (0..ref_rows).map(|_| rng.normal() * scale[j]).collect();
            NumericReference::build(&v, 1024, 10).unwrap()
        })
        .collect();
    println!("window references' lookup: {}", refs[0].index().describe());
    let matrix: Vec<f64> = (0..rows * features)
        .map(|i| (rng.normal() + 0.05) * scale[i % features])
        .collect();
    let mut best = [f64::MAX; 4];
    let mut acc = 0.0;
    for _ in 0..30 {
        let t0 = Instant::now();
        let mut sketches: Vec<NumericSketch> = refs.iter().map(NumericSketch::new).collect();
        let t1 = Instant::now();
        let mut targets: Vec<(&mut NumericSketch, &NumericReference)> =
            sketches.iter_mut().zip(&refs).collect();
        update_many_rows(&mut targets, &matrix).unwrap();
        let t2 = Instant::now();
        let pairs: Vec<Pair> = refs
            .iter()
            .zip(&sketches)
            .map(|(r, s)| Pair::Numeric(r, s))
            .collect();
        for c in compare_many(&pairs) {
            if let Ok(_drift_core::compare::Comparison::Numeric(c)) = c {
                acc += c.ks;
            }
        }
        let t3 = Instant::now();
        drop(pairs);
        drop(sketches);
        let t4 = Instant::now();
        for (b, (a, z)) in best
            .iter_mut()
            .zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4)])
        {
            *b = b.min((z - a).as_secs_f64() * 1e3);
        }
    }
    println!(
        "window report, {features} features x {rows} rows, best of 30: new sketches {:.2} ms, \
         update_many_rows {:.2} ms, compare_many {:.2} ms, drop {:.2} ms ({acc:.1})",
        best[0], best[1], best[2], best[3]
    );
}
