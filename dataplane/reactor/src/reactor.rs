//! Reactors: one thread per core, pinned, running pollers in a loop.
//!
//! Each iteration a reactor runs the messages other threads sent it, every active poller,
//! the timed pollers that are due, and last the end-of-iteration pollers (where batched work
//! such as one `io_uring_enter` or one socket send per connection is flushed). It counts the
//! time of iterations in which something did work as busy, the rest as idle.
//!
//! In `hybrid` idle mode a reactor that has found nothing to do for the spin time sleeps in
//! `epoll_pwait2` on its eventfd, the file descriptors its users registered, and the deadline
//! of the next timed poller. Senders write the eventfd only while the reactor sleeps, so a busy
//! reactor gets messages without any syscall.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::str::FromStr;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::queue::{ArrayQueue, SegQueue};

use crate::clock::{duration_to_ticks, ticks, ticks_to_ns};
use crate::cores::{current_cpu, CoreList};

/// What a poller reports after a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStatus {
    /// It did work (the reactor stays awake).
    Busy,
    /// It found nothing to do.
    Idle,
    /// It is finished: the reactor removes it and calls its `shutdown`.
    Done,
}

/// A unit of work a reactor runs repeatedly.
pub trait Poller {
    fn poll(&mut self) -> PollStatus;
    /// Called once when the poller is removed or the reactor stops.
    fn shutdown(&mut self) {}
}

impl<F: FnMut() -> PollStatus> Poller for F {
    fn poll(&mut self) -> PollStatus {
        self()
    }
}

/// How a reactor behaves when it has nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdlePolicy {
    /// Busy-poll forever: lowest latency, owns the core. For benchmarks.
    Poll,
    /// Busy-poll for `spin`, then sleep until woken. For tests and small hosts.
    Hybrid { spin: Duration },
}

impl IdlePolicy {
    pub const DEFAULT_SPIN: Duration = Duration::from_micros(200);

    pub fn hybrid() -> Self {
        IdlePolicy::Hybrid {
            spin: Self::DEFAULT_SPIN,
        }
    }
}

impl FromStr for IdlePolicy {
    type Err = String;

    /// `poll`, `hybrid`, or `hybrid:SPINus` (e.g. `hybrid:50us`, `hybrid:2ms`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "poll" => Ok(IdlePolicy::Poll),
            "hybrid" => Ok(IdlePolicy::hybrid()),
            _ => {
                let spin = s.strip_prefix("hybrid:").ok_or_else(|| {
                    format!("unknown idle policy '{s}': expected poll or hybrid[:SPIN]")
                })?;
                let spin = if let Some(us) = spin.strip_suffix("us") {
                    us.parse().map(Duration::from_micros)
                } else if let Some(ms) = spin.strip_suffix("ms") {
                    ms.parse().map(Duration::from_millis)
                } else {
                    spin.parse().map(Duration::from_micros)
                }
                .map_err(|_| format!("bad spin time in '{s}'"))?;
                Ok(IdlePolicy::Hybrid { spin })
            }
        }
    }
}

impl fmt::Display for IdlePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdlePolicy::Poll => f.write_str("poll"),
            IdlePolicy::Hybrid { spin } => write!(f, "hybrid:{}us", spin.as_micros()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReactorConfig {
    pub cores: CoreList,
    pub idle: IdlePolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    #[error("core {0} is not available to this process")]
    CoreNotAvailable(usize),
    #[error("cannot pin reactor {index} to core {core}")]
    Pin { index: usize, core: usize },
    #[error("cannot create reactor {what}: {source}")]
    Os {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("reactor {0} failed to start")]
    Startup(usize),
    #[error("not called on a reactor thread")]
    NotOnReactor,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    #[error("the reactor did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the reactor has stopped")]
    Stopped,
}

type Message = Box<dyn FnOnce() + Send>;

/// Busy and idle time of one reactor since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReactorLoad {
    pub busy_ns: u64,
    pub idle_ns: u64,
    pub iterations: u64,
    pub sleeps: u64,
}

