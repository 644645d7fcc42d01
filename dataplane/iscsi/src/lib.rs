//! iSCSI (RFC 7143): PDU codec, login and negotiation, CHAP, the target and the initiator.
