//! Every bound the engine enforces, in one place: what a delta, a tree or
//! the device's own metadata may make the engine read, hold or create. The
//! README's "Memory bounds" table explains each.

/// Largest superblock file accepted (inline parts live inside it); held
/// once, for the whole apply.
pub const MAX_SUPERBLOCK: u64 = 64 << 20;
/// Largest single part file accepted.
pub const MAX_PART: u64 = 4 << 30;
/// Largest op stream held in memory per part (about 10 bytes per object:
/// room for 1.6 million objects in one part).
pub const MAX_OPS: u64 = 16 << 20;
/// Largest mode table held per part (12 bytes per distinct uid/gid/mode).
pub const MAX_MODE_TABLE: u64 = 1 << 20;
/// Largest xattr table held per part (one entry per distinct xattr set).
pub const MAX_XATTR_TABLE: u64 = 4 << 20;
/// Deepest directory nesting accepted.
pub const MAX_DEPTH: usize = 256;
/// Most entries (files, symlinks and directories) a commit's tree may expand
/// to, counting a shared subtree once per place it appears. A full Debian
/// desktop root has about 200k entries, embedded roots 5-50k.
pub const MAX_TREE_ENTRIES: u64 = 1 << 18;
/// Most directories a commit's tree may expand to (same counting; a full
/// Debian desktop root has about 20k).
pub const MAX_TREE_DIRS: u64 = 1 << 16;
/// Most bytes of metadata held at once, the delta's own and those read from
/// disk together, each object charged [`OBJECT_OVERHEAD`] bytes more for its
/// entry. A 250k-entry tree's dirtrees take about 12 MB; an apply holds the
/// from- and the to-commit's.
pub const MAX_METADATA_HELD: u64 = 32 << 20;
/// What one held metadata object costs beyond its bytes (key, pointer,
/// allocation).
pub const OBJECT_OVERHEAD: u64 = 128;
/// Largest key file read (a key line is about 50 bytes).
pub const MAX_KEY_FILE: u64 = 1 << 20;