impl ReactorLoad {
    /// Fraction of time spent in iterations that did work, in [0, 1].
    pub fn busy_fraction(&self) -> f64 {
        let total = self.busy_ns + self.idle_ns;
        if total == 0 {
            0.0
        } else {
            self.busy_ns as f64 / total as f64
        }
    }

    /// The load accumulated between `earlier` and `self`.
    pub fn since(&self, earlier: &ReactorLoad) -> ReactorLoad {
        ReactorLoad {
            busy_ns: self.busy_ns.saturating_sub(earlier.busy_ns),
            idle_ns: self.idle_ns.saturating_sub(earlier.idle_ns),
            iterations: self.iterations.saturating_sub(earlier.iterations),
            sleeps: self.sleeps.saturating_sub(earlier.sleeps),
        }
    }
}

/// Accounting of one poller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollerStats {
    pub id: PollerId,
    pub name: String,
    pub kind: PollerKind,
    pub runs: u64,
    pub busy_runs: u64,
    pub busy_ns: u64,
    pub idle_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PollerId(u64);

/// When a poller runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollerKind {
    /// Every iteration.
    Active,
    /// At most once per period.
    Timed(Duration),
    /// Every iteration, after all other pollers (flushes of batched work).
    EndOfIteration,
}

/// Wakes a sleeping reactor. Writes its eventfd only while it sleeps.
struct Waker {
    eventfd: OwnedFd,
    sleeping: AtomicBool,
}

impl Waker {
    fn wake(&self) {
        // Pairs with the fence in `Reactor::sleep`: either the reactor sees our message
        // before sleeping, or we see it sleeping and write the eventfd.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            self.force_wake();
        }
    }

    fn force_wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
        unsafe {
            libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }

    fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a valid u64 from our non-blocking eventfd.
        unsafe {
            libc::read(self.eventfd.as_raw_fd(), (&mut v as *mut u64).cast(), 8);
        }
    }
}

struct Shared {
    index: usize,
    core: usize,
    actual_core: AtomicUsize,
    messages: SegQueue<Message>,
    waker: Waker,
    stop: AtomicBool,
    stopped: AtomicBool,
    busy_ticks: AtomicU64,
    idle_ticks: AtomicU64,
    iterations: AtomicU64,
    sleeps: AtomicU64,
}

/// A thread-safe handle to a reactor: send it work, ask it questions, read its load.
#[derive(Clone)]
pub struct ReactorHandle {
    shared: Arc<Shared>,
}

impl ReactorHandle {
    /// The reactor's index in its set (0-based).
    pub fn index(&self) -> usize {
        self.shared.index
    }

    /// The core it was asked to run on.
    pub fn core(&self) -> usize {
        self.shared.core
    }

    /// The core its thread reported running on after pinning.
    pub fn actual_core(&self) -> Option<usize> {
        match self.shared.actual_core.load(Ordering::Acquire) {
            usize::MAX => None,
            c => Some(c),
        }
    }

    /// True when called from this reactor's own thread.
    pub fn is_current(&self) -> bool {
        local().is_some_and(|l| Arc::ptr_eq(&l.ctx.shared, &self.shared))
    }

