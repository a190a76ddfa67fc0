//! A deterministic mutation fuzzer: seeds, a dictionary of each grammar's tokens, and
//! byte-level mutations, driven by a fixed-seed generator so every run checks the same
//! inputs. Seeds and dictionaries are the `cargo fuzz` ones under `fuzz/`.
//! `TIDEGATE_FUZZ_CASES=N` sets the cases per parser (default 20000);
//! `TIDEGATE_FUZZ_SEED=S` picks another stream.

use std::fs;
use std::path::Path;

use super::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Bytes that sit on the edges of these grammars.
const EDGE_BYTES: &[u8] = b"\x00\t\n\r ,;:-+.=/*\"\\0123456789ZzTtGMq\x7f\x80\xc3\xff";

fn mutate(rng: &mut Rng, input: &[u8], seeds: &[&[u8]], dictionary: &[&[u8]]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(10) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = *rng.pick(EDGE_BYTES);
            }
            2 | 3 => {
                let token = rng.pick(dictionary);
                out.splice(at..at, token.iter().copied());
            }
            4 if !out.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                out.drain(at.min(end)..end);
            }
            5 if !out.is_empty() => {
                // Copies a piece, sometimes many times over, to grow long inputs.
                let start = rng.below(out.len());
                let end = (start + 1 + rng.below(16)).min(out.len());
                let times = if rng.below(16) == 0 {
                    1 + rng.below(64)
                } else {
                    1
                };
                let chunk = out[start..end].repeat(times);
                out.splice(at..at, chunk);
            }
            6 => {
                let other = rng.pick(seeds);
                let cut = rng.below(other.len() + 1);
                out.truncate(at);
                out.extend_from_slice(&other[cut..]);
            }
            7 => out.truncate(at),
            8 => {
                let run = [
                    b"9".repeat(1 + rng.below(40)),
                    b" ".repeat(1 + rng.below(4)),
                ];
                out.splice(at..at, rng.pick(&run).iter().copied());
            }
            _ => {
                let n = 1 + rng.below(4);
                let noise: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                out.splice(at..at, noise);
            }
        }
    }
    out
}

fn cases() -> usize {
    std::env::var("TIDEGATE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Runs `check` on every seed and on `cases()` mutants; returns how many inputs it ran.
fn run(name: &str, check: fn(&[u8]), seeds: &[&[u8]], dictionary: &[&[u8]]) -> usize {
    let seed = std::env::var("TIDEGATE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x7D6E_6A7E);
    let mut rng = Rng(seed ^ fnv1a(name.as_bytes()));
    // Inputs that mutated into something new stay in the pool and get mutated further.
    let mut pool: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_vec()).collect();
    for input in &pool {
        check(input);
    }
    let total = cases();
    for _ in 0..total {
        let parent = rng.pick(&pool).clone();
        let child = mutate(&mut rng, &parent, seeds, dictionary);
        check(&child);
        if pool.len() < 4096 && rng.below(8) == 0 {
            pool.push(child);
        }
    }
    eprintln!("fuzz {name}: {} inputs passed", total + seeds.len());
    total + seeds.len()
}

/// The seed inputs under `fuzz/seeds/<target>/`, in name order.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut paths: Vec<_> = fs::read_dir(&dir)
        .expect("seed folder")
        .map(|entry| entry.expect("seed entry").path())
        .collect();
    paths.sort();
    paths.iter().map(|p| fs::read(p).expect("seed")).collect()
}

/// The tokens of `fuzz/dicts/<target>.dict` (libFuzzer's format: one quoted token a
/// line, with `\\`, `\"` and `\xHH` escapes; `#` starts a comment).
fn dictionary(target: &str) -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/dicts")
        .join(format!("{target}.dict"));
    let text = fs::read_to_string(path).expect("dictionary");
    let mut tokens = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let quoted = &line[line.find('"').expect("a quoted token")..];
        let inner = &quoted.as_bytes()[1..quoted.len() - 1];
        let mut token = Vec::new();
        let mut i = 0;
        while i < inner.len() {
            match (inner[i], inner.get(i + 1)) {
                (b'\\', Some(b'x')) => {
                    let hex = std::str::from_utf8(&inner[i + 2..i + 4]).expect("hex");
                    token.push(u8::from_str_radix(hex, 16).expect("hex byte"));
                    i += 4;
                }
                (b'\\', Some(&escaped)) => {
                    token.push(escaped);
                    i += 2;
                }
                (byte, _) => {
                    token.push(byte);
                    i += 1;
                }
            }
        }
        tokens.push(token);
    }
    tokens
}

fn fuzz(target: &str, check: fn(&[u8])) {
    let seeds = seeds(target);
    let dictionary = dictionary(target);
    assert!(!seeds.is_empty() && !dictionary.is_empty());
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    let dictionary: Vec<&[u8]> = dictionary.iter().map(Vec::as_slice).collect();
    assert!(run(target, check, &seeds, &dictionary) > seeds.len());
}

#[test]
fn retry_after_parse_holds_its_properties() {
    fuzz("retry_after", retry_after);
}

#[test]
fn state_file_parse_holds_its_properties() {
    fuzz("state_file", state_file);
}

#[test]
fn parse_iso_holds_its_properties() {
    fuzz("parse_iso", iso_date);
}

#[test]
fn prefers_html_holds_its_properties() {
    fuzz("prefers_html", accept);
}

#[test]
fn dictionaries_read_libfuzzer_escapes() {
    let tokens = dictionary("retry_after");
    assert!(tokens.contains(&b" GMT".to_vec()));
    assert!(tokens.contains(&"\u{2003}".as_bytes().to_vec()));
    assert!(dictionary("state_file").contains(&br#""active""#.to_vec()));
}
