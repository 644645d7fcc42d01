//! Data buffers for I/O: fixed-size, 4 KiB-aligned buffers in size classes, carved out of one
//! memory region per class (hugepages when available).
//!
//! Taking and returning a buffer on a reactor touches only that thread's cache (a `Vec` of free
//! indices); the cache refills from and spills to the pool's global lock-free queue in batches.
//! When a pool runs dry, callers queue a [`BufWaiter`] and are served in FIFO order as buffers
//! come back, instead of allocating or failing.
//!
//! [`IoBuf`] and [`SgList`] are `!Send`: a buffer belongs to the reactor that took it. To hand
//! one to another core, convert it with [`IoBuf::into_send`] (a message boundary).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::ptr::NonNull;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam::queue::ArrayQueue;
use smallvec::SmallVec;

use crate::memory::{MemRegion, MemoryError, MemoryKind, PAGE_SIZE};

/// Segments an [`SgList`] holds without a heap allocation.
pub const SG_INLINE: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("buffer pool needs at least one size class")]
    NoClasses,
    #[error("buffer class size {0} is not a non-zero multiple of 4096")]
    BadSize(usize),
    #[error("buffer class sizes must increase strictly ({0} after {1})")]
    NotIncreasing(usize, usize),
    #[error("buffer class of {size} bytes has no buffers")]
    NoBuffers { size: usize },
    #[error("too many size classes ({0}, max 255)")]
    TooManyClasses(usize),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("the global buffer pool is already initialised")]
    AlreadyInitialised,
}

/// One size class: `count` buffers of `size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassConfig {
    pub size: usize,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Size classes in increasing size order.
    pub classes: Vec<ClassConfig>,
    pub prefer_hugepages: bool,
}

impl Default for PoolConfig {
    /// 16 MiB of 4 KiB, 16 MiB of 64 KiB and 64 MiB of 128 KiB buffers.
    fn default() -> Self {
        PoolConfig {
            classes: vec![
                ClassConfig {
                    size: 4096,
                    count: 4096,
                },
                ClassConfig {
                    size: 64 << 10,
                    count: 256,
                },
                ClassConfig {
                    size: 128 << 10,
                    count: 512,
                },
            ],
            prefer_hugepages: true,
        }
    }
}

struct ClassShared {
    size: usize,
    count: usize,
    region: MemRegion,
    free: ArrayQueue<u32>,
    /// Buffers a thread cache keeps before it spills back to `free`.
    cache_target: usize,
}

struct PoolShared {
    id: u64,
    classes: Vec<ClassShared>,
}

/// A pool of I/O buffers shared by all reactors. Cheap to clone.
#[derive(Clone)]
pub struct BufferPool {
    shared: Arc<PoolShared>,
}

static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

impl BufferPool {
    pub fn new(config: &PoolConfig) -> Result<Self, PoolError> {
        if config.classes.is_empty() {
            return Err(PoolError::NoClasses);
        }
        if config.classes.len() > 255 {
            return Err(PoolError::TooManyClasses(config.classes.len()));
        }
        let mut prev = 0;
        for c in &config.classes {
            if c.size == 0 || c.size % PAGE_SIZE != 0 || c.size > u32::MAX as usize {
                return Err(PoolError::BadSize(c.size));
            }
            if c.size <= prev {
                return Err(PoolError::NotIncreasing(c.size, prev));
            }
            if c.count == 0 || c.count > u32::MAX as usize {
                return Err(PoolError::NoBuffers { size: c.size });
            }
            prev = c.size;
        }
        let mut classes = Vec::with_capacity(config.classes.len());
        for c in &config.classes {
            let region = MemRegion::allocate(c.size * c.count, config.prefer_hugepages)?;
            let free = ArrayQueue::new(c.count);
            for i in 0..c.count as u32 {
                // Cannot fail: the queue holds exactly `count` entries.
                let _ = free.push(i);
            }
            classes.push(ClassShared {
                size: c.size,
                count: c.count,
                region,
                free,
                cache_target: (c.count / 8).clamp(1, 64),
            });
        }
        let pool = BufferPool {
            shared: Arc::new(PoolShared {
                id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
                classes,
            }),
        };
        tracing::debug!(pool = pool.id(), memory = %pool.memory_kind(), "buffer pool created");
        Ok(pool)
    }

