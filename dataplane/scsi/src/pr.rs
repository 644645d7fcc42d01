//! Persistent reservations (SPC-4 5.13) and the SPC-2 RESERVE/RELEASE they coexist with.
//!
//! The state is plain data behind the LUN's control mutex; PERSISTENT RESERVE IN/OUT run
//! there. The I/O path never locks: each channel keeps a [`ReservationView`] snapshot tagged
//! with the LUN's reservation generation (an atomic) and rebuilds it only when that changes.
//!
//! Not supported, and refused with the sense SPC-4 prescribes: SPEC_I_PT (INVALID FIELD IN
//! PARAMETER LIST; SIP_C = 0 in REPORT CAPABILITIES) and APTPL (INVALID FIELD IN PARAMETER
//! LIST; PTPL_C = 0): registrations do not survive a restart of the process.

use crate::sense::{Asc, Sense};

/// Reservation types (SPC-4 table 50).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrType {
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    WriteExclusiveRegistrantsOnly = 5,
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    pub fn from_code(c: u8) -> Option<PrType> {
        Some(match c {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants-only or all-registrants: registered nexuses get access.
    pub fn registrants_have_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    pub fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// The initiator port name and relative target port of an I_T nexus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NexusIdent<'a> {
    pub initiator: &'a str,
    pub rtpi: u16,
}

/// One registration. `rtpi == None`: made with ALL_TG_PT, valid through every target port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub initiator: String,
    pub rtpi: Option<u16>,
    pub key: u64,
}

impl Registration {
    fn matches(&self, n: &NexusIdent<'_>) -> bool {
        self.initiator == n.initiator && self.rtpi.is_none_or(|p| p == n.rtpi)
    }

    fn same_as(&self, other: &Registration) -> bool {
        self.initiator == other.initiator && self.rtpi == other.rtpi
    }
}

/// The persistent reservation, held by the registration `holder` (all registrants for the
/// all-registrants types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub rtype: PrType,
    pub holder: Registration,
}

/// Everything reservation-related of one LUN.
#[derive(Debug, Default, Clone)]
pub struct PrState {
    pub generation: u32,
    pub registrations: Vec<Registration>,
    pub reservation: Option<Reservation>,
    /// The SPC-2 RESERVE holder.
    pub spc2_holder: Option<(String, u16)>,
}

/// Maximum registrations per LUN; more yields INSUFFICIENT REGISTRATION RESOURCES.
pub const MAX_REGISTRATIONS: usize = 128;

/// PERSISTENT RESERVE OUT service actions.
pub mod sa {
    pub const REGISTER: u8 = 0;
    pub const RESERVE: u8 = 1;
    pub const RELEASE: u8 = 2;
    pub const CLEAR: u8 = 3;
    pub const PREEMPT: u8 = 4;
    pub const PREEMPT_AND_ABORT: u8 = 5;
    pub const REGISTER_AND_IGNORE_EXISTING_KEY: u8 = 6;
    pub const REGISTER_AND_MOVE: u8 = 7;
}

/// The result of a PR OUT or SPC-2 reservation command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrOutcome {
    Good,
    Conflict,
    Check(Sense),
}

/// A unit attention a PR OUT establishes for other nexuses: those matching `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrUnitAttention {
    pub target: Registration,
    pub asc: Asc,
}

/// A parsed PERSISTENT RESERVE OUT parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrOutParams {
    pub key: u64,
    pub sa_key: u64,
    pub all_tg_pt: bool,
    /// REGISTER AND MOVE: destination.
    pub move_to: Option<MoveTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveTarget {
    pub initiator: String,
    pub rtpi: u16,
    pub unreg: bool,
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_be_bytes(a)
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_be_bytes(a)
}

