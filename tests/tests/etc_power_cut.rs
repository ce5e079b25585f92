//! A power cut at each write of the /etc merge never leaves the new slot
//! bootable with a half-merged /etc (issue 14): the install sequence of
//! `atomup update` (install-start env write, apply, the merge into the
//! target's layer, install-done env write only if the merge returned) runs
//! in-process with the real env writer on a U-Boot disk image and the real
//! merge, cut at every one of its write points (`atomup-etc/failpoints`, a
//! dev-dependency feature); after each cut the env is read back: either the
//! new slot is not in the boot order (env as the install-start write left
//! it) or its layer, mounted with the real overlayfs, is the complete merge.
//! Needs root (mounts, whiteouts).

use atomup_bootctl::{read, write_state, UbootEnv};
use atomup_etc::{carry, Carry, EtcError};
use atomup_ostree::ObjectId;
use atomup_policy::Slot;
use atomup_tests::ostree_fixture::{
    assert_same_tree, atomup, run_ok, tree_digest_with_times, Apply, Keys, Repo, ScratchDir,
    TreeBuilder,
};
use std::fs;
use std::path::Path;
use std::process::Command;

/// The merged /etc a slot boots with: its layer over its own /etc, mounted
/// by the real overlayfs in a private mount namespace, copied out.
fn overlay_view(lower: &Path, layer: &Path, out: &Path) {
    let _ = fs::remove_dir_all(out);
    let mnt = out.with_extension("mnt");
    fs::create_dir_all(&mnt).unwrap();
    run_ok(Command::new("unshare").args([
        "-m",
        "sh",
        "-c",
        &format!(
            "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {m} && cp -a {m} {o}",
            lower.display(),
            layer.join("upper").display(),
            layer.join("work").display(),
            m = mnt.display(),
            o = out.display()
        ),
    ]));
}

fn restore(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    run_ok(Command::new("cp").arg("-a").arg(from).arg(to));
}

