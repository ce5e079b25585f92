//! Status reports to the vendor (`server.report_url`): made after a poll
//! that did something (installed, failed), after a confirmation and after a
//! rollback, from the device's own records (`atomup_report::document`,
//! schema 1); queued in `<state dir>/reports/` first (bounded by
//! `server.report_queue_max`), then POSTed oldest first by `update` and the
//! daemon. A report that could not go out stays queued, and everything
//! after it waits, so reports arrive in the order they were made.
//!
//! Queueing never fails the command that made the report: the transition
//! it reports has happened already. A failure is a warning.

use crate::bootopts::BootOpts;
use crate::error::Result;
use atomup_config::Config;
use atomup_fetch::Fetcher;
use atomup_policy::{BootState, Slot};
use atomup_report::document::{device_id, Budget, Event, FailedCheck, Health, Report, Rollback};
use atomup_report::queue::Queue;

fn queue(cfg: &Config) -> Queue {
    Queue::new(
        &cfg.state_dir.join("reports"),
        cfg.report_queue_max as usize,
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The report of `event` from what the device records now. `env` is the
/// boot state when the caller holds the env (its lock): loading it again
/// here would wait on that lock for ever (regression: `mark-good` and
/// `health` hung once a report URL was configured).
pub fn make(
    cfg: &Config,
    boot: &BootOpts,
    event: Event,
    last_error: Option<String>,
    env: Option<&BootState>,
) -> Report {
    let sd = boot.state();
    let booted = boot.booted().ok().and_then(|b| b.slot);
    let record = |s: Slot| sd.slot_record(s).ok().flatten().unwrap_or_default();
    let running = booted.map(record).unwrap_or_default();
    // Installed in the other slot and first in the boot order, on trial.
    let pending_version = booted.and_then(|b| {
        let loaded;
        let state = match env {
            Some(s) => s,
            None => {
                let mut bl = boot.open_env(boot.board().ok().flatten().as_ref()).ok()?;
                loaded = atomup_bootctl::load(bl.as_mut()).ok()?.state().ok()?;
                &loaded
            }
        };
        (state.trial == Some(!b) && state.order.first() == Some(&!b))
            .then(|| record(!b).version())
            .flatten()
    });
    let rollbacks = sd
        .rollbacks()
        .unwrap_or_default()
        .iter()
        .map(|r| Rollback {
            at: r.at,
            version: r.version,
            commit: r.commit.map(|c| c.to_hex()),
            reason: r
                .reason
                .clone()
                .unwrap_or_else(|| format!("slot {} was rolled back", r.slot)),
        })
        .collect();
    // The last health run: its verdict and what failed (on a confirmed boot,
    // the wanted checks: logged and reported, issue 15).
    let health = atomup_health::Store::new(&boot.state_dir)
        .read()
        .ok()
        .flatten()
        .map(|h| Health {
            slot: if h.slot == Slot::A { 'A' } else { 'B' },
            version: h.version,
            verdict: h.verdict.name().to_owned(),
            failed: h
                .checks
                .iter()
                .filter(|c| c.outcome.is_failure())
                .map(|c| FailedCheck {
                    kind: c.kind.name().to_owned(),
                    name: c.name.clone(),
                    outcome: c.outcome.name().to_owned(),
                    detail: c.detail.clone(),
                })
                .collect(),
        });
    let budget = atomup_link::budget::Budgets {
        per_update: cfg.update_budget,
        monthly: cfg.monthly_budget,
    };
    let budget = cfg
        .monthly_budget
        .and_then(|_| crate::budget::Meter::load(&cfg.state_dir, budget, now()).ok())
        .map(|m| Budget {
            month: m.usage.month.to_string(),
            used: m.usage.bytes,
            monthly: cfg.monthly_budget,
        });
    let machine_id = crate::inputs::machine_id(&cfg.machine_id).unwrap_or_default();
    let reports_dropped = queue(cfg).dropped().unwrap_or(0);
    Report {
        event,
        at: now(),
        device_id: device_id(&machine_id),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        board: boot.board().ok().flatten().map(|b| b.name),
        channel: cfg.channel.clone(),
        booted_slot: booted.map(|s| if s == Slot::A { 'A' } else { 'B' }),
        commit: running.commit().map(|c| c.to_hex()),
        version: running.version(),
        pending_version,
        last_error,
        rollbacks,
        health,
        budget,
        reports_dropped,
    }
}

/// Queues the report of `event` when a report URL is configured.
pub fn record(cfg: &Config, boot: &BootOpts, event: Event, last_error: Option<String>) {
    record_on(cfg, boot, event, last_error, None)
}

fn record_on(
    cfg: &Config,
    boot: &BootOpts,
    event: Event,
    last_error: Option<String>,
    env: Option<&BootState>,
) {
    if cfg.report_url.is_none() {
        return;
    }
    let json = make(cfg, boot, event, last_error, env).to_json();
    match queue(cfg).push(&json) {
        Ok(0) => {}
        Ok(n) => log::warn!("report queue full: dropped the {n} oldest report(s)"),
        Err(e) => log::warn!("queueing the {} report: {e}", event.name()),
    }
}

/// Queues from the slot commands (`mark-good`, `mark-bad`, `health`), which
/// run on the configuration's files alone; the queue is in their state dir
/// (`--state-dir` overrides the configuration's, as for their records).
/// They hold the env while they report: `env` is its state after their write.
pub fn record_for(boot: &BootOpts, event: Event, last_error: Option<String>, env: &BootState) {
    if let Some(loaded) = crate::settings::base() {
        let mut cfg = loaded.config.clone();
        cfg.state_dir.clone_from(&boot.state_dir);
        record_on(&cfg, boot, event, last_error, Some(env));
    }
}

/// POSTs the queued reports, oldest first, each removed once the server
/// took it; stops at the first that does not go out (it and the rest wait
/// for the next poll). Returns how many were delivered.
pub fn deliver(cfg: &Config, fetcher: &Fetcher) -> Result<usize> {
    let Some(url) = &cfg.report_url else {
        return Ok(0);
    };
    let q = queue(cfg);
    let mut sent = 0;
    for item in q.pending()? {
        let json = match q.read(&item) {
            Ok(j) => j,
            Err(e) => {
                // Unreadable (damaged, or not a file): never deliverable.
                log::warn!("dropping queued report {}: {e}", item.path.display());
                q.remove(&item)?;
                continue;
            }
        };
        if let Err(e) = fetcher.post_json(url, &json) {
            log::warn!(
                "report not delivered ({}); {} kept queued",
                crate::error::one_line(&e),
                q.pending()?.len()
            );
            return Ok(sent);
        }
        q.remove(&item)?;
        sent += 1;
    }
    // The delivered reports carried the count (`reports_dropped`).
    if sent > 0 && q.pending()?.is_empty() {
        q.clear_dropped()?;
    }
    Ok(sent)
}
