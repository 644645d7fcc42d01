//! The core: routes methods to modules, serves its own methods (`rpc_get_methods`,
//! `save_config`, `load_config`), applies and saves configurations, and shuts modules down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use gyre_api::core::{
    LoadConfig, LoadConfigResult, MethodDescription, NoParams, ParamDescription, SaveConfig,
    SaveConfigResult,
};
use gyre_api::{codes, ConfigCall, ConfigFile, ModuleConfig};
use serde_json::Value;

use crate::config::{read_config_file, write_atomically};
use crate::context::DaemonContext;
use crate::module::{parse, to_result, MethodInfo, Module, ParamInfo, RpcError};

/// The name under which the core's own methods are listed.
pub const CORE_MODULE: &str = "gyred";

const CORE_METHODS: &[MethodInfo] = &[
    MethodInfo {
        name: "rpc_get_methods",
        description: "List every method with its module, description and parameters",
        params: &[],
        mutates: false,
    },
    MethodInfo {
        name: "save_config",
        description: "Write the configuration that rebuilds the running state (atomically)",
        params: &[ParamInfo::optional(
            "path",
            "string",
            "file to write (default: the --config file)",
        )],
        mutates: false,
    },
    MethodInfo {
        name: "load_config",
        description: "Apply a configuration file to the running daemon (all or nothing)",
        params: &[ParamInfo::required("path", "string", "file to read")],
        // Serialised by `apply_config` itself, which holds the configuration lock throughout.
        mutates: false,
    },
];

#[derive(Clone, Copy)]
enum Owner {
    Core,
    Module(usize),
}

pub(crate) struct Core {
    modules: Vec<Box<dyn Module>>,
    methods: BTreeMap<&'static str, (Owner, MethodInfo)>,
    config_lock: Mutex<()>,
    config_path: Option<PathBuf>,
    ctx: DaemonContext,
    in_flight: Mutex<usize>,
    idle: Condvar,
}

/// Why modules could not be put together.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("two modules are named '{0}'")]
    DuplicateModule(String),
    #[error("method '{method}' is served by both '{first}' and '{second}'")]
    DuplicateMethod {
        method: String,
        first: String,
        second: String,
    },
}

/// Counts a request as in flight while alive.
pub(crate) struct InFlight<'a>(&'a Core);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut n = self.0.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.0.idle.notify_all();
        }
    }
}

impl Core {
    pub(crate) fn new(
        mut modules: Vec<Box<dyn Module>>,
        config_path: Option<PathBuf>,
        ctx: DaemonContext,
    ) -> Result<Core, RegistrationError> {
        modules.sort_by_key(|m| m.rank());
        let mut names = std::collections::BTreeSet::new();
        for m in &modules {
            if !names.insert(m.name()) || m.name() == CORE_MODULE {
                return Err(RegistrationError::DuplicateModule(m.name().to_string()));
            }
        }
        let mut methods = BTreeMap::new();
        for info in CORE_METHODS {
            methods.insert(info.name, (Owner::Core, *info));
        }
        for (i, m) in modules.iter().enumerate() {
            for info in m.methods() {
                if let Some((owner, _)) = methods.insert(info.name, (Owner::Module(i), info)) {
                    let first = match owner {
                        Owner::Core => CORE_MODULE.to_string(),
                        Owner::Module(j) => modules[j].name().to_string(),
                    };
                    return Err(RegistrationError::DuplicateMethod {
                        method: info.name.to_string(),
                        first,
                        second: m.name().to_string(),
                    });
                }
            }
        }
        Ok(Core {
            modules,
            methods,
            config_lock: Mutex::new(()),
            config_path,
            ctx,
            in_flight: Mutex::new(0),
            idle: Condvar::new(),
        })
    }

    pub(crate) fn context(&self) -> &DaemonContext {
        &self.ctx
    }

    pub(crate) fn modules(&self) -> &[Box<dyn Module>] {
        &self.modules
    }

