//! `--verify`: every written block says what it is, and every read checks it.
//!
//! A block written by gyre-perf starts with a 32-byte header — the magic `GYREVRFY`, its LBA,
//! its write generation and the run's seed, each a little-endian u64 — and the rest of the block
//! is a pseudo-random fill drawn from a generator seeded by those three numbers. A read is
//! checked by regenerating the whole block and comparing byte for byte, so any flipped byte
//! anywhere in it is caught, and the first difference is reported with the LBA, the offset in
//! the block and the bytes expected and found (plus the header found, which tells a misplaced
//! block from a stale or a torn one).
//!
//! [`BlockTable`] holds, per block of a job's region, the last generation whose write was
//! acknowledged and whether an I/O is in flight on it. Both are allocated once before the run.
//! An I/O claims its blocks before it is submitted and releases them on completion; an I/O
//! that would overlap one in flight picks another offset (or waits), so a read is never
//! checked against a write whose outcome is not known yet, and two writes to one block are
//! never in flight together.

use std::fmt;

use crate::rng::{mix_seed, WyRand};

/// The first 8 bytes of every block gyre-perf writes with `--verify`.
pub const MAGIC: [u8; 8] = *b"GYREVRFY";
/// Bytes of the block header (magic, LBA, generation, seed).
pub const HEADER_LEN: usize = 32;
/// Smallest block size a header fits in.
pub const MIN_BLOCK_SIZE: usize = 512;
/// Most blocks one job's table may cover (5 bytes each): 1 GiB of table per job.
pub const MAX_TABLE_BLOCKS: u64 = 1 << 28;

/// Generation of a block this run never wrote: its content is unknown and not checked.
pub const NEVER_WRITTEN: u32 = 0;
/// Generation of a block whose last write failed: its content is uncertain and not checked
/// until it is written again.
pub const UNCERTAIN: u32 = u32::MAX;

/// The generation the next write of a block with generation `g` carries.
#[inline]
pub fn next_generation(g: u32) -> u32 {
    match g {
        UNCERTAIN => 1,
        g if g.wrapping_add(1) == UNCERTAIN => 1,
        g => g + 1,
    }
}

/// The expected 8 bytes at `word` (byte offset `8 * word`) of a block.
#[inline]
fn fill_rng(lba: u64, generation: u32, seed: u64) -> WyRand {
    WyRand::new(mix_seed(seed ^ lba.rotate_left(17), u64::from(generation)))
}

#[inline]
fn header(lba: u64, generation: u32, seed: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..16].copy_from_slice(&lba.to_le_bytes());
    h[16..24].copy_from_slice(&u64::from(generation).to_le_bytes());
    h[24..32].copy_from_slice(&seed.to_le_bytes());
    h
}

/// Writes the stamped content of block `lba`, generation `generation`, into `block`.
pub fn fill_block(block: &mut [u8], lba: u64, generation: u32, seed: u64) {
    let h = header(lba, generation, seed);
    let n = block.len().min(HEADER_LEN);
    block[..n].copy_from_slice(&h[..n]);
    let mut rng = fill_rng(lba, generation, seed);
    for chunk in block[n..].chunks_mut(8) {
        let v = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// The header fields found in a block that failed its check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundHeader {
    pub magic_ok: bool,
    pub lba: u64,
    pub generation: u64,
    pub seed: u64,
}

/// The first difference found in a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    pub lba: u64,
    /// Offset of the first differing byte within the block.
    pub offset: usize,
    pub expected: u8,
    pub found: u8,
    pub expected_generation: u32,
    pub seed: u64,
    pub found_header: FoundHeader,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LBA {} byte {}: expected {:#04x}, found {:#04x} (expected block header: lba {} generation {} seed {:#x}; found: ",
            self.lba,
            self.offset,
            self.expected,
            self.found,
            self.lba,
            self.expected_generation,
            self.seed
        )?;
        let h = &self.found_header;
        if h.magic_ok {
            write!(
                f,
                "lba {} generation {} seed {:#x})",
                h.lba, h.generation, h.seed
            )
        } else {
            write!(f, "no gyre-perf header)")
        }
    }
}

