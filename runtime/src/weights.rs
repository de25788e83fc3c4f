//! Safetensors weight store: opens one file, a sharded checkpoint or bytes embedded in a
//! compiled executable, validates every header up front and hands out tensors as f32
//! (F16 and BF16 ones widened only when read as f32, so narrow weight formats pack from the
//! stored bits; such tensors keep the file mapped for as long as they live).
//!
//! It knows nothing about model architectures: key prefixes, transposes and tied heads are
//! the frontends' business. Tensors of dtypes we cannot compute with (int64 buffers such as
//! `embeddings.position_ids`) are indexed but only refused when requested.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use safetensors::tensor::{Dtype, SafeTensorError, TensorInfo as HeaderEntry};
use safetensors::SafeTensors;

/// The safetensors crate's cap on the header length (it refuses longer headers).
const MAX_HEADER_LEN: u64 = 100_000_000;

/// Element type of a stored tensor. Only `F32`, `F16` and `BF16` can be read; anything else
/// is kept as `Other` so that checkpoints carrying integer buffers still open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// A safetensors dtype we do not read, by its header name (`I64`, `F64`, `BOOL`, ...).
    Other(String),
}

impl From<Dtype> for DType {
    fn from(dtype: Dtype) -> DType {
        match dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => DType::Other(other.to_string()),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DType::F32 => f.write_str("F32"),
            DType::F16 => f.write_str("F16"),
            DType::BF16 => f.write_str("BF16"),
            DType::Other(name) => f.write_str(name),
        }
    }
}

/// What the header says about one tensor.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// No model.safetensors nor model.safetensors.index.json in the directory.
    #[error("{}", no_weights_message(dir))]
    NoWeights { dir: PathBuf },
    /// A weight file or index could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A truncated file, corrupt header or inconsistent index.
    #[error("{}: not a valid safetensors file: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    /// A requested tensor is in none of the files.
    #[error("tensor \"{key}\" not found in {source_desc}{}", hint_message(hint))]
    MissingKey {
        key: String,
        source_desc: String,
        hint: Option<String>,
    },
    /// A tensor's stored shape differs from the one the model expects.
    #[error("{}: tensor \"{key}\" has shape {found:?}, expected {expected:?}", path.display())]
    Shape {
        key: String,
        path: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A requested tensor is stored in a dtype other than F32, F16 or BF16.
    #[error("{}: tensor \"{key}\" has dtype {found}; only F32, F16 and BF16 can be loaded", path.display())]
    Dtype {
        key: String,
        path: PathBuf,
        found: String,
    },
}

fn no_weights_message(dir: &Path) -> String {
    let mut msg = format!(
        "no model.safetensors or model.safetensors.index.json in {}",
        dir.display()
    );
    if dir.join("pytorch_model.bin").exists() {
        msg.push_str(
            " (pytorch_model.bin is not supported: convert the checkpoint to safetensors)",
        );
    }
    msg
}

fn hint_message(hint: &Option<String>) -> String {
    match hint {
        Some(keys) => format!("; similar keys present: {keys}"),
        None => String::new(),
    }
}

/// The bytes of one safetensors file, alive as long as any tensor view into them.
enum Backing {
    Mmap(memmap2::Mmap),
    Static(&'static [u8]),
    Owned(Box<[u8]>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(map) => map,
            Backing::Static(bytes) => bytes,
            Backing::Owned(bytes) => bytes,
        }
    }
}

/// f32 data of one tensor: a view into the file when it is stored as aligned F32, otherwise an
/// owned converted copy. F16 and BF16 tensors keep their stored 2-byte elements and are widened
/// only when something reads them as f32 (once, then shared by every clone): narrow matmul
/// weight formats pack straight from [`F32Buffer::stored`]. Cloning shares the data.
#[derive(Clone)]
pub struct F32Buffer {
    repr: BufferRepr,
}

#[derive(Clone)]
enum BufferRepr {
    /// Invariant: `file.bytes()[offset..offset + 4 * len]` is in bounds and 4-byte aligned.
    View {
        file: Arc<Backing>,
        offset: usize,
        len: usize,
    },
    Owned(Arc<[f32]>),
    /// Owned, in memory advised for huge pages ([`F32Buffer::in_huge_pages`]).
    Pages(Arc<crate::pages::LargeBuf>),
    /// F16 or BF16 elements, little-endian, widened to f32 on the first f32 read.
    Narrow {
        half: Half,
        bytes: NarrowBytes,
        widened: Arc<OnceLock<Box<[f32]>>>,
    },
}

/// The two 2-byte float types a checkpoint can store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    F16,
    Bf16,
}

/// Where a narrow tensor's bytes are: in the checkpoint file, or owned (a concatenation).
#[derive(Clone)]
enum NarrowBytes {
    /// Invariant: `file.bytes()[start..end]` is in bounds and `end - start` is even.
    File {
        file: Arc<Backing>,
        start: usize,
        end: usize,
    },
    /// Invariant: even length.
    Owned(Arc<[u8]>),
}

impl NarrowBytes {
    fn bytes(&self) -> &[u8] {
        match self {
            NarrowBytes::File { file, start, end } => &file.bytes()[*start..*end],
            NarrowBytes::Owned(b) => b,
        }
    }
}

