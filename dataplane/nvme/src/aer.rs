//! Asynchronous events: the completion dword 0 of an Asynchronous Event Request and the
//! Asynchronous Event Configuration feature (FID 0Bh) bits that enable notices.

/// Asynchronous Event Type (dword 0 bits 2:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncEventType {
    ErrorStatus,
    SmartHealthStatus,
    Notice,
    ImmediateCommandSetStatus,
    IoCommandSpecificStatus,
    VendorSpecific,
    Reserved(u8),
}

impl AsyncEventType {
    pub const fn from_bits(v: u8) -> Self {
        match v & 0x7 {
            0 => AsyncEventType::ErrorStatus,
            1 => AsyncEventType::SmartHealthStatus,
            2 => AsyncEventType::Notice,
            3 => AsyncEventType::ImmediateCommandSetStatus,
            6 => AsyncEventType::IoCommandSpecificStatus,
            7 => AsyncEventType::VendorSpecific,
            r => AsyncEventType::Reserved(r),
        }
    }

    pub const fn bits(self) -> u8 {
        match self {
            AsyncEventType::ErrorStatus => 0,
            AsyncEventType::SmartHealthStatus => 1,
            AsyncEventType::Notice => 2,
            AsyncEventType::ImmediateCommandSetStatus => 3,
            AsyncEventType::IoCommandSpecificStatus => 6,
            AsyncEventType::VendorSpecific => 7,
            AsyncEventType::Reserved(r) => r & 0x7,
        }
    }
}

/// Asynchronous Event Information values for Notice events.
pub mod notice {
    pub const NAMESPACE_ATTRIBUTE_CHANGED: u8 = 0x00;
    pub const FIRMWARE_ACTIVATION_STARTING: u8 = 0x01;
    pub const TELEMETRY_LOG_CHANGED: u8 = 0x02;
    pub const ANA_CHANGE: u8 = 0x03;
    pub const PREDICTABLE_LATENCY_AGGREGATE_CHANGED: u8 = 0x04;
    pub const LBA_STATUS_ALERT: u8 = 0x05;
    pub const ENDURANCE_GROUP_AGGREGATE_CHANGED: u8 = 0x06;
    pub const DISCOVERY_LOG_PAGE_CHANGE: u8 = 0xF0;
}

/// Asynchronous Event Information values for I/O command specific events.
pub mod io_specific {
    pub const RESERVATION_LOG_PAGE_AVAILABLE: u8 = 0x00;
    pub const SANITIZE_OPERATION_COMPLETED: u8 = 0x01;
}

/// An asynchronous event as reported in the AER completion's dword 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncEvent {
    pub event_type: AsyncEventType,
    /// Asynchronous Event Information (bits 15:8).
    pub info: u8,
    /// Log page to read to clear the event (bits 23:16).
    pub log_page: u8,
}

impl AsyncEvent {
    pub const fn from_dw0(dw0: u32) -> Self {
        AsyncEvent {
            event_type: AsyncEventType::from_bits(dw0 as u8),
            info: (dw0 >> 8) as u8,
            log_page: (dw0 >> 16) as u8,
        }
    }

    pub const fn to_dw0(self) -> u32 {
        (self.event_type.bits() as u32) | ((self.info as u32) << 8) | ((self.log_page as u32) << 16)
    }

    /// Namespace Attribute Changed: read the Changed Namespace List log (04h).
    pub const fn namespace_attribute_changed() -> Self {
        AsyncEvent {
            event_type: AsyncEventType::Notice,
            info: notice::NAMESPACE_ATTRIBUTE_CHANGED,
            log_page: crate::log::LogPageId::CHANGED_NAMESPACE_LIST,
        }
    }

    /// ANA change: read the ANA log (0Ch).
    pub const fn ana_change() -> Self {
        AsyncEvent {
            event_type: AsyncEventType::Notice,
            info: notice::ANA_CHANGE,
            log_page: crate::log::LogPageId::ANA,
        }
    }

    /// Discovery Log Page Change: read the discovery log (70h).
    pub const fn discovery_log_change() -> Self {
        AsyncEvent {
            event_type: AsyncEventType::Notice,
            info: notice::DISCOVERY_LOG_PAGE_CHANGE,
            log_page: crate::log::LogPageId::DISCOVERY,
        }
    }
}

/// Asynchronous Event Configuration feature value (CDW11 of Set Features FID 0Bh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AsyncEventConfig(pub u32);

impl AsyncEventConfig {
    /// SMART / health critical warnings (bits 7:0).
    pub const SMART_MASK: u32 = 0xFF;
    pub const NAMESPACE_ATTRIBUTE_NOTICES: u32 = 1 << 8;
    pub const FIRMWARE_ACTIVATION_NOTICES: u32 = 1 << 9;
    pub const TELEMETRY_LOG_NOTICES: u32 = 1 << 10;
    pub const ANA_CHANGE_NOTICES: u32 = 1 << 11;
    pub const DISCOVERY_LOG_CHANGE_NOTICES: u32 = 1 << 31;

    pub const fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }

    /// Whether `event` is enabled by this configuration (notices the configuration can turn
    /// off; other events are always reported).
    pub fn enables(self, event: &AsyncEvent) -> bool {
        match (event.event_type, event.info) {
            (AsyncEventType::Notice, notice::NAMESPACE_ATTRIBUTE_CHANGED) => {
                self.has(Self::NAMESPACE_ATTRIBUTE_NOTICES)
            }
            (AsyncEventType::Notice, notice::FIRMWARE_ACTIVATION_STARTING) => {
                self.has(Self::FIRMWARE_ACTIVATION_NOTICES)
            }
            (AsyncEventType::Notice, notice::TELEMETRY_LOG_CHANGED) => {
                self.has(Self::TELEMETRY_LOG_NOTICES)
            }
            (AsyncEventType::Notice, notice::ANA_CHANGE) => self.has(Self::ANA_CHANGE_NOTICES),
            (AsyncEventType::Notice, notice::DISCOVERY_LOG_PAGE_CHANGE) => {
                self.has(Self::DISCOVERY_LOG_CHANGE_NOTICES)
            }
            (AsyncEventType::SmartHealthStatus, _) => self.0 & Self::SMART_MASK != 0,
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aer_dw0() {
        // Notice (2), ANA change (03h), log page 0Ch -> 0x000C0302.
        assert_eq!(AsyncEvent::ana_change().to_dw0(), 0x000C_0302);
        assert_eq!(
            AsyncEvent::namespace_attribute_changed().to_dw0(),
            0x0004_0002
        );
        assert_eq!(AsyncEvent::discovery_log_change().to_dw0(), 0x0070_F002);
        let e = AsyncEvent::from_dw0(0x0070_F002);
        assert_eq!(e, AsyncEvent::discovery_log_change());
        assert_eq!(
            AsyncEvent::from_dw0(0x0080_0006).event_type,
            AsyncEventType::IoCommandSpecificStatus
        );
    }

    #[test]
    fn config_bits() {
        let c = AsyncEventConfig(AsyncEventConfig::ANA_CHANGE_NOTICES);
        assert_eq!(c.0, 0x800);
        assert!(c.enables(&AsyncEvent::ana_change()));
        assert!(!c.enables(&AsyncEvent::namespace_attribute_changed()));
        assert!(!c.enables(&AsyncEvent::discovery_log_change()));
        assert_eq!(AsyncEventConfig::DISCOVERY_LOG_CHANGE_NOTICES, 0x8000_0000);
    }
}