fn found_header(block: &[u8]) -> FoundHeader {
    let word = |at: usize| {
        block
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0)
    };
    FoundHeader {
        magic_ok: block.get(..8) == Some(&MAGIC[..]),
        lba: word(8),
        generation: word(16),
        seed: word(24),
    }
}

/// Checks that `block` holds block `lba` as written with `generation`.
pub fn check_block(block: &[u8], lba: u64, generation: u32, seed: u64) -> Result<(), Mismatch> {
    let mismatch = |offset: usize, expected: u8| Mismatch {
        lba,
        offset,
        expected,
        found: block.get(offset).copied().unwrap_or(0),
        expected_generation: generation,
        seed,
        found_header: found_header(block),
    };
    let h = header(lba, generation, seed);
    let n = block.len().min(HEADER_LEN);
    if block[..n] != h[..n] {
        let at = (0..n).find(|&i| block[i] != h[i]).unwrap_or(0);
        return Err(mismatch(at, h[at]));
    }
    let mut rng = fill_rng(lba, generation, seed);
    for (i, chunk) in block[n..].chunks(8).enumerate() {
        let want = rng.next_u64().to_le_bytes();
        if chunk != &want[..chunk.len()] {
            let j = (0..chunk.len()).find(|&j| chunk[j] != want[j]).unwrap_or(0);
            return Err(mismatch(n + i * 8 + j, want[j]));
        }
    }
    Ok(())
}

/// Per-block state of one job's region: the last acknowledged write generation, and whether
/// an I/O is in flight.
#[derive(Debug)]
pub struct BlockTable {
    first_lba: u64,
    generations: Box<[u32]>,
    busy: Box<[bool]>,
}

impl BlockTable {
    /// A table for blocks `first_lba .. first_lba + blocks`, all never written.
    pub fn new(first_lba: u64, blocks: u64) -> Result<Self, String> {
        if blocks > MAX_TABLE_BLOCKS {
            return Err(format!(
                "--verify tracks at most {MAX_TABLE_BLOCKS} blocks per job; this job's region has {blocks} (use --size)"
            ));
        }
        let n = blocks as usize;
        Ok(BlockTable {
            first_lba,
            generations: vec![NEVER_WRITTEN; n].into_boxed_slice(),
            busy: vec![false; n].into_boxed_slice(),
        })
    }

    #[inline]
    fn range(&self, lba: u64, blocks: u64) -> Option<std::ops::Range<usize>> {
        let start = usize::try_from(lba.checked_sub(self.first_lba)?).ok()?;
        let end = start.checked_add(usize::try_from(blocks).ok()?)?;
        (end <= self.generations.len()).then_some(start..end)
    }

    /// Marks `lba .. lba + blocks` busy unless any of it already is (or it is outside the
    /// table). Returns whether it claimed them.
    #[inline]
    pub fn try_claim(&mut self, lba: u64, blocks: u64) -> bool {
        let Some(r) = self.range(lba, blocks) else {
            return false;
        };
        let busy = &mut self.busy[r];
        if busy.iter().any(|&b| b) {
            return false;
        }
        busy.fill(true);
        true
    }

    #[inline]
    pub fn release(&mut self, lba: u64, blocks: u64) {
        if let Some(r) = self.range(lba, blocks) {
            self.busy[r].fill(false);
        }
    }

    /// The last acknowledged generation of `lba` ([`NEVER_WRITTEN`] outside the table).
    #[inline]
    pub fn generation(&self, lba: u64) -> u32 {
        self.range(lba, 1)
            .and_then(|r| self.generations.get(r.start).copied())
            .unwrap_or(NEVER_WRITTEN)
    }

