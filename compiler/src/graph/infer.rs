//! Output type of each op from its operands' types: used when a node is added and by the
//! verifier between passes.

use super::{DType, Dim, EwStep, Op, TensorType, WeightLayout};

fn want_f32(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype == DType::F32 {
        Ok(())
    } else {
        Err(format!("{what} must be f32, got {t}"))
    }
}

fn arity(ops: &[&TensorType], lo: usize, hi: usize) -> Result<(), String> {
    if ops.len() < lo || ops.len() > hi {
        Err(format!("takes {lo}..={hi} operands, got {}", ops.len()))
    } else {
        Ok(())
    }
}

/// `b` broadcast into `a` (`b`'s shape a suffix of `a`'s): the type of `a ∘ b`.
fn broadcast(a: &TensorType, b: &TensorType) -> Result<TensorType, String> {
    want_f32(a, "a")?;
    want_f32(b, "b")?;
    if b.shape.len() > a.shape.len() || !a.shape.ends_with(&b.shape) {
        return Err(format!("{b} does not broadcast into {a}"));
    }
    Ok(a.clone())
}

pub(super) fn infer(op: &Op, ops: &[&TensorType]) -> Result<TensorType, String> {
    match op {
        Op::Input { .. } | Op::Weight { .. } => {
            Err("inputs and weights are typed when added".into())
        }
        Op::Gather => {
            arity(ops, 2, 2)?;
            let (table, ids) = (ops[0], ops[1]);
            want_f32(table, "table")?;
            if table.shape.len() != 2 || ids.dtype != DType::I64 {
                return Err(format!(
                    "needs table [V, C] and i64 ids, got {table} and {ids}"
                ));
            }
            let mut shape = ids.shape.clone();
            shape.push(table.shape[1]);
            Ok(TensorType::f32(&shape))
        }
        Op::Positions => {
            arity(ops, 0, 0)?;
            Ok(TensorType::i64(&[Dim::Seq]))
        }
        Op::Linear { layout } => {
            arity(ops, 2, 3)?;
            let (x, w) = (ops[0], ops[1]);
            want_f32(x, "x")?;
            want_f32(w, "w")?;
            if w.shape.len() != 2 {
                return Err(format!("weight must be 2-d, got {w}"));
            }
            let (n, k) = match layout {
                WeightLayout::OutIn => (w.shape[0], w.shape[1]),
                WeightLayout::InOut => (w.shape[1], w.shape[0]),
            };
            if x.last() != Some(k) {
                return Err(format!("x {x} does not end in the weight's input size {k}"));
            }
            if let Some(b) = ops.get(2) {
                if b.shape != [n] {
                    return Err(format!("bias {b} is not [{n}]"));
                }
            }
            let mut shape = x.shape.clone();
            *shape.last_mut().unwrap() = n;
            Ok(TensorType::f32(&shape))
        }
        Op::Add | Op::Mul => {
            arity(ops, 2, 2)?;
            broadcast(ops[0], ops[1])
        }
        Op::FusedLinear {
            layout, residual, ..
        } => {
            let r = *residual as usize;
            arity(ops, 2 + r, 3 + r)?;
            let y = infer(&Op::Linear { layout: *layout }, &ops[..ops.len() - r])?;
            if *residual && *ops[ops.len() - 1] != y {
                return Err(format!("residual {} is not {y}", ops[ops.len() - 1]));
            }
            Ok(y)
        }
        Op::AddLayerNorm { eps } | Op::AddRmsNorm { eps } => {
            let layer = matches!(op, Op::AddLayerNorm { .. });
            arity(ops, 3 + layer as usize, 3 + layer as usize)?;
            let sum = broadcast(ops[0], ops[1])?;
            let mut rest = vec![&sum];
            rest.extend_from_slice(&ops[2..]);
            let norm = if layer {
                Op::LayerNorm { eps: *eps }
            } else {
                Op::RmsNorm { eps: *eps }
            };
            infer(&norm, &rest)
        }
        Op::GatedAct(_) => {
            arity(ops, 1, 1)?;
            want_f32(ops[0], "x")?;
            let f = match ops[0].last() {
                Some(Dim::Const(w)) if w % 2 == 0 && w > 0 => w / 2,
                _ => return Err(format!("x {} does not end in an even width", ops[0])),
            };
            let mut shape = ops[0].shape.clone();
            *shape.last_mut().unwrap() = Dim::Const(f);
            Ok(TensorType::f32(&shape))
        }
        Op::Elementwise(steps) => {
            if ops.is_empty() || steps.is_empty() {
                return Err("needs x and at least one step".into());
            }
            want_f32(ops[0], "x")?;
            for s in steps {
                if let EwStep::Add(i) | EwStep::Mul(i) = *s {
                    if i == 0 || i >= ops.len() {
                        return Err(format!("step {s} reads no operand"));
                    }
                }
            }
            // The kernel walks rows of x's last axis: an operand is a scalar or whole rows.
            if !matches!(ops[0].last(), Some(Dim::Const(_))) {
                return Err(format!("x {} does not end in a constant width", ops[0]));
            }
            for b in &ops[1..] {
                broadcast(ops[0], b)?;
            }
            Ok(ops[0].clone())
        }
        Op::Scale { .. } | Op::Act(_) | Op::L2Normalize => {
            arity(ops, 1, 1)?;
            want_f32(ops[0], "x")?;
            Ok(ops[0].clone())
        }
        Op::LayerNorm { .. } | Op::RmsNorm { .. } => {
            let n = if matches!(op, Op::LayerNorm { .. }) {
                3
            } else {
                2
            };
            arity(ops, n, n)?;
            want_f32(ops[0], "x")?;
            let c = ops[0].last().ok_or("x is a scalar")?;
            for p in &ops[1..] {
                if p.shape != [c] {
                    return Err(format!("parameter {p} is not [{c}]"));
                }
            }
            Ok(ops[0].clone())
        }
        Op::Attention {
            heads,
            head_dim,
            masked,
            biased,
            ..
        } => {
            let n = 3 + *masked as usize + *biased as usize;
            arity(ops, n, n)?;
            let (q, k, v) = (ops[0], ops[1], ops[2]);
            let c = Dim::Const(heads * head_dim);
            for (t, what) in [(q, "q"), (k, "k"), (v, "v")] {
                want_f32(t, what)?;
                if t.shape.len() != 3 || t.shape[2] != c {
                    return Err(format!("{what} {t} is not [B, _, {c}]"));
                }
            }
            if k.shape != v.shape || k.shape[0] != q.shape[0] {
                return Err(format!("k {k} and v {v} do not match q {q}"));
            }
            let s = k.shape[1];
            let mut next = 3;
            if *masked {
                let m = ops[next];
                next += 1;
                if m.dtype != DType::I64 || m.shape != [q.shape[0], s] {
                    return Err(format!("key mask {m} is not i64[{}, {s}]", q.shape[0]));
                }
            }
            if *biased {
                let b = ops[next];
                want_f32(b, "bias")?;
                if b.shape != [Dim::Const(*heads), q.shape[1], s] {
                    return Err(format!("bias {b} is not [{heads}, {}, {s}]", q.shape[1]));
                }
            }
            Ok(q.clone())
        }
        Op::RelPosBias { keys, .. } => {
            arity(ops, 1, 1)?;
            let t = ops[0];
            want_f32(t, "table")?;
            if t.shape.len() != 2 {
                return Err(format!("table {t} is not [buckets, H]"));
            }
            Ok(TensorType::f32(&[t.shape[1], Dim::Seq, *keys]))
        }
        Op::SliceLast { start, len } => {
            arity(ops, 1, 1)?;
            want_f32(ops[0], "x")?;
            match ops[0].last() {
                Some(Dim::Const(n)) if start + len <= n && *len > 0 => {}
                _ => {
                    return Err(format!(
                        "cannot take columns {start}..{} of {}",
                        start + len,
                        ops[0]
                    ))
                }
            }
            let mut shape = ops[0].shape.clone();
            *shape.last_mut().unwrap() = Dim::Const(*len);
            Ok(TensorType::f32(&shape))
        }
        Op::ConcatSeq => {
            arity(ops, 2, 2)?;
            let (p, n) = (ops[0], ops[1]);
            want_f32(p, "past")?;
            want_f32(n, "new")?;
            if p.shape.len() != 3
                || n.shape.len() != 3
                || p.shape[0] != n.shape[0]
                || p.shape[2] != n.shape[2]
            {
                return Err(format!("cannot append {n} to {p}"));
            }
            if (p.shape[1], n.shape[1]) != (Dim::Past, Dim::Seq) {
                return Err(format!("appends [B, T, C] to [B, P, C], got {n} and {p}"));
            }
            Ok(TensorType::f32(&[p.shape[0], Dim::Total, p.shape[2]]))
        }
        Op::LastToken | Op::FirstToken => {
            arity(ops, 1, 1)?;
            let x = ops[0];
            want_f32(x, "x")?;
            if x.shape.len() != 3 {
                return Err(format!("x {x} is not [B, T, C]"));
            }
            Ok(if matches!(op, Op::LastToken) {
                TensorType::f32(&[x.shape[0], Dim::Const(1), x.shape[2]])
            } else {
                TensorType::f32(&[x.shape[0], x.shape[2]])
            })
        }
        Op::MeanPool | Op::MaxPool => {
            arity(ops, 2, 2)?;
            let (x, m) = (ops[0], ops[1]);
            want_f32(x, "x")?;
            if x.shape.len() != 3 || m.dtype != DType::I64 || m.shape[..] != x.shape[..2] {
                return Err(format!(
                    "needs x [B, T, C] and i64 mask [B, T], got {x} and {m}"
                ));
            }
            Ok(TensorType::f32(&[x.shape[0], x.shape[2]]))
        }
    }
}
