//! Errors of the core library. Every fallible public function returns [`Result`];
//! the R bridge turns these into R conditions.

/// What can go wrong in rscvi-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument is out of its allowed range; `arg` names it as the user spells it.
    #[error("`{arg}` {msg}")]
    InvalidArgument { arg: String, msg: String },
    /// The data do not fit the model (shape, values, categories).
    #[error("invalid data: {0}")]
    InvalidData(String),
    /// Training produced NaN/Inf; the model was rolled back to the last finite state.
    #[error("{0}")]
    NonFinite(String),
    /// Reading or writing a saved model failed.
    #[error("model files: {0}")]
    Io(String),
    /// Reading or writing a data file (h5ad, h5mu, 10x h5) failed; the message names it.
    #[error("{0}")]
    File(String),
    /// The requested compute device cannot be used.
    #[error("device: {0}")]
    Device(String),
    /// A worker of data-parallel training failed, or could not reach the others.
    #[error("data-parallel training: {0}")]
    Workers(String),
    /// The user interrupted a query (Ctrl-C).
    #[error("interrupted (Ctrl-C)")]
    Interrupted,
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn invalid_arg(arg: &str, msg: impl Into<String>) -> Error {
    Error::InvalidArgument {
        arg: arg.to_string(),
        msg: msg.into(),
    }
}
