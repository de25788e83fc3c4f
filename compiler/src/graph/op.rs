//! The op set. Ops are coarse (a whole attention, a whole norm) so that the interpreter stays
//! a plain reference and code generation can pick one kernel per op.

use std::fmt;

/// How a weight matrix is stored in the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// `nn.Linear`: `[out, in]`.
    OutIn,
    /// GPT-2's `Conv1D`: `[in, out]`.
    InOut,
}

/// Pointwise activation functions, named as in Hugging Face's `ACT2FN`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`, `gelu_python`: x * Φ(x) with the exact erf.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_python_tanh`, `gelu_fast`, `gelu_accurate`: the
    /// tanh approximation (each of Hugging Face's classes computes the same formula).
    GeluTanh,
    Relu,
    Tanh,
    /// `silu` / `swish`: x * sigmoid(x).
    Silu,
    /// `quick_gelu`: x * sigmoid(1.702 x).
    QuickGelu,
}

impl Activation {
    /// Maps a Hugging Face activation name.
    pub fn from_hf(name: &str) -> Option<Activation> {
        Some(match name {
            "gelu" | "gelu_python" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_python_tanh" | "gelu_fast"
            | "gelu_accurate" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "tanh" => Activation::Tanh,
            "silu" | "swish" => Activation::Silu,
            "quick_gelu" => Activation::QuickGelu,
            _ => return None,
        })
    }

    pub const SUPPORTED: &'static str =
        "gelu, gelu_python, gelu_new, gelu_pytorch_tanh, gelu_python_tanh, gelu_fast, gelu_accurate, relu, tanh, silu, swish, quick_gelu";
}

/// Operands are listed as `name [shape]` per op; B batch, T new tokens, P cached tokens,
/// S keys, C channels, H heads, D head size, V vocabulary.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A caller-supplied tensor.
    Input {
        name: String,
    },
    /// A checkpoint tensor, by its resolved safetensors key.
    Weight {
        key: String,
    },
    /// `table [V, C]`, `ids [..]` i64 -> `[.., C]`: rows picked by id.
    Gather,
    /// -> `[T]` i64: absolute positions P, P+1, .., P+T-1.
    Positions,
    /// `x [.., K]`, `w` (`[N, K]` or `[K, N]` by layout), optional `bias [N]` -> `[.., N]`.
    Linear {
        layout: WeightLayout,
    },
    /// `a`, `b` -> shape of `a`; `b`'s shape is a suffix of `a`'s and broadcasts over the rest.
    Add,
    /// Elementwise product, broadcasting as `Add`.
    Mul,
    /// `x * factor`.
    Scale {
        factor: f32,
    },
    Act(Activation),
    /// `x [.., C]`, `gamma [C]`, `beta [C]`: (x - mean) / sqrt(var + eps) * gamma + beta.
    LayerNorm {
        eps: f32,
    },
    /// T5's norm: `x [.., C]`, `gamma [C]`: x / sqrt(mean(x²) + eps) * gamma, no centring, no bias.
    RmsNorm {
        eps: f32,
    },
    /// Scaled dot-product attention over heads.
    /// `q [B, T, H*D]`, `k [B, S, H*D]`, `v [B, S, H*D]`, then `key_mask [B, S]` i64 (1 = attend)
    /// if `masked`, then `bias [H, T, S]` if `biased` -> `[B, T, H*D]`.
    /// With `causal`, query i (absolute position S - T + i) sees keys 0..=S - T + i.
    Attention {
        heads: usize,
        head_dim: usize,
        scale: f32,
        causal: bool,
        masked: bool,
        biased: bool,
    },
    /// T5's relative position bias: `table [buckets, H]` -> `[H, T, S]`, query i at absolute
    /// position P + i, key j at j; S is the operand-free key length given by `keys`.
    RelPosBias {
        buckets: usize,
        max_distance: usize,
        bidirectional: bool,
        keys: crate::graph::Dim,
    },
    /// `x [.., N]` -> `[.., len]`: columns start..start+len of the last axis (splits a fused QKV).
    SliceLast {
        start: usize,
        len: usize,
    },
    /// `past [B, P, C]`, `new [B, T, C]` -> `[B, P+T, C]`: the KV cache append.
    ConcatSeq,
    /// `[B, T, C]` -> `[B, 1, C]`: the last position.
    LastToken,
    /// `[B, T, C]` -> `[B, C]`: the first position (BERT's [CLS]).
    FirstToken,
    /// `x [B, T, C]`, `mask [B, T]` i64 -> `[B, C]`: mean over the positions where mask is 1.
    MeanPool,
    /// `x [B, T, C]`, `mask [B, T]` i64 -> `[B, C]`: max over the positions where mask is 1.
    MaxPool,
    /// `[.., C]` -> each row divided by max(‖row‖₂, 1e-12).
    L2Normalize,

    // Fused ops: made by the passes (`crate::passes`), never by a frontend.
    /// `Linear` with its epilogue: `x [.., K]`, `w`, optional `bias [N]`, then `residual [.., N]`
    /// when `residual` -> act(x·w + bias) + residual.
    FusedLinear {
        layout: WeightLayout,
        act: Option<Activation>,
        residual: bool,
    },
    /// `a [.., C]`, `b` (broadcast into `a` as for `Add`), `gamma [C]`, `beta [C]` ->
    /// LayerNorm(a + b). The sum is not an output: the pass fuses only where nothing else reads it.
    AddLayerNorm {
        eps: f32,
    },
    /// `a [.., C]`, `b` (broadcast), `gamma [C]` -> RmsNorm(a + b).
    AddRmsNorm {
        eps: f32,
    },
    /// `x [.., 2F]` -> `[.., F]`: act(x[.., :F]) * x[.., F:], T5's gated feed-forward once
    /// `wi_0` and `wi_1` are one matmul.
    GatedAct(Activation),
    /// `x`, then operands that broadcast into `x` as for `Add` -> the steps applied to `x` in
    /// order, in one loop.
    Elementwise(Vec<EwStep>),
}

