//! The Python face of content negotiation: `prefers_html`, and the same answer for a Python
//! `str` on the request path.

use pyo3::prelude::*;
use pyo3::types::PyString;

use super::prefers_html;
use crate::errors::ArgError;

/// Whether an `Accept` header value ranks `text/html` above `application/json`.
///
/// Any `str` is accepted: one that cannot be UTF-8 (a lone surrogate) is read with
/// replacement characters rather than raising into a request.
#[pyfunction(name = "prefers_html")]
pub fn prefers_html_py(accept: &Bound<'_, PyAny>) -> PyResult<bool> {
    let Ok(text) = accept.cast::<PyString>() else {
        let kind = accept.get_type().name()?;
        return Err(ArgError::type_("accept", format!("must be a str, got {kind}")).into());
    };
    Ok(str_prefers_html(text))
}

/// `prefers_html` for a Python `str`; one that is not valid UTF-8 (a lone surrogate) is read
/// with replacement characters, so every caller answers the same for the same value.
pub fn str_prefers_html(accept: &Bound<'_, PyString>) -> bool {
    match accept.to_cow() {
        Ok(text) => prefers_html(&text),
        Err(_) => prefers_html(&accept.to_string_lossy()),
    }
}
