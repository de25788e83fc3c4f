use super::*;

fn reference(
    a: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
    in_out: bool,
) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for kk in 0..k {
                let wv = if in_out { w[kk * n + j] } else { w[j * k + kk] };
                s += a[i * k + kk] as f64 * wv as f64;
            }
            c[i * n + j] = s as f32 + bias.map_or(0.0, |b| b[j]);
        }
    }
    c
}

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

fn isas() -> Vec<Isa> {
    let mut v = vec![Isa::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            v.push(Isa::Avx2);
        }
        if is_x86_feature_detected!("avx512f") {
            v.push(Isa::Avx512);
        }
    }
    v
}

#[test]
fn matches_reference_on_odd_shapes() {
    let mut seed = 1;
    for &(m, n, k) in &[
        (1, 1, 1),
        (1, 33, 7),
        (5, 17, 3),
        (13, 40, 200),
        (25, 65, 300),
        (7, 96, 385),
        (150, 70, 64),
    ] {
        let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
        let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
        let bias: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
        for in_out in [false, true] {
            for with_bias in [false, true] {
                let want = reference(&a, &w, with_bias.then_some(&bias[..]), m, n, k, in_out);
                for isa in isas() {
                    // Small blocks so K blocking and M blocking both happen.
                    for bl in [
                        Blocking::default_for(isa),
                        Blocking {
                            kc: 64,
                            mc: 2 * isa.mr(),
                        },
                    ] {
                        let packed = pack_b(&w, k, n, in_out, PACK_NR);
                        let mut c = vec![f32::NAN; m * n];
                        let g = Sgemm {
                            m,
                            n,
                            k,
                            a: a.as_ptr(),
                            lda: k,
                            b: packed.as_ptr(),
                            bias: if with_bias {
                                bias.as_ptr()
                            } else {
                                std::ptr::null()
                            },
                            c: c.as_mut_ptr(),
                            ldc: n,
                        };
                        unsafe { sgemm(&g, isa, bl) };
                        for (i, (x, y)) in c.iter().zip(&want).enumerate() {
                            assert!(
                                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                                "{isa:?} {bl:?} m{m} n{n} k{k} in_out {in_out} bias {with_bias}: [{}, {}] got {x} want {y}",
                                i / n,
                                i % n
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn thread_count_does_not_change_results() {
    let (m, n, k) = (37, 200, 300);
    let mut seed = 9;
    let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
    let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
    let isa = detected();
    let packed = pack_b(&w, k, n, false, PACK_NR);
    let run = |threads: usize| {
        crate::threads::set_threads(threads);
        let mut c = vec![0f32; m * n];
        let g = Sgemm {
            m,
            n,
            k,
            a: a.as_ptr(),
            lda: k,
            b: packed.as_ptr(),
            bias: std::ptr::null(),
            c: c.as_mut_ptr(),
            ldc: n,
        };
        unsafe { sgemm(&g, isa, Blocking::default_for(isa)) };
        c
    };
    let one = run(1);
    let two = run(2);
    crate::threads::set_threads(0);
    assert_eq!(one, two);
}
