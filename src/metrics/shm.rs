//! One of tidegate's two places of unsafe code (the other steps a coroutine: `asgi::step`):
//! mapping the shared metrics file as atomics, locking it, and asking whether a pid is alive.
//!
//! Why it cannot be avoided: the workers of a Gunicorn server are separate processes, and the
//! cheapest way for a scrape in one of them to see the others' counters is memory they all map.
//! Viewing that memory as `[AtomicU64]` needs a raw pointer cast, and `flock` and `kill(pid, 0)`
//! are plain C calls. Everything here is small, and each block says why it is sound.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;

use memmap2::MmapRaw;

/// A shared, writable mapping of a whole metrics file, seen as words.
pub struct Mapping {
    map: MmapRaw,
    words: usize,
}

impl Mapping {
    /// Maps `file`, which is `len` bytes long (a multiple of 8, not zero). The file must not
    /// shrink while mapped: tidegate never truncates a metrics file it did not just create.
    pub fn new(file: &File, len: u64) -> io::Result<Self> {
        let words = usize::try_from(len / 8)
            .ok()
            .filter(|&w| w > 0 && len % 8 == 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad file length"))?;
        let map = memmap2::MmapOptions::new().len(words * 8).map_raw(file)?;
        Ok(Self { map, words })
    }

    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is `words * 8` bytes long, page-aligned (so aligned for
        // `AtomicU64`), readable and writable, and lives as long as `self` (the borrow). Any
        // bit pattern is a valid `u64`, and `AtomicU64` has the layout of `u64`. Other
        // processes change these bytes concurrently, which is why they are only ever seen as
        // atomics, here and in every process (all of them run this code).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU64>(), self.words) }
    }

    /// Keeps the mapping for the rest of the process: what a worker does with its own file.
    pub fn leak(self) -> &'static [AtomicU64] {
        let leaked: &'static Mapping = Box::leak(Box::new(self));
        leaked.words()
    }
}

/// An exclusive `flock` on a file, released on drop (or when the process dies).
pub struct Lock<'a>(&'a File);

impl<'a> Lock<'a> {
    pub fn exclusive(file: &'a File) -> io::Result<Self> {
        loop {
            // SAFETY: a plain system call on a file descriptor that `file` keeps open.
            let done = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if done == 0 {
                return Ok(Self(file));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl Drop for Lock<'_> {
    fn drop(&mut self) {
        // SAFETY: as above; unlocking cannot fail in a way we could act on.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// Whether process `pid` exists (a zombie not yet reaped still does). A pid that does not fit
/// a `pid_t`, or 0, is not a process.
pub fn pid_alive(pid: u64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; it only checks that the pid exists.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    found || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
