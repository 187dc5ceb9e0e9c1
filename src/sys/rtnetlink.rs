//! Reading tc state and interfaces straight from the kernel over `NETLINK_ROUTE`: an
//! interface's index, its qdiscs, classes and filters, as `tc ... show` lists them.
//!
//! The reason is the abort path: a revert of a tc tree lists it four to six times, and each
//! `tc`/`ip` run costs 2-5 ms of fork, exec and dynamic linking (a third of a second under
//! the stock-kernel lane's emulated CPU) for a dump the kernel answers in microseconds.
//! Changes still go through the `tc` and `ip` tools (the tool runner's timeout, PDEATHSIG
//! and hints); only reads come here. Three dump requests and one attribute (`TCA_KIND`) are
//! all it needs, so it is written against the uapi headers (`linux/rtnetlink.h`,
//! `linux/pkt_sched.h`) rather than through a crate that decodes every qdisc's options.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::netns::{self, Netns};
// The netlink framing the nfnetlink-queue client already has: one copy of it.
use super::nfqueue::{
    NLA_HDRLEN, NLA_TYPE_MASK, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, align4,
    put_attr,
};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_GETQDISC: u16 = 38;
const RTM_GETTCLASS: u16 = 42;
const RTM_GETTFILTER: u16 = 46;

const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;

const IFINFOMSG_LEN: usize = 16;
const TCMSG_LEN: usize = 20;
const IFLA_IFNAME: u16 = 3;
const TCA_KIND: u16 = 1;

/// `TC_H_ROOT`: the parent of a root qdisc.
pub const TC_H_ROOT: u32 = 0xFFFF_FFFF;
/// `TC_H_INGRESS` (= `TC_H_CLSACT`): the parent of an ingress or clsact qdisc.
pub const TC_H_INGRESS: u32 = 0xFFFF_FFF1;

/// A dump the kernel had to restart (it changed while dumping) is asked again, this often.
const DUMP_ATTEMPTS: usize = 3;
/// A kernel that does not answer in this time is an error, never a hang on the abort path.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One qdisc, class or filter as the kernel dumps it (`struct tcmsg` and `TCA_KIND`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcObject {
    pub ifindex: u32,
    pub handle: u32,
    pub parent: u32,
    /// Filters: priority in the upper 16 bits, protocol (network order) in the lower.
    pub info: u32,
    pub kind: String,
}

impl TcObject {
    /// A filter's priority (`pref` in `tc filter show`).
    pub fn priority(&self) -> u32 {
        self.info >> 16
    }
}

/// `tc`'s spelling of a handle or class id: `fa17:`, `fa17:1`, `:1`, `root`.
pub fn tc_handle(handle: u32) -> String {
    let (major, minor) = (handle >> 16, handle & 0xFFFF);
    match handle {
        TC_H_ROOT => "root".into(),
        0 => "0:".into(),
        _ if major == 0 => format!(":{minor:x}"),
        _ if minor == 0 => format!("{major:x}:"),
        _ => format!("{major:x}:{minor:x}"),
    }
}

/// A `NETLINK_ROUTE` socket bound to one network namespace.
pub struct RouteSocket {
    fd: OwnedFd,
    seq: u32,
}

impl RouteSocket {
    /// A socket in namespace `ns` (this process's own when `None`); `NotFound` when the
    /// namespace does not exist.
    pub fn open(ns: Option<&Netns>) -> io::Result<RouteSocket> {
        let fd = match ns {
            None => socket()?,
            // A socket keeps the namespace it was made in, so only its creation needs the
            // thread that entered the namespace.
            Some(name) => netns::run_in(name, socket)??,
        };
        Ok(RouteSocket { fd, seq: 0 })
    }

