//! The pool's metadata as plain data: volumes, their cluster maps and the reference counts of
//! the physical clusters, with every change a pure function (no I/O). The engine applies changes
//! here, carries out the data work they ask for (zeroing, copy on write), and persists the whole
//! image with [`Meta::encode`]. Keeping it pure lets property tests drive it directly.
//!
//! The byte layout is described in `docs/lvol-format.md`.

use std::collections::BTreeMap;

use uuid::Uuid;

/// A map entry naming no cluster: the volume's bytes there read as zeroes.
pub const UNALLOCATED: u32 = u32::MAX;
/// Most physical clusters a pool may have (entries keep bit 31 free for the I/O path's flag).
pub const MAX_CLUSTERS: u64 = (1 << 31) - 1;
pub const SUPERBLOCK_BYTES: u64 = 4096;
pub const SUPER_MAGIC: &[u8; 8] = b"GYRELVOL";
pub const IMAGE_MAGIC: &[u8; 8] = b"GYRELVMD";
pub const VERSION: u32 = 1;
const HEADER_BYTES: usize = 64;
const FLAG_THIN: u32 = 1;
const FLAG_SNAPSHOT: u32 = 2;

/// Why a metadata operation or decode failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("the pool has no free cluster left")]
    NoSpace,
    #[error("volume {0} not found")]
    NoVolume(u32),
    #[error("a volume named '{0}' already exists in the pool")]
    NameTaken(String),
    #[error("invalid volume name '{0}': 1 to 255 bytes of letters, digits and -_.:@")]
    BadName(String),
    #[error("size {size} is not a non-zero multiple of the block size {block_size}")]
    BadSize { size: u64, block_size: u32 },
    #[error("volume '{0}' is a snapshot (read-only)")]
    ReadOnly(String),
    #[error("volume '{0}' is not a snapshot")]
    NotSnapshot(String),
    #[error("snapshot '{name}' has {children} clones; delete or inflate them first")]
    HasChildren { name: String, children: usize },
    #[error("cluster index {index} is outside volume {volume}")]
    BadIndex { volume: u32, index: u64 },
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
}

/// The fixed geometry of a pool, from its superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: Uuid,
    pub name: String,
    pub cluster_size: u64,
    pub md_region_bytes: u64,
    pub data_offset: u64,
    pub clusters: u64,
    pub block_size: u32,
}

impl Superblock {
    /// Lays a pool out on a base of `base_bytes`: each metadata region gets room for an image
    /// with maps of four times the pool's clusters (over-commit) and 1024 volume records.
    pub fn plan(
        name: &str,
        uuid: Uuid,
        base_bytes: u64,
        block_size: u32,
        cluster_size: u64,
    ) -> Result<Superblock, MetaError> {
        check_name(name)?;
        if !cluster_size.is_power_of_two() || cluster_size < 4096 {
            return Err(MetaError::Corrupt(format!(
                "cluster size {cluster_size} is not a power of two of at least 4096"
            )));
        }
        let guess = base_bytes / cluster_size;
        let region = |clusters: u64| {
            let bytes = HEADER_BYTES as u64
                + clusters.div_ceil(8)
                + 8
                + 4 * 4 * clusters
                + 1024 * (48 + 256);
            bytes.div_ceil(4096) * 4096
        };
        let md = region(guess);
        let data_offset = (SUPERBLOCK_BYTES + 2 * md).div_ceil(cluster_size) * cluster_size;
        let clusters = base_bytes.saturating_sub(data_offset) / cluster_size;
        if clusters == 0 {
            return Err(MetaError::Corrupt(format!(
                "a base of {base_bytes} bytes holds no cluster of {cluster_size} bytes after its metadata"
            )));
        }
        if clusters > MAX_CLUSTERS {
            return Err(MetaError::Corrupt("too many clusters".into()));
        }
        Ok(Superblock {
            uuid,
            name: name.to_string(),
            cluster_size,
            md_region_bytes: md,
            data_offset,
            clusters,
            block_size,
        })
    }

