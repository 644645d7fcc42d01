//! The pool's engine: the only writer of its metadata, a poller on the owner reactor.
//!
//! It takes every operation queued since its last commit as one batch, applies them to the
//! in-memory metadata (keeping the previous state to roll back to), zeroes or copies the
//! clusters the batch allocated, flushes, writes the new image to the other metadata region,
//! flushes again, and only then publishes the new cluster maps and answers the batch. A batch
//! with a snapshot first revokes the origin's direct writes and waits for those in flight to
//! finish, so the snapshot's content is exactly what was acknowledged before it. Clusters a
//! batch frees become allocatable only once its image is durable and every request started
//! before the new maps were published has completed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use gyre_bdev::{BdevChannel, IoCompletion, IoError, IoFlags, IoOp, IoRequest};
use gyre_reactor::{global_pool, local, PollStatus, PoolCache};

use crate::meta::{DataTask, Meta, MetaError, Superblock};
use crate::pool::{
    ControlOp, ControlOut, ControlReply, Op, PoolInfo, PoolShared, Quiesce, ReplyQueue, VolumeInfo,
    VolumeShared,
};
use crate::LvolError;

/// Data tasks in flight at once.
const TASK_DEPTH: usize = 16;
/// Tag bit of the read half of a copy.
const COPY_READ: u64 = 1 << 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Drain,
    Data,
    Flush1,
    Image,
    Flush2,
}

/// An answer owed once the batch is durable.
enum Answer {
    Io(Arc<ReplyQueue>, u64),
    Control(ControlReply, ControlOut),
}

pub(crate) struct Engine {
    shared: Arc<PoolShared>,
    meta: Meta,
    backup: Option<Meta>,
    volumes: BTreeMap<u32, Arc<VolumeShared>>,
    base: BdevChannel,
    cache: PoolCache,
    block_size: u64,
    phase: Phase,
    ops: Vec<Op>,
    /// Before a batch with snapshots: the wait for requests started on their origins.
    drain: Option<Quiesce>,
    /// Clusters freed by committed batches, each with the wait for the requests that may
    /// still reach them; they become allocatable when it is over.
    releases: VecDeque<(Vec<u32>, Quiesce)>,
    answers: Vec<Answer>,
    tasks: VecDeque<DataTask>,
    in_flight: usize,
    failed: Option<IoError>,
    completions: Vec<IoCompletion>,
    stop_ack: StopAck,
}

fn io_error(e: &MetaError) -> IoError {
    match e {
        MetaError::NoSpace => IoError::NoSpace,
        MetaError::ReadOnly(_) => IoError::ReadOnly,
        MetaError::NoVolume(_) => IoError::Removed,
        MetaError::BadIndex { index, .. } => IoError::OutOfRange {
            offset: *index,
            count: 1,
            num_blocks: 0,
        },
        _ => IoError::Device(libc_eio()),
    }
}

fn libc_eio() -> i32 {
    5
}