    /// The index of interface `name`, `None` when there is none.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Ok(None);
        }
        let mut body = vec![0u8; IFINFOMSG_LEN];
        let mut ifname = name.as_bytes().to_vec();
        ifname.push(0);
        put_attr(&mut body, IFLA_IFNAME, &ifname);
        match self.ask(RTM_GETLINK, NLM_F_REQUEST, &body) {
            Ok(replies) => Ok(replies
                .iter()
                .filter(|(kind, _)| *kind == RTM_NEWLINK)
                .find_map(|(_, payload)| read_u32(payload, 4))),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every qdisc on interface `ifindex` that `tc qdisc show dev X` lists.
    pub fn qdiscs(&mut self, ifindex: u32) -> io::Result<Vec<TcObject>> {
        // The kernel dumps the qdiscs of every interface; `tc` filters by index itself.
        let all = self.dump_tc(RTM_GETQDISC, 0, 0)?;
        Ok(all.into_iter().filter(|q| q.ifindex == ifindex).collect())
    }

    /// The classes on interface `ifindex`.
    pub fn classes(&mut self, ifindex: u32) -> io::Result<Vec<TcObject>> {
        self.dump_tc(RTM_GETTCLASS, ifindex, 0)
    }

    /// The filters on interface `ifindex` under the qdisc with handle `parent` (`fa17:` as
    /// `0xfa17_0000`, the ingress qdisc as `0xffff_0000`; 0 for whatever the root is). A
    /// parent that is not there lists none.
    pub fn filters(&mut self, ifindex: u32, parent: u32) -> io::Result<Vec<TcObject>> {
        self.dump_tc(RTM_GETTFILTER, ifindex, parent)
    }

    fn dump_tc(&mut self, request: u16, ifindex: u32, parent: u32) -> io::Result<Vec<TcObject>> {
        let mut body = vec![0u8; TCMSG_LEN];
        body[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        body[12..16].copy_from_slice(&parent.to_ne_bytes());
        for _ in 0..DUMP_ATTEMPTS {
            let mut interrupted = false;
            let mut objects = Vec::new();
            for (kind, payload) in self.ask_flagged(request, NLM_F_REQUEST | NLM_F_DUMP, &body)? {
                match kind {
                    Flagged::Message(kind) if kind == request - 2 => {
                        objects.extend(parse_tcmsg(&payload))
                    }
                    Flagged::Interrupted => interrupted = true,
                    Flagged::Message(_) => {}
                }
            }
            if !interrupted {
                return Ok(objects);
            }
        }
        Err(io::Error::other(
            "the kernel's tc state kept changing while it was listed",
        ))
    }

    fn ask(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
        Ok(self
            .ask_flagged(kind, flags, body)?
            .into_iter()
            .filter_map(|(flagged, payload)| match flagged {
                Flagged::Message(kind) => Some((kind, payload)),
                Flagged::Interrupted => None,
            })
            .collect())
    }

    /// Send one request and collect its replies (up to `NLMSG_DONE` for a dump), each with
    /// its type; an `NLMSG_ERROR` with a non-zero errno becomes that error.
    fn ask_flagged(
        &mut self,
        kind: u16,
        flags: u16,
        body: &[u8],
    ) -> io::Result<Vec<(Flagged, Vec<u8>)>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut message = Vec::with_capacity(NLMSG_HDRLEN + body.len());
        message.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&flags.to_ne_bytes());
        message.extend_from_slice(&seq.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(body);
        // SAFETY: the buffer is valid for its length; a zeroed sockaddr_nl is the kernel.
        let sent = unsafe {
            let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
            kernel.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: the buffer is valid for its length.
            let got = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if got < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the kernel did not answer a netlink request within 5s",
                    ));
                }
                return Err(e);
            }
            let mut rest = &buffer[..got as usize];
            while rest.len() >= NLMSG_HDRLEN {
                let len = read_u32(rest, 0).unwrap_or(0) as usize;
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(io::Error::other("a malformed netlink reply"));
                }
                let reply_kind = u16::from_ne_bytes([rest[4], rest[5]]);
                let reply_flags = u16::from_ne_bytes([rest[6], rest[7]]);
                let reply_seq = read_u32(rest, 8).unwrap_or(0);
                let payload = &rest[NLMSG_HDRLEN..len];
                rest = &rest[align4(len).min(rest.len())..];
                if reply_seq != seq {
                    continue; // a late answer to an earlier request
                }
                if reply_flags & NLM_F_DUMP_INTR != 0 {
                    replies.push((Flagged::Interrupted, Vec::new()));
                }
                match reply_kind {
                    NLMSG_DONE => {
                        // A dump that failed part-way says so here, not with NLMSG_ERROR:
                        // what came before it is not the whole list.
                        let errno = read_u32(payload, 0).unwrap_or(0) as i32;
                        if errno < 0 {
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                        return Ok(replies);
                    }
                    NLMSG_ERROR => {
                        let errno = read_u32(payload, 0).unwrap_or(0) as i32;
                        if errno != 0 {
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                        return Ok(replies);
                    }
                    other => {
                        replies.push((Flagged::Message(other), payload.to_vec()));
                        if !dump {
                            return Ok(replies);
                        }
                    }
                }
            }
        }
    }
}

