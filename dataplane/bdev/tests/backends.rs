//! malloc and null against a reference model: random reads, writes, unmaps, write-zeroes,
//! flushes and compares, many in flight, over multi-segment buffers.

use gyre_bdev::{BdevChannel, BdevRegistry, IoError, IoOp, IoRequest, MallocBdev, NullBdev};
use gyre_reactor::{BufferPool, ClassConfig, PoolCache, PoolConfig};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic per seed.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn pool() -> BufferPool {
    BufferPool::new(&PoolConfig {
        classes: vec![
            ClassConfig {
                size: 4096,
                count: 256,
            },
            ClassConfig {
                size: 16384,
                count: 128,
            },
        ],
        prefer_hugepages: false,
    })
    .unwrap()
}

/// What a bdev should contain: bytes for malloc, always zero for null.
enum Model {
    Bytes(Vec<u8>),
    Zero(usize),
}

impl Model {
    fn len(&self) -> usize {
        match self {
            Model::Bytes(v) => v.len(),
            Model::Zero(n) => *n,
        }
    }
    fn expect(&self, off: usize, len: usize) -> Vec<u8> {
        match self {
            Model::Bytes(v) => v[off..off + len].to_vec(),
            Model::Zero(_) => vec![0; len],
        }
    }
    fn write(&mut self, off: usize, data: &[u8]) {
        if let Model::Bytes(v) = self {
            v[off..off + data.len()].copy_from_slice(data);
        }
    }
    fn zero(&mut self, off: usize, len: usize) {
        if let Model::Bytes(v) = self {
            v[off..off + len].fill(0);
        }
    }
}

/// Runs `batches` batches of up to `qd` requests on non-overlapping ranges, checking every
/// completion against the model.
fn exercise(
    ch: &mut BdevChannel,
    cache: &PoolCache,
    model: &mut Model,
    seed: u64,
    batches: usize,
    qd: usize,
) -> usize {
    let bs = ch.info().block_size() as usize;
    let nblocks = (model.len() / bs) as u64;
    let mut rng = Rng(seed);
    let mut checked = 0;
    for _ in 0..batches {
        // Pick disjoint ranges so the batch's outcome doesn't depend on completion order.
        let mut taken: Vec<(u64, u64)> = Vec::new();
        let mut expected: Vec<Option<Vec<u8>>> = Vec::new();
        for tag in 0..qd {
            let count = 1 + rng.below(8);
            let start = rng.below(nblocks - count + 1);
            if taken
                .iter()
                .any(|&(s, c)| start < s + c && s < start + count)
            {
                continue;
            }
            taken.push((start, count));
            let off = start as usize * bs;
            let len = count as usize * bs;
            let op = match rng.below(10) {
                0..=3 => IoOp::Read,
                4..=6 => IoOp::Write,
                7 => IoOp::Unmap,
                8 => IoOp::WriteZeroes,
                _ => IoOp::Compare,
            };
            let req = match op {
                IoOp::Read => {
                    expected.push(Some(model.expect(off, len)));
                    let mut buf = cache.try_alloc(len).unwrap();
                    buf.fill(len, 0xEE);
                    IoRequest::new(op, start, count, buf, tag as u64)
                }
                IoOp::Write => {
                    let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    let mut buf = cache.try_alloc(len).unwrap();
                    assert!(buf.copy_from_slice(&data));
                    model.write(off, &data);
                    expected.push(None);
                    IoRequest::new(op, start, count, buf, tag as u64)
                }
                IoOp::Compare => {
                    let data = model.expect(off, len);
                    let mut buf = cache.try_alloc(len).unwrap();
                    assert!(buf.copy_from_slice(&data));
                    expected.push(None);
                    IoRequest::new(op, start, count, buf, tag as u64)
                }
                _ => {
                    model.zero(off, len);
                    expected.push(None);
                    IoRequest::control(op, start, count, tag as u64)
                }
            };
            ch.submit(req);
        }
        let want = expected.len();
        let mut done = 0;
        let mut spins = 0;
        while done < want {
            ch.poll(|c| {
                assert_eq!(c.status, Ok(()), "{:?} failed", c.req.op);
                if c.req.op == IoOp::Read {
                    let exp = expected
                        .iter()
                        .zip(taken.iter())
                        .find(|(_, &(s, _))| s == c.req.offset_blocks)
                        .and_then(|(e, _)| e.clone())
                        .expect("read expectation");
                    let mut got = vec![0u8; exp.len()];
                    assert!(c.req.buf.copy_to_slice(&mut got));
                    assert!(
                        got == exp,
                        "read at block {} differs from the model",
                        c.req.offset_blocks
                    );
                    checked += 1;
                }
                done += 1;
            });
            spins += 1;
            assert!(spins < 1_000_000, "requests never completed");
        }
        assert_eq!(ch.in_flight(), 0);
        // Flush between batches.
        ch.submit(IoRequest::control(IoOp::Flush, 0, 0, 999));
        let mut flushed = false;
        while !flushed {
            ch.poll(|c| {
                assert_eq!(c.status, Ok(()));
                flushed = true;
            });
        }
    }
    checked
}

