//! An in-memory bootloader for tests of the agent logic: the same trait,
//! no disk, and a count of writes so tests can prove "nothing written".

use crate::{BootctlError, Bootloader, Next, Snapshot};
use atomup_bootenv::Vars;

#[derive(Debug, Clone, Default)]
pub struct MemBootloader {
    pub vars: Option<Vars>,
    pub writes: usize,
}

impl Bootloader for MemBootloader {
    fn load(&mut self) -> Result<Snapshot, BootctlError> {
        Ok(Snapshot {
            vars: self.vars.clone(),
            next: Next::Memory,
            _lock: None,
        })
    }

    fn store(&mut self, snap: &mut Snapshot, vars: Vars) -> Result<(), BootctlError> {
        self.writes += 1;
        self.vars = Some(vars.clone());
        snap.vars = Some(vars);
        Ok(())
    }

    fn init(&mut self, vars: &Vars) -> Result<(), BootctlError> {
        self.writes += 1;
        self.vars = Some(vars.clone());
        Ok(())
    }

    fn describe(&self) -> String {
        "in-memory env".into()
    }
}
