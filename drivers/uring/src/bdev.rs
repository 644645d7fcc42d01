//! The `uring` bdev: a regular file or a block device opened once, served through io_uring
//! by per-thread channels.
//!
//! The file is opened `O_RDWR | O_DIRECT | O_CLOEXEC` so that data moves between the device
//! and our pool buffers without the page cache. Filesystems that refuse `O_DIRECT` (the open
//! fails with `EINVAL`) get buffered I/O instead, with a warning, and [`UringBdev::is_direct`]
//! tells which one is in use.
//!
//! The geometry is read once: a regular file's size comes from its metadata (rounded down to
//! whole blocks), a block device's from `BLKGETSIZE64`, its logical block size from
//! `BLKSSZGET`. A block size below what direct I/O can address (the device's logical block
//! size, or the filesystem's `STATX_DIOALIGN` offset alignment) is refused at open rather
//! than failing every I/O later.
//!
//! Whether `fallocate` can zero or punch ranges depends on the filesystem or device; the bdev
//! remembers what was refused (`EOPNOTSUPP`/`EINVAL`) so that later write-zeroes and unmaps
//! go straight to the method that works.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gyre_bdev::{Bdev, BdevError, BdevInfo, IoChannelBackend, IoOp, IoTypes};

use crate::ring;

/// How to open a [`UringBdev`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UringOptions {
    /// Block size exposed by the bdev (512 or 4096). Default: the logical block size of a
    /// block device, 4096 for a regular file.
    pub block_size: Option<u32>,
    /// Open with `O_DIRECT` (falls back to buffered I/O where the filesystem refuses it).
    pub direct: bool,
}

impl Default for UringOptions {
    fn default() -> Self {
        UringOptions {
            block_size: None,
            direct: true,
        }
    }
}

/// How write-zeroes and unmap clear a range, in the order tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroMethod {
    /// `fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)`.
    ZeroRange,
    /// `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`.
    PunchHole,
    /// Plain writes from a zeroed buffer (always works).
    WriteZeroes,
}

impl ZeroMethod {
    /// The `fallocate` mode, for the fallocate methods.
    pub(crate) fn fallocate_mode(self) -> Option<i32> {
        match self {
            ZeroMethod::ZeroRange => Some(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE),
            ZeroMethod::PunchHole => Some(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE),
            ZeroMethod::WriteZeroes => None,
        }
    }
}

/// What the opened path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingKind {
    File,
    BlockDevice,
}

/// A file or block device served through io_uring.
pub struct UringBdev {
    info: BdevInfo,
    file: File,
    path: PathBuf,
    direct: bool,
    kind: BackingKind,
    no_zero_range: AtomicBool,
    no_punch_hole: AtomicBool,
}

// The ioctl numbers libc does not define everywhere: _IOR(0x12, 114, u64) and _IO(0x12, 104).
#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
const BLKGETSIZE64: u32 = 0x4008_1272;
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
const BLKGETSIZE64: u32 = 0x8008_1272;

fn io_err(context: String, source: io::Error) -> BdevError {
    BdevError::Io { context, source }
}

/// Opens `path` read-write, with `O_DIRECT` when `direct`; falls back to buffered I/O when the
/// filesystem refuses `O_DIRECT` with `EINVAL`. Returns the file and whether it is direct.
pub(crate) fn open_with_fallback(
    path: &Path,
    direct: bool,
    open: impl Fn(&Path, i32) -> io::Result<File>,
) -> Result<(File, bool), BdevError> {
    if direct {
        match open(path, libc::O_DIRECT) {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(
                    path = %path.display(),
                    "O_DIRECT refused by the filesystem; using buffered I/O"
                );
            }
            Err(e) => return Err(io_err(format!("cannot open {}", path.display()), e)),
        }
    }
    open(path, 0)
        .map(|f| (f, false))
        .map_err(|e| io_err(format!("cannot open {}", path.display()), e))
}

fn open_rw(path: &Path, extra_flags: i32) -> io::Result<File> {
    // std adds O_CLOEXEC itself.
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(extra_flags)
        .open(path)
}

