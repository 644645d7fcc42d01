//! The bdev registry: names to bdevs, open descriptors, exclusive claims and removal events.
//! Control path only: a mutex guards it, and the I/O path never touches it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::bdev::{Bdev, BdevChannel, BdevInfo};
use crate::io::IoTypes;
use crate::BdevError;

/// Something that happened to an open bdev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BdevEvent {
    /// The bdev was removed: close the descriptor (new I/O fails with `Removed`).
    Removed { name: String },
    /// The bdev's block count changed.
    Resized { name: String, num_blocks: u64 },
}

/// Called (on the control thread that caused the event) for each event of an open bdev.
/// Typically it sends a message to the reactor that owns the holder.
pub type BdevEventHandler = Arc<dyn Fn(&BdevEvent) + Send + Sync>;

struct OpenRecord {
    id: u64,
    writable: bool,
    holder: String,
    on_event: Option<BdevEventHandler>,
}

struct Entry {
    bdev: Arc<dyn Bdev>,
    opens: Vec<OpenRecord>,
    claim: Option<(u64, String)>,
}

#[derive(Default)]
struct State {
    bdevs: BTreeMap<String, Entry>,
    next_desc: u64,
}

/// A summary of a registered bdev, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BdevSummary {
    pub name: String,
    pub module: &'static str,
    pub uuid: uuid::Uuid,
    pub block_size: u32,
    pub num_blocks: u64,
    pub io_types: IoTypes,
    pub claimed_by: Option<String>,
    pub holders: Vec<String>,
}

/// All bdevs of a process. Cheap to clone.
#[derive(Clone, Default)]
pub struct BdevRegistry {
    state: Arc<Mutex<State>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BdevRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a bdev under its name.
    pub fn register(&self, bdev: Arc<dyn Bdev>) -> Result<(), BdevError> {
        let name = bdev.info().name().to_string();
        let mut st = lock(&self.state);
        if st.bdevs.contains_key(&name) {
            return Err(BdevError::AlreadyExists(name));
        }
        tracing::info!(bdev = %name, module = bdev.info().module(), size = bdev.info().size_bytes(), "bdev registered");
        st.bdevs.insert(
            name,
            Entry {
                bdev,
                opens: Vec::new(),
                claim: None,
            },
        );
        Ok(())
    }

    /// Opens a bdev. `holder` names the opener in listings and errors ("in use by ...").
    pub fn open(
        &self,
        name: &str,
        writable: bool,
        holder: &str,
        on_event: Option<BdevEventHandler>,
    ) -> Result<BdevDesc, BdevError> {
        let mut st = lock(&self.state);
        st.next_desc += 1;
        let id = st.next_desc;
        let entry = st
            .bdevs
            .get_mut(name)
            .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        if writable {
            if let Some((_, by)) = &entry.claim {
                return Err(BdevError::Claimed {
                    name: name.to_string(),
                    by: by.clone(),
                });
            }
        }
        entry.opens.push(OpenRecord {
            id,
            writable,
            holder: holder.to_string(),
            on_event,
        });
        Ok(BdevDesc {
            bdev: entry.bdev.clone(),
            registry: Arc::downgrade(&self.state),
            id,
            writable,
        })
    }

    /// Removes a bdev that nobody holds open. With `force`, removes it anyway: holders are
    /// told and their further I/O fails with `Removed`.
    pub fn delete(&self, name: &str, force: bool) -> Result<(), BdevError> {
        let (entry, handlers) = {
            let mut st = lock(&self.state);
            let entry = st
                .bdevs
                .get(name)
                .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
            if !force && !entry.opens.is_empty() {
                return Err(BdevError::InUse {
                    name: name.to_string(),
                    holders: entry.opens.iter().map(|o| o.holder.clone()).collect(),
                });
            }
            let entry = st
                .bdevs
                .remove(name)
                .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
            let handlers: Vec<BdevEventHandler> = entry
                .opens
                .iter()
                .filter_map(|o| o.on_event.clone())
                .collect();
            (entry, handlers)
        };
        entry.bdev.info().mark_removed();
        entry.bdev.on_remove();
        tracing::info!(bdev = %name, holders = handlers.len(), "bdev removed");
        let ev = BdevEvent::Removed {
            name: name.to_string(),
        };
        for h in handlers {
            h(&ev);
        }
        Ok(())
    }