#[test]
fn a_cut_at_every_merge_write_leaves_the_slot_unbootable_or_its_etc_complete() {
    atomup_tests::require_tool("ostree");
    atomup_tests::require_tool("unshare");
    atomup_tests::device::require_root();
    let dir = ScratchDir::new("etc-power-cut");
    let repo = Repo::init(dir.join("repo"), "archive");
    let t = TreeBuilder::new(dir.join("tree"));
    t.file("etc/hosts", b"127.0.0.1 localhost\n", 0o644)
        .file("etc/motd", b"v1\n", 0o644)
        .file("etc/gone", b"x\n", 0o644)
        .file("etc/ssh/sshd_config", b"Port 22\n", 0o644)
        .file("usr/bin/app", b"v1\n", 0o755);
    let v1 = repo.commit(&t.root, "v1");
    t.file("etc/motd", b"v2\n", 0o644)
        .file("etc/ssh/new", b"v2\n", 0o600)
        .file("usr/bin/app", b"v2\n", 0o755);
    let v2 = repo.commit(&t.root, "v2");
    let keys = Keys::generate(&dir.join("keys"), "vendor");
    let (id1, id2) = (
        ObjectId::from_hex(&v1).unwrap(),
        ObjectId::from_hex(&v2).unwrap(),
    );
    let state = dir.join("var/lib/atomup");
    let meta = state.join("meta");
    let (slot_a, slot_b) = (dir.join("slot-a"), dir.join("slot-b"));
    fs::create_dir_all(&slot_a).unwrap();
    fs::create_dir_all(&slot_b).unwrap();
    for (from, to, hex, target) in [(None, &id1, &v1, &slot_a), (Some(&id1), &id2, &v2, &slot_b)] {
        let d = repo.path.join(atomup_ostree::delta::delta_path(from, to));
        repo.delta(from.map(|_| v1.as_str()), hex, &[], &d);
        keys.sign_delta(&d);
        Apply {
            delta: d,
            to: target.clone(),
            from_root: from.map(|_| slot_a.clone()),
            from_meta: from.map(|_| meta.clone()),
            meta_out: Some(meta.clone()),
            trusted: Some(keys.public.clone()),
            ..Default::default()
        }
        .run_ok();
    }

    // The running /etc (slot A's, as the device changed it) and a layer
    // for B from an earlier install: the one a cut must leave or replace.
    let current = dir.join("running-etc");
    restore(&slot_a.join("etc"), &current);
    fs::write(current.join("hosts"), "10.0.0.1 site\n").unwrap();
    fs::write(current.join("mine.conf"), "older\n").unwrap();
    fs::remove_file(current.join("gone")).unwrap();
    let dirs: [&Path; 1] = [&meta];
    let run = || {
        carry(&Carry {
            state_dir: &state,
            meta_dirs: &dirs,
            from: id1,
            to: id2,
            current_etc: &current,
            new_root: &slot_b,
            slot: Slot::B,
        })
    };
    run().unwrap();
    // The running slot has its layer too (made at boot): never written.
    atomup_etc::layer::ensure_empty(&state, Slot::A, &slot_a.join("etc")).unwrap();
    let layer_b = state.join("etc/B");
    let lower_b = slot_b.join("etc");
    let old_view = dir.join("old-view");
    overlay_view(&lower_b, &layer_b, &old_view);
    fs::write(current.join("mine.conf"), "newer\n").unwrap();

    // The env: A confirmed, then the install-start write for B.
    let env = dir.join("disk.img");
    fs::File::create(&env).unwrap().set_len(1 << 20).unwrap();
    let out = atomup([
        "env".as_ref(),
        "init".as_ref(),
        "--order".as_ref(),
        "A".as_ref(),
        "--env-image".as_ref(),
        env.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bl = UbootEnv::qemu_image(&env);
    let started = read(&mut bl)
        .unwrap()
        .state()
        .unwrap()
        .install_start(Slot::B);
    write_state(&mut bl, &started).unwrap();
    let env_started = fs::read(&env).unwrap();

    // The complete merge, and how many writes it takes.
    let saved = dir.join("saved-state");
    restore(&state, &saved);
    atomup_etc::failpoint::set(Some("etc-count"));
    run().unwrap();
    let writes = atomup_etc::failpoint::count();
    let full_view = dir.join("full-view");
    overlay_view(&lower_b, &layer_b, &full_view);
    assert_eq!(
        fs::read_to_string(full_view.join("mine.conf")).unwrap(),
        "newer\n"
    );
    let layer_a_digest = |s: &Path| tree_digest_with_times(&s.join("etc/A"));
    let layer_a = layer_a_digest(&state);

    let view = dir.join("view");
    let (mut unbootable, mut complete) = (0, 0);
    for k in 0..=writes {
        // Back to the saved B layer (A's stays as it is: it must never move).
        let _ = fs::remove_dir_all(state.join("etc/B.new"));
        restore(&saved.join("etc/B"), &layer_b);
        fs::write(&env, &env_started).unwrap();
        atomup_etc::failpoint::set(Some(&format!("etc-cut:{k}")));
        // The agent's order: the merge, and the install-done write only if
        // it returned (`update.rs`: `merge_into(..)?` before `write_state`).
        match run() {
            Ok(_) => {
                assert_eq!(k, writes, "no cut happened at write {k}");
                let next = read(&mut bl).unwrap().state().unwrap();
                write_state(&mut bl, &next.install_done(Slot::B, 3).unwrap()).unwrap();
            }
            Err(e) => assert!(matches!(e, EtcError::Injected { .. }), "{e}"),
        }
        atomup_etc::failpoint::set(None);
        let st = read(&mut bl).unwrap().state().unwrap();
        if st.order.contains(&Slot::B) {
            overlay_view(&lower_b, &layer_b, &view);
            assert_same_tree(&view, &full_view);
            complete += 1;
        } else {
            assert!(
                fs::read(&env).unwrap() == env_started,
                "cut {k}: env changed"
            );
            // Not bootable; its layer is the old one or the complete one.
            overlay_view(&lower_b, &layer_b, &view);
            let same = |a: &Path| {
                atomup_tests::ostree_fixture::snapshot(&view)
                    == atomup_tests::ostree_fixture::snapshot(a)
            };
            assert!(same(&old_view) || same(&full_view), "cut {k}: half-merged");
            unbootable += 1;
        }
        assert_eq!(layer_a_digest(&state), layer_a, "the running slot's layer");
    }
    eprintln!(
        "{writes} write points: {unbootable} cuts left B unbootable, {complete} booted B complete"
    );
    assert_eq!((unbootable, complete), (writes, 1));
}
