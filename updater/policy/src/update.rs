//! "Should I update now?", as pure functions of what the device knows: its
//! env state and records, the operator's flags, a verified release and
//! `now`. Nothing here reads, writes or looks at a clock, so every rule has a
//! unit test, and `atomup update` is a plan followed by I/O steps: everything
//! that can be decided without writing is decided before the first write
//! (RAUC's `r_install_make_plans` before it touches a slot).
//!
//! Two steps, because the second needs the network:
//! 1. [`preflight`] before anything is fetched: flags and ranges, and the
//!    env's own refusals (the booted slot on trial; a target that the env
//!    makes the confirmed primary);
//! 2. [`plan`] over the verified release: the release checks of
//!    `atomup-release`, the never-retry list, "already installed on trial",
//!    the rollout wave; its [`Plan`] carries both env states to write, so the
//!    second env write is validated before the first one happens.

use crate::slot::{BootState, Slot, StateError, MAX_ATTEMPTS};
use atomup_release::check::{check_release, DeviceFacts, Offer, ReleaseError, Verified};
use atomup_release::rollout::{self, RolloutSeed};
use atomup_release::{Delta, Release};

/// The operator's choices for one `update`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flags {
    /// Boot attempts the new slot gets (1..=[`MAX_ATTEMPTS`]).
    pub attempts: u8,
    pub allow_downgrade: bool,
    pub ignore_rollout: bool,
    /// May the (bigger) from-scratch delta stand in for a missing delta from
    /// the running commit (`link.allow_scratch_fallback`)?
    pub allow_scratch_fallback: bool,
}

/// What the device knows about itself, all from its own env and records.
#[derive(Clone, Debug)]
pub struct Device<'a> {
    pub channel: &'a str,
    pub board: &'a str,
    /// The slot that booted (kernel command line).
    pub booted: Slot,
    /// The env state as read.
    pub env: &'a BootState,
    /// The booted slot's commit and version, from its record.
    pub booted_commit: [u8; 32],
    pub booted_version: u64,
    /// The commit recorded for the other slot, if any.
    pub target_commit: Option<[u8; 32]>,
    /// The highest version this device ever accepted (installed, pending or
    /// rolled back).
    pub highest_version: u64,
    /// Commits that rolled back on this device: never retried.
    pub rolled_back: &'a [[u8; 32]],
    /// Latest trusted time (release timestamps seen).
    pub trusted_time: u64,
    pub seed: RolloutSeed,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("--attempts must be 1..={MAX_ATTEMPTS}, got {0}")]
    Attempts(u8),
    #[error("slot {0} is running on trial: confirm it (`atomup health` / `atomup mark-good`) before updating")]
    RunningOnTrial(Slot),
    #[error("the env makes slot {target} the confirmed slot that boots next ({env}), but the booted slot is given as {booted}: refusing to overwrite slot {target}")]
    TargetIsPrimary {
        target: Slot,
        booted: Slot,
        env: String,
    },
    #[error("release {version} ({commit}) rolled back on this device before: not retrying it")]
    RolledBack { version: u64, commit: String },
    #[error("release {version} has no delta from the running commit {commit}; its from-scratch delta ({size} bytes) is used only with link.allow_scratch_fallback = true (--allow-scratch-fallback)")]
    NoDeltaFromRunning {
        version: u64,
        commit: String,
        size: u64,
    },
    #[error("the release was refused")]
    Release(#[source] ReleaseError),
    #[error("the env states to write are invalid")]
    State(#[source] StateError),
}

/// Step 1, before anything is fetched: the slot to write, or why not.
pub fn preflight(env: &BootState, booted: Slot, flags: &Flags) -> Result<Slot, PlanError> {
    if flags.attempts == 0 || flags.attempts > MAX_ATTEMPTS {
        return Err(PlanError::Attempts(flags.attempts));
    }
    let target = !booted;
    // Rule: never overwrite the fallback. While the running slot is itself on
    // trial, the other slot is the only confirmed one.
    if env.trial == Some(booted) {
        return Err(PlanError::RunningOnTrial(booted));
    }
    // Rule: the env's idea of the running system wins over a command line
    // that names the other slot (a wrong `atomup.slot=`).
    if env.primary_confirmed() == Some(target) {
        return Err(PlanError::TargetIsPrimary {
            target,
            booted,
            env: env.to_string(),
        });
    }
    Ok(target)
}

/// What to do with a verified release.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<'r> {
    /// The release is the one running.
    UpToDate,
    /// The release is already installed in the other slot, on trial: reboot.
    PendingOnTrial {
        target: Slot,
    },
    /// This device's rollout wave opens at the given time (`None`: no wave
    /// covers it yet).
    Waiting {
        opens_at: Option<u64>,
    },
    Install(Plan<'r>),
}

/// An installation, fully decided: the I/O steps only carry it out.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan<'r> {
    pub release: &'r Release,
    pub target: Slot,
    pub delta: &'r Delta,
    /// The first env write: the target leaves the boot order.
    pub start: BootState,
    /// The last env write: the written target first in order, on trial.
    pub done: BootState,
    /// The trusted time to record once the release is accepted.
    pub trusted_time: u64,
}