    /// A process-unique id, used to tell pools apart (e.g. registered with io_uring).
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// What backs the pool: hugepages only if every class got them.
    pub fn memory_kind(&self) -> MemoryKind {
        if self
            .shared
            .classes
            .iter()
            .all(|c| c.region.kind() == MemoryKind::HugePages)
        {
            MemoryKind::HugePages
        } else {
            MemoryKind::Anonymous
        }
    }

    pub fn class_sizes(&self) -> impl Iterator<Item = usize> + '_ {
        self.shared.classes.iter().map(|c| c.size)
    }

    /// The memory regions, one per class, in class order (for io_uring buffer registration).
    pub fn regions(&self) -> impl Iterator<Item = (*mut u8, usize)> + '_ {
        self.shared
            .classes
            .iter()
            .map(|c| (c.region.as_ptr(), c.region.len()))
    }

    /// Total buffers of class `class`.
    pub fn class_count(&self, class: usize) -> usize {
        self.shared.classes.get(class).map_or(0, |c| c.count)
    }

    /// Buffers of `class` in the global queue (not counting those cached by threads).
    pub fn globally_free(&self, class: usize) -> usize {
        self.shared.classes.get(class).map_or(0, |c| c.free.len())
    }

    /// This thread's cache of this pool, created on first use.
    pub fn local(&self) -> PoolCache {
        thread_local! {
            static CACHES: RefCell<Vec<(u64, Weak<CacheInner>)>> = const { RefCell::new(Vec::new()) };
        }
        CACHES.with(|caches| {
            let mut caches = caches.borrow_mut();
            caches.retain(|(_, w)| w.strong_count() > 0);
            if let Some((_, w)) = caches.iter().find(|(id, _)| *id == self.id()) {
                if let Some(inner) = w.upgrade() {
                    return PoolCache { inner };
                }
            }
            let free = self
                .shared
                .classes
                .iter()
                .map(|c| Vec::with_capacity(2 * c.cache_target + 1))
                .collect();
            let inner = Rc::new(CacheInner {
                pool: self.shared.clone(),
                state: RefCell::new(CacheState {
                    free,
                    waiters: VecDeque::with_capacity(64),
                }),
            });
            caches.push((self.id(), Rc::downgrade(&inner)));
            PoolCache { inner }
        })
    }
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("id", &self.id())
            .field("memory", &self.memory_kind())
            .field("classes", &self.class_sizes().collect::<Vec<_>>())
            .finish()
    }
}

static GLOBAL_POOL: OnceLock<BufferPool> = OnceLock::new();

/// Creates the process-wide pool with `config`. Call once, before the first [`global_pool`].
pub fn init_global_pool(config: &PoolConfig) -> Result<&'static BufferPool, PoolError> {
    let pool = BufferPool::new(config)?;
    GLOBAL_POOL
        .set(pool)
        .map_err(|_| PoolError::AlreadyInitialised)?;
    GLOBAL_POOL.get().ok_or(PoolError::AlreadyInitialised)
}

/// The process-wide pool, created with the default configuration if nobody configured it.
pub fn global_pool() -> Result<&'static BufferPool, PoolError> {
    if let Some(p) = GLOBAL_POOL.get() {
        return Ok(p);
    }
    let pool = BufferPool::new(&PoolConfig::default())?;
    // A racing initialiser may win; either pool is fine, the loser is dropped.
    let _ = GLOBAL_POOL.set(pool);
    GLOBAL_POOL.get().ok_or(PoolError::AlreadyInitialised)
}

struct CacheState {
    free: Vec<Vec<u32>>,
    waiters: VecDeque<Rc<WaiterInner>>,
}

struct CacheInner {
    pool: Arc<PoolShared>,
    state: RefCell<CacheState>,
}

