//! The native core of tidegate. This file only registers what the other modules define.

pub mod clock;
pub mod errors;
pub mod gate;
pub mod maintenance;
pub mod retry_after;

#[pyo3::pymodule(gil_used = false)]
mod _tidegate {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::gate::{GatePy, PermitPy};
    #[pymodule_export]
    use crate::maintenance::{MaintenanceStatusPy, MaintenanceSwitchPy};
    #[pymodule_export]
    use crate::retry_after::RetryAfterPy;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    }
}
