//! Redis as a store for state a whole fleet shares: maintenance and drain, breakers, and the
//! heartbeats that show who follows them.
//!
//! The client is tidegate's own, in Rust, built into the extension: the poller threads that use
//! it run without the GIL and without any Python package. It speaks the few commands tidegate
//! needs (`AUTH`, `SELECT`, `GET`, `SET`, `DEL`, `WATCH`/`MULTI`/`EXEC`, `PUBLISH`, `SUBSCRIBE`,
//! `SCAN`, `MGET`) over TCP or a Unix socket, with a timeout on every connect, read and write,
//! and reads every reply without trusting it (`resp`). A connection belongs to one thread and
//! lives only as long as that thread's loop: nothing here is shared between threads, so a
//! process forked mid-call inherits no lock.
//!
//! # Store URIs
//!
//! - `redis://[[username]:password@]host[:port][/db][?key=NAME]` (port 6379, db 0);
//! - `rediss://...` the same over TLS (rustls; the server's certificate is checked against
//!   Mozilla's roots, or against the PEM certificates of `ca=/path/to/ca.pem`);
//! - `unix:///path/to/redis.sock[?key=NAME&db=N&username=U&password=P]`.
//!
//! `key` names the Redis key the state lives at (`tidegate:maintenance` by default for a
//! maintenance switch; a breaker's keys are `tidegate:breaker:<name>` unless `key` gives
//! another prefix). Userinfo and query values are percent-decoded.

pub mod resp;

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::errors::ArgError;

pub use resp::Reply;

/// How long a connect, a read or a write may take before the store counts as lost.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// Where the state of a maintenance switch lives unless the URI says `key=`.
pub const DEFAULT_MAINTENANCE_KEY: &str = "tidegate:maintenance";

/// Where breakers live unless the URI says `key=`: `<prefix>:<name>`.
pub const DEFAULT_BREAKER_PREFIX: &str = "tidegate:breaker";

/// The longest key (or key prefix) a URI may name.
const MAX_KEY: usize = 512;

/// This host's name, as heartbeats record it (read once).
pub fn host_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "unknown".to_owned())
    })
}

/// Is `text` meant as a URI rather than a file path? Anything that starts like one
/// (`scheme://`), so a mistyped or unsupported scheme is refused instead of becoming a file.
pub fn is_uri(text: &str) -> bool {
    text.split_once("://").is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// How to reach the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// A parsed store URI.
#[derive(Clone, PartialEq, Eq)]
pub struct Uri {
    pub address: Address,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
    /// The `key=` of the URI, when given.
    pub key: Option<String>,
    /// Set for `rediss://`.
    pub tls: Option<Tls>,
}

/// How a `rediss://` connection checks the server.
#[derive(Clone, PartialEq, Eq)]
pub struct Tls {
    /// The `ca=` file, whose certificates (DER) replace the built-in roots.
    pub ca: Option<(PathBuf, Vec<Vec<u8>>)>,
}

impl fmt::Debug for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uri({self})")
    }
}

/// The URI as it can be shown: the password is never printed.
impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = match (&self.username, &self.password) {
            (Some(user), Some(_)) => format!("{user}:***@"),
            (None, Some(_)) => ":***@".to_owned(),
            (Some(user), None) => format!("{user}@"),
            (None, None) => String::new(),
        };
        match &self.address {
            Address::Tcp { host, port } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                let scheme = if self.tls.is_some() {
                    "rediss"
                } else {
                    "redis"
                };
                write!(f, "{scheme}://{secret}{host}:{port}/{}", self.db)?;
                let mut query = Vec::new();
                if let Some(key) = &self.key {
                    query.push(format!("key={key}"));
                }
                if let Some(Tls {
                    ca: Some((path, _)),
                }) = &self.tls
                {
                    query.push(format!("ca={}", path.display()));
                }
                if !query.is_empty() {
                    write!(f, "?{}", query.join("&"))?;
                }
            }
            Address::Unix(path) => {
                write!(f, "unix://{}?db={}", path.display(), self.db)?;
                if let Some(key) = &self.key {
                    write!(f, "&key={key}")?;
                }
                if self.password.is_some() {
                    f.write_str("&password=***")?;
                }
            }
        }
        Ok(())
    }
}