impl CacheInner {
    /// Takes one buffer index of `class`, refilling from the global queue in a batch.
    fn take_index(&self, st: &mut CacheState, class: usize) -> Option<u32> {
        if let Some(i) = st.free[class].pop() {
            return Some(i);
        }
        let c = &self.pool.classes[class];
        let list = &mut st.free[class];
        for _ in 0..c.cache_target {
            match c.free.pop() {
                Some(i) => list.push(i),
                None => break,
            }
        }
        list.pop()
    }

    fn put_index(&self, st: &mut CacheState, class: usize, index: u32) {
        let c = &self.pool.classes[class];
        let list = &mut st.free[class];
        list.push(index);
        if list.len() > 2 * c.cache_target {
            for _ in 0..c.cache_target {
                if let Some(i) = list.pop() {
                    // Cannot fail: the global queue has room for every buffer of the class.
                    let _ = c.free.push(i);
                }
            }
        }
    }

    /// The classes of the buffers that make up `len` bytes: one buffer of the smallest class
    /// that fits, or as many of the largest as needed plus one that fits the rest.
    fn plan(&self, len: usize, mut each: impl FnMut(usize, usize) -> bool) -> bool {
        let classes = &self.pool.classes;
        let largest = classes.len() - 1;
        let mut left = len;
        while left > 0 {
            let class = if left >= classes[largest].size {
                largest
            } else {
                classes
                    .iter()
                    .position(|c| c.size >= left)
                    .unwrap_or(largest)
            };
            let take = left.min(classes[class].size);
            if !each(class, take) {
                return false;
            }
            left -= take;
        }
        true
    }

    fn try_take(this: &Rc<CacheInner>, st: &mut CacheState, len: usize) -> Option<SgList> {
        // Reserve indices first so that a partial failure can be undone without building
        // buffers (whose drop would re-enter the borrowed state).
        let mut taken: SmallVec<[(usize, u32, usize); SG_INLINE]> = SmallVec::new();
        let ok = this.plan(len, |class, take| match this.take_index(st, class) {
            Some(index) => {
                taken.push((class, index, take));
                true
            }
            None => false,
        });
        if !ok {
            for (class, index, _) in taken {
                this.put_index(st, class, index);
            }
            return None;
        }
        let mut sg = SgList::new();
        for (class, index, take) in taken {
            let c = &this.pool.classes[class];
            // SAFETY: index < count, so the offset stays inside the class region.
            let ptr = unsafe { c.region.as_ptr().add(index as usize * c.size) };
            sg.push(IoBuf {
                // SAFETY: region pointers are non-null mmap results.
                ptr: unsafe { NonNull::new_unchecked(ptr) },
                len: take as u32,
                index,
                class: class as u8,
                cache: this.clone(),
            });
        }
        Some(sg)
    }

    /// Hands freed buffers to queued waiters, in order, as long as the head can be served.
    fn serve_waiters(this: &Rc<CacheInner>) {
        loop {
            let mut st = this.state.borrow_mut();
            let Some(head) = st.waiters.front().cloned() else {
                return;
            };
            if head.cancelled.get() {
                st.waiters.pop_front();
                head.queued.set(false);
                continue;
            }
            let Some(sg) = Self::try_take(this, &mut st, head.want.get()) else {
                return;
            };
            st.waiters.pop_front();
            drop(st);
            head.queued.set(false);
            *head.ready.borrow_mut() = Some(sg);
        }
    }
}

impl Drop for CacheInner {
    fn drop(&mut self) {
        // The thread is done with this pool: everything it cached goes back to the global queue.
        let st = self.state.get_mut();
        for (class, list) in st.free.iter_mut().enumerate() {
            for i in list.drain(..) {
                let _ = self.pool.classes[class].free.push(i);
            }
        }
    }
}

/// A thread's handle on a [`BufferPool`]: allocation and return without locks or heap use.
#[derive(Clone)]
pub struct PoolCache {
    inner: Rc<CacheInner>,
}