/// Parses a PR OUT parameter list (SPC-4 6.16.3). `param_len` is the CDB's length field,
/// `data` what arrived.
pub fn parse_pr_out(service_action: u8, param_len: u32, data: &[u8]) -> Result<PrOutParams, Sense> {
    if service_action == sa::REGISTER_AND_MOVE {
        if param_len < 24 || (data.len() as u64) < param_len as u64 {
            return Err(Sense::param_list_length());
        }
        let key = be64(data, 0);
        let sa_key = be64(data, 8);
        if data[17] & 0x01 != 0 {
            return Err(Sense::invalid_param_field(17, Some(0)));
        }
        let unreg = data[17] & 0x02 != 0;
        let rtpi = u16::from_be_bytes([data[18], data[19]]);
        let tid_len = be32(data, 20) as usize;
        let end = tid_len
            .checked_add(24)
            .ok_or_else(Sense::param_list_length)?;
        if end > data.len().min(param_len as usize) {
            return Err(Sense::param_list_length());
        }
        let tid = &data[24..24 + tid_len];
        let initiator = parse_transport_id(tid, 24)?;
        return Ok(PrOutParams {
            key,
            sa_key,
            all_tg_pt: false,
            move_to: Some(MoveTarget {
                initiator,
                rtpi,
                unreg,
            }),
        });
    }
    if param_len != 24 {
        // SPEC_I_PT would allow a longer list; we do not support it.
        if param_len > 24 && data.len() > 20 && data[20] & 0x08 != 0 {
            return Err(Sense::invalid_param_field(20, Some(3)));
        }
        return Err(Sense::param_list_length());
    }
    if data.len() < 24 {
        return Err(Sense::param_list_length());
    }
    let flags = data[20];
    if flags & 0x08 != 0 {
        return Err(Sense::invalid_param_field(20, Some(3)));
    }
    if flags & 0x01 != 0 {
        // APTPL: we do not persist through power loss.
        return Err(Sense::invalid_param_field(20, Some(0)));
    }
    Ok(PrOutParams {
        key: be64(data, 0),
        sa_key: be64(data, 8),
        all_tg_pt: flags & 0x04 != 0,
        move_to: None,
    })
}

/// Parses an iSCSI TransportID (SPC-4 7.6.4.6), format 00b (name) or 01b (name ",i,0x" ISID),
/// into an initiator port name as the transport spells it. `base` locates it for the field
/// pointer.
pub fn parse_transport_id(tid: &[u8], base: u16) -> Result<String, Sense> {
    if tid.len() < 4 {
        return Err(Sense::param_list_length());
    }
    if tid[0] & 0x0F != 0x05 {
        return Err(Sense::invalid_param_field(base, Some(3)));
    }
    let format = tid[0] >> 6;
    if format > 1 {
        return Err(Sense::invalid_param_field(base, Some(7)));
    }
    let len = u16::from_be_bytes([tid[2], tid[3]]) as usize;
    let body = tid.get(4..4 + len).ok_or_else(Sense::param_list_length)?;
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    let text = std::str::from_utf8(&body[..end])
        .map_err(|_| Sense::invalid_param_field(base + 4, None))?;
    if text.is_empty() || !text.is_ascii() {
        return Err(Sense::invalid_param_field(base + 4, None));
    }
    if format == 1 && !text.contains(",i,0x") {
        return Err(Sense::invalid_param_field(base + 4, None));
    }
    Ok(text.to_string())
}

/// Appends the iSCSI TransportID of `initiator` (format 01b if it carries ",i,0x<ISID>",
/// else 00b), padded to a multiple of 4 with a terminating NUL.
pub fn encode_transport_id(initiator: &str, protocol_id: u8, out: &mut Vec<u8>) {
    let format = if initiator.contains(",i,0x") {
        0x40
    } else {
        0x00
    };
    let name_len = (initiator.len() + 1).div_ceil(4) * 4;
    let name_len = name_len.max(20).min(u16::MAX as usize);
    out.push(format | (protocol_id & 0x0F));
    out.push(0);
    out.extend_from_slice(&(name_len as u16).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(initiator.as_bytes());
    out.resize(start + name_len, 0);
}

/// How a command is treated under a reservation (SPC-4 table 43 and SBC-3 table 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessClass {
    /// Never conflicts (INQUIRY, REPORT LUNS, REQUEST SENSE, PR IN/OUT, ...).
    Always,
    /// Reads: allowed under the write-exclusive types, conflict under the exclusive-access
    /// types for nexuses without access.
    Read,
    /// Writes and state changes: conflict for nexuses without access.
    Write,
    /// TEST UNIT READY, READ CAPACITY, PERSISTENT RESERVE IN: allowed under every persistent
    /// reservation, blocked by another nexus's SPC-2 reservation.
    Meta,
    /// SPC-2 RESERVE / RELEASE: conflict whenever a persistent reservation or registration
    /// exists (SPC-4 5.13.3's exceptions), handled by the command itself.
    Spc2,
}

/// A channel's lock-free copy of the reservation state.
#[derive(Debug, Clone, Default)]
pub struct ReservationView {
    pub generation: u64,
    /// SPC-2 holder.
    pub spc2_holder: Option<(String, u16)>,
    /// Persistent reservation type and holder registration.
    pub reservation: Option<Reservation>,
    pub registrations: Vec<Registration>,
}

