use std::io::{BufReader, Cursor};

use super::resp::{self, Reply, MAX_ARRAY, MAX_BULK};
use super::*;

fn parse(text: &str) -> Result<Uri, String> {
    Uri::parse("store", text).map_err(|err| err.to_string())
}

fn read(bytes: &[u8]) -> std::io::Result<Reply> {
    resp::read(&mut BufReader::new(Cursor::new(bytes.to_vec())))
}

#[test]
fn tcp_uris_give_host_port_db_credentials_and_key() {
    let uri = parse("redis://user:p%40ss@cache.internal:6380/3?key=app%3Amaint").expect("ok");
    assert_eq!(
        uri.address,
        Address::Tcp {
            host: "cache.internal".into(),
            port: 6380
        }
    );
    assert_eq!(uri.username.as_deref(), Some("user"));
    assert_eq!(uri.password.as_deref(), Some("p@ss"));
    assert_eq!(uri.db, 3);
    assert_eq!(uri.maintenance_key(), "app:maint");
    assert_eq!(uri.breaker_key("db"), "app:maint:db");

    let plain = parse("redis://127.0.0.1").expect("ok");
    assert_eq!(
        plain.address,
        Address::Tcp {
            host: "127.0.0.1".into(),
            port: 6379
        }
    );
    assert_eq!((plain.db, plain.password.as_deref()), (0, None));
    assert_eq!(plain.maintenance_key(), DEFAULT_MAINTENANCE_KEY);
    assert_eq!(plain.breaker_key("db"), "tidegate:breaker:db");

    let only_password = parse("REDIS://:secret@[::1]:7000/").expect("ok");
    assert_eq!(
        only_password.address,
        Address::Tcp {
            host: "::1".into(),
            port: 7000
        }
    );
    assert_eq!(
        (only_password.username, only_password.password.as_deref()),
        (None, Some("secret"))
    );
}

#[test]
fn rediss_uris_speak_tls_and_may_name_their_ca() {
    let uri = parse("rediss://:pw@cache.example:6380/1?key=k").expect("ok");
    assert!(uri.tls.as_ref().is_some_and(|tls| tls.ca.is_none()));
    assert_eq!(uri.to_string(), "rediss://:***@cache.example:6380/1?key=k");
    let folder = std::env::temp_dir().join(format!("tidegate-ca-{}", std::process::id()));
    std::fs::create_dir_all(&folder).expect("a folder");
    let empty = folder.join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").expect("written");
    let err = parse(&format!("rediss://h?ca={}", empty.display())).expect_err("an error");
    assert!(err.contains("with no PEM certificate in it"), "{err}");
    std::fs::remove_dir_all(&folder).expect("removed");
}

#[test]
fn unix_uris_take_their_options_from_the_query() {
    let uri = parse("unix:///run/redis/redis.sock?db=2&password=pw&key=k").expect("ok");
    assert_eq!(uri.address, Address::Unix("/run/redis/redis.sock".into()));
    assert_eq!((uri.db, uri.password.as_deref()), (2, Some("pw")));
    assert_eq!(uri.maintenance_key(), "k");
}

