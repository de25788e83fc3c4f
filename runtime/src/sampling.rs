//! Choosing the next token from logits: greedy, or sampling with temperature, top-k and
//! top-p, applied in that order as Hugging Face's `generate` does.

/// How to pick tokens.
#[derive(Clone, Debug, PartialEq)]
pub enum Sampling {
    Greedy,
    Sample {
        temperature: f32,
        top_k: usize,
        top_p: f32,
        seed: u64,
    },
}

/// A small deterministic generator (SplitMix64), so a seed reproduces a run on any machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Index of the largest logit; the first one on ties, as `torch.argmax` (NaNs are passed
/// over, but a NaN first logit is kept, as the plain scan `v > logits[best]` does).
pub fn argmax(logits: &[f32]) -> usize {
    // Each of L lanes keeps the first index of its own maximum, so the compiler can run the
    // scan in vector registers: a decode step scans the whole vocabulary (50k for GPT-2).
    const L: usize = 16;
    let scan = || {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        best
    };
    if logits.len() < 2 * L || logits[0].is_nan() {
        return scan();
    }
    let mut val = [f32::NEG_INFINITY; L];
    let mut idx = [usize::MAX; L];
    let chunks = logits.chunks_exact(L);
    let tail = chunks.remainder();
    for (c, xs) in chunks.enumerate() {
        for j in 0..L {
            let better = xs[j] > val[j];
            val[j] = if better { xs[j] } else { val[j] };
            idx[j] = if better { c * L + j } else { idx[j] };
        }
    }
    // The largest lane value, first index among the lanes holding it, then the tail.
    let mut best = usize::MAX;
    for j in 0..L {
        if idx[j] != usize::MAX
            && (best == usize::MAX
                || val[j] > logits[best]
                || (val[j] == logits[best] && idx[j] < best))
        {
            best = idx[j];
        }
    }
    if best == usize::MAX {
        // Nothing above -inf: the first -inf, or 0.
        return scan();
    }
    for i in logits.len() - tail.len()..logits.len() {
        if logits[i] > logits[best] {
            best = i;
        }
    }
    best
}

/// The token picked from `logits` restricted to the first `allowed` ids (ids the tokenizer
/// cannot decode, such as a T5 vocabulary padded for alignment, are never sampled; greedy
/// keeps Hugging Face's plain argmax over all of them).
pub fn pick(logits: &[f32], sampling: &Sampling, rng: &mut Rng, allowed: usize) -> usize {
    match sampling {
        Sampling::Greedy => argmax(logits),
        Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } => {
            let logits = &logits[..allowed.min(logits.len()).max(1)];
            let t = temperature.max(1e-6);
            let mut cand: Vec<(usize, f32)> = logits.iter().map(|&l| l / t).enumerate().collect();
            // Descending by score, lowest id first among equals: a total order, so the top k
            // selected first then sorted are the first k of the whole sort (a vocabulary of
            // 50k is not sorted for each token).
            let order =
                |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
            if *top_k > 0 && *top_k < cand.len() {
                cand.select_nth_unstable_by(*top_k - 1, order);
                cand.truncate(*top_k);
            }
            cand.sort_unstable_by(order);
            let max = cand[0].1;
            let mut probs: Vec<f64> = cand
                .iter()
                .map(|&(_, s)| ((s - max) as f64).exp())
                .collect();
            let sum: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= sum);
            if *top_p < 1.0 {
                // Keep the smallest prefix whose mass reaches top_p (at least one token).
                let mut mass = 0.0;
                let mut keep = probs.len();
                for (i, p) in probs.iter().enumerate() {
                    mass += p;
                    if mass >= *top_p as f64 {
                        keep = i + 1;
                        break;
                    }
                }
                probs.truncate(keep);
                let s: f64 = probs.iter().sum();
                probs.iter_mut().for_each(|p| *p /= s);
            }
            let mut u = rng.next_f64();
            for (i, p) in probs.iter().enumerate() {
                if u < *p {
                    return cand[i].0;
                }
                u -= p;
            }
            cand[probs.len() - 1].0
        }
    }
}

/// A classifier's scores from its logits, as Hugging Face's text-classification pipeline
/// chooses its function: none for `problem_type` "regression", a sigmoid per label for
/// "multi_label_classification" or a single label (a cross-encoder's relevance: the pipeline
/// and text-embeddings-inference's `/predict` both report sigmoid(logit)), else softmax.
pub fn label_scores(problem_type: &str, logits: &[f32]) -> Vec<f32> {
    match problem_type {
        "regression" => logits.to_vec(),
        _ if problem_type == "multi_label_classification" || logits.len() == 1 => {
            logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect()
        }
        _ => softmax(logits),
    }
}