impl ReservationView {
    pub fn from_state(st: &PrState, generation: u64) -> Self {
        ReservationView {
            generation,
            spc2_holder: st.spc2_holder.clone(),
            reservation: st.reservation.clone(),
            registrations: if st.reservation.is_some() {
                st.registrations.clone()
            } else {
                Vec::new()
            },
        }
    }

    /// True if nothing restricts access (the common case, checked first).
    pub fn is_open(&self) -> bool {
        self.spc2_holder.is_none() && self.reservation.is_none()
    }

    /// Whether a command of `class` from `n` conflicts.
    pub fn conflicts(&self, class: AccessClass, n: &NexusIdent<'_>) -> bool {
        if class == AccessClass::Always || class == AccessClass::Spc2 {
            return false;
        }
        if let Some((init, port)) = &self.spc2_holder {
            return !(init == n.initiator && *port == n.rtpi);
        }
        if class == AccessClass::Meta {
            return false;
        }
        let Some(res) = &self.reservation else {
            return false;
        };
        if is_holder(res, &self.registrations, n) {
            return false;
        }
        let registered = self.registrations.iter().any(|r| r.matches(n));
        if registered && res.rtype.registrants_have_access() {
            return false;
        }
        match class {
            AccessClass::Read => res.rtype.exclusive_access(),
            _ => true,
        }
    }
}

fn is_holder(res: &Reservation, regs: &[Registration], n: &NexusIdent<'_>) -> bool {
    if res.rtype.all_registrants() {
        regs.iter().any(|r| r.matches(n))
    } else {
        res.holder.matches(n)
    }
}

impl PrState {
    fn find(&self, n: &NexusIdent<'_>) -> Option<usize> {
        self.registrations.iter().position(|r| r.matches(n))
    }

    pub fn is_holder(&self, n: &NexusIdent<'_>) -> bool {
        self.reservation
            .as_ref()
            .is_some_and(|r| is_holder(r, &self.registrations, n))
    }

    /// SPC-2 RESERVE (SPC-4 5.13.3 exceptions: conflicts while any PR registration exists).
    pub fn spc2_reserve(&mut self, n: &NexusIdent<'_>) -> PrOutcome {
        if !self.registrations.is_empty() || self.reservation.is_some() {
            return PrOutcome::Conflict;
        }
        match &self.spc2_holder {
            Some((i, p)) if !(i == n.initiator && *p == n.rtpi) => PrOutcome::Conflict,
            _ => {
                self.spc2_holder = Some((n.initiator.to_string(), n.rtpi));
                PrOutcome::Good
            }
        }
    }

    /// SPC-2 RELEASE: releases if `n` holds it; GOOD without effect otherwise.
    pub fn spc2_release(&mut self, n: &NexusIdent<'_>) -> PrOutcome {
        if let Some((i, p)) = &self.spc2_holder {
            if i == n.initiator && *p == n.rtpi {
                self.spc2_holder = None;
            }
        }
        PrOutcome::Good
    }

    /// Runs a PERSISTENT RESERVE OUT from `n`. Unit attentions to establish go to `uas`.
    pub fn pr_out(
        &mut self,
        n: &NexusIdent<'_>,
        service_action: u8,
        scope: u8,
        rtype: u8,
        p: &PrOutParams,
        uas: &mut Vec<PrUnitAttention>,
    ) -> PrOutcome {
        // An SPC-2 reservation held by another nexus blocks PR OUT (SPC-4 5.13.3).
        if let Some((i, port)) = &self.spc2_holder {
            if !(i == n.initiator && *port == n.rtpi) {
                return PrOutcome::Conflict;
            }
        }
        match service_action {
            sa::REGISTER | sa::REGISTER_AND_IGNORE_EXISTING_KEY => self.register(
                n,
                p,
                service_action == sa::REGISTER_AND_IGNORE_EXISTING_KEY,
                uas,
            ),
            sa::RESERVE => self.reserve(n, scope, rtype, p),
            sa::RELEASE => self.release(n, scope, rtype, p, uas),
            sa::CLEAR => self.clear(n, p, uas),
            sa::PREEMPT | sa::PREEMPT_AND_ABORT => self.preempt(n, scope, rtype, p, uas),
            sa::REGISTER_AND_MOVE => self.register_and_move(n, scope, rtype, p),
            _ => PrOutcome::Check(Sense::invalid_cdb_field(1, Some(4))),
        }
    }

    fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    fn register(
        &mut self,
        n: &NexusIdent<'_>,
        p: &PrOutParams,
        ignore_key: bool,
        uas: &mut Vec<PrUnitAttention>,
    ) -> PrOutcome {
        match self.find(n) {
            None => {
                if !ignore_key && p.key != 0 {
                    return PrOutcome::Conflict;
                }
                if p.sa_key == 0 {
                    return PrOutcome::Good;
                }
                if self.registrations.len() >= MAX_REGISTRATIONS {
                    return PrOutcome::Check(Sense::illegal(
                        Asc::INSUFFICIENT_REGISTRATION_RESOURCES,
                    ));
                }
                self.registrations.push(Registration {
                    initiator: n.initiator.to_string(),
                    rtpi: if p.all_tg_pt { None } else { Some(n.rtpi) },
                    key: p.sa_key,
                });
                self.bump();
                PrOutcome::Good
            }
            Some(i) => {
                if !ignore_key && self.registrations[i].key != p.key {
                    return PrOutcome::Conflict;
                }
                if p.sa_key != 0 {
                    self.registrations[i].key = p.sa_key;
                    self.bump();
                    return PrOutcome::Good;
                }
                let gone = self.registrations.remove(i);
                self.unregistered(&gone, uas);
                self.bump();
                PrOutcome::Good
            }
        }
    }

    /// Effects on the reservation of a registration going away (SPC-4 5.13.11.2.3).
    fn unregistered(&mut self, gone: &Registration, uas: &mut Vec<PrUnitAttention>) {
        let Some(res) = &self.reservation else {
            return;
        };
        let release = if res.rtype.all_registrants() {
            self.registrations.is_empty()
        } else {
            res.holder.same_as(gone)
        };
        if release {
            let rtype = res.rtype;
            self.reservation = None;
            if matches!(
                rtype,
                PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly
            ) {
                for r in &self.registrations {
                    uas.push(PrUnitAttention {
                        target: r.clone(),
                        asc: Asc::RESERVATIONS_RELEASED,
                    });
                }
            }
        }
    }

    fn registered_with(&self, n: &NexusIdent<'_>, key: u64) -> Result<usize, PrOutcome> {
        match self.find(n) {
            Some(i) if self.registrations[i].key == key => Ok(i),
            _ => Err(PrOutcome::Conflict),
        }
    }

    fn reserve(&mut self, n: &NexusIdent<'_>, scope: u8, rtype: u8, p: &PrOutParams) -> PrOutcome {
        let i = match self.registered_with(n, p.key) {
            Ok(i) => i,
            Err(e) => return e,
        };
        if scope != 0 {
            return PrOutcome::Check(Sense::invalid_cdb_field(2, Some(7)));
        }
        let Some(t) = PrType::from_code(rtype) else {
            return PrOutcome::Check(Sense::invalid_cdb_field(2, Some(3)));
        };
        match &self.reservation {
            Some(res) => {
                if is_holder(res, &self.registrations, n) && res.rtype == t {
                    PrOutcome::Good
                } else {
                    PrOutcome::Conflict
                }
            }
            None => {
                self.reservation = Some(Reservation {
                    rtype: t,
                    holder: self.registrations[i].clone(),
                });
                PrOutcome::Good
            }
        }
    }

    fn release(
        &mut self,
        n: &NexusIdent<'_>,
        scope: u8,
        rtype: u8,
        p: &PrOutParams,
        uas: &mut Vec<PrUnitAttention>,
    ) -> PrOutcome {
        let i = match self.registered_with(n, p.key) {
            Ok(i) => i,
            Err(e) => return e,
        };
        let Some(res) = &self.reservation else {
            return PrOutcome::Good;
        };
        if !is_holder(res, &self.registrations, n) {
            return PrOutcome::Good;
        }
        if scope != 0 || PrType::from_code(rtype) != Some(res.rtype) {
            return PrOutcome::Check(Sense::illegal(
                Asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION,
            ));
        }
        let t = res.rtype;
        self.reservation = None;
        if t.registrants_have_access() {
            let me = self.registrations[i].clone();
            for r in &self.registrations {
                if !r.same_as(&me) {
                    uas.push(PrUnitAttention {
                        target: r.clone(),
                        asc: Asc::RESERVATIONS_RELEASED,
                    });
                }
            }
        }
        PrOutcome::Good
    }

