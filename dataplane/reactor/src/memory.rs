//! Memory for data buffers and RAM disks: 2 MiB hugepages when the system has them free,
//! ordinary anonymous pages otherwise (never fails because hugepages are missing).

use std::fmt;
use std::ptr::NonNull;

pub const HUGE_PAGE_SIZE: usize = 2 << 20;
pub const PAGE_SIZE: usize = 4096;

/// What backs a memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// Pinned 2 MiB pages from the hugetlb pool.
    HugePages,
    /// Ordinary anonymous memory, pre-faulted (transparent hugepages requested).
    Anonymous,
}

impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemoryKind::HugePages => "hugepages-2MiB",
            MemoryKind::Anonymous => "anonymous",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {len} bytes of memory: {source}")]
    Map {
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("zero-length memory region requested")]
    Empty,
}

/// Whether hugepages may be tried. `GYRE_HUGEPAGES=0` turns them off (useful to compare).
fn hugepages_allowed() -> bool {
    !matches!(
        std::env::var("GYRE_HUGEPAGES").as_deref(),
        Ok("0") | Ok("off") | Ok("no")
    )
}

/// A page-aligned, pre-faulted mapping, unmapped on drop.
pub struct MemRegion {
    ptr: NonNull<u8>,
    len: usize,
    kind: MemoryKind,
}

// SAFETY: the region is plain memory; synchronisation of its contents is the users' concern
// (buffer ownership for pools, block semantics for RAM disks).
unsafe impl Send for MemRegion {}
unsafe impl Sync for MemRegion {}

impl MemRegion {
    /// Maps at least `len` bytes, zero-filled. Tries hugepages first when `prefer_huge`.
    pub fn allocate(len: usize, prefer_huge: bool) -> Result<Self, MemoryError> {
        if len == 0 {
            return Err(MemoryError::Empty);
        }
        if prefer_huge && hugepages_allowed() {
            let huge_len = len.div_ceil(HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE;
            if let Some(ptr) = map(huge_len, libc::MAP_HUGETLB | libc::MAP_POPULATE) {
                return Ok(MemRegion {
                    ptr,
                    len: huge_len,
                    kind: MemoryKind::HugePages,
                });
            }
        }
        let page_len = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let ptr = map(page_len, 0).ok_or_else(|| MemoryError::Map {
            len: page_len,
            source: std::io::Error::last_os_error(),
        })?;
        // SAFETY: ptr/page_len is the mapping we just made. Advice failures are harmless.
        unsafe {
            libc::madvise(ptr.as_ptr().cast(), page_len, libc::MADV_HUGEPAGE);
            if libc::madvise(ptr.as_ptr().cast(), page_len, libc::MADV_POPULATE_WRITE) != 0 {
                // Older kernels: fault every page in by hand so the I/O path never page-faults.
                let mut off = 0;
                while off < page_len {
                    std::ptr::write_volatile(ptr.as_ptr().add(off), 0);
                    off += PAGE_SIZE;
                }
            }
        }
        Ok(MemRegion {
            ptr,
            len: page_len,
            kind: MemoryKind::Anonymous,
        })
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn kind(&self) -> MemoryKind {
        self.kind
    }
}

fn map(len: usize, extra_flags: i32) -> Option<NonNull<u8>> {
    // SAFETY: an anonymous private mapping with no address hint.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        None
    } else {
        NonNull::new(p.cast())
    }
}

impl Drop for MemRegion {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping we own.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

impl fmt::Debug for MemRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemRegion")
            .field("len", &self.len)
            .field("kind", &self.kind)
            .finish()
    }
}

/// Free 2 MiB hugepages in the system pool, from /proc/meminfo.
pub fn free_hugepages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("HugePages_Free:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_zeroed_aligned_memory_with_or_without_hugepages() {
        let r = MemRegion::allocate(3 * PAGE_SIZE + 1, true).unwrap();
        assert!(r.len() > 3 * PAGE_SIZE);
        assert_eq!(r.as_ptr() as usize % PAGE_SIZE, 0);
        // SAFETY: within the mapping.
        let s = unsafe { std::slice::from_raw_parts_mut(r.as_ptr(), r.len()) };
        assert!(s.iter().all(|&b| b == 0));
        s[r.len() - 1] = 7;
        if free_hugepages() == 0 {
            assert_eq!(r.kind(), MemoryKind::Anonymous);
        }
        let plain = MemRegion::allocate(PAGE_SIZE, false).unwrap();
        assert_eq!(plain.kind(), MemoryKind::Anonymous);
        assert!(matches!(
            MemRegion::allocate(0, false),
            Err(MemoryError::Empty)
        ));
    }
}
