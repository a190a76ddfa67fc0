//! `MaintenanceSwitch` and `MaintenanceStatus` as Python sees them: argument checking and
//! conversions only; the behaviour lives in `Maintenance`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyString};

use super::{
    state_file, ChangeError, Config, Maintenance, Notice, State, Status, Store, MAX_DELAY,
};
use crate::clock::{datetime_seconds, datetime_type, unix_to_datetime, MAX_UNIX, MIN_UNIX};
use crate::errors::{
    describe, int_beyond_float, io_error, io_error_without_path, store_error, type_name,
    whole_number, ArgError,
};
use crate::retry_after::{RetryAfter, RetryAfterPy};
use crate::store;

/// Set once the interpreter starts to shut down; held for reading while a thread of ours that
/// Python did not start is attached to it, so shutdown waits for that thread to detach and no
/// such thread attaches afterwards (on Python before 3.13 nothing else tells it not to).
static INTERPRETER_EXITING: parking_lot::RwLock<bool> = parking_lot::RwLock::new(false);

/// Called by `atexit`: from now on, background threads log nothing.
#[pyfunction]
fn _stop_background_logging(py: Python<'_>) {
    // Without the GIL, so a background thread that holds the read lock and waits for the GIL
    // can finish first.
    py.detach(|| *INTERPRETER_EXITING.write() = true);
}

/// Registers what the module needs at interpreter exit.
pub fn prepare_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let stop = wrap_pyfunction!(_stop_background_logging, m)?;
    m.py().import("atexit")?.call_method1("register", (stop,))?;
    Ok(())
}

/// Logs `message` as a warning on the `tidegate` logger, from any thread. Never raises: a
/// logging failure has nowhere better to go. Once the interpreter is exiting it logs nothing.
pub fn log_warning(message: &str) {
    static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    // `try_read`: it fails only while the exit hook holds or waits for the lock, and then
    // nothing is logged. A blocking read could wait behind that writer while holding the GIL
    // another reader needs to finish, and the three would wait for ever.
    let Some(exiting) = INTERPRETER_EXITING.try_read() else {
        return;
    };
    if *exiting {
        return;
    }
    Python::try_attach(|py| {
        let logger = LOGGER.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            Ok(py
                .import("logging")?
                .call_method1("getLogger", ("tidegate",))?
                .unbind())
        });
        if let Ok(logger) = logger {
            let _ = logger.bind(py).call_method1("warning", ("%s", message));
        }
    });
}

/// An argument taken as passed, so validation can name it; `Given(None)` when left out.
pub struct Given<'py>(Option<Bound<'py, PyAny>>);

impl<'a, 'py> FromPyObject<'a, 'py> for Given<'py> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> Result<Self, Self::Error> {
        Ok(Self(Some(obj.to_owned())))
    }
}

/// A store as it can be shown: a path, or a URI without its password.
fn describe_store(store: &Store) -> String {
    match store {
        Store::File(path) => path.to_string_lossy().into_owned(),
        Store::Redis(uri) => uri.to_string(),
    }
}

fn str_repr(py: Python<'_>, text: &str) -> String {
    describe(PyString::new(py, text).as_any())
}

fn extract_store(
    param: &'static str,
    value: Option<&Bound<'_, PyAny>>,
) -> Result<Option<Store>, ArgError> {
    let Some(value) = value else {
        return Ok(None);
    };
    if let Ok(text) = value.extract::<String>() {
        if store::is_uri(&text) {
            return store::Uri::parse(param, &text).map(|uri| Some(Store::Redis(uri)));
        }
    }
    let path: PathBuf = value.extract().map_err(|_| {
        ArgError::type_(
            param,
            format!(
                "must be a str, an os.PathLike or None (a state file path, or a redis:// or unix:// store URI), got {}",
                type_name(value)
            ),
        )
    })?;
    if path.as_os_str().is_empty() {
        return Err(ArgError::value(param, "must not be empty, got ''"));
    }
    let absolute = std::path::absolute(&path).map_err(|err| {
        ArgError::value(
            param,
            format!("cannot be resolved: {}: {err}", path.display()),
        )
    })?;
    let trailing_separator = path
        .to_string_lossy()
        .chars()
        .last()
        .is_some_and(std::path::is_separator);
    if absolute.file_name().is_none() || trailing_separator {
        return Err(ArgError::value(
            param,
            format!("must name a file, got {}", describe(value)),
        ));
    }
    Ok(Some(Store::File(absolute)))
}