    fn clear(
        &mut self,
        n: &NexusIdent<'_>,
        p: &PrOutParams,
        uas: &mut Vec<PrUnitAttention>,
    ) -> PrOutcome {
        let i = match self.registered_with(n, p.key) {
            Ok(i) => i,
            Err(e) => return e,
        };
        let me = self.registrations[i].clone();
        for r in self.registrations.drain(..) {
            if !r.same_as(&me) {
                uas.push(PrUnitAttention {
                    target: r,
                    asc: Asc::RESERVATIONS_PREEMPTED,
                });
            }
        }
        self.reservation = None;
        self.bump();
        PrOutcome::Good
    }

    fn preempt(
        &mut self,
        n: &NexusIdent<'_>,
        scope: u8,
        rtype: u8,
        p: &PrOutParams,
        uas: &mut Vec<PrUnitAttention>,
    ) -> PrOutcome {
        let i = match self.registered_with(n, p.key) {
            Ok(i) => i,
            Err(e) => return e,
        };
        let me = self.registrations[i].clone();
        let new_type = PrType::from_code(rtype);
        let remove_matching =
            |st: &mut PrState, key: u64, all_others: bool, uas: &mut Vec<PrUnitAttention>| {
                let mut removed = 0;
                st.registrations.retain(|r| {
                    let hit = !r.same_as(&me) && (all_others || r.key == key);
                    if hit {
                        uas.push(PrUnitAttention {
                            target: r.clone(),
                            asc: Asc::REGISTRATIONS_PREEMPTED,
                        });
                        removed += 1;
                    }
                    !hit
                });
                removed
            };
        match self.reservation.clone() {
            Some(res) if res.rtype.all_registrants() => {
                if p.sa_key == 0 {
                    // Preempt everyone else and take a new reservation.
                    if scope != 0 {
                        return PrOutcome::Check(Sense::invalid_cdb_field(2, Some(7)));
                    }
                    let Some(t) = new_type else {
                        return PrOutcome::Check(Sense::invalid_cdb_field(2, Some(3)));
                    };
                    remove_matching(self, 0, true, uas);
                    self.reservation = Some(Reservation {
                        rtype: t,
                        holder: me,
                    });
                } else if remove_matching(self, p.sa_key, false, uas) == 0 {
                    return PrOutcome::Conflict;
                }
            }
            Some(res) if res.holder.key == p.sa_key => {
                if scope != 0 {
                    return PrOutcome::Check(Sense::invalid_cdb_field(2, Some(7)));
                }
                let Some(t) = new_type else {
                    return PrOutcome::Check(Sense::invalid_cdb_field(2, Some(3)));
                };
                remove_matching(self, p.sa_key, false, uas);
                if res.rtype != t {
                    for r in &self.registrations {
                        if !r.same_as(&me) {
                            uas.push(PrUnitAttention {
                                target: r.clone(),
                                asc: Asc::RESERVATIONS_RELEASED,
                            });
                        }
                    }
                }
                self.reservation = Some(Reservation {
                    rtype: t,
                    holder: me,
                });
            }
            _ => {
                if p.sa_key == 0 {
                    return PrOutcome::Check(Sense::invalid_param_field(8, None));
                }
                if remove_matching(self, p.sa_key, false, uas) == 0 {
                    return PrOutcome::Conflict;
                }
            }
        }
        self.bump();
        PrOutcome::Good
    }

    fn register_and_move(
        &mut self,
        n: &NexusIdent<'_>,
        scope: u8,
        rtype: u8,
        p: &PrOutParams,
    ) -> PrOutcome {
        let Some(mv) = &p.move_to else {
            return PrOutcome::Check(Sense::param_list_length());
        };
        let i = match self.registered_with(n, p.key) {
            Ok(i) => i,
            Err(e) => return e,
        };
        let Some(res) = self.reservation.clone() else {
            return PrOutcome::Conflict;
        };
        if res.rtype.all_registrants() || !is_holder(&res, &self.registrations, n) {
            return PrOutcome::Conflict;
        }
        if scope != 0 {
            return PrOutcome::Check(Sense::invalid_cdb_field(2, Some(7)));
        }
        let Some(t) = PrType::from_code(rtype) else {
            return PrOutcome::Check(Sense::invalid_cdb_field(2, Some(3)));
        };
        if p.sa_key == 0 {
            return PrOutcome::Check(Sense::invalid_param_field(8, None));
        }
        let dest = NexusIdent {
            initiator: &mv.initiator,
            rtpi: mv.rtpi,
        };
        if dest == *n {
            return PrOutcome::Check(Sense::invalid_param_field(24, None));
        }
        let dest_reg = match self.find(&dest) {
            Some(d) => {
                self.registrations[d].key = p.sa_key;
                self.registrations[d].clone()
            }
            None => {
                if self.registrations.len() >= MAX_REGISTRATIONS {
                    return PrOutcome::Check(Sense::illegal(
                        Asc::INSUFFICIENT_REGISTRATION_RESOURCES,
                    ));
                }
                let r = Registration {
                    initiator: mv.initiator.clone(),
                    rtpi: Some(mv.rtpi),
                    key: p.sa_key,
                };
                self.registrations.push(r.clone());
                r
            }
        };
        self.reservation = Some(Reservation {
            rtype: t,
            holder: dest_reg,
        });
        if mv.unreg {
            let me = self.registrations[i].clone();
            self.registrations.retain(|r| !r.same_as(&me));
        }
        self.bump();
        PrOutcome::Good
    }