impl Engine {
    /// Runs on the owner reactor: builds the engine and registers its poller.
    pub(crate) fn start(
        shared: Arc<PoolShared>,
        meta: Meta,
        volumes: BTreeMap<u32, Arc<VolumeShared>>,
    ) {
        let Some(reactor) = local() else {
            tracing::error!("lvol engine started off a reactor");
            return;
        };
        let parts = shared
            .base
            .channel()
            .map_err(|e| e.to_string())
            .and_then(|c| {
                global_pool()
                    .map(|p| (c, p.local()))
                    .map_err(|e| e.to_string())
            });
        let (base, cache) = match parts {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(pool = %shared.sb.name, error = %e, "lvol engine cannot start");
                // Refuse everything, so no caller waits for an answer that never comes.
                reactor.register_poller("lvol-engine-failed", move || {
                    let mut n = 0;
                    while let Some(op) = shared.ops.pop() {
                        n += 1;
                        refuse(op, LvolError::Reactor, IoError::Removed);
                    }
                    if n > 0 {
                        PollStatus::Busy
                    } else {
                        PollStatus::Idle
                    }
                });
                return;
            }
        };
        let mut engine = Engine {
            block_size: shared.base.info().block_size() as u64,
            shared,
            meta,
            backup: None,
            volumes,
            base,
            cache,
            phase: Phase::Idle,
            ops: Vec::new(),
            drain: None,
            releases: VecDeque::new(),
            answers: Vec::new(),
            tasks: VecDeque::new(),
            in_flight: 0,
            failed: None,
            completions: Vec::with_capacity(TASK_DEPTH * 2),
            stop_ack: StopAck(None),
        };
        reactor.register_poller("lvol-engine", move || engine.poll());
    }

    fn sb(&self) -> &Superblock {
        &self.shared.sb
    }

    fn poll(&mut self) -> PollStatus {
        let mut busy = self.reap() > 0;
        loop {
            let before = self.phase;
            match self.phase {
                Phase::Idle => {
                    // Between batches only, so that a rollback never undoes a release.
                    while let Some((clusters, q)) = self.releases.front_mut() {
                        if !q.done() {
                            break;
                        }
                        self.meta.unhold(clusters);
                        self.releases.pop_front();
                        busy = true;
                    }
                    if self.shared.ops.is_empty() {
                        break;
                    }
                    if self.take_batch() {
                        return PollStatus::Done;
                    }
                }
                Phase::Drain => {
                    if self.drain.as_mut().map_or(true, |q| q.done()) {
                        self.drain = None;
                        self.apply_batch();
                    }
                }
                Phase::Data => self.run_tasks(),
                Phase::Flush1 => {
                    if self.in_flight == 0 {
                        self.write_image();
                    }
                }
                Phase::Image => {
                    if self.in_flight == 0 {
                        self.submit_flush(Phase::Flush2);
                    }
                }
                Phase::Flush2 => {
                    if self.in_flight == 0 {
                        self.finish();
                    }
                }
            }
            if self.phase == before {
                break;
            }
            busy = true;
        }
        // Waits for channels are not woken by anything: keep polling while one runs.
        if busy || self.phase != Phase::Idle || !self.releases.is_empty() {
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    }

    /// Collects base completions; returns how many.
    fn reap(&mut self) -> usize {
        let list = &mut self.completions;
        let n = self.base.poll(|c| list.push(c));
        let mut list = std::mem::take(&mut self.completions);
        for c in list.drain(..) {
            self.in_flight -= 1;
            if let Err(e) = c.status {
                self.failed.get_or_insert(e);
                continue;
            }
            if c.req.tag & COPY_READ != 0 {
                let to = (c.req.tag & !COPY_READ) as u32;
                let mut req = c.req;
                req.op = IoOp::Write;
                req.offset_blocks = self.sb().cluster_offset(to) / self.block_size;
                req.tag = 0;
                self.in_flight += 1;
                self.base.submit(req);
            }
        }
        self.completions = list;
        n
    }

    /// Takes the queued operations as the next batch. Returns true when told to stop.
    fn take_batch(&mut self) -> bool {
        let mut draining = Vec::new();
        let mut snapshots = false;
        while let Some(op) = self.shared.ops.pop() {
            if let Op::Stop(ack) = op {
                self.stop_ack.0 = ack;
                while let Some(rest) = self.shared.ops.pop() {
                    refuse(rest, LvolError::Reactor, IoError::Removed);
                }
                for op in self.ops.drain(..) {
                    refuse(op, LvolError::Reactor, IoError::Removed);
                }
                return true;
            }
            if let Op::Control(ControlOp::Snapshot { id, .. }, _) = &op {
                if let Some(v) = self.volumes.get(id) {
                    v.revoke_exclusive();
                    draining.extend(v.channels());
                    snapshots = true;
                }
            }
            self.ops.push(op);
            if self.ops.len() >= 1024 {
                break;
            }
        }
        if snapshots {
            // Revoked first, then the round trip: afterwards no channel writes the origin's
            // clusters directly, and the wait covers the writes that did.
            self.drain = Some(Quiesce::begin(draining));
            self.phase = Phase::Drain;
        } else {
            self.apply_batch();
        }
        false
    }

    fn apply_batch(&mut self) {
        self.backup = Some(self.meta.clone());
        let mut dirty = false;
        let mut tasks = Vec::new();
        for op in std::mem::take(&mut self.ops) {
            match op {
                Op::Alloc {
                    vol,
                    index,
                    token,
                    reply,
                } => {
                    let before = tasks.len();
                    match self.meta.make_exclusive(vol, index, &mut tasks) {
                        Ok(_) if tasks.len() == before => reply.reply(token, Ok(())),
                        Ok(_) => {
                            dirty = true;
                            self.answers.push(Answer::Io(reply, token));
                        }
                        // Freed clusters are on their way back: try again then.
                        Err(MetaError::NoSpace) if !self.releases.is_empty() => {
                            self.shared.ops.push(Op::Alloc {
                                vol,
                                index,
                                token,
                                reply,
                            });
                        }
                        Err(e) => reply.reply(token, Err(io_error(&e))),
                    }
                }
                Op::Release {
                    vol,
                    index,
                    token,
                    reply,
                } => {
                    let had = self
                        .meta
                        .volume(vol)
                        .ok()
                        .and_then(|v| v.map.get(index as usize).copied());
                    match self.meta.release(vol, index) {
                        Ok(()) if had == Some(crate::meta::UNALLOCATED) => {
                            reply.reply(token, Ok(()))
                        }
                        Ok(()) => {
                            dirty = true;
                            self.answers.push(Answer::Io(reply, token));
                        }
                        Err(e) => reply.reply(token, Err(io_error(&e))),
                    }
                }
                Op::Control(op, reply) => match self.control(op, &mut tasks) {
                    Ok((out, changed)) => {
                        if changed {
                            dirty = true;
                            self.answers.push(Answer::Control(reply, out));
                        } else {
                            let _ = reply.send(Ok(out));
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Op::Stop(_) => {}
            }
        }
        if !dirty {
            self.backup = None;
            self.republish();
            self.phase = Phase::Idle;
            return;
        }
        self.tasks.extend(tasks);
        self.phase = Phase::Data;
        self.run_tasks();
    }

    /// Applies one control operation; returns its answer and whether the metadata changed.
    fn control(
        &mut self,
        op: ControlOp,
        tasks: &mut Vec<DataTask>,
    ) -> Result<(ControlOut, bool), LvolError> {
        let m = &mut self.meta;
        match op {
            ControlOp::Create {
                name,
                uuid,
                size,
                thin,
            } => {
                let id = m.create_volume(&name, uuid, size, thin, tasks)?;
                Ok((self.new_volume(id)?, true))
            }
            ControlOp::Snapshot { id, name, uuid } => {
                let snap = m.snapshot(id, &name, uuid)?;
                Ok((self.new_volume(snap)?, true))
            }
            ControlOp::Clone { id, name, uuid } => {
                let c = m.clone_volume(id, &name, uuid)?;
                Ok((self.new_volume(c)?, true))
            }
            ControlOp::Resize { id, size } => {
                m.resize(id, size, tasks)?;
                Ok((ControlOut::Done, true))
            }
            ControlOp::Rename { id, name } => {
                m.rename(id, &name)?;
                Ok((ControlOut::Done, true))
            }
            ControlOp::Inflate { id } => {
                m.inflate(id, tasks)?;
                Ok((ControlOut::Done, true))
            }
            ControlOp::Delete { id } => {
                m.delete(id)?;
                self.volumes.remove(&id);
                Ok((ControlOut::Done, true))
            }
            ControlOp::CheckDelete { id } => {
                let v = m.volume(id)?;
                let children = m.children(id).len();
                if v.snapshot && children > 1 {
                    return Err(MetaError::HasChildren {
                        name: v.name.clone(),
                        children,
                    }
                    .into());
                }
                Ok((ControlOut::Done, false))
            }
            ControlOp::Get { id } => {
                let v = m.volume(id)?.clone();
                let s = self
                    .volumes
                    .get(&id)
                    .cloned()
                    .ok_or(MetaError::NoVolume(id))?;
                Ok((ControlOut::Volume(s, v), false))
            }
            ControlOp::Query => Ok((self.query(), false)),
        }
    }

    fn new_volume(&mut self, id: u32) -> Result<ControlOut, LvolError> {
        let v = self.meta.volume(id)?.clone();
        let s = VolumeShared::new(&v);
        self.volumes.insert(id, s.clone());
        Ok(ControlOut::Volume(s, v))
    }

    fn query(&self) -> ControlOut {
        let m = &self.meta;
        let cs = m.cluster_size();
        let total = m.total_clusters();
        let provisioned = m.provisioned_bytes();
        let info = PoolInfo {
            name: self.sb().name.clone(),
            uuid: self.sb().uuid,
            base_bdev: String::new(),
            cluster_size: cs,
            data_offset: self.sb().data_offset,
            total_clusters: total,
            free_clusters: m.free_clusters(),
            provisioned_bytes: provisioned,
            overcommit_ratio: provisioned as f64 / (total * cs) as f64,
        };
        let vols = m
            .volumes
            .values()
            .map(|v| VolumeInfo {
                name: v.name.clone(),
                bdev_name: String::new(),
                uuid: v.uuid,
                size_bytes: v.size_bytes,
                thin: v.thin,
                snapshot: v.snapshot,
                parent: m.volumes.get(&v.parent).map(|p| p.name.clone()),
                allocated_bytes: v.allocated_clusters() * cs,
            })
            .collect();
        ControlOut::Query(info, vols)
    }

    fn run_tasks(&mut self) {
        while self.in_flight < TASK_DEPTH && self.failed.is_none() {
            let Some(task) = self.tasks.front().copied() else {
                break;
            };
            let cs = self.sb().cluster_size;
            let blocks = cs / self.block_size;
            match task {
                DataTask::Zero(c) => {
                    let lba = self.sb().cluster_offset(c) / self.block_size;
                    self.base
                        .submit(IoRequest::control(IoOp::WriteZeroes, lba, blocks, 0));
                }
                DataTask::Copy { from, to } => {
                    let Some(buf) = self.cache.try_alloc(cs as usize) else {
                        // Buffers come back as I/O completes; try again on the next poll.
                        break;
                    };
                    let lba = self.sb().cluster_offset(from) / self.block_size;
                    self.base.submit(IoRequest::new(
                        IoOp::Read,
                        lba,
                        blocks,
                        buf,
                        COPY_READ | to as u64,
                    ));
                }
            }
            self.tasks.pop_front();
            self.in_flight += 1;
        }
        if self.failed.is_some() && self.in_flight == 0 {
            self.tasks.clear();
            let e = self.failed.take().unwrap_or(IoError::Device(libc_eio()));
            self.abort(LvolError::Io(e), e);
            return;
        }
        if self.tasks.is_empty() && self.in_flight == 0 {
            self.submit_flush(Phase::Flush1);
        }
    }

    fn submit_flush(&mut self, next: Phase) {
        if let Some(e) = self.failed.take() {
            self.abort(LvolError::Io(e), e);
            return;
        }
        self.in_flight += 1;
        self.base.submit(IoRequest::control(IoOp::Flush, 0, 0, 0));
        self.phase = next;
    }

    fn write_image(&mut self) {
        if let Some(e) = self.failed.take() {
            self.abort(LvolError::Io(e), e);
            return;
        }
        let seq = self.meta.seq + 1;
        let mut image = self.meta.encode(self.sb(), seq);
        let region = self.sb().md_region_bytes;
        if image.len() as u64 > region {
            let need = image.len() as u64;
            self.abort(
                LvolError::MetadataFull { need, have: region },
                IoError::NoSpace,
            );
            return;
        }
        image.resize(image.len().div_ceil(4096) * 4096, 0);
        let Some(mut buf) = self.cache.try_alloc(image.len()) else {
            // Stay in Flush1 and try again on the next poll.
            return;
        };
        buf.copy_from_slice(&image);
        let lba = self.sb().region_offset(Superblock::region_of(seq)) / self.block_size;
        let mut req = IoRequest::new(
            IoOp::Write,
            lba,
            image.len() as u64 / self.block_size,
            buf,
            0,
        );
        req.flags = IoFlags { fua: true };
        self.in_flight += 1;
        self.base.submit(req);
        self.phase = Phase::Image;
    }

    fn finish(&mut self) {
        if let Some(e) = self.failed.take() {
            self.abort(LvolError::Io(e), e);
            return;
        }
        self.meta.seq += 1;
        self.backup = None;
        self.republish();
        // Published first: the round trip of the wait then makes every channel see the new
        // maps, so only requests started before can still reach the freed clusters.
        let freed = self.meta.take_freed();
        if !freed.is_empty() {
            let channels = self.volumes.values().flat_map(|v| v.channels()).collect();
            self.releases.push_back((freed, Quiesce::begin(channels)));
        }
        for a in self.answers.drain(..) {
            match a {
                Answer::Io(q, token) => q.reply(token, Ok(())),
                Answer::Control(tx, out) => {
                    let _ = tx.send(Ok(out));
                }
            }
        }
        self.phase = Phase::Idle;
    }

    /// The batch failed: back to the metadata before it; everyone waiting is told.
    fn abort(&mut self, control: LvolError, io: IoError) {
        tracing::warn!(pool = %self.shared.sb.name, error = %control, "lvol metadata commit failed; batch rolled back");
        if let Some(m) = self.backup.take() {
            // Volumes created by the batch disappear again.
            self.volumes.retain(|id, _| m.volumes.contains_key(id));
            self.meta = m;
        }
        self.tasks.clear();
        let msg = control.to_string();
        for a in self.answers.drain(..) {
            match a {
                Answer::Io(q, token) => q.reply(token, Err(io)),
                Answer::Control(tx, _) => {
                    let e = match &control {
                        LvolError::MetadataFull { need, have } => LvolError::MetadataFull {
                            need: *need,
                            have: *have,
                        },
                        LvolError::Io(e) => LvolError::Io(*e),
                        _ => LvolError::Buffers(msg.clone()),
                    };
                    let _ = tx.send(Err(e));
                }
            }
        }
        self.republish();
        self.phase = Phase::Idle;
    }

    fn republish(&self) {
        for (id, s) in &self.volumes {
            if let Ok(v) = self.meta.volume(*id) {
                s.publish(&v.map, |c| self.meta.refs(c));
            }
        }
    }
}

/// Answers an operation the engine will not carry out.
fn refuse(op: Op, control: LvolError, io: IoError) {
    match op {
        Op::Alloc { token, reply, .. } | Op::Release { token, reply, .. } => {
            reply.reply(token, Err(io))
        }
        Op::Control(_, tx) => {
            let _ = tx.send(Err(control));
        }
        Op::Stop(_) => {}
    }
}

/// Tells whoever stopped the engine that it is gone. The engine's last field: dropped after
/// its base channel and its share of the pool (and so of the base descriptor).
struct StopAck(Option<crossbeam::channel::Sender<()>>);

impl Drop for StopAck {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}
