//! The target end to end with our initiator over real sockets: discovery, login (None, CHAP,
//! mutual CHAP), digests, every Data-Out path (immediate, unsolicited, R2T, bursts), many
//! commands in flight, TMF abort, NOP-In keepalive timeout, reservations between two
//! sessions, and malformed PDUs next to a healthy session. Reactors run in hybrid idle mode.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use gyre_bdev::{BdevRegistry, Faults, InjectBdev, MallocBdev};
use gyre_iscsi::bhs::{
    Bhs, BhsBody, Isid, LoginStatus, NopOut, ScsiCommand, TaskAttribute, TaskMgmtRequest,
    TmfFunction, BHS_LEN,
};
use gyre_iscsi::initiator::{cdb, discover, CommandError, ConnectOptions, DataDirection};
use gyre_iscsi::initiator::{InitiatorError, IscsiInitiator};
use gyre_iscsi::login::{InitiatorAuth, InitiatorLoginConfig, InitiatorLoginError, MutualChap};
use gyre_iscsi::negotiate::{DigestKind, OperationalConfig};
use gyre_iscsi::target::{
    AuthConfig, InitiatorGroupConfig, IscsiTarget, LunMapping, Network, PortalGroupConfig,
    TargetConfig, TargetOptions,
};
use gyre_iscsi::text::TextLimits;
use gyre_iscsi::Lun;
use gyre_reactor::{CoreList, IdlePolicy, ReactorConfig, Reactors};

const T: Duration = Duration::from_secs(10);
const BS: u32 = 512;
const BLOCKS: u64 = 131_072; // 64 MiB
const IQN_T: &str = "iqn.2016-06.io.gyre.test:disk";
const IQN_CHAP: &str = "iqn.2016-06.io.gyre.test:chap";
const IQN_A: &str = "iqn.2024-01.io.gyre:host-a";
const IQN_B: &str = "iqn.2024-01.io.gyre:host-b";
const INI_SECRET: &str = "initiator-secret-1";
const TGT_SECRET: &str = "target-secret-22";

struct Fixture {
    target: IscsiTarget,
    portal: SocketAddr,
    faults: std::sync::Arc<Faults>,
    _reactors: Reactors,
}

impl Fixture {
    fn new(options: TargetOptions) -> Fixture {
        let reactors = Reactors::start(&ReactorConfig {
            cores: CoreList::first_available(2).expect("cores"),
            idle: IdlePolicy::hybrid(),
        })
        .expect("reactors");
        let reg = BdevRegistry::new();
        reg.register(MallocBdev::create("m0", BLOCKS * u64::from(BS), BS).expect("malloc"))
            .expect("register");
        reg.register(MallocBdev::create("m1", 8 << 20, 4096).expect("malloc"))
            .expect("register");
        let inj = InjectBdev::create(&reg, "slow0", "m1").expect("inject");
        let faults = inj.faults();
        reg.register(inj).expect("register inject");
        reg.register(MallocBdev::create("m2", 8 << 20, 512).expect("malloc"))
            .expect("register");
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
                networks: vec![Network::parse("127.0.0.0/8").unwrap()],
            })
            .expect("initiator group");
        target
            .create_initiator_group(InitiatorGroupConfig {
                tag: 2,
                initiators: vec![IQN_A.into()],
                networks: vec![Network::parse("ANY").unwrap()],
            })
            .expect("initiator group");
        let mut t = TargetConfig::new(IQN_T);
        t.alias = Some("disk".into());
        t.luns = vec![
            LunMapping {
                lun: 0,
                bdev: "m0".into(),
            },
            LunMapping {
                lun: 1,
                bdev: "slow0".into(),
            },
        ];
        t.portal_groups = vec![1];
        t.initiator_groups = vec![1];
        target.create_target(t).expect("target");
        let mut c = TargetConfig::new(IQN_CHAP);
        c.luns = vec![LunMapping {
            lun: 0,
            bdev: "m2".into(),
        }];
        c.portal_groups = vec![1];
        c.initiator_groups = vec![2];
        c.auth = AuthConfig {
            require_chap: true,
            mutual_chap: false,
            user: "alice".into(),
            secret: INI_SECRET.into(),
            mutual_user: "gyre".into(),
            mutual_secret: TGT_SECRET.into(),
        };
        target.create_target(c).expect("chap target");
        Fixture {
            portal: pg.portals[0],
            target,
            faults,
            _reactors: reactors,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.target.shutdown(Duration::from_secs(5));
    }
}

fn options(portal: SocketAddr, initiator: &str, target: &str, isid: u8) -> ConnectOptions {
    ConnectOptions {
        portal,
        login: InitiatorLoginConfig {
            initiator_name: initiator.to_string(),
            initiator_alias: None,
            target_name: Some(target.to_string()),
            auth: InitiatorAuth::None,
            operational: OperationalConfig::default(),
            text_limits: TextLimits::default(),
            isid: Isid([0x80, 0x47, 0x59, 0x52, 0x00, isid]),
            tsih: 0,
            cid: 0,
            itt: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
        },
        queue_depth: 32,
        timeout: T,
    }
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(97)) as u8)
        .collect()
}

fn write_read_back(ini: &mut IscsiInitiator, lun: Lun, lba: u64, len: usize, use10: bool) {
    let data = pattern(lba as u32 ^ len as u32, len);
    ini.write(lun, lba, data.clone(), BS, use10, T)
        .unwrap_or_else(|e| panic!("write lba {lba} len {len}: {e}"));
    let back = ini
        .read(lun, lba, (len / BS as usize) as u32, BS, !use10, T)
        .unwrap_or_else(|e| panic!("read lba {lba} len {len}: {e}"));
    assert!(back == data, "data mismatch at lba {lba} len {len}");
}