    /// PERSISTENT RESERVE IN data (SPC-4 6.15) into `out`.
    pub fn pr_in(&self, service_action: u8, protocol_id: u8, out: &mut Vec<u8>) {
        out.clear();
        let gen = self.generation.to_be_bytes();
        match service_action {
            0 => {
                out.extend_from_slice(&gen);
                out.extend_from_slice(&((self.registrations.len() * 8) as u32).to_be_bytes());
                for r in &self.registrations {
                    out.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            1 => {
                out.extend_from_slice(&gen);
                match &self.reservation {
                    None => out.extend_from_slice(&0u32.to_be_bytes()),
                    Some(res) => {
                        out.extend_from_slice(&16u32.to_be_bytes());
                        let key = if res.rtype.all_registrants() {
                            0
                        } else {
                            res.holder.key
                        };
                        out.extend_from_slice(&key.to_be_bytes());
                        out.extend_from_slice(&[0, 0, 0, 0, 0, res.rtype as u8, 0, 0]);
                    }
                }
            }
            2 => {
                // REPORT CAPABILITIES: CRH, ATP_C; TMV with every type in the mask.
                out.extend_from_slice(&[0, 8, 0x10 | 0x04, 0x80, 0xEA, 0x01, 0, 0]);
            }
            _ => {
                out.extend_from_slice(&gen);
                out.extend_from_slice(&[0; 4]);
                for r in &self.registrations {
                    out.extend_from_slice(&r.key.to_be_bytes());
                    out.extend_from_slice(&[0; 4]);
                    let holder = self
                        .reservation
                        .as_ref()
                        .is_some_and(|res| res.rtype.all_registrants() || res.holder.same_as(r));
                    let mut flags = 0u8;
                    if r.rtpi.is_none() {
                        flags |= 0x02;
                    }
                    let mut scope_type = 0u8;
                    if holder {
                        flags |= 0x01;
                        scope_type = self.reservation.as_ref().map_or(0, |res| res.rtype as u8);
                    }
                    out.push(flags);
                    out.push(scope_type);
                    out.extend_from_slice(&[0; 4]);
                    out.extend_from_slice(&r.rtpi.unwrap_or(0).to_be_bytes());
                    let len_at = out.len();
                    out.extend_from_slice(&[0; 4]);
                    encode_transport_id(&r.initiator, protocol_id, out);
                    let tid_len = (out.len() - len_at - 4) as u32;
                    out[len_at..len_at + 4].copy_from_slice(&tid_len.to_be_bytes());
                }
                let add = (out.len() - 8) as u32;
                out[4..8].copy_from_slice(&add.to_be_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NexusIdent<'static> = NexusIdent {
        initiator: "iqn.a,i,0x000000000001",
        rtpi: 1,
    };
    const B: NexusIdent<'static> = NexusIdent {
        initiator: "iqn.b,i,0x000000000002",
        rtpi: 1,
    };

    fn params(key: u64, sa_key: u64) -> PrOutParams {
        PrOutParams {
            key,
            sa_key,
            all_tg_pt: false,
            move_to: None,
        }
    }

    fn out(st: &mut PrState, n: &NexusIdent<'_>, s: u8, t: u8, key: u64, sak: u64) -> PrOutcome {
        let mut uas = Vec::new();
        st.pr_out(n, s, 0, t, &params(key, sak), &mut uas)
    }

    #[test]
    fn register_reserve_conflicts_and_release() {
        let mut st = PrState::default();
        assert_eq!(out(&mut st, &A, sa::REGISTER, 0, 0, 0xA), PrOutcome::Good);
        assert_eq!(out(&mut st, &B, sa::REGISTER, 0, 0, 0xB), PrOutcome::Good);
        assert_eq!(st.generation, 2);
        // Wrong key: conflict.
        assert_eq!(
            out(&mut st, &B, sa::RESERVE, 1, 0xA, 0),
            PrOutcome::Conflict
        );
        assert_eq!(out(&mut st, &A, sa::RESERVE, 1, 0xA, 0), PrOutcome::Good);
        let v = ReservationView::from_state(&st, 1);
        assert!(!v.conflicts(AccessClass::Read, &B));
        assert!(v.conflicts(AccessClass::Write, &B));
        assert!(!v.conflicts(AccessClass::Write, &A));
        // Release with the wrong type.
        assert!(matches!(
            out(&mut st, &A, sa::RELEASE, 3, 0xA, 0),
            PrOutcome::Check(_)
        ));
        assert_eq!(out(&mut st, &A, sa::RELEASE, 1, 0xA, 0), PrOutcome::Good);
        assert!(st.reservation.is_none());
    }

    #[test]
    fn access_table_per_type() {
        // (type, registered B read, write, unregistered read, write) from libiscsi/SPC-4.
        let cases = [
            (3, false, false, false, false),
            (1, true, false, true, false),
            (6, true, true, false, false),
            (5, true, true, true, false),
            (8, true, true, false, false),
            (7, true, true, true, false),
        ];
        let c = NexusIdent {
            initiator: "iqn.c",
            rtpi: 1,
        };
        for (t, rr, rw, ur, uw) in cases {
            let mut st = PrState::default();
            out(&mut st, &A, sa::REGISTER, 0, 0, 1);
            out(&mut st, &B, sa::REGISTER, 0, 0, 2);
            assert_eq!(out(&mut st, &A, sa::RESERVE, t, 1, 0), PrOutcome::Good);
            let v = ReservationView::from_state(&st, 1);
            assert_eq!(!v.conflicts(AccessClass::Read, &B), rr, "type {t}");
            assert_eq!(!v.conflicts(AccessClass::Write, &B), rw, "type {t}");
            assert_eq!(!v.conflicts(AccessClass::Read, &c), ur, "type {t}");
            assert_eq!(!v.conflicts(AccessClass::Write, &c), uw, "type {t}");
            assert!(!v.conflicts(AccessClass::Write, &A));
        }
    }

    #[test]
    fn preempt_takes_over_and_unregisters_the_holder() {
        let mut st = PrState::default();
        out(&mut st, &A, sa::REGISTER, 0, 0, 1);
        out(&mut st, &B, sa::REGISTER, 0, 0, 2);
        out(&mut st, &A, sa::RESERVE, 5, 1, 0);
        let mut uas = Vec::new();
        let r = st.pr_out(&B, sa::PREEMPT, 0, 6, &params(2, 1), &mut uas);
        assert_eq!(r, PrOutcome::Good);
        assert_eq!(st.registrations.len(), 1);
        let res = st.reservation.clone().unwrap();
        assert_eq!(res.rtype, PrType::ExclusiveAccessRegistrantsOnly);
        assert_eq!(res.holder.initiator, B.initiator);
        assert_eq!(uas.len(), 1);
        assert_eq!(uas[0].asc, Asc::REGISTRATIONS_PREEMPTED);
        // A is no longer registered: its commands conflict.
        let v = ReservationView::from_state(&st, 2);
        assert!(v.conflicts(AccessClass::Read, &A));
    }

    #[test]
    fn preempt_without_reservation_needs_nonzero_key_that_exists() {
        let mut st = PrState::default();
        out(&mut st, &A, sa::REGISTER, 0, 0, 1);
        assert!(matches!(
            out(&mut st, &A, sa::PREEMPT, 1, 1, 0),
            PrOutcome::Check(_)
        ));
        assert_eq!(out(&mut st, &A, sa::PREEMPT, 1, 1, 9), PrOutcome::Conflict);
    }

    #[test]
    fn clear_removes_everything() {
        let mut st = PrState::default();
        out(&mut st, &A, sa::REGISTER, 0, 0, 1);
        out(&mut st, &B, sa::REGISTER, 0, 0, 2);
        out(&mut st, &A, sa::RESERVE, 1, 1, 0);
        let mut uas = Vec::new();
        assert_eq!(
            st.pr_out(&B, sa::CLEAR, 0, 0, &params(2, 0), &mut uas),
            PrOutcome::Good
        );
        assert!(st.registrations.is_empty() && st.reservation.is_none());
        assert_eq!(uas[0].target.initiator, A.initiator);
        assert_eq!(uas[0].asc, Asc::RESERVATIONS_PREEMPTED);
    }

    #[test]
    fn spc2_reserve_yields_to_registrations() {
        let mut st = PrState::default();
        assert_eq!(st.spc2_reserve(&A), PrOutcome::Good);
        let v = ReservationView::from_state(&st, 1);
        assert!(v.conflicts(AccessClass::Read, &B));
        assert!(!v.conflicts(AccessClass::Read, &A));
        assert_eq!(st.spc2_reserve(&B), PrOutcome::Conflict);
        // PR OUT from another nexus while SPC-2 reserved: conflict.
        assert_eq!(out(&mut st, &B, sa::REGISTER, 0, 0, 2), PrOutcome::Conflict);
        st.spc2_release(&A);
        assert_eq!(out(&mut st, &B, sa::REGISTER, 0, 0, 2), PrOutcome::Good);
        assert_eq!(st.spc2_reserve(&A), PrOutcome::Conflict);
    }

    #[test]
    fn read_keys_and_reservation_bytes() {
        let mut st = PrState::default();
        out(&mut st, &A, sa::REGISTER, 0, 0, 0x1122);
        out(&mut st, &A, sa::RESERVE, 3, 0x1122, 0);
        let mut v = Vec::new();
        st.pr_in(0, 5, &mut v);
        assert_eq!(v, [0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x11, 0x22]);
        st.pr_in(1, 5, &mut v);
        assert_eq!(
            v,
            [0, 0, 0, 1, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0x11, 0x22, 0, 0, 0, 0, 0, 3, 0, 0]
        );
        st.pr_in(3, 5, &mut v);
        assert_eq!(v[8 + 12], 0x01, "R_HOLDER");
        assert_eq!(v[8 + 13], 3);
        assert_eq!(v[8 + 24], 0x45, "format 01b, iSCSI");
    }

    #[test]
    fn parse_rejects_aptpl_spec_i_pt_and_bad_lengths() {
        let mut d = [0u8; 24];
        assert_eq!(parse_pr_out(0, 23, &d), Err(Sense::param_list_length()));
        d[20] = 0x01;
        assert_eq!(
            parse_pr_out(0, 24, &d),
            Err(Sense::invalid_param_field(20, Some(0)))
        );
        d[20] = 0x08;
        assert_eq!(
            parse_pr_out(0, 24, &d),
            Err(Sense::invalid_param_field(20, Some(3)))
        );
        d[20] = 0x04;
        assert!(parse_pr_out(0, 24, &d).unwrap().all_tg_pt);
    }

    #[test]
    fn register_and_move_hands_the_reservation_over() {
        let mut st = PrState::default();
        out(&mut st, &A, sa::REGISTER, 0, 0, 1);
        out(&mut st, &A, sa::RESERVE, 1, 1, 0);
        let mut tid = Vec::new();
        encode_transport_id(B.initiator, 5, &mut tid);
        let mut list = vec![0u8; 24];
        list[7] = 1;
        list[15] = 7;
        list[17] = 0x02; // UNREG
        list[19] = 1; // relative target port 1
        list[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
        list.extend_from_slice(&tid);
        let p = parse_pr_out(sa::REGISTER_AND_MOVE, list.len() as u32, &list).unwrap();
        let mut uas = Vec::new();
        assert_eq!(
            st.pr_out(&A, sa::REGISTER_AND_MOVE, 0, 1, &p, &mut uas),
            PrOutcome::Good
        );
        assert!(st.is_holder(&B));
        assert_eq!(st.registrations.len(), 1);
        assert_eq!(st.registrations[0].key, 7);
        // Moving to oneself is an invalid field.
        let mut tid = Vec::new();
        encode_transport_id(B.initiator, 5, &mut tid);
        let mut list2 = list[..24].to_vec();
        list2[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
        list2.extend_from_slice(&tid);
        list2[7] = 7;
        let p = parse_pr_out(sa::REGISTER_AND_MOVE, list2.len() as u32, &list2).unwrap();
        assert!(matches!(
            st.pr_out(&B, sa::REGISTER_AND_MOVE, 0, 1, &p, &mut uas),
            PrOutcome::Check(_)
        ));
    }

    #[test]
    fn transport_id_round_trip() {
        let mut v = Vec::new();
        encode_transport_id("iqn.x,i,0x0123456789ab", 5, &mut v);
        assert_eq!(v.len() % 4, 0);
        assert_eq!(
            parse_transport_id(&v, 24).unwrap(),
            "iqn.x,i,0x0123456789ab"
        );
    }
}
