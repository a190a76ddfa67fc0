//! The metrics as Python sees them: functions of the native module, arguments checked here,
//! the work done by the plain functions of `metrics`.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::render::{families, render, Family, Format};
use super::{BreakerState, CallOutcome, Outcome};
use crate::errors::ArgError;

/// Sends the metrics' warnings to the `tidegate` logger.
pub fn prepare_module(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    super::set_warn(crate::maintenance::log_warning);
    Ok(())
}

fn sums_for(py: Python<'_>, path: Option<PathBuf>) -> PyResult<super::Sums> {
    // Without the GIL: the scrape waits for the file lock that a fold may hold.
    Ok(py.detach(|| match path {
        Some(path) => super::sums_of_file(&path),
        None => super::sums(),
    })?)
}

/// `(content_type, body)` of a scrape in the format `accept` prefers: of this process (the
/// shared file it records into, if any), or of the shared file at `path`.
#[pyfunction(name = "metrics_scrape")]
#[pyo3(signature = (accept=None, path=None))]
pub fn scrape_py<'py>(
    py: Python<'py>,
    accept: Option<&str>,
    path: Option<PathBuf>,
) -> PyResult<(&'static str, Bound<'py, PyBytes>)> {
    let sums = sums_for(py, path)?;
    let format = Format::from_accept(accept);
    let text = render(&families(&sums), format);
    Ok((format.content_type(), PyBytes::new(py, text.as_bytes())))
}

/// One family as Python gets it: `(name, type, help, unit, samples)`, each sample
/// `(name, labels, value)`.
type FamilyTuple<'py> = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Vec<(String, Bound<'py, PyDict>, f64)>,
);

fn family_tuple<'py>(py: Python<'py>, family: Family) -> PyResult<FamilyTuple<'py>> {
    let samples = family
        .samples
        .into_iter()
        .map(|sample| {
            let labels = PyDict::new(py);
            for (name, value) in sample.labels {
                labels.set_item(name, value)?;
            }
            Ok((
                format!("{}{}", family.name, sample.suffix),
                labels,
                sample.value.as_f64(),
            ))
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok((
        family.name,
        family.kind.label(),
        family.help,
        family.unit,
        samples,
    ))
}

/// The families of a scrape (see `metrics_scrape`), for a `prometheus_client` collector.
#[pyfunction(name = "metrics_families")]
#[pyo3(signature = (path=None))]
pub fn families_py(py: Python<'_>, path: Option<PathBuf>) -> PyResult<Vec<FamilyTuple<'_>>> {
    let sums = sums_for(py, path)?;
    families(&sums)
        .into_iter()
        .map(|family| family_tuple(py, family))
        .collect()
}

/// Creates a shared metrics file with `slots` worker slots in `directory`; returns its path.
#[pyfunction(name = "metrics_create")]
// The default is `DEFAULT_SLOTS`, written out so that the signature Python sees shows it.
#[pyo3(signature = (directory, slots=64))]
pub fn create_py(py: Python<'_>, directory: PathBuf, slots: usize) -> PyResult<PathBuf> {
    Ok(py.detach(|| super::create_shared(&directory, slots))?)
}

/// Takes a slot of the shared metrics file at `path` for this process; returns its index.
#[pyfunction(name = "metrics_attach")]
pub fn attach_py(py: Python<'_>, path: PathBuf) -> PyResult<usize> {
    Ok(py.detach(|| super::attach(&path))?)
}

/// Folds the slot of the exited process `pid` into the totals of the file at `path`.
#[pyfunction(name = "metrics_fold")]
pub fn fold_py(py: Python<'_>, path: PathBuf, pid: u32) -> PyResult<bool> {
    Ok(py.detach(|| super::fold(&path, pid))?)
}

/// `(path, slot)` of the shared file this process records into, or `None`.
#[pyfunction(name = "metrics_attached")]
pub fn attached_py() -> Option<(PathBuf, usize)> {
    super::attached().map(|(path, index)| (path.to_owned(), index))
}

/// From now on, adapters that follow the default (`metrics=None`) count their decisions.
#[pyfunction(name = "metrics_enable")]
pub fn enable_py() {
    super::enable();
}

/// Counts one request decided with `outcome` and `reason` (`tidegate_requests_total`).
#[pyfunction(name = "metrics_record")]
pub fn record_py(outcome: &str, reason: &str) -> PyResult<()> {
    let outcome = Outcome::from_labels(outcome, reason).ok_or_else(|| {
        let known: Vec<String> = Outcome::ALL
            .iter()
            .map(|o| format!("{}/{}", o.labels().0, o.labels().1))
            .collect();
        ArgError::value(
            "outcome",
            format!(
                "unknown outcome/reason {outcome:?}/{reason:?}; known: {}",
                known.join(", ")
            ),
        )
    })?;
    if outcome == Outcome::Admitted {
        super::admit();
    } else {
        super::record(outcome);
    }
    Ok(())
}

fn duration(param: &'static str, seconds: f64) -> Result<Duration, ArgError> {
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        ArgError::value(
            param,
            format!("must be a finite number of seconds >= 0, got {seconds}"),
        )
    })
}

/// An admitted request finished after `seconds` (`metrics_record("admitted", "none")` counted
/// it in flight).
#[pyfunction(name = "metrics_release")]
pub fn release_py(seconds: f64) -> PyResult<()> {
    super::release(duration("seconds", seconds)?);
    Ok(())
}

/// A request waited `seconds` in front of the app.
#[pyfunction(name = "metrics_queue_time")]
pub fn queue_time_py(seconds: f64) -> PyResult<()> {
    super::observe_queue_time(duration("seconds", seconds)?);
    Ok(())
}

/// Sets a process gauge: `"concurrency_limit"`, `"maintenance_active"` or `"draining"`.
#[pyfunction(name = "metrics_set_gauge")]
pub fn set_gauge_py(name: &str, value: usize) -> PyResult<()> {
    match name {
        "concurrency_limit" => super::set_concurrency_limit(value),
        "maintenance_active" => super::set_maintenance_active(value != 0),
        "draining" => super::set_draining(value != 0),
        _ => {
            return Err(ArgError::value(
                "name",
                format!(
                    "unknown gauge {name:?}; known: concurrency_limit, maintenance_active, \
                     draining"
                ),
            )
            .into())
        }
    }
    Ok(())
}

/// Reports breaker `name`'s state: `"closed"`, `"open"` or `"half_open"`.
#[pyfunction(name = "metrics_breaker_state")]
pub fn breaker_state_py(name: &str, state: &str) -> PyResult<()> {
    let state = BreakerState::from_label(state).ok_or_else(|| {
        ArgError::value(
            "state",
            format!("must be 'closed', 'open' or 'half_open', got {state:?}"),
        )
    })?;
    super::breaker(name).set_breaker_state(state);
    Ok(())
}

/// Counts a call through breaker `name`: `"success"`, `"failure"`, `"ignored"`, `"rejected"`.
#[pyfunction(name = "metrics_breaker_call")]
pub fn breaker_call_py(name: &str, outcome: &str) -> PyResult<()> {
    let outcome = CallOutcome::from_label(outcome).ok_or_else(|| {
        ArgError::value(
            "outcome",
            format!("must be 'success', 'failure', 'ignored' or 'rejected', got {outcome:?}"),
        )
    })?;
    super::breaker(name).count_call(outcome);
    Ok(())
}

/// Reports health check `name`'s last result.
#[pyfunction(name = "metrics_health_check")]
pub fn health_check_py(name: &str, up: bool) {
    super::health_check(name).set_check_up(up);
}
