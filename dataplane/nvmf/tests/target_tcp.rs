//! The NVMe/TCP target over loopback, driven by a small blocking host written here straight
//! from the NVMe/TCP and NVMe-oF tables (independent of the target's own PDU code): connect,
//! identify, discovery, I/O with data checked, digests on and off, refused hosts, keep-alive
//! expiry, namespace hot-add seen through an AEN, and garbage input next to verified I/O.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gyre_bdev::{BdevRegistry, MallocBdev};
use gyre_nvme::{
    Cc, Command, Completion, ConnectCommand, ConnectData, Fuse, Nqn, SglDescriptor, Status,
};
use gyre_nvmf::{ListenAddress, NamespaceConfig, NvmfTarget, SubsystemConfig, TransportOptions};
use gyre_reactor::{CoreList, IdlePolicy, ReactorConfig, Reactors};

const NQN: &str = "nqn.2016-06.io.gyre:test";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";
const TIMEOUT: Duration = Duration::from_secs(10);

struct Setup {
    _reactors: Reactors,
    target: NvmfTarget,
    registry: BdevRegistry,
    addr: SocketAddr,
}

fn setup(allow_any: bool) -> Setup {
    let reactors = Reactors::start(&ReactorConfig {
        cores: "0".parse::<CoreList>().unwrap(),
        idle: IdlePolicy::hybrid(),
    })
    .unwrap();
    let registry = BdevRegistry::new();
    registry
        .register(MallocBdev::create("m0", 64 << 20, 4096).unwrap())
        .unwrap();
    let target = NvmfTarget::start(
        reactors.handles(),
        registry.clone(),
        TransportOptions::default(),
    )
    .unwrap();
    let mut cfg = SubsystemConfig::new(NQN);
    cfg.allow_any_host = allow_any;
    if !allow_any {
        cfg.hosts.push(HOSTNQN.to_string());
    }
    target.create_subsystem(cfg).unwrap();
    target
        .add_namespace(NQN, NamespaceConfig::new("m0"))
        .unwrap();
    let addr = target
        .add_listener(NQN, "127.0.0.1:0".parse::<ListenAddress>().unwrap())
        .unwrap();
    Setup {
        _reactors: reactors,
        target,
        registry,
        addr: addr.0,
    }
}

/// A PDU as received: common header fields, the specific header, and data.
struct Pdu {
    ty: u8,
    flags: u8,
    hdr: Vec<u8>,
    data: Vec<u8>,
}

/// A blocking NVMe/TCP host connection, built from the spec's PDU tables.
struct Host {
    s: TcpStream,
    /// SQSIZE (0-based) asked for I/O queues.
    io_sqsize: u16,
    hdgst: bool,
    ddgst: bool,
    cid: u16,
}

impl Host {
    fn connect(addr: SocketAddr, hdgst: bool, ddgst: bool) -> Self {
        let s = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        let mut h = Host {
            s,
            io_sqsize: 63,
            hdgst: false,
            ddgst: false,
            cid: 0,
        };
        // ICReq: CH (type 0, HLEN 128, PLEN 128), PFV 0, HPDA 0, DGST, MAXR2T 0.
        let mut ic = [0u8; 128];
        ic[0] = 0x00;
        ic[2] = 128;
        ic[4..8].copy_from_slice(&128u32.to_le_bytes());
        ic[11] = u8::from(hdgst) | (u8::from(ddgst) << 1);
        h.s.write_all(&ic).unwrap();
        let resp = h.read_pdu();
        assert_eq!(resp.ty, 0x01, "ICResp expected");
        assert_eq!(resp.hdr.len(), 128);
        assert_eq!(u16::from_le_bytes([resp.hdr[8], resp.hdr[9]]), 0, "PFV");
        assert_eq!(resp.hdr[11], ic[11], "digests granted as asked");
        let maxh2c = u32::from_le_bytes(resp.hdr[12..16].try_into().unwrap());
        assert!(maxh2c >= 4096, "MAXH2CDATA {maxh2c}");
        h.hdgst = hdgst;
        h.ddgst = ddgst;
        h
    }

    fn read_pdu(&mut self) -> Pdu {
        let mut ch = [0u8; 8];
        self.s.read_exact(&mut ch).expect("PDU header");
        let ty = ch[0];
        let flags = ch[1];
        let hlen = usize::from(ch[2]);
        let pdo = usize::from(ch[3]);
        let plen = u32::from_le_bytes(ch[4..8].try_into().unwrap()) as usize;
        assert!(plen >= hlen && plen < 1 << 24, "sane PLEN {plen}");
        let mut rest = vec![0u8; plen - 8];
        self.s.read_exact(&mut rest).expect("PDU body");
        let mut whole = ch.to_vec();
        whole.extend_from_slice(&rest);
        let hd = flags & 1 != 0;
        if ty > 1 && ty != 0x03 {
            assert_eq!(hd, self.hdgst, "HDGSTF on type {ty:#x}");
        }
        if hd {
            let want = crc32c::crc32c(&whole[..hlen]);
            let got = u32::from_le_bytes(whole[hlen..hlen + 4].try_into().unwrap());
            assert_eq!(want, got, "header digest");
        }
        let mut data = Vec::new();
        if pdo > 0 {
            let dd = flags & 2 != 0;
            let end = plen - if dd { 4 } else { 0 };
            data = whole[pdo..end].to_vec();
            if dd {
                let got = u32::from_le_bytes(whole[end..end + 4].try_into().unwrap());
                assert_eq!(crc32c::crc32c(&data), got, "data digest");
            }
        } else if ty == 0x03 {
            data = whole[hlen..].to_vec();
        }
        Pdu {
            ty,
            flags,
            hdr: whole[..hlen].to_vec(),
            data,
        }
    }