/// Softmax of `logits` in f64 for scores.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let e: Vec<f64> = logits.iter().map(|&v| ((v - max) as f64).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| (v / s) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_scores_follow_the_pipeline() {
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        assert_eq!(label_scores("regression", &[0.5]), [0.5]);
        assert_eq!(
            label_scores("single_label_classification", &[0.5]),
            [sigmoid(0.5)]
        );
        assert_eq!(
            label_scores("multi_label_classification", &[0.5, -1.0]),
            [sigmoid(0.5), sigmoid(-1.0)]
        );
        assert_eq!(
            label_scores("single_label_classification", &[0.5, -1.0]),
            softmax(&[0.5, -1.0])
        );
    }

    #[test]
    fn argmax_takes_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }

    /// The plain scan the vectorised argmax must agree with.
    fn scan(v: &[f32]) -> usize {
        let mut best = 0;
        for (i, &x) in v.iter().enumerate() {
            if x > v[best] {
                best = i;
            }
        }
        best
    }

    #[test]
    fn argmax_agrees_with_the_plain_scan() {
        let mut rng = Rng::new(9);
        for len in [1, 5, 31, 32, 33, 47, 64, 100, 1000, 50257] {
            for case in 0..12 {
                let mut v: Vec<f32> = (0..len)
                    .map(|_| ((rng.next_u64() % 17) as f32) - 8.0)
                    .collect();
                let at = (rng.next_u64() as usize) % len;
                match case {
                    1 => v[at] = f32::NAN,
                    2 => v[0] = f32::NAN,
                    3 => v.iter_mut().for_each(|x| *x = f32::NEG_INFINITY),
                    4 => v.iter_mut().for_each(|x| *x = f32::NAN),
                    5 => v[len - 1] = 100.0,
                    6 => v.iter_mut().for_each(|x| *x = -0.0),
                    7 => {
                        v.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
                        v[at] = f32::NAN;
                    }
                    8 => v[at] = 9.0,
                    _ => {}
                }
                assert_eq!(argmax(&v), scan(&v), "len {len}, case {case}: {v:?}");
            }
        }
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        let s = Sampling::Sample {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            seed: 0,
        };
        let mut rng = Rng::new(7);
        for _ in 0..20 {
            assert_eq!(pick(&logits, &s, &mut rng, 4), 1);
        }
    }

    #[test]
    fn top_k_takes_the_k_best_in_order_lowest_id_first_on_ties() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 / 10.0).collect();
        let k = 7;
        // The reference: sort everything, keep k.
        let mut all: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let best: Vec<usize> = all[..k].iter().map(|c| c.0).collect();
        let s = Sampling::Sample {
            temperature: 1.0,
            top_k: k,
            top_p: 1.0,
            seed: 0,
        };
        let mut rng = Rng::new(11);
        let mut seen = vec![];
        for _ in 0..400 {
            let id = pick(&logits, &s, &mut rng, logits.len());
            assert!(
                best.contains(&id),
                "{id} is not among the top {k}: {best:?}"
            );
            if !seen.contains(&id) {
                seen.push(id);
            }
        }
        // Ties at the top score (10.0): all k are equally likely and each is reached.
        assert_eq!(seen.len(), k, "{seen:?}");
        // Same draws as the full sort would give: the candidate order is the same.
        let full = |rng: &mut Rng| {
            let u = rng.next_f64();
            best[(u * k as f64) as usize]
        };
        let (mut a, mut b) = (Rng::new(5), Rng::new(5));
        for _ in 0..50 {
            assert_eq!(pick(&logits, &s, &mut a, logits.len()), full(&mut b));
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities ~ [0.665, 0.245, 0.09]: top_p 0.5 keeps only the first.
        let logits = [2.0, 1.0, 0.0];
        let s = Sampling::Sample {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: 0,
        };
        let mut rng = Rng::new(1);
        for _ in 0..50 {
            assert_eq!(pick(&logits, &s, &mut rng, 3), 0);
        }
    }

    #[test]
    fn sampling_is_seeded_and_spreads() {
        let logits = [0.0f32; 8];
        let s = Sampling::Sample {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        };
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..64)
                .map(|_| pick(&logits, &s, &mut rng, 8))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        let d = draw(3);
        assert!(
            (0..8).all(|i| d.contains(&i)),
            "uniform logits should reach every id: {d:?}"
        );
        assert!(draw(4) != d);
    }

    #[test]
    fn sampling_never_picks_disallowed_ids() {
        let logits = [0.0, 0.0, 100.0];
        let s = Sampling::Sample {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        };
        let mut rng = Rng::new(5);
        for _ in 0..20 {
            assert!(pick(&logits, &s, &mut rng, 2) < 2);
        }
    }
}