impl Uri {
    /// Parses a store URI; errors name `param`.
    pub fn parse(param: &'static str, text: &str) -> Result<Self, ArgError> {
        let bad = |why: &str| ArgError::value(param, format!("{why}, got {}", shown(text)));
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("is not a store URI"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        if rest.contains('#') || query.is_some_and(|q| q.contains('#')) {
            return Err(bad("must not have a #fragment"));
        }
        let mut uri = match scheme.to_ascii_lowercase().as_str() {
            "redis" => Self::parse_tcp(rest).map_err(|why| bad(&why))?,
            "unix" => Self::parse_unix(rest).map_err(|why| bad(&why))?,
            "rediss" => Self {
                tls: Some(Tls { ca: None }),
                ..Self::parse_tcp(rest).map_err(|why| bad(&why))?
            },
            _ => return Err(bad("must start with redis:// or unix://")),
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value).map_err(|why| bad(&why))?;
            let unix = matches!(uri.address, Address::Unix(_));
            match name {
                "ca" if uri.tls.is_some() => {
                    let path = PathBuf::from(value);
                    let certs = read_certificates(&path).map_err(|why| bad(&why))?;
                    uri.tls = Some(Tls {
                        ca: Some((path, certs)),
                    });
                }
                "key" => uri.key = Some(value),
                "db" if unix => uri.db = parse_db(&value).map_err(|why| bad(&why))?,
                "password" if unix => uri.password = Some(value),
                "username" if unix => uri.username = Some(value),
                _ => {
                    return Err(bad(&format!(
                        "has an unknown query parameter {name:?} (known: {})",
                        if unix {
                            "key, db, username, password"
                        } else if uri.tls.is_some() {
                            "key, ca"
                        } else {
                            "key"
                        }
                    )))
                }
            }
        }
        if let Some(key) = &uri.key {
            if key.is_empty() || key.len() > MAX_KEY || key.chars().any(char::is_control) {
                return Err(bad(
                    "must have a key= of 1 to 512 characters without control characters",
                ));
            }
        }
        Ok(uri)
    }

    fn parse_tcp(rest: &str) -> Result<Self, String> {
        let (userinfo, hostpart) = match rest.rsplit_once('@') {
            Some((userinfo, hostpart)) => (Some(userinfo), hostpart),
            None => (None, rest),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, pass)) => (
                    Some(decode(user)?).filter(|u| !u.is_empty()),
                    Some(decode(pass)?),
                ),
                None => (Some(decode(info)?).filter(|u| !u.is_empty()), None),
            },
        };
        let (hostport, db) = match hostpart.split_once('/') {
            Some((hostport, "")) => (hostport, 0),
            Some((hostport, db)) => (hostport, parse_db(db)?),
            None => (hostpart, 0),
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or("has an unclosed [ in its host")?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("must name a host".to_owned());
        }
        let port = match port {
            None => 6379,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or("must have a port from 1 to 65535")?,
        };
        Ok(Self {
            address: Address::Tcp {
                host: host.to_owned(),
                port,
            },
            username,
            password,
            db,
            key: None,
            tls: None,
        })
    }

    fn parse_unix(rest: &str) -> Result<Self, String> {
        let path = decode(rest)?;
        if !path.starts_with('/') || path.len() < 2 {
            return Err("must give an absolute socket path (unix:///path/to/redis.sock)".into());
        }
        Ok(Self {
            address: Address::Unix(PathBuf::from(path)),
            username: None,
            password: None,
            db: 0,
            key: None,
            tls: None,
        })
    }

    /// The key of a maintenance switch's state.
    pub fn maintenance_key(&self) -> &str {
        self.key.as_deref().unwrap_or(DEFAULT_MAINTENANCE_KEY)
    }

    /// The key of the breaker `name`'s state.
    pub fn breaker_key(&self, name: &str) -> String {
        format!(
            "{}:{name}",
            self.key.as_deref().unwrap_or(DEFAULT_BREAKER_PREFIX)
        )
    }
}

/// The certificates of a PEM file, for `ca=`.
fn read_certificates(path: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| {
            format!(
                "has a ca= file {} that cannot be read ({err})",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "has a ca= file {} with no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs.into_iter().map(|cert| cert.to_vec()).collect())
}

/// The TLS client set-up for `tls`: its `ca=` certificates, else Mozilla's roots.
fn tls_config(tls: &Tls) -> io::Result<std::sync::Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some((_, certs)) => {
            for cert in certs {
                roots
                    .add(rustls::pki_types::CertificateDer::from(cert.clone()))
                    .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| io::Error::other(err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

fn shown(text: &str) -> String {
    // Never echo a password back: only the scheme and host part are shown.
    let safe = match (text.split_once("://"), text.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, after))) => format!("{scheme}://***@{after}"),
        _ => text.to_owned(),
    };
    let safe = match safe.split_once("password=") {
        Some((before, _)) => format!("{before}password=***"),
        None => safe,
    };
    format!("{:?}", safe)
}

fn parse_db(text: &str) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|&db| db < 1 << 16)
        .ok_or_else(|| format!("must have a database number from 0 to 65535, not {text:?}"))
}

