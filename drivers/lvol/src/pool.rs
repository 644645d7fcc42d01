//! The control side of a pool: creating it on a base bdev, finding it again (import), and the
//! volume operations, each sent to the pool's engine on its owner reactor and answered once
//! the change is durable. Volumes are registered in the bdev registry as `<pool>/<volume>`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam::queue::SegQueue;
use gyre_bdev::{BdevDesc, BdevRegistry, IoFlags, IoOp, IoRequest, IoStatus};
use gyre_reactor::{global_pool, local, PollStatus, ReactorHandle};
use uuid::Uuid;

use crate::engine::Engine;
use crate::meta::{Meta, Superblock, VolumeMeta, SUPERBLOCK_BYTES, UNALLOCATED};
use crate::volume::VolumeBdev;
use crate::LvolError;

/// Cluster size when none is given: 1 MiB.
pub const DEFAULT_CLUSTER_SIZE: u64 = 1 << 20;
/// Bit of a published map entry telling that only this volume references the cluster, so a
/// write may go straight to it.
pub(crate) const EXCLUSIVE: u32 = 1 << 31;
const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A volume's cluster map as the I/O path sees it: one atomic per cluster, holding the
/// physical cluster (with [`EXCLUSIVE`] when unshared) or [`UNALLOCATED`]. Only the engine
/// stores into it, after the change is durable; channels load from it without locking.
pub(crate) struct PublishedMap {
    pub entries: Box<[AtomicU32]>,
}

impl PublishedMap {
    fn new(len: usize) -> Arc<Self> {
        Arc::new(PublishedMap {
            entries: (0..len).map(|_| AtomicU32::new(UNALLOCATED)).collect(),
        })
    }
}

/// What the engine and the channels of one volume share.
pub(crate) struct VolumeShared {
    pub id: u32,
    pub snapshot: bool,
    pub thin: bool,
    map: Mutex<Arc<PublishedMap>>,
    generation: AtomicU64,
    /// The channels open on this volume, with their request counters.
    channels: Mutex<Vec<Arc<ChannelCounters>>>,
}

impl VolumeShared {
    pub(crate) fn new(v: &VolumeMeta) -> Arc<Self> {
        Arc::new(VolumeShared {
            id: v.id,
            snapshot: v.snapshot,
            thin: v.thin,
            map: Mutex::new(PublishedMap::new(v.map.len())),
            generation: AtomicU64::new(1),
            channels: Mutex::new(Vec::new()),
        })
    }

    /// The current map and its generation (control path: takes the lock).
    pub(crate) fn current(&self) -> (Arc<PublishedMap>, u64) {
        let m = lock(&self.map);
        (m.clone(), self.generation.load(Ordering::Acquire))
    }

    /// Cheap check for a newer map.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Makes the published entries equal `map` with exclusivity from `refs` (engine only).
    pub(crate) fn publish(&self, map: &[u32], refs: impl Fn(u32) -> u32) {
        let want = |e: u32| {
            if e == UNALLOCATED {
                UNALLOCATED
            } else if refs(e) == 1 && !self.snapshot {
                e | EXCLUSIVE
            } else {
                e
            }
        };
        let mut cur = lock(&self.map);
        if cur.entries.len() != map.len() {
            let fresh = PublishedMap::new(map.len());
            for (slot, &e) in fresh.entries.iter().zip(map) {
                slot.store(want(e), Ordering::Relaxed);
            }
            *cur = fresh;
            self.generation.fetch_add(1, Ordering::AcqRel);
            return;
        }
        for (slot, &e) in cur.entries.iter().zip(map) {
            let w = want(e);
            if slot.load(Ordering::Relaxed) != w {
                slot.store(w, Ordering::Release);
            }
        }
    }

    /// Takes away every exclusive bit so that new writes go through the engine (before a
    /// snapshot).
    pub(crate) fn revoke_exclusive(&self) {
        let cur = lock(&self.map);
        for slot in cur.entries.iter() {
            slot.fetch_and(!EXCLUSIVE, Ordering::Release);
        }
    }