/// A tensor's elements as the checkpoint stores them, without widening: what the narrow
/// weight packers read ([`crate::gemm::PackedWeight::pack_stored`]).
#[derive(Clone, Copy, Debug)]
pub enum Stored<'a> {
    F32(&'a [f32]),
    /// Little-endian IEEE half-precision elements, two bytes each.
    F16(&'a [u8]),
    /// Little-endian bfloat16 elements, two bytes each.
    Bf16(&'a [u8]),
}

impl Stored<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Stored::F32(v) => v.len(),
            Stored::F16(b) | Stored::Bf16(b) => b.len() / 2,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn bits(b: &[u8], i: usize) -> u16 {
        u16::from_le_bytes([b[2 * i], b[2 * i + 1]])
    }

    /// Element `i` widened to f32 (exact for every stored type).
    #[inline]
    pub fn f32_at(&self, i: usize) -> f32 {
        match self {
            Stored::F32(v) => v[i],
            Stored::F16(b) => half::f16::from_bits(Self::bits(b, i)).to_f32(),
            Stored::Bf16(b) => half::bf16::from_bits(Self::bits(b, i)).to_f32(),
        }
    }

    /// Element `i` as f16 bits: the stored bits of an F16 tensor, else rounded to nearest.
    #[inline]
    pub fn f16_bits_at(&self, i: usize) -> u16 {
        match self {
            Stored::F16(b) => Self::bits(b, i),
            _ => half::f16::from_f32(self.f32_at(i)).to_bits(),
        }
    }

    /// Element `i` as bf16 bits: the stored bits of a BF16 tensor, else rounded to nearest.
    #[inline]
    pub fn bf16_bits_at(&self, i: usize) -> u16 {
        match self {
            Stored::Bf16(b) => Self::bits(b, i),
            _ => half::bf16::from_f32(self.f32_at(i)).to_bits(),
        }
    }
}

impl F32Buffer {
    pub fn from_vec(v: Vec<f32>) -> F32Buffer {
        F32Buffer {
            repr: BufferRepr::Owned(v.into()),
        }
    }

    /// `len` floats written by `fill` (into zeros) for data every run streams (packed matmul
    /// weights): in memory advised for huge pages when they fill one ([`crate::pages`]),
    /// else an ordinary allocation.
    pub fn in_huge_pages(len: usize, fill: impl FnOnce(&mut [f32])) -> F32Buffer {
        match crate::pages::LargeBuf::zeroed(len) {
            Some(mut buf) => {
                fill(&mut buf);
                F32Buffer {
                    repr: BufferRepr::Pages(Arc::new(buf)),
                }
            }
            None => {
                let mut v = vec![0.0; len];
                fill(&mut v);
                F32Buffer::from_vec(v)
            }
        }
    }

    /// 2-byte elements held as they are (little-endian), widened on the first f32 read.
    /// `None` if `bytes` has an odd length.
    pub fn from_half_bytes(half: Half, bytes: Vec<u8>) -> Option<F32Buffer> {
        bytes.len().is_multiple_of(2).then(|| F32Buffer {
            repr: BufferRepr::Narrow {
                half,
                bytes: NarrowBytes::Owned(bytes.into()),
                widened: Arc::default(),
            },
        })
    }

    /// Whether the data is read in place from the file rather than copied.
    pub fn is_zero_copy(&self) -> bool {
        matches!(self.repr, BufferRepr::View { .. })
    }

    /// Number of f32 elements, without widening a narrow tensor.
    pub fn len(&self) -> usize {
        match &self.repr {
            BufferRepr::View { len, .. } => *len,
            BufferRepr::Owned(data) => data.len(),
            BufferRepr::Pages(data) => data.len(),
            BufferRepr::Narrow { bytes, .. } => bytes.bytes().len() / 2,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The 2-byte type the elements are held in, if they are (not yet widened or not).
    pub fn half(&self) -> Option<Half> {
        match &self.repr {
            BufferRepr::Narrow { half, .. } => Some(*half),
            _ => None,
        }
    }

    /// Whether an f32 copy of narrow elements has been made (always false for f32 data).
    pub fn is_widened(&self) -> bool {
        match &self.repr {
            BufferRepr::Narrow { widened, .. } => widened.get().is_some(),
            _ => false,
        }
    }

    /// The elements in the type they are held in, without widening.
    pub fn stored(&self) -> Stored<'_> {
        match &self.repr {
            BufferRepr::Narrow {
                half: Half::F16,
                bytes,
                ..
            } => Stored::F16(bytes.bytes()),
            BufferRepr::Narrow {
                half: Half::Bf16,
                bytes,
                ..
            } => Stored::Bf16(bytes.bytes()),
            _ => Stored::F32(self),
        }
    }
}

impl Deref for F32Buffer {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &self.repr {
            BufferRepr::View { file, offset, len } => {
                let bytes = &file.bytes()[*offset..*offset + 4 * *len];
                // SAFETY: in bounds and 4-byte aligned (checked when the view was made), every
                // bit pattern is a valid f32, and the bytes live as long as `file`.
                unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), *len) }
            }
            BufferRepr::Owned(data) => data,
            BufferRepr::Pages(data) => data,
            BufferRepr::Narrow { widened, .. } => widened.get_or_init(|| {
                let stored = self.stored();
                (0..stored.len()).map(|i| stored.f32_at(i)).collect()
            }),
        }
    }
}

