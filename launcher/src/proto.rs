//! Typed messages over `SOCK_SEQPACKET` sockets (message boundaries kept, descriptors passed with
//! `SCM_RIGHTS`): the container init ↔ monitor handshake, and the monitor ↔ client attach protocol.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, SetupError};
use crate::sys::WinSize;

/// Largest data payload per frame.
pub const CHUNK: usize = 32 * 1024;
/// Receive buffer size (a frame never exceeds it).
pub const MAX_FRAME: usize = CHUNK + 1024;

/// A connected pair of close-on-exec seqpacket sockets.
pub fn socketpair() -> nix::Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
}

/// Sends one message with optional descriptors.
pub fn send(fd: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    loop {
        match socket::sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.map(drop),
        }
    }
}

/// Receives one message into `buf`; returns its length (0 at end of stream) and the descriptors it carried.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> nix::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match socket::recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r?,
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(list) = c {
            for raw in list {
                fds.push(crate::sys::adopt_received_fd(raw));
            }
        }
    }
    Ok((msg.bytes, fds))
}

/// Container init → monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ChildMsg {
    /// The pty master follows as a descriptor.
    PtyMaster,
    /// Setup failed; the init exits.
    Failed(SetupError),
}

/// Monitor → container init: go on (cgroup joined, ids mapped).
pub const GO: u8 = b'G';
/// Monitor → init, after GO on a layerfs root: the resolved user as JSON after this byte, or nothing.
pub const USER: u8 = b'U';
/// The largest resolved user (JSON) a USER message carries.
pub const MAX_USER_MSG: usize = 60 * 1024;

/// Frames between the monitor and its clients (the `run` CLI, `attach`, `wait`, `stop`, `kill`).
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Client → monitor: bytes for the container's stdin.
    Stdin(Vec<u8>),
    /// Client → monitor: close the container's stdin.
    StdinEof,
    /// Client → monitor: resize the container's terminal.
    Resize(WinSize),
    /// Client → monitor: signal the container's init.
    Kill(i32),
    /// Client → monitor: send me the container's output from now on.
    Attach,
    /// Monitor → client: container output.
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Monitor → client: the container runs (init pid as seen from the host).
    Started {
        pid: i32,
    },
    /// Monitor → client: the container could not start.
    Failed {
        message: String,
        code: i32,
    },
    /// Monitor → client: the container exited.
    Exit(ExitInfo),
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, 128+signal when killed.
    pub code: i32,
    pub oom_killed: bool,
}

#[derive(Serialize, Deserialize)]
enum Control {
    Attach,
    Resize(WinSize),
    Kill(i32),
    Started { pid: i32 },
    Failed { message: String, code: i32 },
    Exit(ExitInfo),
}

impl Frame {
    /// Encodes: a tag byte, then raw data or JSON.
    pub fn encode(&self) -> Vec<u8> {
        let data = |tag: u8, d: &[u8]| {
            let mut v = Vec::with_capacity(d.len() + 1);
            v.push(tag);
            v.extend_from_slice(d);
            v
        };
        let control = |c: Control| {
            let mut v = vec![b'C'];
            v.extend(serde_json::to_vec(&c).expect("control frames serialize"));
            v
        };
        match self {
            Frame::Stdin(d) => data(b'0', d),
            Frame::Stdout(d) => data(b'1', d),
            Frame::Stderr(d) => data(b'2', d),
            Frame::StdinEof => vec![b'E'],
            Frame::Attach => control(Control::Attach),
            Frame::Resize(w) => control(Control::Resize(*w)),
            Frame::Kill(s) => control(Control::Kill(*s)),
            Frame::Started { pid } => control(Control::Started { pid: *pid }),
            Frame::Failed { message, code } => control(Control::Failed { message: message.clone(), code: *code }),
            Frame::Exit(e) => control(Control::Exit(*e)),
        }
    }

