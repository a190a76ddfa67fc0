//! The maintenance state file: its JSON form, reading it without trusting it, and replacing it
//! atomically. The format is documented on the parent module.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::clock::{format_iso, parse_iso, MAX_UNIX, MIN_UNIX};
use crate::errors::excerpt;

/// The only format version this code writes and understands.
pub const VERSION: u64 = 1;

/// A state file larger than this is garbage, not state.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// The largest delay `Retry-After` says (RFC 9111 §1.2.2); bigger values saturate here.
pub const MAX_DELAY: u64 = 2_147_483_648;

/// What one side (this process, or the file) says about maintenance and draining.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub active: bool,
    pub message: Option<String>,
    /// Estimated end of maintenance, Unix seconds.
    pub until: Option<i64>,
    /// Explicit Retry-After in seconds, already saturated.
    pub retry_after: Option<u64>,
    pub draining: bool,
}

#[derive(Deserialize)]
struct OnDisk {
    #[serde(default)]
    version: Option<u64>,
    active: bool,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    retry_after: Option<u64>,
    #[serde(default)]
    draining: bool,
}

#[derive(Serialize)]
struct Document<'a> {
    version: u64,
    active: bool,
    message: Option<&'a str>,
    until: Option<String>,
    retry_after: Option<u64>,
    draining: bool,
    updated_at: Option<String>,
}

/// Parses the file's bytes; the error says what is wrong with them.
pub fn parse(bytes: &[u8]) -> Result<State, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("is empty".to_owned());
    }
    // serde would also fill the struct from an array, field by field: `[null, true]` is not
    // a state file, whatever it would decode to.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err("is not a valid state file: expected a JSON object".to_owned());
    }
    let doc: OnDisk = serde_json::from_slice(bytes)
        .map_err(|err| format!("is not a valid state file: {}", describe(&err)))?;
    if let Some(version) = doc.version {
        if version != VERSION {
            return Err(format!("has unsupported version {version}"));
        }
    }
    let until = match doc.until {
        None => None,
        Some(text) => match parse_iso(&text) {
            Some(unix) if (MIN_UNIX..=MAX_UNIX).contains(&unix) => Some(unix),
            _ => {
                return Err(format!(
                    "has an until that is not an ISO-8601 date: {}",
                    excerpt(&text)
                ))
            }
        },
    };
    Ok(State {
        active: doc.active,
        message: doc.message,
        until,
        retry_after: doc.retry_after.map(|secs| secs.min(MAX_DELAY)),
        draining: doc.draining,
    })
}

/// A JSON error, cut short: serde quotes offending strings whole, and a warning must not
/// repeat a 64 KiB file.
fn describe(err: &serde_json::Error) -> String {
    const KEEP: usize = 120;
    let full = err.to_string();
    let position = format!(" at line {} column {}", err.line(), err.column());
    let what = full.strip_suffix(&position).unwrap_or(&full);
    let mut text: String = what.chars().take(KEEP).collect();
    if text.len() < what.len() {
        text.push_str("...");
    }
    text + &position
}

/// The file's bytes for `state`, stamped with `now` (Unix seconds).
pub fn render(state: &State, now: i64) -> Vec<u8> {
    let doc = Document {
        version: VERSION,
        active: state.active,
        message: state.message.as_deref(),
        until: state.until.and_then(format_iso),
        retry_after: state.retry_after,
        draining: state.draining,
        updated_at: format_iso(now),
    };
    // Serialising plain strings, numbers and booleans cannot fail; an empty body would be
    // read back as a bad file rather than crash anything.
    let mut bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Identifies one version of the file, so an unchanged file is not read again.
///
/// An atomic replace gives a new inode; the size, mtime and ctime catch in-place edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

#[cfg(unix)]
fn signature(meta: &fs::Metadata) -> Signature {
    use std::os::unix::fs::MetadataExt;
    Signature {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.len(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
    }
}

#[cfg(not(unix))]
fn signature(meta: &fs::Metadata) -> Signature {
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    Signature {
        dev: 0,
        ino: 0,
        len: meta.len(),
        mtime_ns,
        ctime_ns: 0,
    }
}

/// The outcome of looking at the state file.
#[derive(Debug, PartialEq, Eq)]
pub enum Look {
    /// No file: not in maintenance, not draining.
    Missing,
    /// Same signature as last time; nothing was read.
    Unchanged,
    /// The file was read (or could not be); `signature` is that of what was read, when known.
    Read {
        result: Result<State, String>,
        signature: Option<Signature>,
    },
}

impl Look {
    fn bad(reason: String, signature: Option<Signature>) -> Self {
        Self::Read {
            result: Err(reason),
            signature,
        }
    }
}

/// Stats `path` and reads it only when its signature differs from `seen`.
pub fn look(path: &Path, seen: Option<Signature>) -> Look {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Look::Missing,
        Err(err) => return Look::bad(format!("cannot be examined: {err}"), None),
    };
    let sig = signature(&meta);
    if seen == Some(sig) {
        return Look::Unchanged;
    }
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "is a directory"
        } else {
            "is not a regular file"
        };
        return Look::bad(kind.to_owned(), Some(sig));
    }
    read(path)
}

