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

/// Why a `Retry-After` value could not be built or read. Messages name the bad text, cut short
/// if it is long, since that text may come from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryAfterError {
    /// The field value is empty or only whitespace.
    Empty,
    /// Neither delay-seconds nor any of the three HTTP-date forms.
    Syntax { text: String },
    /// Shaped like an HTTP-date, but one of its parts is wrong.
    BadDate { text: String, reason: String },
    /// An instant an HTTP-date cannot hold (its years run from 0000 to 9999).
    OutOfRange { instant: String },
    /// A delay that is negative or not a finite number.
    BadDelay { value: String },
}

/// How many characters of an offending text, as quoted and escaped, a message repeats.
const EXCERPT_CHARS: usize = 48;

/// `text` quoted and escaped for a message, cut after `EXCERPT_CHARS` characters of output
/// so that neither a long text nor one full of escapes makes a long message.
pub fn excerpt(text: &str) -> String {
    let mut shown = String::from('"');
    let mut width = 0;
    for c in text.chars() {
        let escaped = c.escape_debug();
        width += escaped.len();
        if width > EXCERPT_CHARS {
            shown.push_str("\"...");
            return shown;
        }
        shown.extend(escaped);
    }
    shown.push('"');
    shown
}

impl RetryAfterError {
    pub fn syntax(text: &str) -> Self {
        Self::Syntax {
            text: excerpt(text),
        }
    }

    pub fn bad_date(text: &str, reason: impl Into<String>) -> Self {
        Self::BadDate {
            text: excerpt(text),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for RetryAfterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty value: expected delay-seconds or an HTTP-date"),
            Self::Syntax { text } => write!(f, "not delay-seconds or an HTTP-date: {text}"),
            Self::BadDate { text, reason } => write!(f, "bad HTTP-date {text}: {reason}"),
            Self::OutOfRange { instant } => write!(
                f,
                "{instant} is outside the years 0000 to 9999 that an HTTP-date can hold"
            ),
            Self::BadDelay { value } => {
                write!(f, "must be a finite number of seconds >= 0, got {value}")
            }
        }
    }
}

impl std::error::Error for RetryAfterError {}

impl From<RetryAfterError> for PyErr {
    fn from(err: RetryAfterError) -> PyErr {
        PyValueError::new_err(err.to_string())
    }
}

/// The type name of a bad value, for error messages.
pub fn type_name(value: &pyo3::Bound<'_, pyo3::PyAny>) -> String {
    use pyo3::types::{PyAnyMethods, PyTypeMethods};
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "object".to_owned())
}

/// The `repr()` of a bad value, for error messages (its type name if `repr()` fails).
pub fn describe(value: &pyo3::Bound<'_, pyo3::PyAny>) -> String {
    use pyo3::types::PyAnyMethods;
    value
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| format!("<{}>", type_name(value)))
}

/// Turns an I/O failure on a named path into an `OSError` that says what was being done.
pub fn io_error(action: &str, path: &std::path::Path, err: &std::io::Error) -> PyErr {
    PyOSError::new_err(format!("cannot {action} {}: {err}", path.display()))
}
