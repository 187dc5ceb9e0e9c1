//! A small nfnetlink-queue client over a raw `AF_NETLINK`/`NETLINK_NETFILTER` socket.
//!
//! It does only what the delayer needs: bind one queue, ask for packet metadata (never the
//! payload), receive packet ids, and send verdicts, packing many verdicts into one `sendto`.
//! The socket is non-blocking and its fd is exposed so callers can `poll` it.
//!
//! Wire format reference: `include/uapi/linux/netfilter/nfnetlink_queue.h` and
//! `net/netfilter/nfnetlink_queue.c`. Every nfnetlink message is a `nlmsghdr`, a `nfgenmsg`
//! (family, version, big-endian resource id = queue number) and netlink attributes whose
//! payloads are big-endian.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;

const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;

const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
const NLA_TYPE_MASK: u16 = !((1 << 15) | (1 << 14));

const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;

const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_CFG_CMD_UNBIND: u8 = 2;

const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_TIMESTAMP: u16 = 4;
const NFQA_CAP_LEN: u16 = 13;

/// Accept packets the queue has no room for instead of dropping them: a delayer that cannot
/// keep up degrades to "no delay", never to loss the experiment did not ask for.
pub const NFQA_CFG_F_FAIL_OPEN: u32 = 0x01;
/// Hand us GSO super-packets whole instead of making the kernel segment them.
pub const NFQA_CFG_F_GSO: u32 = 0x04;

/// How much of each packet the kernel copies to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CopyMode {
    None = 0,
    /// Metadata only (id, hook, length): all a delayer needs.
    Meta = 1,
    Packet = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Verdict {
    Drop = 0,
    Accept = 1,
}

#[derive(Debug, thiserror::Error)]
pub enum NfqError {
    #[error(
        "NFQUEUE queue {0} is in use by another program (see /proc/net/netfilter/nfnetlink_queue); \
         pick another queue number or stop that program"
    )]
    QueueInUse(u16),
    #[error(
        "nfnetlink_queue {op} on queue {queue} was refused (EPERM): it needs CAP_NET_ADMIN; run faultline as root"
    )]
    PermissionDenied { op: &'static str, queue: u16 },
    #[error("nfnetlink_queue {op} on queue {queue} failed: {source}")]
    Io {
        op: &'static str,
        queue: u16,
        #[source]
        source: io::Error,
    },
    #[error("nfnetlink_queue {op} on queue {queue}: the kernel did not answer within {timeout:?}")]
    NoReply {
        op: &'static str,
        queue: u16,
        timeout: Duration,
    },
}

/// What the kernel told us about one queued packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketMeta {
    /// Per-queue id, increasing in enqueue order (wraps at 2^32).
    pub id: u32,
    /// The ethertype (0x0800 IPv4, 0x86dd IPv6), host byte order.
    pub hw_protocol: u16,
    /// Netfilter hook (0 PREROUTING, 1 INPUT, 2 FORWARD, 3 OUTPUT, 4 POSTROUTING).
    pub hook: u8,
    /// Full packet length (`NFQA_CAP_LEN`), present because we copy no payload.
    pub len: Option<u32>,
    /// The skb's timestamp (`NFQA_TIMESTAMP`, µs resolution) when it has one: for received
    /// packets the wall-clock arrival time, set while any socket asked for RX timestamps.
    /// Other timestamp kinds (e.g. TCP's monotonic departure time) come through the same
    /// attribute, so callers must check plausibility.
    pub timestamp: Option<Duration>,
}

/// One message read from the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    Packet(PacketMeta),
    /// An `NLMSG_ERROR`: `errno == 0` is an acknowledgement. Verdicts are sent without
    /// `NLM_F_ACK`, so for them only failures come back.
    Ack {
        seq: u32,
        errno: i32,
    },
    /// The kernel could not deliver some messages (ENOBUFS). With FAIL_OPEN those packets
    /// were accepted undelayed; they are not waiting in the queue.
    Overrun,
}