    /// The 4096 bytes of the superblock.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SUPERBLOCK_BYTES as usize];
        b[0..8].copy_from_slice(SUPER_MAGIC);
        put32(&mut b, 8, VERSION);
        b[16..32].copy_from_slice(self.uuid.as_bytes());
        put64(&mut b, 32, self.cluster_size);
        put64(&mut b, 40, self.md_region_bytes);
        put64(&mut b, 48, self.data_offset);
        put64(&mut b, 56, self.clusters);
        put32(&mut b, 64, self.block_size);
        put32(&mut b, 68, self.name.len() as u32);
        b[72..72 + self.name.len()].copy_from_slice(self.name.as_bytes());
        let crc = crc32c::crc32c(&b[..4092]);
        put32(&mut b, 4092, crc);
        b
    }

    /// Reads a superblock; `None` when the bytes are not one (no magic), an error when they
    /// look like one but are damaged.
    pub fn decode(b: &[u8]) -> Result<Option<Superblock>, MetaError> {
        if b.len() < SUPERBLOCK_BYTES as usize || &b[0..8] != SUPER_MAGIC {
            return Ok(None);
        }
        if crc32c::crc32c(&b[..4092]) != get32(b, 4092) {
            return Err(MetaError::Corrupt("superblock checksum mismatch".into()));
        }
        if get32(b, 8) != VERSION {
            return Err(MetaError::Corrupt(format!(
                "superblock version {} is not supported",
                get32(b, 8)
            )));
        }
        let name_len = get32(b, 68) as usize;
        if name_len == 0 || name_len > 255 {
            return Err(MetaError::Corrupt("bad pool name length".into()));
        }
        let name = std::str::from_utf8(&b[72..72 + name_len])
            .map_err(|_| MetaError::Corrupt("pool name is not UTF-8".into()))?
            .to_string();
        let sb = Superblock {
            uuid: Uuid::from_slice(&b[16..32]).map_err(|e| MetaError::Corrupt(e.to_string()))?,
            name,
            cluster_size: get64(b, 32),
            md_region_bytes: get64(b, 40),
            data_offset: get64(b, 48),
            clusters: get64(b, 56),
            block_size: get32(b, 64),
        };
        let sane = sb.cluster_size.is_power_of_two()
            && sb.cluster_size >= 4096
            && sb.md_region_bytes % 4096 == 0
            && sb.md_region_bytes >= 4096
            && sb.clusters > 0
            && sb.clusters <= MAX_CLUSTERS
            && (sb.block_size == 512 || sb.block_size == 4096)
            && sb
                .md_region_bytes
                .checked_mul(2)
                .and_then(|m| m.checked_add(SUPERBLOCK_BYTES))
                .is_some_and(|end| end <= sb.data_offset)
            && sb.data_offset % sb.cluster_size == 0;
        if !sane {
            return Err(MetaError::Corrupt(
                "superblock geometry is inconsistent".into(),
            ));
        }
        Ok(Some(sb))
    }

    /// Byte offset of metadata region 0 (A) or 1 (B).
    pub fn region_offset(&self, region: u64) -> u64 {
        SUPERBLOCK_BYTES + region * self.md_region_bytes
    }

    /// The region that holds the image with sequence number `seq`.
    pub fn region_of(seq: u64) -> u64 {
        if seq % 2 == 1 {
            0
        } else {
            1
        }
    }

    /// Byte offset of physical cluster `c`.
    pub fn cluster_offset(&self, c: u32) -> u64 {
        self.data_offset + c as u64 * self.cluster_size
    }

    /// Bytes the base bdev must have.
    pub fn base_bytes_needed(&self) -> u64 {
        self.data_offset + self.clusters * self.cluster_size
    }
}

/// One volume as the metadata knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMeta {
    pub id: u32,
    pub parent: u32,
    pub uuid: Uuid,
    pub name: String,
    pub thin: bool,
    pub snapshot: bool,
    pub size_bytes: u64,
    pub map: Vec<u32>,
}

impl VolumeMeta {
    pub fn allocated_clusters(&self) -> u64 {
        self.map.iter().filter(|&&e| e != UNALLOCATED).count() as u64
    }
}

/// Data work a metadata change needs before it may be persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataTask {
    /// Zero physical cluster `0`.
    Zero(u32),
    /// Copy physical cluster `from` into `to`.
    Copy { from: u32, to: u32 },
}

/// The whole metadata of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub seq: u64,
    pub next_id: u32,
    pub volumes: BTreeMap<u32, VolumeMeta>,
    cluster_size: u64,
    block_size: u32,
    refs: Vec<u32>,
    /// Freed and not yet handed back by [`Meta::take_freed`].
    quarantine: Vec<u32>,
    /// Freed but not allocatable yet: until the commit that frees them is durable and no
    /// request started before it can still reach them.
    held: Vec<bool>,
    held_count: u64,
    free: u64,
    cursor: u32,
}

pub(crate) fn check_name(name: &str) -> Result<(), MetaError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(MetaError::BadName(name.to_string()))
    }
}

impl Meta {
    /// Empty metadata for a new pool.
    pub fn new(sb: &Superblock) -> Meta {
        let n = sb.clusters as usize;
        Meta {
            seq: 0,
            next_id: 1,
            volumes: BTreeMap::new(),
            cluster_size: sb.cluster_size,
            block_size: sb.block_size,
            refs: vec![0; n],
            quarantine: Vec::new(),
            held: vec![false; n],
            held_count: 0,
            free: sb.clusters,
            cursor: 0,
        }
    }

    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    pub fn total_clusters(&self) -> u64 {
        self.refs.len() as u64
    }

    /// Clusters with no reference (including those waiting for their commit).
    pub fn free_clusters(&self) -> u64 {
        self.free
    }

    /// Reference count of physical cluster `c`.
    pub fn refs(&self, c: u32) -> u32 {
        self.refs.get(c as usize).copied().unwrap_or(0)
    }

    pub fn volume(&self, id: u32) -> Result<&VolumeMeta, MetaError> {
        self.volumes.get(&id).ok_or(MetaError::NoVolume(id))
    }

    pub fn by_name(&self, name: &str) -> Option<&VolumeMeta> {
        self.volumes.values().find(|v| v.name == name)
    }

    /// Volumes whose parent is `id`.
    pub fn children(&self, id: u32) -> Vec<u32> {
        self.volumes
            .values()
            .filter(|v| v.parent == id)
            .map(|v| v.id)
            .collect()
    }

    /// Bytes promised to volumes, over all volumes that are not snapshots.
    pub fn provisioned_bytes(&self) -> u64 {
        self.volumes
            .values()
            .filter(|v| !v.snapshot)
            .map(|v| v.size_bytes)
            .sum()
    }

    fn clusters_for(&self, size: u64) -> usize {
        size.div_ceil(self.cluster_size) as usize
    }