/// One step of an [`Op::Elementwise`] chain; `Add(i)` and `Mul(i)` read operand `i` (>= 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EwStep {
    Scale(f32),
    Act(Activation),
    Add(usize),
    Mul(usize),
}

impl fmt::Display for EwStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EwStep::Scale(s) => write!(f, "scale {s}"),
            EwStep::Act(a) => write!(f, "{}", format!("{a:?}").to_lowercase()),
            EwStep::Add(i) => write!(f, "add ${i}"),
            EwStep::Mul(i) => write!(f, "mul ${i}"),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Input { name } => write!(f, "input {name}"),
            Op::Weight { key } => write!(f, "weight {key}"),
            Op::Gather => write!(f, "gather"),
            Op::Positions => write!(f, "positions"),
            Op::Linear { layout } => write!(
                f,
                "linear{}",
                if *layout == WeightLayout::InOut {
                    ".in_out"
                } else {
                    ""
                }
            ),
            Op::Add => write!(f, "add"),
            Op::Mul => write!(f, "mul"),
            Op::Scale { factor } => write!(f, "scale {factor}"),
            Op::Act(a) => write!(f, "{}", format!("{a:?}").to_lowercase()),
            Op::LayerNorm { eps } => write!(f, "layer_norm eps={eps:e}"),
            Op::RmsNorm { eps } => write!(f, "rms_norm eps={eps:e}"),
            Op::Attention {
                heads,
                head_dim,
                scale,
                causal,
                masked,
                biased,
            } => {
                write!(
                    f,
                    "attention heads={heads} head_dim={head_dim} scale={scale}"
                )?;
                if *causal {
                    write!(f, " causal")?;
                }
                if *masked {
                    write!(f, " masked")?;
                }
                if *biased {
                    write!(f, " biased")?;
                }
                Ok(())
            }
            Op::RelPosBias {
                buckets,
                max_distance,
                bidirectional,
                keys,
            } => write!(
                f,
                "rel_pos_bias buckets={buckets} max_distance={max_distance} keys={keys}{}",
                if *bidirectional { " bidirectional" } else { "" }
            ),
            Op::SliceLast { start, len } => write!(f, "slice_last {start}..{}", start + len),
            Op::ConcatSeq => write!(f, "concat_seq"),
            Op::LastToken => write!(f, "last_token"),
            Op::FirstToken => write!(f, "first_token"),
            Op::MeanPool => write!(f, "mean_pool"),
            Op::MaxPool => write!(f, "max_pool"),
            Op::L2Normalize => write!(f, "l2_normalize"),
            Op::FusedLinear {
                layout,
                act,
                residual,
            } => {
                write!(f, "{}", Op::Linear { layout: *layout })?;
                if let Some(a) = act {
                    write!(f, " act={}", format!("{a:?}").to_lowercase())?;
                }
                if *residual {
                    write!(f, " +residual")?;
                }
                Ok(())
            }
            Op::AddLayerNorm { eps } => write!(f, "add_layer_norm eps={eps:e}"),
            Op::AddRmsNorm { eps } => write!(f, "add_rms_norm eps={eps:e}"),
            Op::GatedAct(a) => write!(f, "gated_{}", format!("{a:?}").to_lowercase()),
            Op::Elementwise(steps) => {
                let s: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
                write!(f, "elementwise[{}]", s.join(", "))
            }
        }
    }
}
