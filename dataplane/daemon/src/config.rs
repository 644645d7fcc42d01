//! Reading and writing configuration files. Writes are atomic: a temporary file in the same
//! directory is written and synced, renamed over the target, and the directory is synced, so
//! a crash leaves either the old file or the new one, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use gyre_api::{codes, ConfigFile};

use crate::module::RpcError;

/// The configuration gyred starts with when given no `--config`: a 1 GiB RAM bdev.
pub const DEFAULT_CONFIG: &str = include_str!("default_config.json");

/// Reads and decodes a configuration file.
pub fn read_config_file(path: &Path) -> Result<ConfigFile, RpcError> {
    let text = fs::read_to_string(path).map_err(|e| {
        RpcError::new(
            codes::INVALID_CONFIG,
            format!("config: cannot read {}: {e}", path.display()),
        )
    })?;
    parse_config(&text, &path.display().to_string())
}

/// Decodes configuration text; `source` names it in errors.
pub fn parse_config(text: &str, source: &str) -> Result<ConfigFile, RpcError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    decode_config(de)
        .map_err(|e| RpcError::new(codes::INVALID_CONFIG, format!("config: {source}: {e}")))
}

fn decode_config(
    de: &mut serde_json::Deserializer<serde_json::de::StrRead<'_>>,
) -> Result<ConfigFile, serde_json::Error> {
    use serde::Deserialize;
    let f = ConfigFile::deserialize(&mut *de)?;
    de.end()?;
    Ok(f)
}

/// Writes `bytes` to `path` atomically (mode 0600: configurations may hold secrets).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses() {
        let f = parse_config(DEFAULT_CONFIG, "default").unwrap();
        assert_eq!(f.version, 1);
        assert_eq!(f.modules[0].module, "bdev");
        assert_eq!(f.modules[0].config[0].method, "bdev_malloc_create");
    }

    #[test]
    fn bad_files_are_refused_with_their_location() {
        let e = parse_config("{\"version\": 1, \"modules\": [}", "f.json").unwrap_err();
        assert_eq!(e.code, codes::INVALID_CONFIG);
        assert!(e.message.starts_with("config: f.json: "), "{}", e.message);
        let e = parse_config("{\"version\": 1, \"modulez\": []}", "f.json").unwrap_err();
        assert!(
            e.message.contains("unknown field `modulez`"),
            "{}",
            e.message
        );
        assert!(parse_config("{\"version\": 1} x", "f.json").is_err());
    }

    #[test]
    fn writes_atomically_and_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("gyred-cfg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.json");
        fs::write(&p, b"old").unwrap();
        let got = write_atomically(&p, b"new").unwrap();
        assert_eq!(fs::read(&got).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
