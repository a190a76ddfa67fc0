//! The native core of tidegate. This file only registers what the other modules define.

pub mod accept;
pub mod asgi;
pub mod breaker;
pub mod clock;
pub mod decide;
pub mod errors;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod gate;
pub mod maintenance;
pub mod metrics;
pub mod retry_after;
pub mod store;
pub mod wsgi;

#[pyo3::pymodule(gil_used = false)]
mod _tidegate {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::accept::prefers_html_py;
    #[pymodule_export]
    use crate::asgi::{AsgiCore, Exchange, LastBody, Sent};
    #[pymodule_export]
    use crate::breaker::{BreakerPy, CircuitOpenError};
    #[pymodule_export]
    use crate::clock::{format_iso_py, parse_iso_py};
    #[pymodule_export]
    use crate::decide::{DecisionCore, PreprocessRequest, ProcessResponse};
    #[pymodule_export]
    use crate::gate::{AdaptiveGatePy, GatePy, PermitPy};
    #[pymodule_export]
    use crate::maintenance::{
        drain_process_py, is_store_uri_py, process_draining_py, undrain_process_py,
        write_atomic_py, MaintenanceStatusPy, MaintenanceSwitchPy,
    };
    #[pymodule_export]
    use crate::metrics::{
        attach_py, attached_py, breaker_call_py, breaker_state_py, create_py, enable_py,
        families_py, fold_py, health_check_py, queue_time_py, record_py, release_py, scrape_py,
        set_gauge_py,
    };
    #[pymodule_export]
    use crate::retry_after::RetryAfterPy;
    #[pymodule_export]
    use crate::wsgi::{ClosingBody, MiddlewareCore, ReleasingApp};

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        crate::breaker::prepare_module(m)?;
        crate::maintenance::prepare_module(m)?;
        crate::metrics::prepare_module(m)?;
        m.add("EXEMPT_GATE", crate::decide::EXEMPT_GATE)?;
        m.add("EXEMPT_MAINTENANCE", crate::decide::EXEMPT_MAINTENANCE)?;
        m.add("MAX_QUEUE_TIME", crate::decide::queue::MAX_BELIEVABLE)?;
        m.add("PRIORITY_CRITICAL", crate::decide::PRIORITY_CRITICAL)?;
        m.add("PRIORITY_DEFAULT", crate::decide::PRIORITY_DEFAULT)?;
        m.add("PRIORITY_SHEDDABLE", crate::decide::PRIORITY_SHEDDABLE)?;
        Ok(())
    }
}