impl PoolCache {
    /// Buffers for `len` bytes, or `None` if the pool is exhausted or others are already
    /// waiting (waiters are served first, in order).
    pub fn try_alloc(&self, len: usize) -> Option<SgList> {
        let mut st = self.inner.state.borrow_mut();
        if !st.waiters.is_empty() {
            return None;
        }
        CacheInner::try_take(&self.inner, &mut st, len)
    }

    /// Buffers for `len` bytes now, or `None` and `waiter` is queued; poll it with
    /// [`BufWaiter::poll`] until it yields the buffers.
    pub fn alloc_or_wait(&self, len: usize, waiter: &BufWaiter) -> Option<SgList> {
        if let Some(sg) = self.try_alloc(len) {
            return Some(sg);
        }
        let w = &waiter.inner;
        if !w.queued.get() {
            w.want.set(len);
            w.cancelled.set(false);
            w.queued.set(true);
            self.inner.state.borrow_mut().waiters.push_back(w.clone());
        }
        None
    }

    /// A waiter for this cache; keep one per request slot and reuse it.
    pub fn waiter(&self) -> BufWaiter {
        BufWaiter {
            inner: Rc::new(WaiterInner {
                want: Cell::new(0),
                queued: Cell::new(false),
                cancelled: Cell::new(false),
                ready: RefCell::new(None),
            }),
            cache: self.inner.clone(),
        }
    }

    /// Number of waiters queued on this thread.
    pub fn waiting(&self) -> usize {
        self.inner.state.borrow().waiters.len()
    }

    pub fn pool_id(&self) -> u64 {
        self.inner.pool.id
    }
}

struct WaiterInner {
    want: Cell<usize>,
    queued: Cell<bool>,
    cancelled: Cell<bool>,
    ready: RefCell<Option<SgList>>,
}

/// A place in a pool cache's FIFO of requests waiting for buffers.
pub struct BufWaiter {
    inner: Rc<WaiterInner>,
    cache: Rc<CacheInner>,
}

impl BufWaiter {
    /// The buffers, once it is this waiter's turn and they are free.
    pub fn poll(&self) -> Option<SgList> {
        if let Some(sg) = self.inner.ready.borrow_mut().take() {
            return Some(sg);
        }
        if self.inner.queued.get() {
            // Buffers may have come back to the global queue from other threads.
            CacheInner::serve_waiters(&self.cache);
        }
        self.inner.ready.borrow_mut().take()
    }

    /// True while queued and not yet served.
    pub fn is_waiting(&self) -> bool {
        self.inner.queued.get()
    }

    /// Leaves the queue; buffers already handed over are returned to the pool.
    pub fn cancel(&self) {
        if self.inner.queued.get() {
            self.inner.cancelled.set(true);
        }
        let ready = self.inner.ready.borrow_mut().take();
        drop(ready);
    }
}

impl Drop for BufWaiter {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// One pool buffer. Returned to its thread's cache when dropped.
pub struct IoBuf {
    ptr: NonNull<u8>,
    len: u32,
    index: u32,
    class: u8,
    cache: Rc<CacheInner>,
}

impl IoBuf {
    /// Bytes in use (at most the capacity).
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The size of the buffer's class.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.cache.pool.classes[self.class as usize].size
    }

    /// Sets the bytes in use; clamps to the capacity.
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.capacity()) as u32;
    }

    #[inline]
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    #[inline]
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the buffer is ours alone while this handle lives; len <= capacity.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len as usize) }
    }

    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len as usize) }
    }

    /// Which pool the buffer came from.
    pub fn pool_id(&self) -> u64 {
        self.cache.pool.id
    }

    /// The class index, which is also the index of the class's memory region.
    pub fn class(&self) -> usize {
        self.class as usize
    }

    /// Converts to a handle that may cross to another thread (returned to the global queue
    /// when dropped there).
    pub fn into_send(self) -> SendIoBuf {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped; we move its Rc out exactly once.
        let cache = unsafe { std::ptr::read(&this.cache) };
        let out = SendIoBuf {
            ptr: this.ptr,
            len: this.len,
            index: this.index,
            class: this.class,
            pool: cache.pool.clone(),
        };
        drop(cache);
        out
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        let waiters = {
            let mut st = self.cache.state.borrow_mut();
            self.cache
                .put_index(&mut st, self.class as usize, self.index);
            !st.waiters.is_empty()
        };
        if waiters {
            CacheInner::serve_waiters(&self.cache);
        }
    }
}

