use super::*;

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "tidegate-{label}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.0)
            .expect("list temp dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn sample() -> State {
    State {
        active: true,
        message: Some("Upgrading \"db\" — back soon".into()),
        until: Some(1_900_000_000),
        retry_after: Some(120),
        draining: true,
    }
}

#[test]
fn render_and_parse_round_trip() {
    let bytes = render(&sample(), 1_800_000_000);
    let text = String::from_utf8(bytes.clone()).expect("utf-8");
    assert!(text.contains("\"version\": 1"), "{text}");
    assert!(
        text.contains("\"until\": \"2030-03-17T17:46:40Z\""),
        "{text}"
    );
    assert!(
        text.contains("\"updated_at\": \"2027-01-15T08:00:00Z\""),
        "{text}"
    );
    assert_eq!(parse(&bytes), Ok(sample()));
    assert_eq!(parse(&render(&State::default(), 0)), Ok(State::default()));
}

#[test]
fn parse_is_lenient_about_unknown_keys_and_optional_fields() {
    let state = parse(br#"{"active": true, "owner": "ops", "updated_at": 5}"#);
    assert_eq!(
        state,
        Ok(State {
            active: true,
            ..State::default()
        })
    );
    let state = parse(br#"{"version": 1, "active": false, "until": "2030-01-01T01:00:00+01:00", "retry_after": 99999999999}"#)
        .expect("valid");
    assert_eq!(state.until, Some(1_893_456_000));
    assert_eq!(state.retry_after, Some(MAX_DELAY));
}

#[test]
fn parse_rejects_garbage_with_a_reason() {
    for (bytes, reason) in [
        (&b""[..], "is empty"),
        (b"  \n", "is empty"),
        (b"{\"active\": tr", "not a valid state file"),
        (b"not json", "not a valid state file"),
        (b"[true]", "expected a JSON object"),
        (b"[null, true]", "expected a JSON object"),
        (b"\"active\"", "expected a JSON object"),
        (b"{}", "not a valid state file"),
        (b"{\"active\": \"yes\"}", "not a valid state file"),
        (
            b"{\"active\": true, \"message\": 5}",
            "not a valid state file",
        ),
        (
            b"{\"active\": true, \"retry_after\": -1}",
            "not a valid state file",
        ),
        (
            b"{\"active\": true, \"retry_after\": 1.5}",
            "not a valid state file",
        ),
        (
            b"{\"active\": true, \"draining\": null}",
            "not a valid state file",
        ),
        (
            b"{\"active\": true, \"version\": 2}",
            "unsupported version 2",
        ),
        (
            b"{\"active\": true, \"until\": \"tomorrow\"}",
            "not an ISO-8601",
        ),
        (
            b"{\"active\": true, \"until\": \"0001-01-01T00:00:00+01:00\"}",
            "not an ISO-8601",
        ),
        (b"\xff\xfe", "not a valid state file"),
    ] {
        match parse(bytes) {
            Err(err) => assert!(err.contains(reason), "{bytes:?}: {err}"),
            Ok(state) => panic!("{bytes:?} parsed as {state:?}"),
        }
    }
}

#[test]
fn reasons_quote_a_short_excerpt_of_a_huge_file() {
    let long = "9".repeat(60_000);
    for bytes in [
        format!(r#"{{"active": "{long}"}}"#),
        format!(r#"{{"active": true, "until": "{long}"}}"#),
    ] {
        let err = parse(bytes.as_bytes()).expect_err("bad file");
        assert!(err.len() < 300, "{} bytes: {err}", err.len());
        assert!(err.contains("999"), "{err}");
    }
    let err = parse(br#"{"active": "yes"}"#).expect_err("bad file");
    assert!(
        err.ends_with("expected a boolean at line 1 column 16"),
        "{err}"
    );
}

#[test]
fn look_reads_only_what_changed() {
    let dir = TempDir::new("look");
    let path = dir.0.join("state.json");
    assert_eq!(look(&path, None), Look::Missing);
    write_atomic(&path, &render(&sample(), 0)).expect("write");
    let Look::Read {
        result: Ok(state),
        signature: Some(sig),
    } = look(&path, None)
    else {
        panic!("expected a good read");
    };
    assert_eq!(state, sample());
    assert_eq!(look(&path, Some(sig)), Look::Unchanged);
    write_atomic(&path, &render(&State::default(), 0)).expect("write");
    assert!(matches!(
        look(&path, Some(sig)),
        Look::Read { result: Ok(s), .. } if s == State::default()
    ));
}

#[test]
fn look_reports_directories_and_oversized_files() {
    let dir = TempDir::new("odd");
    let path = dir.0.join("state.json");
    fs::create_dir(&path).expect("mkdir");
    assert!(matches!(
        look(&path, None),
        Look::Read { result: Err(e), .. } if e == "is a directory"
    ));
    fs::remove_dir(&path).expect("rmdir");
    let mut big = b"{\"active\": true, \"message\": \"".to_vec();
    big.resize(MAX_FILE_BYTES as usize + 10, b'a');
    fs::write(&path, &big).expect("write");
    assert!(matches!(
        look(&path, None),
        Look::Read { result: Err(e), .. } if e.contains("larger than")
    ));
}

#[test]
fn write_atomic_leaves_one_file_with_mode_644() {
    let dir = TempDir::new("write");
    let path = dir.0.join("state.json");
    for i in 0..50 {
        let state = State {
            active: i % 2 == 0,
            ..State::default()
        };
        write_atomic(&path, &render(&state, i)).expect("write");
    }
    assert_eq!(dir.entries(), vec!["state.json".to_owned()]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }
}

#[test]
fn write_atomic_fails_cleanly_when_the_target_is_a_directory() {
    let dir = TempDir::new("blocked");
    let path = dir.0.join("state.json");
    fs::create_dir(&path).expect("mkdir");
    fs::write(path.join("keep"), b"x").expect("write");
    assert!(write_atomic(&path, b"{}").is_err());
    assert_eq!(dir.entries(), vec!["state.json".to_owned()]);
    assert!(write_atomic(&dir.0.join("missing-dir").join("state.json"), b"{}").is_err());
}

#[cfg(unix)]
#[test]
fn exclusive_creation_never_follows_a_planted_symlink() {
    let dir = TempDir::new("symlink");
    let victim = dir.0.join("victim");
    fs::write(&victim, b"precious").expect("write");
    let planted = dir.0.join("planted");
    std::os::unix::fs::symlink(&victim, &planted).expect("symlink");
    let err = create_exclusive(&planted).expect_err("must refuse");
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    let dangling = dir.0.join("dangling");
    std::os::unix::fs::symlink(dir.0.join("nowhere"), &dangling).expect("symlink");
    assert!(create_exclusive(&dangling).is_err());
    assert!(!dir.0.join("nowhere").exists());
    assert_eq!(fs::read(&victim).expect("read"), b"precious");
}

#[cfg(unix)]
#[test]
fn reading_a_fifo_never_waits_for_a_writer() {
    let dir = TempDir::new("fifo");
    let path = dir.0.join("state.json");
    let status = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
    // As if the FIFO had been swapped in after `look` saw a regular file: straight to the
    // open, on a thread so that a blocking open fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let _ = tx.send(read(&path));
    });
    let look = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("opening a FIFO blocked");
    reader.join().expect("reader panicked");
    match look {
        Look::Read {
            result: Err(reason),
            ..
        } => assert_eq!(reason, "is not a regular file"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn render_checked_refuses_what_no_reader_accepts() {
    let fits = State {
        message: Some("x".repeat(65_000)),
        ..sample()
    };
    let bytes = render_checked(&fits, 0).expect("fits");
    assert!(bytes.len() as u64 <= MAX_FILE_BYTES);
    assert!(parse(&bytes).is_ok());
    let escaped = State {
        message: Some("\u{7}".repeat(11_000)),
        ..sample()
    };
    let err = render_checked(&escaped, 0).expect_err("too large");
    assert!(err.bytes > 66_000, "{err:?}");
    assert!(err
        .to_string()
        .contains("more than the 65536 every reader accepts"));
}

#[test]
fn a_write_removes_temporary_files_that_dead_writers_left_and_nothing_else() {
    let dir = TempDir::new("stale");
    let path = dir.0.join("state.json");
    let aged = SystemTime::now() - STALE_TEMP_AGE - Duration::from_secs(5);
    let left = |name: &str, modified: SystemTime| {
        let file = File::create(dir.0.join(name)).expect("create");
        file.set_modified(modified).expect("set mtime");
    };
    for pid in 0..20 {
        left(&format!(".state.json.{pid}.0.1f.tmp"), aged);
    }
    // A writer at work right now, another state file's leftover, and unrelated files.
    left(".state.json.99.0.2a.tmp", SystemTime::now());
    left(".other.json.1.0.3b.tmp", aged);
    left("state.json.tmp", aged);
    left("notes.txt", aged);
    write_atomic(&path, &render(&sample(), 0)).expect("write");
    assert_eq!(
        dir.entries(),
        vec![
            ".other.json.1.0.3b.tmp".to_owned(),
            ".state.json.99.0.2a.tmp".to_owned(),
            "notes.txt".to_owned(),
            "state.json".to_owned(),
            "state.json.tmp".to_owned(),
        ]
    );
}
