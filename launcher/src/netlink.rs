//! rtnetlink requests, in-process and synchronous (no `ip` processes, no async runtime): links, addresses and
//! routes for `--net bridge`. A [`Rtnl`] talks to the network namespace it was opened in.

use std::net::Ipv4Addr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::errno::Errno;

/// A route netlink socket.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn io_err(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Rtnl {
    /// Opens a socket in the caller's network namespace.
    pub fn open() -> Result<Rtnl, Errno> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(io_err)?;
        sock.bind_auto().map_err(io_err)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(io_err)?;
        Ok(Rtnl { sock, seq: 0, buf: vec![0; 64 * 1024] })
    }

    /// Sends one request and collects the replies until the kernel's acknowledgement (or error).
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>, Errno> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut out = vec![0u8; req.buffer_len()];
        req.serialize(&mut out);
        self.sock.send(&out, 0).map_err(io_err)?;
        let mut replies = Vec::new();
        loop {
            let n = loop {
                match self.sock.recv(&mut &mut self.buf[..], 0) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r.map_err(io_err)?,
                }
            };
            let mut off = 0;
            while off < n {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                    .map_err(|_| Errno::EBADMSG)?;
                let len = m.header.length as usize;
                if len == 0 {
                    return Err(Errno::EBADMSG);
                }
                off += (len + 3) & !3;
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(c) => Err(Errno::from_raw(-c.get())),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(r) => replies.push(r),
                    _ => {}
                }
            }
        }
    }

    /// The index of the link `name`; `None` when there is none.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, Errno> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(Errno::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a bridge (`EEXIST` when a link of that name exists).
    pub fn create_bridge(&mut self, name: &str) -> Result<(), Errno> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }

    /// Creates a veth pair: `host` here, up and enslaved to the link `master`; its peer `peer` directly in the
    /// network namespace of process `peer_pid` (so the peer's name never clashes here).
    pub fn create_veth(&mut self, host: &str, master: u32, peer: &str, peer_pid: i32) -> Result<(), Errno> {
        let mut p = LinkMessage::default();
        p.attributes.push(LinkAttribute::IfName(peer.into()));
        p.attributes.push(LinkAttribute::NetNsPid(peer_pid as u32));
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::IfName(host.into()));
        m.attributes.push(LinkAttribute::Controller(master));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }

    /// Brings the link `index` up.
    pub fn set_up(&mut self, index: u32) -> Result<(), Errno> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::NewLink(m), 0).map(drop)
    }

    /// Deletes the link `name`; `Ok(false)` when there was none.
    pub fn delete_link(&mut self, name: &str) -> Result<bool, Errno> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        match self.request(RouteNetlinkMessage::DelLink(m), 0) {
            Ok(_) => Ok(true),
            Err(Errno::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds `addr/prefix` to the link `index` (`EEXIST` when it is there already).
    pub fn add_address(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<(), Errno> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.into()));
        m.attributes.push(AddressAttribute::Address(addr.into()));
        self.request(RouteNetlinkMessage::NewAddress(m), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }

    /// Adds the default route through `gateway`.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> Result<(), Errno> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        self.request(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }
}