impl fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .field("class", &self.class)
            .finish()
    }
}

/// A buffer in transit between threads.
pub struct SendIoBuf {
    ptr: NonNull<u8>,
    len: u32,
    index: u32,
    class: u8,
    pool: Arc<PoolShared>,
}

// SAFETY: the handle owns its buffer exclusively; the pool's shared state is thread-safe.
unsafe impl Send for SendIoBuf {}

impl SendIoBuf {
    /// Adopts the buffer into the receiving thread's cache of its pool.
    pub fn into_local(self) -> IoBuf {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: moved out exactly once; `this` is never dropped.
        let pool = unsafe { std::ptr::read(&this.pool) };
        let cache = BufferPool { shared: pool }.local();
        IoBuf {
            ptr: this.ptr,
            len: this.len,
            index: this.index,
            class: this.class,
            cache: cache.inner,
        }
    }
}

impl Drop for SendIoBuf {
    fn drop(&mut self) {
        let _ = self.pool.classes[self.class as usize].free.push(self.index);
    }
}

/// A scatter-gather list of pool buffers; up to [`SG_INLINE`] segments without a heap allocation.
#[derive(Default)]
pub struct SgList {
    bufs: SmallVec<[IoBuf; SG_INLINE]>,
}

impl SgList {
    pub fn new() -> Self {
        SgList {
            bufs: SmallVec::new(),
        }
    }

    pub fn push(&mut self, buf: IoBuf) {
        self.bufs.push(buf);
    }

    /// Total bytes in use over all segments.
    pub fn len(&self) -> usize {
        self.bufs.iter().map(|b| b.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bufs.iter().all(|b| b.is_empty())
    }

    pub fn segments(&self) -> &[IoBuf] {
        &self.bufs
    }

    pub fn segments_mut(&mut self) -> &mut [IoBuf] {
        &mut self.bufs
    }

    pub fn num_segments(&self) -> usize {
        self.bufs.len()
    }

    /// Drops every segment (returning them to the pool).
    pub fn clear(&mut self) {
        self.bufs.clear();
    }

    /// Calls `f` on consecutive byte ranges covering `[offset, offset + len)` of the list.
    /// Returns false if the list is shorter than that.
    pub fn for_each_chunk(&self, offset: usize, len: usize, mut f: impl FnMut(&[u8])) -> bool {
        let mut skip = offset;
        let mut left = len;
        for b in &self.bufs {
            if left == 0 {
                break;
            }
            let s = b.as_slice();
            if skip >= s.len() {
                skip -= s.len();
                continue;
            }
            let n = (s.len() - skip).min(left);
            f(&s[skip..skip + n]);
            skip = 0;
            left -= n;
        }
        left == 0
    }

    /// Mutable variant of [`SgList::for_each_chunk`].
    pub fn for_each_chunk_mut(
        &mut self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(&mut [u8]),
    ) -> bool {
        let mut done = 0;
        for chunk in self.chunks_mut(offset, len) {
            done += chunk.len();
            f(chunk);
        }
        done == len
    }

    /// The byte ranges covering `[offset, offset + len)` of the list, in order, as mutable
    /// slices (fewer bytes if the list is shorter): what a `readv` straight into the list
    /// takes.
    pub fn chunks_mut(&mut self, offset: usize, len: usize) -> impl Iterator<Item = &mut [u8]> {
        let mut skip = offset;
        let mut left = len;
        self.bufs.iter_mut().filter_map(move |b| {
            if left == 0 {
                return None;
            }
            let s = IoBuf::as_mut_slice(b);
            if skip >= s.len() {
                skip -= s.len();
                return None;
            }
            let n = (s.len() - skip).min(left);
            let chunk = &mut s[skip..skip + n];
            skip = 0;
            left -= n;
            Some(chunk)
        })
    }

    /// Copies `src` into the start of the list. Returns false if the list is too short.
    pub fn copy_from_slice(&mut self, src: &[u8]) -> bool {
        let mut at = 0;
        self.for_each_chunk_mut(0, src.len(), |dst| {
            dst.copy_from_slice(&src[at..at + dst.len()]);
            at += dst.len();
        })
    }

    /// Copies the start of the list into `dst`. Returns false if the list is too short.
    pub fn copy_to_slice(&self, dst: &mut [u8]) -> bool {
        let mut at = 0;
        let n = dst.len();
        self.for_each_chunk(0, n, |src| {
            dst[at..at + src.len()].copy_from_slice(src);
            at += src.len();
        })
    }

    /// Fills the first `len` bytes with `byte`.
    pub fn fill(&mut self, len: usize, byte: u8) -> bool {
        self.for_each_chunk_mut(0, len, |d| d.fill(byte))
    }
}

impl fmt::Debug for SgList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SgList")
            .field("segments", &self.bufs.len())
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_pool(count4k: usize, count64k: usize) -> BufferPool {
        BufferPool::new(&PoolConfig {
            classes: vec![
                ClassConfig {
                    size: 4096,
                    count: count4k,
                },
                ClassConfig {
                    size: 65536,
                    count: count64k,
                },
            ],
            prefer_hugepages: false,
        })
        .unwrap()
    }

