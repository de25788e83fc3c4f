//! Compiled code as an [`Engine`]: entry functions linked ahead of time (into an executable or
//! a shared object), their metadata, and the description a compiled executable carries of its
//! model. Shared by `cranformer compile`'s in-process engine and by the executables it writes,
//! so it knows nothing of Cranelift.

use crate::kv_cache::KvCache;
use crate::model_info::ModelInfo;
use crate::native::{EntryFn, EntryMeta, NativeEntry, WeightPrep};
use crate::tokenize::TokenizerKind;
use crate::weights::{F32Buffer, Weights, WeightsError};
use crate::{Engine, EngineError, Outputs, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Version of [`Program`]'s encoding; an executable and its runtime library come from the
/// same `cranformer`, so a mismatch is a bug, not a user error.
pub const PROGRAM_VERSION: u32 = 3;

/// Everything a compiled executable knows about its model besides code, tokenizer and
/// weight bytes (embedded as JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Program {
    pub version: u32,
    /// The model directory it was compiled from (shown by `--verbose`).
    pub source: String,
    pub info: ModelInfo,
    pub tokenizer_kind: TokenizerKind,
    pub entries: Vec<EntryMeta>,
    /// Every checkpoint tensor the entries read, with the shape the compiler checked.
    pub weights: Vec<(String, Vec<usize>)>,
    /// `--weights external`: the safetensors files (absolute paths) to map at start-up.
    pub external: Vec<PathBuf>,
    /// `--weights embed`: the executable carries its weights already laid out for the kernels
    /// (one F32 tensor per [`prepared_key`]), so they are used in place, never copied.
    pub embedded: bool,
    /// The x86-64 features its generated code uses ([`crate::cpu_features`]), by name; the
    /// executable refuses to start on a CPU without one of them.
    pub cpu_features: Vec<String>,
}

/// The key of a weight laid out as `prep` in an executable's embedded weights.
pub fn prepared_key(key: &str, prep: WeightPrep) -> String {
    match prep {
        WeightPrep::AsIs => key.to_string(),
        WeightPrep::Panels { k, n, in_out } => {
            format!(
                "{key}#panels.{k}x{n}.{}",
                if in_out { "in_out" } else { "out_in" }
            )
        }
        WeightPrep::PadPanel { n } => format!("{key}#pad.{n}"),
        WeightPrep::Quantized {
            k,
            n,
            in_out,
            format,
        } => format!(
            "{key}#{}.{k}x{n}.{}",
            format.name(),
            if in_out { "in_out" } else { "out_in" }
        ),
    }
}

/// Why an embedded program description cannot be used. Always a cranformer bug or a corrupt
/// executable: the compiler writes the description the runtime reads.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// The bytes are not the JSON of a [`Program`] (including a `tokenizer_kind` that names
    /// no tokenizer family).
    #[error("the embedded program description is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// The description was written for another version of the runtime.
    #[error("the embedded program description is version {found}, this runtime reads version {PROGRAM_VERSION}")]
    Version { found: u32 },
    /// An entry's metadata contradicts itself.
    #[error("the embedded program description's entry {entry:?}: {message}")]
    Entry { entry: String, message: String },
}

impl Program {
    /// Reads and checks the description a compiled executable embeds: everything the host
    /// indexes by it (output slots, live ranges, weight layouts) is in range, so a corrupt
    /// blob gives an error instead of a panic.
    pub fn decode(bytes: &[u8]) -> Result<Program, ProgramError> {
        let program: Program = serde_json::from_slice(bytes)?;
        if program.version != PROGRAM_VERSION {
            return Err(ProgramError::Version {
                found: program.version,
            });
        }
        for (i, meta) in program.entries.iter().enumerate() {
            let bad = |message: String| ProgramError::Entry {
                entry: meta.name.clone(),
                message,
            };
            if program.entries[..i].iter().any(|m| m.name == meta.name) {
                return Err(bad("defined twice".into()));
            }
            meta.check().map_err(bad)?;
        }
        Ok(program)
    }

    /// How the matmul weights were compiled (`--dtype`): the narrow format of its
    /// `Quantized` layouts, f32 when there are none.
    pub fn weight_format(&self) -> crate::gemm::WeightFormat {
        self.entries
            .iter()
            .flat_map(|e| &e.weights)
            .find_map(|(_, prep)| match prep {
                WeightPrep::Quantized { format, .. } => Some(*format),
                _ => None,
            })
            .unwrap_or(crate::gemm::WeightFormat::F32)
    }

