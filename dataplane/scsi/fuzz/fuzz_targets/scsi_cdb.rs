//! Arbitrary CDBs and data-out payloads through `prepare` and a real LunChannel over a small
//! malloc bdev, driven synchronously. Input: byte 0 picks the nexus, bytes 1..=16 are the
//! CDB, the rest is the data-out payload.
#![no_main]

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use gyre_bdev::{BdevRegistry, MallocBdev};
use gyre_reactor::global_pool;
use gyre_scsi::{
    Cdb, DataDirection, LunChannel, LunConfig, NexusId, NexusTable, ScsiLun, ScsiStatus, ScsiTask,
};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    lun: Arc<ScsiLun>,
    nexuses: [NexusId; 3],
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let reg = BdevRegistry::new();
        reg.register(MallocBdev::create("fz", 1 << 20, 512).expect("malloc"))
            .expect("register");
        let desc = reg.open("fz", true, "fuzz", None).expect("open");
        let table = NexusTable::new();
        let nexuses = [
            table.register("iqn.fuzz:a,i,0x000000000001", 1),
            table.register("iqn.fuzz:b,i,0x000000000002", 1),
            table.register("iqn.fuzz:c,i,0x000000000003", 2),
        ];
        let cfg = LunConfig {
            max_transfer_bytes: 64 << 10,
            ..LunConfig::default()
        };
        let lun = ScsiLun::new(cfg, desc, table).expect("lun");
        // The registry may go; the descriptor keeps the bdev.
        std::mem::forget(reg);
        Fixture { lun, nexuses }
    })
}

thread_local! {
    static CH: RefCell<Option<LunChannel>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let f = fixture();
    let nexus = f.nexuses[data[0] as usize % 3];
    let cdb_len = (data.len() - 1).min(16);
    let cdb = Cdb::new(&data[1..1 + cdb_len]);
    let payload = &data[1 + cdb_len..];
    CH.with(|ch| {
        let mut ch = ch.borrow_mut();
        let ch = ch.get_or_insert_with(|| f.lun.channel().expect("channel"));
        let info = ch.prepare(&cdb);
        let mut task = ScsiTask {
            cdb,
            nexus,
            attr: Default::default(),
            tag: 42,
            data_out: Default::default(),
        };
        // Deliver what the transport would: the expected bytes if known, else the payload.
        let want = match info {
            Ok(i) if i.direction == DataDirection::Out => (i.transfer_len as usize).min(1 << 20),
            _ => payload.len(),
        };
        if want > 0 {
            if let Some(mut buf) = global_pool().expect("pool").local().try_alloc(want) {
                buf.fill(want, 0);
                let n = payload.len().min(want);
                buf.copy_from_slice(&payload[..n]);
                task.data_out = buf;
            }
        }
        ch.submit(task);
        let mut got = None;
        for _ in 0..10_000 {
            ch.poll(|c| got = Some(c));
            if got.is_some() {
                break;
            }
        }
        let c = got.expect("every task completes");
        assert_eq!(c.tag, 42);
        assert!(c.data_in_len <= c.data_in.len());
        if c.status == ScsiStatus::CheckCondition {
            assert!(!c.sense.is_empty());
        }
        if let Ok(i) = info {
            if c.status == ScsiStatus::Good && c.data_in_len > 0 {
                assert_eq!(i.direction, DataDirection::In);
                assert!(c.data_in_len as u64 <= i.transfer_len);
            }
        }
        assert_eq!(ch.in_flight(), 0);
    });
});
