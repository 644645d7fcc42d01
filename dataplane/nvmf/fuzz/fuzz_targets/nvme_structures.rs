//! Feeds arbitrary bytes to the NVMe structure decoders (commands, completions, Connect data,
//! identify structures, log pages) and checks decode -> encode -> decode is stable, and that
//! the log page window writer keeps exactly the bytes of its window.
#![no_main]

use gyre_nvme::command::{DsmRange, GetLogPageCommand, IdentifyCommand, RwCommand};
use gyre_nvme::fabrics::{ConnectCommand, PropertyGetCommand, PropertySetCommand};
use gyre_nvme::features::GetFeaturesCommand;
use gyre_nvme::identify::{ActiveNamespaceList, NsIdDescriptorList};
use gyre_nvme::log::{
    AnaLogReader, ChangedNamespaceList, DiscoveryLogEntry, DiscoveryLogHeader, ErrorLogEntry,
    FirmwareSlotLog, LogWindow, SmartLog,
};
use gyre_nvme::{
    Command, Completion, ConnectData, IdentifyController, IdentifyNamespace, IoOpcode,
    SglDescriptor,
};
use libfuzzer_sys::fuzz_target;

fn commands(data: &[u8]) {
    let Ok(c) = Command::decode_slice(data) else {
        return;
    };
    let again = Command::decode(&c.to_bytes());
    assert_eq!(again, c);
    let rw = RwCommand::from_command(&c);
    let built = rw
        .to_command(IoOpcode::Read, c.cid, c.dptr)
        .expect("NLB from the wire is always in range");
    assert_eq!(RwCommand::from_command(&built), rw);
    let id = IdentifyCommand::from_command(&c);
    assert_eq!(
        IdentifyCommand::from_command(&id.to_command(c.cid, c.dptr)),
        id
    );
    let g = GetLogPageCommand::from_command(&c);
    assert_eq!(
        GetLogPageCommand::from_command(&g.to_command(c.cid, c.dptr)),
        g
    );
    if let Ok((off, len)) = g.window() {
        assert_eq!(off % 4, 0);
        assert!(len >= 4);
    }
    if let Ok(f) = GetFeaturesCommand::from_command(&c) {
        assert_eq!(
            GetFeaturesCommand::from_command(&f.to_command(c.cid)).ok(),
            Some(f)
        );
    }
    if let Ok(cc) = ConnectCommand::from_command(&c) {
        let back = ConnectCommand::from_command(&cc.to_command()).expect("connect");
        assert_eq!(back, cc);
    }
    if let Ok(p) = PropertyGetCommand::from_command(&c) {
        assert_eq!(
            PropertyGetCommand::from_command(&p.to_command()).ok(),
            Some(p)
        );
    }
    if let Ok(p) = PropertySetCommand::from_command(&c) {
        assert_eq!(
            PropertySetCommand::from_command(&p.to_command()).ok(),
            Some(p)
        );
    }
    let _ = c.dptr.kind();
    let _ = SglDescriptor::from_bytes(c.dptr.to_bytes()).length();
    if let Ok(cpl) = Completion::decode_slice(data) {
        assert_eq!(Completion::decode(&cpl.to_bytes()), cpl);
    }
    if let Ok(ranges) = DsmRange::decode_list(data, data.len() / 16) {
        for r in ranges {
            let mut b = [0u8; 16];
            r.encode(&mut b);
            assert_eq!(DsmRange::decode(&b), r);
        }
    }
}

