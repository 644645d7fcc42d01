//! Transport-independent SCSI target emulation (SPC-4, SBC-3) over Gyre bdevs.
