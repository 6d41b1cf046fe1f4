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
