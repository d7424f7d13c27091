//! Library errors. `InputError` marks mistakes in user input (suite files, flags, data files,
//! checkpoints): the CLI maps them to exit code 2, everything else to 1.

/// Result alias used across the crate (errors carry context via `anyhow`).
pub type Result<T, E = anyhow::Error> = std::result::Result<T, E>;

/// A user-input error: names the file (and line/key where known) and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

impl InputError {
    /// Builds an input error from any displayable message.
    pub fn new(msg: impl Into<String>) -> Self {
        InputError(msg.into())
    }
}

/// Returns early with an [`InputError`] (exit code 2 at the CLI).
#[macro_export]
macro_rules! input_bail {
    ($($arg:tt)*) => { return Err(anyhow::Error::new($crate::error::InputError(format!($($arg)*)))) };
}

/// True when the error chain contains an [`InputError`].
pub fn is_input_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<InputError>().is_some())
}

/// "unknown key `x`; did you mean `y`? allowed: a, b, c".
pub fn unknown(what: &str, got: &str, allowed: &[&str]) -> String {
    let best = allowed.iter().map(|a| (strsim::levenshtein(got, a), *a)).filter(|(d, a)| *d <= 2.max(a.len() / 3)).min();
    let mut msg = format!("unknown {what} `{got}`");
    if let Some((_, a)) = best {
        msg.push_str(&format!("; did you mean `{a}`?"));
    }
    msg.push_str(&format!(" allowed: {}", allowed.join(", ")));
    msg
}

/// Human name of a TOML value's type, for "expected X, found Y" messages.
pub fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "string",
        toml::Value::Integer(_) => "integer",
        toml::Value::Float(_) => "float",
        toml::Value::Boolean(_) => "boolean",
        toml::Value::Datetime(_) => "datetime",
        toml::Value::Array(_) => "array",
        toml::Value::Table(_) => "table",
    }
}