fn extract_local(value: Given<'_>) -> Result<bool, ArgError> {
    let Some(value) = value.0 else {
        return Ok(false);
    };
    value
        .cast::<PyBool>()
        .map(|flag| flag.is_true())
        .map_err(|_| ArgError::type_("local", format!("must be a bool, got {}", describe(&value))))
}

fn extract_env_var(value: Given<'_>) -> Result<Option<String>, ArgError> {
    let Some(value) = value.0 else {
        return Ok(Config::default().env_var);
    };
    if value.is_none() {
        return Ok(None);
    }
    let Ok(name) = value.cast::<PyString>() else {
        return Err(ArgError::type_(
            "env_var",
            format!("must be a str or None, got {}", type_name(&value)),
        ));
    };
    let name = name.to_string();
    if name.is_empty() || name.contains(['=', '\0']) {
        return Err(ArgError::value(
            "env_var",
            format!(
                "must be a non-empty name without '=' or NUL, got {}",
                describe(&value)
            ),
        ));
    }
    Ok(Some(name))
}

fn extract_poll_interval(value: Given<'_>) -> Result<Duration, ArgError> {
    let Some(value) = value.0 else {
        return Ok(Config::default().poll_interval);
    };
    if let Some(huge) = int_beyond_float(&value) {
        return Err(ArgError::value(
            "poll_interval",
            format!("is out of range: {huge}"),
        ));
    }
    let seconds = if value.is_instance_of::<PyBool>() {
        None
    } else {
        value.extract::<f64>().ok()
    };
    let Some(seconds) = seconds else {
        return Err(ArgError::type_(
            "poll_interval",
            format!("must be a number of seconds, got {}", type_name(&value)),
        ));
    };
    poll_interval_of(seconds)
}

/// A `poll_interval` of `seconds`, for a maintenance switch or a shared breaker: a finite
/// number >= 0 (at least `MIN_POLL_INTERVAL` in effect).
pub(crate) fn poll_interval_of(seconds: f64) -> Result<Duration, ArgError> {
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(ArgError::value(
            "poll_interval",
            format!("must be a finite number of seconds >= 0, got {seconds}"),
        ));
    }
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| ArgError::value("poll_interval", format!("is out of range: {seconds}")))
}

fn extract_default_retry_after(value: Given<'_>) -> Result<u64, ArgError> {
    let Some(value) = value.0 else {
        return Ok(Config::default().default_retry_after);
    };
    let seconds = whole_number("default_retry_after", &value)?;
    u64::try_from(seconds.saturated())
        .ok()
        .filter(|s| *s <= MAX_DELAY)
        .ok_or_else(|| {
            ArgError::value(
                "default_retry_after",
                format!("must be whole seconds between 0 and {MAX_DELAY}, got {seconds}"),
            )
        })
}

fn extract_message(value: Option<&Bound<'_, PyAny>>) -> Result<Option<String>, ArgError> {
    let Some(value) = value else {
        return Ok(None);
    };
    match value.cast::<PyString>() {
        Ok(text) => Ok(Some(text.to_string())),
        Err(_) => Err(ArgError::type_(
            "message",
            format!("must be a str or None, got {}", type_name(value)),
        )),
    }
}