/// A bound (or not yet bound) nfnetlink-queue socket.
pub struct NfQueue {
    fd: OwnedFd,
    queue: u16,
    bound: bool,
    seq: u32,
    pending: VecDeque<Message>,
    recv_buf: Vec<u8>,
    /// Verdicts waiting for `flush`: many nlmsgs in one datagram, one syscall.
    out: Vec<u8>,
}

/// Reply timeout for configuration requests.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Flush queued verdicts once they fill this much (the kernel accepts far larger datagrams;
/// this just bounds the latency of the first verdict in a large release).
const OUT_FLUSH_BYTES: usize = 32 * 1024;
/// The receive buffer we ask for: at ~150 bytes per metadata message, room for ~400k packets
/// arriving while the thread is busy.
const RCVBUF_BYTES: libc::c_int = 64 << 20;

impl NfQueue {
    /// Open the socket and bind `queue` (metadata copy, FAIL_OPEN, GSO, `maxlen`).
    pub fn bind(queue: u16, maxlen: u32) -> Result<NfQueue, NfqError> {
        let mut q = NfQueue::open(queue).map_err(|source| NfqError::Io {
            op: "socket",
            queue,
            source,
        })?;
        q.request("bind", |seq, queue| {
            encode_config_cmd(seq, queue, NFQNL_CFG_CMD_BIND)
        })
        .map_err(|e| match e {
            // The kernel answers EPERM when another socket owns the queue (EBUSY only when
            // this socket bound it already), and EPERM without CAP_NET_ADMIN too: the table
            // tells the two apart.
            NfqError::PermissionDenied { .. }
                if read_queue_table().is_ok_and(|t| t.iter().any(|r| r.queue == queue)) =>
            {
                NfqError::QueueInUse(queue)
            }
            NfqError::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
                NfqError::QueueInUse(queue)
            }
            other => other,
        })?;
        q.bound = true;
        q.request("copy-mode", |seq, queue| {
            encode_config_params(seq, queue, CopyMode::Meta, 0)
        })?;
        q.set_maxlen(maxlen)?;
        let flags = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO;
        q.request("flags", |seq, queue| {
            encode_config_flags(seq, queue, flags, flags)
        })?;
        Ok(q)
    }

    fn open(queue: u16) -> io::Result<NfQueue> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SO_RCVBUFFORCE ignores rmem_max but needs CAP_NET_ADMIN; SO_RCVBUF is capped by
        // rmem_max. Either way a bigger buffer only means fewer ENOBUFS, so failure is fine.
        if setsockopt_int(raw, libc::SO_RCVBUFFORCE, RCVBUF_BYTES).is_err() {
            let _ = setsockopt_int(raw, libc::SO_RCVBUF, RCVBUF_BYTES);
        }
        // SAFETY: zeroed sockaddr_nl is valid; nl_pid 0 lets the kernel pick our port id.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                raw,
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NfQueue {
            fd,
            queue,
            bound: false,
            seq: 0,
            pending: VecDeque::new(),
            recv_buf: vec![0; 64 * 1024],
            out: Vec::with_capacity(OUT_FLUSH_BYTES + 64),
        })
    }

    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// The longest the kernel queue may grow; beyond it packets pass undelayed (FAIL_OPEN).
    /// `0` makes every new packet pass straight through, which `stop` uses to drain.
    pub fn set_maxlen(&mut self, maxlen: u32) -> Result<(), NfqError> {
        self.request("queue-maxlen", |seq, queue| {
            encode_config_maxlen(seq, queue, maxlen)
        })
    }

    /// Next message, or `None` when the socket has nothing more right now.
    pub fn recv(&mut self) -> io::Result<Option<Message>> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Ok(Some(m));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Read one datagram into `pending`. `false` when there was nothing to read.
    fn fill(&mut self) -> io::Result<bool> {
        // SAFETY: recv into our own buffer of the stated length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.recv_buf.as_mut_ptr().cast(),
                self.recv_buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(false),
                Some(libc::EINTR) => Ok(true),
                Some(libc::ENOBUFS) => {
                    self.pending.push_back(Message::Overrun);
                    Ok(true)
                }
                _ => Err(e),
            };
        }
        self.pending
            .extend(parse_messages(&self.recv_buf[..n as usize]));
        Ok(true)
    }

    /// Queue a verdict for one packet; sent by `flush` (or when the buffer fills).
    pub fn verdict(&mut self, id: u32, verdict: Verdict) -> io::Result<()> {
        let seq = self.next_seq();
        encode_verdict_into(&mut self.out, seq, self.queue, id, verdict, false);
        self.flush_if_full()
    }

    /// Queue one verdict for *every* packet in the kernel queue with an id up to `max_id`
    /// (in enqueue order). Only correct when the caller holds no earlier packet it still
    /// wants to keep.
    pub fn verdict_batch(&mut self, max_id: u32, verdict: Verdict) -> io::Result<()> {
        let seq = self.next_seq();
        encode_verdict_into(&mut self.out, seq, self.queue, max_id, verdict, true);
        self.flush_if_full()
    }

    fn flush_if_full(&mut self) -> io::Result<()> {
        if self.out.len() >= OUT_FLUSH_BYTES {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Send every queued verdict.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = self.send(&self.out);
        self.out.clear();
        result
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: a zeroed sockaddr_nl (pid 0) addresses the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            // SAFETY: bytes and kernel are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    &kernel as *const libc::sockaddr_nl as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            // The kernel processes netlink sends synchronously; transient memory pressure
            // is the only reason to retry, and only briefly.
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN | libc::ENOBUFS) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(100));
                }
                _ => return Err(e),
            }
        }
    }

    /// Send a configuration message with `NLM_F_ACK` and wait for its answer. Packet
    /// messages that arrive meanwhile are kept for `recv`.
    fn request(
        &mut self,
        op: &'static str,
        build: impl FnOnce(u32, u16) -> Vec<u8>,
    ) -> Result<(), NfqError> {
        let queue = self.queue;
        let io_err = |source| NfqError::Io { op, queue, source };
        let seq = self.next_seq();
        self.send(&build(seq, queue)).map_err(io_err)?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut kept = VecDeque::new();
        let result = loop {
            match self.recv() {
                Ok(Some(Message::Ack { seq: s, errno })) if s == seq => {
                    break match errno {
                        0 => Ok(()),
                        libc::EPERM => Err(NfqError::PermissionDenied { op, queue }),
                        e => Err(io_err(io::Error::from_raw_os_error(e))),
                    };
                }
                Ok(Some(other)) => kept.push_back(other),
                Ok(None) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break Err(NfqError::NoReply {
                            op,
                            queue,
                            timeout: REPLY_TIMEOUT,
                        });
                    }
                    if let Err(e) = poll_readable(self.fd.as_raw_fd(), left) {
                        break Err(io_err(e));
                    }
                }
                Err(e) => break Err(io_err(e)),
            }
        };
        kept.append(&mut self.pending);
        self.pending = kept;
        result
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Unbind the queue. The kernel DROPS whatever is still queued at unbind, so callers
    /// accept everything first (see the delayer's shutdown).
    pub fn unbind(&mut self) -> Result<(), NfqError> {
        if !self.bound {
            return Ok(());
        }
        self.bound = false;
        let _ = self.flush();
        self.request("unbind", |seq, queue| {
            encode_config_cmd(seq, queue, NFQNL_CFG_CMD_UNBIND)
        })
    }
}