    #[inline]
    pub fn set_generation(&mut self, lba: u64, generation: u32) {
        if let Some(r) = self.range(lba, 1) {
            self.generations[r.start] = generation;
        }
    }

    pub fn blocks(&self) -> u64 {
        self.generations.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_carries_its_header_byte_for_byte() {
        let mut b = vec![0u8; 512];
        fill_block(&mut b, 0x0102_0304_0506_0708, 3, 0xaabb);
        assert_eq!(&b[..8], b"GYREVRFY");
        assert_eq!(&b[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[16..24], &[3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[24..32], &[0xbb, 0xaa, 0, 0, 0, 0, 0, 0]);
        assert!(b[32..].iter().any(|&x| x != 0));
        assert_eq!(check_block(&b, 0x0102_0304_0506_0708, 3, 0xaabb), Ok(()));
        // Another LBA, generation or seed fills the rest differently.
        let mut c = vec![0u8; 512];
        fill_block(&mut c, 0x0102_0304_0506_0708, 4, 0xaabb);
        assert_ne!(b[32..], c[32..]);
    }

    #[test]
    fn any_flipped_byte_is_found_where_it_is() {
        let mut b = vec![0u8; 4096];
        fill_block(&mut b, 77, 2, 9);
        for at in [0usize, 7, 8, 31, 32, 33, 1000, 4095] {
            let mut bad = b.clone();
            bad[at] ^= 0x40;
            let m = check_block(&bad, 77, 2, 9).unwrap_err();
            assert_eq!((m.lba, m.offset), (77, at));
            assert_eq!((m.expected, m.found), (b[at], b[at] ^ 0x40));
        }
    }

    #[test]
    fn stale_and_misplaced_blocks_are_told_apart() {
        let mut b = vec![0u8; 512];
        fill_block(&mut b, 5, 1, 9);
        let stale = check_block(&b, 5, 2, 9).unwrap_err();
        assert_eq!(stale.offset, 16, "the generation differs first");
        assert!(stale.found_header.magic_ok);
        assert_eq!(stale.found_header.generation, 1);
        let misplaced = check_block(&b, 6, 1, 9).unwrap_err();
        assert_eq!(misplaced.offset, 8);
        assert_eq!(misplaced.found_header.lba, 5);
        let zeroes = check_block(&[0u8; 512], 5, 1, 9).unwrap_err();
        assert_eq!((zeroes.offset, zeroes.expected, zeroes.found), (0, b'G', 0));
        assert!(!zeroes.found_header.magic_ok);
        let text = zeroes.to_string();
        assert!(
            text.starts_with("LBA 5 byte 0: expected 0x47, found 0x00"),
            "{text}"
        );
    }

    #[test]
    fn generations_skip_the_reserved_values() {
        assert_eq!(next_generation(NEVER_WRITTEN), 1);
        assert_eq!(next_generation(1), 2);
        assert_eq!(next_generation(UNCERTAIN), 1);
        assert_eq!(next_generation(UNCERTAIN - 1), 1);
    }

    #[test]
    fn the_table_serialises_overlapping_io() {
        let mut t = BlockTable::new(100, 16).unwrap();
        assert!(t.try_claim(100, 8));
        assert!(!t.try_claim(107, 2), "overlaps an I/O in flight");
        assert!(t.try_claim(108, 8));
        assert!(!t.try_claim(115, 2), "runs past the table");
        assert!(!t.try_claim(99, 1), "before the table");
        t.release(100, 8);
        assert!(t.try_claim(104, 4));
        assert_eq!(t.generation(105), NEVER_WRITTEN);
        t.set_generation(105, 7);
        assert_eq!(t.generation(105), 7);
        assert_eq!(t.generation(5000), NEVER_WRITTEN);
        assert!(BlockTable::new(0, MAX_TABLE_BLOCKS + 1).is_err());
    }
}
