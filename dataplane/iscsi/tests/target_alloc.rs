//! The target's I/O path allocates nothing on the heap in steady state: many READ and WRITE
//! commands (immediate data and R2T-solicited Data-Out, Data-In with status) pass through a
//! connection while the reactor thread's allocation counter stays where it was.

use std::time::Duration;

use gyre_bdev::testing::{allocations_on_this_thread, CountingAlloc};
use gyre_bdev::{BdevRegistry, MallocBdev};
use gyre_iscsi::bhs::Isid;
use gyre_iscsi::initiator::{cdb, ConnectOptions, DataDirection, IscsiInitiator};
use gyre_iscsi::login::{InitiatorAuth, InitiatorLoginConfig};
use gyre_iscsi::negotiate::OperationalConfig;
use gyre_iscsi::target::{
    InitiatorGroupConfig, IscsiTarget, LunMapping, Network, PortalGroupConfig, TargetConfig,
    TargetOptions,
};
use gyre_iscsi::text::TextLimits;
use gyre_iscsi::Lun;
use gyre_reactor::{CoreList, IdlePolicy, ReactorConfig, Reactors};

#[global_allocator]
static A: CountingAlloc = CountingAlloc;

const T: Duration = Duration::from_secs(10);
const IQN: &str = "iqn.2016-06.io.gyre.test:alloc";

#[test]
fn read_write_path_does_not_allocate() {
    let reactors = Reactors::start(&ReactorConfig {
        cores: CoreList::first_available(1).expect("cores"),
        idle: IdlePolicy::hybrid(),
    })
    .expect("reactors");
    let reg = BdevRegistry::new();
    reg.register(MallocBdev::create("m0", 16 << 20, 512).expect("malloc"))
        .expect("register");
    let options = TargetOptions {
        // No keepalive pings during the measurement.
        nop_in_interval: Duration::ZERO,
        ..TargetOptions::default()
    };
    let target = IscsiTarget::start(reactors.handles(), reg, options).expect("target");
    let pg = target
        .create_portal_group(PortalGroupConfig {
            tag: 1,
            portals: vec!["127.0.0.1:0".parse().unwrap()],
        })
        .expect("portal group");
    target
        .create_initiator_group(InitiatorGroupConfig {
            tag: 1,
            initiators: vec!["ANY".into()],
            networks: vec![Network::parse("ANY").unwrap()],
        })
        .expect("initiator group");
    let mut t = TargetConfig::new(IQN);
    t.luns = vec![LunMapping {
        lun: 0,
        bdev: "m0".into(),
    }];
    t.portal_groups = vec![1];
    t.initiator_groups = vec![1];
    target.create_target(t).expect("target");

    let mut ini = IscsiInitiator::connect(ConnectOptions {
        portal: pg.portals[0],
        login: InitiatorLoginConfig {
            initiator_name: "iqn.2024-01.io.gyre:alloc".into(),
            initiator_alias: None,
            target_name: Some(IQN.into()),
            auth: InitiatorAuth::None,
            // Writes of 8 KiB: 4 KiB immediate, the rest by R2T.
            operational: OperationalConfig {
                first_burst_length: 4096,
                ..OperationalConfig::default()
            },
            text_limits: TextLimits::default(),
            isid: Isid([0x80, 0, 0, 0, 0, 9]),
            tsih: 0,
            cid: 0,
            itt: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
        },
        queue_depth: 16,
        timeout: T,
    })
    .expect("login");
    let lun = Lun::from_index(0);
    let _ = ini
        .read(lun, 0, 1, 512, false, T)
        .expect("clears the unit attention");
    let mut run = |n: u64| {
        for i in 0..n {
            let lba = (i * 16) % 30_000;
            let s = ini.session();
            s.submit(
                lun,
                cdb::write16(lba, 16).as_slice(),
                DataDirection::Write,
                vec![i as u8; 8192],
                1,
            )
            .expect("submit write");
            s.submit(
                lun,
                cdb::read16(lba, 16).as_slice(),
                DataDirection::Read,
                vec![0; 8192],
                2,
            )
            .expect("submit read");
            let mut done = 0;
            ini.run_until(T, |s| {
                while let Some(c) = s.next_completion() {
                    assert!(c.result.is_ok(), "{:?}", c.result);
                    done += 1;
                }
                done == 2
            })
            .expect("completions");
        }
    };
    let reactor = reactors.get(0).expect("reactor");
    let count = || {
        reactor
            .call(allocations_on_this_thread, T)
            .expect("reactor answers")
    };
    run(500);
    let before = count();
    // The counter works: logging in and setting the connection up did allocate.
    assert!(before > 0);
    run(3000);
    let after = count();
    assert_eq!(
        after - before,
        0,
        "the reactor allocated {} times for 6000 commands",
        after - before
    );
    ini.logout(T).expect("logout");
    target.shutdown(T);
}