fn read(path: &Path) -> Look {
    let file = match open_for_reading(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Look::Missing,
        Err(err) => return Look::bad(format!("cannot be opened: {err}"), None),
    };
    // The signature of the open file is the one of the bytes read, even if the path has been
    // replaced since it was stat'ed.
    let meta = match file.metadata() {
        Ok(meta) => meta,
        Err(err) => return Look::bad(format!("cannot be examined: {err}"), None),
    };
    let sig = Some(signature(&meta));
    if !meta.is_file() {
        return Look::bad("is not a regular file".to_owned(), sig);
    }
    let mut bytes = Vec::new();
    if let Err(err) = file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
        return Look::bad(format!("cannot be read: {err}"), sig);
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Look::bad(format!("is larger than {MAX_FILE_BYTES} bytes"), sig);
    }
    Look::Read {
        result: parse(&bytes),
        signature: sig,
    }
}

/// Opens `path` for reading without ever waiting: a FIFO swapped in after the `stat` would
/// otherwise block the open until a writer shows up. What was opened is checked with `fstat`
/// before a byte is read.
fn open_for_reading(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path)
}

/// A render that no reader would accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    pub bytes: usize,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "makes a state file of {} bytes, more than the {MAX_FILE_BYTES} every reader accepts",
            self.bytes
        )
    }
}

/// `render`, refused when the result is larger than any reader would read back: what one
/// process writes, every other process must accept.
pub fn render_checked(state: &State, now: i64) -> Result<Vec<u8>, TooLarge> {
    let bytes = render(state, now);
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(TooLarge { bytes: bytes.len() });
    }
    Ok(bytes)
}

/// How old a writer's temporary file must be before another writer takes it for the leftover
/// of a writer that died mid-write. A write lasts milliseconds; this leaves a slow disk a wide
/// margin.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(60);

/// Replaces `path` with `contents` so that a reader sees either the old file or the new one.
///
/// The bytes go to a temporary file created exclusively in the same folder (so a symlink
/// planted at its name is refused, never followed), are flushed to disk, and the temporary
/// file is renamed over `path`. The result has mode 0o644 whatever the umask.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let (temp_path, mut file) = create_temp(dir, &name.to_string_lossy())?;
    let written = file
        .write_all(contents)
        .and_then(|()| make_readable(&file))
        .and_then(|()| file.sync_all());
    drop(file);
    if let Err(err) = written.and_then(|()| fs::rename(&temp_path, path)) {
        let _ = fs::remove_file(&temp_path);
        return Err(err);
    }
    // Makes the rename itself durable; a failure here does not undo a completed replace.
    if let Ok(dir_handle) = File::open(dir) {
        let _ = dir_handle.sync_all();
    }
    remove_stale_temps(dir, &name.to_string_lossy(), SystemTime::now());
    Ok(())
}

/// The prefix and suffix of every temporary file `write_atomic` makes for a state file `name`.
fn temp_affixes(name: &str) -> (String, &'static str) {
    (format!(".{name}."), ".tmp")
}

/// Removes temporary files that writers of `name` left behind when they were killed between
/// creating and renaming them, once they are older than [`STALE_TEMP_AGE`]. Best effort: a
/// file that cannot be examined or removed is left for the next writer.
pub fn remove_stale_temps(dir: &Path, name: &str, now: SystemTime) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let (prefix, suffix) = temp_affixes(name);
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if !(file_name.starts_with(&prefix) && file_name.ends_with(suffix)) {
            continue;
        }
        // symlink_metadata: a planted link is judged (and removed) as itself, never followed.
        let old_enough = entry
            .path()
            .symlink_metadata()
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age >= STALE_TEMP_AGE);
        if old_enough && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(unix)]
fn make_readable(file: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(0o644))
}

#[cfg(not(unix))]
fn make_readable(_file: &File) -> io::Result<()> {
    Ok(())
}

/// Opens a new file at `path`, failing if anything (a file, a symlink, dangling or not)
/// is already there.
pub fn create_exclusive(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

fn create_temp(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for _ in 0..32 {
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let (prefix, suffix) = temp_affixes(name);
        let candidate = dir.join(format!(
            "{prefix}{}.{seq}.{nanos:x}{suffix}",
            std::process::id()
        ));
        match create_exclusive(&candidate) {
            Ok(file) => return Ok((candidate, file)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary file name next to the state file",
    ))
}

#[cfg(test)]
pub mod tests;
