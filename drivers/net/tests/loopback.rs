//! Real sockets on loopback: accept, readiness, vectored receive, and a send queue that fills
//! the socket buffer and drains in order with every cookie reported once.

use std::io::{IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use gyre_net::{FlushOutcome, Interest, PollGroup, Recv, SendQueue, TcpConnection, TcpListener};

const DEADLINE: Duration = Duration::from_secs(10);

fn accept_one(listener: &TcpListener) -> TcpConnection {
    let start = Instant::now();
    loop {
        if let Some((conn, _)) = listener.accept().expect("accept") {
            return conn;
        }
        assert!(start.elapsed() < DEADLINE, "no connection arrived");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn pair(addr: &str) -> (TcpConnection, TcpStream) {
    let listener = TcpListener::bind(addr.parse().unwrap()).expect("bind");
    let client = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    (accept_one(&listener), client)
}

#[test]
fn accept_returns_none_when_nobody_waits() {
    let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    assert!(listener.accept().unwrap().is_none());
}

#[test]
fn poll_group_reports_only_ready_sockets_with_their_tokens() {
    let (a, mut ca) = pair("127.0.0.1:0");
    let (b, _cb) = pair("127.0.0.1:0");
    let mut group = PollGroup::new().unwrap();
    group.add(&a, 7, Interest::READ).unwrap();
    group.add(&b, 9, Interest::READ).unwrap();
    assert_eq!(group.len(), 2);

    let mut seen: Vec<(u64, bool)> = Vec::new();
    group.poll(|t, r| seen.push((t, r.readable))).unwrap();
    assert!(seen.is_empty(), "nothing was sent yet: {seen:?}");

    ca.write_all(b"hello").unwrap();
    let start = Instant::now();
    while seen.is_empty() {
        group.poll(|t, r| seen.push((t, r.readable))).unwrap();
        assert!(start.elapsed() < DEADLINE);
    }
    assert_eq!(seen, vec![(7, true)]);

    let mut buf = [0u8; 16];
    assert_eq!(a.recv(&mut buf).unwrap(), Recv::Data(5));
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(a.recv(&mut buf).unwrap(), Recv::WouldBlock);
    assert_eq!(b.recv(&mut buf).unwrap(), Recv::WouldBlock);
}

#[test]
fn vectored_receive_splits_across_buffers_and_close_is_seen() {
    let (conn, mut client) = pair("127.0.0.1:0");
    client.write_all(b"0123456789").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();

    let mut head = [0u8; 4];
    let mut tail = [0u8; 16];
    let mut got = 0;
    let start = Instant::now();
    while got < 10 {
        let mut bufs = [
            IoSliceMut::new(&mut head[got.min(4)..]),
            IoSliceMut::new(&mut tail[got.saturating_sub(4)..]),
        ];
        match conn.recv_vectored(&mut bufs).unwrap() {
            Recv::Data(n) => got += n,
            Recv::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Recv::Closed => panic!("closed before all data arrived"),
        }
        assert!(start.elapsed() < DEADLINE);
    }
    assert_eq!(&head, b"0123");
    assert_eq!(&tail[..6], b"456789");
    let start = Instant::now();
    loop {
        match conn.recv(&mut head).unwrap() {
            Recv::Closed => break,
            Recv::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Recv::Data(n) => panic!("{n} unexpected bytes"),
        }
        assert!(start.elapsed() < DEADLINE);
    }
}

#[test]
fn ipv6_loopback_works() {
    let Ok(listener) = TcpListener::bind("[::1]:0".parse::<SocketAddr>().unwrap()) else {
        eprintln!("skipping: this machine has no IPv6 loopback");
        return;
    };
    let addr = listener.local_addr().unwrap();
    let conn = TcpConnection::connect(addr, DEADLINE).unwrap();
    let server = accept_one(&listener);
    assert_eq!(conn.send(b"v6").unwrap(), 2);
    let mut buf = [0u8; 2];
    let start = Instant::now();
    while server.recv(&mut buf).unwrap() == Recv::WouldBlock {
        assert!(start.elapsed() < DEADLINE);
    }
    assert_eq!(&buf, b"v6");
    assert!(server.peer_addr().unwrap().is_ipv6());
}

#[test]
fn send_queue_survives_a_full_socket_and_reports_cookies_in_order() {
    let (conn, mut client) = pair("127.0.0.1:0");
    // Large enough to overflow the loopback socket buffers several times over.
    let chunks: Vec<Vec<u8>> = (0..64u32)
        .map(|i| {
            (0..256 * 1024)
                .map(|j| (i as usize * 31 + j) as u8)
                .collect()
        })
        .collect();
    let header = *b"HDR!";

    let mut queue = SendQueue::with_capacity(256);
    for (i, c) in chunks.iter().enumerate() {
        // SAFETY: header and chunks outlive the queue's use of them (cleared below).
        unsafe {
            assert!(queue.push(header.as_ptr(), header.len(), 2 * i as u32));
            assert!(queue.push(c.as_ptr(), c.len(), 2 * i as u32 + 1));
        }
    }
    // Zero-length entries still report their cookie.
    unsafe { assert!(queue.push(header.as_ptr(), 0, 1000)) };
    let total: usize = chunks.iter().map(|c| c.len() + header.len()).sum();
    assert_eq!(queue.queued_bytes(), total);

    let reader = std::thread::spawn(move || {
        let mut all = Vec::with_capacity(total);
        let mut buf = vec![0u8; 1 << 16];
        while all.len() < total {
            let n = client.read(&mut buf).expect("read");
            assert!(n > 0, "eof after {} bytes", all.len());
            all.extend_from_slice(&buf[..n]);
        }
        all
    });

    let mut group = PollGroup::new().unwrap();
    group.add(&conn, 1, Interest::READ).unwrap();
    let mut cookies = Vec::new();
    let mut blocked = 0;
    let start = Instant::now();
    loop {
        match queue.flush(&conn, |c| cookies.push(c)).unwrap() {
            FlushOutcome::Empty => break,
            FlushOutcome::Blocked => {
                blocked += 1;
                // Wait for write readiness the way a reactor would.
                group.modify(&conn, 1, Interest::READ_WRITE).unwrap();
                let mut writable = false;
                while !writable {
                    group.poll(|_, r| writable |= r.writable).unwrap();
                    assert!(start.elapsed() < DEADLINE, "never writable again");
                }
                group.modify(&conn, 1, Interest::READ).unwrap();
            }
        }
        assert!(start.elapsed() < DEADLINE);
    }
    assert!(blocked > 0, "16 MiB should have filled the socket buffer");
    let mut expected_cookies: Vec<u32> = (0..128).collect();
    expected_cookies.push(1000);
    assert_eq!(cookies, expected_cookies);
    assert!(queue.is_empty());

    let received = reader.join().unwrap();
    let mut expected = Vec::with_capacity(total);
    for c in &chunks {
        expected.extend_from_slice(&header);
        expected.extend_from_slice(c);
    }
    assert!(received == expected, "bytes differ");
}

#[test]
fn clear_hands_back_unsent_cookies_and_full_queue_refuses() {
    let mut queue = SendQueue::with_capacity(2);
    let data = [1u8; 8];
    unsafe {
        assert!(queue.push(data.as_ptr(), 8, 5));
        assert!(queue.push(data.as_ptr(), 8, gyre_net::NO_COOKIE));
        assert!(!queue.push(data.as_ptr(), 8, 6));
    }
    assert_eq!(queue.room(), 0);
    let mut dropped = Vec::new();
    queue.clear(|c| dropped.push(c));
    assert_eq!(dropped, vec![5]);
    assert!(queue.is_empty());
    assert_eq!(queue.queued_bytes(), 0);
}