fn structures(data: &[u8]) {
    if let Ok(cd) = ConnectData::decode(data) {
        let mut out = [0u8; 1024];
        cd.encode(&mut out).expect("connect data");
        assert_eq!(ConnectData::decode(&out), Ok(cd));
    }
    let mut page = [0u8; 4096];
    if let Ok(c) = IdentifyController::decode(data) {
        c.encode(&mut page).expect("id ctrl");
        assert_eq!(IdentifyController::decode(&page), Ok(c));
        let _ = c.subnqn();
    }
    if let Ok(n) = IdentifyNamespace::decode(data) {
        n.encode(&mut page).expect("id ns");
        assert_eq!(IdentifyNamespace::decode(&page), Ok(n));
        let _ = n.block_size();
    }
    let descs: Vec<_> = NsIdDescriptorList::decode(data).collect();
    if let Ok(descs) = descs.into_iter().collect::<Result<Vec<_>, _>>() {
        if NsIdDescriptorList::encode(&descs, &mut page).is_ok() {
            let again: Vec<_> = NsIdDescriptorList::decode(&page)
                .collect::<Result<Vec<_>, _>>()
                .expect("re-encoded descriptors");
            let known: Vec<_> = descs
                .into_iter()
                .filter(|d| !matches!(d, gyre_nvme::NsIdDescriptor::Unknown { .. }))
                .collect();
            assert_eq!(again, known);
        }
    }
    let _ = ActiveNamespaceList::decode(data).count();
    if let Some(ids) = ChangedNamespaceList::decode(data) {
        let _ = ids.count();
    }
    if let Ok(r) = AnaLogReader::new(data) {
        for g in r.take(1024) {
            match g {
                Ok((d, ids)) => assert_eq!(ids.iter().count(), d.num_nsids as usize),
                Err(_) => break,
            }
        }
    }
    if let Ok(h) = DiscoveryLogHeader::decode(data) {
        let _ = h.numrec;
    }
    if let Ok(e) = DiscoveryLogEntry::decode(data) {
        let mut b = [0u8; 1024];
        e.encode(&mut b);
        assert_eq!(DiscoveryLogEntry::decode(&b), Ok(e));
        let _ = (e.traddr_str(), e.trsvcid_str(), e.subnqn());
    }
    if let Ok(s) = SmartLog::decode(data) {
        let mut b = [0u8; 512];
        s.encode(&mut b).expect("smart");
        assert_eq!(SmartLog::decode(&b), Ok(s));
    }
    if let Ok(f) = FirmwareSlotLog::decode(data) {
        let mut b = [0u8; 512];
        f.encode(&mut b).expect("fw");
        assert_eq!(FirmwareSlotLog::decode(&b), Ok(f));
    }
    if let Some(b) = data.first_chunk::<64>() {
        let e = ErrorLogEntry::decode(b);
        let mut out = [0u8; 64];
        e.encode(&mut out);
        assert_eq!(ErrorLogEntry::decode(&out), e);
    }
}

/// The window writer against a plain model: write `data` in fuzzer-sized chunks as a "page"
/// and compare the window with the slice of the page.
fn window(data: &[u8]) {
    let Some((cfg, page)) = data.split_first_chunk::<5>() else {
        return;
    };
    let offset = u16::from_le_bytes([cfg[0], cfg[1]]) as usize;
    let len = u16::from_le_bytes([cfg[2], cfg[3]]) as usize % 8192;
    let chunk = (cfg[4] as usize).max(1);
    let mut out = vec![0xEEu8; len];
    let mut w = LogWindow::new(&mut out, offset as u64);
    for c in page.chunks(chunk) {
        if cfg[4] & 1 == 0 {
            w.put(c);
        } else {
            w.put_zeros(c.len());
        }
    }
    let filled = w.finish();
    let expect_len = page.len().saturating_sub(offset).min(len);
    assert_eq!(filled, expect_len);
    if cfg[4] & 1 == 0 {
        assert_eq!(&out[..filled], &page[offset.min(page.len())..][..filled]);
    } else {
        assert!(out[..filled].iter().all(|&b| b == 0));
    }
    assert!(out[filled..].iter().all(|&b| b == 0));
}

fuzz_target!(|data: &[u8]| {
    commands(data);
    structures(data);
    window(data);
});