    /// Tells the holders of `name` that its size changed.
    pub fn notify_resized(&self, name: &str) -> Result<(), BdevError> {
        let (ev, handlers) = {
            let st = lock(&self.state);
            let entry = st
                .bdevs
                .get(name)
                .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
            let ev = BdevEvent::Resized {
                name: name.to_string(),
                num_blocks: entry.bdev.info().num_blocks(),
            };
            let handlers: Vec<BdevEventHandler> = entry
                .opens
                .iter()
                .filter_map(|o| o.on_event.clone())
                .collect();
            (ev, handlers)
        };
        for h in handlers {
            h(&ev);
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Bdev>> {
        lock(&self.state).bdevs.get(name).map(|e| e.bdev.clone())
    }

    /// Who holds `name` open.
    pub fn holders(&self, name: &str) -> Vec<String> {
        lock(&self.state)
            .bdevs
            .get(name)
            .map(|e| e.opens.iter().map(|o| o.holder.clone()).collect())
            .unwrap_or_default()
    }

    pub fn list(&self) -> Vec<BdevSummary> {
        lock(&self.state)
            .bdevs
            .values()
            .map(|e| {
                let i = e.bdev.info();
                BdevSummary {
                    name: i.name().to_string(),
                    module: i.module(),
                    uuid: i.uuid(),
                    block_size: i.block_size(),
                    num_blocks: i.num_blocks(),
                    io_types: i.io_types(),
                    claimed_by: e.claim.as_ref().map(|(_, by)| by.clone()),
                    holders: e.opens.iter().map(|o| o.holder.clone()).collect(),
                }
            })
            .collect()
    }
}

/// An open bdev. Closing is dropping.
pub struct BdevDesc {
    bdev: Arc<dyn Bdev>,
    registry: Weak<Mutex<State>>,
    id: u64,
    writable: bool,
}

impl BdevDesc {
    pub fn bdev(&self) -> &Arc<dyn Bdev> {
        &self.bdev
    }

    pub fn info(&self) -> &BdevInfo {
        self.bdev.info()
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Claims the bdev exclusively for `owner` (a virtual bdev stacked on it): no one else
    /// may then open it for writing. Fails if it is claimed or open for writing elsewhere.
    pub fn claim(&self, owner: &str) -> Result<(), BdevError> {
        let state = self.registry.upgrade().ok_or(BdevError::RegistryGone)?;
        let mut st = lock(&state);
        let name = self.bdev.info().name();
        let entry = st
            .bdevs
            .get_mut(name)
            .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        if let Some((id, by)) = &entry.claim {
            if *id == self.id {
                return Ok(());
            }
            return Err(BdevError::Claimed {
                name: name.to_string(),
                by: by.clone(),
            });
        }
        if let Some(other) = entry.opens.iter().find(|o| o.writable && o.id != self.id) {
            return Err(BdevError::InUse {
                name: name.to_string(),
                holders: vec![other.holder.clone()],
            });
        }
        entry.claim = Some((self.id, owner.to_string()));
        Ok(())
    }

    /// An I/O channel for the calling thread.
    pub fn channel(&self) -> Result<BdevChannel, BdevError> {
        if self.bdev.info().is_removed() {
            return Err(BdevError::NotFound(self.bdev.info().name().to_string()));
        }
        BdevChannel::new(self.bdev.clone(), self.writable)
    }
}

impl Drop for BdevDesc {
    fn drop(&mut self) {
        let Some(state) = self.registry.upgrade() else {
            return;
        };
        let mut st = lock(&state);
        if let Some(entry) = st.bdevs.get_mut(self.bdev.info().name()) {
            entry.opens.retain(|o| o.id != self.id);
            if entry.claim.as_ref().is_some_and(|(id, _)| *id == self.id) {
                entry.claim = None;
            }
        }
    }
}
