//! Every error the core can report, and the one place each becomes a Python exception.

use std::fmt;

use pyo3::exceptions::{PyException, PyOSError, PyTypeError, PyValueError};
use pyo3::types::PyAnyMethods;
use pyo3::{Bound, PyAny, PyErr};

pyo3::create_exception!(
    tidegate._tidegate,
    CircuitOpenError,
    PyException,
    "A call refused because its circuit breaker is open (or half-open with every probe slot \
     taken). `breaker` is the breaker; `retry_after` the seconds until a probe is allowed."
);

/// The `CircuitOpenError` for a call the breaker `name` refused: it is open, or half-open
/// with every probe slot taken. Carries `breaker` and `retry_after`.
pub fn circuit_open(
    breaker: &Bound<'_, PyAny>,
    name: &str,
    half_open: bool,
    retry_after: f64,
) -> PyErr {
    let message = if half_open {
        format!("circuit breaker '{name}' is half-open and its probe calls are all taken")
    } else {
        format!("circuit breaker '{name}' is open; retry in {retry_after:.3}s")
    };
    let err = CircuitOpenError::new_err(message);
    let value = err.value(breaker.py());
    if let Err(failed) = value
        .setattr("breaker", breaker)
        .and_then(|()| value.setattr("retry_after", retry_after))
    {
        return failed;
    }
    err
}

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

/// An `int` argument as Python gave it, however large: only its size decides its range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WholeNumber {
    /// Fits in an i128.
    Exact(i128),
    /// Beyond what an i128 holds. `shown` is its value for a message, cut short when long.
    Huge { negative: bool, shown: String },
}

impl WholeNumber {
    /// The value when it is at least `min` and fits in `T`; otherwise a `ValueError` naming
    /// `param` that says which bound it broke and shows the value.
    pub fn at_least<T: TryFrom<i128>>(
        &self,
        param: &'static str,
        min: i128,
    ) -> Result<T, ArgError> {
        let too_small =
            || ArgError::value(param, format!("must be an integer >= {min}, got {self}"));
        let too_large = || ArgError::value(param, format!("is too large: {self}"));
        match self {
            Self::Exact(n) if *n < min => Err(too_small()),
            Self::Exact(n) => T::try_from(*n).map_err(|_| too_large()),
            Self::Huge { negative: true, .. } => Err(too_small()),
            Self::Huge {
                negative: false, ..
            } => Err(too_large()),
        }
    }

    /// The value, with anything beyond the i128 range pinned to its nearest end: for a
    /// parameter that caps large values anyway.
    pub fn saturated(&self) -> i128 {
        match self {
            Self::Exact(n) => *n,
            Self::Huge { negative: true, .. } => i128::MIN,
            Self::Huge {
                negative: false, ..
            } => i128::MAX,
        }
    }
}

impl fmt::Display for WholeNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(n) => write!(f, "{n}"),
            Self::Huge { shown, .. } => f.write_str(shown),
        }
    }
}

/// How many digits of a huge int a message repeats before it cuts the rest short.
const SHOWN_DIGITS: usize = 64;

/// A huge int's decimal text for a message: whole when short, else its first digits and how
/// many there are (Python refuses to print an int of more than a few thousand digits at all).
fn show_huge(exact: &pyo3::Bound<'_, pyo3::PyAny>) -> String {
    use pyo3::types::PyAnyMethods;
    let Ok(text) = exact.repr().map(|r| r.to_string()) else {
        let bits = exact
            .call_method0("bit_length")
            .and_then(|b| b.extract::<u64>())
            .map_or_else(|_| "many".to_owned(), |b| b.to_string());
        let sign = if exact.lt(0).unwrap_or(false) {
            "a negative"
        } else {
            "an"
        };
        return format!("{sign} int of {bits} bits");
    };
    let (sign, digits) = text.split_at(usize::from(text.starts_with('-')));
    if digits.len() <= SHOWN_DIGITS {
        return text;
    }
    format!(
        "{sign}{}... ({} digits)",
        &digits[..SHOWN_DIGITS],
        digits.len()
    )
}

/// Reads an `int` argument whole. A value that is not an int (a bool is not one here) is a
/// `TypeError` naming `param`; an int of any size is not, so the caller can refuse one out of
/// range with a `ValueError` (`WholeNumber::at_least`) instead of calling it the wrong type.
pub fn whole_number(
    param: &'static str,
    value: &pyo3::Bound<'_, pyo3::PyAny>,
) -> Result<WholeNumber, ArgError> {
    use pyo3::exceptions::PyOverflowError;
    use pyo3::types::{PyAnyMethods, PyBool};
    if value.is_instance_of::<PyBool>() {
        return Err(ArgError::type_(
            param,
            format!("must be an int, got {}", describe(value)),
        ));
    }
    match value.extract::<i128>() {
        Ok(n) => Ok(WholeNumber::Exact(n)),
        Err(err) if err.is_instance_of::<PyOverflowError>(value.py()) => Ok(huge(value)),
        Err(_) => Err(ArgError::type_(
            param,
            format!("must be an int, got {}", type_name(value)),
        )),
    }
}