#[test]
fn shown_uris_never_carry_the_password() {
    let uri = parse("redis://u:hunter2@h:1/0?key=k").expect("ok");
    assert_eq!(uri.to_string(), "redis://u:***@h:1/0?key=k");
    let unix = parse("unix:///s.sock?password=hunter2").expect("ok");
    assert!(!unix.to_string().contains("hunter2"));
    let err = parse("redis://u:hunter2@h:99999").expect_err("an error");
    assert!(err.starts_with("store: must have a port"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let err = parse("unix:///s.sock?password=hunter2&bogus=1").expect_err("an error");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn bad_uris_are_refused_with_the_reason() {
    for (text, why) in [
        ("redis://", "must name a host"),
        ("redis://h:0", "port from 1 to 65535"),
        ("redis://h:x", "port from 1 to 65535"),
        ("redis://h/abc", "database number"),
        ("redis://h/70000", "database number"),
        ("redis://h?db=1", "unknown query parameter \"db\""),
        ("redis://h?key=", "key= of 1 to 512"),
        ("redis://h?key=a%0Ab", "key= of 1 to 512"),
        ("redis://h#frag", "#fragment"),
        ("redis://%zz@h", "malformed %-escape"),
        ("redis://[::1", "unclosed ["),
        ("unix://relative.sock", "absolute socket path"),
        (
            "redis://h?ca=/etc/ssl/ca.pem",
            "unknown query parameter \"ca\" (known: key)",
        ),
        (
            "rediss://h?ca=/nonexistent/ca.pem",
            "ca= file /nonexistent/ca.pem that cannot be read",
        ),
        ("http://h", "must start with redis:// or unix://"),
    ] {
        let err = parse(text).expect_err("an error");
        assert!(err.starts_with("store: "), "{text}: {err}");
        assert!(err.contains(why), "{text}: {err}");
    }
}

#[test]
fn uris_are_told_from_paths() {
    assert!(is_uri("redis://h"));
    assert!(is_uri("Unix:///s"));
    assert!(is_uri("rediss://h"));
    assert!(!is_uri("/run/app/state.json"));
    assert!(!is_uri("redis"));
    assert!(
        is_uri("memcached://h"),
        "an unknown scheme is refused, not taken for a path"
    );
    assert!(!is_uri("./state://x"));
}

#[test]
fn commands_are_arrays_of_bulk_strings() {
    let mut out = Vec::new();
    resp::encode(&mut out, &[b"SET", b"k", b"v\r\n"]);
    assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n");
}

#[test]
fn replies_of_every_kind_are_read() {
    assert_eq!(read(b"+OK\r\n").expect("ok"), Reply::Status("OK".into()));
    assert_eq!(
        read(b"-WRONGPASS invalid\r\n").expect("ok"),
        Reply::Error("WRONGPASS invalid".into())
    );
    assert_eq!(read(b":-42\r\n").expect("ok"), Reply::Int(-42));
    assert_eq!(read(b"$-1\r\n").expect("ok"), Reply::Bulk(None));
    assert_eq!(
        read(b"$4\r\na\r\nb\r\n").expect("ok"),
        Reply::Bulk(Some(b"a\r\nb".to_vec()))
    );
    assert_eq!(
        read(b"*2\r\n$1\r\n0\r\n*1\r\n$1\r\nk\r\n").expect("ok"),
        Reply::Array(Some(vec![
            Reply::Bulk(Some(b"0".to_vec())),
            Reply::Array(Some(vec![Reply::Bulk(Some(b"k".to_vec()))])),
        ]))
    );
    assert_eq!(read(b"*-1\r\n").expect("ok"), Reply::Array(None));
}

#[test]
fn garbage_is_an_error_never_an_allocation_or_a_panic() {
    let huge_bulk = format!("${}\r\n", MAX_BULK + 1);
    let huge_array = format!("*{}\r\n", MAX_ARRAY + 1);
    let long_line = format!("+{}\r\n", "x".repeat(70_000));
    for bytes in [
        b"HTTP/1.1 400 Bad Request\r\n".as_slice(),
        b"\r\n",
        b":12x\r\n",
        b"$-2\r\n",
        b"$99999999999999999999\r\n",
        huge_bulk.as_bytes(),
        huge_array.as_bytes(),
        b"*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        b"$3\r\nabcde",
        b"+OK\n",
        b"+OK",
        b"",
        long_line.as_bytes(),
    ] {
        assert!(read(bytes).is_err(), "{:?}", String::from_utf8_lossy(bytes));
    }
}

#[test]
fn arbitrary_bytes_never_panic_the_reader() {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = usize::try_from(seed % 24).unwrap_or(0);
        let alphabet = b"+-:$*\r\n0123456789-";
        let bytes: Vec<u8> = (0..len)
            .map(|i| alphabet[usize::try_from((seed >> (i % 8 * 8)) % 18).unwrap_or(0)])
            .collect();
        let _ = read(&bytes);
    }
}

#[test]
fn a_dead_address_fails_within_the_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("ok");
    let port = listener.local_addr().expect("ok").port();
    drop(listener);
    let uri = parse(&format!("redis://127.0.0.1:{port}")).expect("ok");
    let started = std::time::Instant::now();
    let err = Conn::open(&uri).err().expect("an error");
    assert!(matches!(err, StoreError::Connect(_)), "{err}");
    assert!(started.elapsed() < TIMEOUT * 2);
}

#[test]
fn a_server_that_never_answers_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("ok");
    let port = listener.local_addr().expect("ok").port();
    let uri = parse(&format!("redis://127.0.0.1:{port}")).expect("ok");
    let mut conn = Conn::open(&uri).expect("ok");
    let started = std::time::Instant::now();
    let err = conn.get("k").expect_err("a timeout");
    assert!(err.to_string().contains("did not answer"), "{err}");
    assert!(started.elapsed() < TIMEOUT * 3);
    drop(listener);
}
