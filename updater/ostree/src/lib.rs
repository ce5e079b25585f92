//! Pure OSTree formats: bytes in, typed values or a typed error out. No files,
//! no clock, so every parser here can be fuzzed and round-trip tested.