/// An int too large for a float (beyond about 1.8e308, where `float()` raises
/// `OverflowError`), so that a parameter taking seconds can say it is out of range rather
/// than the wrong type; `None` for anything else.
pub fn int_beyond_float(value: &pyo3::Bound<'_, pyo3::PyAny>) -> Option<WholeNumber> {
    use pyo3::types::{PyAnyMethods, PyBool, PyInt};
    let beyond = value.is_instance_of::<PyInt>()
        && !value.is_instance_of::<PyBool>()
        && value.extract::<f64>().is_err();
    beyond.then(|| huge(value))
}

/// An int known to be beyond the i128 range, described for a message.
fn huge(value: &pyo3::Bound<'_, pyo3::PyAny>) -> WholeNumber {
    use pyo3::types::PyAnyMethods;
    // `operator.index` gives the plain int an int subclass stands for, whose text is its
    // digits whatever the subclass's own `repr` says.
    let exact = value
        .py()
        .import("operator")
        .and_then(|operator| operator.call_method1("index", (value,)));
    let exact = exact.as_ref().unwrap_or(value);
    WholeNumber::Huge {
        negative: exact.lt(0).unwrap_or(false),
        shown: show_huge(exact),
    }
}

/// A native object used before, or configured after, its one configuration: a mistake in
/// tidegate's own Python layer, never a user's.
pub fn config_error(message: &str) -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err(message.to_owned())
}

/// Turns an I/O failure on a named path into an `OSError` that says what was being done.
pub fn io_error(action: &str, path: &std::path::Path, err: &std::io::Error) -> PyErr {
    PyOSError::new_err(format!("cannot {action} {}: {err}", path.display()))
}

/// A Redis store that could not be written or read: a `ConnectionError` (an `OSError`) with
/// the store's URI (its password hidden) and what went wrong.
pub fn store_error(action: &str, what: &str, err: &crate::store::StoreError) -> PyErr {
    pyo3::exceptions::PyConnectionError::new_err(format!("cannot {action} {what}: {err}"))
}

/// An I/O failure with no path to name (a switch without a state file): the `OSError` says
/// only what the system said.
pub fn io_error_without_path(err: &std::io::Error) -> PyErr {
    PyOSError::new_err(err.to_string())
}

/// A WSGI call with other than the two arguments `(environ, start_response)`.
pub fn wsgi_arity(got: usize) -> PyErr {
    PyTypeError::new_err(format!(
        "a WSGI app takes (environ, start_response), got {got} arguments"
    ))
}

/// Why the metrics could not use a shared file.
#[derive(Debug)]
pub enum MetricsError {
    /// A bad argument (`slots`).
    Arg(ArgError),
    /// A system call on `path` failed while doing `action`.
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        err: std::io::Error,
    },
    /// The file is not a metrics file this version can use (garbage, truncated, another
    /// layout).
    BadFile {
        path: std::path::PathBuf,
        reason: String,
    },
    /// Every slot belongs to a live process.
    Full {
        path: std::path::PathBuf,
        slots: usize,
    },
    /// This process already holds a slot (of the file at `path`).
    AlreadyAttached { path: std::path::PathBuf },
    /// No shared memory on this platform.
    Unsupported,
}

impl MetricsError {
    pub fn io(action: &'static str, path: &std::path::Path, err: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_owned(),
            err,
        }
    }
}

impl From<ArgError> for MetricsError {
    fn from(err: ArgError) -> Self {
        Self::Arg(err)
    }
}

impl fmt::Display for MetricsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Arg(err) => err.fmt(f),
            Self::Io { action, path, err } => {
                write!(f, "cannot {action} metrics file {}: {err}", path.display())
            }
            Self::BadFile { path, reason } => {
                write!(
                    f,
                    "{} is not a usable metrics file: {reason}",
                    path.display()
                )
            }
            Self::Full { path, slots } => write!(
                f,
                "all {slots} slots of metrics file {} belong to live processes",
                path.display()
            ),
            Self::AlreadyAttached { path } => write!(
                f,
                "this process already records into metrics file {}",
                path.display()
            ),
            Self::Unsupported => f.write_str("shared metrics need a Unix system"),
        }
    }
}

impl std::error::Error for MetricsError {}

impl From<MetricsError> for PyErr {
    fn from(err: MetricsError) -> PyErr {
        match err {
            MetricsError::Arg(arg) => arg.into(),
            MetricsError::BadFile { .. } => PyValueError::new_err(err.to_string()),
            MetricsError::Io { .. } | MetricsError::Full { .. } | MetricsError::Unsupported => {
                PyOSError::new_err(err.to_string())
            }
            MetricsError::AlreadyAttached { .. } => {
                pyo3::exceptions::PyRuntimeError::new_err(err.to_string())
            }
        }
    }
}

/// An instant outside the years 1 to 9999, which a Python `datetime` cannot hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeyondDatetime {
    /// Unix seconds asked for as a `datetime`.
    Instant(i64),
    /// A `Retry-After` resolved to an instant, described as `now + N seconds` or its date.
    When(String),
}

impl fmt::Display for BeyondDatetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BeyondDatetime::Instant(unix) => {
                write!(f, "instant {unix} is outside the years 1 to 9999")
            }
            BeyondDatetime::When(what) => write!(
                f,
                "{what} is outside the years 1 to 9999 that a datetime can hold"
            ),
        }
    }
}

impl std::error::Error for BeyondDatetime {}

impl From<BeyondDatetime> for PyErr {
    fn from(err: BeyondDatetime) -> PyErr {
        PyValueError::new_err(err.to_string())
    }
}

#[cfg(test)]
mod tests;