#[test]
fn discovery_lists_only_visible_targets() {
    let f = Fixture::new(TargetOptions::default());
    let found = discover(f.portal, IQN_B, InitiatorAuth::None, T).expect("discovery");
    let names: Vec<&str> = found.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec![IQN_T], "host B may not see the CHAP target");
    let p = &found[0].portals[0];
    assert_eq!(
        (p.host.as_str(), p.port, p.portal_group_tag),
        ("127.0.0.1", f.portal.port(), Some(1))
    );
    let found = discover(f.portal, IQN_A, InitiatorAuth::None, T).expect("discovery");
    assert_eq!(found.len(), 2, "{found:?}");
}

#[test]
fn io_over_every_data_out_path() {
    let f = Fixture::new(TargetOptions::default());
    // (InitialR2T, ImmediateData, FirstBurstLength, MaxBurstLength, MaxRecvDataSegmentLength)
    let combos = [
        (true, true, 65_536, 262_144, 8192),
        (true, false, 65_536, 262_144, 8192),
        (false, true, 16_384, 65_536, 8192),
        (false, false, 65_536, 131_072, 32_768),
        (false, true, 262_144, 1_048_576, 262_144),
    ];
    for (i, (initial_r2t, immediate, first, burst, mrdsl)) in combos.into_iter().enumerate() {
        let mut o = options(f.portal, IQN_A, IQN_T, i as u8 + 1);
        o.login.operational = OperationalConfig {
            initial_r2t,
            immediate_data: immediate,
            first_burst_length: first,
            max_burst_length: burst,
            max_recv_data_segment_length: mrdsl,
            max_outstanding_r2t: 2,
            ..OperationalConfig::default()
        };
        let mut ini = IscsiInitiator::connect(o).expect("login");
        let p = ini.session().params().clone();
        assert_eq!(
            (p.initial_r2t, p.immediate_data),
            (initial_r2t, immediate),
            "negotiated"
        );
        let lun0 = Lun::from_index(0);
        let base = i as u64 * 16_384;
        for (lba, len, use10) in [
            (base, 512usize, false),
            (base + 8, 4096, true),
            (base + 64, 65_536 + 512, false),
            (base + 512, 1 << 20, true),
            (base + 4096, (1 << 20) - 512, false),
        ] {
            write_read_back(&mut ini, lun0, lba, len, use10);
        }
        ini.logout(T).expect("logout");
    }
}

#[test]
fn chap_good_bad_and_mutual() {
    let f = Fixture::new(TargetOptions::default());
    let chap = |secret: &str, mutual: Option<&str>| InitiatorAuth::Chap {
        name: "alice".into(),
        secret: secret.as_bytes().to_vec(),
        mutual: mutual.map(|m| MutualChap {
            secret: m.as_bytes().to_vec(),
            expected_name: Some("gyre".into()),
        }),
    };
    // No credentials at all.
    let o = options(f.portal, IQN_A, IQN_CHAP, 1);
    assert!(
        IscsiInitiator::connect(o).is_err(),
        "CHAP target without CHAP"
    );
    // Wrong secret.
    let mut o = options(f.portal, IQN_A, IQN_CHAP, 2);
    o.login.auth = chap("wrong-secret-000", None);
    match IscsiInitiator::connect(o) {
        Err(InitiatorError::Login(InitiatorLoginError::Status(s))) => {
            assert_eq!(s, LoginStatus::AUTHENTICATION_FAILURE)
        }
        Err(e) => panic!("expected an authentication failure, got {e}"),
        Ok(_) => panic!("login with a wrong secret succeeded"),
    }
    // Right secret, one way.
    let mut o = options(f.portal, IQN_A, IQN_CHAP, 3);
    o.login.auth = chap(INI_SECRET, None);
    let mut ini = IscsiInitiator::connect(o).expect("CHAP login");
    write_read_back(&mut ini, Lun::from_index(0), 0, 4096, false);
    ini.logout(T).expect("logout");
    // Mutual: the target proves TGT_SECRET.
    let mut o = options(f.portal, IQN_A, IQN_CHAP, 4);
    o.login.auth = chap(INI_SECRET, Some(TGT_SECRET));
    let ini = IscsiInitiator::connect(o).expect("mutual CHAP login");
    ini.logout(T).expect("logout");
    // Mutual with the wrong expected target secret: the initiator refuses the target.
    let mut o = options(f.portal, IQN_A, IQN_CHAP, 5);
    o.login.auth = chap(INI_SECRET, Some("not-the-target-secret"));
    assert!(IscsiInitiator::connect(o).is_err());
    // An initiator outside the target's initiator group.
    let mut o = options(f.portal, IQN_B, IQN_CHAP, 6);
    o.login.auth = chap(INI_SECRET, None);
    match IscsiInitiator::connect(o) {
        Err(InitiatorError::Login(InitiatorLoginError::Status(s))) => {
            assert_eq!(s, LoginStatus::AUTHORIZATION_FAILURE)
        }
        other => panic!("expected an authorization failure, got {:?}", other.err()),
    }
    // Discovery CHAP.
    f.target
        .set_discovery_auth(AuthConfig {
            require_chap: true,
            user: "alice".into(),
            secret: INI_SECRET.into(),
            ..AuthConfig::default()
        })
        .expect("discovery auth");
    assert!(discover(f.portal, IQN_A, InitiatorAuth::None, T).is_err());
    let found = discover(f.portal, IQN_A, chap(INI_SECRET, None), T).expect("discovery");
    assert_eq!(found.len(), 2);
}