    fn check_size(&self, size: u64) -> Result<(), MetaError> {
        if size == 0 || size % self.block_size as u64 != 0 {
            return Err(MetaError::BadSize {
                size,
                block_size: self.block_size,
            });
        }
        if size.div_ceil(self.cluster_size) > MAX_CLUSTERS {
            return Err(MetaError::BadSize {
                size,
                block_size: self.block_size,
            });
        }
        Ok(())
    }

    fn alloc(&mut self) -> Result<u32, MetaError> {
        let n = self.refs.len() as u32;
        for step in 0..n {
            let c = (self.cursor + step) % n;
            if self.refs[c as usize] == 0 && !self.held[c as usize] {
                self.refs[c as usize] = 1;
                self.free -= 1;
                self.cursor = (c + 1) % n;
                return Ok(c);
            }
        }
        Err(MetaError::NoSpace)
    }

    fn incref(&mut self, c: u32) {
        if let Some(r) = self.refs.get_mut(c as usize) {
            *r += 1;
        }
    }

    fn decref(&mut self, c: u32) {
        let Some(r) = self.refs.get_mut(c as usize) else {
            return;
        };
        *r = r.saturating_sub(1);
        if *r == 0 {
            self.free += 1;
            self.held[c as usize] = true;
            self.held_count += 1;
            self.quarantine.push(c);
        }
    }

