//! Device-side update I/O: turns a verified static delta plus the active root
//! into the inactive slot's tree, and proves the result equals the commit.
