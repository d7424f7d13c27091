//! The suite file as text plus a span index, so every validation error can name its line.

use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

pub use crate::error::{type_name, unknown};

/// One step in a path into the TOML document.
#[derive(Clone, Debug)]
pub enum Seg {
    Key(String),
    Idx(usize),
}

/// A parsed suite file: typed values (`toml::Table`) and the raw text for locating keys.
pub struct Source {
    pub path: PathBuf,
    pub text: String,
    pub table: toml::Table,
}

impl Source {
    /// Parses `text` (read from `path`); a syntax error names file and line.
    pub fn parse(path: &Path, text: String) -> Result<Self, String> {
        match toml::from_str::<toml::Table>(&text) {
            Ok(table) => {
                let src = Source { path: path.to_path_buf(), text, table };
                if let Some((at, x)) = non_finite(&src.table, &mut Vec::new()) {
                    return Err(src.error(&at, format!("found {x}; NaN and inf are not allowed in a suite (every number must be finite)")));
                }
                Ok(src)
            }
            Err(e) => {
                let line = e.span().map(|s| line_of(&text, s.start)).unwrap_or(0);
                Err(format!("{}:{}: invalid TOML: {}", path.display(), line, e.message()))
            }
        }
    }

    /// 1-based line of the value at `path`, or of the nearest enclosing item that exists.
    pub fn line(&self, path: &[Seg]) -> usize {
        let Ok(doc) = DeTable::parse(&self.text) else { return 0 };
        let mut best = 0usize;
        let root = DeValue::Table(doc.into_inner());
        let mut cur: &DeValue = &root;
        for seg in path {
            let next = match seg {
                Seg::Key(k) => cur.get(k.as_str()),
                Seg::Idx(i) => cur.get(*i),
            };
            match next {
                Some(v) => {
                    best = line_of(&self.text, v.span().start);
                    cur = v.get_ref();
                }
                None => break,
            }
        }
        best
    }

    /// `file:line: key: message`, the format of every suite error.
    pub fn error(&self, path: &[Seg], msg: impl std::fmt::Display) -> String {
        format!("{}:{}: `{}`: {}", self.path.display(), self.line(path), dotted(path), msg)
    }
}

/// The first NaN or infinite float anywhere in the document, with its path.
fn non_finite(t: &toml::Table, path: &mut Vec<Seg>) -> Option<(Vec<Seg>, f64)> {
    fn walk(v: &toml::Value, path: &mut Vec<Seg>) -> Option<(Vec<Seg>, f64)> {
        match v {
            toml::Value::Float(f) if !f.is_finite() => Some((path.clone(), *f)),
            toml::Value::Table(t) => non_finite(t, path),
            toml::Value::Array(a) => a.iter().enumerate().find_map(|(i, x)| {
                path.push(Seg::Idx(i));
                let r = walk(x, path);
                path.pop();
                r
            }),
            _ => None,
        }
    }
    t.iter().find_map(|(k, v)| {
        path.push(Seg::Key(k.clone()));
        let r = walk(v, path);
        path.pop();
        r
    })
}

/// Renders a path as `a.b[2].c`.
pub fn dotted(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Idx(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}