    #[test]
    fn rejects_bad_configs() {
        let cfg = |classes| PoolConfig {
            classes,
            prefer_hugepages: false,
        };
        assert!(matches!(
            BufferPool::new(&cfg(vec![])),
            Err(PoolError::NoClasses)
        ));
        assert!(matches!(
            BufferPool::new(&cfg(vec![ClassConfig {
                size: 1000,
                count: 1
            }])),
            Err(PoolError::BadSize(1000))
        ));
        assert!(matches!(
            BufferPool::new(&cfg(vec![
                ClassConfig {
                    size: 8192,
                    count: 1
                },
                ClassConfig {
                    size: 4096,
                    count: 1
                }
            ])),
            Err(PoolError::NotIncreasing(4096, 8192))
        ));
        assert!(matches!(
            BufferPool::new(&cfg(vec![ClassConfig {
                size: 4096,
                count: 0
            }])),
            Err(PoolError::NoBuffers { .. })
        ));
    }

    #[test]
    fn picks_classes_and_builds_sg_lists() {
        let pool = small_pool(8, 4);
        let cache = pool.local();
        let a = cache.try_alloc(512).unwrap();
        assert_eq!(a.num_segments(), 1);
        assert_eq!(a.segments()[0].capacity(), 4096);
        assert_eq!(a.len(), 512);
        let b = cache.try_alloc(5000).unwrap();
        assert_eq!(b.segments()[0].capacity(), 65536);
        let c = cache.try_alloc(65536 * 2 + 100).unwrap();
        let caps: Vec<usize> = c.segments().iter().map(|s| s.capacity()).collect();
        assert_eq!(caps, vec![65536, 65536, 4096]);
        assert_eq!(c.len(), 65536 * 2 + 100);
        for s in c.segments() {
            assert_eq!(s.as_ptr() as usize % 4096, 0, "buffers are 4 KiB aligned");
        }
    }