/// Percent-decoding, to UTF-8.
fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = bytes
                .get(at + 1..at + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("has a malformed %-escape")?;
            out.push(hex);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "has %-escapes that are not UTF-8".to_owned())
}

/// Why the store could not be used.
#[derive(Debug)]
pub enum StoreError {
    /// Connecting failed (refused, unreachable, timed out).
    Connect(io::Error),
    /// The connection failed or timed out mid-exchange.
    Io(io::Error),
    /// The server answered with an error (a wrong password, a key of another type, ...).
    Refused(String),
    /// The server answered, but not as Redis does.
    Garbage(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(err) => write!(f, "cannot connect: {err}"),
            Self::Io(err) if resp::is_not_resp(err) => {
                write!(
                    f,
                    "answered with something that is not Redis's protocol: {err}"
                )
            }
            Self::Io(err) => match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    write!(f, "did not answer within {} s", TIMEOUT.as_secs_f64())
                }
                _ => write!(f, "connection failed: {err}"),
            },
            Self::Refused(message) => write!(f, "refused: {message}"),
            Self::Garbage(message) => write!(f, "answered unexpectedly: {message}"),
        }
    }
}

impl From<io::Error> for StoreError {
    fn from(err: io::Error) -> Self {
        Self::Io(err)
    }
}

enum Stream {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
            #[cfg(unix)]
            Self::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
            #[cfg(unix)]
            Self::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.flush(),
            Self::Tls(s) => s.flush(),
            #[cfg(unix)]
            Self::Unix(s) => s.flush(),
        }
    }
}

impl Stream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_read_timeout(timeout),
            Self::Tls(s) => s.sock.set_read_timeout(timeout),
            #[cfg(unix)]
            Self::Unix(s) => s.set_read_timeout(timeout),
        }
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_write_timeout(timeout),
            Self::Tls(s) => s.sock.set_write_timeout(timeout),
            #[cfg(unix)]
            Self::Unix(s) => s.set_write_timeout(timeout),
        }
    }
}

fn connect(uri: &Uri, timeout: Duration) -> io::Result<Stream> {
    match &uri.address {
        Address::Tcp { host, port } => {
            let mut last = None;
            for addr in (host.as_str(), *port).to_socket_addrs()? {
                match TcpStream::connect_timeout(&addr, timeout) {
                    Ok(stream) => {
                        stream.set_nodelay(true)?;
                        let Some(tls) = &uri.tls else {
                            return Ok(Stream::Tcp(stream));
                        };
                        let name = rustls::pki_types::ServerName::try_from(host.clone())
                            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
                        let session = rustls::ClientConnection::new(tls_config(tls)?, name)
                            .map_err(io::Error::other)?;
                        return Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(
                            session, stream,
                        ))));
                    }
                    Err(err) => last = Some(err),
                }
            }
            Err(last.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))
            }))
        }
        #[cfg(unix)]
        Address::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
        #[cfg(not(unix))]
        Address::Unix(_) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "unix:// stores need a Unix system",
        )),
    }
}

/// One connection, authenticated and on its database.
pub struct Conn {
    stream: BufReader<Stream>,
    out: Vec<u8>,
}

impl Conn {
    /// Connects, authenticates and selects the database, each step within `TIMEOUT`.
    pub fn open(uri: &Uri) -> Result<Self, StoreError> {
        let stream = connect(uri, TIMEOUT).map_err(StoreError::Connect)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let mut conn = Self {
            stream: BufReader::with_capacity(16 * 1024, stream),
            out: Vec::with_capacity(256),
        };
        if let Some(password) = &uri.password {
            match &uri.username {
                Some(user) => conn.ok(&[b"AUTH", user.as_bytes(), password.as_bytes()])?,
                None => conn.ok(&[b"AUTH", password.as_bytes()])?,
            }
        }
        if uri.db != 0 {
            conn.ok(&[b"SELECT", uri.db.to_string().as_bytes()])?;
        }
        Ok(conn)
    }

