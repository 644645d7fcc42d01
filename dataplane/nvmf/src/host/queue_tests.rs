//! The queue pair against a scripted target on a loopback socket: the bytes it sends are
//! checked against PDUs built by hand from the NVMe/TCP tables, and the target's misbehaviour
//! (unknown CIDs, data out of range, R2Ts for reads, bad digests, termination, hang-up) must end
//! in typed errors, never a panic.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use gyre_nvme::{Command, Status};

use super::error::{CommandError, TransportError};
use super::queue::{QueueConfig, QueuePair, Transfer};
use crate::tcp::pdu::PduError;

const T: Duration = Duration::from_secs(10);

struct Fake {
    s: TcpStream,
    hd: bool,
}

fn crc(b: &[u8]) -> [u8; 4] {
    crc32c::crc32c(b).to_le_bytes()
}

/// A queue pair connected to a scripted target that answered ICResp with these settings.
/// Returns the ICReq the host sent too.
fn pair(hd: bool, dd: bool, maxh2c: u32, in_capsule: u32) -> (QueuePair<Vec<u8>>, Fake, Vec<u8>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut icreq = vec![0u8; 128];
        s.read_exact(&mut icreq).unwrap();
        // ICResp: CH (type 1, HLEN 128, PDO 0, PLEN 128), PFV 0, CPDA 0, DGST, MAXH2CDATA.
        let mut r = [0u8; 128];
        r[0] = 0x01;
        r[2] = 128;
        r[4] = 128;
        r[11] = u8::from(hd) | (u8::from(dd) << 1);
        r[12..16].copy_from_slice(&maxh2c.to_le_bytes());
        s.write_all(&r).unwrap();
        (s, icreq)
    });
    let cfg = QueueConfig {
        depth: 4,
        max_transfer: 128 * 1024,
        in_capsule_max: in_capsule,
        header_digest: hd,
        data_digest: dd,
        sq_flow_disabled: true,
        exact_c2h: true,
    };
    let q = QueuePair::<Vec<u8>>::connect(addr, cfg, T).unwrap();
    let (s, icreq) = t.join().unwrap();
    (q, Fake { s, hd }, icreq)
}