    /// Sends a command capsule, with in-capsule data if given.
    fn send_capsule(&mut self, cmd: &Command, data: &[u8]) {
        let hd = if self.hdgst { 4 } else { 0 };
        let dd = if self.ddgst && !data.is_empty() { 4 } else { 0 };
        let pdo = if data.is_empty() { 0 } else { 72 + hd };
        let plen = 72 + hd + data.len() + dd;
        let mut pdu = vec![0u8; 72];
        pdu[0] = 0x04;
        pdu[1] = u8::from(self.hdgst) | if dd > 0 { 2 } else { 0 };
        pdu[2] = 72;
        pdu[3] = pdo as u8;
        pdu[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
        let mut sqe = [0u8; 64];
        cmd.encode(&mut sqe);
        pdu[8..72].copy_from_slice(&sqe);
        if self.hdgst {
            let d = crc32c::crc32c(&pdu);
            pdu.extend_from_slice(&d.to_le_bytes());
        }
        pdu.extend_from_slice(data);
        if dd > 0 {
            pdu.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
        }
        self.s.write_all(&pdu).unwrap();
    }

    fn send_h2c_data(&mut self, cccid: u16, ttag: u16, datao: u32, data: &[u8], last: bool) {
        let hd = if self.hdgst { 4 } else { 0 };
        let dd = if self.ddgst { 4 } else { 0 };
        let pdo = 24 + hd;
        let plen = pdo + data.len() + dd;
        let mut pdu = vec![0u8; 24];
        pdu[0] = 0x06;
        pdu[1] = u8::from(self.hdgst) | if dd > 0 { 2 } else { 0 } | if last { 4 } else { 0 };
        pdu[2] = 24;
        pdu[3] = pdo as u8;
        pdu[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
        pdu[8..10].copy_from_slice(&cccid.to_le_bytes());
        pdu[10..12].copy_from_slice(&ttag.to_le_bytes());
        pdu[12..16].copy_from_slice(&datao.to_le_bytes());
        pdu[16..20].copy_from_slice(&(data.len() as u32).to_le_bytes());
        if self.hdgst {
            let d = crc32c::crc32c(&pdu);
            pdu.extend_from_slice(&d.to_le_bytes());
        }
        pdu.extend_from_slice(data);
        if dd > 0 {
            pdu.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
        }
        self.s.write_all(&pdu).unwrap();
    }

    fn next_cid(&mut self) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        self.cid
    }

    /// Runs a command: in-capsule data, or R2T-driven data for `write`, and collects the
    /// C2H data and the completion.
    fn run(&mut self, mut cmd: Command, incapsule: &[u8], write: &[u8]) -> (Completion, Vec<u8>) {
        cmd.cid = self.next_cid();
        self.send_capsule(&cmd, incapsule);
        let mut data = Vec::new();
        loop {
            let p = self.read_pdu();
            match p.ty {
                0x05 => {
                    let c = Completion::decode(p.hdr[8..24].try_into().unwrap());
                    assert_eq!(c.cid, cmd.cid);
                    return (c, data);
                }
                0x07 => {
                    let datao = u32::from_le_bytes(p.hdr[12..16].try_into().unwrap()) as usize;
                    assert_eq!(datao, data.len(), "C2HData in order");
                    data.extend_from_slice(&p.data);
                    if p.flags & 0x08 != 0 {
                        // SUCCESS: no response capsule follows.
                        let mut c = Completion::new(cmd.cid, Status::SUCCESS);
                        c.cid = cmd.cid;
                        return (c, data);
                    }
                }
                0x09 => {
                    let ttag = u16::from_le_bytes(p.hdr[10..12].try_into().unwrap());
                    let r2to = u32::from_le_bytes(p.hdr[12..16].try_into().unwrap()) as usize;
                    let r2tl = u32::from_le_bytes(p.hdr[16..20].try_into().unwrap()) as usize;
                    // Two H2CData PDUs per R2T, to exercise offsets.
                    let mid = r2to + r2tl / 2;
                    self.send_h2c_data(cmd.cid, ttag, r2to as u32, &write[r2to..mid], false);
                    self.send_h2c_data(cmd.cid, ttag, mid as u32, &write[mid..r2to + r2tl], true);
                }
                0x03 => panic!("C2HTermReq: {:?}", &p.hdr),
                t => panic!("unexpected PDU type {t:#x}"),
            }
        }
    }

    fn connect_queue(
        &mut self,
        subnqn: &str,
        qid: u16,
        cntlid: u16,
        hostnqn: &str,
        kato: u32,
    ) -> Completion {
        let data = ConnectData {
            hostid: [7u8; 16],
            cntlid,
            subnqn: Nqn::new(subnqn).unwrap(),
            hostnqn: Nqn::new(hostnqn).unwrap(),
        };
        let mut buf = [0u8; 1024];
        data.encode(&mut buf).unwrap();
        let cmd = ConnectCommand {
            cid: 0,
            dptr: SglDescriptor::data_block_offset(0, 1024),
            recfmt: 0,
            qid,
            sqsize: if qid == 0 { 31 } else { self.io_sqsize },
            cattr: 0,
            kato,
        }
        .to_command();
        self.run(cmd, &buf, &[]).0
    }

    fn property_set(&mut self, offset: u32, value: u64) -> Completion {
        let cmd = gyre_nvme::PropertySetCommand {
            cid: 0,
            size: gyre_nvme::PropertySize::Four,
            offset,
            value,
        }
        .to_command();
        self.run(cmd, &[], &[]).0
    }

    fn property_get(&mut self, offset: u32, eight: bool) -> u64 {
        let cmd = gyre_nvme::PropertyGetCommand {
            cid: 0,
            size: if eight {
                gyre_nvme::PropertySize::Eight
            } else {
                gyre_nvme::PropertySize::Four
            },
            offset,
        }
        .to_command();
        let (c, _) = self.run(cmd, &[], &[]);
        assert!(
            c.status.is_success(),
            "property get {offset:#x}: {:?}",
            c.status
        );
        u64::from(c.dw0) | (u64::from(c.dw1) << 32)
    }

    /// Connect the admin queue and enable the controller; returns CNTLID.
    fn admin(addr: SocketAddr, subnqn: &str, digests: bool, kato: u32) -> (Host, u16) {
        let mut h = Host::connect(addr, digests, digests);
        let c = h.connect_queue(subnqn, 0, 0xFFFF, HOSTNQN, kato);
        assert!(c.status.is_success(), "admin connect: {:?}", c.status);
        let cntlid = c.dw0 as u16;
        let cap = h.property_get(0x00, true);
        assert_eq!(cap & 0xFFFF, 127, "CAP.MQES");
        let cc = Cc::build(true, 0, 0, 0, 0, 6, 4);
        assert!(h.property_set(0x14, u64::from(cc.0)).status.is_success());
        assert_eq!(h.property_get(0x1C, false) & 1, 1, "CSTS.RDY");
        (h, cntlid)
    }

    fn identify(&mut self, cns: u8, nsid: u32) -> (Completion, Vec<u8>) {
        let mut cmd = Command::new(0x06, 0);
        cmd.nsid = nsid;
        cmd.cdw10 = u32::from(cns);
        cmd.dptr = SglDescriptor::transport_data_block(4096);
        self.run(cmd, &[], &[])
    }
}

fn rw(opcode: u8, slba: u64, blocks: u32, len: u32, incapsule: bool) -> Command {
    let mut cmd = Command::new(opcode, 0);
    cmd.nsid = 1;
    cmd.cdw10 = slba as u32;
    cmd.cdw11 = (slba >> 32) as u32;
    cmd.cdw12 = blocks - 1;
    cmd.dptr = if incapsule {
        SglDescriptor::data_block_offset(0, len)
    } else {
        SglDescriptor::transport_data_block(len)
    };
    cmd
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn io_queue(addr: SocketAddr, cntlid: u16, qid: u16, digests: bool) -> Host {
    let mut h = Host::connect(addr, digests, digests);
    let c = h.connect_queue(NQN, qid, cntlid, HOSTNQN, 0);
    assert!(c.status.is_success(), "I/O connect: {:?}", c.status);
    h
}

/// Write (in-capsule and by R2T), read back, flush, write zeroes, deallocate and compare.
fn exercise_io(io: &mut Host) {
    let small = pattern(1, 8192);
    let (c, _) = io.run(rw(0x01, 10, 2, 8192, true), &small, &[]);
    assert!(c.status.is_success(), "in-capsule write: {:?}", c.status);
    let big = pattern(2, 128 * 1024);
    let (c, _) = io.run(rw(0x01, 100, 32, 128 * 1024, false), &[], &big);
    assert!(c.status.is_success(), "R2T write: {:?}", c.status);

    let (c, data) = io.run(rw(0x02, 10, 2, 8192, false), &[], &[]);
    assert!(c.status.is_success());
    assert!(data == small, "in-capsule write read back");
    let (c, data) = io.run(rw(0x02, 100, 32, 128 * 1024, false), &[], &[]);
    assert!(c.status.is_success());
    assert!(data == big, "R2T write read back");

    let mut flush = Command::new(0x00, 0);
    flush.nsid = 1;
    assert!(io.run(flush, &[], &[]).0.status.is_success());

    // Write Zeroes over the second block of the small write.
    let mut wz = Command::new(0x08, 0);
    wz.nsid = 1;
    wz.cdw10 = 11;
    wz.cdw12 = 0;
    assert!(io.run(wz, &[], &[]).0.status.is_success());
    let (_, data) = io.run(rw(0x02, 10, 2, 8192, false), &[], &[]);
    assert!(data[..4096] == small[..4096] && data[4096..].iter().all(|&b| b == 0));

    // Dataset Management deallocate of 4 blocks of the big write: reads zero after.
    let mut range = [0u8; 16];
    range[4..8].copy_from_slice(&4u32.to_le_bytes());
    range[8..16].copy_from_slice(&100u64.to_le_bytes());
    let mut dsm = Command::new(0x09, 0);
    dsm.nsid = 1;
    dsm.cdw10 = 0;
    dsm.cdw11 = 1 << 2;
    dsm.dptr = SglDescriptor::data_block_offset(0, 16);
    assert!(io.run(dsm, &range, &[]).0.status.is_success());
    let (_, data) = io.run(rw(0x02, 100, 8, 32768, false), &[], &[]);
    assert!(data[..16384].iter().all(|&b| b == 0) && data[16384..] == big[16384..32768]);

    // Compare: equal, then different.
    let (c, _) = io.run(rw(0x05, 10, 1, 4096, true), &small[..4096], &[]);
    assert!(c.status.is_success(), "compare equal: {:?}", c.status);
    let (c, _) = io.run(rw(0x05, 10, 1, 4096, true), &big[..4096], &[]);
    assert!(
        c.status.same_code(Status::COMPARE_FAILURE),
        "miscompare: {:?}",
        c.status
    );

    // Out of range.
    let (c, _) = io.run(rw(0x02, (64 << 20) / 4096, 1, 4096, false), &[], &[]);
    assert!(
        c.status.same_code(Status::LBA_OUT_OF_RANGE),
        "{:?}",
        c.status
    );
    // No such namespace.
    let mut bad = rw(0x02, 0, 1, 4096, false);
    bad.nsid = 9;
    let (c, _) = io.run(bad, &[], &[]);
    assert!(
        c.status.same_code(Status::INVALID_NAMESPACE_OR_FORMAT),
        "{:?}",
        c.status
    );
}

#[test]
fn connect_identify_and_io_without_and_with_digests() {
    let s = setup(false);
    for digests in [false, true] {
        let (mut admin, cntlid) = Host::admin(s.addr, NQN, digests, 0);
        let (c, id) = admin.identify(0x01, 0);
        assert!(c.status.is_success());
        let ctrl = gyre_nvme::IdentifyController::decode(&id).unwrap();
        assert_eq!(ctrl.cntlid, cntlid);
        assert_eq!(ctrl.subnqn().unwrap().as_str(), NQN);
        assert_eq!(ctrl.ioccsz, (8192 + 64) / 16);
        assert!(ctrl.nn >= 1);
        let (c, list) = admin.identify(0x02, 0);
        assert!(c.status.is_success());
        assert_eq!(
            &list[..8],
            &[1, 0, 0, 0, 0, 0, 0, 0],
            "active namespace list"
        );
        let (c, ns) = admin.identify(0x00, 1);
        assert!(c.status.is_success());
        let ns = gyre_nvme::IdentifyNamespace::decode(&ns).unwrap();
        assert_eq!(ns.nsze, (64 << 20) / 4096);
        assert_eq!(ns.block_size(), Some(4096));
        let (c, descs) = admin.identify(0x03, 1);
        assert!(c.status.is_success());
        assert_eq!(descs[0], 1, "first descriptor is the EUI-64");

        // Two I/O queues, both doing verified I/O.
        let mut q1 = io_queue(s.addr, cntlid, 1, digests);
        let mut q2 = io_queue(s.addr, cntlid, 2, digests);
        exercise_io(&mut q1);
        exercise_io(&mut q2);
        // The same QID twice is refused.
        let mut dup = Host::connect(s.addr, digests, digests);
        let c = dup.connect_queue(NQN, 1, cntlid, HOSTNQN, 0);
        assert!(
            c.status.same_code(Status::CONNECT_INVALID_PARAMETERS),
            "{:?}",
            c.status
        );
    }
    s.target.shutdown(TIMEOUT);
    drop(s.registry);
}

#[test]
fn discovery_lists_only_what_the_host_may_reach_and_refuses_strangers() {
    let s = setup(false);
    let hidden = "nqn.2016-06.io.gyre:hidden";
    let mut cfg = SubsystemConfig::new(hidden);
    cfg.hosts
        .push("nqn.2016-06.io.gyre:someone-else".to_string());
    s.target.create_subsystem(cfg).unwrap();
    s.target
        .add_listener(hidden, ListenAddress(s.addr))
        .unwrap();

    let (mut d, _) = Host::admin(s.addr, gyre_nvmf::DISCOVERY_NQN, false, 0);
    let mut cmd = Command::new(0x02, 0);
    cmd.cdw10 = 0x70 | ((4096 / 4 - 1) << 16);
    cmd.dptr = SglDescriptor::transport_data_block(4096);
    let (c, page) = d.run(cmd, &[], &[]);
    assert!(c.status.is_success(), "{:?}", c.status);
    assert_eq!(
        page.len(),
        4096,
        "NUMD is 0-based: (NUMD + 1) dwords come back"
    );
    let hdr = gyre_nvme::log::DiscoveryLogHeader::decode(&page).unwrap();
    assert!(hdr.genctr > 0);
    let entries: Vec<_> = (0..hdr.numrec as usize)
        .filter(|i| (i + 2) * 1024 <= page.len())
        .map(|i| gyre_nvme::log::DiscoveryLogEntry::decode(&page[(i + 1) * 1024..]).unwrap())
        .collect();
    let nqns: Vec<String> = entries
        .iter()
        .map(|e| e.subnqn().unwrap().as_str().to_string())
        .collect();
    assert!(nqns.contains(&NQN.to_string()), "{nqns:?}");
    assert!(
        !nqns.contains(&hidden.to_string()),
        "hidden subsystem listed: {nqns:?}"
    );
    let ours = entries
        .iter()
        .find(|e| e.subnqn().unwrap().as_str() == NQN)
        .unwrap();
    assert_eq!(ours.trsvcid_str(), s.addr.port().to_string());
    assert_eq!(ours.traddr_str(), "127.0.0.1");

    // A host not on the list is refused with Connect Invalid Host.
    let mut stranger = Host::connect(s.addr, false, false);
    let c = stranger.connect_queue(hidden, 0, 0xFFFF, HOSTNQN, 0);
    assert!(
        c.status.same_code(Status::CONNECT_INVALID_HOST),
        "{:?}",
        c.status
    );
    // An unknown subsystem: invalid parameters pointing at SUBNQN in the data.
    let mut lost = Host::connect(s.addr, false, false);
    let c = lost.connect_queue("nqn.2016-06.io.gyre:nope", 0, 0xFFFF, HOSTNQN, 0);
    assert!(c.status.same_code(Status::CONNECT_INVALID_PARAMETERS));
    assert_eq!(c.dw0, 256 | (1 << 16));
    s.target.shutdown(TIMEOUT);
}

#[test]
fn namespace_hot_add_raises_an_event_and_keep_alive_expiry_tears_down() {
    let s = setup(true);
    let (mut admin, _) = Host::admin(s.addr, NQN, false, 600);
    // Enable namespace attribute notices, then park an AER.
    let mut set = Command::new(0x09, 0);
    set.cdw10 = 0x0B;
    set.cdw11 = 1 << 8;
    assert!(admin.run(set, &[], &[]).0.status.is_success());
    let mut aer = Command::new(0x0C, 0);
    aer.cid = 900;
    admin.send_capsule(&aer, &[]);

    s.registry
        .register(MallocBdev::create("m1", 8 << 20, 512).unwrap())
        .unwrap();
    let nsid = s
        .target
        .add_namespace(NQN, NamespaceConfig::new("m1"))
        .unwrap();
    assert_eq!(nsid, 2);
    let p = admin.read_pdu();
    assert_eq!(p.ty, 0x05);
    let c = Completion::decode(p.hdr[8..24].try_into().unwrap());
    assert_eq!(c.cid, 900);
    let ev = gyre_nvme::AsyncEvent::from_dw0(c.dw0);
    assert_eq!(ev, gyre_nvme::AsyncEvent::namespace_attribute_changed());
    // The changed namespace list names it.
    let mut log = Command::new(0x02, 0);
    log.cdw10 = 0x04 | ((4096 / 4 - 1) << 16);
    log.dptr = SglDescriptor::transport_data_block(4096);
    let (c, page) = admin.run(log, &[], &[]);
    assert!(c.status.is_success());
    assert_eq!(&page[..8], &[2, 0, 0, 0, 0, 0, 0, 0]);

    // Go silent: the 600 ms keep-alive expires and the target closes the admin queue.
    let start = Instant::now();
    let mut buf = [0u8; 64];
    admin
        .s
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = admin.s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "connection should close after keep-alive expiry");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    s.target.shutdown(TIMEOUT);
}

/// Reads the C2HTermReq the target must answer with, checks its FES, and then that the
/// target closes the connection.
fn expect_term_req(raw: &mut TcpStream, what: &str, fes: u16) {
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut ch = [0u8; 8];
    raw.read_exact(&mut ch)
        .unwrap_or_else(|e| panic!("{what}: no reply: {e}"));
    assert_eq!(
        ch[0], 0x03,
        "{what}: C2HTermReq expected, got type {:#x}",
        ch[0]
    );
    let plen = u32::from_le_bytes(ch[4..8].try_into().unwrap()) as usize;
    assert!((24..=152).contains(&plen), "{what}: TermReq PLEN {plen}");
    let mut rest = vec![0u8; plen - 8];
    raw.read_exact(&mut rest).unwrap();
    let got = u16::from_le_bytes([rest[0], rest[1]]);
    assert_eq!(got, fes, "{what}: FES");
    let mut tail = [0u8; 4096];
    match raw.read(&mut tail) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: {n} bytes after the TermReq"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{what}: connection not closed: {e}"),
    }
}