#[test]
fn digests_header_and_data() {
    let f = Fixture::new(TargetOptions::default());
    for (hd, dd) in [(true, false), (false, true), (true, true)] {
        let mut o = options(f.portal, IQN_A, IQN_T, 9);
        let pick = |on: bool| {
            if on {
                vec![DigestKind::Crc32c]
            } else {
                vec![DigestKind::None]
            }
        };
        o.login.operational = OperationalConfig {
            header_digest: pick(hd),
            data_digest: pick(dd),
            initial_r2t: false,
            max_recv_data_segment_length: 16_384,
            ..OperationalConfig::default()
        };
        let mut ini = IscsiInitiator::connect(o).expect("login");
        let p = ini.session().params().clone();
        assert_eq!((p.header_digest, p.data_digest), (hd, dd));
        write_read_back(&mut ini, Lun::from_index(0), 100, 4096 + 512, false);
        write_read_back(&mut ini, Lun::from_index(0), 1000, 300 * 1024, true);
        let luns = ini.report_luns(T).expect("REPORT LUNS");
        assert_eq!(luns, vec![Lun::from_index(0), Lun::from_index(1)]);
        ini.logout(T).expect("logout");
    }
}

#[test]
fn many_commands_in_flight_and_sense() {
    let f = Fixture::new(TargetOptions::default());
    let mut ini = IscsiInitiator::connect(options(f.portal, IQN_A, IQN_T, 1)).expect("login");
    let lun0 = Lun::from_index(0);
    let _ = ini
        .read(lun0, 0, 1, BS, false, T)
        .expect("clears the power-on unit attention");
    let s = ini.session();
    for i in 0..24u64 {
        let c = cdb::write16(50_000 + i * 32, 32);
        s.submit(
            lun0,
            c.as_slice(),
            DataDirection::Write,
            pattern(i as u32, 16_384),
            i,
        )
        .expect("submit");
    }
    let mut done = 0;
    ini.run_until(T, |s| {
        while let Some(c) = s.next_completion() {
            assert!(c.result.is_ok(), "{:?}", c.result);
            done += 1;
        }
        done == 24
    })
    .expect("writes");
    let s = ini.session();
    for i in 0..24u64 {
        let c = cdb::read16(50_000 + i * 32, 32);
        s.submit(lun0, c.as_slice(), DataDirection::Read, vec![0; 16_384], i)
            .expect("submit");
    }
    let mut done = 0;
    ini.run_until(T, |s| {
        while let Some(c) = s.next_completion() {
            assert!(
                c.buffer == pattern(c.user_tag as u32, 16_384),
                "tag {}",
                c.user_tag
            );
            done += 1;
        }
        done == 24
    })
    .expect("reads");
    // Past the end: CHECK CONDITION, ILLEGAL REQUEST / LBA OUT OF RANGE.
    let c = ini
        .command(
            lun0,
            &cdb::read16(BLOCKS, 1),
            DataDirection::Read,
            vec![0; 512],
            T,
        )
        .expect("ran");
    match c.result {
        Err(CommandError::Scsi { status: 2, sense }) => {
            assert_eq!((sense[2] & 0x0f, sense[12]), (0x05, 0x21), "{sense:02x?}")
        }
        other => panic!("{other:?}"),
    }
    // A LUN that does not exist.
    let c = ini
        .command(
            Lun::from_index(7),
            &cdb::read16(0, 1),
            DataDirection::Read,
            vec![0; 512],
            T,
        )
        .expect("ran");
    match c.result {
        Err(CommandError::Scsi { status: 2, sense }) => assert_eq!(sense[12], 0x25),
        other => panic!("{other:?}"),
    }
    let inq = ini
        .inquiry(Lun::from_index(7), T)
        .expect("INQUIRY of no LUN");
    assert_eq!(inq.peripheral_device_type, 0x1f);
    // Residual underflow: 4 KiB expected, 512 bytes read.
    let c = ini
        .command(
            lun0,
            &cdb::read16(0, 1),
            DataDirection::Read,
            vec![0; 4096],
            T,
        )
        .expect("ran");
    assert!(c.result.is_ok());
    assert_eq!(c.residual, 3584);
    ini.logout(T).expect("logout");
}

// --- raw PDU helpers -----------------------------------------------------------------------

/// A logged-in session driven PDU by PDU over a blocking socket.
struct Raw {
    s: TcpStream,
    cmd_sn: u32,
    /// DataDigest=CRC32C in force.
    dd: bool,
}

impl Raw {
    fn login(portal: SocketAddr, initiator: &str, isid: u8) -> Raw {
        Self::login_with(portal, initiator, isid, false)
    }