    pub(crate) fn register_channel(&self, reactor: Option<ReactorHandle>) -> Arc<ChannelCounters> {
        let c = Arc::new(ChannelCounters {
            started: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            reactor,
        });
        lock(&self.channels).push(c.clone());
        c
    }

    pub(crate) fn unregister_channel(&self, c: &Arc<ChannelCounters>) {
        lock(&self.channels).retain(|w| !Arc::ptr_eq(w, c));
    }

    pub(crate) fn channels(&self) -> Vec<Arc<ChannelCounters>> {
        lock(&self.channels).clone()
    }
}

/// Requests one channel sent to the base and saw come back. Only the channel's own reactor
/// stores into them (plain stores, no read-modify-write); the engine reads them after a
/// message round trip to that reactor (see [`Quiesce`]).
pub(crate) struct ChannelCounters {
    pub started: AtomicU64,
    pub completed: AtomicU64,
    pub reactor: Option<ReactorHandle>,
}

impl ChannelCounters {
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Release);
    }
}

/// Waits until no request that a channel started before now can still reach the base:
/// first a message round trip to every reactor with a channel (after it, those reactors see
/// whatever the engine published before sending it, and their counters up to that point are
/// visible), then until each channel has completed as many requests as it had started.
pub(crate) struct Quiesce {
    channels: Vec<Arc<ChannelCounters>>,
    acks: Arc<AtomicU64>,
    expected: u64,
    marks: Option<Vec<u64>>,
}

impl Quiesce {
    pub(crate) fn begin(channels: Vec<Arc<ChannelCounters>>) -> Quiesce {
        let acks = Arc::new(AtomicU64::new(0));
        // One message per channel (a reactor with several gets several): cheap, and handles
        // of different reactor sets cannot be told apart.
        let mut expected = 0;
        for r in channels.iter().filter_map(|c| c.reactor.as_ref()) {
            let a = acks.clone();
            let sent = r.send(move || {
                a.fetch_add(1, Ordering::AcqRel);
            });
            if sent.is_ok() {
                expected += 1;
            }
        }
        Quiesce {
            channels,
            acks,
            expected,
            marks: None,
        }
    }

    /// Whether the wait is over (call again until it is).
    pub(crate) fn done(&mut self) -> bool {
        if self.acks.load(Ordering::Acquire) < self.expected {
            return false;
        }
        let channels = &self.channels;
        let marks = self.marks.get_or_insert_with(|| {
            channels
                .iter()
                .map(|c| c.started.load(Ordering::Acquire))
                .collect()
        });
        channels
            .iter()
            .zip(marks.iter())
            .all(|(c, &m)| c.completed.load(Ordering::Acquire) >= m)
    }
}

/// Where the engine answers a channel: the channel polls the queue; the waker gets its
/// reactor out of sleep.
pub(crate) struct ReplyQueue {
    pub queue: SegQueue<(u64, IoStatus)>,
    pub waker: Option<ReactorHandle>,
}

impl ReplyQueue {
    pub(crate) fn reply(&self, token: u64, status: IoStatus) {
        self.queue.push((token, status));
        if let Some(w) = &self.waker {
            let _ = w.send(|| {});
        }
    }
}

/// A volume operation for the engine.
pub(crate) enum ControlOp {
    Create {
        name: String,
        uuid: Uuid,
        size: u64,
        thin: bool,
    },
    Resize {
        id: u32,
        size: u64,
    },
    Rename {
        id: u32,
        name: String,
    },
    Snapshot {
        id: u32,
        name: String,
        uuid: Uuid,
    },
    Clone {
        id: u32,
        name: String,
        uuid: Uuid,
    },
    Inflate {
        id: u32,
    },
    Delete {
        id: u32,
    },
    /// Checks that a delete would be accepted, without doing it.
    CheckDelete {
        id: u32,
    },
    /// The volume's shared state and metadata.
    Get {
        id: u32,
    },
    Query,
}

pub(crate) enum ControlOut {
    Done,
    Volume(Arc<VolumeShared>, VolumeMeta),
    Query(PoolInfo, Vec<VolumeInfo>),
}