impl Fake {
    fn read(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).unwrap();
        b
    }

    /// A header PDU (CapsuleResp, R2T, C2HData header) with its header digest when enabled.
    fn pdu(&self, mut h: Vec<u8>, data: &[u8], ddgst: Option<[u8; 4]>) -> Vec<u8> {
        let hlen = h.len();
        if self.hd {
            h[1] |= 0x01;
        }
        let hd_len = if self.hd { 4 } else { 0 };
        let plen = hlen + hd_len + data.len() + ddgst.map_or(0, |_| 4);
        if !data.is_empty() {
            h[3] = (hlen + hd_len) as u8;
        }
        if ddgst.is_some() {
            h[1] |= 0x02;
        }
        h[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
        let mut out = h.clone();
        if self.hd {
            out.extend_from_slice(&crc(&h));
        }
        out.extend_from_slice(data);
        if let Some(d) = ddgst {
            out.extend_from_slice(&d);
        }
        out
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    fn capsule_resp(&mut self, cid: u16, status_field: u16) {
        let mut h = vec![0u8; 24];
        h[0] = 0x05;
        h[2] = 24;
        h[8 + 12..8 + 14].copy_from_slice(&cid.to_le_bytes());
        h[8 + 14..8 + 16].copy_from_slice(&status_field.to_le_bytes());
        let p = self.pdu(h, &[], None);
        self.send(&p);
    }

    fn c2h(&mut self, cid: u16, datao: u32, data: &[u8], flags: u8, ddgst: Option<[u8; 4]>) {
        let mut h = vec![0u8; 24];
        h[0] = 0x07;
        h[1] = flags;
        h[2] = 24;
        h[8..10].copy_from_slice(&cid.to_le_bytes());
        h[12..16].copy_from_slice(&datao.to_le_bytes());
        h[16..20].copy_from_slice(&(data.len() as u32).to_le_bytes());
        let p = self.pdu(h, data, ddgst);
        self.send(&p);
    }

    fn r2t(&mut self, cid: u16, ttag: u16, r2to: u32, r2tl: u32) {
        let mut h = vec![0u8; 24];
        h[0] = 0x09;
        h[2] = 24;
        h[8..10].copy_from_slice(&cid.to_le_bytes());
        h[10..12].copy_from_slice(&ttag.to_le_bytes());
        h[12..16].copy_from_slice(&r2to.to_le_bytes());
        h[16..20].copy_from_slice(&r2tl.to_le_bytes());
        let p = self.pdu(h, &[], None);
        self.send(&p);
    }
}

type Done = (
    u64,
    Result<gyre_nvme::Completion, CommandError>,
    Option<Vec<u8>>,
);

fn poll_until(q: &mut QueuePair<Vec<u8>>, n: usize) -> Vec<Done> {
    let deadline = Instant::now() + T;
    let mut out = Vec::new();
    while out.len() < n {
        if q.poll(|t, r, b| out.push((t, r, b))) == 0 {
            assert!(
                Instant::now() < deadline,
                "{} of {n} completions",
                out.len()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    out
}

fn read_cmd(nlb: u32) -> Command {
    let mut c = Command::new(0x02, 0);
    c.nsid = 1;
    c.cdw12 = nlb - 1;
    c
}

fn write_cmd(nlb: u32) -> Command {
    let mut c = Command::new(0x01, 0);
    c.nsid = 1;
    c.cdw12 = nlb - 1;
    c
}

#[test]
fn icreq_and_read_capsule_are_byte_exact() {
    let (mut q, mut t, icreq) = pair(true, false, 8192, 0);
    // ICReq: CH type 0, FLAGS 0, HLEN 128, PDO 0, PLEN 128; PFV 0, HPDA 0, DGST = HDGST only,
    // MAXR2T 0 (one R2T at a time), the rest reserved.
    let mut want = vec![0u8; 128];
    want[2] = 128;
    want[4] = 128;
    want[11] = 0x01;
    assert_eq!(icreq, want);

    let slot = q
        .submit(
            read_cmd(2),
            Transfer::ControllerToHost(8192),
            Some(vec![0u8; 8192]),
            77,
        )
        .unwrap();
    assert_eq!(slot, 0);
    q.poll(|_, _, _| panic!("nothing completes yet"));
    let got = t.read(72 + 4);
    let mut want = vec![0u8; 72];
    // CH: CapsuleCmd, HDGSTF, HLEN 72, PDO 0 (no data), PLEN 76.
    want[..8].copy_from_slice(&[0x04, 0x01, 72, 0, 76, 0, 0, 0]);
    // SQE: Read, PSDT 01b (SGL), CID 0, NSID 1.
    want[8] = 0x02;
    want[9] = 0x40;
    want[12] = 1;
    // SGL1 at SQE bytes 24..40: address 0, length 8192, type 5 (transport data block)
    // subtype Ah.
    want[8 + 32..8 + 36].copy_from_slice(&8192u32.to_le_bytes());
    want[8 + 39] = 0x5A;
    // CDW12: NLB 0-based.
    want[8 + 48] = 1;
    let d = crc(&want);
    want.extend_from_slice(&d);
    assert_eq!(got, want);

    // Data in two PDUs, the second with LAST_PDU, then the response capsule.
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
    t.c2h(0, 0, &data[..3000], 0, None);
    t.c2h(0, 3000, &data[3000..], 0x04, None);
    t.capsule_resp(0, 0);
    let done = poll_until(&mut q, 1);
    let (tag, r, buf) = &done[0];
    assert_eq!(*tag, 77);
    assert!(r.as_ref().unwrap().status.is_success());
    assert_eq!(buf.as_ref().unwrap(), &data);
    assert_eq!(q.outstanding(), 0);
}

#[test]
fn success_flag_completes_a_read_without_a_response() {
    let (mut q, mut t, _) = pair(false, true, 8192, 0);
    q.submit(
        read_cmd(1),
        Transfer::ControllerToHost(4096),
        Some(vec![0u8; 4096]),
        1,
    )
    .unwrap();
    q.poll(|_, _, _| {});
    t.read(72);
    let data = vec![0xA5u8; 4096];
    t.c2h(0, 0, &data, 0x04 | 0x08, Some(crc(&data)));
    let done = poll_until(&mut q, 1);
    assert!(done[0].1.is_ok());
    assert_eq!(done[0].2.as_deref(), Some(&data[..]));
}

#[test]
fn in_capsule_write_with_data_digest_is_byte_exact() {
    let (mut q, mut t, _) = pair(false, true, 8192, 8192);
    let data: Vec<u8> = (0..512u32).map(|i| i as u8 ^ 0x3C).collect();
    q.submit(
        write_cmd(1),
        Transfer::HostToController(512),
        Some(data.clone()),
        3,
    )
    .unwrap();
    q.poll(|_, _, _| {});
    let got = t.read(72 + 512 + 4);
    // CH: CapsuleCmd, DDGSTF, HLEN 72, PDO 72, PLEN 72 + 512 + 4.
    assert_eq!(&got[..8], &[0x04, 0x02, 72, 72, 0x4C, 0x02, 0, 0]);
    assert_eq!(got[8], 0x01, "Write");
    // SGL: data block (type 0) subtype offset (1), offset 0, length 512.
    assert_eq!(
        &got[8 + 24..8 + 40],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0x01]
    );
    assert_eq!(&got[72..72 + 512], &data[..]);
    assert_eq!(&got[584..], &crc(&data));
    t.capsule_resp(0, 0);
    let done = poll_until(&mut q, 1);
    assert_eq!(done[0].0, 3);
    assert_eq!(done[0].2.as_deref(), Some(&data[..]), "buffer handed back");
}

#[test]
fn r2t_is_answered_with_h2c_data_cut_at_maxh2cdata() {
    let (mut q, mut t, _) = pair(true, true, 4096, 0);
    let data: Vec<u8> = (0..10000u32).map(|i| (i % 251) as u8).collect();
    q.submit(
        write_cmd(3),
        Transfer::HostToController(10000),
        Some(data.clone()),
        9,
    )
    .unwrap();
    q.poll(|_, _, _| {});
    let cap = t.read(76);
    assert_eq!(&cap[8 + 32..8 + 36], &10000u32.to_le_bytes());
    assert_eq!(
        cap[8 + 39],
        0x5A,
        "transport data block: data comes after R2T"
    );
    t.r2t(0, 0x1234, 0, 10000);
    // The H2CData leave in the poll that received the R2T.
    poll_until_sent(&mut q);
    for (i, (off, len)) in [(0u32, 4096u32), (4096, 4096), (8192, 1808)]
        .into_iter()
        .enumerate()
    {
        let last = i == 2;
        let got = t.read(24 + 4 + len as usize + 4);
        let mut h = vec![0u8; 24];
        h[0] = 0x06;
        h[1] = 0x01 | 0x02 | if last { 0x04 } else { 0 };
        h[2] = 24;
        h[3] = 28;
        h[4..8].copy_from_slice(&(28 + len + 4).to_le_bytes());
        h[10..12].copy_from_slice(&0x1234u16.to_le_bytes());
        h[12..16].copy_from_slice(&off.to_le_bytes());
        h[16..20].copy_from_slice(&len.to_le_bytes());
        assert_eq!(&got[..24], &h[..], "H2CData header {i}");
        assert_eq!(&got[24..28], &crc(&h));
        let chunk = &data[off as usize..(off + len) as usize];
        assert_eq!(&got[28..28 + len as usize], chunk);
        assert_eq!(&got[28 + len as usize..], &crc(chunk));
    }
    t.capsule_resp(0, 0);
    let done = poll_until(&mut q, 1);
    assert!(done[0].1.is_ok());
}

fn poll_until_sent(q: &mut QueuePair<Vec<u8>>) {
    // Poll a few times: the R2T must be received, then the PDUs flushed.
    for _ in 0..50 {
        q.poll(|_, _, _| panic!("no completion expected"));
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reads the H2CTermReq the host sends and returns (FES, FEI).
fn termreq(t: &mut Fake) -> (u16, u32) {
    let ch = t.read(8);
    assert_eq!(ch[0], 0x02, "H2CTermReq");
    assert_eq!(ch[2], 24);
    let plen = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]) as usize;
    let rest = t.read(plen - 8);
    (
        u16::from_le_bytes([rest[0], rest[1]]),
        u32::from_le_bytes([rest[2], rest[3], rest[4], rest[5]]),
    )
}

fn expect_transport(done: &[Done]) -> TransportError {
    match done[0].1 {
        Err(CommandError::Transport(e)) => e,
        ref other => panic!("expected a transport error, got {other:?}"),
    }
}

#[test]
fn response_for_an_unknown_cid_terminates_the_connection() {
    let (mut q, mut t, _) = pair(false, false, 8192, 0);
    q.submit(
        read_cmd(1),
        Transfer::ControllerToHost(4096),
        Some(vec![0u8; 4096]),
        1,
    )
    .unwrap();
    q.poll(|_, _, _| {});
    t.read(72);
    t.capsule_resp(3, 0);
    let done = poll_until(&mut q, 1);
    assert!(matches!(
        expect_transport(&done),
        TransportError::Pdu(PduError::InvalidHeaderField { offset: 20, .. })
    ));
    assert_eq!(termreq(&mut t), (0x01, 20));
    assert!(!q.is_connected());
    // Later submissions complete (at the next poll) with the same error.
    q.submit(
        read_cmd(1),
        Transfer::ControllerToHost(4096),
        Some(vec![0u8; 4096]),
        2,
    )
    .unwrap();
    let done = poll_until(&mut q, 1);
    assert_eq!(done[0].0, 2);
    assert!(matches!(expect_transport(&done), TransportError::Pdu(_)));
}

#[test]
fn data_out_of_range_and_r2t_for_a_read_are_refused() {
    let (mut q, mut t, _) = pair(false, false, 8192, 0);
    q.submit(
        read_cmd(1),
        Transfer::ControllerToHost(4096),
        Some(vec![0u8; 4096]),
        1,
    )
    .unwrap();
    q.poll(|_, _, _| {});
    t.read(72);
    t.c2h(0, 2048, &[0u8; 4096], 0x04, None);
    let done = poll_until(&mut q, 1);
    assert!(matches!(
        expect_transport(&done),
        TransportError::Pdu(PduError::DataOutOfRange { .. })
    ));
    assert_eq!(termreq(&mut t).0, 0x04);

    let (mut q, mut t, _) = pair(false, false, 8192, 0);
    q.submit(
        read_cmd(1),
        Transfer::ControllerToHost(4096),
        Some(vec![0u8; 4096]),
        1,
    )
    .unwrap();
    q.poll(|_, _, _| {});
    t.read(72);
    t.r2t(0, 1, 0, 4096);
    let done = poll_until(&mut q, 1);
    assert!(matches!(
        expect_transport(&done),
        TransportError::Pdu(PduError::InvalidHeaderField { offset: 8, .. })
    ));
    assert_eq!(termreq(&mut t), (0x01, 8));
}

#[test]
fn r2t_beyond_the_data_is_refused() {
    let (mut q, mut t, _) = pair(false, false, 8192, 0);
    q.submit(
        write_cmd(1),
        Transfer::HostToController(4096),
        Some(vec![1u8; 4096]),
        1,
    )
    .unwrap();
    q.poll(|_, _, _| {});
    t.read(72);
    t.r2t(0, 1, 4000, 200);
    let done = poll_until(&mut q, 1);
    assert!(matches!(
        expect_transport(&done),
        TransportError::Pdu(PduError::DataOutOfRange { .. })
    ));
}

#[test]
fn bad_data_digest_fails_only_its_command() {
    let (mut q, mut t, _) = pair(false, true, 8192, 0);
    q.submit(
        read_cmd(1),
        Transfer::ControllerToHost(4096),
        Some(vec![0u8; 4096]),
        1,
    )
    .unwrap();
    q.poll(|_, _, _| {});
    t.read(72);
    let data = vec![7u8; 4096];
    let mut wrong = crc(&data);
    wrong[0] ^= 1;
    t.c2h(0, 0, &data, 0x04, Some(wrong));
    t.capsule_resp(0, 0);
    let done = poll_until(&mut q, 1);
    assert_eq!(done[0].1, Err(CommandError::DataDigest));
    assert!(q.is_connected());
    // The next command on the same connection works.
    q.submit(
        read_cmd(1),
        Transfer::ControllerToHost(4096),
        Some(vec![0u8; 4096]),
        2,
    )
    .unwrap();
    q.poll(|_, _, _| {});
    t.read(72);
    t.c2h(0, 0, &data, 0x04, Some(crc(&data)));
    t.capsule_resp(0, 0);
    let done = poll_until(&mut q, 1);
    assert!(done[0].1.is_ok());
}

#[test]
fn status_termination_and_hang_up() {
    let (mut q, mut t, _) = pair(false, false, 8192, 0);
    q.submit(Command::new(0x00, 0), Transfer::None, None, 1)
        .unwrap();
    q.poll(|_, _, _| {});
    t.read(72);
    // LBA Out of Range with DNR: SC 80h, SCT 0 -> field (0x80 << 1) | (1 << 15).
    t.capsule_resp(0, (0x80 << 1) | 0x8000);
    let done = poll_until(&mut q, 1);
    let c = done[0].1.unwrap();
    assert!(c.status.same_code(Status::LBA_OUT_OF_RANGE) && c.status.dnr);

    // C2HTermReq: FES 2 (PDU sequence error), FEI 0.
    q.submit(Command::new(0x00, 0), Transfer::None, None, 2)
        .unwrap();
    q.poll(|_, _, _| {});
    t.read(72);
    let mut tr = vec![0u8; 24];
    tr[0] = 0x03;
    tr[2] = 24;
    tr[4] = 24;
    tr[8] = 2;
    t.send(&tr);
    let done = poll_until(&mut q, 1);
    assert_eq!(
        expect_transport(&done),
        TransportError::TerminatedByTarget { fes: 2, fei: 0 }
    );

    let (mut q, t, _) = pair(false, false, 8192, 0);
    q.submit(Command::new(0x00, 0), Transfer::None, None, 1)
        .unwrap();
    drop(t);
    let done = poll_until(&mut q, 1);
    assert!(matches!(
        expect_transport(&done),
        TransportError::Closed | TransportError::Socket(_)
    ));
}

#[test]
fn garbage_instead_of_a_pdu_is_a_transport_error() {
    let (mut q, mut t, _) = pair(false, false, 8192, 0);
    q.submit(Command::new(0x00, 0), Transfer::None, None, 1)
        .unwrap();
    q.poll(|_, _, _| {});
    t.read(72);
    t.send(&[0xFF; 64]);
    let done = poll_until(&mut q, 1);
    assert!(matches!(
        expect_transport(&done),
        TransportError::Pdu(PduError::InvalidHeaderField { offset: 0, .. })
    ));
    // PLEN far beyond any data limit.
    let (mut q, mut t, _) = pair(false, false, 8192, 0);
    q.submit(
        read_cmd(1),
        Transfer::ControllerToHost(4096),
        Some(vec![0u8; 4096]),
        1,
    )
    .unwrap();
    q.poll(|_, _, _| {});
    t.read(72);
    let mut h = vec![0u8; 24];
    h[0] = 0x07;
    h[1] = 0x04;
    h[2] = 24;
    h[3] = 24;
    h[4..8].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
    t.send(&h);
    let done = poll_until(&mut q, 1);
    assert!(matches!(
        expect_transport(&done),
        TransportError::Pdu(PduError::DataLimitExceeded { .. })
    ));
}

#[test]
fn a_command_without_an_answer_times_out() {
    use gyre_reactor::clock::{duration_to_ticks, ticks};
    let (mut q, mut t, _) = pair(false, false, 8192, 0);
    q.submit(
        read_cmd(1),
        Transfer::ControllerToHost(4096),
        Some(vec![0u8; 4096]),
        4,
    )
    .unwrap();
    q.poll(|_, _, _| {});
    t.read(72);
    let limit = duration_to_ticks(Duration::from_millis(50));
    assert!(!q.check_timeouts(ticks(), limit), "not late yet");
    std::thread::sleep(Duration::from_millis(80));
    assert!(q.check_timeouts(ticks(), limit));
    let done = poll_until(&mut q, 1);
    assert_eq!(done[0].0, 4);
    assert_eq!(expect_transport(&done), TransportError::Timeout);
    assert_eq!(
        done[0].2.as_ref().map(|b| b.len()),
        Some(4096),
        "buffer back"
    );
    // The target sees the connection close.
    let mut b = [0u8; 1];
    assert!(matches!(t.s.read(&mut b), Ok(0) | Err(_)));
}
