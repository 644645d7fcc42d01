//! `gyrectl config ...`

use std::path::Path;

use clap::Subcommand;
use gyre_api::core::{LoadConfig, SaveConfig};
use gyre_api::ClientError;
use serde_json::Value;

use crate::output::{field, Output};
use crate::Ctx;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write the running configuration (default: the file gyred was started with).
    Save { path: Option<String> },
    /// Apply a configuration file to the running daemon (all or nothing).
    Load { path: String },
}

/// Paths go to the daemon, whose working directory may differ from ours.
fn absolute(p: &str) -> String {
    std::path::absolute(Path::new(p))
        .map(|a| a.display().to_string())
        .unwrap_or_else(|_| p.to_string())
}

fn to_value<T: serde::Serialize>(t: &T) -> Result<Value, ClientError> {
    serde_json::to_value(t).map_err(|e| ClientError::BadResponse(e.to_string()))
}

pub fn run(cmd: Command, ctx: &mut Ctx) -> Result<Output, ClientError> {
    Ok(match cmd {
        Command::Save { path } => {
            let p = to_value(&SaveConfig {
                path: path.as_deref().map(absolute),
            })?;
            Output::new(ctx.call("save_config", Some(p))?, |v| {
                format!("configuration saved to {}", field(v, "path"))
            })
        }
        Command::Load { path } => {
            let p = to_value(&LoadConfig {
                path: absolute(&path),
            })?;
            Output::new(ctx.call("load_config", Some(p))?, |v| {
                format!(
                    "applied {} call(s) from {}",
                    field(v, "calls"),
                    field(v, "path")
                )
            })
        }
    })
}
