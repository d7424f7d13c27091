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
