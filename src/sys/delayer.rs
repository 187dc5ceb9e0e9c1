//! The NFQUEUE delay engine: a dedicated thread holds each queued packet until its due time,
//! then ACCEPTs it. Used where the kernel has no `sch_netem`.
//!
//! Safety model: the iptables rule that feeds the queue always carries `--queue-bypass`, and
//! the queue is configured FAIL_OPEN, so a dead or overloaded delayer means "less delay", never
//! a blackhole. `stop` accepts every held packet at once.
//!
//! Ordering: packets leave in due-time order (FIFO among equal due times). With jitter that
//! reorders packets exactly as netem's tfifo does; correlation makes consecutive delays close
//! and so reduces reordering. Without jitter the order is always kept.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::netns::Netns;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::nfqueue::{
    Message, NfQueue, NfqError, PacketMeta, QUEUE_TABLE_THREAD, QueueRow, Verdict,
    read_queue_table, read_queue_table_from,
};

/// Queue numbers faultline picks from ("F" = 0x46), so its queues are recognisable.
pub const QUEUE_RANGE: std::ops::Range<u16> = 0x4600..0x4700;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    /// delay ± jitter, flat: standard deviation jitter/√3.
    Uniform,
    /// Gaussian with standard deviation `jitter` (netem's `distribution normal`), cut at 0.
    Normal,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DelaySpec {
    pub delay: Duration,
    pub jitter: Duration,
    pub distribution: Distribution,
    /// 0..=1, netem-like: next random = corr × last + (1 − corr) × fresh random.
    pub correlation: f64,
}

/// Knobs that are not part of the experiment: they change how well the delay is achieved,
/// not what is asked for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tuning {
    /// Wake this long before a due time and busy-wait the rest, to hide the idle-vCPU wake-up
    /// cost (~150-200 µs here). Zero = always sleep.
    pub spin: Duration,
    /// Try SCHED_FIFO (then nice −20) for the delayer thread.
    pub realtime: bool,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            spin: Duration::from_micros(200),
            realtime: true,
        }
    }
}

/// The scheduling the delayer thread obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy")]
pub enum Scheduling {
    Fifo { priority: i32 },
    Nice { nice: i32 },
    Normal,
}

