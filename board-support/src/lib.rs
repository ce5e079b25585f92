//! Board profiles: where a board keeps its slots and its boot environment,
//! and which bootloader reads it, so the agent carries no board knowledge.
