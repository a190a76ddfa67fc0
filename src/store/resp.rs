//! RESP2, the protocol Redis speaks: commands out as arrays of bulk strings, replies in, read
//! without trusting them. A reply larger or deeper than tidegate ever asks for is garbage, not
//! a reason to allocate.

use std::io::{self, BufRead, Write};

/// The largest bulk string accepted: state documents are at most 64 KiB, heartbeats far less.
pub const MAX_BULK: usize = 1024 * 1024;
/// The most elements one array may have (a `SCAN` page, an `MGET` of its keys).
pub const MAX_ARRAY: usize = 100_000;
/// The longest header line (`+OK`, `-ERR ...`, `:12`, `$5`).
const MAX_LINE: usize = 64 * 1024;
/// Arrays in arrays: `SCAN` answers with two levels; anything deeper is garbage.
const MAX_DEPTH: usize = 3;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The bytes of a bulk string, `None` for a nil one or any other kind of reply.
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Self::Bulk(bytes) => bytes,
            _ => None,
        }
    }
}

/// Writes one command.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(arg.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Sends already encoded commands.
pub fn send(stream: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes)?;
    stream.flush()
}

/// What the server sent is not Redis's protocol (kept apart from other `InvalidData` errors,
/// such as a TLS certificate refused).
#[derive(Debug)]
pub struct NotResp(String);

impl std::fmt::Display for NotResp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotResp {}

/// Whether `err` says the reply was not Redis's protocol.
pub fn is_not_resp(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|inner| inner.is::<NotResp>())
}

fn garbage(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, NotResp(what.into()))
}

/// Reads one reply.
pub fn read(input: &mut impl BufRead) -> io::Result<Reply> {
    read_at(input, 0)
}

fn read_at(input: &mut impl BufRead, depth: usize) -> io::Result<Reply> {
    let line = read_line(input)?;
    let (&kind, rest) = line
        .split_first()
        .ok_or_else(|| garbage("an empty reply line"))?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    match kind {
        b'+' => Ok(Reply::Status(text())),
        b'-' => Ok(Reply::Error(text())),
        b':' => Ok(Reply::Int(number(rest)?)),
        b'$' => {
            let Some(len) = length(rest, MAX_BULK)? else {
                return Ok(Reply::Bulk(None));
            };
            let mut bytes = vec![0; len + 2];
            input.read_exact(&mut bytes)?;
            if !bytes.ends_with(b"\r\n") {
                return Err(garbage("a bulk string without its CRLF"));
            }
            bytes.truncate(len);
            Ok(Reply::Bulk(Some(bytes)))
        }
        b'*' => {
            let Some(len) = length(rest, MAX_ARRAY)? else {
                return Ok(Reply::Array(None));
            };
            if depth >= MAX_DEPTH {
                return Err(garbage("arrays nested too deep"));
            }
            (0..len)
                .map(|_| read_at(input, depth + 1))
                .collect::<io::Result<Vec<_>>>()
                .map(|items| Reply::Array(Some(items)))
        }
        other => Err(garbage(format!(
            "a reply starting with byte 0x{other:02x}, which is not Redis's protocol"
        ))),
    }
}

/// One CRLF-terminated line, without the CRLF, at most `MAX_LINE` bytes.
fn read_line(input: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        let available = input.fill_buf()?;
        if available.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed in the middle of a reply",
            ));
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..=at], true),
            None => (available, false),
        };
        line.extend_from_slice(chunk);
        let used = chunk.len();
        input.consume(used);
        if line.len() > MAX_LINE + 2 {
            return Err(garbage("a reply line longer than 64 KiB"));
        }
        if found {
            break;
        }
    }
    if !line.ends_with(b"\r\n") {
        return Err(garbage("a reply line ending in a bare LF"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn number(digits: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| garbage("a reply with a malformed number"))
}

/// A length header: `-1` is nil, anything above `max` is garbage.
fn length(digits: &[u8], max: usize) -> io::Result<Option<usize>> {
    match number(digits)? {
        -1 => Ok(None),
        len => usize::try_from(len)
            .ok()
            .filter(|&len| len <= max)
            .map(Some)
            .ok_or_else(|| garbage(format!("a reply announcing {len} items or bytes"))),
    }
}