/// Achieved timing, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DelayStats {
    pub queue: u16,
    pub queue_maxlen: u32,
    /// Packets the kernel handed us.
    pub packets_seen: u64,
    /// Packets accepted at or after their due time.
    pub packets_released: u64,
    /// Packets accepted early because the delayer stopped.
    pub packets_released_at_stop: u64,
    /// Packets accepted a little before their due time (at most half a release cycle, about
    /// 0.1-0.15 ms): above 16k pps each release goes to the nearest 200 µs release cycle.
    /// They count as 0 in `lateness_ms`; `delay_ms` holds their true delay.
    #[serde(default)]
    pub packets_released_early: u64,
    pub packets_held: u64,
    pub max_held: u64,
    /// Kernel counters from /proc/net/netfilter/nfnetlink_queue (None once unbound or when
    /// unreadable). Packets passed undelayed by FAIL_OPEN are counted by neither: compare the
    /// iptables rule's packet counter with `packets_seen` to find them.
    pub kernel_queue_dropped: Option<u64>,
    pub kernel_user_dropped: Option<u64>,
    /// Times the socket reported ENOBUFS (the kernel could not hand us some packets; with
    /// FAIL_OPEN they passed undelayed).
    pub enobufs: u64,
    /// Verdicts the kernel refused (e.g. unknown packet id).
    pub verdict_errors: u64,
    /// Packets whose delay ran from a kernel stamp (when the packet entered the queue, from
    /// our socket filter, else its arrival stamp) rather than from when this thread read
    /// them, which is later by the thread's wake-up time.
    pub packets_kernel_stamped: u64,
    /// From receipt to verdict.
    pub delay_ms: LatencySummary,
    /// Verdict time minus due time.
    pub lateness_ms: LatencySummary,
    pub scheduling: Scheduling,
    pub spin_us: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DelayerError {
    #[error("invalid delay: {0}")]
    InvalidSpec(String),
    #[error("cannot enter network namespace {name} ({location}): {source}")]
    Namespace {
        name: String,
        location: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Queue(#[from] NfqError),
    #[error("could not start the delayer thread for NFQUEUE queue {queue}: {source}")]
    Thread {
        queue: u16,
        #[source]
        source: io::Error,
    },
}

impl DelayerError {
    pub fn cause(&self) -> super::Cause {
        use super::Cause;
        match self {
            DelayerError::InvalidSpec(_) => Cause::Unsupported,
            DelayerError::Namespace { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                Cause::Gone
            }
            DelayerError::Namespace { .. } | DelayerError::Thread { .. } => Cause::Failed,
            DelayerError::Queue(NfqError::PermissionDenied { .. }) => Cause::Permission,
            DelayerError::Queue(_) => Cause::Failed,
        }
    }
}

// ---- public API ---------------------------------------------------------------------------

/// A queue number in [`QUEUE_RANGE`] that no socket in `netns` has bound (a running delayer
/// has bound its own). Successive calls return different numbers, so two faults planned back
/// to back do not pick the same one before either binds it.
pub fn free_queue_number(netns: Option<&Netns>) -> io::Result<u16> {
    let table = match netns {
        None => read_queue_table(),
        Some(name) => super::netns::run_in(name, read_queue_table)?,
    }?;
    let bound: Vec<u16> = table.iter().map(|row| row.queue).collect();
    static CURSOR: AtomicU16 = AtomicU16::new(0);
    let start = CURSOR.fetch_add(1, Ordering::Relaxed);
    let picked = pick_free(start, |q| bound.contains(&q)).ok_or_else(|| {
        io::Error::other(format!(
            "every NFQUEUE queue number {:#x}..{:#x} is bound; stop leftover delayers (`faultline recover`)",
            QUEUE_RANGE.start, QUEUE_RANGE.end
        ))
    })?;
    // Continue after the one we picked next time.
    CURSOR.store(
        picked.wrapping_sub(QUEUE_RANGE.start).wrapping_add(1),
        Ordering::Relaxed,
    );
    Ok(picked)
}

/// Start delaying the packets of `queue` with the default [`Tuning`].
pub fn start(
    queue: u16,
    spec: DelaySpec,
    netns: Option<&Netns>,
    expected_pps: u32,
) -> Result<Delayer, DelayerError> {
    start_tuned(queue, spec, netns, expected_pps, Tuning::default())
}

/// Spawn the delayer thread (inside `netns`), bind `queue` and return once it is bound, so the
/// caller can add the NFQUEUE rule right after. The caller owns what runs: the delayer stops
/// when the returned [`Delayer`] is stopped or dropped.
pub fn start_tuned(
    queue: u16,
    spec: DelaySpec,
    netns: Option<&Netns>,
    expected_pps: u32,
    tuning: Tuning,
) -> Result<Delayer, DelayerError> {
    validate(&spec)?;
    let ns_file = netns
        .map(|name| {
            super::netns::open(name).map_err(|source| DelayerError::Namespace {
                name: name.to_string(),
                location: name.location(),
                source,
            })
        })
        .transpose()?;
    let thread_err = |source| DelayerError::Thread { queue, source };
    let wake = Arc::new(new_eventfd().map_err(thread_err)?);
    let maxlen = queue_maxlen(&spec, expected_pps);
    let shared = Arc::new(Shared::new(queue, maxlen, tuning.spin));
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let netns_name = netns.cloned();
    let thread = {
        let (shared, stop, wake) = (shared.clone(), stop.clone(), wake.clone());
        std::thread::Builder::new()
            .name(format!("fl-delay-{queue:x}"))
            .spawn(move || {
                let setup = || -> Result<(NfQueue, Option<File>), DelayerError> {
                    if let (Some(ns), Some(name)) = (ns_file, netns_name) {
                        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                            |e| DelayerError::Namespace {
                                name: name.to_string(),
                                location: name.location(),
                                source: e.into(),
                            },
                        )?;
                    }
                    let mut q = NfQueue::bind(queue, maxlen)?;
                    // Without it (no CAP_BPF) delays run from when packets are read.
                    let _ = q.stamp_enqueue_times();
                    // Opened from this thread, so it reads this namespace's table.
                    let table = File::open(QUEUE_TABLE_THREAD).ok();
                    Ok((q, table))
                };
                match setup() {
                    Ok((q, table)) => {
                        *lock(&shared.table) = table;
                        let scheduling = if tuning.realtime {
                            raise_priority()
                        } else {
                            Scheduling::Normal
                        };
                        lock(&shared.counters).scheduling = scheduling;
                        set_timer_slack_ns(1_000);
                        let _ = ready_tx.send(Ok(()));
                        let _stamps = request_rx_timestamps();
                        Engine::new(q, spec, tuning, &shared, &stop, &wake).run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(thread_err)?
    };
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Delayer {
            queue,
            stop,
            wake,
            shared,
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(thread_err(io::Error::other(
                "the delayer thread died while binding",
            )))
        }
    }
}

/// A running delayer, bound to its queue. After a crash there is nothing to stop: the kernel
/// unbound the dead socket and `--queue-bypass` lets traffic through.
pub struct Delayer {
    queue: u16,
    stop: Arc<AtomicBool>,
    wake: Arc<OwnedFd>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Delayer {
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Live statistics.
    pub fn stats(&self) -> DelayStats {
        self.shared.snapshot()
    }

    /// Accept every held packet at once, unbind, join; the final statistics.
    pub fn stop(mut self) -> DelayStats {
        self.halt();
        self.shared.snapshot()
    }

    fn halt(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        wake_up(&self.wake);
        let _ = thread.join();
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.halt();
    }
}

impl std::fmt::Debug for Delayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delayer")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

// ---- shared state -------------------------------------------------------------------------

/// A poisoned lock only means a delayer thread panicked; the data (counters, registry) is
/// still the best we have, and stop/revert must keep working.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Shared {
    queue: u16,
    maxlen: u32,
    spin: Duration,
    counters: Mutex<Counters>,
    /// This queue's namespace's nfnetlink_queue table, opened by the delayer thread.
    table: Mutex<Option<File>>,
}

struct Counters {
    seen: u64,
    released: u64,
    released_at_stop: u64,
    released_early: u64,
    held: u64,
    max_held: u64,
    enobufs: u64,
    verdict_errors: u64,
    kernel_stamped: u64,
    delay: Histogram,
    lateness: Histogram,
    scheduling: Scheduling,
    /// Kernel counters as of unbind (the table row disappears then).
    final_kernel: Option<QueueRow>,
    unbound: bool,
}

impl Shared {
    fn new(queue: u16, maxlen: u32, spin: Duration) -> Shared {
        Shared {
            queue,
            maxlen,
            spin,
            counters: Mutex::new(Counters {
                seen: 0,
                released: 0,
                released_at_stop: 0,
                released_early: 0,
                held: 0,
                max_held: 0,
                enobufs: 0,
                verdict_errors: 0,
                kernel_stamped: 0,
                delay: Histogram::new(),
                lateness: Histogram::new(),
                scheduling: Scheduling::Normal,
                final_kernel: None,
                unbound: false,
            }),
            table: Mutex::new(None),
        }
    }

    fn kernel_row(&self) -> Option<QueueRow> {
        let table = lock(&self.table);
        read_queue_table_from(table.as_ref()?)
            .ok()?
            .into_iter()
            .find(|row| row.queue == self.queue)
    }

    fn snapshot(&self) -> DelayStats {
        let live = self.kernel_row();
        let c = lock(&self.counters);
        let kernel = if c.unbound { c.final_kernel } else { live };
        DelayStats {
            queue: self.queue,
            queue_maxlen: self.maxlen,
            packets_seen: c.seen,
            packets_released: c.released,
            packets_released_at_stop: c.released_at_stop,
            packets_released_early: c.released_early,
            packets_held: c.held,
            max_held: c.max_held,
            kernel_queue_dropped: kernel.map(|k| k.queue_dropped),
            kernel_user_dropped: kernel.map(|k| k.user_dropped),
            enobufs: c.enobufs,
            verdict_errors: c.verdict_errors,
            packets_kernel_stamped: c.kernel_stamped,
            delay_ms: c.delay.summary(),
            lateness_ms: c.lateness.summary(),
            scheduling: c.scheduling,
            spin_us: self.spin.as_micros() as u64,
        }
    }
}

// ---- the engine ---------------------------------------------------------------------------

/// When the packet entered the queue: the enqueue stamp our socket filter took, else the
/// kernel's wall-clock arrival stamp if it is believable (at most `STAMP_MAX_AGE` old),
/// else now. `true` when a stamp was used. The thread reading a packet can lag its arrival
/// by an idle-vCPU wake-up (~0.1-0.3 ms), or by a `BUSY_TICK`, which would otherwise add to
/// every delay.
fn arrival(p: &PacketMeta, clocks: &Clocks) -> (Instant, bool) {
    const STAMP_MAX_AGE: Duration = Duration::from_millis(20);
    // A stamp can be old when the thread was busy; a later one than now is not ours.
    const ENQUEUE_MAX_AGE: Duration = Duration::from_secs(10);
    if let Some(age) = p
        .enqueued_ns
        .and_then(|ns| clocks.monotonic_ns.checked_sub(ns))
        .map(Duration::from_nanos)
        .filter(|age| *age <= ENQUEUE_MAX_AGE)
        && let Some(at) = clocks.now.checked_sub(age)
    {
        return (at, true);
    }
    match (p.timestamp, clocks.wall) {
        (Some(stamp), Some(wall)) if stamp <= wall && wall - stamp <= STAMP_MAX_AGE => {
            (clocks.now - (wall - stamp), true)
        }
        _ => (clocks.now, false),
    }
}

/// One reading of the three clocks stamps are compared with. `Instant` is
/// `CLOCK_MONOTONIC`, the clock of the enqueue stamps, but opaque, hence both.
struct Clocks {
    now: Instant,
    monotonic_ns: u64,
    wall: Option<Duration>,
}

impl Clocks {
    fn read() -> Clocks {
        let now = Instant::now();
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec out-pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Clocks {
            now,
            monotonic_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
            wall: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok(),
        }
    }
}

/// The kernel stamps received packets only while some socket asks for receive timestamps
/// (a global switch, `net_enable_timestamp`). This socket asks, for as long as the delayer
/// runs; it never sends or receives anything.
fn request_rx_timestamps() -> Option<OwnedFd> {
    // Unbound: needs no address, so it works even where lo is down.
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return None;
    }
    // SAFETY: fresh fd nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let on: libc::c_int = 1;
    // SAFETY: SO_TIMESTAMPNS takes a c_int flag.
    let rc = unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    (rc == 0).then_some(socket)
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    due: Instant,
    /// Arrival order: breaks ties so equal due times leave first-in first-out.
    seq: u64,
    received: Instant,
    id: u32,
}

/// At most this many messages are read before due packets are released again, so a flood
/// cannot starve the releases.
const RECEIVE_BURST: usize = 1024;
/// Spinning is capped at this share of each window, so a steady stream of due times cannot
/// turn the (possibly real-time) delayer thread into a busy loop.
const SPIN_WINDOW: Duration = Duration::from_millis(100);
const SPIN_BUDGET: Duration = Duration::from_millis(20);
/// At or above this many packets per `BUSY_WINDOW` (16k pps) the thread stops waking for
/// each arrival and each due time: it sleeps `BUSY_TICK` at a time on a timer alone, then
/// reads everything that came (`recvmmsg`) and releases everything due within half a
/// release cycle (one batch verdict), so each release lands within about ±`BUSY_TICK`/2 of
/// its due time and the mean error stays near zero. Delays still run from each packet's
/// enqueue stamp. Per-packet wake-ups and the pre-due spin cost most of a vCPU at 100k pps,
/// which starved the senders and receivers sharing it; a 50 µs tick still cost 53-57 % of a
/// vCPU at 125k pps (and the iperf3 receiver sharing the 2 vCPUs lost 3-14 %), a 200 µs
/// tick 38-42 % (receiver loss 0-0.2 %).
const BUSY_WINDOW: Duration = Duration::from_millis(1);
const BUSY_PACKETS: u64 = 16;
const BUSY_TICK: Duration = Duration::from_micros(200);

struct Engine<'a> {
    q: NfQueue,
    sampler: DelaySampler,
    spin: Duration,
    shared: &'a Shared,
    stop: &'a AtomicBool,
    wake: &'a OwnedFd,
    heap: BinaryHeap<Reverse<Held>>,
    order: ArrivalOrder,
    next_seq: u64,
    last_id: Option<u32>,
    spin_window_start: Instant,
    spin_spent: Duration,
    busy_window_start: Instant,
    busy_window_packets: u64,
    busy: bool,
    /// Busy mode: when the current release cycle began, and how long cycles really take
    /// (the tick plus the timer's overshoot and the work; moving average).
    cycle_start: Option<Instant>,
    busy_cycle: Duration,
    /// Reused between releases.
    due_now: Vec<Held>,
}

impl<'a> Engine<'a> {
    fn new(
        q: NfQueue,
        spec: DelaySpec,
        tuning: Tuning,
        shared: &'a Shared,
        stop: &'a AtomicBool,
        wake: &'a OwnedFd,
    ) -> Engine<'a> {
        Engine {
            q,
            sampler: DelaySampler::new(spec, SmallRng::from_os_rng()),
            spin: tuning.spin,
            shared,
            stop,
            wake,
            heap: BinaryHeap::new(),
            order: ArrivalOrder::default(),
            next_seq: 0,
            last_id: None,
            spin_window_start: Instant::now(),
            spin_spent: Duration::ZERO,
            busy_window_start: Instant::now(),
            busy_window_packets: 0,
            busy: false,
            cycle_start: None,
            busy_cycle: BUSY_TICK,
            due_now: Vec::new(),
        }
    }

    fn run(mut self) {
        while !self.stop.load(Ordering::SeqCst) {
            let early_by = self.release_rounding();
            if self.receive(RECEIVE_BURST).is_err() || self.release_due(early_by).is_err() {
                break;
            }
            let now = Instant::now();
            self.update_busy(now);
            let next_due = self.heap.peek().map(|Reverse(h)| h.due);
            if self.busy {
                self.sleep_on_timer(BUSY_TICK);
                continue;
            }
            let Some(due) = next_due else {
                self.sleep(None);
                continue;
            };
            if due <= now {
                continue;
            }
            let wait = due - now;
            if wait <= self.spin && self.may_spin(now) {
                self.spin_until(due);
            } else {
                self.sleep(Some(wait.saturating_sub(self.spin)));
            }
        }
        self.shutdown();
    }

    /// Read up to `limit` messages; `Err` only when the socket itself is broken.
    fn receive(&mut self, limit: usize) -> io::Result<usize> {
        let mut packets = 0;
        let mut stats = lock(&self.shared.counters);
        let mut clocks: Option<Clocks> = None;
        for _ in 0..limit {
            match self.q.recv()? {
                None => break,
                Some(Message::Packet(p)) => {
                    // Clocks read before a stamp taken later (a long drain) would
                    // reject it: read them again then.
                    if clocks
                        .as_ref()
                        .zip(p.enqueued_ns)
                        .is_some_and(|(c, ns)| ns > c.monotonic_ns)
                    {
                        clocks = None;
                    }
                    let received = arrival(&p, clocks.get_or_insert_with(Clocks::read));
                    if received.1 {
                        stats.kernel_stamped += 1;
                    }
                    let received = received.0;
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.order.push(seq, p.id);
                    self.last_id = Some(p.id);
                    self.heap.push(Reverse(Held {
                        due: received + self.sampler.next(),
                        seq,
                        received,
                        id: p.id,
                    }));
                    packets += 1;
                }
                Some(Message::Overrun) => stats.enobufs += 1,
                Some(Message::Ack { errno, .. }) if errno != 0 => stats.verdict_errors += 1,
                Some(Message::Ack { .. }) => {}
            }
        }
        stats.seen += packets as u64;
        self.busy_window_packets += packets as u64;
        stats.held = self.heap.len() as u64;
        stats.max_held = stats.max_held.max(stats.held);
        Ok(packets)
    }

    /// Accept every packet due by now + `early_by`: one batch verdict for the prefix of
    /// arrival order that is now fully released, single verdicts for the rest (jitter can
    /// release a later packet before an earlier one).
    fn release_due(&mut self, early_by: Duration) -> io::Result<()> {
        let horizon = Instant::now() + early_by;
        while self.heap.peek().is_some_and(|Reverse(h)| h.due <= horizon) {
            let Reverse(h) = self.heap.pop().expect("peeked");
            self.order.release(h.seq);
            self.due_now.push(h);
        }
        if self.due_now.is_empty() {
            return Ok(());
        }
        let prefix_end = self.order.compact();
        if let Some((_, id)) = prefix_end {
            self.q.verdict_batch(id, Verdict::Accept)?;
        }
        for h in &self.due_now {
            if prefix_end.is_none_or(|(seq, _)| h.seq > seq) {
                self.q.verdict(h.id, Verdict::Accept)?;
            }
        }
        // Timed before the flush: the sendto runs the accepted packets through the rest of
        // the stack (TCP receive, waking the reader), which is delivery, not our lateness.
        let sent = Instant::now();
        self.q.flush()?;
        let mut stats = lock(&self.shared.counters);
        for h in self.due_now.drain(..) {
            stats.delay.record(sent - h.received);
            match sent.checked_duration_since(h.due) {
                Some(late) => stats.lateness.record(late),
                None => {
                    stats.released_early += 1;
                    stats.lateness.record(Duration::ZERO);
                }
            }
        }
        stats.released = stats.delay.count;
        stats.held = self.heap.len() as u64;
        Ok(())
    }

    /// How far ahead of now to release: zero when packets are rare (every due time gets its
    /// own wake-up); in busy mode half a release cycle, so each packet goes out at whichever
    /// release is nearest its due time rather than always at the next one.
    fn release_rounding(&mut self) -> Duration {
        if !self.busy {
            self.cycle_start = None;
            return Duration::ZERO;
        }
        let now = Instant::now();
        if let Some(start) = self.cycle_start.replace(now) {
            // A preempted cycle says nothing about the usual one: cap what one sample moves.
            let cycle = (now - start).min(BUSY_TICK * 4);
            self.busy_cycle = (self.busy_cycle * 7 + cycle) / 8;
        }
        self.busy_cycle / 2
    }

    fn update_busy(&mut self, now: Instant) {
        if now - self.busy_window_start >= BUSY_WINDOW {
            self.busy = self.busy_window_packets >= BUSY_PACKETS;
            self.busy_window_start = now;
            self.busy_window_packets = 0;
        }
    }

    fn may_spin(&mut self, now: Instant) -> bool {
        if now - self.spin_window_start >= SPIN_WINDOW {
            self.spin_window_start = now;
            self.spin_spent = Duration::ZERO;
        }
        self.spin_spent < SPIN_BUDGET
    }

    /// Busy-wait until `due`, still reading packets so their receive time stays exact.
    fn spin_until(&mut self, due: Instant) {
        let start = Instant::now();
        while Instant::now() < due && !self.stop.load(Ordering::Relaxed) {
            if self.receive(RECEIVE_BURST).is_err() {
                break;
            }
            std::hint::spin_loop();
        }
        self.spin_spent += start.elapsed();
    }

    /// Sleep until a packet arrives, the stop signal, or `timeout`.
    fn sleep(&self, timeout: Option<Duration>) {
        self.poll(true, timeout);
    }

    /// Sleep `timeout` (or until the stop signal), whatever arrives meanwhile.
    fn sleep_on_timer(&self, timeout: Duration) {
        self.poll(false, Some(timeout));
    }

    fn poll(&self, on_packets: bool, timeout: Option<Duration>) {
        let mut fds = [
            libc::pollfd {
                fd: self.q.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        // The wake-up eventfd is last, so dropping the socket leaves just it.
        let (fds, count) = if on_packets {
            (&mut fds[..], 2)
        } else {
            (&mut fds[1..], 1)
        };
        // SAFETY: `count` valid pollfds; ts_ptr is null or points at a live timespec.
        unsafe { libc::ppoll(fds.as_mut_ptr(), count, ts_ptr, std::ptr::null()) };
    }

    /// Accept everything, held or still unread, then unbind. Setting maxlen 0 first makes
    /// the kernel pass every *new* packet straight through (FAIL_OPEN), and since it applies
    /// under the queue lock, every packet queued before it has its message in our socket
    /// already: after one drain, a batch verdict up to the last id empties the queue, and
    /// the unbind (which DROPS leftovers) finds nothing to drop.
    fn shutdown(mut self) {
        let _ = self.q.set_maxlen(0);
        while matches!(self.receive(usize::MAX), Ok(n) if n > 0) {}
        if let Some(id) = self.last_id {
            let _ = self.q.verdict_batch(id, Verdict::Accept);
            let _ = self.q.flush();
        }
        let early = self.heap.len() as u64;
        self.heap.clear();
        let kernel = self.shared.kernel_row();
        let _ = self.q.unbind();
        let mut stats = lock(&self.shared.counters);
        stats.released_at_stop += early;
        stats.held = 0;
        stats.final_kernel = kernel;
        stats.unbound = true;
    }
}

/// Tracks which arrivals are still held, to know when a batch verdict is safe: the kernel's
/// batch verdict accepts every queued packet with an id up to the given one, in enqueue
/// order, so it may only cover a prefix of arrivals that is entirely due.
#[derive(Default)]
struct ArrivalOrder {
    /// Arrival seq of `slots[0]`.
    base: u64,
    /// (kernel id, still held) per arrival from `base` on.
    slots: VecDeque<(u32, bool)>,
}

impl ArrivalOrder {
    fn push(&mut self, seq: u64, id: u32) {
        debug_assert_eq!(seq, self.base + self.slots.len() as u64);
        self.slots.push_back((id, true));
    }

    fn release(&mut self, seq: u64) {
        if let Some(slot) = seq
            .checked_sub(self.base)
            .and_then(|i| self.slots.get_mut(i as usize))
        {
            slot.1 = false;
        }
    }

    /// Drop the fully released prefix; returns the (seq, id) of its last arrival, if any.
    fn compact(&mut self) -> Option<(u64, u32)> {
        let mut last = None;
        while let Some(&(id, false)) = self.slots.front() {
            self.slots.pop_front();
            last = Some((self.base, id));
            self.base += 1;
        }
        last
    }
}

struct DelaySampler {
    spec: DelaySpec,
    rng: SmallRng,
    last: f64,
}

impl DelaySampler {
    fn new(spec: DelaySpec, rng: SmallRng) -> DelaySampler {
        DelaySampler {
            spec,
            rng,
            last: 0.0,
        }
    }

    fn next(&mut self) -> Duration {
        if self.spec.jitter.is_zero() {
            return self.spec.delay;
        }
        let fresh = match self.spec.distribution {
            Distribution::Uniform => self.rng.random_range(-1.0..=1.0),
            Distribution::Normal => {
                // Box-Muller; 1 - u keeps ln away from 0.
                let u1: f64 = 1.0 - self.rng.random::<f64>();
                let u2: f64 = self.rng.random();
                (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
            }
        };
        let c = self.spec.correlation;
        self.last = c * self.last + (1.0 - c) * fresh;
        let secs = self.spec.delay.as_secs_f64() + self.spec.jitter.as_secs_f64() * self.last;
        Duration::from_secs_f64(secs.max(0.0))
    }
}

fn validate(spec: &DelaySpec) -> Result<(), DelayerError> {
    if !(0.0..=1.0).contains(&spec.correlation) {
        return Err(DelayerError::InvalidSpec(format!(
            "correlation {} is outside 0..=1",
            spec.correlation
        )));
    }
    if spec.delay + spec.jitter > Duration::from_secs(3600) {
        return Err(DelayerError::InvalidSpec(
            "delay + jitter above one hour would hold packets (and connections) indefinitely"
                .to_string(),
        ));
    }
    Ok(())
}

/// Room for twice the packets in flight at the longest delay: beyond maxlen the kernel
/// passes packets undelayed (FAIL_OPEN), which would silently weaken the fault.
/// Measured on kernel 6.18: a queue never held more than 65,536 packets whatever maxlen
/// said (the rest passed through FAIL_OPEN), so beyond that the limit is the kernel's.
fn queue_maxlen(spec: &DelaySpec, expected_pps: u32) -> u32 {
    let spread = match spec.distribution {
        Distribution::Uniform => 1,
        Distribution::Normal => 3,
    };
    let worst = spec.delay + spec.jitter * spread;
    let needed = f64::from(expected_pps) * worst.as_secs_f64() * 2.0;
    needed.ceil().clamp(4096.0, f64::from(1u32 << 20)) as u32
}

fn pick_free(start: u16, taken: impl Fn(u16) -> bool) -> Option<u16> {
    let len = QUEUE_RANGE.end - QUEUE_RANGE.start;
    (0..len)
        .map(|i| QUEUE_RANGE.start + (start.wrapping_add(i) % len))
        .find(|&q| !taken(q))
}

fn raise_priority() -> Scheduling {
    const PRIORITY: i32 = 50;
    let param = libc::sched_param {
        sched_priority: PRIORITY,
    };
    // SAFETY: pid 0 = the calling thread; param is valid.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0 {
        return Scheduling::Fifo { priority: PRIORITY };
    }
    // SAFETY: gettid has no preconditions; setpriority on a tid affects that thread only.
    let tid = unsafe { libc::gettid() };
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -20) } == 0 {
        return Scheduling::Nice { nice: -20 };
    }
    Scheduling::Normal
}

fn set_timer_slack_ns(ns: libc::c_ulong) {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and affects this thread only.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns, 0, 0, 0) };
}