    /// Runs `f` on the reactor, soon. Fails only if the reactor has stopped.
    pub fn send(&self, f: impl FnOnce() + Send + 'static) -> Result<(), CallError> {
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(CallError::Stopped);
        }
        self.shared.messages.push(Box::new(f));
        self.shared.waker.wake();
        Ok(())
    }

    /// Runs `f` on the reactor and waits for its result. Called on the reactor itself, it runs
    /// `f` at once.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
        timeout: Duration,
    ) -> Result<R, CallError> {
        if self.is_current() {
            return Ok(f());
        }
        let (tx, rx) = crossbeam::channel::bounded(1);
        self.send(move || {
            let _ = tx.send(f());
        })?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(CallError::Timeout(timeout));
            }
            let slice = (deadline - now).min(Duration::from_millis(20));
            match rx.recv_timeout(slice) {
                Ok(r) => return Ok(r),
                Err(crossbeam::channel::RecvTimeoutError::Disconnected) => {
                    return Err(CallError::Stopped)
                }
                Err(crossbeam::channel::RecvTimeoutError::Timeout) => {
                    if self.shared.stopped.load(Ordering::Acquire) {
                        return Err(CallError::Stopped);
                    }
                }
            }
        }
    }

    /// Opens a typed, bounded, lock-free message channel to this reactor. `make_handler` runs
    /// on the reactor and builds the handler (which may hold reactor-local state); every
    /// message sent is passed to it on the reactor. The channel closes when all senders are
    /// gone and its queue is empty.
    pub fn open_channel<T, H, F>(
        &self,
        capacity: usize,
        make_handler: F,
        timeout: Duration,
    ) -> Result<MessageSender<T>, CallError>
    where
        T: Send + 'static,
        H: FnMut(T) + 'static,
        F: FnOnce() -> H + Send + 'static,
    {
        let queue = Arc::new(ArrayQueue::new(capacity.max(1)));
        let q = queue.clone();
        self.call(
            move || {
                let mut handler = make_handler();
                let local = local().expect("call runs on the reactor");
                local.register_poller("message-channel", move || {
                    let mut n = 0;
                    while n < 256 {
                        match q.pop() {
                            Some(m) => handler(m),
                            None => break,
                        }
                        n += 1;
                    }
                    if n > 0 {
                        PollStatus::Busy
                    } else if Arc::strong_count(&q) == 1 {
                        PollStatus::Done
                    } else {
                        PollStatus::Idle
                    }
                });
            },
            timeout,
        )?;
        Ok(MessageSender {
            queue,
            shared: self.shared.clone(),
        })
    }

    /// Busy and idle time so far (read without disturbing the reactor).
    pub fn load(&self) -> ReactorLoad {
        let s = &self.shared;
        ReactorLoad {
            busy_ns: ticks_to_ns(s.busy_ticks.load(Ordering::Relaxed)),
            idle_ns: ticks_to_ns(s.idle_ticks.load(Ordering::Relaxed)),
            iterations: s.iterations.load(Ordering::Relaxed),
            sleeps: s.sleeps.load(Ordering::Relaxed),
        }
    }

    /// Per-poller accounting, collected on the reactor.
    pub fn poller_stats(&self, timeout: Duration) -> Result<Vec<PollerStats>, CallError> {
        self.call(
            || local().map(|l| l.poller_stats()).unwrap_or_default(),
            timeout,
        )
    }
}

impl fmt::Debug for ReactorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReactorHandle")
            .field("index", &self.index())
            .field("core", &self.core())
            .finish()
    }
}

/// Sends typed messages to one reactor without allocating.
pub struct MessageSender<T> {
    queue: Arc<ArrayQueue<T>>,
    shared: Arc<Shared>,
}