fn common_header(ty: u8, flags: u8, hlen: u8, pdo: u8, plen: u32) -> Vec<u8> {
    let mut v = vec![0u8; usize::from(hlen)];
    v[0] = ty;
    v[1] = flags;
    v[2] = hlen;
    v[3] = pdo;
    v[4..8].copy_from_slice(&plen.to_le_bytes());
    v
}

#[test]
fn garbage_gets_a_termination_request_while_other_io_goes_on() {
    let s = setup(true);
    let (_admin, cntlid) = Host::admin(s.addr, NQN, true, 0);

    // Verified I/O on its own connection for the whole barrage, checked as it goes.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let good = {
        let (addr, stop) = (s.addr, stop.clone());
        std::thread::spawn(move || {
            let mut good = io_queue(addr, cntlid, 1, true);
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || rounds < 3 {
                exercise_io(&mut good);
                rounds += 1;
            }
            rounds
        })
    };

    // Before ICReq, on fresh connections.
    let mut icreq_plen = common_header(0x00, 0, 128, 0, 200);
    icreq_plen.resize(128, 0);
    let raw_cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unknown PDU type", common_header(0x42, 0, 24, 0, 24), 1),
        (
            "ICReq with a wrong HLEN",
            {
                let mut v = common_header(0x00, 0, 100, 0, 128);
                v.resize(128, 0);
                v
            },
            1,
        ),
        ("ICReq with a wrong PLEN", icreq_plen, 1),
        ("capsule before ICReq", common_header(0x04, 0, 72, 0, 72), 2),
        (
            "controller-to-host PDU from a host",
            common_header(0x05, 0, 24, 0, 24),
            1,
        ),
    ];
    for (what, bytes, fes) in raw_cases {
        let mut raw = TcpStream::connect_timeout(&s.addr, TIMEOUT).unwrap();
        raw.write_all(&bytes).unwrap();
        expect_term_req(&mut raw, what, fes);
    }

    // After ICReq (no digests), before or after Connect.
    let after_icreq: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "second ICReq",
            {
                let mut v = common_header(0x00, 0, 128, 0, 128);
                v.resize(128, 0);
                v
            },
            2,
        ),
        (
            "header digest flag not negotiated",
            common_header(0x04, 1, 72, 0, 76),
            1,
        ),
        (
            "PLEN shorter than the header",
            common_header(0x04, 0, 72, 0, 40),
            1,
        ),
        (
            "PDO inside the header",
            common_header(0x04, 0, 72, 8, 72 + 4096),
            1,
        ),
        (
            "in-capsule data beyond the limit",
            common_header(0x04, 0, 72, 72, 72 + (1 << 20)),
            5,
        ),
        ("huge PLEN", common_header(0x04, 0, 72, 72, u32::MAX), 5),
    ];
    for (what, bytes, fes) in after_icreq {
        let mut h = Host::connect(s.addr, false, false);
        h.s.write_all(&bytes).unwrap();
        expect_term_req(&mut h.s, what, fes);
    }

    // On a connected I/O queue: H2CData outside what the R2T asked for, and beyond
    // MAXH2CDATA.
    for (what, datao, len, fes) in [
        ("H2CData offset out of range", 4096u32, 8192usize, 4u16),
        ("H2CData longer than MAXH2CDATA", 0, 256 * 1024, 5),
    ] {
        let (_a, c) = Host::admin(s.addr, NQN, false, 0);
        let mut h = io_queue(s.addr, c, 1, false);
        let mut cmd = rw(0x01, 500, 2, 8192, false);
        cmd.cid = 5;
        h.send_capsule(&cmd, &[]);
        let r2t = h.read_pdu();
        assert_eq!(r2t.ty, 0x09, "{what}: R2T");
        let ttag = u16::from_le_bytes([r2t.hdr[10], r2t.hdr[11]]);
        h.send_h2c_data(5, ttag, datao, &vec![0xAB; len], true);
        expect_term_req(&mut h.s, what, fes);
    }

    // A header digest error on a live queue.
    let (_a2, c2) = Host::admin(s.addr, NQN, true, 0);
    let mut victim = io_queue(s.addr, c2, 1, true);
    let mut cmd = rw(0x02, 0, 1, 4096, false);
    cmd.cid = 77;
    let mut pdu = common_header(0x04, 1, 72, 0, 76);
    let mut sqe = [0u8; 64];
    cmd.encode(&mut sqe);
    pdu[8..72].copy_from_slice(&sqe);
    pdu.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
    victim.s.write_all(&pdu).unwrap();
    expect_term_req(&mut victim.s, "header digest error", 3);

    // A data digest error fails the command with a transient transport error; the queue
    // stays usable and the blocks are untouched.
    let (_a3, c3) = Host::admin(s.addr, NQN, true, 0);
    let mut dd = io_queue(s.addr, c3, 1, true);
    let before = read_blocks(&mut dd, 600, 1);
    let mut cmd = rw(0x01, 600, 1, 4096, true);
    cmd.cid = 9;
    let mut pdu = common_header(0x04, 0x03, 72, 76, 76 + 4096 + 4);
    cmd.encode(&mut sqe);
    pdu[8..72].copy_from_slice(&sqe);
    let hd = crc32c::crc32c(&pdu);
    pdu.extend_from_slice(&hd.to_le_bytes());
    pdu.extend_from_slice(&[0x5A; 4096]);
    pdu.extend_from_slice(&(crc32c::crc32c(&[0x5A; 4096]) ^ 1).to_le_bytes());
    dd.s.write_all(&pdu).unwrap();
    let resp = dd.read_pdu();
    assert_eq!(
        resp.ty, 0x05,
        "data digest error: a completion, not a TermReq"
    );
    let c = Completion::decode(resp.hdr[8..24].try_into().unwrap());
    assert!(
        c.status.same_code(Status::TRANSIENT_TRANSPORT_ERROR),
        "data digest error: {:?}",
        c.status
    );
    assert!(read_blocks(&mut dd, 600, 1) == before, "nothing written");

    // Truncated PDUs: half a header, then the host goes away; and half a capsule's data.
    for cut in [4usize, 40, 72 + 100] {
        let mut h = Host::connect(s.addr, false, false);
        let mut pdu = common_header(0x04, 0, 72, 72, 72 + 4096);
        pdu.resize(72 + 4096, 0x11);
        h.s.write_all(&pdu[..cut]).unwrap();
        h.s.shutdown(std::net::Shutdown::Write).unwrap();
        h.s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut sink = [0u8; 256];
        let closed = loop {
            match h.s.read(&mut sink) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(closed, "truncated at {cut}: the target closes its side");
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = good.join().expect("verified I/O undisturbed");
    assert!(rounds >= 3);
    s.target.shutdown(TIMEOUT);
}

impl Host {
    /// Sends a fused Compare (first) and Write (second) back to back and collects both
    /// completions, answering R2Ts from the data of the command they name.
    fn fused(
        &mut self,
        mut compare: Command,
        compare_data: &[u8],
        mut write: Command,
        write_data: &[u8],
    ) -> (Completion, Completion) {
        compare.cid = self.next_cid();
        compare.fuse = Fuse::First;
        write.cid = self.next_cid();
        write.fuse = Fuse::Second;
        let in_capsule = |c: &Command, d: &[u8]| -> Vec<u8> {
            if c.dptr.kind() == gyre_nvme::SglKind::DataBlockOffset {
                d.to_vec()
            } else {
                Vec::new()
            }
        };
        self.send_capsule(&compare, &in_capsule(&compare, compare_data));
        self.send_capsule(&write, &in_capsule(&write, write_data));
        let (mut first, mut second) = (None, None);
        while first.is_none() || second.is_none() {
            let p = self.read_pdu();
            match p.ty {
                0x05 => {
                    let c = Completion::decode(p.hdr[8..24].try_into().unwrap());
                    if c.cid == compare.cid {
                        first = Some(c);
                    } else {
                        assert_eq!(c.cid, write.cid, "completion of an unknown command");
                        second = Some(c);
                    }
                }
                0x09 => {
                    let cccid = u16::from_le_bytes([p.hdr[8], p.hdr[9]]);
                    let ttag = u16::from_le_bytes([p.hdr[10], p.hdr[11]]);
                    let r2to = u32::from_le_bytes(p.hdr[12..16].try_into().unwrap()) as usize;
                    let r2tl = u32::from_le_bytes(p.hdr[16..20].try_into().unwrap()) as usize;
                    let data = if cccid == compare.cid {
                        compare_data
                    } else {
                        write_data
                    };
                    self.send_h2c_data(cccid, ttag, r2to as u32, &data[r2to..r2to + r2tl], true);
                }
                t => panic!("unexpected PDU type {t:#x} in a fused exchange"),
            }
        }
        (first.unwrap(), second.unwrap())
    }
}

fn read_blocks(io: &mut Host, slba: u64, blocks: u32) -> Vec<u8> {
    let (c, data) = io.run(rw(0x02, slba, blocks, blocks * 4096, false), &[], &[]);
    assert!(c.status.is_success(), "read: {:?}", c.status);
    data
}

#[test]
fn fused_compare_and_write_is_atomic_and_fails_cleanly() {
    let s = setup(true);
    let (mut admin, cntlid) = Host::admin(s.addr, NQN, false, 0);
    let (c, id) = admin.identify(1, 0);
    assert!(c.status.is_success());
    let fuses = u16::from_le_bytes([id[522], id[523]]);
    assert_eq!(fuses & 1, 1, "FUSES advertises Compare and Write");

    let mut io = io_queue(s.addr, cntlid, 1, false);
    let (a, b, c_data) = (pattern(1, 4096), pattern(2, 4096), pattern(3, 4096));
    assert!(io
        .run(rw(0x01, 20, 1, 4096, true), &a, &[])
        .0
        .status
        .is_success());

    // Matching compare: the write happens.
    let (c1, c2) = io.fused(
        rw(0x05, 20, 1, 4096, true),
        &a,
        rw(0x01, 20, 1, 4096, true),
        &b,
    );
    assert!(
        c1.status.is_success() && c2.status.is_success(),
        "{c1:?} {c2:?}"
    );
    assert!(read_blocks(&mut io, 20, 1) == b, "the fused write landed");

    // Miscompare: the write is aborted and nothing changes.
    let (c1, c2) = io.fused(
        rw(0x05, 20, 1, 4096, true),
        &a,
        rw(0x01, 20, 1, 4096, true),
        &c_data,
    );
    assert!(
        c1.status.same_code(Status::COMPARE_FAILURE),
        "{:?}",
        c1.status
    );
    assert!(
        c2.status.same_code(Status::ABORTED_FAILED_FUSED),
        "{:?}",
        c2.status
    );
    assert!(
        read_blocks(&mut io, 20, 1) == b,
        "a failed compare leaves the data"
    );

    // Larger pair with the write's data by R2T.
    let big_old = pattern(4, 16384);
    let big_new = pattern(5, 16384);
    assert!(io
        .run(rw(0x01, 40, 4, 16384, false), &[], &big_old)
        .0
        .status
        .is_success());
    let (c1, c2) = io.fused(
        rw(0x05, 40, 4, 16384, false),
        &big_old,
        rw(0x01, 40, 4, 16384, false),
        &big_new,
    );
    assert!(
        c1.status.is_success() && c2.status.is_success(),
        "{c1:?} {c2:?}"
    );
    assert!(read_blocks(&mut io, 40, 4) == big_new);

    // Different ranges in the two halves.
    let (c1, c2) = io.fused(
        rw(0x05, 20, 1, 4096, true),
        &b,
        rw(0x01, 21, 1, 4096, true),
        &a,
    );
    assert!(
        c1.status.same_code(Status::INVALID_FIELD),
        "{:?}",
        c1.status
    );
    assert!(
        c2.status.same_code(Status::ABORTED_FAILED_FUSED),
        "{:?}",
        c2.status
    );

    // A first half followed by an ordinary command: aborted as missing its partner, and the
    // ordinary command runs.
    let mut first = rw(0x05, 20, 1, 4096, true);
    first.cid = 900;
    first.fuse = Fuse::First;
    io.send_capsule(&first, &b);
    let mut read = rw(0x02, 20, 1, 4096, false);
    read.cid = 901;
    io.send_capsule(&read, &[]);
    let (mut orphan, mut read_done, mut data) = (None, None, Vec::new());
    while orphan.is_none() || read_done.is_none() {
        let p = io.read_pdu();
        match p.ty {
            0x07 => {
                data.extend_from_slice(&p.data);
                if p.flags & 0x08 != 0 {
                    read_done = Some(Status::SUCCESS);
                }
            }
            0x05 => {
                let c = Completion::decode(p.hdr[8..24].try_into().unwrap());
                match c.cid {
                    900 => orphan = Some(c.status),
                    901 => read_done = Some(c.status),
                    other => panic!("completion for unknown CID {other}"),
                }
            }
            t => panic!("unexpected PDU type {t:#x}"),
        }
    }
    let orphan = orphan.unwrap();
    assert!(
        orphan.same_code(Status::ABORTED_MISSING_FUSED),
        "{orphan:?}"
    );
    assert!(
        read_done.unwrap().is_success() && data == b,
        "the ordinary command ran"
    );

    // A second half alone.
    let mut second = rw(0x01, 20, 1, 4096, true);
    second.fuse = Fuse::Second;
    let (c, _) = io.run(second, &a, &[]);
    assert!(
        c.status.same_code(Status::ABORTED_MISSING_FUSED),
        "{:?}",
        c.status
    );
    assert!(read_blocks(&mut io, 20, 1) == b);

    // Atomicity: two queues increment a counter block with compare-and-write while a third
    // keeps overwriting the block next to it; every successful increment counts once.
    let counter_lba = 60u64;
    let block = |v: u64| -> Vec<u8> {
        let mut d = vec![0u8; 4096];
        d[..8].copy_from_slice(&v.to_le_bytes());
        d[8..].fill((v % 251) as u8);
        d
    };
    assert!(io
        .run(rw(0x01, counter_lba, 1, 4096, true), &block(0), &[])
        .0
        .status
        .is_success());
    let addr = s.addr;
    let workers: Vec<_> = (0..2u16)
        .map(|i| {
            std::thread::spawn(move || {
                let mut q = io_queue(addr, cntlid, 2 + i, false);
                let mut won = 0u64;
                for _ in 0..150 {
                    let cur = read_blocks(&mut q, counter_lba, 1);
                    let v = u64::from_le_bytes(cur[..8].try_into().unwrap());
                    assert!(cur == block(v), "torn counter block at {v}");
                    let (c1, c2) = q.fused(
                        rw(0x05, counter_lba, 1, 4096, true),
                        &cur,
                        rw(0x01, counter_lba, 1, 4096, true),
                        &block(v + 1),
                    );
                    if c1.status.is_success() {
                        assert!(c2.status.is_success(), "{:?}", c2.status);
                        won += 1;
                    } else {
                        assert!(c1.status.same_code(Status::COMPARE_FAILURE));
                    }
                }
                won
            })
        })
        .collect();
    for i in 0..300u64 {
        let d = block(i);
        assert!(io
            .run(rw(0x01, counter_lba + 1, 1, 4096, true), &d, &[])
            .0
            .status
            .is_success());
    }
    let won: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let end = read_blocks(&mut io, counter_lba, 1);
    assert_eq!(
        u64::from_le_bytes(end[..8].try_into().unwrap()),
        won,
        "every successful compare-and-write incremented once"
    );
    assert!(
        won >= 150,
        "at least one queue's worth of increments won: {won}"
    );
    s.target.shutdown(TIMEOUT);
}

// --- No allocation per I/O ----------------------------------------------------------------
//
// A counting allocator that counts only on threads marked as tracked (the target's reactor),
// so the blocking test client may allocate as it likes.

struct CountingAllocator;

static REACTOR_ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    static TRACKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count_if_tracked() {
    if TRACKED.try_with(|t| t.get()).unwrap_or(false) {
        REACTOR_ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator unchanged.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_if_tracked();
        std::alloc::System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_if_tracked();
        std::alloc::System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count_if_tracked();
        std::alloc::System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// One round of the I/O mix: in-capsule and R2T writes, small and large reads.
fn io_round(io: &mut Host, i: u64, small: &[u8], big: &[u8]) {
    let lba = 1000 + (i % 64) * 16;
    assert!(io
        .run(rw(0x01, lba, 1, 4096, true), small, &[])
        .0
        .status
        .is_success());
    assert!(io
        .run(rw(0x01, lba, 16, 65536, false), &[], big)
        .0
        .status
        .is_success());
    let (c, d) = io.run(rw(0x02, lba, 16, 65536, false), &[], &[]);
    assert!(c.status.is_success() && d == big);
    let (c, d) = io.run(rw(0x02, lba, 1, 4096, false), &[], &[]);
    assert!(c.status.is_success() && d[..] == big[..4096]);
}

#[test]
fn steady_state_io_allocates_nothing_on_the_reactor() {
    let s = setup(true);
    s._reactors.handles()[0]
        .call(|| TRACKED.with(|t| t.set(true)), TIMEOUT)
        .expect("mark the reactor thread");
    let at_start = REACTOR_ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed);
    let (_admin, cntlid) = Host::admin(s.addr, NQN, true, 0);
    let mut io = io_queue(s.addr, cntlid, 1, true);
    // The counter does see the reactor: setting up connections allocates.
    let setup_allocations =
        REACTOR_ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed) - at_start;
    assert!(
        setup_allocations > 0,
        "the reactor thread is not being counted"
    );
    let (small, big) = (pattern(7, 4096), pattern(8, 65536));
    // Warm up: buffer caches, send queues and completion vectors reach their sizes.
    for i in 0..100 {
        io_round(&mut io, i, &small, &big);
    }
    let before = REACTOR_ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed);
    const ROUNDS: u64 = 500;
    for i in 0..ROUNDS {
        io_round(&mut io, i, &small, &big);
    }
    let allocations = REACTOR_ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed) - before;
    println!(
        "reactor allocations over {} I/Os (with digests): {allocations}",
        ROUNDS * 4
    );
    // Timers and logging may allocate now and then; an allocation per I/O would be 2000+.
    assert!(
        allocations <= 8,
        "{allocations} allocations on the reactor over {} I/Os",
        ROUNDS * 4
    );
    s.target.shutdown(TIMEOUT);
}