fn new_eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain eventfd(2); the fd is owned right away.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn wake_up(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: an eventfd write takes exactly 8 bytes.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

// ---- histogram ----------------------------------------------------------------------------

/// Microsecond histogram of bounded size: exact below 2048 µs, then 1024 buckets per octave
/// (≤ 0.05 % error from the bucket midpoint: 25 µs at 50 ms), up to 2^40 µs.
struct Histogram {
    counts: Vec<u32>,
    count: u64,
    sum_us: u128,
    max_us: u64,
}

const EXACT: u64 = 2048;
const PER_OCTAVE: u64 = 1024;
const MAX_US: u64 = (1 << 40) - 1;

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: vec![0; bucket_of(MAX_US) + 1],
            count: 0,
            sum_us: 0,
            max_us: 0,
        }
    }

    fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).min(MAX_US);
        let slot = &mut self.counts[bucket_of(us)];
        *slot = slot.saturating_add(1);
        self.count += 1;
        self.sum_us += u128::from(us);
        self.max_us = self.max_us.max(us);
    }

    fn quantile_us(&self, q: f64) -> u64 {
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count.max(1));
        let mut seen = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return bucket_mid(i).min(self.max_us);
            }
        }
        self.max_us
    }

    fn summary(&self) -> LatencySummary {
        if self.count == 0 {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            samples: self.count,
            mean: self.sum_us as f64 / self.count as f64 / 1000.0,
            p50: ms(self.quantile_us(0.50)),
            p99: ms(self.quantile_us(0.99)),
            max: ms(self.max_us),
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us < EXACT {
        return us as usize;
    }
    let octave = 63 - u64::from(us.leading_zeros()); // ≥ 11
    let shift = octave - 10;
    let sub = (us >> shift) - PER_OCTAVE; // 0..1024
    (EXACT + (octave - 11) * PER_OCTAVE + sub) as usize
}

fn bucket_mid(index: usize) -> u64 {
    let i = index as u64;
    if i < EXACT {
        return i;
    }
    let octave = 11 + (i - EXACT) / PER_OCTAVE;
    let shift = octave - 10;
    let low = (PER_OCTAVE + (i - EXACT) % PER_OCTAVE) << shift;
    low + (1 << shift) / 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::netns::{TestNet, command_in, run_in};
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::sync::atomic::AtomicBool;

    // ---- pure parts ----

    #[test]
    fn histogram_is_exact_below_2ms_and_within_a_bucket_above() {
        let mut h = Histogram::new();
        for us in [0u64, 1, 150, 2047] {
            assert_eq!(bucket_mid(bucket_of(us)), us);
        }
        for us in [2048u64, 50_000, 100_123, 1 << 39] {
            let mid = bucket_mid(bucket_of(us));
            assert!(
                mid.abs_diff(us) as f64 <= us as f64 / 2048.0 + 1.0,
                "{us} -> {mid}"
            );
        }
        assert_eq!(bucket_of(MAX_US) + 1, h.counts.len());
        for i in 1..=1000u64 {
            h.record(Duration::from_micros(50_000 + i));
        }
        let s = h.summary();
        assert_eq!(s.samples, 1000);
        assert!((s.mean - 50.5005).abs() < 1e-9, "{s:?}");
        assert!((s.p50 - 50.5).abs() < 0.03, "{s:?}");
        assert!((s.p99 - 50.99).abs() < 0.03, "{s:?}");
        assert_eq!(s.max, 51.0);
    }

    #[test]
    fn batch_verdicts_cover_only_a_fully_released_prefix() {
        let mut order = ArrivalOrder::default();
        for (seq, id) in [(0, 10), (1, 11), (2, 12), (3, 13)] {
            order.push(seq, id);
        }
        order.release(1);
        assert_eq!(order.compact(), None, "seq 0 is still held");
        order.release(0);
        assert_eq!(order.compact(), Some((1, 11)));
        order.release(3);
        assert_eq!(order.compact(), None);
        order.release(2);
        assert_eq!(order.compact(), Some((3, 13)));
        order.push(4, 14);
        order.release(4);
        assert_eq!(order.compact(), Some((4, 14)));
    }

    fn samples(spec: DelaySpec, n: usize) -> Vec<f64> {
        let mut s = DelaySampler::new(spec, SmallRng::seed_from_u64(7));
        (0..n).map(|_| s.next().as_secs_f64() * 1e3).collect()
    }

    fn mean_stdev(v: &[f64]) -> (f64, f64) {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
        (mean, var.sqrt())
    }

    pub(super) fn spec(delay_ms: u64, jitter_ms: u64, distribution: Distribution) -> DelaySpec {
        DelaySpec {
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::from_millis(jitter_ms),
            distribution,
            correlation: 0.0,
        }
    }

    #[test]
    fn sampler_matches_the_requested_distribution() {
        let (m, sd) = mean_stdev(&samples(spec(100, 20, Distribution::Uniform), 20_000));
        assert!(
            (m - 100.0).abs() < 0.5 && (sd - 20.0 / 3f64.sqrt()).abs() < 0.3,
            "{m} {sd}"
        );
        let u = samples(spec(100, 20, Distribution::Uniform), 20_000);
        assert!(u.iter().all(|&x| (80.0..=120.0).contains(&x)));
        let (m, sd) = mean_stdev(&samples(spec(100, 20, Distribution::Normal), 20_000));
        assert!(
            (m - 100.0).abs() < 0.5 && (sd - 20.0).abs() < 0.5,
            "{m} {sd}"
        );
        // Never negative, even when jitter exceeds the delay.
        assert!(
            samples(spec(1, 20, Distribution::Normal), 1000)
                .iter()
                .all(|&x| x >= 0.0)
        );
        assert_eq!(samples(spec(50, 0, Distribution::Normal), 3), vec![50.0; 3]);
    }

    #[test]
    fn correlation_makes_consecutive_delays_close() {
        let lag1 = |corr: f64| {
            let v = samples(
                DelaySpec {
                    correlation: corr,
                    ..spec(100, 20, Distribution::Uniform)
                },
                20_000,
            );
            let steps: f64 = v.windows(2).map(|w| (w[1] - w[0]).abs()).sum();
            steps / (v.len() - 1) as f64
        };
        assert!(lag1(0.9) < lag1(0.0) / 5.0, "{} {}", lag1(0.9), lag1(0.0));
    }

    #[test]
    fn queue_is_long_enough_for_twice_the_packets_in_flight() {
        assert_eq!(queue_maxlen(&spec(50, 0, Distribution::Uniform), 10), 4096);
        assert_eq!(
            queue_maxlen(&spec(100, 20, Distribution::Uniform), 100_000),
            24_000
        );
        assert_eq!(
            queue_maxlen(&spec(100, 20, Distribution::Normal), 100_000),
            32_000
        );
        assert_eq!(
            queue_maxlen(&spec(60_000, 0, Distribution::Normal), 100_000),
            1 << 20
        );
    }

    #[test]
    fn queue_table_rows_and_free_number_choice() {
        let text =
            "    0  12345     3 1     0     7     2       99  1\n17958 -4000 0 1 0 0 0 5 1\n";
        assert_eq!(
            super::super::nfqueue::parse_queue_table(text),
            vec![
                QueueRow {
                    queue: 0,
                    queue_dropped: 7,
                    user_dropped: 2
                },
                QueueRow {
                    queue: 17958,
                    queue_dropped: 0,
                    user_dropped: 0
                }
            ]
        );
        assert_eq!(pick_free(0, |q| q < 0x4603), Some(0x4603));
        assert_eq!(pick_free(0x00ff, |q| q == 0x46ff), Some(0x4600));
        assert_eq!(pick_free(5, |_| true), None);
    }

    #[test]
    fn invalid_correlation_is_refused_before_anything_starts() {
        let bad = DelaySpec {
            correlation: 1.5,
            ..spec(10, 0, Distribution::Uniform)
        };
        let err = start(0x46fe, bad, None, 10).unwrap_err();
        assert!(err.to_string().contains("correlation 1.5"), "{err}");
        assert!(
            !read_queue_table()
                .unwrap()
                .iter()
                .any(|row| row.queue == 0x46fe),
            "the queue was bound"
        );
    }

    // ---- real kernel ----

    /// Timing tests share two CPUs: run them one at a time, across modules.
    pub(super) fn serial() -> MutexGuard<'static, ()> {
        crate::sys::heavy_tests::one_at_a_time()
    }

    /// `iptables -A INPUT -p PROTO --dport PORT -j NFQUEUE --queue-num Q --queue-bypass` in `ns`.
    pub(super) fn queue_rule(ns: &str, proto: &str, port: u16, queue: u16) {
        let port = port.to_string();
        let queue = queue.to_string();
        let argv = [
            "iptables",
            "-A",
            "INPUT",
            "-p",
            proto,
            "--dport",
            &port,
            "-j",
            "NFQUEUE",
            "--queue-num",
            &queue,
            "--queue-bypass",
        ];
        let out = command_in(ns, &argv).output().expect("run iptables");
        assert!(
            out.status.success(),
            "iptables: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Echoes every TCP connection (and UDP datagram) it gets until dropped.
    pub(super) struct EchoServer {
        pub(super) tcp: SocketAddr,
        pub(super) udp: SocketAddr,
        stop: Arc<AtomicBool>,
        threads: Vec<JoinHandle<()>>,
    }

    impl EchoServer {
        pub(super) fn start(net: &TestNet) -> EchoServer {
            let ip = net.ip_b.clone();
            let (listener, udp) = run_in(&net.b, move || {
                (
                    TcpListener::bind(format!("{ip}:0")).unwrap(),
                    UdpSocket::bind(format!("{ip}:0")).unwrap(),
                )
            })
            .unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let (tcp, udp_addr) = (listener.local_addr().unwrap(), udp.local_addr().unwrap());
            listener.set_nonblocking(true).unwrap();
            udp.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            let mut threads = Vec::new();
            let s = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut conns = Vec::new();
                while !s.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut c, _)) => {
                            let s = s.clone();
                            conns.push(std::thread::spawn(move || {
                                c.set_nodelay(true).unwrap();
                                c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                                let mut buf = [0u8; 4096];
                                while !s.load(Ordering::SeqCst) {
                                    match c.read(&mut buf) {
                                        Ok(0) => break,
                                        Ok(n) => {
                                            if c.write_all(&buf[..n]).is_err() {
                                                break;
                                            }
                                        }
                                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                                        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                                        Err(_) => break,
                                    }
                                }
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                conns.into_iter().for_each(|t| t.join().unwrap());
            }));
            let s = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !s.load(Ordering::SeqCst) {
                    if let Ok((n, from)) = udp.recv_from(&mut buf) {
                        let _ = udp.send_to(&buf[..n], from);
                    }
                }
            }));
            EchoServer {
                tcp,
                udp: udp_addr,
                stop,
                threads,
            }
        }
    }

    impl Drop for EchoServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            self.threads.drain(..).for_each(|t| t.join().unwrap());
        }
    }

    fn connect_from(ns: &str, to: SocketAddr) -> TcpStream {
        let c = run_in(ns, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(2))
        })
        .unwrap()
        .expect("connect");
        c.set_nodelay(true).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    }

    /// Request/response RTTs in ms over `conns` parallel connections, `per_conn` each,
    /// paced `pace` apart so each request meets an idle path (as a real client would).
    pub(super) fn rtts(
        net: &TestNet,
        to: SocketAddr,
        conns: usize,
        per_conn: usize,
        pace: Duration,
    ) -> Vec<f64> {
        let streams: Vec<TcpStream> = (0..conns).map(|_| connect_from(&net.a, to)).collect();
        let threads: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, mut c)| {
                std::thread::spawn(move || {
                    // Stagger the connections so their packets do not arrive together.
                    std::thread::sleep(pace * i as u32 / conns as u32);
                    let (req, mut resp) = ([7u8; 64], [0u8; 64]);
                    (0..per_conn)
                        .map(|_| {
                            let t = Instant::now();
                            c.write_all(&req).unwrap();
                            c.read_exact(&mut resp).unwrap();
                            let rtt = t.elapsed().as_secs_f64() * 1e3;
                            std::thread::sleep(pace);
                            rtt
                        })
                        .collect::<Vec<f64>>()
                })
            })
            .collect();
        let mut all: Vec<f64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_by(f64::total_cmp);
        all
    }

    pub(super) fn pct(sorted: &[f64], q: f64) -> f64 {
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }

    pub(super) fn delayed_rtts(
        net: &TestNet,
        server: &EchoServer,
        queue: u16,
        spec: DelaySpec,
        tuning: Tuning,
        n: usize,
    ) -> (Vec<f64>, DelayStats) {
        let delayer = start_tuned(queue, spec, Some(&Netns::from(&net.b)), 1000, tuning)
            .expect("start delayer");
        let r = rtts(net, server.tcp, 4, n / 4, Duration::from_millis(10));
        let live = delayer.stats();
        drop(delayer);
        (r, live)
    }

    #[test]
    fn delay_of_50_and_100_ms_is_met_within_a_millisecond() {
        let _serial = serial();
        let net = TestNet::new().expect("test net (needs root)");
        let server = EchoServer::start(&net);
        let base = rtts(&net, server.tcp, 2, 50, Duration::from_millis(10));
        let base_p50 = pct(&base, 0.5);
        let queue = free_queue_number(Some(&Netns::from(&net.b))).unwrap();
        queue_rule(&net.b, "tcp", server.tcp.port(), queue);
        // The delayer's own figures are tight; the round trips, which steal time on this
        // shared VM also delays (p99 +14 ms seen), get bounds only a wrong delay exceeds. The
        // p99 accuracy (within 1 ms idle) is the `accuracy_table` benchmark's.
        for target in [50.0, 100.0] {
            let spec = spec(target as u64, 0, Distribution::Uniform);
            let (r, live) = delayed_rtts(&net, &server, queue, spec, Tuning::default(), 160);
            let (p50, p95, p99) = (pct(&r, 0.5), pct(&r, 0.95), pct(&r, 0.99));
            eprintln!(
                "target {target} ms: baseline p50 {base_p50:.3}, p50 {p50:.3}, p95 {p95:.3}, p99 {p99:.3}, stats {live:?}"
            );
            assert!(r[0] >= target, "a packet left early: {}", r[0]);
            assert!(
                live.packets_seen >= 160 && live.packets_released >= 160,
                "{live:?}"
            );
            assert!((live.delay_ms.p50 - target).abs() < 0.5, "{live:?}");
            assert_eq!(live.verdict_errors + live.enobufs, 0, "{live:?}");
            assert!(
                (p50 - (target + base_p50)).abs() <= 2.0,
                "p50 {p50} for {target}"
            );
            // The tail bound is on p95: a delayer that holds packets too long shows in many
            // samples, a steal-time hiccup (p99 +14 ms seen in CI) in a few.
            assert!(p95 <= target * 1.25 + base_p50, "p95 {p95} for {target}");
        }
        let table = run_in(&net.b, read_queue_table).unwrap().unwrap();
        assert!(
            !table.iter().any(|row| row.queue == queue),
            "a stopped delayer still holds its queue"
        );
    }

    #[test]
    fn jitter_spread_matches_uniform_and_normal() {
        let _serial = serial();
        let net = TestNet::new().expect("test net (needs root)");
        let server = EchoServer::start(&net);
        let queue = free_queue_number(Some(&Netns::from(&net.b))).unwrap();
        queue_rule(&net.b, "tcp", server.tcp.port(), queue);
        for (distribution, expected_sd) in [
            (Distribution::Uniform, 20.0 / 3f64.sqrt()),
            (Distribution::Normal, 20.0),
        ] {
            let spec = spec(60, 20, distribution);
            let (r, _) = delayed_rtts(&net, &server, queue, spec, Tuning::default(), 200);
            // No draw of either distribution comes near 60 + 5 x 20 ms (normal: 3e-7 per
            // draw); a round trip beyond it is a stall of the whole VM or a TCP timer, and one
            // such sample would dominate the sd (one CI run: mean 63.6, sd 36.7, from about
            // three round trips near 320 ms). One stall hits at most the four connections'
            // round trips in flight: at most four may be set aside.
            let (kept, stalled): (Vec<f64>, Vec<f64>) = r.iter().partition(|&&rtt| rtt <= 160.0);
            assert!(
                stalled.len() <= 4,
                "{distribution:?}: round trips beyond any draw: {stalled:?}"
            );
            let (mean, sd) = mean_stdev(&kept);
            eprintln!(
                "{distribution:?}: mean {mean:.2} sd {sd:.2} (expected {expected_sd:.2}); set aside {stalled:?}"
            );
            // 200 draws: the sample sd is within ±15 % about 97 % of the time; ±30 % leaves
            // room for scheduling noise and still tells the two distributions apart (their
            // sds differ by a factor of 1.7).
            assert!(
                (sd / expected_sd - 1.0).abs() <= 0.30,
                "{distribution:?} sd {sd}"
            );
            assert!((mean - 60.0).abs() < 4.0, "{distribution:?} mean {mean}");
        }
    }

    /// Above 16k pps the delayer wakes on a 200 µs timer and rounds each release to the
    /// nearest tick: every packet must still be delayed (none lost, none bypassed), some
    /// released a little early, and the delays must centre on the target.
    ///
    /// The bounds catch a delayer that falls behind the flood or releases on the wrong
    /// side; the tick's accuracy itself (p99 lateness 0.3-0.5 ms here when the box is
    /// quiet) is the `accuracy_table` benchmark's: with steal time on this shared VM the
    /// same p99 went to 3-7 ms for seconds at a time.
    #[test]
    fn a_flood_is_released_on_the_nearest_tick_and_nothing_is_lost() {
        let _serial = serial();
        let net = TestNet::new().expect("test net (needs root)");
        let (sent, received, s) = flood_once(&net);
        eprintln!("sent {sent}, received {received}, stats {s:?}");
        assert_eq!(s.packets_seen, sent, "{s:?}");
        assert_eq!(s.packets_released, sent, "{s:?}");
        assert_eq!(
            s.enobufs + s.verdict_errors + s.kernel_queue_dropped.unwrap_or(0),
            0,
            "{s:?}"
        );
        assert!(
            received * 100 >= sent * 99,
            "only {received} of {sent} arrived"
        );
        assert!(s.packets_released_early > 0, "never rounded early: {s:?}");
        // Nearest-tick rounding releases at most half a tick (0.1 ms) early.
        assert!(s.delay_ms.p50 >= 4.9, "released a tick early: {s:?}");
        // Steal time moved the mean to 6.1 ms in one noisy run; p50 stays within 0.1 ms.
        assert!((4.9..=6.5).contains(&s.delay_ms.mean), "{s:?}");
        assert!(s.delay_ms.p50 <= 5.5, "{s:?}");
        assert!(s.lateness_ms.p50 <= 0.5, "{s:?}");
        assert!(s.lateness_ms.p99 <= 10.0, "fell behind the flood: {s:?}");
    }

    /// 30 packets per millisecond for a second, delayed 5 ms: sent, received, the stats.
    fn flood_once(net: &TestNet) -> (u64, u64, DelayStats) {
        const RATE_PER_MS: u64 = 30;
        const MILLIS: u64 = 1000;
        let ip_b = net.ip_b.clone();
        let sink = run_in(&net.b, move || {
            UdpSocket::bind(format!("{ip_b}:0")).unwrap()
        })
        .unwrap();
        let to = sink.local_addr().unwrap();
        sink.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        // Room for the whole flood: a reader starved for a while must not lose what the
        // delayer released (the count checked is the delayer's, not the socket's).
        let size: libc::c_int = 32 << 20;
        // SAFETY: a valid socket descriptor and a pointer to a c_int of the length passed.
        let set = unsafe {
            libc::setsockopt(
                sink.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "SO_RCVBUFFORCE: {}", io::Error::last_os_error());
        let ip_a = net.ip_a.clone();
        let source = run_in(&net.a, move || {
            UdpSocket::bind(format!("{ip_a}:0")).unwrap()
        })
        .unwrap();
        let queue = free_queue_number(Some(&Netns::from(&net.b))).unwrap();
        // Each trial's rule, on its own port, goes with the test's namespace.
        queue_rule(&net.b, "udp", to.port(), queue);
        let delayer = start(
            queue,
            spec(5, 0, Distribution::Uniform),
            Some(&Netns::from(&net.b)),
            (RATE_PER_MS * 1000) as u32,
        )
        .unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 128];
            let mut got = 0u64;
            while sink.recv(&mut buf).is_ok() {
                got += 1;
            }
            got
        });
        let started = Instant::now();
        let mut sent = 0u64;
        while sent < RATE_PER_MS * MILLIS && started.elapsed() < Duration::from_secs(5) {
            let due = started.elapsed().as_micros() as u64 * RATE_PER_MS / 1000 + 1;
            while sent < due.min(RATE_PER_MS * MILLIS) {
                source.send_to(&[0u8; 64], to).unwrap();
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let received = reader.join().unwrap();
        let stats = delayer.stats();
        drop(delayer);
        (sent, received, stats)
    }

    #[test]
    fn stop_releases_every_held_packet_at_once() {
        let _serial = serial();
        let net = TestNet::new().expect("test net (needs root)");
        let server = EchoServer::start(&net);
        let queue = free_queue_number(Some(&Netns::from(&net.b))).unwrap();
        queue_rule(&net.b, "udp", server.udp.port(), queue);
        let delayer = start(
            queue,
            spec(2000, 0, Distribution::Uniform),
            Some(&Netns::from(&net.b)),
            100,
        )
        .unwrap();
        let to = server.udp;
        let client = run_in(&net.a, move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.connect(to).unwrap();
            s
        })
        .unwrap();
        for i in 0..50u8 {
            client.send(&[i; 32]).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while delayer.stats().packets_held < 50 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 64];
        assert!(
            client.recv(&mut buf).is_err(),
            "an echo came back while held"
        );
        assert_eq!(delayer.stats().packets_held, 50);
        let stopped = Instant::now();
        let final_stats = delayer.stop();
        client
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut echoes = 0;
        while echoes < 50 && client.recv(&mut buf).is_ok() {
            echoes += 1;
        }
        let took = stopped.elapsed();
        eprintln!("50 echoes {took:?} after stop; {final_stats:?}");
        assert_eq!(echoes, 50);
        assert!(took < Duration::from_millis(100), "{took:?}");
        assert_eq!(final_stats.packets_released_at_stop, 50);
        assert_eq!(final_stats.kernel_user_dropped, Some(0));
        // Rule still present, nobody bound: bypass lets traffic through undelayed.
        client.send(&[9; 32]).unwrap();
        let t = Instant::now();
        assert!(client.recv(&mut buf).is_ok() && t.elapsed() < Duration::from_millis(100));
    }

    /// Hold `n` UDP packets for 10 s, then stop: how long stop takes, and the final stats.
    pub(super) fn stop_with_held(n: u32) -> (u64, Duration, DelayStats) {
        let _serial = serial();
        let net = TestNet::new().expect("test net (needs root)");
        let server = EchoServer::start(&net);
        let queue = free_queue_number(Some(&Netns::from(&net.b))).unwrap();
        queue_rule(&net.b, "udp", server.udp.port(), queue);
        let spec = spec(10_000, 0, Distribution::Uniform);
        let delayer = start(queue, spec, Some(&Netns::from(&net.b)), n / 5).unwrap();
        let to = server.udp;
        let sent = run_in(&net.a, move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            (0..n)
                .filter(|i| s.send_to(&i.to_be_bytes(), to).is_ok())
                .count()
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut held = 0;
        while Instant::now() < deadline {
            held = delayer.stats().packets_held;
            if held as usize >= sent * 9 / 10 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let t = Instant::now();
        let s = delayer.stop();
        let took = t.elapsed();
        eprintln!("stop with {held} of {sent} held took {took:?}: {s:?}");
        (held, took, s)
    }

    #[test]
    fn stop_is_prompt_with_thousands_of_packets_held() {
        let (held, took, s) = stop_with_held(20_000);
        assert!(held >= 10_000, "only {held} held");
        assert!(took < Duration::from_millis(100), "{took:?}");
        assert_eq!(s.packets_released_at_stop, s.packets_seen);
    }

    #[test]
    fn free_queue_number_skips_a_bound_queue_and_busy_queues_are_named() {
        let _serial = serial();
        let net = TestNet::new().expect("test net (needs root)");
        let taken = free_queue_number(Some(&Netns::from(&net.b))).unwrap();
        let holder = run_in(&net.b, move || NfQueue::bind(taken, 1024))
            .unwrap()
            .unwrap();
        for _ in 0..QUEUE_RANGE.len() + 10 {
            assert_ne!(
                free_queue_number(Some(&Netns::from(&net.b))).unwrap(),
                taken
            );
        }
        let err = start(
            taken,
            spec(10, 0, Distribution::Uniform),
            Some(&Netns::from(&net.b)),
            10,
        )
        .unwrap_err();
        assert!(
            matches!(err, DelayerError::Queue(NfqError::QueueInUse(q)) if q == taken),
            "{err}"
        );
        assert!(
            err.to_string().contains("in use by another program"),
            "{err}"
        );
        // Another namespace has its own queues: the same number is free there.
        let other = free_queue_number(Some(&Netns::from(&net.a))).unwrap();
        let free_there = run_in(&net.a, move || NfQueue::bind(taken, 1024).is_ok()).unwrap();
        assert!(
            free_there,
            "queue {taken} should be free in {} ({other})",
            net.a
        );
        drop(holder);
    }

    #[test]
    fn traffic_flows_through_the_rule_when_no_delayer_is_bound() {
        let _serial = serial();
        let net = TestNet::new().expect("test net (needs root)");
        let server = EchoServer::start(&net);
        let queue = free_queue_number(Some(&Netns::from(&net.b))).unwrap();
        queue_rule(&net.b, "tcp", server.tcp.port(), queue);
        let r = rtts(&net, server.tcp, 1, 10, Duration::from_millis(5));
        assert_eq!(r.len(), 10);
        assert!(pct(&r, 1.0) < 50.0, "{r:?}");
        // And the rule did see the packets (so this is the bypass, not a missed rule).
        let out = command_in(&net.b, &["iptables", "-L", "INPUT", "-v", "-n", "-x"])
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        let packets: u64 = listing
            .lines()
            .find(|l| l.contains("NFQUEUE"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        assert!(packets >= 10, "{listing}");
    }
}

/// Accuracy table for the notes: `cargo test --lib accuracy_table -- --ignored --nocapture`.
#[cfg(test)]
mod measure {
    use super::tests::*;
    use super::*;
    use crate::sys::netns::TestNet;

    #[test]
    #[ignore = "measurement"]
    fn stop_with_100k_held() {
        let (held, took, _) = stop_with_held(100_000);
        println!("stop with {held} held: {took:?}");
    }

    #[test]
    #[ignore = "measurement, prints a table"]
    fn accuracy_table() {
        let _serial = serial();
        let net = TestNet::new().expect("test net (needs root)");
        let server = EchoServer::start(&net);
        let base = rtts(&net, server.tcp, 4, 50, Duration::from_millis(10));
        let base_mean = base.iter().sum::<f64>() / base.len() as f64;
        let base_p50 = pct(&base, 0.5);
        println!(
            "baseline paced RTT mean {base_mean:.3} p50 {base_p50:.3} p99 {:.3}",
            pct(&base, 0.99)
        );
        let queue = free_queue_number(Some(&Netns::from(&net.b))).unwrap();
        queue_rule(&net.b, "tcp", server.tcp.port(), queue);
        println!("spin_us target  mean_err p50_err p99_err max_err | late_p50 late_p99 (ms)");
        for spin_us in [0u64, 200, 400] {
            for target in [10u64, 50, 100] {
                let tuning = Tuning {
                    spin: Duration::from_micros(spin_us),
                    realtime: true,
                };
                let (r, s) = delayed_rtts(
                    &net,
                    &server,
                    queue,
                    spec(target, 0, Distribution::Uniform),
                    tuning,
                    200,
                );
                let mean = r.iter().sum::<f64>() / r.len() as f64;
                let t = target as f64 + base_p50;
                println!(
                    "{spin_us:7} {target:6}  {:+.3}  {:+.3}  {:+.3}  {:+.3} | {:.3} {:.3} stamped {}/{}",
                    mean - t,
                    pct(&r, 0.5) - t,
                    pct(&r, 0.99) - t,
                    pct(&r, 1.0) - t,
                    s.lateness_ms.p50,
                    s.lateness_ms.p99,
                    s.packets_kernel_stamped,
                    s.packets_seen
                );
            }
        }
    }
}