    /// Decodes a frame produced by [`Frame::encode`].
    pub fn decode(b: &[u8]) -> Result<Frame> {
        let bad = || Error::Protocol(format!("bad frame of {} bytes", b.len()));
        let (tag, rest) = b.split_first().ok_or_else(bad)?;
        Ok(match tag {
            b'0' => Frame::Stdin(rest.to_vec()),
            b'1' => Frame::Stdout(rest.to_vec()),
            b'2' => Frame::Stderr(rest.to_vec()),
            b'E' => Frame::StdinEof,
            b'C' => match serde_json::from_slice(rest).map_err(|e| Error::Protocol(e.to_string()))? {
                Control::Attach => Frame::Attach,
                Control::Resize(w) => Frame::Resize(w),
                Control::Kill(s) => Frame::Kill(s),
                Control::Started { pid } => Frame::Started { pid },
                Control::Failed { message, code } => Frame::Failed { message, code },
                Control::Exit(e) => Frame::Exit(e),
            },
            _ => return Err(bad()),
        })
    }
}

/// Sends a frame.
pub fn send_frame(fd: BorrowedFd<'_>, f: &Frame) -> nix::Result<()> {
    send(fd, &f.encode(), &[])
}

/// Receives a frame; `None` at end of stream.
pub fn recv_frame(fd: BorrowedFd<'_>) -> Result<Option<Frame>> {
    let mut buf = vec![0u8; MAX_FRAME];
    let (n, _) = recv(fd, &mut buf).map_err(|e| Error::sys("receive from the monitor", e))?;
    if n == 0 {
        return Ok(None);
    }
    Frame::decode(&buf[..n]).map(Some)
}

/// Sends a child message (with the pty master for [`ChildMsg::PtyMaster`]).
pub fn send_child(fd: BorrowedFd<'_>, m: &ChildMsg, fds: &[RawFd]) -> nix::Result<()> {
    send(fd, &serde_json::to_vec(m).expect("child messages serialize"), fds)
}

/// Receives a child message; `None` when the child closed its end (it exec'd or died).
pub fn recv_child(fd: BorrowedFd<'_>) -> Result<Option<(ChildMsg, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; 64 * 1024];
    let (n, fds) = recv(fd, &mut buf).map_err(|e| Error::sys("receive from the container init", e))?;
    if n == 0 {
        return Ok(None);
    }
    let m = serde_json::from_slice(&buf[..n]).map_err(|e| Error::Protocol(e.to_string()))?;
    Ok(Some((m, fds)))
}

/// After the container init died: the failure it reported, if any is still queued on the socket (a peer that
/// closed with our GO unread makes the first `recv` fail with `ECONNRESET`; the queue is still there).
pub fn pending_failure(fd: BorrowedFd<'_>) -> Option<SetupError> {
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..8 {
        match recv(fd, &mut buf) {
            Ok((0, _)) => return None,
            Ok((n, _)) => {
                if let Ok(ChildMsg::Failed(e)) = serde_json::from_slice(&buf[..n]) {
                    return Some(e);
                }
            }
            Err(nix::errno::Errno::ECONNRESET) => {}
            Err(_) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn frames_roundtrip() {
        for f in [
            Frame::Stdin(b"abc".to_vec()),
            Frame::Stdout(vec![0, 1, 2]),
            Frame::Stderr(Vec::new()),
            Frame::StdinEof,
            Frame::Resize(WinSize { rows: 40, cols: 100 }),
            Frame::Kill(15),
            Frame::Attach,
            Frame::Started { pid: 42 },
            Frame::Failed { message: "exec: \"x\": not found".into(), code: 127 },
            Frame::Exit(ExitInfo { code: 137, oom_killed: true }),
        ] {
            assert_eq!(Frame::decode(&f.encode()).unwrap(), f);
        }
        assert!(Frame::decode(b"").is_err());
        assert!(Frame::decode(b"Cnot json").is_err());
    }

    #[test]
    fn socketpair_passes_frames_and_fds() {
        let (a, b) = socketpair().unwrap();
        send_frame(a.as_fd(), &Frame::Started { pid: 7 }).unwrap();
        assert_eq!(recv_frame(b.as_fd()).unwrap(), Some(Frame::Started { pid: 7 }));
        let file = std::fs::File::open("/dev/null").unwrap();
        send_child(a.as_fd(), &ChildMsg::PtyMaster, &[file.as_raw_fd()]).unwrap();
        let (m, fds) = recv_child(b.as_fd()).unwrap().unwrap();
        assert_eq!(m, ChildMsg::PtyMaster);
        assert_eq!(fds.len(), 1);
        drop(a);
        assert_eq!(recv_frame(b.as_fd()).unwrap(), None);
    }
}
