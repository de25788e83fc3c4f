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
        (128, 40, 50),
        (1, 420, 300),
    ] {
        let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
        let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
        let bias: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
        for in_out in [false, true] {
            for with_bias in [false, true] {
                let want = reference(&a, &w, with_bias.then_some(&bias[..]), m, n, k, in_out);
                // A's rows as given, and `lda` apart with NaN between them (the kernels read
                // A where it is: a read past a row's K poisons the result).
                let strided: Vec<f32> = (0..m * (k + 5))
                    .map(|i| {
                        if i % (k + 5) < k {
                            a[i / (k + 5) * k + i % (k + 5)]
                        } else {
                            f32::NAN
                        }
                    })
                    .collect();
                for (isa, (a, lda)) in isas()
                    .into_iter()
                    .flat_map(|isa| [(isa, (&a, k)), (isa, (&strided, k + 5))])
                {
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
                        let g = GemmCall::new(
                            m,
                            n,
                            k,
                            a.as_ptr(),
                            lda,
                            packed.as_ptr(),
                            if with_bias {
                                bias.as_ptr()
                            } else {
                                std::ptr::null()
                            },
                            c.as_mut_ptr(),
                            n,
                        );
                        // SAFETY: a, packed B, bias and c are live and sized for m, n, k; the CPU has isa.
                        unsafe { sgemm(&g, isa, bl) };
                        for (i, (x, y)) in c.iter().zip(&want).enumerate() {
                            assert!(
                                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                                "{isa:?} {bl:?} m{m} n{n} k{k} lda{lda} in_out {in_out} bias {with_bias}: [{}, {}] got {x} want {y}",
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
fn gemv_matches_the_tile_path_bit_for_bit() {
    // One row runs the GEMV kernels on whole groups of panels; as the first of two rows it
    // runs the tile kernels: the same sums in the same order.
    let (n, k) = (32 * 13 + 5, 300);
    let mut seed = 5;
    let a: Vec<f32> = (0..2 * k).map(|_| lcg(&mut seed)).collect();
    let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
    let bias: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
    let packed = pack_b(&w, k, n, false, PACK_NR);
    for isa in isas() {
        for kc in [64, k] {
            let run = |m: usize| {
                let mut c = vec![0f32; m * n];
                let mut g = GemmCall::new(
                    m,
                    n,
                    k,
                    a.as_ptr(),
                    k,
                    packed.as_ptr(),
                    bias.as_ptr(),
                    c.as_mut_ptr(),
                    n,
                );
                g.threads = 2;
                unsafe { sgemm(&g, isa, Blocking { kc, mc: isa.mr() }) };
                c
            };
            let (one, two) = (run(1), run(2));
            assert_eq!(one[..], two[..n], "{isa:?} kc{kc}");
        }
    }
}

#[test]
fn a_decode_row_goes_out_in_chunks_of_one_gemv_group() {
    for isa in [Isa::Avx512, Isa::Avx2] {
        let group = gemv_group(isa);
        for threads in [2, 3, 4] {
            for panels in [2, 6, 16, 17, 24, 25, 64, 96, 1571] {
                let split = chunks(panels, threads, 1, group);
                let at = format!("{isa:?} {panels} panels on {threads} threads");
                // Each thread's share, as the pool hands the tasks out first: whole groups but
                // the share's last task, the shares one after the other and within one panel
                // of each other, every panel once.
                let mut next = 0;
                for t in 0..threads {
                    let (from, to) = (
                        threads::share_start(t, threads, split.count),
                        threads::share_start(t + 1, threads, split.count),
                    );
                    let start = next;
                    let ranges: Vec<_> = (from..to).map(|c| split.range(c)).collect();
                    for (i, &(p0, p1)) in ranges.iter().enumerate() {
                        assert_eq!(p0, next, "{at}: task {}", from + i);
                        assert!(p1 - p0 <= group, "{at}: task {}", from + i);
                        if p1 < ranges.last().unwrap().1 {
                            assert_eq!(p1 - p0, group, "{at}: task {} is cut short", from + i);
                        }
                        next = p1;
                    }
                    let share = next - start;
                    assert!(
                        share == panels / threads || share == panels.div_ceil(threads),
                        "{at}: thread {t} has {share} panels"
                    );
                }
                assert_eq!(next, panels, "{at}");
                assert_eq!(split.busiest(threads), panels.div_ceil(threads), "{at}");
            }
        }
    }
    // T5-small's 512 columns (16 panels) with AVX2's groups of 3 on 2 threads: 3 + 3 + 2 a
    // thread, not 9 panels for one and 7 for the other.
    let split = chunks(16, 2, 1, 3);
    assert_eq!((split.count, split.busiest(2)), (6, 8));
    assert_eq!(split.range(2), (6, 8));
    // One thread, the portable path (no GEMV) and rows of a prefill keep their cuts.
    let cut = |s: Chunks| (s.count, s.per);
    assert_eq!(cut(chunks(24, 1, 1, 4)), (1, 24));
    assert_eq!(cut(chunks(24, 2, 1, 0)), (8, 3));
    assert_eq!(cut(chunks(24, 2, 128, 4)), (8, 3));
    assert_eq!(chunks(24, 2, 128, 4).busiest(2), 12);
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
        let mut g = GemmCall::new(
            m,
            n,
            k,
            a.as_ptr(),
            k,
            packed.as_ptr(),
            std::ptr::null(),
            c.as_mut_ptr(),
            n,
        );
        // Forced: the cost model might keep so small a product on one thread.
        g.threads = threads as u32;
        // SAFETY: a, packed B and c are live and sized for m, n, k; isa was detected.
        unsafe { sgemm(&g, isa, Blocking::default_for(isa)) };
        // And as generated code calls it, every tiling field resolved by the runtime.
        let mut auto = vec![0f32; m * n];
        let g = GemmCall {
            c: auto.as_mut_ptr(),
            ..g
        };
        let g = GemmCall { threads: 0, ..g };
        // SAFETY: as above, with `auto` for C.
        unsafe { cranformer_gemm(&g) };
        (c, auto)
    };
    let one = run(1);
    let two = run(2);
    crate::threads::set_threads(0);
    assert_eq!(one.0, two.0);
    // The runtime's own tiling keeps its K blocking whatever the thread count.
    assert_eq!(one.1, two.1);
}

/// f64 references of the activations, as the interpreter computes them.
fn act_ref(a: Act, x: f64) -> f64 {
    let erf = |z: f64| {
        // erf by its Taylor series (|z| < 3) or continued fraction tail: exact to ~1e-15.
        if z.abs() < 3.0 {
            let (mut term, mut sum) = (z, z);
            for n in 1..200 {
                term *= -z * z / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let az = z.abs();
            // erfc continued fraction (Lentz), then the sign.
            let mut f = 0.0;
            for n in (1..200).rev() {
                f = (n as f64 / 2.0) / (az + f);
            }
            let erfc = (-az * az).exp() / std::f64::consts::PI.sqrt() / (az + f);
            (1.0 - erfc).copysign(z)
        }
    };
    let erfc_neg = |z: f64| {
        // erfc(z) for z >= 3 without cancellation.
        let mut f = 0.0;
        for n in (1..200).rev() {
            f = (n as f64 / 2.0) / (z + f);
        }
        (-z * z).exp() / std::f64::consts::PI.sqrt() / (z + f)
    };
    match a {
        Act::None => x,
        Act::Relu => x.max(0.0),
        Act::Gelu => {
            let z = x / std::f64::consts::SQRT_2;
            if z < -3.0 {
                0.5 * x * erfc_neg(-z)
            } else {
                0.5 * x * (1.0 + erf(z))
            }
        }
        Act::GeluTanh => {
            let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            x / (1.0 + (-2.0 * u).exp())
        }
        Act::Tanh => x.tanh(),
        Act::Silu => x / (1.0 + (-x).exp()),
        Act::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
    }
}

#[test]
fn activations_are_accurate_against_f64() {
    for a in [
        Act::Relu,
        Act::Gelu,
        Act::GeluTanh,
        Act::Tanh,
        Act::Silu,
        Act::QuickGelu,
    ] {
        // A dense sweep over [-12, 12] through the vectorised path (one row of C).
        let xs: Vec<f32> = (0..=240_000).map(|i| -12.0 + i as f32 * 1e-4).collect();
        let mut ys = xs.clone();
        // SAFETY: one row of ys.len() floats, no residual.
        unsafe { epilogue::apply(a, ys.as_mut_ptr(), ys.len(), 1, ys.len(), std::ptr::null()) };
        let mut worst = (0.0f64, 0.0f32, 0.0f32, 0.0f64);
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = act_ref(a, x as f64);
            // Relative error where the result is not tiny; absolute below 1e-6.
            let err = (y as f64 - want).abs() / want.abs().max(1e-6);
            if err > worst.0 {
                worst = (err, x, y, want);
            }
        }
        let (err, x, y, want) = worst;
        assert!(
            err < 2e-6,
            "{a:?}: worst relative error {err:e} at x = {x}: got {y}, want {want}"
        );
    }
}

#[test]
fn activations_give_the_same_bits_on_every_isa() {
    // Whole vectors and a remainder in each row; a residual on half the calls. Each special
    // value fills a row of its own, so it meets both the vector lanes and the remainder.
    let cols = 37;
    let mut xs: Vec<f32> = (0..48_000 / cols * cols)
        .map(|i| -12.0 + i as f32 * 5e-4)
        .collect();
    for x in [
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        crate::expf::LO,
        -87.0,
        -200.0,
        200.0,
        f32::MAX,
        f32::MIN,
    ] {
        xs.extend(std::iter::repeat_n(x, cols));
    }
    let rows = xs.len() / cols;
    let res: Vec<f32> = (0..xs.len())
        .map(|i| (i % 13) as f32 * 0.25 - 1.5)
        .collect();
    for a in Act::ALL {
        for with_res in [false, true] {
            let residual = if with_res {
                res.as_ptr()
            } else {
                std::ptr::null()
            };
            let want: Vec<f32> = xs
                .iter()
                .zip(&res)
                .map(|(&x, &r)| {
                    let y = epilogue::act(a, x);
                    if with_res {
                        y + r
                    } else {
                        y
                    }
                })
                .collect();
            for isa in isas() {
                let mut ys = xs.to_vec();
                // SAFETY: rows × cols floats in ys and res; the CPU has isa.
                unsafe { epilogue::apply_on(isa, a, ys.as_mut_ptr(), cols, rows, cols, residual) };
                for (i, (y, w)) in ys.iter().zip(&want).enumerate() {
                    assert!(
                        y.to_bits() == w.to_bits() || (y.is_nan() && w.is_nan()),
                        "{a:?} {isa:?} residual {with_res}: x = {} gave {y}, scalar {w}",
                        xs[i]
                    );
                }
            }
        }
    }
}

#[test]
fn nan_stays_nan_through_every_activation_on_every_isa() {
    // As in PyTorch: a NaN in the accumulator must not come out as a number. tanh clamped
    // |x| with `min(9.0)` and relu took `max(0.0)`, both of which drop a NaN: a BERT pooler
    // (tanh) turned NaN hidden states into confident ±0.99999994.
    let cols = 37;
    for a in Act::ALL {
        assert!(epilogue::act(a, f32::NAN).is_nan(), "{a:?} scalar");
        for isa in isas() {
            let mut ys = vec![f32::NAN; 2 * cols];
            // SAFETY: 2 rows of cols floats, no residual; the CPU has isa.
            unsafe { epilogue::apply_on(isa, a, ys.as_mut_ptr(), cols, 2, cols, std::ptr::null()) };
            assert!(ys.iter().all(|y| y.is_nan()), "{a:?} {isa:?}: {ys:?}");
        }
    }
}

#[test]
fn epilogue_applies_act_then_residual_on_every_isa_and_blocking() {
    let (m, n, k) = (29, 75, 130);
    let mut seed = 5;
    let a: Vec<f32> = (0..m * k).map(|_| 4.0 * lcg(&mut seed)).collect();
    let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
    let bias: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
    let res: Vec<f32> = (0..m * n).map(|_| lcg(&mut seed)).collect();
    let lin = reference(&a, &w, Some(&bias), m, n, k, false);
    let packed = pack_b(&w, k, n, false, PACK_NR);
    for act in [Act::None, Act::Gelu, Act::GeluTanh, Act::Silu] {
        let want: Vec<f32> = lin
            .iter()
            .zip(&res)
            .map(|(&y, &r)| (act_ref(act, y as f64) + r as f64) as f32)
            .collect();
        for isa in isas() {
            for (kc, mc) in [(0, 0), (48, isa.mr() as u32)] {
                let mut c = vec![f32::NAN; m * n];
                let mut g = GemmCall::new(
                    m,
                    n,
                    k,
                    a.as_ptr(),
                    k,
                    packed.as_ptr(),
                    bias.as_ptr(),
                    c.as_mut_ptr(),
                    n,
                );
                g.residual = res.as_ptr();
                g.act = act as u32;
                g.isa = isa.code();
                g.kc = kc;
                g.mc = mc;
                // SAFETY: every pointer of the call is live and sized for m, n, k.
                unsafe { cranformer_gemm(&g) };
                for (i, (x, y)) in c.iter().zip(&want).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                        "{act:?} {isa:?} kc {kc} mc {mc}: [{}, {}] got {x} want {y}",
                        i / n,
                        i % n
                    );
                }
            }
        }
    }
}

#[test]
fn packing_a_sliver_transposes_every_row_and_k() {
    for rows in 1..=12 {
        for kc in [1, 2, 3, 4, 5, 7, 8, 13, 37] {
            let lda = kc + 3;
            let src: Vec<f32> = (0..rows * lda).map(|i| i as f32).collect();
            let mut dst = vec![f32::NAN; rows * kc];
            // SAFETY: src holds rows × lda floats, dst rows × kc.
            unsafe { super::pack_sliver(dst.as_mut_ptr(), src.as_ptr(), lda, rows, kc) };
            for k in 0..kc {
                for r in 0..rows {
                    assert_eq!(
                        dst[k * rows + r],
                        src[r * lda + k],
                        "rows {rows} kc {kc} k {k} r {r}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_short_last_row_tile_shares_its_rows_with_the_one_before() {
    for mr in [4, 6, 12] {
        for mc in 1..=200 {
            for tiles in [RowTiles::balanced(mc, mr), RowTiles::uniform(mc, mr)] {
                let mut heights = vec![];
                let mut ir = 0;
                while ir < mc {
                    let rows = tiles.rows(ir);
                    assert!(
                        (1..=mr).contains(&rows),
                        "mc {mc} mr {mr}: {heights:?} {rows}"
                    );
                    heights.push(rows);
                    ir += rows;
                }
                assert_eq!(ir, mc, "mc {mc} mr {mr}: {heights:?}");
                assert_eq!(heights.len(), tiles.count(), "mc {mc} mr {mr}: {heights:?}");
            }
            let balanced = |ir| RowTiles::balanced(mc, mr).rows(ir);
            let uniform = |ir| RowTiles::uniform(mc, mr).rows(ir);
            let (q, s) = (mc / mr, mc % mr);
            if q >= 1 && (1..4).contains(&s) {
                let pair = (q - 1) * mr;
                let (a, b) = (balanced(pair), balanced(pair + balanced(pair)));
                assert_eq!(a + b, mr + s, "mc {mc} mr {mr}");
                assert!(a - b <= 1, "mc {mc} mr {mr}: {a} + {b}");
                assert!((0..pair).step_by(mr).all(|ir| balanced(ir) == mr));
            } else {
                assert!((0..mc).step_by(mr).all(|ir| balanced(ir) == uniform(ir)));
            }
        }
    }
    // BERT's 128 rows on the AVX2 tile.
    let t = RowTiles::balanced(128, 6);
    assert_eq!((t.rows(114), t.rows(120), t.rows(124)), (6, 4, 4));
}

#[test]
fn the_claimed_tile_is_the_one_the_loop_runs_next() {
    // The tile loop of `block` (and of the narrow formats' block): per M block, strip by strip
    // up to the chunk's end, rows in tiles of mr. Each tile's claim must name the tile that
    // comes next in that order, and nothing past the M block's last strip (the next M block
    // or K block, or another chunk, may be another thread's).
    let cases = [
        (128, 128, 12, 2304, 32, 0, 72),
        (128, 48, 12, 3072, 32, 8, 17),
        (7, 7, 12, 100, 32, 1, 4),
        (30, 24, 6, 77, 16, 0, 3),
        (1, 1, 12, 40, 32, 0, 2),
        (128, 132, 6, 768, 16, 0, 5),
        (26, 13, 12, 96, 32, 0, 3),
    ];
    let ways: [fn(usize, usize) -> RowTiles; 2] = [RowTiles::balanced, RowTiles::uniform];
    for ((m, mc, mr, n, nr, p0, p1), way) in cases.into_iter().flat_map(|c| ways.map(|w| (c, w))) {
        let end = (p1 * PACK_NR).min(n);
        let mut ic = 0;
        while ic < m {
            let mc_here = mc.min(m - ic);
            let tiles = way(mc_here, mr);
            let mut order = vec![];
            for strip in p0 * (PACK_NR / nr)..p1 * (PACK_NR / nr) {
                let col = strip * nr;
                if col >= n {
                    break;
                }
                let mut ir = 0;
                while ir < mc_here {
                    let rows = tiles.rows(ir);
                    order.push((ic + ir, col, rows, nr.min(n - col), ir));
                    ir += rows;
                }
            }
            for (i, &(_, col, _, _, ir)) in order.iter().enumerate() {
                let got = NextTile::after(ic, ir, tiles, col, nr, end)
                    .map(|t| (t.row, t.col, t.rows, t.cols));
                let want = order
                    .get(i + 1)
                    .map(|&(r, c, rows, cols, _)| (r, c, rows, cols));
                assert_eq!(got, want, "m {m} mc {mc} n {n} p {p0}..{p1}: tile {i}");
            }
            ic += mc_here;
        }
    }
}

#[test]
fn each_strip_fetches_the_sliver_its_loop_reads_next() {
    // The loop of `block` over one chunk of panels p0..p1 (strips of PACK_NR): K blocks, then M
    // blocks, then panels; then the thread's next chunk from its first panel. A strip fetches
    // ahead the sliver the loop reads next, except where the next strip starts another M
    // block of the same K block (it reads again what its M block started with) or where the M
    // blocks are too small to pay.
    let mr = 12;
    for (m, mc, n, k, kc, p0, p1, then) in [
        (128, 128, 3072, 768, 768, 0, 24, Some(24)),
        (128, 128, 768, 3072, 768, 3, 6, None),
        (130, 48, 100, 1000, 256, 1, 4, Some(9)),
        (128, 128, 96, 768, 768, 2, 3, Some(3)),
        (128, 128, 96, 768, 768, 1, 2, Some(2)),
    ] {
        // (panel, pc, kc, ic, mc) of each strip in order.
        let mut visits = vec![];
        let mut pc = 0;
        while pc < k {
            let kcb = kc.min(k - pc);
            let mut ic = 0;
            while ic < m {
                let mcb = mc.min(m - ic);
                for p in (p0..p1).take_while(|p| p * PACK_NR < n) {
                    visits.push((p, pc, kcb, ic, mcb));
                }
                ic += mcb;
            }
            pc += kcb;
        }
        if let Some(t) = then.filter(|t| t * PACK_NR < n) {
            visits.push((t, 0, kc.min(k), 0, mc.min(m)));
        }
        for (i, &(p, pc, kcb, ic, mcb)) in visits.iter().enumerate() {
            if i + 1 == visits.len() && then.is_some_and(|t| t * PACK_NR < n) {
                break; // the next chunk's own strip
            }
            let want = visits.get(i + 1).and_then(|&(np, npc, _, nic, _)| {
                let again = npc == pc && nic != ic;
                (Ahead::pays(mcb, mr) && !again).then_some((np, npc))
            });
            let got = Ahead::next(p, p1, p0, then, n, pc, kcb, k, ic, mcb, m, mr);
            assert_eq!(got, want, "m {m} n {n} k {k} panel {p} pc {pc} ic {ic}");
        }
    }
}