impl<T> Clone for MessageSender<T> {
    fn clone(&self) -> Self {
        MessageSender {
            queue: self.queue.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<T: Send> MessageSender<T> {
    /// Queues `msg`; gives it back if the channel is full.
    pub fn send(&self, msg: T) -> Result<(), T> {
        self.queue.push(msg)?;
        self.shared.waker.wake();
        Ok(())
    }
}

struct PollerEntry {
    id: PollerId,
    name: String,
    kind: PollerKind,
    period_ticks: u64,
    next_run: u64,
    poller: Box<dyn Poller>,
    runs: u64,
    busy_runs: u64,
    busy_ticks: u64,
    idle_ticks: u64,
    done: bool,
}

struct LocalContext {
    shared: Arc<Shared>,
    idle: IdlePolicy,
    epoll: OwnedFd,
    pollers: RefCell<Vec<PollerEntry>>,
    added: RefCell<Vec<PollerEntry>>,
    removed: RefCell<Vec<PollerId>>,
    next_id: Cell<u64>,
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<LocalContext>>> = const { RefCell::new(None) };
}

/// The reactor the calling thread runs, if it is a reactor thread.
pub fn local() -> Option<LocalReactor> {
    LOCAL.with(|l| l.borrow().clone().map(|ctx| LocalReactor { ctx }))
}

/// The calling reactor's own view of itself: register pollers and wake-up file descriptors.
/// Only available on the reactor's thread (`!Send`).
#[derive(Clone)]
pub struct LocalReactor {
    ctx: Rc<LocalContext>,
}

impl LocalReactor {
    pub fn index(&self) -> usize {
        self.ctx.shared.index
    }

    pub fn core(&self) -> usize {
        self.ctx.shared.core
    }

    /// How this reactor idles. Pollers can skip wake-up plumbing (eventfds) that only a
    /// sleeping reactor needs when it never sleeps.
    pub fn idle_policy(&self) -> IdlePolicy {
        self.ctx.idle
    }

    pub fn handle(&self) -> ReactorHandle {
        ReactorHandle {
            shared: self.ctx.shared.clone(),
        }
    }

    /// A poller run every iteration.
    pub fn register_poller(&self, name: &str, poller: impl Poller + 'static) -> PollerId {
        self.add(name, PollerKind::Active, Box::new(poller))
    }

    /// A poller run at most once per `period`.
    pub fn register_timed_poller(
        &self,
        name: &str,
        period: Duration,
        poller: impl Poller + 'static,
    ) -> PollerId {
        self.add(name, PollerKind::Timed(period), Box::new(poller))
    }

    /// A poller run every iteration after all others, to flush what they batched.
    pub fn register_end_of_iteration_poller(
        &self,
        name: &str,
        poller: impl Poller + 'static,
    ) -> PollerId {
        self.add(name, PollerKind::EndOfIteration, Box::new(poller))
    }

    /// Removes a poller (its `shutdown` is called) before the next iteration.
    pub fn unregister_poller(&self, id: PollerId) {
        self.ctx.removed.borrow_mut().push(id);
    }

    /// Makes readability of `fd` wake the reactor from its idle sleep (level-triggered: the
    /// owner must drain it).
    pub fn register_wake_fd(&self, fd: RawFd) -> Result<(), ReactorError> {
        epoll_ctl(&self.ctx.epoll, libc::EPOLL_CTL_ADD, fd)
    }

    pub fn unregister_wake_fd(&self, fd: RawFd) -> Result<(), ReactorError> {
        epoll_ctl(&self.ctx.epoll, libc::EPOLL_CTL_DEL, fd)
    }

    /// Accounting of every poller registered on this reactor.
    pub fn poller_stats(&self) -> Vec<PollerStats> {
        let Ok(pollers) = self.ctx.pollers.try_borrow() else {
            return Vec::new();
        };
        pollers
            .iter()
            .map(|p| PollerStats {
                id: p.id,
                name: p.name.clone(),
                kind: p.kind,
                runs: p.runs,
                busy_runs: p.busy_runs,
                busy_ns: ticks_to_ns(p.busy_ticks),
                idle_ns: ticks_to_ns(p.idle_ticks),
            })
            .collect()
    }

    fn add(&self, name: &str, kind: PollerKind, poller: Box<dyn Poller>) -> PollerId {
        let id = PollerId(self.ctx.next_id.get());
        self.ctx.next_id.set(id.0 + 1);
        let period_ticks = match kind {
            PollerKind::Timed(p) => duration_to_ticks(p),
            _ => 0,
        };
        self.ctx.added.borrow_mut().push(PollerEntry {
            id,
            name: name.to_string(),
            kind,
            period_ticks,
            next_run: ticks().saturating_add(period_ticks),
            poller,
            runs: 0,
            busy_runs: 0,
            busy_ticks: 0,
            idle_ticks: 0,
            done: false,
        });
        id
    }
}

fn epoll_ctl(epoll: &OwnedFd, op: i32, fd: RawFd) -> Result<(), ReactorError> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: fd as u64,
    };
    // SAFETY: valid epoll fd and event struct.
    let rc = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut ev) };
    if rc != 0 {
        return Err(ReactorError::Os {
            what: "epoll registration",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// A started set of reactors, one per core of the core list.
pub struct Reactors {
    handles: Vec<ReactorHandle>,
    threads: Vec<JoinHandle<()>>,
}

impl Reactors {
    /// Starts one pinned reactor per core and waits until each runs on its core.
    pub fn start(config: &ReactorConfig) -> Result<Self, ReactorError> {
        let available: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        for &core in config.cores.cores() {
            if !available.contains(&core) {
                return Err(ReactorError::CoreNotAvailable(core));
            }
        }
        // Calibrate the tick rate before any reactor counts time.
        let _ = crate::clock::ticks_per_sec();
        let mut reactors = Reactors {
            handles: Vec::new(),
            threads: Vec::new(),
        };
        let (ready_tx, ready_rx) = crossbeam::channel::unbounded();
        for (index, &core) in config.cores.cores().iter().enumerate() {
            let eventfd = new_fd(
                // SAFETY: plain syscall.
                unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) },
                "eventfd",
            )?;
            let shared = Arc::new(Shared {
                index,
                core,
                actual_core: AtomicUsize::new(usize::MAX),
                messages: SegQueue::new(),
                waker: Waker {
                    eventfd,
                    sleeping: AtomicBool::new(false),
                },
                stop: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                busy_ticks: AtomicU64::new(0),
                idle_ticks: AtomicU64::new(0),
                iterations: AtomicU64::new(0),
                sleeps: AtomicU64::new(0),
            });
            let s = shared.clone();
            let idle = config.idle;
            let tx = ready_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("reactor-{index}"))
                .spawn(move || reactor_thread(s, idle, tx));
            match spawned {
                Ok(t) => {
                    reactors.threads.push(t);
                    reactors.handles.push(ReactorHandle { shared });
                }
                Err(e) => {
                    return Err(ReactorError::Os {
                        what: "thread",
                        source: e,
                    })
                }
            }
        }
        drop(ready_tx);
        for _ in 0..reactors.handles.len() {
            match ready_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(ReactorError::Startup(reactors.threads.len())),
            }
        }
        for h in &reactors.handles {
            tracing::info!(
                reactor = h.index(),
                core = h.core(),
                actual_core = ?h.actual_core(),
                idle = %config.idle,
                "reactor started"
            );
        }
        Ok(reactors)
    }

    pub fn handles(&self) -> &[ReactorHandle] {
        &self.handles
    }

    pub fn get(&self, index: usize) -> Option<&ReactorHandle> {
        self.handles.get(index)
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Stops every reactor: each drains its messages, calls every poller's `shutdown`, and
    /// exits. Idempotent.
    pub fn stop(&mut self) {
        for h in &self.handles {
            h.shared.stop.store(true, Ordering::SeqCst);
            h.shared.waker.force_wake();
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a reactor thread panicked");
            }
        }
    }
}