    /// Sends commands in one write and reads their replies; an error reply is returned as a
    /// reply, not an error.
    pub fn pipeline(&mut self, commands: &[&[&[u8]]]) -> Result<Vec<Reply>, StoreError> {
        self.out.clear();
        for args in commands {
            resp::encode(&mut self.out, args);
        }
        resp::send(self.stream.get_mut(), &self.out)?;
        commands
            .iter()
            .map(|_| resp::read(&mut self.stream).map_err(StoreError::Io))
            .collect()
    }

    /// One command; an error reply becomes `StoreError::Refused`.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Reply, StoreError> {
        let reply = self
            .pipeline(&[args])?
            .pop()
            .ok_or_else(|| StoreError::Garbage("no reply".into()))?;
        match reply {
            Reply::Error(message) => Err(StoreError::Refused(message)),
            reply => Ok(reply),
        }
    }

    fn ok(&mut self, args: &[&[u8]]) -> Result<(), StoreError> {
        match self.call(args)? {
            Reply::Status(_) => Ok(()),
            other => Err(StoreError::Garbage(format!("{other:?}"))),
        }
    }

    /// The value at `key`, `None` when there is none.
    pub fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.call(&[b"GET", key.as_bytes()])? {
            Reply::Bulk(bytes) => Ok(bytes),
            other => Err(StoreError::Garbage(format!("GET gave {other:?}"))),
        }
    }

    /// Sets `key` for `ttl` (whole milliseconds, at least 1); with `only_new`, only when the
    /// key is absent. Whether it was set.
    pub fn set_for(
        &mut self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        only_new: bool,
    ) -> Result<bool, StoreError> {
        let ms = ttl
            .as_millis()
            .clamp(1, u128::from(u64::MAX >> 1))
            .to_string();
        let mut args: Vec<&[u8]> = vec![b"SET", key.as_bytes(), value, b"PX", ms.as_bytes()];
        if only_new {
            args.push(b"NX");
        }
        match self.call(&args)? {
            Reply::Status(_) => Ok(true),
            Reply::Bulk(None) => Ok(false),
            other => Err(StoreError::Garbage(format!("SET gave {other:?}"))),
        }
    }

    /// Deletes keys; how many there were.
    pub fn del(&mut self, keys: &[&str]) -> Result<i64, StoreError> {
        let mut args: Vec<&[u8]> = vec![b"DEL"];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        match self.call(&args)? {
            Reply::Int(n) => Ok(n),
            other => Err(StoreError::Garbage(format!("DEL gave {other:?}"))),
        }
    }

    /// Replaces the value at `key` with what `edit` makes of the current one, atomically
    /// (`WATCH`/`MULTI`/`EXEC`, tried again when another writer came between), and announces
    /// the change on the channel named like the key. Returns what `edit` returned.
    pub fn update<T, E>(
        &mut self,
        key: &str,
        mut edit: impl FnMut(Option<&[u8]>) -> Result<(Vec<u8>, T), E>,
    ) -> Result<Result<T, E>, StoreError> {
        for _ in 0..16 {
            self.ok(&[b"WATCH", key.as_bytes()])?;
            let current = self.get(key)?;
            let (bytes, made) = match edit(current.as_deref()) {
                Ok(made) => made,
                Err(err) => {
                    self.ok(&[b"UNWATCH"])?;
                    return Ok(Err(err));
                }
            };
            let replies = self.pipeline(&[
                &[b"MULTI"],
                &[b"SET", key.as_bytes(), &bytes],
                &[b"PUBLISH", key.as_bytes(), b"changed"],
                &[b"EXEC"],
            ])?;
            match replies.last() {
                Some(Reply::Array(Some(_))) => return Ok(Ok(made)),
                Some(Reply::Array(None)) => continue,
                Some(Reply::Error(message)) => return Err(StoreError::Refused(message.clone())),
                other => return Err(StoreError::Garbage(format!("EXEC gave {other:?}"))),
            }
        }
        Err(StoreError::Refused(
            "the key kept changing under 16 attempts to update it".into(),
        ))
    }

    /// Every key matching `pattern`, with its value (keys that expired meanwhile are left out).
    pub fn scan_values(&mut self, pattern: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut cursor = b"0".to_vec();
        let mut keys = Vec::new();
        for _ in 0..10_000 {
            let reply = self.call(&[
                b"SCAN",
                &cursor,
                b"MATCH",
                pattern.as_bytes(),
                b"COUNT",
                b"500",
            ])?;
            let Reply::Array(Some(mut parts)) = reply else {
                return Err(StoreError::Garbage("SCAN gave no array".into()));
            };
            let (Some(Reply::Array(Some(page))), Some(Reply::Bulk(Some(next)))) =
                (parts.pop(), parts.pop())
            else {
                return Err(StoreError::Garbage("SCAN gave an unexpected shape".into()));
            };
            keys.extend(page.into_iter().filter_map(Reply::into_bytes));
            if next == b"0" {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        let mut found = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let mut args: Vec<&[u8]> = vec![b"MGET"];
            args.extend(chunk.iter().map(Vec::as_slice));
            let Reply::Array(Some(values)) = self.call(&args)? else {
                return Err(StoreError::Garbage("MGET gave no array".into()));
            };
            for (key, value) in chunk.iter().zip(values) {
                if let Some(value) = value.into_bytes() {
                    found.push((String::from_utf8_lossy(key).into_owned(), value));
                }
            }
        }
        Ok(found)
    }
}

