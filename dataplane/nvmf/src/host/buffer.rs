//! The memory a command's data moves through. The I/O path uses pool buffers ([`SgList`]);
//! the control path (Connect data, Identify, log pages) uses plain vectors so an admin queue can
//! move between threads. The queue pair only needs the regions that cover a byte range: it
//! points iovecs at them for `sendmsg` (writes) and `readv` (reads), so data is never copied.

use gyre_reactor::SgList;

/// A buffer the queue pair can send from and receive into, by regions.
pub trait DataBuffer {
    /// Bytes available for data.
    fn data_len(&self) -> usize;

    /// Calls `f(ptr, len)` for consecutive regions covering `[offset, offset + len)`, in order.
    /// Returns false (after reporting what there is) if the buffer is shorter than that.
    ///
    /// The pointers stay valid while the buffer is alive and not resized, even if the buffer
    /// value itself is moved (they point at its heap or pool memory, never into the value).
    fn for_each_region(
        &mut self,
        offset: usize,
        len: usize,
        f: &mut dyn FnMut(*mut u8, usize),
    ) -> bool;
}

impl DataBuffer for SgList {
    fn data_len(&self) -> usize {
        self.len()
    }

    fn for_each_region(
        &mut self,
        offset: usize,
        len: usize,
        f: &mut dyn FnMut(*mut u8, usize),
    ) -> bool {
        let mut skip = offset;
        let mut left = len;
        for seg in self.segments_mut() {
            if left == 0 {
                break;
            }
            let seg_len = seg.len();
            if skip >= seg_len {
                skip -= seg_len;
                continue;
            }
            let n = (seg_len - skip).min(left);
            // SAFETY: skip < seg_len, so the pointer stays inside the segment.
            f(unsafe { seg.as_mut_ptr().add(skip) }, n);
            skip = 0;
            left -= n;
        }
        left == 0
    }
}

impl DataBuffer for Vec<u8> {
    fn data_len(&self) -> usize {
        self.len()
    }

    fn for_each_region(
        &mut self,
        offset: usize,
        len: usize,
        f: &mut dyn FnMut(*mut u8, usize),
    ) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        if len == 0 {
            return end <= self.len();
        }
        match self.get_mut(offset..end) {
            Some(s) => {
                f(s.as_mut_ptr(), len);
                true
            }
            None => {
                if let Some(s) = self.get_mut(offset..) {
                    if !s.is_empty() {
                        f(s.as_mut_ptr(), s.len());
                    }
                }
                false
            }
        }
    }
}

/// Counts the regions covering a range (to reserve send-queue entries before pushing).
pub(crate) fn count_regions<B: DataBuffer + ?Sized>(
    buf: &mut B,
    offset: usize,
    len: usize,
) -> usize {
    let mut n = 0;
    buf.for_each_region(offset, len, &mut |_, _| n += 1);
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use gyre_reactor::{BufferPool, ClassConfig, PoolConfig};

    #[test]
    fn sglist_regions_cover_ranges_across_segments() {
        let pool = BufferPool::new(&PoolConfig {
            classes: vec![ClassConfig {
                size: 4096,
                count: 8,
            }],
            prefer_hugepages: false,
        })
        .unwrap();
        let cache = pool.local();
        let mut sg = cache.try_alloc(3 * 4096).unwrap();
        assert_eq!(sg.num_segments(), 3);
        let base: Vec<usize> = sg.segments().iter().map(|s| s.as_ptr() as usize).collect();
        let mut got = Vec::new();
        assert!(sg.for_each_region(4000, 5000, &mut |p, n| got.push((p as usize, n))));
        assert_eq!(
            got,
            vec![(base[0] + 4000, 96), (base[1], 4096), (base[2], 808)]
        );
        assert_eq!(count_regions(&mut sg, 0, 3 * 4096), 3);
        assert_eq!(count_regions(&mut sg, 8192, 1), 1);
        let mut short = Vec::new();
        assert!(!sg.for_each_region(12000, 1000, &mut |p, n| short.push((p as usize, n))));
        assert_eq!(short, vec![(base[2] + 12000 - 8192, 288)]);
    }

    #[test]
    fn vec_regions() {
        let mut v = vec![0u8; 100];
        let base = v.as_ptr() as usize;
        let mut got = Vec::new();
        assert!(v.for_each_region(10, 20, &mut |p, n| got.push((p as usize, n))));
        assert_eq!(got, vec![(base + 10, 20)]);
        got.clear();
        assert!(!v.for_each_region(90, 20, &mut |p, n| got.push((p as usize, n))));
        assert_eq!(got, vec![(base + 90, 10)]);
        assert!(!v.for_each_region(usize::MAX, 2, &mut |_, _| panic!("no region")));
        assert!(v.for_each_region(100, 0, &mut |_, _| panic!("no region")));
    }
}