#[test]
fn a_full_queue_sent_in_one_burst_all_completes() {
    // More commands than one receive pass handles (its budget) arrive in one write: those
    // left in staging must still be served without further bytes from the host.
    let s = setup(true);
    let (_admin, cntlid) = Host::admin(s.addr, NQN, false, 0);
    let mut io = Host::connect(s.addr, false, false);
    io.io_sqsize = 127;
    let c = io.connect_queue(NQN, 1, cntlid, HOSTNQN, 0);
    assert!(c.status.is_success(), "{:?}", c.status);
    let data = pattern(9, 4096);
    assert!(io
        .run(rw(0x01, 7, 1, 4096, true), &data, &[])
        .0
        .status
        .is_success());
    // 127 Dataset Management commands with 16 bytes of in-capsule data each, in one write
    // (SQSIZE 127 = 128 entries, one stays free for the head): small enough to sit in the
    // staging buffer all at once, two receive steps each, well past one pass's budget.
    let mut burst = Vec::new();
    for i in 0..127u16 {
        let mut range = [0u8; 16];
        range[4..8].copy_from_slice(&1u32.to_le_bytes());
        range[8..16].copy_from_slice(&u64::from(i).to_le_bytes());
        let mut cmd = Command::new(0x09, 1000 + i);
        cmd.nsid = 1;
        cmd.dptr = SglDescriptor::data_block_offset(0, 16);
        let mut pdu = vec![0u8; 72];
        pdu[0] = 0x04;
        pdu[2] = 72;
        pdu[3] = 72;
        pdu[4..8].copy_from_slice(&(72u32 + 16).to_le_bytes());
        let mut sqe = [0u8; 64];
        cmd.encode(&mut sqe);
        pdu[8..72].copy_from_slice(&sqe);
        burst.extend_from_slice(&pdu);
        burst.extend_from_slice(&range);
    }
    io.s.write_all(&burst).unwrap();
    let mut done = std::collections::BTreeSet::new();
    while done.len() < 127 {
        let p = io.read_pdu();
        assert_eq!(p.ty, 0x05, "a response capsule");
        let c = Completion::decode(p.hdr[8..24].try_into().unwrap());
        assert!(c.status.is_success(), "{:?}", c.status);
        done.insert(c.cid);
    }
    assert_eq!(done.len(), 127);
    s.target.shutdown(TIMEOUT);
}