pub(crate) type ControlReply = crossbeam::channel::Sender<Result<ControlOut, LvolError>>;

/// Work for the engine.
pub(crate) enum Op {
    /// Make cluster `index` of volume `vol` private to it (allocate or copy on write).
    Alloc {
        vol: u32,
        index: u64,
        token: u64,
        reply: Arc<ReplyQueue>,
    },
    /// Drop cluster `index` of volume `vol` (whole-cluster unmap).
    Release {
        vol: u32,
        index: u64,
        token: u64,
        reply: Arc<ReplyQueue>,
    },
    Control(ControlOp, ControlReply),
    /// Stop; the sender hears when the engine (and its hold on the base) is gone.
    Stop(Option<crossbeam::channel::Sender<()>>),
}

/// What the engine, the channels and the control side of one pool share.
pub(crate) struct PoolShared {
    pub sb: Superblock,
    pub base: Arc<BdevDesc>,
    pub owner: ReactorHandle,
    pub ops: SegQueue<Op>,
}

impl PoolShared {
    /// Queues work for the engine and wakes its reactor.
    pub(crate) fn submit(&self, op: Op) {
        self.ops.push(op);
        let _ = self.owner.send(|| {});
    }
}

/// A pool's space figures.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolInfo {
    pub name: String,
    pub uuid: Uuid,
    pub base_bdev: String,
    pub cluster_size: u64,
    /// Where the first data cluster starts on the base, in bytes (after the superblock and
    /// the two metadata regions).
    pub data_offset: u64,
    pub total_clusters: u64,
    pub free_clusters: u64,
    /// Bytes promised to (non-snapshot) volumes.
    pub provisioned_bytes: u64,
    /// Provisioned bytes over the pool's data bytes.
    pub overcommit_ratio: f64,
}

impl PoolInfo {
    pub fn total_bytes(&self) -> u64 {
        self.total_clusters * self.cluster_size
    }

    pub fn free_bytes(&self) -> u64 {
        self.free_clusters * self.cluster_size
    }

    pub fn used_bytes(&self) -> u64 {
        self.total_bytes() - self.free_bytes()
    }
}

/// One volume, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    /// Its bdev's name, `<pool>/<volume>`.
    pub bdev_name: String,
    pub uuid: Uuid,
    pub size_bytes: u64,
    pub thin: bool,
    pub snapshot: bool,
    /// The snapshot it descends from.
    pub parent: Option<String>,
    pub allocated_bytes: u64,
}

/// A pool on a base bdev. Dropping it does not close it: call [`Pool::close`].
pub struct Pool {
    shared: Arc<PoolShared>,
    registry: BdevRegistry,
    base_name: String,
    /// Volume name to its id and bdev.
    volumes: Mutex<BTreeMap<String, (u32, Arc<VolumeBdev>)>>,
}

/// One step of synchronous control-path I/O on the base.
enum Step {
    Read { offset: u64, len: u64 },
    Write { offset: u64, data: Vec<u8> },
    Flush,
}

