//! Test harness: a malloc bdev behind a ScsiLun, driven through real LunChannels on real
//! reactors (hybrid idle mode). Each command is sent to a reactor as a message and run to
//! completion there.

#![allow(dead_code)]

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre_bdev::{BdevRegistry, Faults, InjectBdev, MallocBdev};
use gyre_reactor::{global_pool, CoreList, IdlePolicy, ReactorConfig, Reactors};
use gyre_scsi::{LunChannel, LunConfig, NexusId, NexusTable, ScsiLun, ScsiStatus, ScsiTask};

pub const BS: usize = 512;
pub const BLOCKS: u64 = 8192;

pub struct Harness {
    pub reactors: Reactors,
    pub lun: Arc<ScsiLun>,
    pub table: Arc<NexusTable>,
    pub a: NexusId,
    pub b: NexusId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: ScsiStatus,
    pub sense: Vec<u8>,
    pub data: Vec<u8>,
}

impl Outcome {
    /// (key, asc, ascq) from fixed or descriptor sense.
    pub fn kcq(&self) -> (u8, u8, u8) {
        let s = &self.sense;
        if s.is_empty() {
            return (0, 0, 0);
        }
        if s[0] & 0x7F == 0x72 {
            (s[1] & 0x0F, s[2], s[3])
        } else {
            (s[2] & 0x0F, s[12], s[13])
        }
    }

    pub fn good(&self) -> bool {
        self.status == ScsiStatus::Good
    }
}

thread_local! {
    static CHANNELS: RefCell<Vec<(usize, LunChannel)>> = const { RefCell::new(Vec::new()) };
}

/// Runs one task to completion on the calling reactor thread.
pub fn run_here(lun: &Arc<ScsiLun>, nexus: NexusId, cdb: &[u8], data_out: &[u8]) -> Outcome {
    let key = Arc::as_ptr(lun) as usize;
    CHANNELS.with(|chs| {
        let mut chs = chs.borrow_mut();
        if !chs.iter().any(|(k, _)| *k == key) {
            chs.push((key, lun.channel().expect("channel")));
        }
        let ch = &mut chs.iter_mut().find(|(k, _)| *k == key).expect("channel").1;
        let mut task = ScsiTask::new(cdb, nexus, 7);
        if !data_out.is_empty() {
            let mut buf = global_pool()
                .expect("pool")
                .local()
                .try_alloc(data_out.len())
                .expect("buffers");
            buf.copy_from_slice(data_out);
            task.data_out = buf;
        }
        ch.submit(task);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut got = None;
            ch.poll(|c| got = Some(c));
            if let Some(c) = got {
                assert_eq!(c.tag, 7);
                let mut data = vec![0u8; c.data_in_len];
                assert!(c.data_in.copy_to_slice(&mut data));
                return Outcome {
                    status: c.status,
                    sense: c.sense.as_slice().to_vec(),
                    data,
                };
            }
            assert!(Instant::now() < deadline, "command did not complete");
            std::thread::yield_now();
        }
    })
}

impl Harness {
    pub fn new(reactors: usize) -> Harness {
        Self::with_config(reactors, LunConfig::default())
    }

    pub fn with_config(reactors: usize, cfg: LunConfig) -> Harness {
        Self::build(reactors, cfg, false).0
    }

    /// A harness whose bdev is a fault injector over the malloc bdev.
    pub fn with_faults(reactors: usize) -> (Harness, Arc<Faults>) {
        let (h, f) = Self::build(reactors, LunConfig::default(), true);
        (h, f.expect("faults"))
    }

    fn build(reactors: usize, cfg: LunConfig, inject: bool) -> (Harness, Option<Arc<Faults>>) {
        let reactors = Reactors::start(&ReactorConfig {
            cores: CoreList::first_available(reactors).expect("cores"),
            idle: IdlePolicy::hybrid(),
        })
        .expect("reactors");
        let reg = BdevRegistry::new();
        reg.register(MallocBdev::create("m0", BLOCKS * BS as u64, BS as u32).expect("malloc"))
            .expect("register");
        let mut faults = None;
        let name = if inject {
            let inj = InjectBdev::create(&reg, "inj0", "m0").expect("inject");
            faults = Some(inj.faults());
            reg.register(inj).expect("register inject");
            "inj0"
        } else {
            "m0"
        };
        let desc = reg.open(name, true, "scsi test", None).expect("open");
        let table = NexusTable::new();
        let a = table.register("iqn.2024-01.test:a,i,0x000000000001", 1);
        let b = table.register("iqn.2024-01.test:b,i,0x000000000002", 1);
        let lun = ScsiLun::new(cfg, desc, table.clone()).expect("lun");
        (
            Harness {
                reactors,
                lun,
                table,
                a,
                b,
            },
            faults,
        )
    }

    /// Runs a command from `nexus` on reactor `r`.
    pub fn exec_on(&self, r: usize, nexus: NexusId, cdb: &[u8], data_out: &[u8]) -> Outcome {
        let lun = self.lun.clone();
        let cdb = cdb.to_vec();
        let data = data_out.to_vec();
        self.reactors
            .get(r)
            .expect("reactor")
            .call(
                move || run_here(&lun, nexus, &cdb, &data),
                Duration::from_secs(20),
            )
            .expect("reactor answered")
    }

    pub fn exec(&self, nexus: NexusId, cdb: &[u8], data_out: &[u8]) -> Outcome {
        self.exec_on(0, nexus, cdb, data_out)
    }

    /// Clears the POWER ON unit attention of both nexuses.
    pub fn clear_uas(&self) {
        for n in [self.a, self.b] {
            for _ in 0..8 {
                if self.exec(n, &[0, 0, 0, 0, 0, 0], &[]).good() {
                    break;
                }
            }
        }
    }
}

pub fn read16(lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0x88, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

pub fn write16(lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = read16(lba, blocks);
    c[0] = 0x8A;
    c
}

pub fn cdb10(op: u8, b1: u8, lba: u32, len: u16) -> Vec<u8> {
    let mut c = vec![op, b1];
    c.extend_from_slice(&lba.to_be_bytes());
    c.push(0);
    c.extend_from_slice(&len.to_be_bytes());
    c.push(0);
    c
}

pub fn caw(lba: u64, blocks: u8) -> Vec<u8> {
    let mut c = vec![0x89, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&[0, 0, 0, blocks, 0, 0]);
    c
}

pub fn pr_out(sa: u8, rtype: u8, key: u64, sa_key: u64) -> (Vec<u8>, Vec<u8>) {
    let cdb = vec![0x5F, sa, rtype, 0, 0, 0, 0, 0, 24, 0];
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    (cdb, p)
}

pub fn pr_in(sa: u8) -> Vec<u8> {
    vec![0x5E, sa, 0, 0, 0, 0, 0, 0x10, 0x00, 0]
}