    /// Every prepared weight the entries read, from the embedded store written by the
    /// compiler (views into the executable's read-only data).
    pub fn load_prepared(
        &self,
        weights: &Weights,
    ) -> Result<BTreeMap<(String, WeightPrep), F32Buffer>, WeightsError> {
        let mut map = BTreeMap::new();
        for meta in &self.entries {
            for (key, prep) in &meta.weights {
                let pk = prepared_key(key, *prep);
                // The generated code reads as many values as the layout holds: a shorter
                // tensor is refused here, not read past its end.
                let stored = || {
                    weights.info(&pk).map_or(0, |i| {
                        i.shape
                            .iter()
                            .try_fold(1usize, |a, &d| a.checked_mul(d))
                            .unwrap_or(0)
                    })
                };
                let len = match prep {
                    WeightPrep::AsIs => self
                        .weights
                        .iter()
                        .find(|(k, _)| k == key)
                        .map_or_else(stored, |(_, shape)| shape.iter().product()),
                    // Program::decode refused layouts whose size overflows.
                    _ => prep.checked_panel_len().unwrap_or(usize::MAX),
                };
                map.insert((key.clone(), *prep), weights.get(&pk, &[len])?);
            }
        }
        Ok(map)
    }

    /// Every tensor the entries read, from `weights`, checked against the compiled shapes:
    /// views into the mapping where the dtype and alignment allow, converted copies otherwise.
    pub fn load_weights(
        &self,
        weights: &Weights,
    ) -> Result<BTreeMap<String, F32Buffer>, WeightsError> {
        self.weights
            .iter()
            .map(|(key, shape)| Ok((key.clone(), weights.get(key, shape)?)))
            .collect()
    }
}

/// Runs entry functions that were linked ahead of time.
pub struct NativeEngine {
    name: &'static str,
    entries: BTreeMap<String, NativeEntry>,
}

impl NativeEngine {
    /// Prepares every entry's weights (packing matmul panels once per tensor and layout).
    ///
    /// # Safety
    /// Each function must be the entry generated for its metadata, and stay valid (its code
    /// loaded) as long as the engine lives.
    /// Weights already in `prepared` are used as they are.
    pub unsafe fn new(
        name: &'static str,
        entries: Vec<(EntryMeta, EntryFn)>,
        checkpoint: &BTreeMap<String, F32Buffer>,
        mut prepared: BTreeMap<(String, WeightPrep), F32Buffer>,
    ) -> Result<NativeEngine, EngineError> {
        let lookup = |key: &str| checkpoint.get(key).cloned();
        let mut map = BTreeMap::new();
        for (meta, func) in entries {
            let entry_name = meta.name.clone();
            let entry = NativeEntry::new(meta, func, &lookup, &mut prepared)?;
            map.insert(entry_name, entry);
        }
        Ok(NativeEngine { name, entries: map })
    }
}

impl Engine for NativeEngine {
    fn name(&self) -> &str {
        self.name
    }

    fn run(&mut self, entry: &str, inputs: &[(&str, &Tensor)]) -> Result<Outputs, EngineError> {
        self.entry(entry)?.run(inputs)
    }

    fn run_cached(
        &mut self,
        entry: &str,
        inputs: &[(&str, &Tensor)],
        cache: &mut KvCache,
    ) -> Result<Outputs, EngineError> {
        self.entry(entry)?.run_cached(inputs, cache)
    }
}

impl NativeEngine {
    /// What the host knows of entry point `entry`.
    pub fn meta(&self, entry: &str) -> Option<&EntryMeta> {
        self.entries.get(entry).map(|e| &e.meta)
    }

    fn entry(&mut self, entry: &str) -> Result<&mut NativeEntry, EngineError> {
        let available = self.entries.keys().cloned().collect::<Vec<_>>().join(", ");
        self.entries
            .get_mut(entry)
            .ok_or_else(|| EngineError::NoEntry {
                entry: entry.into(),
                available,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_kind_is_read_by_name_and_unknown_names_are_refused() {
        for (name, kind) in [
            ("bert", TokenizerKind::Bert),
            ("gpt2", TokenizerKind::Gpt2),
            ("t5", TokenizerKind::T5),
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), name);
            let parsed: TokenizerKind = serde_json::from_value(name.into()).unwrap();
            assert_eq!(parsed, kind);
        }
        // It used to read as BERT.
        let err = serde_json::from_value::<TokenizerKind>("llama".into()).unwrap_err();
        assert!(err.to_string().contains("unknown variant `llama`"), "{err}");
    }
}