    /// Marks a request as running until the guard drops; `None` once shutdown began.
    pub(crate) fn begin_request(&self) -> Option<InFlight<'_>> {
        let mut n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if self.ctx.shutdown().is_set() {
            return None;
        }
        *n += 1;
        Some(InFlight(self))
    }

    /// Waits until no request runs, at most until `deadline`; returns whether none does.
    pub(crate) fn wait_idle(&self, deadline: Instant) -> bool {
        let mut n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        while *n > 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            n = match self.idle.wait_timeout(n, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }

    fn module_name(&self, owner: Owner) -> &'static str {
        match owner {
            Owner::Core => CORE_MODULE,
            Owner::Module(i) => self.modules[i].name(),
        }
    }

    /// Calls a method by name.
    pub(crate) fn call(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let Some(&(owner, info)) = self.methods.get(method) else {
            return Err(self.method_not_found(method));
        };
        let _serial = info
            .mutates
            .then(|| self.config_lock.lock().unwrap_or_else(|e| e.into_inner()));
        let object = match owner {
            Owner::Module(i) => self.modules[i].object_name(method, &params),
            Owner::Core => params
                .get("path")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        let result = match owner {
            Owner::Core => self.core_method(method, params),
            Owner::Module(i) => self.modules[i].handle(method, params),
        };
        if info.mutates {
            let object = object.unwrap_or_default();
            match &result {
                Ok(_) => tracing::info!(method, object = %object, "configuration changed"),
                Err(e) => {
                    tracing::info!(method, object = %object, error = %e.message, "configuration change refused")
                }
            }
        }
        result
    }

    fn method_not_found(&self, method: &str) -> RpcError {
        let best = self
            .methods
            .keys()
            .map(|m| (edit_distance(method, m), *m))
            .min();
        let hint = match best {
            Some((d, m)) if d <= (method.len() / 3).max(2) => format!("; did you mean '{m}'?"),
            _ => String::new(),
        };
        RpcError::new(
            codes::METHOD_NOT_FOUND,
            format!("method '{method}' not found{hint} (rpc_get_methods lists them all)"),
        )
    }

    fn core_method(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "rpc_get_methods" => {
                let _: NoParams = parse(params)?;
                let list: Vec<MethodDescription> = self
                    .methods
                    .values()
                    .map(|(owner, info)| MethodDescription {
                        name: info.name.to_string(),
                        module: self.module_name(*owner).to_string(),
                        description: info.description.to_string(),
                        params: info
                            .params
                            .iter()
                            .map(|p| ParamDescription {
                                name: p.name.to_string(),
                                ty: p.ty.to_string(),
                                required: p.required,
                                description: p.description.to_string(),
                            })
                            .collect(),
                    })
                    .collect();
                to_result(&list)
            }
            "save_config" => {
                let p: SaveConfig = parse(params)?;
                let path = match (p.path, &self.config_path) {
                    (Some(p), _) => PathBuf::from(p),
                    (None, Some(p)) => p.clone(),
                    (None, None) => {
                        return Err(RpcError::invalid_param(
                            "path",
                            "no path given, and gyred was started without --config",
                        ))
                    }
                };
                let _serial = self.config_lock.lock().unwrap_or_else(|e| e.into_inner());
                let written = self.save_config_to(&path)?;
                tracing::info!(path = %written.display(), "configuration saved");
                to_result(&SaveConfigResult {
                    path: written.display().to_string(),
                })
            }
            "load_config" => {
                let p: LoadConfig = parse(params)?;
                let file = read_config_file(Path::new(&p.path))?;
                let calls = self.apply_config(&file, &p.path, true)?;
                to_result(&LoadConfigResult {
                    path: p.path,
                    calls,
                })
            }
            _ => Err(self.method_not_found(method)),
        }
    }

    /// The running configuration.
    pub(crate) fn current_config(&self) -> ConfigFile {
        ConfigFile::new(
            self.modules
                .iter()
                .map(|m| ModuleConfig {
                    module: m.name().to_string(),
                    config: m.save_config(),
                })
                .filter(|m| !m.config.is_empty())
                .collect(),
        )
    }

    fn save_config_to(&self, path: &Path) -> Result<PathBuf, RpcError> {
        let mut text = serde_json::to_string_pretty(&self.current_config())
            .map_err(|e| RpcError::internal(format!("cannot encode the configuration: {e}")))?;
        text.push('\n');
        write_atomically(path, text.as_bytes())
            .map_err(|e| RpcError::failed(format!("cannot write {}: {e}", path.display())))
    }

    fn find_module(&self, name: &str) -> Option<usize> {
        self.modules.iter().position(|m| m.name() == name)
    }

    /// Checks a whole configuration, then applies its calls module by module in rank order.
    /// With `rollback`, a failure undoes the calls already applied (for `load_config`; at
    /// startup the daemon exits instead). Returns the number of calls applied.
    pub(crate) fn apply_config(
        &self,
        file: &ConfigFile,
        source: &str,
        rollback: bool,
    ) -> Result<usize, RpcError> {
        if file.version != gyre_api::config::CONFIG_VERSION {
            return Err(RpcError::new(
                codes::INVALID_CONFIG,
                format!(
                    "config: {source}: version {} is not supported (expected {})",
                    file.version,
                    gyre_api::config::CONFIG_VERSION
                ),
            ));
        }
        // Check everything before changing anything.
        let mut plan: Vec<(usize, usize, &ConfigCall)> = Vec::new();
        for section in &file.modules {
            let Some(mi) = self.find_module(&section.module) else {
                let known: Vec<&str> = self.modules.iter().map(|m| m.name()).collect();
                return Err(RpcError::new(
                    codes::INVALID_CONFIG,
                    format!(
                        "config: {source}: unknown module '{}' (known: {})",
                        section.module,
                        known.join(", ")
                    ),
                ));
            };
            for (ci, call) in section.config.iter().enumerate() {
                let fail = |e: RpcError| self.config_error(source, mi, ci, call, e);
                match self.methods.get(call.method.as_str()) {
                    Some((Owner::Module(owner), _)) if *owner == mi => {}
                    Some((owner, _)) => {
                        return Err(fail(RpcError::new(
                            codes::INVALID_CONFIG,
                            format!(
                                "method belongs to module '{}', not '{}'",
                                self.module_name(*owner),
                                section.module
                            ),
                        )))
                    }
                    None => return Err(fail(self.method_not_found(&call.method))),
                }
                self.modules[mi]
                    .validate(&call.method, &call.params)
                    .map_err(fail)?;
                plan.push((mi, ci, call));
            }
        }
        plan.sort_by_key(|(mi, _, _)| self.modules[*mi].rank());
        let _serial = self.config_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut applied: Vec<(usize, &ConfigCall)> = Vec::new();
        for &(mi, ci, call) in &plan {
            if let Err(e) = self.modules[mi].handle(&call.method, call.params.clone()) {
                let mut err = self.config_error(source, mi, ci, call, e);
                if rollback {
                    let mut failed_undo = 0;
                    for &(mj, done) in applied.iter().rev() {
                        if let Err(ue) = self.modules[mj].undo(done) {
                            tracing::warn!(method = %done.method, error = %ue, "could not undo a configuration call");
                            failed_undo += 1;
                        }
                    }
                    if !applied.is_empty() {
                        err.message.push_str(&if failed_undo == 0 {
                            format!("; the {} call(s) applied before were undone", applied.len())
                        } else {
                            format!("; {failed_undo} of the {} call(s) applied before could not be undone", applied.len())
                        });
                    }
                }
                return Err(err);
            }
            let object = self.modules[mi]
                .object_name(&call.method, &call.params)
                .unwrap_or_default();
            tracing::info!(method = %call.method, object = %object, source, "configuration applied");
            applied.push((mi, call));
        }
        Ok(applied.len())
    }

    /// `config: bdev_malloc_create 'm0': params.size: ... (module 'bdev', call 1 in FILE)`
    fn config_error(
        &self,
        source: &str,
        mi: usize,
        ci: usize,
        call: &ConfigCall,
        e: RpcError,
    ) -> RpcError {
        let module = self.modules[mi].name();
        let object = self.modules[mi].object_name(&call.method, &call.params);
        let what = match &object {
            Some(o) => format!("{} '{o}'", call.method),
            None => call.method.clone(),
        };
        let data = serde_json::json!({
            "module": module,
            "method": call.method,
            "object": object,
            "field": e.field(),
            "call_index": ci,
            "cause_code": e.code,
            "source": source,
        });
        RpcError::new(
            codes::INVALID_CONFIG,
            format!(
                "config: {what}: {} (module '{module}', call {} in {source})",
                e.message,
                ci + 1
            ),
        )
        .with_data(data)
    }

    /// Calls every module's shutdown, highest rank first, all within `deadline`.
    pub(crate) fn shutdown_modules(&self, deadline: Instant) {
        for m in self.modules.iter().rev() {
            let start = Instant::now();
            m.shutdown(deadline);
            tracing::info!(module = m.name(), took = ?start.elapsed(), "module shut down");
            if Instant::now() >= deadline {
                tracing::warn!("shutdown deadline passed; stopping the remaining modules at once");
            }
        }
    }
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// A bound on how long module shutdowns may take.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("bdev_list", "bdev_list"), 0);
        assert_eq!(edit_distance("bdev_lst", "bdev_list"), 1);
        assert_eq!(edit_distance("bdev_lsit", "bdev_list"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
