//! A volume behind the SCSI block emulation (as the iSCSI target serves it): a full pool fails
//! WRITE with DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT and keeps its data, and
//! UNMAP or WRITE SAME with UNMAP of a whole cluster gives the space back.

use std::sync::Arc;
use std::time::Duration;

use gyre_bdev::{BdevRegistry, MallocBdev};
use gyre_lvol::Pool;
use gyre_reactor::{
    global_pool, init_global_pool, local, ClassConfig, CoreList, IdlePolicy, PollStatus,
    PoolConfig, ReactorConfig, Reactors,
};
use gyre_scsi::{LunConfig, NexusId, NexusTable, ScsiLun, ScsiStatus, ScsiTask};

const BS: usize = 512;
const CLUSTER: u64 = 64 << 10;

struct Outcome {
    status: ScsiStatus,
    /// Sense key, ASC, ASCQ.
    kcq: (u8, u8, u8),
    data: Vec<u8>,
}

fn run(
    reactors: &Reactors,
    lun: &Arc<ScsiLun>,
    nexus: NexusId,
    cdb: Vec<u8>,
    data_out: Vec<u8>,
) -> Outcome {
    let lun = lun.clone();
    let (tx, rx) = crossbeam::channel::bounded(1);
    reactors
        .get(0)
        .expect("reactor")
        .send(move || {
            let mut ch = lun.channel().expect("LUN channel");
            let mut task = ScsiTask::new(&cdb, nexus, 9);
            if !data_out.is_empty() {
                let mut buf = global_pool()
                    .expect("pool")
                    .local()
                    .try_alloc(data_out.len())
                    .expect("buffers");
                buf.copy_from_slice(&data_out);
                task.data_out = buf;
            }
            ch.submit(task);
            // Poll from a poller, not a loop: the pool's engine runs on this reactor too.
            local()
                .expect("reactor")
                .register_poller("scsi-test", move || {
                    let mut got = None;
                    ch.poll(|c| got = Some(c));
                    let Some(c) = got else {
                        return PollStatus::Idle;
                    };
                    let s = c.sense.as_slice();
                    let kcq = if s.is_empty() {
                        (0, 0, 0)
                    } else if s[0] & 0x7F == 0x72 {
                        (s[1] & 0x0F, s[2], s[3])
                    } else {
                        (s[2] & 0x0F, s[12], s[13])
                    };
                    let mut data = vec![0u8; c.data_in_len];
                    c.data_in.copy_to_slice(&mut data);
                    let _ = tx.send(Outcome {
                        status: c.status,
                        kcq,
                        data,
                    });
                    PollStatus::Done
                });
        })
        .expect("send");
    rx.recv_timeout(Duration::from_secs(30))
        .expect("command answered")
}

fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0x2A, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = write10(lba, blocks);
    c[0] = 0x28;
    c
}

/// UNMAP of one range: the CDB and its parameter list.
fn unmap(lba: u64, blocks: u32) -> (Vec<u8>, Vec<u8>) {
    let mut p = vec![0u8; 24];
    p[0..2].copy_from_slice(&22u16.to_be_bytes());
    p[2..4].copy_from_slice(&16u16.to_be_bytes());
    p[8..16].copy_from_slice(&lba.to_be_bytes());
    p[16..20].copy_from_slice(&blocks.to_be_bytes());
    let mut c = vec![0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[7..9].copy_from_slice(&24u16.to_be_bytes());
    (c, p)
}

#[test]
fn full_pool_gives_space_allocation_failed_sense_and_unmap_frees_space() {
    let _ = init_global_pool(&PoolConfig {
        classes: vec![
            ClassConfig {
                size: 4096,
                count: 512,
            },
            ClassConfig {
                size: 128 << 10,
                count: 64,
            },
        ],
        prefer_hugepages: false,
    });
    let reactors = Reactors::start(&ReactorConfig {
        cores: CoreList::first_available(1).expect("core"),
        idle: IdlePolicy::hybrid(),
    })
    .expect("reactors");
    let reg = BdevRegistry::new();
    reg.register(MallocBdev::create("base", 4 << 20, BS as u32).expect("malloc"))
        .expect("register");
    let owner = reactors.get(0).expect("reactor").clone();
    let pool = Pool::create(&reg, owner, "base", "p", CLUSTER).expect("pool");
    let total = pool.info().unwrap().total_clusters;
    pool.create_volume("v", (total + 4) * CLUSTER, true)
        .unwrap();
    let desc = reg.open("p/v", true, "scsi test", None).expect("open");
    let lun = ScsiLun::new(LunConfig::default(), desc, NexusTable::new()).expect("LUN");
    let nexus = lun
        .nexus_table()
        .register("iqn.2024-01.test:lvol,i,0x000000000001", 1);
    // The first command of a new nexus reports the power-on unit attention.
    let tur = run(&reactors, &lun, nexus, vec![0; 6], Vec::new());
    assert_eq!(tur.kcq.0, 0x06, "unit attention first");
    let cb = (CLUSTER / BS as u64) as u32;

    for c in 0..total as u32 {
        let w = run(
            &reactors,
            &lun,
            nexus,
            write10(c * cb, 1),
            vec![c as u8 + 1; BS],
        );
        assert_eq!(w.status, ScsiStatus::Good, "cluster {c}");
    }
    let full = run(
        &reactors,
        &lun,
        nexus,
        write10(total as u32 * cb, 1),
        vec![0xEE; BS],
    );
    assert_eq!(full.status, ScsiStatus::CheckCondition);
    // DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (27h/07h).
    assert_eq!(full.kcq, (0x07, 0x27, 0x07));
    // Nothing written before is damaged.
    for c in 0..total as u32 {
        let r = run(&reactors, &lun, nexus, read10(c * cb, 1), Vec::new());
        assert_eq!(r.status, ScsiStatus::Good);
        assert_eq!(r.data, vec![c as u8 + 1; BS], "cluster {c}");
    }
    // UNMAP of cluster 0 releases it; it reads zeroes, and the refused write now fits.
    let (cdb, params) = unmap(0, cb);
    let u = run(&reactors, &lun, nexus, cdb, params);
    assert_eq!(u.status, ScsiStatus::Good, "{:?}", u.kcq);
    assert_eq!(pool.info().unwrap().free_clusters, 1);
    let r = run(&reactors, &lun, nexus, read10(0, 1), Vec::new());
    assert_eq!(r.data, vec![0u8; BS]);
    let w = run(
        &reactors,
        &lun,
        nexus,
        write10(total as u32 * cb, 1),
        vec![0xEE; BS],
    );
    assert_eq!(w.status, ScsiStatus::Good);
    // WRITE SAME(16) of zeroes with UNMAP over cluster 1 releases it as well.
    let mut ws = vec![0x93, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    ws[2..10].copy_from_slice(&(cb as u64).to_be_bytes());
    ws[10..14].copy_from_slice(&cb.to_be_bytes());
    let w = run(&reactors, &lun, nexus, ws, vec![0u8; BS]);
    assert_eq!(w.status, ScsiStatus::Good, "{:?}", w.kcq);
    assert_eq!(pool.info().unwrap().free_clusters, 1);
    assert_eq!(
        run(&reactors, &lun, nexus, read10(cb, 1), Vec::new()).data,
        vec![0u8; BS]
    );
    drop(lun);
    pool.close(true).unwrap();
}