/// A connection subscribed to one channel, for change notices.
pub struct Subscription {
    conn: Conn,
}

impl Subscription {
    pub fn open(uri: &Uri, channel: &str) -> Result<Self, StoreError> {
        let mut conn = Conn::open(uri)?;
        match conn.call(&[b"SUBSCRIBE", channel.as_bytes()])? {
            Reply::Array(Some(_)) => Ok(Self { conn }),
            other => Err(StoreError::Garbage(format!("SUBSCRIBE gave {other:?}"))),
        }
    }

    /// Waits up to `timeout` for a notice: `Ok(true)` when one came, `Ok(false)` when none did.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        let stream = self.conn.stream.get_ref();
        stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let got = if self.conn.stream.buffer().is_empty() {
            // Peek for the first byte, so a timeout never splits a message.
            match self.conn.stream.fill_buf() {
                Ok([]) => {
                    return Err(StoreError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    )))
                }
                Ok(_) => true,
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    false
                }
                Err(err) => return Err(err.into()),
            }
        } else {
            true
        };
        self.conn.stream.get_ref().set_read_timeout(Some(TIMEOUT))?;
        if got {
            resp::read(&mut self.conn.stream)?;
        }
        Ok(got)
    }
}

/// Whether a poller could reach its store, so that a loss is told once and its end once.
#[derive(Debug, Default)]
pub struct Reach {
    lost: bool,
}

impl Reach {
    /// A call failed: true when this starts a loss (warn now), false while it goes on.
    pub fn lost(&mut self) -> bool {
        !std::mem::replace(&mut self.lost, true)
    }

    /// A call got through: true when this ends a loss (say it is back).
    pub fn back(&mut self) -> bool {
        std::mem::replace(&mut self.lost, false)
    }
}

/// A poller's connections to a Redis store: one for commands, one subscribed to change
/// notices. Owned by the polling thread alone, and dropped on any error (the next poll
/// connects again).
#[derive(Default)]
pub struct Link {
    conn: Option<Conn>,
    notices: Option<Subscription>,
    /// The last call failed: no subscribing until a poll gets through again.
    failing: bool,
}

impl Link {
    /// Runs `call` on the command connection, connecting first when there is none.
    pub fn with<T>(
        &mut self,
        uri: &Uri,
        call: impl FnOnce(&mut Conn) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            slot => match Conn::open(uri) {
                Ok(conn) => slot.insert(conn),
                Err(err) => {
                    self.failing = true;
                    return Err(err);
                }
            },
        };
        let result = call(conn);
        self.failing = result.is_err();
        if self.failing {
            self.conn = None;
        }
        result
    }

    /// Waits up to `interval` for a change notice on `channel`; `false` when the wait ended
    /// without one. Subscribes first when the store is reachable and no subscription stands,
    /// and then returns `true` at once, so a poll covers what changed before; without a
    /// subscription, it only sleeps (`unpark` ends that sleep early).
    pub fn wait(&mut self, channel: Option<(&Uri, &str)>, interval: Duration) -> bool {
        if let (None, Some((uri, channel)), false) = (&self.notices, channel, self.failing) {
            self.notices = Subscription::open(uri, channel).ok();
            if self.notices.is_some() {
                // A change made before the subscription took has sent its notice to nobody.
                return true;
            }
        }
        match &mut self.notices {
            Some(notices) => match notices.wait(interval) {
                Ok(noticed) => noticed,
                Err(_) => {
                    self.notices = None;
                    false
                }
            },
            None => {
                // An early wake-up only means an early poll.
                std::thread::park_timeout(interval);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
