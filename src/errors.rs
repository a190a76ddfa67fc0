//! Every error the core can report, and the one place each becomes a Python exception.

use std::fmt;

use pyo3::exceptions::{PyOSError, PyTypeError, PyValueError};
use pyo3::PyErr;

/// A bad argument: always names the parameter and the value it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgError {
    /// The value has the right type but is out of range or malformed.
    Value {
        param: &'static str,
        message: String,
    },
    /// The value has the wrong type.
    Type {
        param: &'static str,
        message: String,
    },
}

impl ArgError {
    pub fn value(param: &'static str, message: impl Into<String>) -> Self {
        Self::Value {
            param,
            message: message.into(),
        }
    }

    pub fn type_(param: &'static str, message: impl Into<String>) -> Self {
        Self::Type {
            param,
            message: message.into(),
        }
    }
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value { param, message } | Self::Type { param, message } => {
                write!(f, "{param}: {message}")
            }
        }
    }
}

impl std::error::Error for ArgError {}

impl From<ArgError> for PyErr {
    fn from(err: ArgError) -> PyErr {
        match err {
            ArgError::Value { .. } => PyValueError::new_err(err.to_string()),
            ArgError::Type { .. } => PyTypeError::new_err(err.to_string()),
        }
    }
}

/// Turns an I/O failure on a named path into an `OSError` that says what was being done.
pub fn io_error(action: &str, path: &std::path::Path, err: &std::io::Error) -> PyErr {
    PyOSError::new_err(format!("cannot {action} {}: {err}", path.display()))
}
