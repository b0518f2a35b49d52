//! Process plumbing the benchmarks share: the `pigeonair` binary, one-shot commands
//! with a timeout, finding a peer's programs, and reading a child's output lines.

#![allow(dead_code)] // each bench uses its own subset

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// The `pigeonair` binary cargo built alongside this benchmark: with the bench profile
/// (optimised, as `--release`) under `cargo bench`, the debug one under `cargo test`.
/// Building it again here with `cargo build --release` would resolve other features
/// than the bench build (no dev-dependencies) and rebuild half the tree each time.
pub fn pigeonair_binary(bench_mode: bool, bench: &str) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_pigeonair"));
    assert!(bin.exists(), "{} is missing", bin.display());
    if bench_mode {
        eprintln!("{bench}: using {}", bin.display());
    }
    bin
}

/// Run a one-shot command to completion, killing it after `timeout`; its stdout.
pub fn run_within(mut cmd: Command, timeout: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let to = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("wait: {e}")),
        }
    };
    let stdout = to.join().unwrap_or_default();
    let stderr = te.join().unwrap_or_default();
    match status {
        None => Err(format!(
            "timed out after {timeout:?}; stderr: {}",
            stderr.trim()
        )),
        Some(s) if s.success() => Ok(stdout),
        Some(s) => Err(format!("{s}; stderr: {}", stderr.trim())),
    }
}

pub fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["/usr/sbin", "/usr/local/sbin", "/usr/local/libexec"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

pub fn line_channel(stdout: std::process::ChildStdout) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Keep draining after the receiver is gone so the child never blocks on stdout.
            let _ = tx.send(line);
        }
    });
    rx
}