impl fmt::Debug for F32Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("F32Buffer")
            .field("len", &self.len())
            .field("zero_copy", &self.is_zero_copy())
            .finish()
    }
}

struct Entry {
    info: TensorInfo,
    /// Index into `Weights::files`.
    file: usize,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

/// All tensors of a checkpoint, by safetensors key.
pub struct Weights {
    files: Vec<Arc<Backing>>,
    entries: BTreeMap<String, Entry>,
    source: String,
}

impl fmt::Debug for Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Weights")
            .field("source", &self.source)
            .field("tensors", &self.entries.len())
            .finish()
    }
}

impl Weights {
    /// Opens `dir/model.safetensors`, or the shards listed in `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Weights, WeightsError> {
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Weights::open_files(&[single]);
        }
        let index = dir.join("model.safetensors.index.json");
        if !index.is_file() {
            if !dir.is_dir() {
                let source = std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory");
                return Err(WeightsError::Io {
                    path: dir.to_path_buf(),
                    source,
                });
            }
            return Err(WeightsError::NoWeights {
                dir: dir.to_path_buf(),
            });
        }
        let text = std::fs::read(&index).map_err(|source| WeightsError::Io {
            path: index.clone(),
            source,
        })?;
        let shard_index = ShardIndex::parse(&text, &index)?;
        let paths: Vec<PathBuf> = shard_index.shards.iter().map(|s| dir.join(s)).collect();
        if let Some((shard, _)) = shard_index
            .shards
            .iter()
            .zip(&paths)
            .find(|(_, p)| !p.is_file())
        {
            return Err(WeightsError::Malformed {
                path: index.clone(),
                reason: format!(
                    "weight_map names shard \"{shard}\", which is not in {}",
                    dir.display()
                ),
            });
        }
        let mut weights = Weights::open_files(&paths)?;
        shard_index.check(&weights, dir)?;
        weights.source = format!("{} ({} shards)", index.display(), paths.len());
        Ok(weights)
    }

    /// Opens explicit safetensors files; a key may appear in only one of them.
    pub fn open_files(paths: &[PathBuf]) -> Result<Weights, WeightsError> {
        let mut weights = Weights {
            files: Vec::new(),
            entries: BTreeMap::new(),
            source: String::new(),
        };
        for path in paths {
            let file = File::open(path).map_err(|source| WeightsError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the map is read-only; like every mmap-based loader we assume the checkpoint
            // is not modified while the model runs.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| WeightsError::Io {
                path: path.clone(),
                source,
            })?;
            weights.add(Backing::Mmap(map), path)?;
        }
        weights.source = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        Ok(weights)
    }

    /// From files already in memory, as (name for error messages, bytes); a key may appear in
    /// only one of them.
    pub fn from_bytes(files: Vec<(PathBuf, Vec<u8>)>) -> Result<Weights, WeightsError> {
        let mut weights = Weights {
            files: Vec::new(),
            entries: BTreeMap::new(),
            source: String::new(),
        };
        let names: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        for (path, bytes) in files {
            weights.add(Backing::Owned(bytes.into_boxed_slice()), &path)?;
        }
        weights.source = names.join(", ");
        Ok(weights)
    }

    /// From bytes embedded in the program; `name` stands for the file in error messages.
    pub fn from_static(bytes: &'static [u8], name: &str) -> Result<Weights, WeightsError> {
        let mut weights = Weights {
            files: Vec::new(),
            entries: BTreeMap::new(),
            source: name.to_string(),
        };
        weights.add(Backing::Static(bytes), Path::new(name))?;
        Ok(weights)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub fn info(&self, key: &str) -> Option<&TensorInfo> {
        self.entries.get(key).map(|e| &e.info)
    }

    /// All keys, sorted.
    pub fn keys(&self) -> Vec<&str> {
        self.entries.keys().map(String::as_str).collect()
    }

    /// The tensor as f32, checked against `expected_shape`. F16 and BF16 tensors are widened
    /// only when read as f32 ([`F32Buffer::stored`] reads them as stored).
    pub fn get(&self, key: &str, expected_shape: &[usize]) -> Result<F32Buffer, WeightsError> {
        let entry = self
            .entries
            .get(key)
            .ok_or_else(|| WeightsError::MissingKey {
                key: key.to_string(),
                source_desc: self.source.clone(),
                hint: self.similar_keys(key),
            })?;
        let info = &entry.info;
        if let DType::Other(found) = &info.dtype {
            return Err(WeightsError::Dtype {
                key: key.to_string(),
                path: info.file.clone(),
                found: found.clone(),
            });
        }
        if info.shape != expected_shape {
            return Err(WeightsError::Shape {
                key: key.to_string(),
                path: info.file.clone(),
                expected: expected_shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        let file = &self.files[entry.file];
        let bytes = &file.bytes()[entry.start..entry.end];
        let repr = match info.dtype {
            DType::F32
                if cfg!(target_endian = "little")
                    && (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<f32>()) =>
            {
                BufferRepr::View {
                    file: file.clone(),
                    offset: entry.start,
                    len: bytes.len() / 4,
                }
            }
            DType::F32 => BufferRepr::Owned(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            DType::F16 | DType::BF16 => BufferRepr::Narrow {
                half: if info.dtype == DType::F16 {
                    Half::F16
                } else {
                    Half::Bf16
                },
                bytes: NarrowBytes::File {
                    file: file.clone(),
                    start: entry.start,
                    end: entry.end,
                },
                widened: Arc::default(),
            },
            DType::Other(_) => unreachable!("rejected above"),
        };
        Ok(F32Buffer { repr })
    }

    /// Where the weights came from, for error messages.
    pub fn source(&self) -> String {
        self.source.clone()
    }

    /// Up to three keys sharing the longest run of trailing components with `key`, which is
    /// what a `transformer.` / `bert.` prefix mismatch looks like.
    fn similar_keys(&self, key: &str) -> Option<String> {
        let wanted: Vec<&str> = key.rsplit('.').collect();
        let mut scored: Vec<(usize, &str)> = self
            .entries
            .keys()
            .filter_map(|k| {
                let common = k
                    .rsplit('.')
                    .zip(&wanted)
                    .take_while(|(a, b)| a == *b)
                    .count();
                let shorter = k.split('.').count().min(wanted.len());
                // One shared component is usually just "weight" or "bias": not a hint.
                (common >= 2 || (common >= 1 && common == shorter)).then_some((common, k.as_str()))
            })
            .collect();
        if scored.is_empty() {
            return None;
        }
        scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        let best = scored[0].0;
        let keys: Vec<String> = scored
            .iter()
            .take_while(|(score, _)| *score == best)
            .take(3)
            .map(|(_, k)| format!("\"{k}\""))
            .collect();
        Some(keys.join(", "))
    }

    /// Validates the header of one file and indexes its tensors.
    ///
    /// The safetensors crate decides what is a valid file, so we accept exactly what the
    /// reference loader accepts: a header within the file, tensors whose data ranges tile the
    /// data section from its first byte to the file's last (no holes, no overlaps, which is
    /// what stops polyglot files) and whose sizes match dtype and shape. We only add an
    /// explanation of what is wrong ([`explain`]).
    fn add(&mut self, backing: Backing, path: &Path) -> Result<(), WeightsError> {
        let bytes = backing.bytes();
        let (header_len, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| WeightsError::Malformed {
                path: path.to_path_buf(),
                reason: explain(bytes, &e),
            })?;
        let data_start = 8 + header_len;
        let file_index = self.files.len();
        for key in header.offset_keys() {
            let entry = header.info(&key).expect("a key of this header");
            if let Some(other) = self.entries.get(&key) {
                return Err(WeightsError::Malformed {
                    path: path.to_path_buf(),
                    reason: format!("tensor \"{key}\" is also in {}", other.info.file.display()),
                });
            }
            let (begin, end) = entry.data_offsets;
            let info = TensorInfo {
                dtype: entry.dtype.into(),
                shape: entry.shape.clone(),
                file: path.to_path_buf(),
            };
            self.entries.insert(
                key,
                Entry {
                    info,
                    file: file_index,
                    start: data_start + begin,
                    end: data_start + end,
                },
            );
        }
        self.files.push(Arc::new(backing));
        Ok(())
    }
}

/// A parsed `model.safetensors.index.json`: which shard holds each tensor.
#[derive(Clone, Debug)]
pub struct ShardIndex {
    /// The index file, for error messages.
    path: PathBuf,
    /// (tensor key, shard file name) in the index's order.
    weight_map: Vec<(String, String)>,
    /// The distinct shard file names, sorted.
    pub shards: Vec<String>,
}

impl ShardIndex {
    /// Parses the index text; `path` is only used in errors. Shard names must be plain file
    /// names: an index may not point outside its model directory.
    pub fn parse(text: &[u8], path: &Path) -> Result<ShardIndex, WeightsError> {
        let malformed = |reason: String| WeightsError::Malformed {
            path: path.to_path_buf(),
            reason,
        };
        let json: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| malformed(format!("invalid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| malformed("no \"weight_map\" object".into()))?;
        let mut weight_map = Vec::with_capacity(map.len());
        let mut shards: Vec<String> = Vec::new();
        for (key, shard) in map {
            let shard = shard
                .as_str()
                .ok_or_else(|| malformed(format!("weight_map[\"{key}\"] is not a file name")))?;
            // Exactly its own file name: no directory, "..", "." or trailing slash.
            if Path::new(shard).file_name() != Some(std::ffi::OsStr::new(shard)) {
                return Err(malformed(format!(
                    "weight_map[\"{key}\"] is \"{shard}\", expected a file name in the model \
                     directory"
                )));
            }
            weight_map.push((key.clone(), shard.to_string()));
            shards.push(shard.to_string());
        }
        if shards.is_empty() {
            return Err(malformed("empty weight_map".into()));
        }
        shards.sort_unstable();
        shards.dedup();
        Ok(ShardIndex {
            path: path.to_path_buf(),
            weight_map,
            shards,
        })
    }

    /// Checks that every tensor the index names is in the shard it names, in `weights` opened
    /// from the shards `dir/<shard>`: otherwise a tensor would silently come from elsewhere.
    pub fn check(&self, weights: &Weights, dir: &Path) -> Result<(), WeightsError> {
        for (key, shard) in &self.weight_map {
            let in_shard = weights.entries.get(key).map(|e| &e.info.file);
            if in_shard != Some(&dir.join(shard)) {
                return Err(WeightsError::Malformed {
                    path: self.path.clone(),
                    reason: format!(
                        "weight_map puts \"{key}\" in {shard}, but that shard does not contain it"
                    ),
                });
            }
        }
        Ok(())
    }
}

/// What is wrong with a file the safetensors crate refused, in terms of its tensors: the
/// crate's own messages do not say which tensor or which bytes. Only explains: whether a file
/// is valid is the crate's decision alone.
fn explain(bytes: &[u8], err: &SafeTensorError) -> String {
    let file_len = bytes.len();
    let header_len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let header = header_len.and_then(|n| {
        let end = usize::try_from(n).ok()?.checked_add(8)?;
        bytes.get(8..end)
    });
    let detail = match (err, header_len, header) {
        (SafeTensorError::HeaderTooSmall, ..) => Some(format!(
            "file is {file_len} bytes, too short for the 8-byte header length (truncated file?)"
        )),
        (SafeTensorError::HeaderTooLarge | SafeTensorError::InvalidHeaderLength, Some(n), _) => {
            Some(if n > (file_len - 8) as u64 {
                format!("header length {n} exceeds the file size {file_len} (truncated file?)")
            } else {
                format!("header length {n} is over the format's limit of {MAX_HEADER_LEN} bytes")
            })
        }
        (SafeTensorError::InvalidHeader(e), ..) => Some(format!("header is not UTF-8 text: {e}")),
        (_, _, Some(header)) => explain_header(header, file_len - 8 - header.len()),
        _ => None,
    };
    detail.unwrap_or_else(|| err.to_string())
}

/// The first problem in a header's JSON or in the layout it describes, checked in the order
/// the safetensors crate checks: entries sorted by offsets must each start where the previous
/// one ended, and hold exactly dtype size × elements bytes; the last must end the file.
fn explain_header(header: &[u8], data_len: usize) -> Option<String> {
    let map: serde_json::Map<String, serde_json::Value> = match serde_json::from_slice(header) {
        Ok(map) => map,
        Err(e) => return Some(format!("header is not a JSON object: {e}")),
    };
    let mut tensors: Vec<(String, HeaderEntry)> = Vec::new();
    for (key, value) in map {
        if key == "__metadata__" {
            if let Err(e) =
                serde_json::from_value::<Option<std::collections::HashMap<String, String>>>(value)
            {
                return Some(format!("\"__metadata__\" is not a map of strings: {e}"));
            }
            continue;
        }
        match serde_json::from_value::<HeaderEntry>(value) {
            Ok(entry) => tensors.push((key, entry)),
            Err(e) => return Some(format!("tensor \"{key}\": {e}")),
        }
    }
    tensors.sort_by(|a, b| (a.1.data_offsets, &a.0).cmp(&(b.1.data_offsets, &b.0)));
    let mut at = 0;
    let mut previous: Option<&(String, HeaderEntry)> = None;
    for t in &tensors {
        let (key, entry) = t;
        let (begin, end) = entry.data_offsets;
        if end < begin {
            return Some(format!(
                "tensor \"{key}\": data_offsets [{begin}, {end}] run backwards"
            ));
        }
        if begin < at {
            let (other, o) = previous.expect("only a tensor after another can start early");
            let (ob, oe) = o.data_offsets;
            return Some(format!(
                "tensor \"{key}\" (data bytes {begin}..{end}) overlaps tensor \"{other}\" \
                 (data bytes {ob}..{oe}): the format forbids tensors sharing bytes"
            ));
        }
        if begin > at {
            let after = previous.map_or("the start of the data".to_string(), |(k, _)| {
                format!("tensor \"{k}\"")
            });
            return Some(format!(
                "data bytes {at}..{begin}, between {after} and tensor \"{key}\", belong to no \
                 tensor: the format forbids holes"
            ));
        }
        let bits = entry
            .shape
            .iter()
            .try_fold(entry.dtype.bitsize(), |acc, &d| acc.checked_mul(d));
        let Some(bits) = bits else {
            return Some(format!(
                "tensor \"{key}\": shape {:?} of {} overflows the address space",
                entry.shape, entry.dtype
            ));
        };
        if bits % 8 != 0 {
            return Some(format!(
                "tensor \"{key}\": shape {:?} of {} does not fill whole bytes",
                entry.shape, entry.dtype
            ));
        }
        if end - begin != bits / 8 {
            return Some(format!(
                "tensor \"{key}\": {} data bytes, but dtype {} and shape {:?} need {}",
                end - begin,
                entry.dtype,
                entry.shape,
                bits / 8
            ));
        }
        at = end;
        previous = Some(t);
    }
    if at > data_len {
        return Some(format!(
            "the tensors need {at} data bytes, but the file has {data_len} after the header \
             (truncated file?)"
        ));
    }
    if at < data_len {
        return Some(format!(
            "{} bytes after the last tensor's data belong to no tensor (the tensors end at data \
             byte {at} of {data_len}): the format forbids trailing bytes",
            data_len - at
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    /// A fresh empty directory under the system temp dir, removed when dropped.
    fn temp_dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("cranformer-weights-{name}-"))
            .tempdir()
            .unwrap()
    }

    /// A safetensors file from (key, dtype, shape, little-endian bytes), written by hand; the
    /// header is space-padded to 8 bytes as the reference writer does.
    fn safetensors(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let mut data = Vec::new();
        for (key, dtype, shape, bytes) in tensors {
            let begin = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                key.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
            );
        }
        let mut json = serde_json::to_vec(&header).unwrap();
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json);
        out.extend(data);
        out
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn f32_roundtrip_is_zero_copy() {
        let tmp = temp_dir("f32");
        let dir = tmp.path();
        let data = [1.0, -2.5, 3.25, 0.0, 1e-3, 7.0];
        write(
            dir,
            "model.safetensors",
            &safetensors(&[("a.weight", "F32", &[2, 3], f32_bytes(&data))]),
        );
        let w = Weights::open(dir).unwrap();
        let buf = w.get("a.weight", &[2, 3]).unwrap();
        assert!(buf.is_zero_copy());
        assert_eq!(&buf[..], &data);
        assert_eq!(w.info("a.weight").unwrap().dtype, DType::F32);
        // Buffers keep the mapping alive after the store is gone.
        drop(w);
        assert_eq!(buf.clone()[2], 3.25);
    }

    #[test]
    fn f16_and_bf16_convert() {
        let tmp = temp_dir("half");
        let dir = tmp.path();
        let values = [1.0f32, -0.5, 65504.0, 0.099975586];
        let f16: Vec<u8> = values
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = values
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect();
        let path = write(
            dir,
            "x.safetensors",
            &safetensors(&[("h", "F16", &[4], f16), ("b", "BF16", &[2, 2], bf16)]),
        );
        let w = Weights::open_files(&[path]).unwrap();
        let h = w.get("h", &[4]).unwrap();
        assert!(!h.is_zero_copy());
        assert_eq!(&h[..], &values);
        let b = w.get("b", &[2, 2]).unwrap();
        let expected: Vec<f32> = values
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect();
        assert_eq!(&b[..], &expected[..]);
        assert_eq!(b[0], 1.0);
        assert_eq!(w.info("b").unwrap().dtype.to_string(), "BF16");
    }

    #[test]
    fn sharded_index() {
        let tmp = temp_dir("sharded");
        let dir = tmp.path();
        write(
            dir,
            "model-00001-of-00002.safetensors",
            &safetensors(&[("a", "F32", &[2], f32_bytes(&[1.0, 2.0]))]),
        );
        write(
            dir,
            "model-00002-of-00002.safetensors",
            &safetensors(&[("b", "F32", &[1], f32_bytes(&[3.0]))]),
        );
        let index = serde_json::json!({
            "metadata": {"total_size": 12},
            "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
        });
        write(
            dir,
            "model.safetensors.index.json",
            index.to_string().as_bytes(),
        );
        let w = Weights::open(dir).unwrap();
        assert_eq!(w.keys(), ["a", "b"]);
        assert_eq!(&w.get("a", &[2]).unwrap()[..], &[1.0, 2.0]);
        assert_eq!(&w.get("b", &[1]).unwrap()[..], &[3.0]);
        assert!(w
            .info("b")
            .unwrap()
            .file
            .ends_with("model-00002-of-00002.safetensors"));
        assert!(
            w.source().contains("model.safetensors.index.json"),
            "{}",
            w.source()
        );
    }

    #[test]
    fn missing_key_names_key_source_and_similar_keys() {
        let tmp = temp_dir("missing");
        let dir = tmp.path();
        let z = f32_bytes(&[0.0; 4]);
        write(
            dir,
            "model.safetensors",
            &safetensors(&[
                ("transformer.h.0.attn.c_attn.weight", "F32", &[4], z.clone()),
                ("transformer.h.0.mlp.c_fc.weight", "F32", &[4], z),
            ]),
        );
        let w = Weights::open(dir).unwrap();
        let err = w
            .get("h.0.attn.c_attn.weight", &[4])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tensor \"h.0.attn.c_attn.weight\" not found in"),
            "{err}"
        );
        assert!(err.contains("model.safetensors"), "{err}");
        assert!(
            err.contains("similar keys present: \"transformer.h.0.attn.c_attn.weight\""),
            "{err}"
        );
        assert!(!err.contains("c_fc"), "{err}");
        let err = w.get("lm_head.weight", &[4]).unwrap_err();
        assert!(
            matches!(err, WeightsError::MissingKey { hint: None, .. }),
            "{err}"
        );
    }

    #[test]
    fn wrong_shape_names_file_key_and_both_shapes() {
        let tmp = temp_dir("shape");
        let dir = tmp.path();
        let bytes = f32_bytes(&vec![0.0; 32 * 96]);
        write(
            dir,
            "model.safetensors",
            &safetensors(&[("h.0.attn.c_attn.weight", "F32", &[32, 96], bytes)]),
        );
        let w = Weights::open(dir).unwrap();
        let err = w
            .get("h.0.attn.c_attn.weight", &[32, 64])
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("model.safetensors: tensor \"h.0.attn.c_attn.weight\" has shape [32, 96], expected [32, 64]"),
            "{err}"
        );
    }

    #[test]
    fn truncated_file_is_malformed() {
        let tmp = temp_dir("truncated");
        let dir = tmp.path();
        let full = safetensors(&[("a", "F32", &[4], f32_bytes(&[1.0, 2.0, 3.0, 4.0]))]);
        for len in [0, 5, 12, full.len() - 1] {
            let path = write(dir, "model.safetensors", &full[..len]);
            let err = Weights::open_files(&[path]).unwrap_err();
            assert!(matches!(err, WeightsError::Malformed { .. }), "{err}");
            let text = err.to_string();
            assert!(
                text.contains("model.safetensors") && text.contains("(truncated file?)"),
                "{text}"
            );
        }
    }

    #[test]
    fn garbage_header_is_malformed() {
        let tmp = temp_dir("garbage");
        let dir = tmp.path();
        let mut bytes = 16u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{not json at all");
        let path = write(dir, "model.safetensors", &bytes);
        let err = Weights::open_files(&[path]).unwrap_err();
        assert!(matches!(err, WeightsError::Malformed { .. }), "{err}");
        assert!(
            err.to_string().contains("header is not a JSON object"),
            "{err}"
        );

        // Valid JSON, but sizes that disagree with the dtype and shape.
        let mut bad = safetensors(&[("a", "F32", &[3], f32_bytes(&[1.0, 2.0]))]);
        let path = write(dir, "bad.safetensors", &bad);
        let err = Weights::open_files(&[path]).unwrap_err().to_string();
        assert!(
            err.contains("tensor \"a\": 8 data bytes") && err.contains("need 12"),
            "{err}"
        );

        // A header length far beyond the file.
        bad[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        let path = write(dir, "huge.safetensors", &bad);
        let err = Weights::open_files(&[path]).unwrap_err().to_string();
        assert!(
            err.contains("huge.safetensors") && err.contains("header length"),
            "{err}"
        );
    }

    /// A file with a hand-written header over `data_len` zero bytes; the header is padded
    /// to 8 bytes as the reference writer does.
    fn raw_file(header: serde_json::Value, data_len: usize) -> Vec<u8> {
        let mut json = serde_json::to_vec(&header).unwrap();
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend(json);
        out.resize(out.len() + data_len, 0);
        out
    }

    fn open_raw(name: &str, header: serde_json::Value, data_len: usize) -> String {
        let tmp = temp_dir(name);
        let dir = tmp.path();
        let path = write(dir, "model.safetensors", &raw_file(header, data_len));
        let err = Weights::open_files(&[path]).unwrap_err();
        assert!(matches!(err, WeightsError::Malformed { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("model.safetensors: not a valid safetensors file"),
            "{text}"
        );
        text
    }

    fn f32_entry(shape: &[usize], begin: usize, end: usize) -> serde_json::Value {
        serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [begin, end]})
    }

    #[test]
    fn overlapping_tensors_are_refused() {
        // "b" aliases the bytes of "a": a polyglot file the format forbids.
        let header = serde_json::json!({"a": f32_entry(&[2], 0, 8), "b": f32_entry(&[2], 0, 8)});
        let err = open_raw("alias", header, 8);
        assert!(
            err.contains("overlaps tensor") && err.contains("data bytes 0..8"),
            "{err}"
        );
        assert!(err.contains("forbids tensors sharing bytes"), "{err}");

        // A partial overlap, with sizes that each agree with their shapes.
        let header = serde_json::json!({"a": f32_entry(&[3], 0, 12), "b": f32_entry(&[2], 8, 16)});
        let err = open_raw("partial", header, 16);
        assert!(
            err.contains(
                "tensor \"b\" (data bytes 8..16) overlaps tensor \"a\" (data bytes 0..12)"
            ),
            "{err}"
        );
    }

    #[test]
    fn holes_and_trailing_bytes_are_refused() {
        let header = serde_json::json!({"a": f32_entry(&[1], 0, 4), "b": f32_entry(&[1], 8, 12)});
        let err = open_raw("hole", header, 12);
        assert!(
            err.contains(
                "data bytes 4..8, between tensor \"a\" and tensor \"b\", belong to no tensor"
            ),
            "{err}"
        );
        let header = serde_json::json!({"a": f32_entry(&[1], 4, 8)});
        let err = open_raw("lead", header, 8);
        assert!(
            err.contains("data bytes 0..4, between the start of the data and tensor \"a\""),
            "{err}"
        );
        let header = serde_json::json!({"a": f32_entry(&[1], 0, 4)});
        let err = open_raw("trailing", header, 12);
        assert!(
            err.contains("8 bytes after the last tensor's data belong to no tensor"),
            "{err}"
        );
    }

    #[test]
    fn bad_entries_name_the_tensor() {
        let header =
            serde_json::json!({"a": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}});
        let err = open_raw("dtype", header, 4);
        assert!(err.contains("tensor \"a\": unknown variant `F33`"), "{err}");
        let header = serde_json::json!({"a": f32_entry(&[1], 4, 0)});
        let err = open_raw("backwards", header, 4);
        assert!(
            err.contains("tensor \"a\": data_offsets [4, 0] run backwards"),
            "{err}"
        );
        let header =
            serde_json::json!({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}});
        let err = open_raw("negative", header, 4);
        assert!(err.contains("tensor \"a\": invalid value"), "{err}");
        let header = serde_json::json!({"a": f32_entry(&[usize::MAX, 2], 0, 4)});
        let err = open_raw("overflow", header, 4);
        assert!(err.contains("overflows"), "{err}");
        let header = serde_json::json!({"__metadata__": {"format": 1}, "a": f32_entry(&[1], 0, 4)});
        let err = open_raw("metadata", header, 4);
        assert!(
            err.contains("\"__metadata__\" is not a map of strings"),
            "{err}"
        );
    }

    #[test]
    fn header_length_past_the_end_is_refused() {
        let mut file = raw_file(serde_json::json!({"a": f32_entry(&[1], 0, 4)}), 4);
        let len = file.len() as u64;
        file[..8].copy_from_slice(&(len - 7).to_le_bytes());
        let tmp = temp_dir("past-end");
        let dir = tmp.path();
        let path = write(dir, "model.safetensors", &file);
        let err = Weights::open_files(&[path]).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "header length {} exceeds the file size {len}",
                len - 7
            )),
            "{err}"
        );
    }

    #[test]
    fn int64_buffer_is_indexed_but_refused_on_get() {
        let tmp = temp_dir("int64");
        let dir = tmp.path();
        let ids: Vec<u8> = (0i64..4).flat_map(|i| i.to_le_bytes()).collect();
        write(
            dir,
            "model.safetensors",
            &safetensors(&[
                ("embeddings.position_ids", "I64", &[1, 4], ids),
                (
                    "embeddings.word_embeddings.weight",
                    "F32",
                    &[2],
                    f32_bytes(&[1.0, 2.0]),
                ),
            ]),
        );
        let w = Weights::open(dir).unwrap();
        assert!(w.contains("embeddings.position_ids"));
        assert_eq!(
            w.info("embeddings.position_ids").unwrap().dtype,
            DType::Other("I64".into())
        );
        assert_eq!(
            &w.get("embeddings.word_embeddings.weight", &[2]).unwrap()[..],
            &[1.0, 2.0]
        );
        let err = w.get("embeddings.position_ids", &[1, 4]).unwrap_err();
        assert!(
            matches!(err, WeightsError::Dtype { ref found, .. } if found == "I64"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("\"embeddings.position_ids\" has dtype I64"),
            "{err}"
        );
    }

    #[test]
    fn from_static_reads_in_place_when_aligned() {
        let file = safetensors(&[("w", "F32", &[2], f32_bytes(&[0.5, -0.5]))]);
        let n = file.len();
        // Two copies of the file, one at a 4-byte aligned address and one just past it.
        let mut storage = vec![0u8; 2 * n + 16];
        let aligned = (4 - storage.as_ptr() as usize % 4) % 4;
        let skewed = aligned + n.next_multiple_of(4) + 1;
        storage[aligned..aligned + n].copy_from_slice(&file);
        storage[skewed..skewed + n].copy_from_slice(&file);
        let storage: &'static [u8] = Box::leak(storage.into_boxed_slice());

        let w =
            Weights::from_static(&storage[aligned..aligned + n], "embedded.safetensors").unwrap();
        let buf = w.get("w", &[2]).unwrap();
        assert_eq!(&buf[..], &[0.5, -0.5]);
        assert_eq!(buf.is_zero_copy(), cfg!(target_endian = "little"));
        assert_eq!(w.source(), "embedded.safetensors");
        let err = w.get("w", &[3]).unwrap_err().to_string();
        assert!(
            err.starts_with("embedded.safetensors: tensor \"w\""),
            "{err}"
        );

        let w = Weights::from_static(&storage[skewed..skewed + n], "skewed.safetensors").unwrap();
        let buf = w.get("w", &[2]).unwrap();
        assert!(!buf.is_zero_copy());
        assert_eq!(&buf[..], &[0.5, -0.5]);
    }

    #[test]
    fn directory_without_safetensors_mentions_pytorch_bin() {
        let tmp = temp_dir("nothing");
        let dir = tmp.path();
        let err = Weights::open(dir).unwrap_err();
        assert!(matches!(err, WeightsError::NoWeights { .. }), "{err}");
        assert!(!err.to_string().contains("pytorch_model.bin"), "{err}");
        write(dir, "pytorch_model.bin", b"pickle");
        let err = Weights::open(dir).unwrap_err().to_string();
        assert!(err.contains("pytorch_model.bin is not supported"), "{err}");
    }

    #[test]
    fn opens_gpt2_tiny_fixture() {
        let dir = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/gpt2-tiny"
        ));
        let w = Weights::open(dir).unwrap();
        let wte = w.get("transformer.wte.weight", &[50257, 32]).unwrap();
        assert_eq!(wte.len(), 50257 * 32);
        assert!(wte.iter().all(|x| x.is_finite()));
        assert!(w.keys().windows(2).all(|k| k[0] < k[1]));
    }
}