enum Flagged {
    Message(u16),
    /// The dump was interrupted by a change and must be asked again.
    Interrupted,
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: RECEIVE_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: `timeout` is a valid timeval for the length given.
    let set = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn parse_tcmsg(payload: &[u8]) -> Option<TcObject> {
    if payload.len() < TCMSG_LEN {
        return None;
    }
    let mut kind = String::new();
    let mut attrs = &payload[TCMSG_LEN..];
    while attrs.len() >= NLA_HDRLEN {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let attr_kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > attrs.len() {
            break;
        }
        if attr_kind == TCA_KIND {
            let value = &attrs[NLA_HDRLEN..len];
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            kind = String::from_utf8_lossy(&value[..end]).into_owned();
        }
        attrs = &attrs[align4(len).min(attrs.len())..];
    }
    Some(TcObject {
        ifindex: read_u32(payload, 4)?,
        handle: read_u32(payload, 8)?,
        parent: read_u32(payload, 12)?,
        info: read_u32(payload, 16)?,
        kind,
    })
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_spelt_as_tc_spells_them() {
        assert_eq!(tc_handle(TC_H_ROOT), "root");
        assert_eq!(tc_handle(0), "0:");
        assert_eq!(tc_handle(0xfa17_0000), "fa17:");
        assert_eq!(tc_handle(0xfa17_0001), "fa17:1");
        assert_eq!(tc_handle(0x0000_0001), ":1");
        assert_eq!(tc_handle(TC_H_INGRESS), "ffff:fff1");
    }

    #[test]
    fn a_tcmsg_with_its_kind_is_read_and_a_truncated_one_is_not() {
        let mut payload = vec![0u8; TCMSG_LEN];
        payload[4..8].copy_from_slice(&7u32.to_ne_bytes());
        payload[8..12].copy_from_slice(&0xfa17_0000u32.to_ne_bytes());
        payload[12..16].copy_from_slice(&TC_H_ROOT.to_ne_bytes());
        payload[16..20].copy_from_slice(&(5479u32 << 16 | 8).to_ne_bytes());
        put_attr(&mut payload, TCA_KIND, b"htb\0");
        let object = parse_tcmsg(&payload).expect("parsed");
        assert_eq!(
            object,
            TcObject {
                ifindex: 7,
                handle: 0xfa17_0000,
                parent: TC_H_ROOT,
                info: 5479 << 16 | 8,
                kind: "htb".into()
            }
        );
        assert_eq!(object.priority(), 5479);
        assert_eq!(parse_tcmsg(&payload[..TCMSG_LEN - 1]), None);
    }

    /// Against the kernel: what `tc` lists, this lists (the loopback interface, always
    /// there, in a namespace of the test's own).
    #[test]
    fn lists_what_tc_lists_in_a_namespace() {
        let net = netns::TestNet::new().expect("test namespaces");
        let ns = net.a.as_str();
        let mut socket =
            RouteSocket::open(Some(&Netns::from(ns))).expect("socket in the namespace");
        let dev = net.veth_a.as_str();
        let index = socket.link_index(dev).expect("asked").expect("present");
        assert_eq!(socket.link_index("nosuchdev0").expect("asked"), None);
        let tc = |args: &[&str]| {
            let status = netns::command_in(ns, &[&["tc"], args].concat())
                .status()
                .expect("tc runs");
            assert!(status.success(), "tc {args:?}");
        };
        tc(&["qdisc", "add", "dev", dev, "root", "handle", "fa17:", "htb"]);
        tc(&[
            "class", "add", "dev", dev, "parent", "fa17:", "classid", "fa17:3", "htb", "rate",
            "1mbit",
        ]);
        tc(&[
            "filter", "add", "dev", dev, "parent", "fa17:", "protocol", "ip", "prio", "42", "u32",
            "match", "u32", "0", "0", "flowid", "fa17:3",
        ]);
        tc(&["qdisc", "add", "dev", dev, "handle", "ffff:", "ingress"]);
        let qdiscs = socket.qdiscs(index).expect("qdiscs");
        let seen: Vec<(String, String, String)> = qdiscs
            .iter()
            .map(|q| (q.kind.clone(), tc_handle(q.handle), tc_handle(q.parent)))
            .collect();
        assert!(
            seen.contains(&("htb".into(), "fa17:".into(), "root".into())),
            "{seen:?}"
        );
        assert!(
            seen.contains(&("ingress".into(), "ffff:".into(), "ffff:fff1".into())),
            "{seen:?}"
        );
        let classes = socket.classes(index).expect("classes");
        assert_eq!(
            classes
                .iter()
                .map(|c| tc_handle(c.handle))
                .collect::<Vec<_>>(),
            ["fa17:3"]
        );
        let filters = socket.filters(index, 0xfa17_0000).expect("filters");
        assert!(!filters.is_empty() && filters.iter().all(|f| f.priority() == 42));
        assert!(
            socket
                .filters(index, 0xffff_0000)
                .expect("ingress filters")
                .is_empty()
        );
        tc(&["qdisc", "del", "dev", dev, "root"]);
        tc(&["qdisc", "del", "dev", dev, "ingress"]);
        assert!(socket.classes(index).expect("classes").is_empty());
        assert!(
            socket
                .qdiscs(index)
                .expect("qdiscs")
                .iter()
                .all(|q| q.kind != "htb" && q.kind != "ingress")
        );
    }
}