fn extract_until(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<i64>> {
    let Some(value) = value else {
        return Ok(None);
    };
    if !value.is_instance(&datetime_type(value.py(), "datetime")?)? {
        return Err(ArgError::type_(
            "until",
            format!("must be a datetime or None, got {}", type_name(value)),
        )
        .into());
    }
    let unix = datetime_seconds(value, "until", false)?;
    if !(MIN_UNIX..=MAX_UNIX).contains(&unix) {
        return Err(ArgError::value(
            "until",
            format!("is outside the years 1 to 9999 in UTC: {}", describe(value)),
        )
        .into());
    }
    Ok(Some(unix))
}

fn extract_retry_after(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
    let Some(value) = value else {
        return Ok(None);
    };
    let timedelta_type = datetime_type(value.py(), "timedelta")?;
    let seconds: i128 = if value.is_instance(&timedelta_type)? {
        let total: f64 = value.call_method0("total_seconds")?.extract()?;
        if !total.is_finite() || total < 0.0 {
            return Err(ArgError::value(
                "retry_after",
                format!("must not be negative, got {}", describe(value)),
            )
            .into());
        }
        // Rounded up: a client told to come back early only meets the 503 again.
        total.ceil() as i128
    } else {
        let whole = whole_number("retry_after", value).map_err(|_| {
            ArgError::type_(
                "retry_after",
                format!(
                    "must be an int, a timedelta or None, got {}",
                    type_name(value)
                ),
            )
        })?;
        // Beyond the i128 range counts as its nearest end: large values saturate anyway.
        if whole.saturated() < 0 {
            return Err(ArgError::value(
                "retry_after",
                format!("must be whole seconds >= 0, got {whole}"),
            )
            .into());
        }
        whole.saturated()
    };
    Ok(Some(
        u64::try_from(seconds).unwrap_or(MAX_DELAY).min(MAX_DELAY),
    ))
}

/// `tidegate.drain_process()`: readiness says draining in this process from now on.
#[pyfunction(name = "drain_process")]
pub fn drain_process_py() {
    super::drain_process();
}

/// `tidegate._tidegate._is_store_uri(text)`: whether a `store` / `--state` value is meant as
/// a URI (`scheme://...`) rather than a file path, by the rule the switch itself applies.
#[pyfunction(name = "_is_store_uri")]
pub fn is_store_uri_py(text: &str) -> bool {
    store::is_uri(text)
}

/// `tidegate._tidegate._write_atomic(path, data)`: replaces the file at `path` with `data` the
/// way a state file is written (`state_file::write_atomic`), without the GIL.
#[pyfunction(name = "_write_atomic")]
pub fn write_atomic_py(path: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let target: PathBuf = path.extract().map_err(|_| {
        ArgError::type_(
            "path",
            format!("must be a str or os.PathLike, got {}", type_name(path)),
        )
    })?;
    let Ok(data) = data.cast::<PyBytes>() else {
        return Err(
            ArgError::type_("data", format!("must be bytes, got {}", type_name(data))).into(),
        );
    };
    let bytes = data.as_bytes();
    path.py()
        .detach(|| state_file::write_atomic(&target, bytes))
        .map_err(|err| io_error("write", &target, &err))
}

/// `tidegate.undrain_process()`: ends `drain_process()`.
#[pyfunction(name = "undrain_process")]
pub fn undrain_process_py() {
    super::undrain_process();
}

/// `tidegate.process_draining()`: whether `drain_process()` is in effect.
#[pyfunction(name = "process_draining")]
pub fn process_draining_py() -> bool {
    super::process_draining()
}

/// Maintenance mode and drain, shared by every request (and, through a state file, by every
/// worker process).
#[pyclass(name = "MaintenanceSwitch", module = "tidegate._tidegate", frozen)]
pub struct MaintenanceSwitchPy {
    pub core: Arc<Maintenance>,
}

impl MaintenanceSwitchPy {
    fn run(
        &self,
        py: Python<'_>,
        action: &str,
        step: impl FnOnce(&Maintenance) -> Result<(), ChangeError> + Send,
    ) -> PyResult<()> {
        let core = &self.core;
        py.detach(|| step(core)).map_err(|err| match err {
            ChangeError::TooLarge(too_large) => {
                ArgError::value("message", format!("is too long: it {too_large}")).into()
            }
            ChangeError::Io(err) => match &core.config().store {
                Some(Store::File(path)) => io_error(action, path, &err),
                _ => io_error_without_path(&err),
            },
            ChangeError::Store(err) => {
                let what = core.config().store.as_ref().map_or_else(String::new, |s| {
                    format!("maintenance store {}", describe_store(s))
                });
                store_error(action, &what, &err)
            }
        })
    }
}

#[pymethods]
impl MaintenanceSwitchPy {
    #[new]
    #[pyo3(
        signature = (
            store=None,
            *,
            env_var=Given(None),
            poll_interval=Given(None),
            default_retry_after=Given(None),
            state_file=None,
            _follow=true,
        ),
        text_signature = "(store=None, *, env_var='MAINTENANCE_MODE', poll_interval=1.0, default_retry_after=60, state_file=None, _follow=True)"
    )]
    fn new(
        py: Python<'_>,
        store: Option<&Bound<'_, PyAny>>,
        env_var: Given<'_>,
        poll_interval: Given<'_>,
        default_retry_after: Given<'_>,
        state_file: Option<&Bound<'_, PyAny>>,
        _follow: bool,
    ) -> PyResult<Self> {
        // `state_file=` is the name this parameter had before stores other than files.
        let store = match (store, state_file) {
            (Some(_), Some(_)) => {
                return Err(ArgError::type_(
                    "store",
                    "and state_file= are the same parameter; give one",
                )
                .into())
            }
            (Some(store), None) => extract_store("store", Some(store))?,
            (None, state_file) => extract_store("state_file", state_file)?,
        };
        let config = Config {
            store,
            follow: _follow,
            env_var: extract_env_var(env_var)?,
            poll_interval: extract_poll_interval(poll_interval)?,
            default_retry_after: extract_default_retry_after(default_retry_after)?,
        };
        let core = py.detach(|| Maintenance::new(config));
        Ok(Self { core })
    }

    #[pyo3(signature = (*, message=None, until=None, retry_after=None, local=false))]
    fn enable(
        &self,
        py: Python<'_>,
        message: Option<&Bound<'_, PyAny>>,
        until: Option<&Bound<'_, PyAny>>,
        retry_after: Option<&Bound<'_, PyAny>>,
        local: bool,
    ) -> PyResult<()> {
        let notice = Notice {
            message: extract_message(message)?,
            until: extract_until(until)?,
            retry_after: extract_retry_after(retry_after)?,
        };
        self.run(py, "write", move |core| core.enable(notice, local))
    }

    #[pyo3(signature = (*, local=false))]
    fn disable(&self, py: Python<'_>, local: bool) -> PyResult<()> {
        self.run(py, "write", move |core| core.disable(local))
    }

    /// This process's own maintenance, for `_restore_local` (the pytest plugin).
    fn _local_state(&self) -> LocalStatePy {
        LocalStatePy {
            state: self.core.local_state(),
        }
    }

    /// Puts back what `_local_state` returned; this process's own drain is left as it is.
    #[pyo3(signature = (saved, /))]
    fn _restore_local(&self, saved: &LocalStatePy) {
        self.core.restore_local(saved.state.clone());
    }

    #[pyo3(signature = (*, local=Given(None)), text_signature = "($self, *, local=False)")]
    fn drain(&self, py: Python<'_>, local: Given<'_>) -> PyResult<()> {
        let local = extract_local(local)?;
        self.run(py, "write", move |core| core.drain(local))
    }

    #[pyo3(signature = (*, local=Given(None)), text_signature = "($self, *, local=False)")]
    fn undrain(&self, py: Python<'_>, local: Given<'_>) -> PyResult<()> {
        let local = extract_local(local)?;
        self.run(py, "write", move |core| core.undrain(local))
    }

    #[getter]
    fn active(&self) -> bool {
        self.core.active()
    }

    #[getter]
    fn draining(&self) -> bool {
        self.core.draining()
    }

    fn status(&self) -> MaintenanceStatusPy {
        MaintenanceStatusPy {
            status: self.core.status(),
        }
    }

    #[getter]
    fn state_file(&self) -> Option<std::ffi::OsString> {
        match &self.core.config().store {
            Some(Store::File(path)) => Some(path.as_os_str().to_owned()),
            _ => None,
        }
    }

    /// The processes following a Redis store, as a JSON array (`None` for another store):
    /// for the CLI's status.
    fn _fleet(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let core = &self.core;
        match py.detach(|| core.fleet()) {
            Ok(beats) => Ok(beats.map(|beats| serde_json::Value::from(beats).to_string())),
            Err(err) => {
                let what = core.config().store.as_ref().map_or_else(String::new, |s| {
                    format!("maintenance store {}", describe_store(s))
                });
                Err(store_error("read", &what, &err))
            }
        }
    }

    /// The state file's path or the store's URI (its password hidden); `None` without either.
    #[getter]
    fn store(&self) -> Option<String> {
        self.core.config().store.as_ref().map(describe_store)
    }

    #[getter]
    fn env_var(&self) -> Option<String> {
        self.core.config().env_var.clone()
    }

    #[getter]
    fn poll_interval(&self) -> f64 {
        self.core.config().poll_interval.as_secs_f64()
    }

    #[getter]
    fn default_retry_after(&self) -> u64 {
        self.core.config().default_retry_after
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let config = self.core.config();
        let store = config
            .store
            .as_ref()
            .map_or_else(|| "None".to_owned(), |s| str_repr(py, &describe_store(s)));
        let env_var = config
            .env_var
            .as_deref()
            .map_or_else(|| "None".to_owned(), |n| str_repr(py, n));
        format!(
            "MaintenanceSwitch(store={store}, env_var={env_var}, poll_interval={:?}, active={}, draining={})",
            config.poll_interval.as_secs_f64(),
            if self.core.active() { "True" } else { "False" },
            if self.core.draining() { "True" } else { "False" },
        )
    }
}