impl Drop for Reactors {
    fn drop(&mut self) {
        self.stop();
    }
}

fn new_fd(raw: RawFd, what: &'static str) -> Result<OwnedFd, ReactorError> {
    if raw < 0 {
        return Err(ReactorError::Os {
            what,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn reactor_thread(
    shared: Arc<Shared>,
    idle: IdlePolicy,
    ready: crossbeam::channel::Sender<Result<usize, ReactorError>>,
) {
    let index = shared.index;
    let core = shared.core;
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        let _ = ready.send(Err(ReactorError::Pin { index, core }));
        shared.stopped.store(true, Ordering::Release);
        return;
    }
    let actual = current_cpu().unwrap_or(usize::MAX);
    shared.actual_core.store(actual, Ordering::Release);
    if actual != core {
        tracing::warn!(reactor = index, core, actual, "reactor is not on its core");
    }
    // SAFETY: plain syscall.
    let epoll = match new_fd(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }, "epoll") {
        Ok(fd) => fd,
        Err(e) => {
            let _ = ready.send(Err(e));
            shared.stopped.store(true, Ordering::Release);
            return;
        }
    };
    let ctx = Rc::new(LocalContext {
        shared: shared.clone(),
        idle,
        epoll,
        pollers: RefCell::new(Vec::new()),
        added: RefCell::new(Vec::new()),
        removed: RefCell::new(Vec::new()),
        next_id: Cell::new(1),
    });
    if let Err(e) = epoll_ctl(
        &ctx.epoll,
        libc::EPOLL_CTL_ADD,
        shared.waker.eventfd.as_raw_fd(),
    ) {
        let _ = ready.send(Err(e));
        shared.stopped.store(true, Ordering::Release);
        return;
    }
    LOCAL.with(|l| *l.borrow_mut() = Some(ctx.clone()));
    let _ = ready.send(Ok(actual));
    drop(ready);

    run_loop(&ctx, idle);

    shutdown(&ctx);
    LOCAL.with(|l| *l.borrow_mut() = None);
}

/// Runs up to `max` queued messages; returns how many ran.
fn run_messages(shared: &Shared, max: usize) -> usize {
    let mut n = 0;
    while n < max {
        match shared.messages.pop() {
            Some(m) => m(),
            None => break,
        }
        n += 1;
    }
    n
}

/// Moves newly registered pollers into the running list (end-of-iteration ones last).
fn apply_additions(ctx: &LocalContext) {
    let mut added = ctx.added.borrow_mut();
    if added.is_empty() {
        return;
    }
    let mut pollers = ctx.pollers.borrow_mut();
    for p in added.drain(..) {
        if p.kind == PollerKind::EndOfIteration {
            pollers.push(p);
        } else {
            let at = pollers
                .iter()
                .position(|e| e.kind == PollerKind::EndOfIteration)
                .unwrap_or(pollers.len());
            pollers.insert(at, p);
        }
    }
}

/// Removes unregistered and finished pollers, calling their `shutdown` outside any borrow
/// (a shutdown hook may register or remove pollers itself).
fn apply_removals(ctx: &LocalContext, gone: &mut Vec<PollerEntry>, any_done: bool) {
    if !any_done && ctx.removed.borrow().is_empty() {
        return;
    }
    {
        let mut removed = ctx.removed.borrow_mut();
        let mut pollers = ctx.pollers.borrow_mut();
        let mut added = ctx.added.borrow_mut();
        for id in removed.drain(..) {
            if let Some(i) = pollers.iter().position(|p| p.id == id) {
                gone.push(pollers.remove(i));
            } else if let Some(i) = added.iter().position(|p| p.id == id) {
                gone.push(added.remove(i));
            }
        }
        let mut i = 0;
        while i < pollers.len() {
            if pollers[i].done {
                gone.push(pollers.remove(i));
            } else {
                i += 1;
            }
        }
    }
    for mut p in gone.drain(..) {
        p.poller.shutdown();
    }
}

fn run_loop(ctx: &Rc<LocalContext>, idle: IdlePolicy) {
    let shared = &ctx.shared;
    let spin_ticks = match idle {
        IdlePolicy::Poll => u64::MAX,
        IdlePolicy::Hybrid { spin } => duration_to_ticks(spin),
    };
    let mut last_busy = ticks();
    // Reused every iteration so that removals never allocate in steady state.
    let mut gone: Vec<PollerEntry> = Vec::with_capacity(8);
    loop {
        let start = ticks();
        let mut busy = run_messages(shared, 256) > 0;
        apply_removals(ctx, &mut gone, false);
        apply_additions(ctx);
        let mut any_done = false;
        for p in ctx.pollers.borrow_mut().iter_mut() {
            let t0 = ticks();
            if p.period_ticks != 0 && t0 < p.next_run {
                continue;
            }
            let status = p.poller.poll();
            let t1 = ticks();
            p.runs += 1;
            match status {
                PollStatus::Busy => {
                    p.busy_runs += 1;
                    p.busy_ticks += t1 - t0;
                    busy = true;
                }
                PollStatus::Idle => p.idle_ticks += t1 - t0,
                PollStatus::Done => {
                    p.busy_ticks += t1 - t0;
                    p.done = true;
                    any_done = true;
                    busy = true;
                }
            }
            if p.period_ticks != 0 {
                p.next_run = t1 + p.period_ticks;
            }
        }
        if any_done {
            apply_removals(ctx, &mut gone, true);
        }
        let end = ticks();
        let elapsed = end.wrapping_sub(start);
        if busy {
            shared.busy_ticks.fetch_add(elapsed, Ordering::Relaxed);
            last_busy = end;
        } else {
            shared.idle_ticks.fetch_add(elapsed, Ordering::Relaxed);
        }
        shared.iterations.fetch_add(1, Ordering::Relaxed);
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        if !busy && end.wrapping_sub(last_busy) >= spin_ticks {
            let slept_from = ticks();
            sleep(ctx);
            let woke = ticks();
            shared
                .idle_ticks
                .fetch_add(woke.wrapping_sub(slept_from), Ordering::Relaxed);
            last_busy = woke;
        }
    }
}

/// Sleeps until a message, a registered fd or the next timed poller's deadline (unless work
/// arrived meanwhile).
fn sleep(ctx: &LocalContext) {
    let shared = &ctx.shared;
    let now = ticks();
    let next_deadline = ctx
        .pollers
        .borrow()
        .iter()
        .filter(|p| p.period_ticks != 0)
        .map(|p| p.next_run)
        .min();
    // A safety net: never sleep more than a second even if nothing is due.
    let max_ns = 1_000_000_000u64;
    let timeout_ns = next_deadline
        .map(|d| ticks_to_ns(d.saturating_sub(now)))
        .unwrap_or(max_ns)
        .min(max_ns);
    shared.waker.sleeping.store(true, Ordering::SeqCst);
    fence(Ordering::SeqCst);
    if !shared.messages.is_empty()
        || shared.stop.load(Ordering::SeqCst)
        || !ctx.added.borrow().is_empty()
    {
        shared.waker.sleeping.store(false, Ordering::SeqCst);
        return;
    }
    shared.sleeps.fetch_add(1, Ordering::Relaxed);
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    let mut events: [libc::epoll_event; 16] = [libc::epoll_event { events: 0, u64: 0 }; 16];
    // SAFETY: valid epoll fd, event buffer and timespec; no signal mask.
    let n = unsafe {
        libc::syscall(
            libc::SYS_epoll_pwait2,
            ctx.epoll.as_raw_fd(),
            events.as_mut_ptr(),
            events.len() as libc::c_int,
            &ts as *const libc::timespec,
            std::ptr::null::<libc::sigset_t>(),
            0usize,
        )
    };
    shared.waker.sleeping.store(false, Ordering::SeqCst);
    let efd = shared.waker.eventfd.as_raw_fd() as u64;
    for ev in events.iter().take(n.max(0) as usize) {
        if ev.u64 == efd {
            shared.waker.drain();
        }
    }
}

fn shutdown(ctx: &Rc<LocalContext>) {
    let shared = &ctx.shared;
    // Drain messages (they may add pollers or send more messages to us).
    let mut gone = Vec::new();
    loop {
        let n = run_messages(shared, usize::MAX);
        apply_removals(ctx, &mut gone, false);
        apply_additions(ctx);
        if n == 0 && shared.messages.is_empty() {
            break;
        }
    }
    shared.stopped.store(true, Ordering::SeqCst);
    let pollers: Vec<PollerEntry> = ctx.pollers.borrow_mut().drain(..).collect();
    for mut p in pollers {
        p.poller.shutdown();
    }
    // Anything that raced in after `stopped` is dropped, which fails its caller's wait.
    while let Some(m) = shared.messages.pop() {
        drop(m);
    }
    tracing::info!(reactor = shared.index, "reactor stopped");
}