/// Runs `steps` one after the other on the base from reactor `owner`; returns the data read.
fn base_io(
    owner: &ReactorHandle,
    base: &Arc<BdevDesc>,
    steps: Vec<Step>,
) -> Result<Vec<Vec<u8>>, LvolError> {
    let (tx, rx) = crossbeam::channel::bounded(1);
    let desc = base.clone();
    owner
        .send(move || {
            let fail = |tx: &crossbeam::channel::Sender<_>, e| {
                let _ = tx.send(Err(e));
            };
            let mut ch = match desc.channel() {
                Ok(c) => c,
                Err(e) => return fail(&tx, LvolError::Bdev(e)),
            };
            let bs = desc.info().block_size() as u64;
            let cache = match global_pool() {
                Ok(p) => p.local(),
                Err(e) => return fail(&tx, LvolError::Buffers(e.to_string())),
            };
            let mut steps = std::collections::VecDeque::from(steps);
            let mut out: Vec<Vec<u8>> = Vec::new();
            let mut waiting: Option<(IoOp, u64)> = None;
            let Some(reactor) = local() else {
                return fail(&tx, LvolError::Reactor);
            };
            reactor.register_poller("lvol-base-io", move || {
                if let Some((op, len)) = waiting {
                    let mut got = None;
                    ch.poll(|c| got = Some(c));
                    let Some(c) = got else {
                        return PollStatus::Idle;
                    };
                    waiting = None;
                    if let Err(e) = c.status {
                        let _ = tx.send(Err(LvolError::Io(e)));
                        return PollStatus::Done;
                    }
                    if op == IoOp::Read {
                        let mut v = vec![0u8; len as usize];
                        c.req.buf.copy_to_slice(&mut v);
                        out.push(v);
                    }
                }
                let Some(step) = steps.pop_front() else {
                    let _ = tx.send(Ok(std::mem::take(&mut out)));
                    return PollStatus::Done;
                };
                let req = match step {
                    Step::Flush => IoRequest::control(IoOp::Flush, 0, 0, 0),
                    Step::Read { offset, len } => {
                        let Some(buf) = cache.try_alloc(len as usize) else {
                            let _ = tx.send(Err(LvolError::Buffers("no buffers".into())));
                            return PollStatus::Done;
                        };
                        waiting = Some((IoOp::Read, len));
                        IoRequest::new(IoOp::Read, offset / bs, len / bs, buf, 0)
                    }
                    Step::Write { offset, data } => {
                        let Some(mut buf) = cache.try_alloc(data.len()) else {
                            let _ = tx.send(Err(LvolError::Buffers("no buffers".into())));
                            return PollStatus::Done;
                        };
                        buf.copy_from_slice(&data);
                        let mut r = IoRequest::new(
                            IoOp::Write,
                            offset / bs,
                            data.len() as u64 / bs,
                            buf,
                            0,
                        );
                        r.flags = IoFlags { fua: true };
                        r
                    }
                };
                if waiting.is_none() {
                    waiting = Some((req.op, 0));
                }
                ch.submit(req);
                PollStatus::Busy
            });
        })
        .map_err(|_| LvolError::Reactor)?;
    rx.recv_timeout(CONTROL_TIMEOUT)
        .map_err(|_| LvolError::Reactor)?
}

fn open_base(
    registry: &BdevRegistry,
    base_name: &str,
    holder: &str,
) -> Result<Arc<BdevDesc>, LvolError> {
    let desc = registry.open(base_name, true, holder, None)?;
    desc.claim(holder)?;
    for op in [IoOp::Read, IoOp::Write, IoOp::Flush, IoOp::WriteZeroes] {
        if !desc.info().supports(op) {
            return Err(LvolError::BaseUnsupported {
                name: base_name.to_string(),
                op,
            });
        }
    }
    Ok(Arc::new(desc))
}

fn padded(mut v: Vec<u8>) -> Vec<u8> {
    v.resize(v.len().div_ceil(4096) * 4096, 0);
    v
}

impl Pool {
    /// Creates a pool named `name` on `base_name` (destroying what the bdev held), with its
    /// engine on reactor `owner`.
    pub fn create(
        registry: &BdevRegistry,
        owner: ReactorHandle,
        base_name: &str,
        name: &str,
        cluster_size: u64,
    ) -> Result<Pool, LvolError> {
        let holder = format!("lvol pool '{name}'");
        let base = open_base(registry, base_name, &holder)?;
        let info = base.info();
        let sb = Superblock::plan(
            name,
            Uuid::new_v4(),
            info.size_bytes(),
            info.block_size(),
            cluster_size,
        )?;
        let mut meta = Meta::new(&sb);
        meta.seq = 1;
        let image = meta.encode(&sb, 1);
        if image.len() as u64 > sb.md_region_bytes {
            return Err(LvolError::MetadataFull {
                need: image.len() as u64,
                have: sb.md_region_bytes,
            });
        }
        base_io(
            &owner,
            &base,
            vec![
                // Region B first: a stale image there must not survive.
                Step::Write {
                    offset: sb.region_offset(1),
                    data: vec![0; 4096],
                },
                Step::Write {
                    offset: sb.region_offset(0),
                    data: padded(image),
                },
                Step::Flush,
                Step::Write {
                    offset: 0,
                    data: sb.encode(),
                },
                Step::Flush,
            ],
        )?;
        tracing::info!(
            pool = name,
            base = base_name,
            clusters = sb.clusters,
            cluster_size,
            "lvol pool created"
        );
        Ok(Self::start(
            registry,
            owner,
            base,
            base_name,
            sb,
            meta,
            BTreeMap::new(),
        ))
    }