/// What `MaintenanceSwitch._local_state()` saved: opaque, only for `_restore_local`.
#[pyclass(name = "_LocalState", module = "tidegate._tidegate", frozen)]
pub struct LocalStatePy {
    state: State,
}

/// A snapshot of a `MaintenanceSwitch`.
#[pyclass(name = "MaintenanceStatus", module = "tidegate._tidegate", frozen)]
pub struct MaintenanceStatusPy {
    pub status: Status,
}

#[pymethods]
impl MaintenanceStatusPy {
    #[getter]
    fn active(&self) -> bool {
        self.status.active
    }

    #[getter]
    fn message(&self) -> Option<&str> {
        self.status.message.as_deref()
    }

    #[getter]
    fn until<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.status
            .until
            .map(|unix| unix_to_datetime(py, unix))
            .transpose()
    }

    #[getter]
    fn retry_after(&self) -> RetryAfterPy {
        RetryAfterPy::new(RetryAfter::Delay(self.status.retry_after_secs))
    }

    #[getter]
    fn source(&self) -> Option<&'static str> {
        self.status.source.map(super::Source::as_str)
    }

    #[getter]
    fn draining(&self) -> bool {
        self.status.draining
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let s = &self.status;
        let text =
            |value: Option<&str>| value.map_or_else(|| "None".to_owned(), |v| str_repr(py, v));
        let until = s.until.and_then(crate::clock::format_iso);
        format!(
            "MaintenanceStatus(active={}, source={}, message={}, until={}, retry_after={}, draining={})",
            if s.active { "True" } else { "False" },
            text(s.source.map(super::Source::as_str)),
            text(s.message.as_deref()),
            text(until.as_deref()),
            s.retry_after_secs,
            if s.draining { "True" } else { "False" },
        )
    }
}