    #[test]
    fn copy_helpers_cross_segments() {
        let pool = small_pool(8, 4);
        let cache = pool.local();
        let mut sg = cache.try_alloc(65536 + 4096).unwrap();
        let src: Vec<u8> = (0..sg.len()).map(|i| (i * 7 % 251) as u8).collect();
        assert!(sg.copy_from_slice(&src));
        let mut back = vec![0u8; src.len()];
        assert!(sg.copy_to_slice(&mut back));
        assert_eq!(src, back);
        let mut chunks = 0;
        assert!(sg.for_each_chunk(65530, 10, |c| {
            chunks += 1;
            assert!(!c.is_empty());
        }));
        assert_eq!(chunks, 2);
        assert!(!sg.copy_to_slice(&mut vec![0u8; src.len() + 1]));
        // The same range as mutable slices: 6 bytes at the end of the first segment, 4 at
        // the start of the second; past the end the ranges stop short.
        let lens: Vec<usize> = sg.chunks_mut(65530, 10).map(|c| c.len()).collect();
        assert_eq!(lens, vec![6, 4]);
        for c in sg.chunks_mut(65530, 10) {
            c.fill(0xEE);
        }
        assert!(sg.copy_to_slice(&mut back));
        assert!(back[65530..65540].iter().all(|&b| b == 0xEE));
        assert_eq!(back[65529], src[65529]);
        assert_eq!(back[65540], src[65540]);
        let total: usize = sg.chunks_mut(65536, 8192).map(|c| c.len()).sum();
        assert_eq!(total, 4096);
    }

    #[test]
    fn exhaustion_queues_waiters_in_order() {
        let pool = small_pool(2, 1);
        let cache = pool.local();
        let first = cache.try_alloc(4096).unwrap();
        let second = cache.try_alloc(4096).unwrap();
        assert!(cache.try_alloc(4096).is_none());

        let w1 = cache.waiter();
        let w2 = cache.waiter();
        assert!(cache.alloc_or_wait(4096, &w1).is_none());
        assert!(cache.alloc_or_wait(4096, &w2).is_none());
        assert_eq!(cache.waiting(), 2);
        assert!(w1.poll().is_none());
        // A newcomer cannot jump the queue even once a buffer is back.
        drop(first);
        assert!(cache.try_alloc(4096).is_none());
        let got1 = w1.poll().expect("first waiter is served first");
        assert!(w2.poll().is_none());
        drop(second);
        let got2 = w2.poll().expect("second waiter served next");
        assert_eq!(cache.waiting(), 0);
        drop((got1, got2));
        assert!(cache.try_alloc(4096).is_some());
    }

    #[test]
    fn cancelled_waiter_is_skipped() {
        let pool = small_pool(1, 1);
        let cache = pool.local();
        let held = cache.try_alloc(4096).unwrap();
        let w1 = cache.waiter();
        let w2 = cache.waiter();
        assert!(cache.alloc_or_wait(4096, &w1).is_none());
        assert!(cache.alloc_or_wait(4096, &w2).is_none());
        drop(w1);
        drop(held);
        assert!(w2.poll().is_some());
    }

    #[test]
    fn buffers_return_across_threads() {
        let pool = small_pool(64, 1);
        let cache = pool.local();
        let mut sent = Vec::new();
        for _ in 0..64 {
            let mut sg = cache.try_alloc(4096).unwrap();
            let b = sg.bufs.pop().unwrap();
            sent.push(b.into_send());
        }
        assert!(cache.try_alloc(4096).is_none());
        let p2 = pool.clone();
        std::thread::spawn(move || {
            let local: Vec<IoBuf> = sent.into_iter().map(|s| s.into_local()).collect();
            assert_eq!(local.len(), 64);
            drop(local);
            drop(p2);
        })
        .join()
        .unwrap();
        // The other thread's cache went away with the thread: all buffers are global again.
        assert_eq!(pool.globally_free(0), 64);
        let again: Vec<SgList> = (0..64).map(|_| cache.try_alloc(4096).unwrap()).collect();
        assert_eq!(again.len(), 64);
    }

    #[test]
    fn waiter_served_by_buffers_freed_on_another_thread() {
        let pool = small_pool(1, 1);
        let cache = pool.local();
        let mut sg = cache.try_alloc(4096).unwrap();
        let buf = sg.bufs.pop().unwrap().into_send();
        let w = cache.waiter();
        assert!(cache.alloc_or_wait(4096, &w).is_none());
        std::thread::spawn(move || drop(buf)).join().unwrap();
        assert!(w.poll().is_some());
    }
}