    fn login_with(portal: SocketAddr, initiator: &str, isid: u8, dd: bool) -> Raw {
        let mut s = TcpStream::connect_timeout(&portal, T).expect("connect");
        s.set_read_timeout(Some(T)).unwrap();
        let keys = format!(
            "InitiatorName={initiator}\0TargetName={IQN_T}\0SessionType=Normal\0AuthMethod=None\0"
        );
        let mut bhs = [0u8; 48];
        bhs[0] = 0x43;
        bhs[1] = 0x81; // T, CSG=0, NSG=1
        bhs[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, isid]);
        bhs[24..28].copy_from_slice(&1u32.to_be_bytes());
        send_pdu(&mut s, bhs, keys.as_bytes());
        let (h, _) = recv_pdu(&mut s);
        assert_eq!((h[0] & 0x3f, h[36], h[37]), (0x23, 0, 0), "security stage");
        let keys = format!(
            "HeaderDigest=None\0DataDigest={}\0InitialR2T=Yes\0ImmediateData=Yes\0",
            if dd { "CRC32C" } else { "None" }
        );
        bhs[1] = 0x87; // T, CSG=1, NSG=3
        bhs[20..24].copy_from_slice(
            &u32::from_be_bytes([h[24], h[25], h[26], h[27]])
                .wrapping_add(1)
                .to_be_bytes(),
        );
        send_pdu(&mut s, bhs, keys.as_bytes());
        loop {
            let (h, _) = recv_pdu(&mut s);
            assert_eq!(
                (h[0] & 0x3f, h[36], h[37]),
                (0x23, 0, 0),
                "operational stage"
            );
            if h[1] & 0x80 != 0 && h[1] & 3 == 3 {
                break;
            }
            send_pdu(&mut s, bhs, b"");
        }
        Raw { s, cmd_sn: 1, dd }
    }

    fn send(&mut self, bhs: &Bhs, data: &[u8]) {
        let mut b = *bhs;
        b.data_segment_len = data.len() as u32;
        send_pdu(&mut self.s, b.to_bytes(), data);
        if self.dd && !data.is_empty() {
            let crc = crc32c_padded(data);
            self.s.write_all(&crc.to_le_bytes()).expect("send digest");
        }
    }

    fn recv(&mut self) -> ([u8; 48], Vec<u8>) {
        let (h, d) = recv_pdu(&mut self.s);
        if self.dd && !d.is_empty() {
            let mut crc = [0u8; 4];
            self.s.read_exact(&mut crc).expect("receive digest");
            assert_eq!(
                u32::from_le_bytes(crc),
                crc32c_padded(&d),
                "target's data digest"
            );
        }
        (h, d)
    }

    fn next_sn(&mut self) -> u32 {
        let n = self.cmd_sn;
        self.cmd_sn += 1;
        n
    }

    /// Receives PDUs until one with `opcode` arrives.
    fn expect(&mut self, opcode: u8) -> ([u8; 48], Vec<u8>) {
        for _ in 0..64 {
            let (h, d) = self.recv();
            if h[0] & 0x3f == opcode {
                return (h, d);
            }
        }
        panic!("no PDU with opcode {opcode:#x}");
    }
}

/// CRC32C of `data` and its padding, as a data digest covers them.
fn crc32c_padded(data: &[u8]) -> u32 {
    let mut d = gyre_iscsi::digest::DataDigest::new();
    d.update(data);
    d.finish()
}

fn send_pdu(s: &mut TcpStream, mut bhs: [u8; 48], data: &[u8]) {
    let len = data.len() as u32;
    bhs[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
    let mut out = bhs.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len() + (4 - data.len() % 4) % 4, 0);
    s.write_all(&out).expect("send");
}

fn recv_pdu(s: &mut TcpStream) -> ([u8; 48], Vec<u8>) {
    let mut h = [0u8; 48];
    s.read_exact(&mut h).expect("receive header");
    let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
    let mut d = vec![0u8; len + (4 - len % 4) % 4];
    s.read_exact(&mut d).expect("receive data");
    d.truncate(len);
    (h, d)
}

fn scsi_read(lun: u16, itt: u32, cmd_sn: u32, lba: u64, blocks: u32) -> Bhs {
    let c = cdb::read16(lba, blocks);
    let mut cdb_bytes = [0u8; 16];
    cdb_bytes.copy_from_slice(c.as_slice());
    Bhs::new(BhsBody::ScsiCommand(ScsiCommand {
        immediate: false,
        final_: true,
        read: true,
        write: false,
        attr: TaskAttribute::Simple,
        lun: Lun::from_index(lun),
        itt,
        expected_data_transfer_length: blocks * 4096,
        cmd_sn,
        exp_stat_sn: 0,
        cdb: cdb_bytes,
    }))
}