impl Drop for NfQueue {
    fn drop(&mut self) {
        // Closing the socket unbinds too; an explicit unbind just makes it synchronous.
        let _ = self.unbind();
    }
}

impl AsRawFd for NfQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for NfQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn setsockopt_int(fd: RawFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: value is a c_int and we pass its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn poll_readable(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    Ok(())
}

// ---- the kernel's queue table ----------------------------------------------------------

/// `/proc/net` follows the *process's* namespace; `thread-self` follows the thread's, which
/// is the one a setns'd thread is in.
pub const QUEUE_TABLE_THREAD: &str = "/proc/thread-self/net/netfilter/nfnetlink_queue";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueRow {
    pub queue: u16,
    /// Packets dropped because the queue was full (not counted with FAIL_OPEN, which passes them).
    pub queue_dropped: u64,
    /// Packets the kernel could not hand to the socket (without FAIL_OPEN).
    pub user_dropped: u64,
}

/// The queues bound in the calling *thread's* network namespace.
pub fn read_queue_table() -> io::Result<Vec<QueueRow>> {
    match std::fs::read_to_string(QUEUE_TABLE_THREAD) {
        Ok(text) => Ok(parse_queue_table(&text)),
        // Absent until nfnetlink_queue is loaded: nothing is bound then.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Re-read a table file opened earlier (possibly in another namespace) from its start.
pub fn read_queue_table_from(file: &std::fs::File) -> io::Result<Vec<QueueRow>> {
    use std::os::unix::fs::FileExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = file.read_at(&mut buf, out.len() as u64)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(parse_queue_table(&String::from_utf8_lossy(&out)))
}

/// Rows: `queue portid queue_total copy_mode copy_range queue_dropped user_dropped id_seq 1`.
pub fn parse_queue_table(text: &str) -> Vec<QueueRow> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(QueueRow {
                queue: f.first()?.parse().ok()?,
                queue_dropped: f.get(5)?.parse().ok()?,
                user_dropped: f.get(6)?.parse().ok()?,
            })
        })
        .collect()
}

