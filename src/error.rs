//! The library's error type. Every message names what went wrong and, where there is one, what to do.

/// Errors from glimpse's engine. Messages are written for the person who will read them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shape mismatch in {op}: {msg}")]
    Shape { op: &'static str, msg: String },

    #[error("{op} does not support dtype {dtype}: {msg}")]
    DType {
        op: &'static str,
        dtype: &'static str,
        msg: String,
    },

    #[error("tensors on different devices in {op}: {lhs} and {rhs}")]
    DeviceMismatch {
        op: &'static str,
        lhs: &'static str,
        rhs: &'static str,
    },

    #[error("no GPU adapter is available ({0}); use the CPU device instead")]
    NoAdapter(String),

    #[error(
        "this GPU allows {limit} = {have}, glimpse needs at least {need}; use the CPU device (--device cpu)"
    )]
    MissingLimit {
        limit: &'static str,
        have: u64,
        need: u64,
    },

    #[error(
        "this GPU allows {limit_bytes} bytes ({limit_mib:.1} MiB) per storage binding; tensor {name} needs {bytes} bytes ({mib:.1} MiB): use the CPU device or a smaller / more quantized model"
    )]
    BindingTooLarge {
        name: String,
        bytes: u64,
        mib: f64,
        limit_bytes: u64,
        limit_mib: f64,
    },

    #[error("the GPU could not create a device: {0}")]
    RequestDevice(String),

    #[error("GPU error: {0}")]
    Gpu(String),

    #[error("the GPU device was lost ({0}); reload the model or use the CPU device")]
    DeviceLost(String),

    #[error("CPU backend: {0}")]
    Cpu(#[from] candle_core::Error),

    #[error("image: {0}")]
    Image(String),

    #[error("config: {0}")]
    Config(String),

    #[error("weights: {0}")]
    Weights(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("invalid argument: {0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A stable machine-readable name of the kind of error (the browser API's `error.code`).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Shape { .. } => "shape",
            Error::DType { .. } => "dtype",
            Error::DeviceMismatch { .. } => "device-mismatch",
            Error::NoAdapter(_) => "no-adapter",
            Error::MissingLimit { .. } => "missing-limit",
            Error::BindingTooLarge { .. } => "binding-too-large",
            Error::RequestDevice(_) => "request-device",
            Error::Gpu(_) => "gpu",
            Error::DeviceLost(_) => "device-lost",
            Error::Cpu(_) => "cpu",
            Error::Image(_) => "image",
            Error::Config(_) => "config",
            Error::Weights(_) => "weights",
            Error::Tokenizer(_) => "tokenizer",
            Error::Invalid(_) => "invalid",
        }
    }

    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
}
