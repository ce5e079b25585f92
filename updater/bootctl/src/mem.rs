//! An in-memory bootloader for tests of the agent logic: the same trait,
//! no disk, and a count of writes so tests can prove "nothing written".

use crate::{BootctlError, Bootloader};
use atomup_bootenv::Vars;

#[derive(Debug, Clone, Default)]
pub struct MemBootloader {
    pub vars: Option<Vars>,
    pub writes: usize,
}

impl Bootloader for MemBootloader {
    fn read(&mut self) -> Result<Option<Vars>, BootctlError> {
        Ok(self.vars.clone())
    }

    fn write(&mut self, vars: &Vars) -> Result<(), BootctlError> {
        self.writes += 1;
        self.vars = Some(vars.clone());
        Ok(())
    }

    fn init(&mut self, vars: &Vars) -> Result<(), BootctlError> {
        self.write(vars)
    }

    fn describe(&self) -> String {
        "in-memory env".into()
    }
}