// ---- encoding ----------------------------------------------------------------------------

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Start an nfnetlink message in `out`; returns its offset for `finish_msg`.
fn begin_msg(out: &mut Vec<u8>, msg_type: u16, flags: u16, seq: u32, queue: u16) -> usize {
    let start = out.len();
    out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched by finish_msg
    out.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | msg_type).to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, queue number big-endian.
    out.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    out.extend_from_slice(&queue.to_be_bytes());
    start
}

fn put_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    out.extend_from_slice(&((NLA_HDRLEN + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align4(out.len()), 0);
}

fn finish_msg(out: &mut [u8], start: usize) {
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn config_msg(seq: u32, queue: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let start = begin_msg(
        &mut out,
        NFQNL_MSG_CONFIG,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        queue,
    );
    for (kind, payload) in attrs {
        put_attr(&mut out, *kind, payload);
    }
    finish_msg(&mut out, start);
    out
}

fn encode_config_cmd(seq: u32, queue: u16, command: u8) -> Vec<u8> {
    // struct nfqnl_msg_config_cmd { u8 command; u8 _pad; __be16 pf; }: pf is unused since 3.8.
    config_msg(seq, queue, &[(NFQA_CFG_CMD, &[command, 0, 0, 0])])
}

fn encode_config_params(seq: u32, queue: u16, mode: CopyMode, copy_range: u32) -> Vec<u8> {
    // struct nfqnl_msg_config_params { __be32 copy_range; u8 copy_mode; } __packed
    let mut params = copy_range.to_be_bytes().to_vec();
    params.push(mode as u8);
    config_msg(seq, queue, &[(NFQA_CFG_PARAMS, &params)])
}

fn encode_config_maxlen(seq: u32, queue: u16, maxlen: u32) -> Vec<u8> {
    config_msg(
        seq,
        queue,
        &[(NFQA_CFG_QUEUE_MAXLEN, &maxlen.to_be_bytes())],
    )
}

fn encode_config_flags(seq: u32, queue: u16, mask: u32, flags: u32) -> Vec<u8> {
    config_msg(
        seq,
        queue,
        &[
            (NFQA_CFG_MASK, &mask.to_be_bytes()),
            (NFQA_CFG_FLAGS, &flags.to_be_bytes()),
        ],
    )
}

fn encode_verdict_into(
    out: &mut Vec<u8>,
    seq: u32,
    queue: u16,
    id: u32,
    verdict: Verdict,
    batch: bool,
) {
    let kind = if batch {
        NFQNL_MSG_VERDICT_BATCH
    } else {
        NFQNL_MSG_VERDICT
    };
    let start = begin_msg(out, kind, NLM_F_REQUEST, seq, queue);
    // struct nfqnl_msg_verdict_hdr { __be32 verdict; __be32 id; }
    let mut hdr = [0u8; 8];
    hdr[..4].copy_from_slice(&(verdict as u32).to_be_bytes());
    hdr[4..].copy_from_slice(&id.to_be_bytes());
    put_attr(out, NFQA_VERDICT_HDR, &hdr);
    finish_msg(out, start);
}

// ---- parsing -----------------------------------------------------------------------------

/// Every message in one datagram. Malformed or unknown messages are skipped: the kernel is
/// the only sender, and a message we cannot read is one we need not act on.
pub fn parse_messages(mut buf: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes(buf[4..6].try_into().unwrap());
        let seq = u32::from_ne_bytes(buf[8..12].try_into().unwrap());
        let body = &buf[NLMSG_HDRLEN..len];
        match kind {
            NLMSG_ERROR if body.len() >= 4 => {
                let err = i32::from_ne_bytes(body[0..4].try_into().unwrap());
                out.push(Message::Ack { seq, errno: -err });
            }
            NLMSG_OVERRUN => out.push(Message::Overrun),
            NLMSG_NOOP | NLMSG_DONE => {}
            k if k == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET => {
                if let Some(p) = parse_packet(body) {
                    out.push(Message::Packet(p));
                }
            }
            _ => {}
        }
        buf = &buf[align4(len).min(buf.len())..];
    }
    out
}

fn parse_packet(body: &[u8]) -> Option<PacketMeta> {
    let mut attrs = body.get(NFGENMSG_LEN..)?;
    let mut meta: Option<PacketMeta> = None;
    let mut len = None;
    let mut timestamp = None;
    while attrs.len() >= NLA_HDRLEN {
        let nla_len = u16::from_ne_bytes(attrs[0..2].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(attrs[2..4].try_into().unwrap()) & NLA_TYPE_MASK;
        if nla_len < NLA_HDRLEN || nla_len > attrs.len() {
            break;
        }
        let payload = &attrs[NLA_HDRLEN..nla_len];
        match kind {
            // struct nfqnl_msg_packet_hdr { __be32 packet_id; __be16 hw_protocol; u8 hook; } __packed
            NFQA_PACKET_HDR if payload.len() >= 7 => {
                meta = Some(PacketMeta {
                    id: u32::from_be_bytes(payload[0..4].try_into().unwrap()),
                    hw_protocol: u16::from_be_bytes(payload[4..6].try_into().unwrap()),
                    hook: payload[6],
                    len: None,
                    timestamp: None,
                });
            }
            // struct nfqnl_msg_packet_timestamp { __be64 sec; __be64 usec; }
            NFQA_TIMESTAMP if payload.len() >= 16 => {
                let sec = u64::from_be_bytes(payload[0..8].try_into().unwrap());
                let usec = u64::from_be_bytes(payload[8..16].try_into().unwrap());
                timestamp = Some(Duration::from_secs(sec) + Duration::from_micros(usec));
            }
            NFQA_CAP_LEN if payload.len() >= 4 => {
                len = Some(u32::from_be_bytes(payload[0..4].try_into().unwrap()));
            }
            _ => {}
        }
        attrs = &attrs[align4(nla_len).min(attrs.len())..];
    }
    meta.map(|m| PacketMeta {
        len,
        timestamp,
        ..m
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ne16(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
    }
    fn ne32(v: u32) -> [u8; 4] {
        v.to_ne_bytes()
    }

    /// The bytes libnetfilter_queue would send for `nfq_create_queue(h, 7, ...)`, built by hand.
    #[test]
    fn bind_command_matches_the_kernel_layout() {
        let msg = encode_config_cmd(42, 7, NFQNL_CFG_CMD_BIND);
        let mut expected = Vec::new();
        expected.extend_from_slice(&ne32(28)); // 16 hdr + 4 nfgenmsg + 8 attr
        expected.extend_from_slice(&ne16(0x0302)); // subsys queue, msg config
        expected.extend_from_slice(&ne16(NLM_F_REQUEST | NLM_F_ACK));
        expected.extend_from_slice(&ne32(42));
        expected.extend_from_slice(&ne32(0));
        expected.extend_from_slice(&[0, 0, 0, 7]); // AF_UNSPEC, v0, queue 7 big-endian
        expected.extend_from_slice(&ne16(8));
        expected.extend_from_slice(&ne16(NFQA_CFG_CMD));
        expected.extend_from_slice(&[1, 0, 0, 0]);
        assert_eq!(msg, expected);
    }

    #[test]
    fn copy_params_are_packed_five_bytes_padded_to_eight() {
        let msg = encode_config_params(1, 0x4601, CopyMode::Meta, 0);
        assert_eq!(msg.len(), 16 + 4 + 12);
        assert_eq!(&msg[0..4], &ne32(32));
        assert_eq!(&msg[18..20], &[0x46, 0x01]);
        assert_eq!(&msg[20..22], &ne16(9)); // nla_len counts the unpadded payload
        assert_eq!(&msg[22..24], &ne16(NFQA_CFG_PARAMS));
        assert_eq!(&msg[24..32], &[0, 0, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn flags_message_carries_mask_then_flags_big_endian() {
        let msg = encode_config_flags(3, 1, 0x05, 0x05);
        assert_eq!(msg.len(), 16 + 4 + 8 + 8);
        assert_eq!(
            &msg[20..24],
            &[&ne16(8)[..], &ne16(NFQA_CFG_MASK)[..]].concat()[..]
        );
        assert_eq!(&msg[24..28], &[0, 0, 0, 5]);
        assert_eq!(&msg[30..32], &ne16(NFQA_CFG_FLAGS));
        assert_eq!(&msg[32..36], &[0, 0, 0, 5]);
        let maxlen = encode_config_maxlen(4, 1, 65536);
        assert_eq!(&maxlen[24..28], &[0, 1, 0, 0]);
    }

    #[test]
    fn verdicts_pack_back_to_back_and_batch_uses_its_own_type() {
        let mut out = Vec::new();
        encode_verdict_into(&mut out, 9, 2, 0x01020304, Verdict::Accept, false);
        encode_verdict_into(&mut out, 10, 2, 77, Verdict::Accept, true);
        assert_eq!(out.len(), 64);
        assert_eq!(&out[0..4], &ne32(32));
        assert_eq!(&out[4..6], &ne16(0x0301));
        assert_eq!(&out[6..8], &ne16(NLM_F_REQUEST));
        assert_eq!(&out[22..24], &ne16(NFQA_VERDICT_HDR));
        assert_eq!(&out[24..32], &[0, 0, 0, 1, 1, 2, 3, 4]);
        assert_eq!(&out[36..38], &ne16(0x0303));
        assert_eq!(&out[56..64], &[0, 0, 0, 1, 0, 0, 0, 77]);
    }

    /// A packet message as the kernel sends it in META mode, with attributes we ignore
    /// (a nested one with the NLA_F_NESTED bit) around the two we read.
    fn packet_fixture(id: u32, cap_len: u32) -> Vec<u8> {
        let mut body = vec![libc::AF_INET as u8, 0, 0x46, 0x00];
        let attr = |body: &mut Vec<u8>, kind: u16, payload: &[u8]| {
            body.extend_from_slice(&ne16((4 + payload.len()) as u16));
            body.extend_from_slice(&ne16(kind));
            body.extend_from_slice(payload);
            body.resize(align4(body.len()), 0);
        };
        let mut hdr = id.to_be_bytes().to_vec();
        hdr.extend_from_slice(&[0x08, 0x00, 1]);
        attr(&mut body, NFQA_PACKET_HDR, &hdr);
        attr(&mut body, 3, &7u32.to_be_bytes()); // NFQA_MARK
        if id == 5 {
            let mut ts = 1_700_000_000u64.to_be_bytes().to_vec();
            ts.extend_from_slice(&123_456u64.to_be_bytes());
            attr(&mut body, NFQA_TIMESTAMP, &ts);
        }
        attr(&mut body, 11 | (1 << 15), &[0; 8]); // NFQA_CT, nested
        attr(&mut body, NFQA_CAP_LEN, &cap_len.to_be_bytes());
        let mut msg = Vec::new();
        msg.extend_from_slice(&ne32((16 + body.len()) as u32));
        msg.extend_from_slice(&ne16(0x0300));
        msg.extend_from_slice(&ne16(0));
        msg.extend_from_slice(&ne32(0));
        msg.extend_from_slice(&ne32(0));
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn parses_packets_acks_and_errors_from_one_datagram() {
        let mut dgram = packet_fixture(5, 60);
        dgram.extend(packet_fixture(0xfffffffe, 65226));
        // NLMSG_ERROR with error 0 (an ack) for seq 12, then EBUSY for seq 13.
        for (seq, err) in [(12u32, 0i32), (13, -libc::EBUSY)] {
            dgram.extend_from_slice(&ne32(36));
            dgram.extend_from_slice(&ne16(NLMSG_ERROR));
            dgram.extend_from_slice(&ne16(0));
            dgram.extend_from_slice(&ne32(seq));
            dgram.extend_from_slice(&ne32(0));
            dgram.extend_from_slice(&err.to_ne_bytes());
            dgram.extend_from_slice(&[0; 16]); // the echoed request header
        }
        let msgs = parse_messages(&dgram);
        assert_eq!(
            msgs,
            vec![
                Message::Packet(PacketMeta {
                    id: 5,
                    hw_protocol: 0x0800,
                    hook: 1,
                    len: Some(60),
                    timestamp: Some(Duration::new(1_700_000_000, 123_456_000)),
                }),
                Message::Packet(PacketMeta {
                    id: 0xfffffffe,
                    hw_protocol: 0x0800,
                    hook: 1,
                    len: Some(65226),
                    timestamp: None,
                }),
                Message::Ack { seq: 12, errno: 0 },
                Message::Ack {
                    seq: 13,
                    errno: libc::EBUSY
                },
            ]
        );
    }

    #[test]
    fn truncated_or_bogus_input_yields_what_is_whole_and_never_panics() {
        let whole = packet_fixture(1, 40);
        let mut dgram = whole.clone();
        dgram.extend_from_slice(&packet_fixture(2, 40)[..20]);
        assert_eq!(parse_messages(&dgram).len(), 1);
        for cut in 0..whole.len() {
            let _ = parse_messages(&whole[..cut]);
        }
        // An nlmsg_len shorter than a header stops parsing instead of looping.
        let mut bogus = whole.clone();
        bogus[0..4].copy_from_slice(&ne32(3));
        assert!(parse_messages(&bogus).is_empty());
        // A packet message without NFQA_PACKET_HDR is not a packet we can give a verdict on.
        let mut no_hdr = whole;
        no_hdr[22..24].copy_from_slice(&ne16(99));
        assert!(parse_messages(&no_hdr).is_empty());
    }
}
