//! Features (NVMe Base 2.x, "Feature Values"): identifiers and the Set/Get Features fields.

use crate::command::{AdminOpcode, Command};
use crate::error::DecodeError;

/// Feature Identifiers.
pub struct FeatureId;

impl FeatureId {
    pub const ARBITRATION: u8 = 0x01;
    pub const POWER_MANAGEMENT: u8 = 0x02;
    pub const LBA_RANGE_TYPE: u8 = 0x03;
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    pub const ERROR_RECOVERY: u8 = 0x05;
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
    pub const INTERRUPT_COALESCING: u8 = 0x08;
    pub const INTERRUPT_VECTOR_CONFIGURATION: u8 = 0x09;
    pub const WRITE_ATOMICITY_NORMAL: u8 = 0x0A;
    pub const ASYNC_EVENT_CONFIGURATION: u8 = 0x0B;
    pub const AUTONOMOUS_POWER_STATE_TRANSITION: u8 = 0x0C;
    pub const HOST_MEMORY_BUFFER: u8 = 0x0D;
    pub const TIMESTAMP: u8 = 0x0E;
    pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
    pub const HOST_IDENTIFIER: u8 = 0x81;
    pub const RESERVATION_NOTIFICATION_MASK: u8 = 0x82;
    pub const RESERVATION_PERSISTENCE: u8 = 0x83;
}

/// Get Features Select (CDW10 bits 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureSelect {
    Current,
    Default,
    Saved,
    /// Report what the feature supports (saveable, namespace specific, changeable) in dword 0.
    SupportedCapabilities,
}

impl FeatureSelect {
    pub fn from_bits(v: u8) -> Result<Self, DecodeError> {
        match v & 0x7 {
            0 => Ok(FeatureSelect::Current),
            1 => Ok(FeatureSelect::Default),
            2 => Ok(FeatureSelect::Saved),
            3 => Ok(FeatureSelect::SupportedCapabilities),
            _ => Err(DecodeError::InvalidField {
                field: "SEL",
                offset: 41,
            }),
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            FeatureSelect::Current => 0,
            FeatureSelect::Default => 1,
            FeatureSelect::Saved => 2,
            FeatureSelect::SupportedCapabilities => 3,
        }
    }
}

/// Dword 0 bits of a Get Features with Select = Supported Capabilities.
pub mod capabilities {
    pub const SAVEABLE: u32 = 1 << 0;
    pub const NAMESPACE_SPECIFIC: u32 = 1 << 1;
    pub const CHANGEABLE: u32 = 1 << 2;
}

/// Set Features fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetFeaturesCommand {
    pub nsid: u32,
    /// Feature Identifier (CDW10 bits 7:0).
    pub fid: u8,
    /// Save (CDW10 bit 31).
    pub sv: bool,
    /// Feature specific value (CDW11).
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    /// UUID index (CDW14 bits 6:0).
    pub uuid_index: u8,
    pub cdw15: u32,
}

impl SetFeaturesCommand {
    pub fn from_command(c: &Command) -> Self {
        SetFeaturesCommand {
            nsid: c.nsid,
            fid: c.cdw10 as u8,
            sv: c.cdw10 & (1 << 31) != 0,
            cdw11: c.cdw11,
            cdw12: c.cdw12,
            cdw13: c.cdw13,
            uuid_index: (c.cdw14 & 0x7F) as u8,
            cdw15: c.cdw15,
        }
    }

    pub fn to_command(&self, cid: u16) -> Command {
        let mut c = Command::new(AdminOpcode::SetFeatures as u8, cid);
        c.nsid = self.nsid;
        c.cdw10 = (self.fid as u32) | ((self.sv as u32) << 31);
        c.cdw11 = self.cdw11;
        c.cdw12 = self.cdw12;
        c.cdw13 = self.cdw13;
        c.cdw14 = (self.uuid_index & 0x7F) as u32;
        c.cdw15 = self.cdw15;
        c
    }
}

/// Get Features fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetFeaturesCommand {
    pub nsid: u32,
    pub fid: u8,
    pub sel: FeatureSelect,
    pub cdw11: u32,
    pub uuid_index: u8,
}

impl GetFeaturesCommand {
    pub fn from_command(c: &Command) -> Result<Self, DecodeError> {
        Ok(GetFeaturesCommand {
            nsid: c.nsid,
            fid: c.cdw10 as u8,
            sel: FeatureSelect::from_bits((c.cdw10 >> 8) as u8)?,
            cdw11: c.cdw11,
            uuid_index: (c.cdw14 & 0x7F) as u8,
        })
    }

    pub fn to_command(&self, cid: u16) -> Command {
        let mut c = Command::new(AdminOpcode::GetFeatures as u8, cid);
        c.nsid = self.nsid;
        c.cdw10 = (self.fid as u32) | ((self.sel.bits() as u32) << 8);
        c.cdw11 = self.cdw11;
        c.cdw14 = (self.uuid_index & 0x7F) as u32;
        c
    }
}

/// Number of Queues feature: requested (CDW11) or allocated (dword 0) counts, 0-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NumberOfQueues {
    /// I/O submission queues, 0-based (bits 15:0).
    pub nsq: u16,
    /// I/O completion queues, 0-based (bits 31:16).
    pub ncq: u16,
}

impl NumberOfQueues {
    pub const fn from_u32(v: u32) -> Self {
        NumberOfQueues {
            nsq: v as u16,
            ncq: (v >> 16) as u16,
        }
    }

    pub const fn to_u32(self) -> u32 {
        (self.nsq as u32) | ((self.ncq as u32) << 16)
    }
}

/// Volatile Write Cache feature: CDW11 / dword 0 bit 0 = enabled.
pub const fn volatile_write_cache_enabled(v: u32) -> bool {
    v & 1 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_fields() {
        let s = SetFeaturesCommand {
            fid: FeatureId::NUMBER_OF_QUEUES,
            cdw11: NumberOfQueues { nsq: 7, ncq: 7 }.to_u32(),
            ..Default::default()
        };
        let c = s.to_command(4);
        let b = c.to_bytes();
        assert_eq!(b[0], 0x09);
        assert_eq!(&b[40..44], &[0x07, 0, 0, 0]);
        assert_eq!(&b[44..48], &[7, 0, 7, 0]);
        assert_eq!(SetFeaturesCommand::from_command(&c), s);
        let mut saved = s;
        saved.sv = true;
        assert_eq!(saved.to_command(4).cdw10, 0x8000_0007);

        let g = GetFeaturesCommand {
            nsid: 0,
            fid: FeatureId::KEEP_ALIVE_TIMER,
            sel: FeatureSelect::SupportedCapabilities,
            cdw11: 0,
            uuid_index: 0,
        };
        let c = g.to_command(5);
        assert_eq!(c.cdw10, 0x0000_030F);
        assert_eq!(GetFeaturesCommand::from_command(&c).unwrap(), g);
        let mut bad = c;
        bad.cdw10 = 0x0000_040F;
        assert!(matches!(
            GetFeaturesCommand::from_command(&bad),
            Err(DecodeError::InvalidField { offset: 41, .. })
        ));
        assert_eq!(FeatureId::HOST_IDENTIFIER, 0x81);
        assert!(volatile_write_cache_enabled(1));
    }
}
