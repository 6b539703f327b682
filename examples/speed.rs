//! Rust-level breakdown of the sketch update (no Python): `cargo run --release --example speed --no-default-features`
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