#[test]
fn malloc_matches_reference_model() {
    for bs in [512u32, 4096] {
        let reg = BdevRegistry::new();
        let size = 2 << 20;
        reg.register(MallocBdev::create("m", size, bs).unwrap())
            .unwrap();
        let desc = reg.open("m", true, "test", None).unwrap();
        let mut ch = desc.channel().unwrap();
        let p = pool();
        let cache = p.local();
        let mut model = Model::Bytes(vec![0; size as usize]);
        let checked = exercise(&mut ch, &cache, &mut model, 42 + bs as u64, 300, 16);
        assert!(checked > 300, "only {checked} reads checked");
        // And one full read back of everything.
        let nb = size / bs as u64;
        let mut all = vec![0u8; size as usize];
        let mut at = 0usize;
        let chunk = 16384 / bs as u64;
        for start in (0..nb).step_by(chunk as usize) {
            ch.submit(IoRequest::new(
                IoOp::Read,
                start,
                chunk,
                cache.try_alloc(16384).unwrap(),
                0,
            ));
            let mut got = false;
            while !got {
                ch.poll(|c| {
                    c.req.buf.copy_to_slice(&mut all[at..at + 16384]);
                    got = true;
                });
            }
            at += 16384;
        }
        let Model::Bytes(m) = &model else {
            unreachable!()
        };
        assert!(all == *m, "full read-back differs (block size {bs})");
    }
}

#[test]
fn malloc_compare_reports_first_differing_byte() {
    let reg = BdevRegistry::new();
    reg.register(MallocBdev::create("m", 1 << 20, 512).unwrap())
        .unwrap();
    let desc = reg.open("m", true, "t", None).unwrap();
    let mut ch = desc.channel().unwrap();
    let p = pool();
    let c = p.local();
    let mut w = c.try_alloc(1024).unwrap();
    w.fill(1024, 0xAB);
    ch.submit(IoRequest::new(IoOp::Write, 10, 2, w, 1));
    let mut cmp = c.try_alloc(1024).unwrap();
    cmp.fill(1024, 0xAB);
    cmp.for_each_chunk_mut(700, 1, |b| b[0] = 0);
    ch.submit(IoRequest::new(IoOp::Compare, 10, 2, cmp, 2));
    let mut res = Vec::new();
    while res.len() < 2 {
        ch.poll(|c| res.push((c.req.tag, c.status)));
    }
    assert_eq!(
        res,
        vec![(1, Ok(())), (2, Err(IoError::Miscompare { offset: 700 }))]
    );
}

#[test]
fn null_reads_zeroes_and_discards_writes() {
    let reg = BdevRegistry::new();
    let size = 1 << 30; // no memory behind it
    reg.register(NullBdev::create("n", size, 4096).unwrap())
        .unwrap();
    let desc = reg.open("n", true, "t", None).unwrap();
    let mut ch = desc.channel().unwrap();
    let p = pool();
    let cache = p.local();
    let mut model = Model::Zero(size as usize);
    let checked = exercise(&mut ch, &cache, &mut model, 7, 100, 16);
    assert!(checked > 50);
    let mut nz = cache.try_alloc(4096).unwrap();
    nz.fill(4096, 1);
    ch.submit(IoRequest::new(IoOp::Compare, 0, 1, nz, 0));
    let mut st = None;
    while st.is_none() {
        ch.poll(|c| st = Some(c.status));
    }
    assert_eq!(st, Some(Err(IoError::Miscompare { offset: 0 })));
}