/// Step 2: the decision over a verified release at `now`.
pub fn plan<'r>(
    verified: &'r Verified,
    device: &Device<'_>,
    flags: &Flags,
    now: u64,
) -> Result<Decision<'r>, PlanError> {
    let target = preflight(device.env, device.booted, flags)?;
    let facts = DeviceFacts {
        channel: device.channel,
        board: device.board,
        current_version: device.booted_version,
        current_commit: device.booted_commit,
        trusted_time: device.trusted_time,
        highest_version: device.highest_version,
        allow_downgrade: flags.allow_downgrade,
    };
    let delta = match check_release(verified, &facts, now).map_err(PlanError::Release)? {
        Offer::UpToDate => return Ok(Decision::UpToDate),
        Offer::Update { delta } => delta,
    };
    let release = verified.release();
    // Rule: a release that rolled back on this device is never retried.
    if device.rolled_back.contains(&release.commit) {
        return Err(PlanError::RolledBack {
            version: release.version,
            commit: atomup_ostree::hex::encode(&release.commit),
        });
    }
    // Rule: installed and waiting for its trial boot: nothing to redo.
    if device.env.trial == Some(target) && device.target_commit == Some(release.commit) {
        return Ok(Decision::PendingOnTrial { target });
    }
    // Rule: phased rollout, against the clock that never runs behind the
    // trusted time.
    let effective_now = now.max(device.trusted_time);
    if !flags.ignore_rollout && !rollout::is_eligible(&release.waves, &device.seed, effective_now) {
        return Ok(Decision::Waiting {
            opens_at: rollout::eligible_at(&release.waves, &device.seed),
        });
    }
    // Rule (metered links): never silently trade the small delta for the
    // whole tree. A from-scratch delta serves a running commit only when the
    // operator allows it.
    if delta.source_commit().is_none() && !flags.allow_scratch_fallback {
        return Err(PlanError::NoDeltaFromRunning {
            version: release.version,
            commit: atomup_ostree::hex::encode(&device.booted_commit),
            size: delta.superblock_size.saturating_add(delta.parts_size),
        });
    }
    let start = device.env.install_start(target);
    let done = start
        .install_done(target, flags.attempts)
        .map_err(PlanError::State)?;
    Ok(Decision::Install(Plan {
        release,
        target,
        delta,
        start,
        done,
        trusted_time: atomup_release::check::advance_trusted_time(
            verified,
            device.trusted_time,
            now,
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::Slot::{A, B};
    use atomup_release::check::{signature_line, verify_signed};
    use atomup_release::{DeltaSource, Wave};
    use ed25519_dalek::{Signer, SigningKey};

    const NOW: u64 = 1_700_000_200;

    fn st(order: &[Slot], trial: Option<Slot>, left: u8) -> BootState {
        BootState {
            order: order.to_vec(),
            trial,
            left,
        }
    }

    fn release(version: u64, commit: u8, waves: Vec<Wave>) -> Release {
        Release {
            channel: "stable".into(),
            board: "qemu-virt".into(),
            version,
            commit: [commit; 32],
            timestamp: 1_700_000_000,
            expires: 1_700_604_800,
            min_from_version: 0,
            deltas: vec![Delta {
                from: DeltaSource::Scratch,
                path: "deltas/q8/abc".into(),
                superblock_size: 1234,
                superblock_sha256: [1; 32],
                parts_size: 99_000,
            }],
            waves,
        }
    }

    fn verified(r: &Release) -> Verified {
        let key = SigningKey::from_bytes(&[1; 32]);
        let body = r.to_canonical();
        let signed = format!(
            "{body}{}",
            signature_line(&key.sign(body.as_bytes()).to_bytes())
        );
        let trust = atomup_ostree::sign::Trust::from_key_files(
            &atomup_ostree::sign::key_lines([1; 32]).1,
            None,
        )
        .unwrap();
        verify_signed(signed.as_bytes(), &trust).unwrap()
    }

    fn flags() -> Flags {
        Flags {
            attempts: 3,
            allow_downgrade: false,
            ignore_rollout: false,
            // The sample release offers only a from-scratch delta.
            allow_scratch_fallback: true,
        }
    }

    fn device<'a>(env: &'a BootState, rolled_back: &'a [[u8; 32]]) -> Device<'a> {
        Device {
            channel: "stable",
            board: "qemu-virt",
            booted: A,
            env,
            booted_commit: [0x11; 32],
            booted_version: 1,
            target_commit: None,
            highest_version: 0,
            rolled_back,
            trusted_time: 1_700_000_100,
            seed: RolloutSeed([0; 32]),
        }
    }

    /// A due release for a confirmed device installs into the other slot,
    /// with both env writes decided up front.
    #[test]
    fn a_due_release_plans_both_env_writes() {
        let env = st(&[A, B], None, 0);
        let r = release(2, 0xab, vec![]);
        let v = verified(&r);
        let Decision::Install(p) = plan(&v, &device(&env, &[]), &flags(), NOW).unwrap() else {
            panic!()
        };
        assert_eq!(p.target, B);
        assert_eq!(p.start, st(&[A], None, 0));
        assert_eq!(p.done, st(&[B, A], Some(B), 3));
        // The release's timestamp is behind the trusted time: unchanged.
        assert_eq!(p.trusted_time, 1_700_000_100);
    }

    /// Attempts outside 1..=9 are refused before anything else.
    #[test]
    fn attempts_out_of_range_are_refused_in_preflight() {
        let env = st(&[A], None, 0);
        for n in [0, 10, 255] {
            let f = Flags {
                attempts: n,
                ..flags()
            };
            assert_eq!(preflight(&env, A, &f), Err(PlanError::Attempts(n)));
        }
        assert_eq!(preflight(&env, A, &flags()), Ok(B));
    }

    /// While the booted slot is on trial, its fallback is never overwritten.
    #[test]
    fn a_booted_trial_slot_refuses_updates() {
        let env = st(&[A, B], Some(A), 2);
        assert_eq!(
            preflight(&env, A, &flags()),
            Err(PlanError::RunningOnTrial(A))
        );
    }

    /// A target that the env makes the confirmed primary is refused.
    #[test]
    fn a_target_that_the_env_calls_primary_is_refused() {
        let env = st(&[A], None, 0);
        assert!(matches!(
            preflight(&env, B, &flags()),
            Err(PlanError::TargetIsPrimary {
                target: A,
                booted: B,
                ..
            })
        ));
    }

    /// The running release is up to date.
    #[test]
    fn the_running_release_is_up_to_date() {
        let env = st(&[A], None, 0);
        let mut d = device(&env, &[]);
        d.booted_version = 2;
        d.booted_commit = [0xab; 32];
        let v = verified(&release(2, 0xab, vec![]));
        assert_eq!(plan(&v, &d, &flags(), NOW), Ok(Decision::UpToDate));
    }

    /// A rolled-back release is never retried.
    #[test]
    fn a_rolled_back_release_is_refused() {
        let env = st(&[A], None, 0);
        let rb = [[0xab; 32]];
        let v = verified(&release(2, 0xab, vec![]));
        assert!(matches!(
            plan(&v, &device(&env, &rb), &flags(), NOW),
            Err(PlanError::RolledBack { version: 2, .. })
        ));
    }

    /// The release already waiting in the other slot on trial is not redone.
    #[test]
    fn a_release_pending_on_trial_is_not_reinstalled() {
        let env = st(&[B, A], Some(B), 3);
        let mut d = device(&env, &[]);
        d.target_commit = Some([0xab; 32]);
        let v = verified(&release(2, 0xab, vec![]));
        assert_eq!(
            plan(&v, &d, &flags(), NOW),
            Ok(Decision::PendingOnTrial { target: B })
        );
        // Another commit on trial there is replaced.
        d.target_commit = Some([0xcd; 32]);
        assert!(matches!(
            plan(&v, &d, &flags(), NOW),
            Ok(Decision::Install(_))
        ));
    }

    /// Before its wave opens the device waits, unless told to ignore it.
    #[test]
    fn a_closed_wave_waits_unless_ignored() {
        let env = st(&[A], None, 0);
        let waves = vec![Wave {
            start: NOW + 100,
            share: 10_000,
        }];
        let v = verified(&release(2, 0xab, waves));
        assert_eq!(
            plan(&v, &device(&env, &[]), &flags(), NOW),
            Ok(Decision::Waiting {
                opens_at: Some(NOW + 100)
            })
        );
        let f = Flags {
            ignore_rollout: true,
            ..flags()
        };
        assert!(matches!(
            plan(&v, &device(&env, &[]), &f, NOW),
            Ok(Decision::Install(_))
        ));
        // The trusted time counts as now when the clock is behind it.
        let mut d = device(&env, &[]);
        d.trusted_time = NOW + 100;
        assert!(matches!(
            plan(&v, &d, &flags(), 0),
            Ok(Decision::Install(_))
        ));
    }

    /// The release checks (here: a downgrade) refuse through the planner.
    #[test]
    fn release_checks_refuse_through_the_plan() {
        let env = st(&[A], None, 0);
        let mut d = device(&env, &[]);
        d.booted_version = 5;
        let v = verified(&release(2, 0xab, vec![]));
        assert!(matches!(
            plan(&v, &d, &flags(), NOW),
            Err(PlanError::Release(ReleaseError::Downgrade { .. }))
        ));
    }

    /// A release without a delta from the running commit is refused rather
    /// than replaced by its from-scratch delta, unless that is allowed; a
    /// delta from the running commit is taken either way.
    #[test]
    fn no_silent_fallback_to_the_from_scratch_delta() {
        let env = st(&[A], None, 0);
        let strict = Flags {
            allow_scratch_fallback: false,
            ..flags()
        };
        let mut r = release(2, 0xab, vec![]);
        let v = verified(&r);
        let e = plan(&v, &device(&env, &[]), &strict, NOW).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "release 2 has no delta from the running commit {}; its from-scratch delta \
                 (100234 bytes) is used only with link.allow_scratch_fallback = true \
                 (--allow-scratch-fallback)",
                "11".repeat(32)
            )
        );
        assert!(matches!(
            plan(&v, &device(&env, &[]), &flags(), NOW),
            Ok(Decision::Install(_))
        ));
        let scratch = r.deltas[0].clone();
        r.deltas.push(Delta {
            from: DeltaSource::From([0x11; 32]),
            path: "deltas/Ee/small".into(),
            ..scratch
        });
        let v = verified(&r);
        let Ok(Decision::Install(p)) = plan(&v, &device(&env, &[]), &strict, NOW) else {
            panic!()
        };
        assert_eq!(p.delta.path, "deltas/Ee/small");
    }
}
