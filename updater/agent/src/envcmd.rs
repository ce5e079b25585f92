//! `atomup env show|init|set`: print, provision or set the A/B variables
//! (host helper for image builders and tests, and a repair tool). `init`
//! writes every copy; `show` and `set` load the env once, and `set` stores
//! the new state in ONE write, keeping every other variable.

use crate::bootopts::{BootOpts, OPTIONS};
use crate::error::Result;
use atomup_bootctl::Bootloader;
use atomup_policy::{BootState, Slot};

pub const USAGE: &str = "\
  env show|init|set    print / provision / set the A/B variables (host helper)
    env show
    env init [--order \"A B\"]
    env set [--order ORDER] [--trial A|B|none] [--left N]
";

#[derive(Default)]
struct Opts {
    boot: BootOpts,
    sub: Option<String>,
    order: Option<String>,
    trial: Option<String>,
    left: Option<u8>,
}

pub fn run(args: &mut lexopt::Parser) -> Result {
    use lexopt::prelude::*;
    let mut o = Opts::default();
    while let Some(arg) = args.next()? {
        match arg {
            Long("order") => o.order = Some(args.value()?.string()?),
            Long("trial") => o.trial = Some(args.value()?.string()?),
            Long("left") => o.left = Some(args.value()?.parse()?),
            Value(v) if o.sub.is_none() => o.sub = Some(v.string()?),
            Long("help") | Short('h') => {
                print!("Usage: atomup env show|init|set [options]\n\n{USAGE}\n{OPTIONS}");
                std::process::exit(0);
            }
            Long(name) => {
                let name = name.to_owned();
                if !o.boot.take(&name, args)? {
                    return Err(format!("invalid option '--{name}'").into());
                }
            }
            other => return Err(other.unexpected().into()),
        }
    }
    let board = o.boot.board()?;
    let mut bl = o.boot.open_env(board.as_ref())?;
    run_sub(&o, bl.as_mut())
}

fn run_sub(o: &Opts, bl: &mut dyn Bootloader) -> Result {
    match o.sub.as_deref() {
        Some("show") => {
            let snap = atomup_bootctl::load(bl)?;
            if snap.vars.is_none() {
                return Err(format!("no valid env in {}", bl.describe()).into());
            }
            for (k, v) in snap.state()?.to_pairs() {
                println!("{k}={v}");
            }
            Ok(())
        }
        Some("init") => {
            let order = o.order.as_deref().unwrap_or("A B");
            let state = state_from(order, None, 0)?;
            atomup_bootctl::init_state(bl, &state)?;
            println!("initialized {} ({state})", bl.describe());
            Ok(())
        }
        Some("set") => {
            let mut snap = atomup_bootctl::load(bl)?;
            let cur = snap.state().unwrap_or_default();
            let order_s: Vec<&str> = cur.order.iter().map(|s| s.letter()).collect();
            let order = o.order.clone().unwrap_or_else(|| order_s.join(" "));
            let trial = match o.trial.as_deref() {
                None => cur.trial,
                Some("none") | Some("") => None,
                Some(t) => Some(
                    Slot::parse(t)
                        .ok_or_else(|| format!("--trial must be A, B or none, got `{t}`"))?,
                ),
            };
            let state = state_from(&order, trial, o.left.unwrap_or(cur.left))?;
            atomup_bootctl::store_state(bl, &mut snap, &state)?;
            println!("set {state}");
            Ok(())
        }
        _ => Err("env needs a subcommand: show, init or set (see `atomup env --help`)".into()),
    }
}

fn state_from(order: &str, trial: Option<Slot>, left: u8) -> Result<BootState> {
    let mut vars = atomup_bootenv::Vars::default();
    vars.set(atomup_policy::slot::VAR_ORDER, order)?;
    let mut state = BootState::from_vars(&vars)?;
    if left > atomup_policy::slot::MAX_ATTEMPTS {
        return Err(format!("--left must be 0..=9, got {left}").into());
    }
    state.trial = trial;
    state.left = left;
    Ok(state)
}
