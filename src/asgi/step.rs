//! Stepping an awaitable from Rust: the ASGI path's one use of CPython's C API that PyO3 has
//! no safe form for.
//!
//! An admitted request runs the app's coroutine, and the server's `send` of its last body,
//! through [`send`]: `PyIter_Send`, which resumes a coroutine through its `am_send` slot and
//! says whether it yielded, returned or raised, without the `__await__` wrapper object and
//! the `StopIteration` that going through the iterator protocol costs. PyO3 offers it only
//! for `PyIterator`, which a coroutine is not (it has no `__next__`), so the call is made here.

#![allow(unsafe_code)]

use pyo3::exceptions::PyStopIteration;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// What one step of an awaitable came to.
pub enum Step<'py> {
    /// It is waiting: this is what it yielded (for asyncio, a future), for the server.
    Yielded(Bound<'py, PyAny>),
    /// It is over; what it returned does not matter to ASGI.
    Returned,
    /// It raised.
    Raised(PyErr),
}

/// Resumes `steps` (a coroutine, or what an awaitable's `__await__` gave) with `value`.
///
/// `PyIter_Send` takes any object: it uses `am_send` where the type has one, `__next__` for
/// `None` where it is an iterator, and its `send` method otherwise, so an object that is
/// none of those makes it raise (a `Step::Raised`), never crash.
pub fn send<'py>(steps: &Bound<'py, PyAny>, value: &Bound<'py, PyAny>) -> Step<'py> {
    let py = steps.py();
    let mut result: *mut ffi::PyObject = std::ptr::null_mut();
    // SAFETY: both pointers are live objects held by the caller (borrowed, as `PyIter_Send`
    // wants), the GIL is held (a `Bound` proves it), and `result` is a valid place for the
    // new reference `PyIter_Send` writes on return or yield (it stays null on error).
    let sent = unsafe { ffi::PyIter_Send(steps.as_ptr(), value.as_ptr(), &mut result) };
    // SAFETY: on PYGEN_NEXT and PYGEN_RETURN, `result` is a new, non-null reference that is
    // ours to own; on PYGEN_ERROR it is null and an exception is set.
    match sent {
        ffi::PySendResult::PYGEN_NEXT => {
            match unsafe { Bound::from_owned_ptr_or_opt(py, result) } {
                Some(value) => Step::Yielded(value),
                None => Step::Raised(PyErr::fetch(py)),
            }
        }
        ffi::PySendResult::PYGEN_RETURN => {
            // The return value is dropped: owned, so released here.
            drop(unsafe { Bound::<PyAny>::from_owned_ptr_or_opt(py, result) });
            Step::Returned
        }
        ffi::PySendResult::PYGEN_ERROR => Step::Raised(PyErr::fetch(py)),
    }
}

/// Throws the exception `args` describes (`throw`'s arguments) into `steps`, where it waits.
pub fn throw<'py>(steps: &Bound<'py, PyAny>, args: &Bound<'py, PyTuple>) -> Step<'py> {
    let py = steps.py();
    match steps.call_method1(intern!(py, "throw"), args) {
        Ok(value) => Step::Yielded(value),
        Err(err) if err.is_instance_of::<PyStopIteration>(py) => Step::Returned,
        Err(err) => Step::Raised(err),
    }
}

/// Whether `value` is a native coroutine (an `async def`'s), which [`send`] can step as it is;
/// any other awaitable is stepped through what its `__await__` returns.
pub fn is_coroutine(value: &Bound<'_, PyAny>) -> bool {
    // SAFETY: `value` is a live object and the GIL is held; the check reads its type only.
    unsafe { ffi::PyCoro_CheckExact(value.as_ptr()) != 0 }
}