#[test]
fn tmf_aborts_an_in_flight_command() {
    let f = Fixture::new(TargetOptions::default());
    let mut raw = Raw::login(f.portal, IQN_A, 0x21);
    // Clear the power-on unit attention of LUN 1 with TEST UNIT READY until GOOD.
    for i in 0..4 {
        let sn = raw.next_sn();
        let mut b = scsi_read(1, 100 + i, sn, 0, 1);
        if let BhsBody::ScsiCommand(c) = &mut b.body {
            c.cdb = [0; 16];
            c.read = false;
            c.expected_data_transfer_length = 0;
        }
        raw.send(&b, &[]);
        let (h, _) = raw.expect(0x21);
        if h[3] == 0 {
            break;
        }
    }
    // LUN 1 sits on a fault injector: hold its reads for a while.
    f.faults.delay(Duration::from_secs(3));
    let sn = raw.next_sn();
    raw.send(&scsi_read(1, 0x77, sn, 0, 1), &[]);
    std::thread::sleep(Duration::from_millis(200));
    // Immediate: carries the next CmdSN without using it up.
    let sn = raw.cmd_sn;
    let tmf = Bhs::new(BhsBody::TaskMgmtRequest(TaskMgmtRequest {
        immediate: true,
        function: TmfFunction::AbortTask,
        lun: Lun::from_index(1),
        itt: 0x78,
        referenced_task_tag: 0x77,
        cmd_sn: sn,
        exp_stat_sn: 0,
        ref_cmd_sn: sn - 1,
        exp_data_sn: 0,
    }));
    raw.send(&tmf, &[]);
    let start = Instant::now();
    let (h, _) = recv_pdu(&mut raw.s);
    f.faults.clear();
    assert_eq!(
        h[0] & 0x3f,
        0x22,
        "the TMF response comes, not the read's data"
    );
    assert_eq!(h[2], 0, "FUNCTION COMPLETE");
    assert_eq!(u32::from_be_bytes([h[16], h[17], h[18], h[19]]), 0x78);
    assert!(start.elapsed() < Duration::from_secs(10));
    // The aborted read never answers; a NOP-Out ping still does.
    let sn = raw.next_sn();
    let ping = Bhs::new(BhsBody::NopOut(NopOut {
        immediate: false,
        lun: Lun::default(),
        itt: 0x99,
        ttt: 0xffff_ffff,
        cmd_sn: sn,
        exp_stat_sn: 0,
    }));
    raw.send(&ping, b"ping");
    let (h, d) = recv_pdu(&mut raw.s);
    assert_eq!(h[0] & 0x3f, 0x20, "NOP-In, not the aborted read");
    assert_eq!(d, b"ping");
}