    /// Reads the superblock of `base_name`, if it holds a pool (without claiming it).
    pub fn probe(
        registry: &BdevRegistry,
        owner: &ReactorHandle,
        base_name: &str,
    ) -> Result<Option<Superblock>, LvolError> {
        let desc = Arc::new(registry.open(base_name, false, "lvol probe", None)?);
        if desc.info().size_bytes() < SUPERBLOCK_BYTES {
            return Ok(None);
        }
        let data = base_io(
            owner,
            &desc,
            vec![Step::Read {
                offset: 0,
                len: SUPERBLOCK_BYTES,
            }],
        )?;
        match data.first() {
            Some(b) => Ok(Superblock::decode(b)?),
            None => Ok(None),
        }
    }

    /// Opens the pool on `base_name` (import): reads both metadata images, keeps the valid one
    /// with the highest sequence number, and registers its volumes as bdevs.
    pub fn open(
        registry: &BdevRegistry,
        owner: ReactorHandle,
        base_name: &str,
    ) -> Result<Pool, LvolError> {
        let sb = Self::probe(registry, &owner, base_name)?
            .ok_or_else(|| LvolError::NotAPool(base_name.to_string()))?;
        let holder = format!("lvol pool '{}'", sb.name);
        let base = open_base(registry, base_name, &holder)?;
        if base.info().size_bytes() < sb.base_bytes_needed()
            || base.info().block_size() != sb.block_size
        {
            return Err(crate::MetaError::Corrupt(format!(
                "bdev '{base_name}' is smaller than the pool or has another block size"
            ))
            .into());
        }
        let heads = base_io(
            &owner,
            &base,
            vec![
                Step::Read {
                    offset: sb.region_offset(0),
                    len: 4096,
                },
                Step::Read {
                    offset: sb.region_offset(1),
                    len: 4096,
                },
            ],
        )?;
        let mut best: Option<Meta> = None;
        for (region, head) in heads.iter().enumerate() {
            let Some(len) = Meta::image_len(head) else {
                continue;
            };
            if len > sb.md_region_bytes || len < 64 {
                continue;
            }
            let len = len.div_ceil(4096) * 4096;
            let img = base_io(
                &owner,
                &base,
                vec![Step::Read {
                    offset: sb.region_offset(region as u64),
                    len,
                }],
            )?;
            let Some(img) = img.first() else { continue };
            match Meta::decode(&sb, img) {
                Ok(m) if Superblock::region_of(m.seq) == region as u64 => {
                    if best.as_ref().map_or(true, |b| m.seq > b.seq) {
                        best = Some(m);
                    }
                }
                Ok(m) => {
                    tracing::warn!(pool = %sb.name, region, seq = m.seq, "image in the wrong region, ignored")
                }
                Err(e) => {
                    tracing::warn!(pool = %sb.name, region, error = %e, "metadata image rejected")
                }
            }
        }
        let meta = best.ok_or_else(|| LvolError::NoValidImage(base_name.to_string()))?;
        let shared: BTreeMap<u32, Arc<VolumeShared>> = meta
            .volumes
            .values()
            .map(|v| {
                let s = VolumeShared::new(v);
                s.publish(&v.map, |c| meta.refs(c));
                (v.id, s)
            })
            .collect();
        tracing::info!(pool = %sb.name, base = base_name, seq = meta.seq, volumes = meta.volumes.len(), "lvol pool opened");
        let pool = Self::start(
            registry,
            owner,
            base,
            base_name,
            sb,
            meta.clone(),
            shared.clone(),
        );
        for v in meta.volumes.values() {
            if let Some(s) = shared.get(&v.id) {
                pool.register_volume(s.clone(), v)?;
            }
        }
        Ok(pool)
    }