/// `BLKGETSIZE64` and `BLKSSZGET` of an open block device.
fn block_device_geometry(file: &File) -> io::Result<(u64, u32)> {
    let fd = file.as_raw_fd();
    let mut bytes: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid.
    if unsafe { libc::ioctl(fd, BLKGETSIZE64 as _, &mut bytes as *mut u64) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut lbs: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which is valid.
    if unsafe { libc::ioctl(fd, libc::BLKSSZGET as _, &mut lbs as *mut libc::c_int) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let lbs = u32::try_from(lbs).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok((bytes, lbs))
}

/// The file offset alignment direct I/O needs (`STATX_DIOALIGN`), if the kernel and the
/// filesystem report it.
fn dio_offset_align(file: &File) -> Option<u32> {
    // SAFETY: statx is a plain syscall filling the zeroed struct we pass; an empty path with
    // AT_EMPTY_PATH refers to the fd itself.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    Some(stx.stx_dio_offset_align)
}

impl UringBdev {
    /// Opens `path` (a regular file or a block device) as bdev `name`.
    pub fn open(name: &str, path: &Path, opts: &UringOptions) -> Result<Arc<UringBdev>, BdevError> {
        let (file, direct) = open_with_fallback(path, opts.direct, open_rw)?;
        let meta = file
            .metadata()
            .map_err(|e| io_err(format!("cannot stat {}", path.display()), e))?;
        let ft = meta.file_type();
        let (kind, bytes, default_bs, min_bs) = if ft.is_file() {
            let align = if direct {
                dio_offset_align(&file)
            } else {
                None
            };
            (BackingKind::File, meta.len(), 4096, align.unwrap_or(1))
        } else if ft.is_block_device() {
            let (bytes, lbs) = block_device_geometry(&file).map_err(|e| {
                io_err(
                    format!(
                        "cannot read the geometry of block device {}",
                        path.display()
                    ),
                    e,
                )
            })?;
            (BackingKind::BlockDevice, bytes, lbs, lbs)
        } else {
            return Err(BdevError::Backend(format!(
                "{} is neither a regular file nor a block device",
                path.display()
            )));
        };
        let block_size = opts.block_size.unwrap_or(default_bs);
        if block_size != 512 && block_size != 4096 {
            return Err(BdevError::InvalidBlockSize(block_size));
        }
        if block_size < min_bs {
            return Err(BdevError::Backend(format!(
                "block size {block_size} is smaller than the {min_bs}-byte alignment {} needs",
                path.display()
            )));
        }
        let num_blocks = bytes / block_size as u64;
        let io_types = IoTypes::all().without(IoOp::Compare);
        let info = BdevInfo::new(name, "uring", block_size, num_blocks, io_types)?
            .with_volatile_write_cache(true);
        tracing::info!(
            bdev = name,
            path = %path.display(),
            ?kind,
            direct,
            block_size,
            num_blocks,
            "uring bdev opened"
        );
        Ok(Arc::new(UringBdev {
            info,
            file,
            path: path.to_path_buf(),
            direct,
            kind,
            no_zero_range: AtomicBool::new(false),
            no_punch_hole: AtomicBool::new(false),
        }))
    }

    /// True when I/O bypasses the page cache (`O_DIRECT`).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn backing_kind(&self) -> BackingKind {
        self.kind
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Whether `method` is still believed to work on this backing store.
    pub fn zero_method_supported(&self, method: ZeroMethod) -> bool {
        match method {
            ZeroMethod::ZeroRange => !self.no_zero_range.load(Ordering::Relaxed),
            ZeroMethod::PunchHole => !self.no_punch_hole.load(Ordering::Relaxed),
            ZeroMethod::WriteZeroes => true,
        }
    }

    /// Records that `method` was refused, so that later requests skip it. Also used by tests
    /// and operators to force the write fallback.
    pub fn disable_zero_method(&self, method: ZeroMethod) {
        match method {
            ZeroMethod::ZeroRange => self.no_zero_range.store(true, Ordering::Relaxed),
            ZeroMethod::PunchHole => self.no_punch_hole.store(true, Ordering::Relaxed),
            ZeroMethod::WriteZeroes => {}
        }
    }

    /// The methods tried for `op` (write-zeroes or unmap), in order: the fallocate that fits
    /// the op best, the other one, then plain writes of zeroes. Unmapped blocks must read back
    /// as zeroes, so every method is valid for both ops.
    pub(crate) fn zero_chain(op: IoOp) -> [ZeroMethod; 3] {
        match op {
            IoOp::Unmap => [
                ZeroMethod::PunchHole,
                ZeroMethod::ZeroRange,
                ZeroMethod::WriteZeroes,
            ],
            _ => [
                ZeroMethod::ZeroRange,
                ZeroMethod::PunchHole,
                ZeroMethod::WriteZeroes,
            ],
        }
    }

    /// The first method of `op`'s chain after `after` (or from the start) not known to fail.
    pub(crate) fn next_zero_method(&self, op: IoOp, after: Option<ZeroMethod>) -> ZeroMethod {
        let chain = Self::zero_chain(op);
        let start = match after {
            Some(m) => chain
                .iter()
                .position(|&c| c == m)
                .map_or(chain.len(), |i| i + 1),
            None => 0,
        };
        chain
            .iter()
            .skip(start)
            .copied()
            .find(|&m| self.zero_method_supported(m))
            .unwrap_or(ZeroMethod::WriteZeroes)
    }
}

impl std::fmt::Debug for UringBdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringBdev")
            .field("info", &self.info)
            .field("path", &self.path)
            .field("direct", &self.direct)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Bdev for UringBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn create_channel(self: Arc<Self>) -> Result<Box<dyn IoChannelBackend>, BdevError> {
        Ok(Box::new(ring::open_channel(self)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odirect_einval_falls_back_to_buffered() {
        let path = std::env::temp_dir().join(format!("gyre-uring-fb-{}", std::process::id()));
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let (_, direct) = open_with_fallback(&path, true, |p, flags| {
            if flags & libc::O_DIRECT != 0 {
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            } else {
                open_rw(p, flags)
            }
        })
        .unwrap();
        assert!(!direct);
        // Other errors are not papered over.
        let r = open_with_fallback(&path, true, |_, _| {
            Err(io::Error::from_raw_os_error(libc::EACCES))
        });
        assert!(matches!(r, Err(BdevError::Io { .. })));
        let (_, direct) = open_with_fallback(&path, true, open_rw).unwrap();
        assert!(direct, "temp_dir is on ext4 here and takes O_DIRECT");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn zero_chains_skip_refused_methods() {
        let path = std::env::temp_dir().join(format!("gyre-uring-zc-{}", std::process::id()));
        std::fs::write(&path, [0u8; 8192]).unwrap();
        let b = UringBdev::open("zc", &path, &UringOptions::default()).unwrap();
        assert_eq!(
            b.next_zero_method(IoOp::WriteZeroes, None),
            ZeroMethod::ZeroRange
        );
        assert_eq!(b.next_zero_method(IoOp::Unmap, None), ZeroMethod::PunchHole);
        assert_eq!(
            b.next_zero_method(IoOp::Unmap, Some(ZeroMethod::PunchHole)),
            ZeroMethod::ZeroRange
        );
        b.disable_zero_method(ZeroMethod::ZeroRange);
        assert_eq!(
            b.next_zero_method(IoOp::WriteZeroes, None),
            ZeroMethod::PunchHole
        );
        assert_eq!(
            b.next_zero_method(IoOp::Unmap, Some(ZeroMethod::PunchHole)),
            ZeroMethod::WriteZeroes
        );
        b.disable_zero_method(ZeroMethod::PunchHole);
        assert_eq!(
            b.next_zero_method(IoOp::Unmap, None),
            ZeroMethod::WriteZeroes
        );
        std::fs::remove_file(&path).unwrap();
    }
}