#[test]
fn nop_in_keepalive_times_out_a_silent_initiator() {
    let options = TargetOptions {
        nop_in_interval: Duration::from_millis(300),
        nop_in_timeout: Duration::from_millis(500),
        ..TargetOptions::default()
    };
    let f = Fixture::new(options);
    let mut raw = Raw::login(f.portal, IQN_A, 0x31);
    // First NOP-In: answer it.
    let (h, _) = raw.expect(0x20);
    assert_eq!(&h[16..20], &[0xff; 4], "target-initiated: ITT reserved");
    let ttt = [h[20], h[21], h[22], h[23]];
    let mut reply = Bhs::new(BhsBody::NopOut(NopOut {
        immediate: true,
        lun: Lun::default(),
        itt: 0xffff_ffff,
        ttt: u32::from_be_bytes(ttt),
        cmd_sn: raw.cmd_sn,
        exp_stat_sn: 0,
    }))
    .to_bytes();
    reply[5..8].fill(0);
    raw.s.write_all(&reply).unwrap();
    // Second NOP-In: stay silent; the target closes the connection.
    let _ = raw.expect(0x20);
    let start = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match raw.s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("expected the target to close: {e}"),
        }
        assert!(start.elapsed() < Duration::from_secs(5));
    }
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[test]
fn reservations_between_two_sessions() {
    let f = Fixture::new(TargetOptions::default());
    let mut a = IscsiInitiator::connect(options(f.portal, IQN_A, IQN_T, 1)).expect("login A");
    let mut b = IscsiInitiator::connect(options(f.portal, IQN_B, IQN_T, 2)).expect("login B");
    let lun0 = Lun::from_index(0);
    for ini in [&mut a, &mut b] {
        let _ = ini.read(lun0, 0, 1, BS, false, T).expect("clear UA");
    }
    let pr_out = |action: u8, rtype: u8, key: u64, sa_key: u64| {
        let mut c = cdb::Cdb {
            bytes: [0; 16],
            len: 10,
        };
        c.bytes[0] = 0x5f;
        c.bytes[1] = action;
        c.bytes[2] = rtype;
        c.bytes[8] = 24;
        let mut p = vec![0u8; 24];
        p[..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        (c, p)
    };
    let run = |ini: &mut IscsiInitiator, (c, p): (cdb::Cdb, Vec<u8>)| {
        ini.command(lun0, &c, DataDirection::Write, p, T)
            .expect("ran")
            .result
    };
    // As a Windows failover cluster does: both nodes register with REGISTER AND IGNORE
    // EXISTING KEY, the owner reserves Write Exclusive – Registrants Only, and the other
    // node, a registrant, may write too.
    run(&mut a, pr_out(0x06, 0, 0, 0xA)).expect("A registers");
    run(&mut b, pr_out(0x06, 0, 0, 0xB)).expect("B registers");
    run(&mut a, pr_out(0x01, 0x05, 0xA, 0)).expect("A reserves WE-RO");
    let mut rr = cdb::Cdb {
        bytes: [0; 16],
        len: 10,
    };
    rr.bytes[0] = 0x5e;
    rr.bytes[1] = 0x01; // READ RESERVATION
    rr.bytes[8] = 64;
    let res = b
        .command(lun0, &rr, DataDirection::Read, vec![0; 64], T)
        .expect("ran");
    assert!(res.result.is_ok(), "{:?}", res.result);
    assert_eq!(&res.buffer[4..8], &16u32.to_be_bytes(), "one reservation");
    assert_eq!(&res.buffer[8..16], &0xAu64.to_be_bytes(), "held by A's key");
    assert_eq!(res.buffer[21] & 0x0f, 0x05, "type WE-RO");
    write_read_back(&mut b, lun0, 10, 512, false);
    // B preempts A (the cluster's arbitration): A's registration goes, B holds it.
    run(&mut b, pr_out(0x04, 0x05, 0xB, 0xA)).expect("B preempts A");
    let r = a.command(
        lun0,
        &cdb::write16(10, 1),
        DataDirection::Write,
        vec![0; 512],
        T,
    );
    let mut r = r.expect("ran").result;
    // The preempted initiator first sees REGISTRATIONS PREEMPTED, then the conflict.
    for _ in 0..3 {
        if !matches!(&r, Err(CommandError::Scsi { status: 2, .. })) {
            break;
        }
        r = a
            .command(
                lun0,
                &cdb::write16(10, 1),
                DataDirection::Write,
                vec![0; 512],
                T,
            )
            .expect("ran")
            .result;
    }
    match r {
        Err(CommandError::Scsi { status: 0x18, .. }) => {}
        other => panic!("expected RESERVATION CONFLICT for A, got {other:?}"),
    }
    // READ KEYS through A shows only B's key.
    let mut c = cdb::Cdb {
        bytes: [0; 16],
        len: 10,
    };
    c.bytes[0] = 0x5e;
    c.bytes[8] = 64;
    let keys = a
        .command(lun0, &c, DataDirection::Read, vec![0; 64], T)
        .expect("ran");
    assert!(keys.result.is_ok(), "{:?}", keys.result);
    assert_eq!(&keys.buffer[4..8], &8u32.to_be_bytes());
    assert_eq!(&keys.buffer[8..16], &0xBu64.to_be_bytes());
    // Cleanup: B clears everything; A (unregistered, no reservation left) writes again.
    run(&mut b, pr_out(0x03, 0, 0xB, 0)).expect("B clears");
    let mut r = Err(CommandError::Timeout);
    for _ in 0..3 {
        r = a
            .command(
                lun0,
                &cdb::write16(10, 1),
                DataDirection::Write,
                vec![7; 512],
                T,
            )
            .expect("ran")
            .result;
        if r.is_ok() {
            break;
        }
    }
    assert!(r.is_ok(), "A may write after CLEAR: {r:?}");
    a.logout(T).expect("logout A");
    b.logout(T).expect("logout B");
}

#[test]
fn garbage_at_a_live_target_does_not_disturb_other_sessions() {
    let f = Fixture::new(TargetOptions::default());
    let mut good = IscsiInitiator::connect(options(f.portal, IQN_A, IQN_T, 1)).expect("login");
    let lun0 = Lun::from_index(0);
    let portal = f.portal;
    let attacker = std::thread::spawn(move || {
        let mut rng = 0x1234_5678u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..60 {
            let Ok(mut s) = TcpStream::connect_timeout(&portal, T) else {
                continue;
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
            let mut pdu = [0u8; BHS_LEN + 64];
            for b in pdu.iter_mut() {
                *b = next() as u8;
            }
            match round % 4 {
                // A login request with a random body and an absurd data length.
                0 => {
                    pdu[0] = 0x43;
                    pdu[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
                }
                // An unknown opcode.
                1 => pdu[0] = 0x1e,
                // A SCSI command before login.
                2 => pdu[0] = 0x01,
                _ => {}
            }
            let _ = s.write_all(&pdu);
            let mut sink = [0u8; 256];
            let _ = s.read(&mut sink);
            // Also a logged-in session sending garbage after login.
            if round % 10 == 0 {
                let mut raw = Raw::login(portal, IQN_B, 0x40 + round as u8);
                let mut g = [0u8; 48];
                for b in g.iter_mut() {
                    *b = next() as u8;
                }
                g[0] = 0x3e; // not an initiator opcode
                g[4] = 0;
                g[5..8].fill(0);
                let _ = raw.s.write_all(&g);
                let (h, d) = recv_pdu(&mut raw.s);
                assert_eq!(h[0] & 0x3f, 0x3f, "Reject");
                assert_eq!(&d[..], &g[..], "the rejected header comes back");
                // A Data-Out for a task that does not exist is dropped quietly.
                let mut d = [0u8; 48];
                d[0] = 0x05;
                d[1] = 0x80;
                d[16..20].copy_from_slice(&0xdead_beefu32.to_be_bytes());
                send_pdu(&mut raw.s, d, &[0u8; 512]);
                let sn = raw.next_sn();
                raw.send(
                    &Bhs::new(BhsBody::NopOut(NopOut {
                        immediate: false,
                        lun: Lun::default(),
                        itt: 5,
                        ttt: 0xffff_ffff,
                        cmd_sn: sn,
                        exp_stat_sn: 0,
                    })),
                    b"",
                );
                let (h, _) = raw.expect(0x20);
                assert_eq!(&h[16..20], &5u32.to_be_bytes());
            }
        }
    });
    let start = Instant::now();
    let mut i = 0u64;
    while !attacker.is_finished() || i < 20 {
        let lba = 5000 + (i % 64) * 16;
        write_read_back(&mut good, lun0, lba, 8192, i.is_multiple_of(2));
        i += 1;
        assert!(start.elapsed() < Duration::from_secs(60));
    }
    attacker.join().expect("attacker thread");
    assert!(i >= 20);
    good.logout(T).expect("logout");
}

#[test]
fn session_reinstatement_closes_the_old_session() {
    let f = Fixture::new(TargetOptions::default());
    let mut first = IscsiInitiator::connect(options(f.portal, IQN_A, IQN_T, 7)).expect("login");
    let _ = first.report_luns(T).expect("REPORT LUNS");
    let mut second = IscsiInitiator::connect(options(f.portal, IQN_A, IQN_T, 7)).expect("login");
    let _ = second.report_luns(T).expect("REPORT LUNS");
    let deadline = Instant::now() + T;
    loop {
        match first.report_luns(Duration::from_millis(500)) {
            Err(_) => break,
            Ok(_) => assert!(Instant::now() < deadline, "old session still served"),
        }
    }
    let sessions = f.target.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    second.logout(T).expect("logout");
}

#[test]
fn deleting_a_target_asks_its_sessions_to_log_out() {
    let f = Fixture::new(TargetOptions::default());
    let mut polite = Raw::login(f.portal, IQN_A, 0x51);
    let mut stubborn = Raw::login(f.portal, IQN_B, 0x52);
    f.target.delete_target(IQN_T).expect("delete");
    // Both get an Asynchronous Message, event 1 (logout requested), with the time allowed.
    for raw in [&mut polite, &mut stubborn] {
        let (h, _) = raw.expect(0x32);
        assert_eq!(h[36], 1, "AsyncEvent: logout requested");
        assert!(
            u16::from_be_bytes([h[42], h[43]]) > 0,
            "Parameter3: seconds to log out"
        );
    }
    // One logs out and gets its answer.
    let logout = Bhs::new(BhsBody::LogoutRequest(gyre_iscsi::bhs::LogoutRequest {
        immediate: true,
        reason: gyre_iscsi::bhs::LogoutReason::CloseSession,
        itt: 0x10,
        cid: 0,
        cmd_sn: polite.cmd_sn,
        exp_stat_sn: 0,
    }));
    polite.send(&logout, &[]);
    let (h, _) = polite.expect(0x26);
    assert_eq!(h[2], 0, "logout response: closed");
    // The other is dropped after the grace period.
    let start = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match stubborn.s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("expected the target to close the session: {e}"),
        }
        assert!(start.elapsed() < Duration::from_secs(9));
    }
    // And nobody may log in to it any more.
    let o = options(f.portal, IQN_A, IQN_T, 0x53);
    match IscsiInitiator::connect(o) {
        Err(InitiatorError::Login(InitiatorLoginError::Status(s))) => {
            assert_eq!(s, LoginStatus::NOT_FOUND)
        }
        other => panic!("expected NOT FOUND, got {:?}", other.err()),
    }
}

#[test]
fn a_bad_data_digest_fails_the_command_and_the_session_goes_on() {
    let f = Fixture::new(TargetOptions::default());
    let mut raw = Raw::login_with(f.portal, IQN_A, 0x61, true);
    let write = |itt: u32, cmd_sn: u32| {
        let c = cdb::write16(40, 1);
        let mut cdb_bytes = [0u8; 16];
        cdb_bytes.copy_from_slice(c.as_slice());
        Bhs::new(BhsBody::ScsiCommand(ScsiCommand {
            immediate: false,
            final_: true,
            read: false,
            write: true,
            attr: TaskAttribute::Simple,
            lun: Lun::from_index(0),
            itt,
            expected_data_transfer_length: 512,
            cmd_sn,
            exp_stat_sn: 0,
            cdb: cdb_bytes,
        }))
    };
    // Clear the power-on unit attention with a good write first.
    for i in 0..3 {
        let sn = raw.next_sn();
        raw.send(&write(i, sn), &[0x5a; 512]);
        let (h, _) = raw.expect(0x21);
        if h[3] == 0 {
            break;
        }
    }
    // Immediate data with a corrupted digest.
    let sn = raw.next_sn();
    let mut b = write(0x44, sn);
    b.data_segment_len = 512;
    send_pdu(&mut raw.s, b.to_bytes(), &[0xa5; 512]);
    raw.s
        .write_all(&(crc32c_padded(&[0xa5; 512]) ^ 1).to_le_bytes())
        .unwrap();
    let (h, d) = raw.recv();
    assert_eq!(
        (h[0] & 0x3f, h[2]),
        (0x3f, 0x02),
        "Reject: data digest error"
    );
    assert_eq!(&d[16..20], &0x44u32.to_be_bytes(), "names the task");
    let (h, d) = raw.expect(0x21);
    assert_eq!(&h[16..20], &0x44u32.to_be_bytes());
    assert_eq!(h[3], 2, "CHECK CONDITION");
    assert_eq!((d[2 + 2] & 0x0f, d[2 + 12], d[2 + 13]), (0x0b, 0x47, 0x05));
    // The block was not written: it still holds the good write's data.
    let sn = raw.next_sn();
    raw.send(&scsi_read(0, 0x45, sn, 40, 1), &[]);
    let (h, d) = raw.expect(0x25);
    assert_eq!(&h[16..20], &0x45u32.to_be_bytes());
    assert_eq!(&d[..512], &[0x5a; 512][..]);
}

#[test]
fn login_redirection() {
    let f = Fixture::new(TargetOptions::default());
    let mut t = TargetConfig::new("iqn.2016-06.io.gyre.test:moved");
    t.portal_groups = vec![1];
    t.initiator_groups = vec![1];
    t.redirect = Some(gyre_iscsi::target::Redirect {
        address: "192.0.2.10:3260,1".into(),
        permanent: false,
    });
    f.target.create_target(t).expect("target");
    let o = options(f.portal, IQN_A, "iqn.2016-06.io.gyre.test:moved", 1);
    match IscsiInitiator::connect(o) {
        Err(InitiatorError::Redirected(a)) => assert_eq!(a, "192.0.2.10:3260,1"),
        other => panic!("expected a redirection, got {:?}", other.err()),
    }
}

#[test]
fn ipv6_portal_serves_discovery_and_io() {
    let f = Fixture::new(TargetOptions::default());
    let v6 = match f.target.create_portal_group(PortalGroupConfig {
        tag: 6,
        portals: vec!["[::1]:0".parse().unwrap()],
    }) {
        Ok(pg) => pg.portals[0],
        Err(e) => {
            println!("skipping ipv6_portal_serves_discovery_and_io: no IPv6 loopback ({e})");
            return;
        }
    };
    f.target
        .create_initiator_group(InitiatorGroupConfig {
            tag: 6,
            initiators: vec!["ANY".into()],
            networks: vec![Network::parse("::1/128").unwrap()],
        })
        .expect("initiator group");
    let mut t = TargetConfig::new("iqn.2016-06.io.gyre.test:v6");
    t.luns = vec![LunMapping {
        lun: 0,
        bdev: "m0".into(),
    }];
    t.portal_groups = vec![6];
    t.initiator_groups = vec![6];
    f.target.create_target(t).expect("target");
    let found = discover(v6, IQN_A, InitiatorAuth::None, T).expect("discovery over IPv6");
    let v6t = found
        .iter()
        .find(|t| t.name == "iqn.2016-06.io.gyre.test:v6")
        .expect("listed");
    assert_eq!(v6t.portals[0].host, "::1");
    assert_eq!(v6t.portals[0].portal_group_tag, Some(6));
    // IQN_T admits 127.0.0.0/8 only, so an initiator on ::1 does not see it; the CHAP
    // target admits host A from anywhere.
    let mut names: Vec<&str> = found.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    assert_eq!(names, vec![IQN_CHAP, "iqn.2016-06.io.gyre.test:v6"]);
    let mut ini = IscsiInitiator::connect(options(v6, IQN_A, "iqn.2016-06.io.gyre.test:v6", 1))
        .expect("login");
    let luns = ini.report_luns(T).expect("REPORT LUNS");
    assert_eq!(luns, vec![Lun::from_index(0)]);
    write_read_back(&mut ini, Lun::from_index(0), 77, 8192, false);
    ini.logout(T).expect("logout");
}

#[test]
fn r2t_and_data_sn_checks() {
    let f = Fixture::new(TargetOptions::default());
    let mut raw = Raw::login(f.portal, IQN_A, 0x71);
    let write = |itt: u32, cmd_sn: u32, lba: u64| {
        let c = cdb::write16(lba, 16);
        let mut cdb_bytes = [0u8; 16];
        cdb_bytes.copy_from_slice(c.as_slice());
        Bhs::new(BhsBody::ScsiCommand(ScsiCommand {
            immediate: false,
            final_: true,
            read: false,
            write: true,
            attr: TaskAttribute::Simple,
            lun: Lun::from_index(0),
            itt,
            expected_data_transfer_length: 8192,
            cmd_sn,
            exp_stat_sn: 0,
            cdb: cdb_bytes,
        }))
    };
    let data_out = |itt: u32, ttt: u32, data_sn: u32, offset: u32, final_: bool| {
        Bhs::new(BhsBody::DataOut(gyre_iscsi::bhs::DataOut {
            final_,
            lun: Lun::from_index(0),
            itt,
            ttt,
            exp_stat_sn: 0,
            data_sn,
            buffer_offset: offset,
        }))
    };
    for attempt in 0..3u32 {
        // No immediate data, InitialR2T=Yes: the target asks for all 8 KiB.
        let sn = raw.next_sn();
        let itt = 0x100 + attempt;
        raw.send(&write(itt, sn, 300), &[]);
        let (h, _) = raw.expect(0x31);
        assert_eq!(&h[16..20], &itt.to_be_bytes());
        let ttt = u32::from_be_bytes([h[20], h[21], h[22], h[23]]);
        assert_eq!(&h[36..40], &0u32.to_be_bytes(), "R2TSN 0");
        assert_eq!(&h[40..44], &0u32.to_be_bytes(), "buffer offset 0");
        assert_eq!(&h[44..48], &8192u32.to_be_bytes(), "desired length");
        if attempt == 0 {
            // DataSN 1 where 0 is due: rejected (protocol error), nothing lands.
            raw.send(&data_out(itt, ttt, 1, 0, false), &[0x11; 4096]);
            let (h, _) = raw.expect(0x3f);
            assert_eq!(h[2], 0x04, "Reject: protocol error");
        }
        raw.send(&data_out(itt, ttt, 0, 0, false), &[0x22; 4096]);
        raw.send(&data_out(itt, ttt, 1, 4096, true), &[0x33; 4096]);
        let (h, _) = raw.expect(0x21);
        assert_eq!(&h[16..20], &itt.to_be_bytes());
        if h[3] == 0 {
            assert_eq!(&h[36..40], &1u32.to_be_bytes(), "ExpDataSN counts the R2T");
            break;
        }
        assert!(attempt < 2, "the write never succeeded");
    }
    let sn = raw.next_sn();
    raw.send(&scsi_read(0, 0x200, sn, 300, 16), &[]);
    let mut got = Vec::new();
    while got.len() < 8192 {
        let (h, d) = raw.expect(0x25);
        assert_eq!(&h[16..20], &0x200u32.to_be_bytes());
        got.extend_from_slice(&d);
        if h[1] & 0x01 != 0 {
            break;
        }
    }
    assert_eq!(&got[..4096], &[0x22; 4096][..]);
    assert_eq!(&got[4096..8192], &[0x33; 4096][..]);
}
