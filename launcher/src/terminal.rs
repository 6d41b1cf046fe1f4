//! The caller's terminal: raw mode for `-t` (restored on drop, so on every return path, error or panic)
//! and its size.

use std::os::fd::AsFd;

use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};

use crate::sys::{self, WinSize};

/// Puts the caller's terminal (stdin) in raw mode until dropped.
pub struct RawGuard {
    saved: Termios,
}

impl RawGuard {
    /// Makes stdin raw if it is a terminal; `None` otherwise.
    pub fn stdin() -> Option<RawGuard> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawGuard { saved })
    }
}

impl Drop for RawGuard {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Whether fd 0 is a terminal.
pub fn stdin_is_tty() -> bool {
    nix::unistd::isatty(std::io::stdin().as_fd()).unwrap_or(false)
}

/// The size of the caller's terminal (stdin, else stdout).
pub fn size() -> Option<WinSize> {
    sys::get_winsize(std::io::stdin().as_fd())
        .or_else(|_| sys::get_winsize(std::io::stdout().as_fd()))
        .ok()
        .filter(|w| w.rows > 0 && w.cols > 0)
}

/// Parses docker's `--detach-keys` syntax: comma-separated keys, each a single character or `ctrl-X` with X in
/// `a-z @ [ \\ ] ^ _` (`ctrl-p,ctrl-q` is docker's usual choice).
pub fn parse_detach_keys(spec: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for key in spec.split(',') {
        let k = key.trim();
        let b = k.as_bytes();
        match b {
            [c] => out.push(*c),
            _ if b.len() == 6 && k[..5].eq_ignore_ascii_case("ctrl-") => {
                let c = b[5].to_ascii_lowercase();
                out.push(match c {
                    b'a'..=b'z' => c - b'a' + 1,
                    b'@' => 0,
                    b'[' => 27,
                    b'\\' => 28,
                    b']' => 29,
                    b'^' => 30,
                    b'_' => 31,
                    _ => return Err(format!("invalid detach keys {spec:?}: unknown key {k:?}")),
                });
            }
            _ => return Err(format!("invalid detach keys {spec:?}: unknown key {k:?}")),
        }
    }
    Ok(out)
}

/// Watches the caller's input for the detach sequence. Bytes that could start the sequence are held back until
/// the next byte decides; a mismatch releases them unchanged.
#[derive(Debug, Clone)]
pub struct DetachMatcher {
    keys: Vec<u8>,
    held: usize,
}

impl DetachMatcher {
    pub fn new(keys: Vec<u8>) -> DetachMatcher {
        DetachMatcher { keys, held: 0 }
    }

    /// Appends to `out` what must reach the container; `true` when the whole sequence was typed (what follows
    /// it in `input` is dropped).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.keys.is_empty() {
                out.push(b);
                continue;
            }
            if b == self.keys[self.held] {
                self.held += 1;
                if self.held == self.keys.len() {
                    self.held = 0;
                    return true;
                }
                continue;
            }
            out.extend_from_slice(&self.keys[..self.held]);
            self.held = 0;
            if b == self.keys[0] {
                self.held = 1;
                if self.keys.len() == 1 {
                    self.held = 0;
                    return true;
                }
            } else {
                out.push(b);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys() {
        assert_eq!(parse_detach_keys("ctrl-p,ctrl-q").unwrap(), vec![16, 17]);
        assert_eq!(parse_detach_keys("a,ctrl-@,ctrl-[,ctrl-_,CTRL-A").unwrap(), vec![b'a', 0, 27, 31, 1]);
        assert!(parse_detach_keys("ctrl-1").is_err());
        assert!(parse_detach_keys("ab").is_err());
        assert!(parse_detach_keys("").is_err());
        let mut m = DetachMatcher::new(vec![16, 17]);
        let mut out = Vec::new();
        assert!(!m.feed(b"ab\x10", &mut out));
        assert_eq!(out, b"ab", "a possible start is held back");
        assert!(!m.feed(b"c", &mut out));
        assert_eq!(out, b"ab\x10c", "released on mismatch");
        out.clear();
        assert!(!m.feed(b"\x10\x10", &mut out));
        assert!(m.feed(b"\x11rest", &mut out));
        assert_eq!(out, b"\x10", "the first ^P was plain input");
        let mut one = DetachMatcher::new(vec![b'x']);
        let mut out = Vec::new();
        assert!(one.feed(b"abx", &mut out));
        assert_eq!(out, b"ab");
    }
}
