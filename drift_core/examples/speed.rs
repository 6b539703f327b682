//! Rust-level breakdown of the hot paths (no Python):
//! `cargo run --release --no-default-features --example speed`
use _drift_core::sketch::numeric::{NumericReference, NumericSketch};
use std::time::Instant;

fn main() {
    let mut s = 12345u64;
    let mut uni = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut normal = || {
        let (u, v) = (uni(), uni());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    let reference: Vec<f64> = (0..1_000_000).map(|_| normal()).collect();
    let x: Vec<f64> = (0..10_000_000).map(|_| normal() * 1.1 + 0.1).collect();
    let r = NumericReference::build(&reference, 1024, 10).unwrap();
    {
        let mut sk = NumericSketch::new(&r);
        sk.update(&r, &x[..1000]).unwrap();
        let t = Instant::now();
        let mut acc = 0.0;
        let reps = std::env::var("REPS")
            .map(|v| v.parse().unwrap())
            .unwrap_or(10_000);
        for _ in 0..reps {
            acc += std::hint::black_box(_drift_core::compare::compare_numeric(&r, &sk).unwrap()).ks;
        }
        println!(
            "compare_numeric: {:.2} us ({acc})",
            t.elapsed().as_secs_f64() / reps as f64 * 1e6
        );
        let t = Instant::now();
        let mut acc = 0.0;
        for i in 0..10_000 {
            acc +=
                _drift_core::compare::ks::ks_2samp_pvalue(0.03 + i as f64 * 1e-7, 1_000_000, 1000);
        }
        println!(
            "ks_2samp_pvalue: {:.2} us ({acc})",
            t.elapsed().as_secs_f64() / 1e4 * 1e6
        );
    }
    for _ in 0..3 {
        let mut sk = NumericSketch::new(&r);
        let t = Instant::now();
        sk.update(&r, &x).unwrap();
        let dt = t.elapsed().as_secs_f64();
        println!("update: {:.0} M values/s", x.len() as f64 / dt / 1e6);
        let mut counts = vec![0u64; r.index().n_slots()];
        let t = Instant::now();
        r.index().count_into(&x, &mut counts);
        let dt = t.elapsed().as_secs_f64();
        println!(
            "count_into only: {:.0} M values/s",
            x.len() as f64 / dt / 1e6
        );
    }
}

#[allow(dead_code)]
fn unused() {}
