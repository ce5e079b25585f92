//! Device-side boot-state I/O: reads and writes the bootloader environment in
//! one atomic write per transition, and tells which slot booted.
