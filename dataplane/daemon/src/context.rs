//! What modules get from the daemon: the reactors, the bdev registry, the time a reactor has
//! to answer a control message, and whether the daemon is shutting down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use gyre_bdev::BdevRegistry;
use gyre_reactor::{CallError, ReactorHandle};

use crate::module::RpcError;

/// Set once when the daemon begins to shut down; waits can be cut short by it.
#[derive(Default)]
pub struct ShutdownFlag {
    set: AtomicBool,
    lock: Mutex<()>,
    cond: Condvar,
}

impl ShutdownFlag {
    pub fn trigger(&self) {
        self.set.store(true, Ordering::SeqCst);
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.cond.notify_all();
    }

    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// Sleeps for `d` or until the flag is set; returns whether it is set.
    pub fn wait_timeout(&self, d: Duration) -> bool {
        let deadline = std::time::Instant::now() + d;
        let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.is_set() {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            g = match self.cond.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// Shared by the core and every module. Cheap to clone.
#[derive(Clone)]
pub struct DaemonContext {
    reactors: Arc<[ReactorHandle]>,
    bdevs: BdevRegistry,
    call_timeout: Duration,
    shutdown: Arc<ShutdownFlag>,
}

impl DaemonContext {
    pub(crate) fn new(
        reactors: Vec<ReactorHandle>,
        bdevs: BdevRegistry,
        call_timeout: Duration,
        shutdown: Arc<ShutdownFlag>,
    ) -> Self {
        DaemonContext {
            reactors: reactors.into(),
            bdevs,
            call_timeout,
            shutdown,
        }
    }

    pub fn reactors(&self) -> &[ReactorHandle] {
        &self.reactors
    }

    pub fn bdevs(&self) -> &BdevRegistry {
        &self.bdevs
    }

    /// How long a control message to a reactor may take.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    pub fn shutdown(&self) -> &ShutdownFlag {
        &self.shutdown
    }

    /// Runs `f` on reactor `index` and waits (at most the call timeout) for its result.
    pub fn call_on<R: Send + 'static>(
        &self,
        index: usize,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, RpcError> {
        let r = self
            .reactors
            .get(index)
            .ok_or_else(|| RpcError::not_found(format!("reactor {index} not found")))?;
        r.call(f, self.call_timeout).map_err(|e| match e {
            CallError::Timeout(d) => {
                RpcError::failed(format!("reactor {index} did not answer within {d:?}"))
            }
            CallError::Stopped => RpcError::failed(format!("reactor {index} has stopped")),
        })
    }
}