    /// The clusters freed since the last call; they stay unallocatable until
    /// [`Meta::unhold`].
    pub fn take_freed(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.quarantine)
    }

    /// Makes freed clusters allocatable again.
    pub fn unhold(&mut self, clusters: &[u32]) {
        for &c in clusters {
            if let Some(h) = self.held.get_mut(c as usize) {
                if *h {
                    *h = false;
                    self.held_count -= 1;
                }
            }
        }
    }

    /// Clusters freed since the last commit become allocatable at once (for callers with no
    /// requests in flight).
    pub fn commit_done(&mut self) {
        let freed = self.take_freed();
        self.unhold(&freed);
    }

    /// A volume id not in use (ids are never 0), advancing `next_id` past it.
    fn fresh_id(&mut self) -> u32 {
        let mut id = self.next_id.max(1);
        while self.volumes.contains_key(&id) {
            id = id.wrapping_add(1).max(1);
        }
        self.next_id = id.wrapping_add(1).max(1);
        id
    }

    fn vol_mut(&mut self, id: u32) -> Result<&mut VolumeMeta, MetaError> {
        self.volumes.get_mut(&id).ok_or(MetaError::NoVolume(id))
    }

    fn free_map(&mut self, map: &[u32]) {
        for &e in map {
            if e != UNALLOCATED {
                self.decref(e);
            }
        }
    }

    /// Creates a volume; a thick one gets all its clusters now (to be zeroed).
    pub fn create_volume(
        &mut self,
        name: &str,
        uuid: Uuid,
        size: u64,
        thin: bool,
        tasks: &mut Vec<DataTask>,
    ) -> Result<u32, MetaError> {
        check_name(name)?;
        self.check_size(size)?;
        if self.by_name(name).is_some() {
            return Err(MetaError::NameTaken(name.to_string()));
        }
        let n = self.clusters_for(size);
        if !thin && (n as u64) > self.free_available() {
            return Err(MetaError::NoSpace);
        }
        let mut map = vec![UNALLOCATED; n];
        if !thin {
            for e in map.iter_mut() {
                let c = self.alloc()?;
                tasks.push(DataTask::Zero(c));
                *e = c;
            }
        }
        let id = self.fresh_id();
        self.volumes.insert(
            id,
            VolumeMeta {
                id,
                parent: 0,
                uuid,
                name: name.to_string(),
                thin,
                snapshot: false,
                size_bytes: size,
                map,
            },
        );
        Ok(id)
    }

    /// Free clusters that can be handed out right now (not waiting for a commit).
    pub fn free_available(&self) -> u64 {
        self.free - self.held_count
    }

    /// Makes entry `index` of volume `id` a cluster only this volume references, allocating
    /// (and zeroing) or copying as needed. Returns the physical cluster.
    pub fn make_exclusive(
        &mut self,
        id: u32,
        index: u64,
        tasks: &mut Vec<DataTask>,
    ) -> Result<u32, MetaError> {
        let v = self.volume(id)?;
        if v.snapshot {
            return Err(MetaError::ReadOnly(v.name.clone()));
        }
        let e = *v
            .map
            .get(index as usize)
            .ok_or(MetaError::BadIndex { volume: id, index })?;
        if e != UNALLOCATED && self.refs(e) == 1 {
            return Ok(e);
        }
        let c = self.alloc()?;
        if e == UNALLOCATED {
            tasks.push(DataTask::Zero(c));
        } else {
            tasks.push(DataTask::Copy { from: e, to: c });
            self.decref(e);
        }
        self.vol_mut(id)?.map[index as usize] = c;
        Ok(c)
    }

    /// Drops entry `index` of volume `id` (it reads as zeroes afterwards).
    pub fn release(&mut self, id: u32, index: u64) -> Result<(), MetaError> {
        let v = self.vol_mut(id)?;
        if v.snapshot {
            return Err(MetaError::ReadOnly(v.name.clone()));
        }
        let slot = v
            .map
            .get_mut(index as usize)
            .ok_or(MetaError::BadIndex { volume: id, index })?;
        let e = std::mem::replace(slot, UNALLOCATED);
        if e != UNALLOCATED {
            self.decref(e);
        }
        Ok(())
    }

    /// Takes a read-only snapshot of `origin`: it shares every cluster with the origin, which
    /// becomes its child.
    pub fn snapshot(&mut self, origin: u32, name: &str, uuid: Uuid) -> Result<u32, MetaError> {
        check_name(name)?;
        if self.by_name(name).is_some() {
            return Err(MetaError::NameTaken(name.to_string()));
        }
        let o = self.volume(origin)?;
        if o.snapshot {
            return Err(MetaError::ReadOnly(o.name.clone()));
        }
        let snap_id = self.fresh_id();
        let o = self.volume(origin)?;
        let snap = VolumeMeta {
            id: snap_id,
            parent: o.parent,
            uuid,
            name: name.to_string(),
            thin: o.thin,
            snapshot: true,
            size_bytes: o.size_bytes,
            map: o.map.clone(),
        };
        let id = snap.id;
        for &e in &snap.map {
            if e != UNALLOCATED {
                self.incref(e);
            }
        }
        self.volumes.insert(id, snap);
        self.vol_mut(origin)?.parent = id;
        Ok(id)
    }

    /// A writable thin volume sharing every cluster of snapshot `snap`.
    pub fn clone_volume(&mut self, snap: u32, name: &str, uuid: Uuid) -> Result<u32, MetaError> {
        check_name(name)?;
        if self.by_name(name).is_some() {
            return Err(MetaError::NameTaken(name.to_string()));
        }
        let s = self.volume(snap)?;
        if !s.snapshot {
            return Err(MetaError::NotSnapshot(s.name.clone()));
        }
        let clone_id = self.fresh_id();
        let s = self.volume(snap)?;
        let v = VolumeMeta {
            id: clone_id,
            parent: snap,
            uuid,
            name: name.to_string(),
            thin: true,
            snapshot: false,
            size_bytes: s.size_bytes,
            map: s.map.clone(),
        };
        let id = v.id;
        for &e in &v.map {
            if e != UNALLOCATED {
                self.incref(e);
            }
        }
        self.volumes.insert(id, v);
        Ok(id)
    }

    /// Gives volume `id` a private copy of every cluster it shares, and detaches it from its
    /// parent.
    pub fn inflate(&mut self, id: u32, tasks: &mut Vec<DataTask>) -> Result<(), MetaError> {
        let v = self.volume(id)?;
        if v.snapshot {
            return Err(MetaError::ReadOnly(v.name.clone()));
        }
        let shared: Vec<u64> = v
            .map
            .iter()
            .enumerate()
            .filter(|(_, &e)| e != UNALLOCATED && self.refs(e) > 1)
            .map(|(i, _)| i as u64)
            .collect();
        if shared.len() as u64 > self.free_available() {
            return Err(MetaError::NoSpace);
        }
        for i in shared {
            self.make_exclusive(id, i, tasks)?;
        }
        self.vol_mut(id)?.parent = 0;
        Ok(())
    }

    /// Deletes a volume, dropping its references. A snapshot with more than one clone cannot
    /// be deleted; with one, the child takes its place in the lineage (its clusters stay
    /// referenced by the child's own entries).
    pub fn delete(&mut self, id: u32) -> Result<(), MetaError> {
        let v = self.volume(id)?;
        let children = self.children(id);
        if v.snapshot && children.len() > 1 {
            return Err(MetaError::HasChildren {
                name: v.name.clone(),
                children: children.len(),
            });
        }
        let parent = v.parent;
        let v = self.volumes.remove(&id).ok_or(MetaError::NoVolume(id))?;
        for c in children {
            if let Some(child) = self.volumes.get_mut(&c) {
                child.parent = parent;
            }
        }
        self.free_map(&v.map);
        Ok(())
    }

    /// Changes the size of volume `id`: growing adds unallocated entries (allocated and zeroed
    /// for a thick volume), shrinking drops the entries past the end.
    pub fn resize(
        &mut self,
        id: u32,
        size: u64,
        tasks: &mut Vec<DataTask>,
    ) -> Result<(), MetaError> {
        self.check_size(size)?;
        let v = self.volume(id)?;
        if v.snapshot {
            return Err(MetaError::ReadOnly(v.name.clone()));
        }
        let thin = v.thin;
        let old_n = v.map.len();
        let n = self.clusters_for(size);
        if n < old_n {
            let tail: Vec<u32> = self.vol_mut(id)?.map.drain(n..).collect();
            self.free_map(&tail);
        } else if n > old_n {
            if !thin && (n - old_n) as u64 > self.free_available() {
                return Err(MetaError::NoSpace);
            }
            let mut add = vec![UNALLOCATED; n - old_n];
            if !thin {
                for e in add.iter_mut() {
                    let c = self.alloc()?;
                    tasks.push(DataTask::Zero(c));
                    *e = c;
                }
            }
            self.vol_mut(id)?.map.extend(add);
        }
        self.vol_mut(id)?.size_bytes = size;
        Ok(())
    }

    pub fn rename(&mut self, id: u32, name: &str) -> Result<(), MetaError> {
        check_name(name)?;
        if self.by_name(name).is_some_and(|v| v.id != id) {
            return Err(MetaError::NameTaken(name.to_string()));
        }
        self.vol_mut(id)?.name = name.to_string();
        Ok(())
    }

    /// Checks that the reference counts equal the number of map entries naming each cluster,
    /// that every entry names an existing cluster, and that the free count agrees.
    pub fn verify(&self) -> Result<(), MetaError> {
        let mut counted = vec![0u32; self.refs.len()];
        for v in self.volumes.values() {
            if v.map.len() != self.clusters_for(v.size_bytes) {
                return Err(MetaError::Corrupt(format!(
                    "volume {} has {} map entries for {} bytes",
                    v.id,
                    v.map.len(),
                    v.size_bytes
                )));
            }
            for &e in &v.map {
                if e == UNALLOCATED {
                    continue;
                }
                let slot = counted.get_mut(e as usize).ok_or_else(|| {
                    MetaError::Corrupt(format!("volume {} names cluster {e}, past the end", v.id))
                })?;
                *slot += 1;
            }
        }
        if counted != self.refs {
            return Err(MetaError::Corrupt(
                "reference counts disagree with the maps".into(),
            ));
        }
        let free = counted.iter().filter(|&&r| r == 0).count() as u64;
        if free != self.free {
            return Err(MetaError::Corrupt(format!(
                "free count {} but {free} clusters are unreferenced",
                self.free
            )));
        }
        Ok(())
    }

    /// The image for sequence number `seq` (see the format document).
    pub fn encode(&self, sb: &Superblock, seq: u64) -> Vec<u8> {
        let bitmap = self.refs.len().div_ceil(8).div_ceil(8) * 8;
        let mut b = Vec::with_capacity(HEADER_BYTES + bitmap + self.volumes.len() * 64);
        b.resize(HEADER_BYTES + bitmap, 0);
        b[0..8].copy_from_slice(IMAGE_MAGIC);
        put64(&mut b, 8, seq);
        b[24..40].copy_from_slice(sb.uuid.as_bytes());
        put32(&mut b, 44, self.volumes.len() as u32);
        put32(&mut b, 48, self.next_id);
        for (i, &r) in self.refs.iter().enumerate() {
            if r > 0 {
                b[HEADER_BYTES + i / 8] |= 1 << (i % 8);
            }
        }
        for v in self.volumes.values() {
            let at = b.len();
            b.resize(at + 48, 0);
            put32(&mut b, at, v.id);
            put32(&mut b, at + 4, v.parent);
            let flags =
                if v.thin { FLAG_THIN } else { 0 } | if v.snapshot { FLAG_SNAPSHOT } else { 0 };
            put32(&mut b, at + 8, flags);
            b[at + 12..at + 14].copy_from_slice(&(v.name.len() as u16).to_le_bytes());
            b[at + 16..at + 32].copy_from_slice(v.uuid.as_bytes());
            put64(&mut b, at + 32, v.size_bytes);
            put64(&mut b, at + 40, v.map.len() as u64);
            b.extend_from_slice(v.name.as_bytes());
            b.resize(b.len().div_ceil(4) * 4, 0);
            for &e in &v.map {
                b.extend_from_slice(&e.to_le_bytes());
            }
        }
        let len = b.len() as u64;
        put64(&mut b, 16, len);
        let crc = crc32c::crc32c(&b);
        put32(&mut b, 40, crc);
        b
    }

    /// Length of the image whose first 64 bytes are `header`, if they are an image header.
    pub fn image_len(header: &[u8]) -> Option<u64> {
        if header.len() < HEADER_BYTES || &header[0..8] != IMAGE_MAGIC {
            return None;
        }
        Some(get64(header, 16))
    }

    /// Decodes and checks an image read from a region.
    pub fn decode(sb: &Superblock, b: &[u8]) -> Result<Meta, MetaError> {
        let bad = |m: &str| MetaError::Corrupt(m.to_string());
        let len = Meta::image_len(b).ok_or_else(|| bad("no image magic"))?;
        if len > sb.md_region_bytes || len > b.len() as u64 || len < HEADER_BYTES as u64 {
            return Err(bad("image length out of bounds"));
        }
        let b = &b[..len as usize];
        let mut zeroed = b.to_vec();
        zeroed[40..44].fill(0);
        if crc32c::crc32c(&zeroed) != get32(b, 40) {
            return Err(bad("image checksum mismatch"));
        }
        if &b[24..40] != sb.uuid.as_bytes() {
            return Err(bad("image belongs to another pool"));
        }
        let mut m = Meta::new(sb);
        m.seq = get64(b, 8);
        m.next_id = get32(b, 48);
        let count = get32(b, 44);
        let bitmap_at = HEADER_BYTES;
        let bitmap = m.refs.len().div_ceil(8).div_ceil(8) * 8;
        let mut at = bitmap_at + bitmap;
        if at > b.len() {
            return Err(bad("image too short for its allocation map"));
        }
        for _ in 0..count {
            let rec = b
                .get(at..at + 48)
                .ok_or_else(|| bad("truncated volume record"))?;
            let id = get32(rec, 0);
            let flags = get32(rec, 8);
            let name_len = u16::from_le_bytes([rec[12], rec[13]]) as usize;
            let size = get64(rec, 32);
            let entries = get64(rec, 40);
            if id == 0 || flags & !(FLAG_THIN | FLAG_SNAPSHOT) != 0 {
                return Err(bad("bad volume id or flags"));
            }
            if entries != size.div_ceil(sb.cluster_size) || entries > MAX_CLUSTERS {
                return Err(bad("volume map length disagrees with its size"));
            }
            at += 48;
            let name = b
                .get(at..at + name_len)
                .and_then(|n| std::str::from_utf8(n).ok())
                .ok_or_else(|| bad("bad volume name"))?
                .to_string();
            check_name(&name)?;
            at = (at + name_len).div_ceil(4) * 4;
            let map_bytes = (entries as usize)
                .checked_mul(4)
                .ok_or_else(|| bad("map too large"))?;
            let raw = b
                .get(at..at + map_bytes)
                .ok_or_else(|| bad("truncated cluster map"))?;
            at += map_bytes;
            let map: Vec<u32> = raw
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let uuid = Uuid::from_slice(&rec[16..32]).map_err(|e| bad(&e.to_string()))?;
            if m.volumes.contains_key(&id) || m.by_name(&name).is_some() {
                return Err(bad("duplicate volume id or name"));
            }
            for &e in &map {
                if e == UNALLOCATED {
                    continue;
                }
                let r = m
                    .refs
                    .get_mut(e as usize)
                    .ok_or_else(|| bad("map entry past the last cluster"))?;
                if *r == 0 {
                    m.free -= 1;
                }
                *r += 1;
            }
            m.volumes.insert(
                id,
                VolumeMeta {
                    id,
                    parent: get32(rec, 4),
                    uuid,
                    name,
                    thin: flags & FLAG_THIN != 0,
                    snapshot: flags & FLAG_SNAPSHOT != 0,
                    size_bytes: size,
                    map,
                },
            );
        }
        if at != b.len() {
            return Err(bad("trailing bytes after the last volume"));
        }
        for (i, &r) in m.refs.iter().enumerate() {
            let bit = b[bitmap_at + i / 8] >> (i % 8) & 1 == 1;
            if bit != (r > 0) {
                return Err(MetaError::Corrupt(format!(
                    "allocation map says cluster {i} is {} but {r} entries name it",
                    if bit { "used" } else { "free" }
                )));
            }
        }
        if m.next_id == 0 {
            return Err(bad("next volume id is zero"));
        }
        Ok(m)
    }
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn get64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sb(clusters: u64) -> Superblock {
        Superblock {
            uuid: Uuid::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff),
            name: "pool0".into(),
            cluster_size: 65536,
            md_region_bytes: 1 << 20,
            data_offset: 3 << 20,
            clusters,
            block_size: 512,
        }
    }

    #[test]
    fn superblock_bytes_follow_the_table() {
        let b = sb(100).encode();
        assert_eq!(b.len(), 4096);
        assert_eq!(&b[0..8], b"GYRELVOL");
        assert_eq!(b[8..12], [1, 0, 0, 0]);
        assert_eq!(b[16], 0x00);
        assert_eq!(b[31], 0xff);
        assert_eq!(b[32..40], [0, 0, 1, 0, 0, 0, 0, 0]); // 65536
        assert_eq!(b[40..48], [0, 0, 0x10, 0, 0, 0, 0, 0]); // 1 MiB
        assert_eq!(b[48..56], [0, 0, 0x30, 0, 0, 0, 0, 0]); // 3 MiB
        assert_eq!(b[56..64], [100, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(b[64..68], [0, 2, 0, 0]); // 512
        assert_eq!(b[68..72], [5, 0, 0, 0]);
        assert_eq!(&b[72..77], b"pool0");
        assert!(b[77..4092].iter().all(|&x| x == 0));
        assert_eq!(
            u32::from_le_bytes([b[4092], b[4093], b[4094], b[4095]]),
            crc32c::crc32c(&b[..4092])
        );
        assert_eq!(Superblock::decode(&b).unwrap(), Some(sb(100)));
    }

    #[test]
    fn damaged_superblock_is_refused_and_foreign_bytes_are_not_a_pool() {
        let mut b = sb(100).encode();
        b[60] ^= 1;
        assert!(matches!(Superblock::decode(&b), Err(MetaError::Corrupt(_))));
        assert_eq!(Superblock::decode(&[0u8; 4096]).unwrap(), None);
        assert_eq!(Superblock::decode(&[1u8; 10]).unwrap(), None);
    }

    #[test]
    fn plan_leaves_room_for_both_regions_before_the_clusters() {
        let s = Superblock::plan("p", Uuid::nil(), 64 << 20, 512, 1 << 20).unwrap();
        assert!(s.data_offset >= 4096 + 2 * s.md_region_bytes);
        assert_eq!(s.data_offset % (1 << 20), 0);
        assert!(s.base_bytes_needed() <= 64 << 20);
        assert_eq!(
            s.clusters,
            (64 << 20) / (1 << 20) - s.data_offset / (1 << 20)
        );
        assert!(Superblock::plan("p", Uuid::nil(), 1 << 20, 512, 1 << 20).is_err());
        assert!(Superblock::plan("p", Uuid::nil(), 64 << 20, 512, 3000).is_err());
    }

    #[test]
    fn image_bytes_follow_the_table() {
        let s = sb(10);
        let mut m = Meta::new(&s);
        let mut t = Vec::new();
        let id = m
            .create_volume("v", Uuid::from_u128(7), 2 * 65536, false, &mut t)
            .unwrap();
        assert_eq!(t, vec![DataTask::Zero(0), DataTask::Zero(1)]);
        let img = m.encode(&s, 3);
        // header 64 + bitmap 8 + record 48 + name padded to 4 + 2 entries
        assert_eq!(img.len(), 64 + 8 + 48 + 4 + 8);
        assert_eq!(&img[0..8], b"GYRELVMD");
        assert_eq!(img[8..16], [3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(img[16..24], [132, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(img[44..48], [1, 0, 0, 0]);
        assert_eq!(img[48..52], [2, 0, 0, 0]);
        assert_eq!(img[64], 0b11);
        assert_eq!(img[72..76], (id).to_le_bytes());
        assert_eq!(img[76..80], [0, 0, 0, 0]); // parent
        assert_eq!(img[80..84], [0, 0, 0, 0]); // thick, not a snapshot
        assert_eq!(img[84..86], [1, 0]);
        assert_eq!(img[104..112], (2u64 * 65536).to_le_bytes());
        assert_eq!(img[112..120], [2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&img[120..124], b"v\0\0\0");
        assert_eq!(img[124..132], [0, 0, 0, 0, 1, 0, 0, 0]);
        let mut z = img.clone();
        z[40..44].fill(0);
        assert_eq!(img[40..44], crc32c::crc32c(&z).to_le_bytes());
        let back = Meta::decode(&s, &img).unwrap();
        assert_eq!(back.volumes, m.volumes);
        assert_eq!(back.seq, 3);
        assert_eq!(back.free_clusters(), 8);
    }

    #[test]
    fn corrupt_images_are_refused() {
        let s = sb(10);
        let mut m = Meta::new(&s);
        let mut t = Vec::new();
        m.create_volume("v", Uuid::nil(), 65536, false, &mut t)
            .unwrap();
        let img = m.encode(&s, 1);
        let mut flipped = img.clone();
        flipped[img.len() - 1] ^= 1;
        assert!(Meta::decode(&s, &flipped).is_err());
        assert!(Meta::decode(&s, &img[..img.len() - 4]).is_err());
        let mut other = s.clone();
        other.uuid = Uuid::from_u128(1);
        assert!(Meta::decode(&other, &img).is_err());
        // A map entry past the pool, with a valid checksum.
        let mut bad = img.clone();
        let n = bad.len();
        bad[n - 4..].copy_from_slice(&50u32.to_le_bytes());
        bad[64] = 0;
        bad[40..44].fill(0);
        let crc = crc32c::crc32c(&bad);
        bad[40..44].copy_from_slice(&crc.to_le_bytes());
        assert!(Meta::decode(&s, &bad).is_err());
        // Allocation map disagreeing with the maps.
        let mut bad = img.clone();
        bad[64] = 0b10;
        bad[40..44].fill(0);
        let crc = crc32c::crc32c(&bad);
        bad[40..44].copy_from_slice(&crc.to_le_bytes());
        assert!(Meta::decode(&s, &bad).is_err());
    }

    #[test]
    fn snapshot_shares_and_write_copies() {
        let s = sb(8);
        let mut m = Meta::new(&s);
        let mut t = Vec::new();
        let v = m
            .create_volume("v", Uuid::nil(), 2 * 65536, true, &mut t)
            .unwrap();
        assert!(t.is_empty());
        let c0 = m.make_exclusive(v, 0, &mut t).unwrap();
        assert_eq!(t, vec![DataTask::Zero(c0)]);
        let snap = m.snapshot(v, "s", Uuid::nil()).unwrap();
        assert_eq!(m.refs(c0), 2);
        assert_eq!(m.volume(v).unwrap().parent, snap);
        t.clear();
        let c1 = m.make_exclusive(v, 0, &mut t).unwrap();
        assert_ne!(c0, c1);
        assert_eq!(t, vec![DataTask::Copy { from: c0, to: c1 }]);
        assert_eq!(m.refs(c0), 1);
        assert_eq!(m.volume(snap).unwrap().map[0], c0);
        assert!(matches!(
            m.make_exclusive(snap, 0, &mut t),
            Err(MetaError::ReadOnly(_))
        ));
        let clone = m.clone_volume(snap, "c", Uuid::nil()).unwrap();
        assert_eq!(m.refs(c0), 2);
        let clone2 = m.clone_volume(snap, "c2", Uuid::nil()).unwrap();
        assert!(matches!(m.delete(snap), Err(MetaError::HasChildren { .. })));
        m.delete(clone2).unwrap();
        // v and the clone are both children of the snapshot.
        assert!(matches!(m.delete(snap), Err(MetaError::HasChildren { .. })));
        t.clear();
        m.inflate(clone, &mut t).unwrap();
        assert_eq!(m.volume(clone).unwrap().parent, 0);
        assert_eq!(m.refs(c0), 1);
        m.delete(snap).unwrap();
        assert_eq!(m.refs(c0), 0);
        assert_eq!(m.volume(v).unwrap().parent, 0);
        m.verify().unwrap();
    }

    #[test]
    fn freed_clusters_wait_for_their_commit() {
        let s = sb(1);
        let mut m = Meta::new(&s);
        let mut t = Vec::new();
        let v = m
            .create_volume("v", Uuid::nil(), 65536, true, &mut t)
            .unwrap();
        m.make_exclusive(v, 0, &mut t).unwrap();
        m.release(v, 0).unwrap();
        assert_eq!(m.free_clusters(), 1);
        assert_eq!(m.make_exclusive(v, 0, &mut t), Err(MetaError::NoSpace));
        m.commit_done();
        assert_eq!(m.make_exclusive(v, 0, &mut t), Ok(0));
    }

    #[test]
    fn volume_ids_skip_zero_and_ids_in_use_when_they_wrap() {
        let s = sb(4);
        let mut m = Meta::new(&s);
        let mut t = Vec::new();
        assert_eq!(m.create_volume("a", Uuid::nil(), 512, true, &mut t), Ok(1));
        m.next_id = u32::MAX;
        assert_eq!(
            m.create_volume("b", Uuid::nil(), 512, true, &mut t),
            Ok(u32::MAX)
        );
        // 0 is never an id and 1 is taken.
        assert_eq!(m.snapshot(1, "c", Uuid::nil()), Ok(2));
        let img = m.encode(&s, 2);
        assert_eq!(Meta::decode(&s, &img).unwrap().next_id, 3);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Create { thin: bool, clusters: u8 },
        Write { vol: u8, index: u8 },
        Release { vol: u8, index: u8 },
        Snapshot { vol: u8 },
        Clone { vol: u8 },
        Inflate { vol: u8 },
        Delete { vol: u8 },
        Resize { vol: u8, clusters: u8 },
        Commit,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<bool>(), 1u8..6).prop_map(|(thin, clusters)| Op::Create { thin, clusters }),
            (any::<u8>(), any::<u8>()).prop_map(|(vol, index)| Op::Write { vol, index }),
            (any::<u8>(), any::<u8>()).prop_map(|(vol, index)| Op::Release { vol, index }),
            any::<u8>().prop_map(|vol| Op::Snapshot { vol }),
            any::<u8>().prop_map(|vol| Op::Clone { vol }),
            any::<u8>().prop_map(|vol| Op::Inflate { vol }),
            any::<u8>().prop_map(|vol| Op::Delete { vol }),
            (any::<u8>(), 1u8..6).prop_map(|(vol, clusters)| Op::Resize { vol, clusters }),
            Just(Op::Commit),
        ]
    }

    fn pick(m: &Meta, k: u8) -> Option<u32> {
        let ids: Vec<u32> = m.volumes.keys().copied().collect();
        if ids.is_empty() {
            None
        } else {
            Some(ids[k as usize % ids.len()])
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever the sequence of operations: reference counts equal the entries naming each
        /// cluster, no cluster is both free and referenced, a cluster handed out by an
        /// allocation was free (never one still referenced), data tasks only target freshly
        /// allocated clusters, and the image decodes to the same metadata.
        #[test]
        fn allocator_and_reference_counts_stay_consistent(ops in proptest::collection::vec(op(), 1..60)) {
            let s = sb(24);
            let mut m = Meta::new(&s);
            let mut n = 0u32;
            for op in ops {
                let before = m.clone();
                let mut t = Vec::new();
                let name = |n: &mut u32| { *n += 1; format!("v{n}") };
                let r = match op {
                    Op::Create { thin, clusters } => m
                        .create_volume(&name(&mut n), Uuid::nil(), clusters as u64 * 65536, thin, &mut t)
                        .map(|_| ()),
                    Op::Write { vol, index } => match pick(&m, vol) {
                        Some(id) => {
                            let len = m.volume(id).unwrap().map.len();
                            m.make_exclusive(id, index as u64 % len as u64, &mut t).map(|_| ())
                        }
                        None => Ok(()),
                    },
                    Op::Release { vol, index } => match pick(&m, vol) {
                        Some(id) => {
                            let len = m.volume(id).unwrap().map.len();
                            m.release(id, index as u64 % len as u64)
                        }
                        None => Ok(()),
                    },
                    Op::Snapshot { vol } => match pick(&m, vol) {
                        Some(id) => m.snapshot(id, &name(&mut n), Uuid::nil()).map(|_| ()),
                        None => Ok(()),
                    },
                    Op::Clone { vol } => match pick(&m, vol) {
                        Some(id) => m.clone_volume(id, &name(&mut n), Uuid::nil()).map(|_| ()),
                        None => Ok(()),
                    },
                    Op::Inflate { vol } => match pick(&m, vol) {
                        Some(id) => m.inflate(id, &mut t),
                        None => Ok(()),
                    },
                    Op::Delete { vol } => match pick(&m, vol) {
                        Some(id) => m.delete(id),
                        None => Ok(()),
                    },
                    Op::Resize { vol, clusters } => match pick(&m, vol) {
                        Some(id) => m.resize(id, clusters as u64 * 65536, &mut t),
                        None => Ok(()),
                    },
                    Op::Commit => { m.commit_done(); Ok(()) }
                };
                if r.is_err() && t.is_empty() {
                    // A refused operation that asked for no data work changed nothing that
                    // matters: the maps are as before.
                    prop_assert_eq!(&m.volumes, &before.volumes);
                }
                m.verify().map_err(|e| TestCaseError::fail(e.to_string()))?;
                for task in &t {
                    let target = match *task { DataTask::Zero(c) => c, DataTask::Copy { to, .. } => to };
                    prop_assert_eq!(before.refs(target), 0, "allocated a referenced cluster");
                    prop_assert!(!before.held[target as usize], "allocated a cluster freed before its commit");
                    prop_assert_eq!(m.refs(target), 1);
                    if let DataTask::Copy { from, .. } = *task {
                        prop_assert!(before.refs(from) >= 2);
                    }
                }
                let img = m.encode(&s, 9);
                let back = Meta::decode(&s, &img).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&back.volumes, &m.volumes);
                prop_assert_eq!(back.free_clusters(), m.free_clusters());
            }
        }
    }
}
