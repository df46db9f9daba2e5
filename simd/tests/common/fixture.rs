//! Reader for the text fixtures in `tests/fixtures/` (written by `torch_reference.py`).
//!
//! Format: lines starting with `#` are comments; every other non-empty line is one tensor,
//! `name dims values...`, where `dims` is like `2x7x7x5` (row-major, last index fastest; a scalar
//! is `1`) and the values are space-separated decimals. Self-contained (std only), so another
//! test crate can include it with `#[path = ".../fixture.rs"] mod fixture;`.
#![allow(dead_code)]

use std::collections::HashMap;

/// One tensor of a fixture file.
#[derive(Debug, Clone)]
pub struct Tensor {
    /// Its dimensions, outermost first.
    pub dims: Vec<usize>,
    /// Its values, row-major.
    pub data: Vec<f32>,
}

impl Tensor {
    /// The values as integers (panics unless each is one).
    pub fn ints(&self) -> Vec<i64> {
        self.data
            .iter()
            .map(|&v| {
                assert!(v.fract() == 0.0, "{v} is not an integer");
                v as i64
            })
            .collect()
    }
}

/// The tensors of a fixture file, by name, and their order in the file.
#[derive(Debug, Clone, Default)]
pub struct Fixture {
    /// Tensor names in file order.
    pub names: Vec<String>,
    tensors: HashMap<String, Tensor>,
}

impl Fixture {
    /// Parses a fixture file's text; the error names the offending line.
    pub fn parse(text: &str) -> Result<Fixture, String> {
        let mut f = Fixture::default();
        for (no, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |what: &str| format!("fixture line {}: {what}", no + 1);
            let mut it = line.split_ascii_whitespace();
            let name = it.next().ok_or_else(|| err("no name"))?.to_string();
            let dims = it
                .next()
                .ok_or_else(|| err("no dims"))?
                .split('x')
                .map(|d| d.parse::<usize>().map_err(|e| err(&format!("dims: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let data = it
                .map(|v| {
                    v.parse::<f32>()
                        .map_err(|e| err(&format!("value {v:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let len: usize = dims.iter().product();
            if data.len() != len {
                return Err(err(&format!(
                    "{name}: dims {dims:?} make {len} values, the line has {}",
                    data.len()
                )));
            }
            if f.tensors
                .insert(name.clone(), Tensor { dims, data })
                .is_some()
            {
                return Err(err(&format!("{name} appears twice")));
            }
            f.names.push(name);
        }
        Ok(f)
    }

    /// The tensor called `name` (panics, naming it, if there is none).
    pub fn get(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no tensor {name:?}"))
    }

    /// The tensor called `name`, checking its dimensions.
    pub fn shaped(&self, name: &str, dims: &[usize]) -> &[f32] {
        let t = self.get(name);
        assert_eq!(t.dims, dims, "{name}: dimensions");
        &t.data
    }
}