    fn start(
        registry: &BdevRegistry,
        owner: ReactorHandle,
        base: Arc<BdevDesc>,
        base_name: &str,
        sb: Superblock,
        meta: Meta,
        volumes: BTreeMap<u32, Arc<VolumeShared>>,
    ) -> Pool {
        let shared = Arc::new(PoolShared {
            sb,
            base,
            owner: owner.clone(),
            ops: SegQueue::new(),
        });
        let s = shared.clone();
        let _ = owner.send(move || Engine::start(s, meta, volumes));
        Pool {
            shared,
            registry: registry.clone(),
            base_name: base_name.to_string(),
            volumes: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.sb.name
    }

    pub fn uuid(&self) -> Uuid {
        self.shared.sb.uuid
    }

    pub fn base_name(&self) -> &str {
        &self.base_name
    }

    pub fn cluster_size(&self) -> u64 {
        self.shared.sb.cluster_size
    }

    fn control(&self, op: ControlOp) -> Result<ControlOut, LvolError> {
        let (tx, rx) = crossbeam::channel::bounded(1);
        self.shared.submit(Op::Control(op, tx));
        rx.recv_timeout(CONTROL_TIMEOUT)
            .map_err(|_| LvolError::Reactor)?
    }

    fn bdev_name(&self, volume: &str) -> String {
        format!("{}/{}", self.name(), volume)
    }

    fn register_volume(&self, s: Arc<VolumeShared>, v: &VolumeMeta) -> Result<(), LvolError> {
        let bdev = VolumeBdev::new(&self.bdev_name(&v.name), v, s, self.shared.clone())?;
        self.registry.register(bdev.clone())?;
        lock(&self.volumes).insert(v.name.clone(), (v.id, bdev));
        Ok(())
    }

    fn id_of(&self, volume: &str) -> Result<u32, LvolError> {
        lock(&self.volumes)
            .get(volume)
            .map(|(id, _)| *id)
            .ok_or_else(|| LvolError::VolumeNotFound(volume.to_string()))
    }

    fn new_volume(&self, out: ControlOut) -> Result<VolumeInfo, LvolError> {
        let ControlOut::Volume(s, v) = out else {
            return Err(LvolError::Reactor);
        };
        self.register_volume(s, &v)?;
        self.volume(&v.name)
    }

    /// Creates a volume of `size_bytes` (thin: clusters allocated on first write).
    pub fn create_volume(
        &self,
        name: &str,
        size_bytes: u64,
        thin: bool,
    ) -> Result<VolumeInfo, LvolError> {
        let out = self.control(ControlOp::Create {
            name: name.to_string(),
            uuid: Uuid::new_v4(),
            size: size_bytes,
            thin,
        })?;
        self.new_volume(out)
    }

    /// Takes a read-only snapshot `snapshot` of volume `volume`.
    pub fn snapshot(&self, volume: &str, snapshot: &str) -> Result<VolumeInfo, LvolError> {
        let id = self.id_of(volume)?;
        let out = self.control(ControlOp::Snapshot {
            id,
            name: snapshot.to_string(),
            uuid: Uuid::new_v4(),
        })?;
        self.new_volume(out)
    }

    /// Creates a writable clone `name` of snapshot `snapshot`.
    pub fn clone_volume(&self, snapshot: &str, name: &str) -> Result<VolumeInfo, LvolError> {
        let id = self.id_of(snapshot)?;
        let out = self.control(ControlOp::Clone {
            id,
            name: name.to_string(),
            uuid: Uuid::new_v4(),
        })?;
        self.new_volume(out)
    }

    /// Gives a clone private copies of every cluster it shares and detaches it.
    pub fn inflate(&self, volume: &str) -> Result<VolumeInfo, LvolError> {
        let id = self.id_of(volume)?;
        self.control(ControlOp::Inflate { id })?;
        self.volume(volume)
    }

    /// Resizes a volume (both ways) and tells its holders.
    pub fn resize(&self, volume: &str, size_bytes: u64) -> Result<VolumeInfo, LvolError> {
        let id = self.id_of(volume)?;
        self.control(ControlOp::Resize {
            id,
            size: size_bytes,
        })?;
        let bdev = lock(&self.volumes).get(volume).map(|(_, b)| b.clone());
        if let Some(b) = bdev {
            b.set_size(size_bytes);
            let _ = self.registry.notify_resized(&self.bdev_name(volume));
        }
        self.volume(volume)
    }

    /// Renames a volume; its bdev is re-registered under the new name, so it must not be open.
    pub fn rename(&self, volume: &str, new_name: &str) -> Result<VolumeInfo, LvolError> {
        let id = self.id_of(volume)?;
        crate::meta::check_name(new_name)?;
        if lock(&self.volumes).contains_key(new_name) {
            return Err(crate::MetaError::NameTaken(new_name.to_string()).into());
        }
        self.registry.delete(&self.bdev_name(volume), false)?;
        lock(&self.volumes).remove(volume);
        let result = self.control(ControlOp::Rename {
            id,
            name: new_name.to_string(),
        });
        // Whatever happened, the volume gets its bdev back under its current name.
        self.reregister(id)?;
        result?;
        self.volume(new_name)
    }

    fn reregister(&self, id: u32) -> Result<(), LvolError> {
        let ControlOut::Volume(s, v) = self.control(ControlOp::Get { id })? else {
            return Err(LvolError::Reactor);
        };
        self.register_volume(s, &v)
    }

    /// Deletes a volume (its clusters are freed when no other volume shares them). It must
    /// not be open.
    pub fn delete_volume(&self, volume: &str) -> Result<(), LvolError> {
        let id = self.id_of(volume)?;
        self.control(ControlOp::CheckDelete { id })?;
        self.registry.delete(&self.bdev_name(volume), false)?;
        lock(&self.volumes).remove(volume);
        self.control(ControlOp::Delete { id })?;
        Ok(())
    }

    /// The pool's figures and its volumes.
    pub fn query(&self) -> Result<(PoolInfo, Vec<VolumeInfo>), LvolError> {
        match self.control(ControlOp::Query)? {
            ControlOut::Query(mut p, mut v) => {
                p.base_bdev = self.base_name.clone();
                for vi in &mut v {
                    vi.bdev_name = self.bdev_name(&vi.name);
                }
                Ok((p, v))
            }
            _ => Err(LvolError::Reactor),
        }
    }

    pub fn info(&self) -> Result<PoolInfo, LvolError> {
        Ok(self.query()?.0)
    }

    pub fn volumes(&self) -> Result<Vec<VolumeInfo>, LvolError> {
        Ok(self.query()?.1)
    }

    pub fn volume(&self, name: &str) -> Result<VolumeInfo, LvolError> {
        self.volumes()?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| LvolError::VolumeNotFound(name.to_string()))
    }

    /// Unregisters the volumes (they must not be open unless `force`) and stops the engine;
    /// the base bdev is released when the last handle goes. The pool is unusable afterwards. Metadata is always durable, so nothing is written.
    pub fn close(&self, force: bool) -> Result<(), LvolError> {
        let names: Vec<String> = lock(&self.volumes).keys().cloned().collect();
        if !force {
            for n in &names {
                let holders = self.registry.holders(&self.bdev_name(n));
                if !holders.is_empty() {
                    let e = gyre_bdev::BdevError::InUse {
                        name: self.bdev_name(n),
                        holders,
                    };
                    return Err(e.into());
                }
            }
        }
        for n in &names {
            let _ = self.registry.delete(&self.bdev_name(n), true);
        }
        lock(&self.volumes).clear();
        let (tx, rx) = crossbeam::channel::bounded::<()>(1);
        self.shared.submit(Op::Stop(Some(tx)));
        // The engine drops its base channel on its reactor; wait for that.
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            tracing::warn!(pool = %self.name(), "the pool's engine did not stop in time");
        }
        tracing::info!(pool = %self.name(), "lvol pool closed");
        Ok(())
    }
}
