#!/usr/bin/env bash
# The main job, end to end with real parts:
#   vendor:  build product trees v1, v2, v3 → atomup-publish commit / delta / sign / release
#   server:  nginx serves the repository on the host's loopback
#   device:  QEMU aarch64, real U-Boot + Linux; factory image with v1 in slot A
#   phase 1: the device writes its own /etc/site.conf, polls, installs v2 into slot B
#            (its /etc carried over by the three-way merge), reboots into B on trial,
#            passes its health check and confirms B; /etc/site.conf is there, the
#            vendor's changed /etc files are v2's, config-diff lists the change
#   phase 2: the vendor releases v3, whose health check fails; the device installs
#            it into A, boots it on trial, rejects it, falls back to B and never
#            retries v3
#   phase 3: the vendor releases v4, whose kernel never reaches a running init
#            (init exits: kernel panic); the device installs it into A, the
#            bootloader spends A's attempts, falls back to B, and the device
#            records the rollback and never retries v4
# With --stick, phase 1 comes from a USB stick instead (issue 16): the vendor's
# `atomup-publish bundle` is copied onto a FAT image attached as a second virtio
# disk (no network at all); the device's init runs dist/stick/atomup-stick on it,
# which installs v2 into slot B and appends its result to the stick's log; the
# device reboots into B on trial, confirms, and the stick's second pass finds v2
# up to date. The host then reads the log back with mtype. Phases 2 and 3 are
# not run then. --stick-pull adds a stick pulled mid-install: v2 carries 4 MiB
# more, the stick reads at 256 KiB/s, and QMP device_del removes it while the
# device copies the delta off it; the device must fail cleanly (env and slot B
# untouched, nothing logged), and after device_add (a second insertion) the
# install completes as above.
# Every step is checked; exits non-zero with the console log tail on failure.
#
# Usage: qemu/demo-update.sh [--grub] [--stick] [--work DIR] [--bin-dir DIR] [--device-bin FILE] [--timeout SECS]
#   --grub             the GRUB/EFI board (AAVMF + GRUB + the sealed grubenv pair on the
#                      ESP) instead of the U-Boot one
#   --stick            phase 1 from a FAT USB stick (a bundle, no network), then stop
#   --stick-pull       the same, with the stick pulled mid-install and inserted again
#   --work DIR         scratch directory (default target/demo, target/demo-grub), emptied first
#   --bin-dir DIR      host binaries atomup + atomup-publish (default: built with --release)
#   --device-bin FILE  static aarch64 atomup (default: built by scripts/build-device.sh)
#   --timeout S        per VM run (default 300)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
work= bin_dir= device_bin= timeout=300 bootloader=uboot stick=0 pull=0
while [ $# -gt 0 ]; do
    case $1 in
        --grub) bootloader=grub; shift;;
        --stick) stick=1; shift;;
        --stick-pull) stick=1 pull=1; shift;;
        --work) work=$2; shift 2;;
        --bin-dir) bin_dir=$2; shift 2;;
        --device-bin) device_bin=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2;;
        --timeout) timeout=$2; shift 2;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
        *) echo "demo: unknown option $1" >&2; exit 2;;
    esac
done
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
suffix=; [ "$stick" = 0 ] || suffix=-stick
if [ "$bootloader" = grub ]; then
    loader_name=GRUB work=${work:-$root/target/demo-grub$suffix}
else
    loader_name=U-Boot work=${work:-$root/target/demo$suffix}
fi
t0=$(date +%s)

say "build: host publisher, static aarch64 device agent"
if [ -z "$bin_dir" ]; then
    (cd "$root" && cargo build --release --locked -p atomup -p atomup-publish)
    bin_dir=${CARGO_TARGET_DIR:-$root/target}/release
fi
bin_dir=$(cd "$bin_dir" && pwd)
publish=$bin_dir/atomup-publish host_atomup=$bin_dir/atomup
if [ -z "$device_bin" ]; then
    "$root/scripts/build-device.sh"
    device_bin=${CARGO_TARGET_DIR:-$root/target}/aarch64-unknown-linux-musl/release/atomup
    [[ $device_bin = /* ]] || device_bin=$root/$device_bin
fi

rm -rf "$work"; mkdir -p "$work"; work=$(cd "$work" && pwd)
# The server first: its port goes into the product trees. Another demo (or test)
# may pick the same free port at the same moment, so a port counts as ours only
# once our nginx is up on it; if nginx could not bind, the next port is tried.
repo=$work/repo
mkdir -p "$repo"
port= nginx_pid=
trap 'kill $nginx_pid 2>/dev/null || true' EXIT
token="demo-$$-$RANDOM$RANDOM"
echo "$token" >"$repo/.demo-token"
get_token() { # $1 = port: the body of /.demo-token as served there, or nothing
    (exec 3<>"/dev/tcp/127.0.0.1/$1" &&
        printf 'GET /.demo-token HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3 &&
        timeout 2 cat <&3 | tail -n 1) 2>/dev/null
}
for p in $(seq 18080 18180); do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    port=$p
    mkdir -p "$work/nginx/tmp"
    cat >"$work/nginx/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 64; }
http {
  log_format demo '\$status \$body_bytes_sent \$request_uri';
  access_log $work/nginx/access.log demo;
  default_type application/octet-stream;
  client_body_temp_path $work/nginx/tmp/b; proxy_temp_path $work/nginx/tmp/p;
  fastcgi_temp_path $work/nginx/tmp/f; uwsgi_temp_path $work/nginx/tmp/u; scgi_temp_path $work/nginx/tmp/s;
  server { listen 127.0.0.1:$port; root $repo; }
}
CONF
    nginx -p "$work/nginx" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" </dev/null &
    nginx_pid=$!
    # Ours once it serves our token (nginx retries a busy port for seconds
    # before it gives up, while another server answers on it).
    for _ in $(seq 50); do
        kill -0 "$nginx_pid" 2>/dev/null || break
        [ "$(get_token "$port")" = "$token" ] && break 2
        sleep 0.1
    done
    kill "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" 2>/dev/null || true
    port= nginx_pid=
done
[ -n "$port" ] || { echo "demo: no free port for nginx" >&2; exit 1; }
echo "server: nginx on 127.0.0.1:$port serving $repo"

say "vendor: product trees v1 (good), v2 (good), v3 (fails its health check)"
"$here/build-image.sh" --rootfs-out "$work/base" --init "$here/guest/device-init.sh" --guest-bin "$device_bin" \
    --guest-bin "$root/updater/agent/dist/stick/atomup-stick"
"$publish" keygen --secret-out "$work/vendor.secret" --public-out "$work/vendor.pub" >/dev/null
make_tree() { # $1 = version, $2 = health exit status, $3 = "bad-init" for a release that never boots
    local t=$work/tree-v$1
    cp -a "$work/base" "$t"
    mkdir -p "$t/etc/atomup" "$t/usr/share/demo" "$t/boot/efi"
    cp "$work/vendor.pub" "$t/etc/atomup/trusted.pub"
    printf 'SERVER=http://10.0.2.2:%s\nCHANNEL=stable\n' "$port" >"$t/etc/atomup/device.conf"
    if [ "$bootloader" = grub ]; then
        # The grubenv pair lives on the ESP, which the device mounts at /boot/efi.
        echo "ESP=/dev/vda1" >>"$t/etc/atomup/device.conf"
        printf 'board = qemu-virt-grub\nbootloader = grub\nenv = /boot/efi/grub/grubenv\n' >"$t/etc/atomup/board.conf"
    else
        printf 'board = qemu-virt\nbootloader = uboot\n' >"$t/etc/atomup/board.conf"
    fi
    printf 'slot.A = /dev/vda2\nslot.B = /dev/vda3\ndata = /dev/vda4\nwatchdog = /dev/watchdog\n' \
        >>"$t/etc/atomup/board.conf"
    # The update agent as a service: the busybox init script the repository
    # ships, the vendor's configuration in /usr/lib (one poll per boot is the
    # device init's choice: the reboot command only leaves a marker for it).
    mkdir -p "$t/etc/init.d" "$t/etc/default" "$t/usr/lib/atomup/config.d"
    cp "$root/updater/agent/dist/sysvinit/S99zz-atomup" "$t/etc/init.d/S99zz-atomup"
    printf 'LOG=/tmp/atomup.log\nRUN_DIR=/tmp/atomup\n' >"$t/etc/default/atomup"
    printf '[server]\nurl = "http://10.0.2.2:%s"\nchannel = "stable"\n\n[trust]\nkeys_file = "/etc/atomup/trusted.pub"\n\n[device]\nstate_dir = "/var/lib/atomup"\nmachine_id = "/var/lib/atomup/machine-id"\n\n[reboot]\npolicy = "now"\ncommand = ["/bin/sh", "-c", ": >/tmp/atomup-reboot"]\n\n[health]\nserver_reachable = false\n' \
        "$port" >"$t/usr/lib/atomup/config.d/50-demo.toml"
    if [ "$stick" = 1 ]; then
        # What atomup-stick's `atomup install` reads: the channel, where the
        # device id is (the log's device=); the rest are the defaults.
        echo "STICK=/dev/vdb" >>"$t/etc/atomup/device.conf"
        if [ "$pull" = 1 ]; then
            echo "STICK_REINSERT=1" >>"$t/etc/atomup/device.conf"
            # Incompressible: the delta's part is 4 MiB, 16 s at the stick's 256 KiB/s.
            [ "$1" != 2 ] || head -c 4194304 /dev/urandom >"$t/usr/share/demo/payload-v2.bin"
        fi
        mkdir -p "$t/usr/lib/atomup/config.d"
        printf '[server]\nurl = "http://10.0.2.2:%s"\nchannel = "stable"\n[device]\nmachine_id = "/var/lib/atomup/machine-id"\n' \
            "$port" >"$t/usr/lib/atomup/config.d/00-demo.toml"
    fi
    echo "$1" >"$t/etc/atomup/version"
    echo "atomup-demo $1" >"$t/etc/atomup-image"
    mkdir -p "$t/etc/atomup/health.d/required.d"
    printf '#!/bin/sh\n# health check of release %s\nexit %s\n' "$1" "$2" >"$t/etc/atomup/health.d/required.d/10-demo"
    chmod 755 "$t/etc/atomup/health.d/required.d/10-demo"
    echo "release $1 of the demo product" >"$t/usr/share/demo/release-$1.txt"
    # A Debian-style changelog that gains an entry per release: every delta
    # ships it as atomup's G op (the publisher's default), which the device
    # rebuilds byte for byte in its gzip-rebuild helper.
    mkdir -p "$t/usr/share/doc/atomup-demo"
    {
        for r in $(seq "$1" -1 1); do
            printf 'atomup-demo (%s) stable; urgency=medium\n\n  * Release %s of the demo product.\n\n -- Vendor <vendor@example.org>  Mon, 0%s Jan 2024\n\n' "$r" "$r" "$r"
        done
        seq 1 3000 | sed 's/^/  * history entry /'
    } | gzip -9n >"$t/usr/share/doc/atomup-demo/changelog.gz"
    if [ "${3:-}" = bad-init ]; then
        # The kernel boots, but init exits at once: "Attempted to kill init",
        # a panic, and panic=1 resets the board. No userspace ever runs.
        printf '#!/bin/sh\necho "ATOMUP-DEMO: v%s init exits: kernel panic"\nexit 1\n' "$1" >"$t/sbin/init"
        chmod 755 "$t/sbin/init"
    fi
}
make_tree 1 0; make_tree 2 0; make_tree 3 1; make_tree 4 0 bad-init
board=qemu-virt; [ "$bootloader" = uboot ] || board=qemu-virt-grub

"$publish" init --repo "$repo" >/dev/null
commit() { "$publish" commit --repo "$repo" --tree "$work/tree-v$1" --branch "os/$board" --subject "v$1" \
    --owner-uid 0 --owner-gid 0 --quiet; }
v1=$(commit 1); v2=$(commit 2); v3=$(commit 3); v4=$(commit 4)
echo "commits: v1=$v1 v2=$v2 v3=$v3 v4=$v4"
sign() { "$publish" sign --key "$work/vendor.secret" --delta "$repo/$1" >/dev/null; }
d_factory=$("$publish" delta --repo "$repo" --to "$v1" --scratch --xz-preset 1 --quiet); sign "$d_factory"
d12=$("$publish" delta --repo "$repo" --to "$v2" --from "$v1" --quiet 2>"$work/d12.log"); sign "$d12"
grep -q ' 1 gzip-rebuilt' "$work/d12.log" || { cat "$work/d12.log" >&2; echo "demo: the v1 -> v2 delta should rebuild the changelog (G op)" >&2; exit 1; }
echo "v1 -> v2 delta: $(grep -o '[0-9]* gzip-rebuilt' "$work/d12.log") (atomup's G op, on by default)"
d23=$("$publish" delta --repo "$repo" --to "$v3" --from "$v2" --quiet); sign "$d23"
d24=$("$publish" delta --repo "$repo" --to "$v4" --from "$v2" --quiet); sign "$d24"
ts=$(date +%s)
release() { # $1 = version, $2 = commit, $3 = timestamp
    "$publish" release --repo "$repo" --key "$work/vendor.secret" --channel stable --board "$board" \
        --version "$1" --to "$2" --timestamp "$3"
}
release 2 "$v2" "$ts"

say "factory: slot A = v1 (applied by atomup itself), /var seeded, slot B empty"
state=$work/data/lib/atomup
mkdir -p "$work/slotA" "$state/slots"
"$host_atomup" delta apply --delta "$repo/$d_factory" --to "$work/slotA" --meta-out "$state/meta" \
    --trusted-keys "$work/vendor.pub"
printf 'format=1\ncommit=%s\nversion=1\n' "$v1" >"$state/slots/A"
echo "demo-device-0001" >"$state/machine-id"
echo "$ts" >"$state/trusted-time"
"$here/build-image.sh" --bootloader "$bootloader" --out "$work/img" --root-a-dir "$work/slotA" --empty-b \
    --data-dir "$work/data"
esp="$work/img/disk.img@@$(sed -n 's/^ESP_OFFSET=//p' "$work/img/layout.env")"
# The A/B env as the host sees it: U-Boot's raw copies in the disk image, or the
# GRUB pair copied out of (and back into) the ESP with mtools.
env_cmd() { # $@ = atomup env arguments
    if [ "$bootloader" = uboot ]; then
        "$host_atomup" env "$@" --env-image "$work/img/disk.img"
    else
        mkdir -p "$work/esp"
        for f in grubenv grubenv2; do mcopy -o -i "$esp" "::/grub/$f" "$work/esp/$f"; done
        "$host_atomup" env "$@" --grubenv "$work/esp/grubenv"
        for f in grubenv grubenv2; do mcopy -o -i "$esp" "$work/esp/$f" "::/grub/$f"; done
    fi
}
env_cmd init --order A


run_vm() { # $1 = log name
    local start rc=0
    start=$(date +%s)
    "$here/run-vm.sh" --dir "$work/img" $vm_extra --watchdog --log "$work/$1.log" --timeout "$timeout" || rc=$?
    echo "VM run '$1': exit $rc after $(($(date +%s) - start)) s"
    grep -a "ATOMUP-DEMO\|^skipping\|^installing\|^installed\|^error\| -> \|ATOMUP-UBOOT: boot \|ATOMUP-GRUB: boot \|rollback\|confirmed\|^health" "$work/$1.log" || true
    [ "$rc" = 0 ] || { tail -n 40 "$work/$1.log"; exit 1; }
}
expect() { # $1 = log, $2 = regex, $3 = what it proves
    if grep -aqE "$2" "$work/$1.log"; then echo "ok: $3"; else
        echo "FAILED: $3 (no /$2/ in $1.log)"; tail -n 60 "$work/$1.log"; exit 1; fi
}
env_is() { # $1 = expected `env show` output (one line, ; separated)
    local got
    got=$(env_cmd show | paste -sd';')
    [ "$got" = "$1" ] && echo "ok: env is $got" || { echo "FAILED: env is $got, want $1"; exit 1; }
}

# The VM of --stick-pull, driven through QMP: device_del of the stick once the
# device copies the delta off it, device_add once the device waits for it.
stick_pull_run() {
    local start rc=0 vm line
    start=$(date +%s)
    "$here/run-vm.sh" --dir "$work/img" $vm_extra --stick-bps 262144 --qmp "$work/qmp" \
        --watchdog --log "$work/stick.log" --timeout "$timeout" &
    vm=$!
    wait_log() { # $1 = regex, $2 = seconds: until the console has it (the VM running)
        local i
        for i in $(seq $(($2 * 10))); do
            grep -aqE "$1" "$work/stick.log" 2>/dev/null && return 0
            kill -0 "$vm" 2>/dev/null || return 1
            sleep 0.1
        done
        return 1
    }
    qmp() { # $1 = command (JSON): its reply, 0 on "return"
        printf '%s\n' "$1" >&7
        while IFS= read -r -t 20 line <&8; do
            echo "$line" >>"$work/qmp.log"
            case $line in
                *'"return"'*) return 0;;
                *'"error"'*) echo "qmp: $1: $line"; return 1;;
            esac
        done
        echo "qmp: no reply to $1"; return 1
    }
    fail() { # run-vm's child is `timeout`, which passes the TERM on to QEMU
        echo "FAILED: $1"
        pkill -TERM -P "$vm" 2>/dev/null; kill "$vm" 2>/dev/null; wait "$vm" 2>/dev/null
        tail -n 60 "$work/stick.log"; exit 1
    }
    wait_log 'installing version 2 from' 120 || fail "the device never started installing from the stick"
    # Read-write opens: a FIFO opened so never blocks, even if QEMU is gone.
    exec 7<>"$work/qmp.in" 8<>"$work/qmp.out"
    qmp '{"execute":"qmp_capabilities"}' || fail "QMP"
    qmp '{"execute":"device_del","arguments":{"id":"stick"}}' || fail "device_del"
    echo "stick pulled (device_del) $(($(date +%s) - start)) s after power-on"
    wait_log 'ATOMUP-DEMO: waiting for the stick' 90 || fail "the device did not notice the stick was gone"
    # QEMU finishes the unplug once the guest powered the slot off; until then the id is taken.
    for i in $(seq 50); do
        qmp '{"execute":"device_add","arguments":{"driver":"virtio-blk-pci","drive":"stickdrive","id":"stick","bus":"stickport"}}' \
            >/dev/null && break
        [ "$i" != 50 ] || fail "device_add"
        sleep 0.2
    done
    echo "stick inserted again (device_add) $(($(date +%s) - start)) s after power-on"
    wait "$vm" || rc=$?
    exec 7>&- 8<&-
    echo "VM run 'stick': exit $rc after $(($(date +%s) - start)) s"
    grep -a "ATOMUP-DEMO\|^skipping\|^installing\|^installed\|resumed at byte\|^error\| -> \|ATOMUP-UBOOT: boot \|confirmed\|^health" "$work/stick.log" || true
    [ "$rc" = 0 ] || { tail -n 40 "$work/stick.log"; exit 1; }
    expect stick 'ATOMUP-DEMO: stick /dev/vdb done: exit [1-9]' "the install from the pulled stick failed"
    expect stick '^error: the result was not logged' "nothing was logged on the pulled stick"
    expect stick 'ATOMUP-DEMO: env after the failed install: ATOMUP_ORDER=A;ATOMUP_TRIAL=;ATOMUP_LEFT=0;' \
        "the env is unchanged after the pull: slot B not in the boot order"
    expect stick 'ATOMUP-DEMO: stick inserted again as /dev/vd' "the device saw the stick inserted again"
    expect stick '/0: resumed at byte [1-9][0-9]* of ' "the second insertion resumed the cut copy where it stopped"
}

vm_extra=--net
if [ "$stick" = 1 ]; then
    say "stick: the vendor's bundle for v2 on a FAT stick; the device has no network"
    "$publish" bundle --repo "$repo" --channel stable --board "$board" --out "$work/v2.atomup"
    kib=$(( $(stat -c %s "$work/v2.atomup") / 1024 + 2048 ))
    mkfs.vfat -n STICK -C "$work/stick.img" "$kib" >/dev/null
    mcopy -i "$work/stick.img" "$work/v2.atomup" ::v2.atomup
    # What a Mac leaves next to every file: skipped by name.
    printf 'Mac OS X AppleDouble\n' >"$work/._v2.atomup"
    mcopy -i "$work/stick.img" "$work/._v2.atomup" ::._v2.atomup
    mdir -i "$work/stick.img" ::
    vm_extra="--stick $work/stick.img"
    if [ "$pull" = 1 ]; then
        stick_pull_run
    else
        run_vm stick
    fi
    expect stick 'booted slot=A trial=0 version=1' "factory slot A booted"
    expect stick 'skipping \._v2\.atomup' "the macOS ._ file on the stick was skipped"
    expect stick "installed version 2 .* into slot B" "v2 read from the stick, verified and written into slot B"
    expect stick 'result logged to /tmp/atomup/stick/atomup-log.txt' "the result was appended to the stick's log"
    expect stick 'ATOMUP-DEMO: installed from the stick, rebooting' "the device rebooted after the install"
    expect stick 'booted slot=B trial=1 version=2' "$loader_name booted slot B on trial"
    expect stick 'health: required 10-demo passed' "slot B's health check passed"
    expect stick 'slot B confirmed good' "health passed: slot B confirmed"
    expect stick 'ATOMUP-DEMO: stick /dev/vdb done: exit 0' "the stick's second pass (on slot B) ended cleanly"
    env_is 'ATOMUP_ORDER=B A;ATOMUP_TRIAL=;ATOMUP_LEFT=0'
    # The stick back on the host: the technician's log, one line per pass.
    mtype -i "$work/stick.img" ::atomup-log.txt | tee "$work/stick-log.txt"
    [ "$(wc -l <"$work/stick-log.txt")" = 2 ] && echo "ok: the stick's log has one line per pass, 2" ||
        { echo "FAILED: the stick's log has $(wc -l <"$work/stick-log.txt") lines, want 2"; exit 1; }
    log_line_is() { # $1 = line number, $2 = regex, $3 = what it proves
        sed -n "$1p" "$work/stick-log.txt" | grep -qE "$2" && echo "ok: $3" ||
            { echo "FAILED: $3 (line $1 of the stick's log is not /$2/)"; exit 1; }
    }
    t='[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z'
    log_line_is 1 "^start=$t end=$t device=demo-device-0001 bundle=v2\.atomup from=1 to=2 outcome=installed\$" \
        "the stick's log: demo-device-0001 installed 1 -> 2 from v2.atomup"
    log_line_is 2 "^start=$t end=$t device=demo-device-0001 bundle=[^ ]+ from=2 to=[-2] outcome=up-to-date\$" \
        "the stick's log: then demo-device-0001 on 2, up to date"
    say "done in $(($(date +%s) - t0)) s on $loader_name: v1 -> v2 from a FAT stick, confirmed, the log read back"
    exit 0
fi

say "phase 1: the device updates v1 -> v2, reboots on trial, confirms"
run_vm phase1
expect phase1 'booted slot=A trial=0 version=1' "factory slot A booted"
expect phase1 "installed version 2 .* into slot B" "v2 downloaded, verified and written into slot B"
expect phase1 'booted slot=B trial=1 version=2' "$loader_name booted slot B on trial"
expect phase1 "health: watchdog /dev/watchdog armed for slot B's trial" "the i6300esb watchdog was armed in early boot of slot B's trial"
expect phase1 'health: watchdog /dev/watchdog armed for slot B' "the i6300esb watchdog guarded slot B's trial checks"
expect phase1 'health: required 10-demo passed' "slot B's health check passed"
expect phase1 'health: required atomup:data-partition passed' "the built-in checks passed: /var is the data partition, writable"
expect phase1 'health: [0-9]+ check\(s\) passed on slot B' "every required check passed on slot B"
expect phase1 'slot B confirmed good' "health passed: slot B confirmed"
expect phase1 'up to date: version 2' "the next poll finds nothing to do"
# The sleeping daemon's peak memory on the device's own kernel and binary
# (its polls run in child processes; the issue's budget is 2 MiB).
hwm=$(sed -n 's/.*ATOMUP-DEMO: idle daemon memory: VmHWM: *\([0-9]*\) kB.*/\1/p' "$work/phase1.log" | tail -n 1)
poll=$(sed -n 's/.*poll process peak RSS \([0-9]*\) KiB.*/\1/p' "$work/phase1.log" | tail -n 1)
[ -n "$hwm" ] && [ "$hwm" -le 2048 ] &&
    echo "ok: the idle daemon's peak RSS is $hwm KiB (budget 2048 KiB); its last poll's child peaked at ${poll:-?} KiB" ||
    { echo "FAILED: the idle daemon's peak RSS is ${hwm:-not reported} KiB, over 2048 KiB"; tail -n 60 "$work/phase1.log"; exit 1; }
expect phase1 'ATOMUP-DEMO: wrote /etc/site.conf' "the device wrote its own /etc/site.conf on v1"
expect phase1 '/etc: 0 modified, 0 removed, 1 added, 0 conflicts' "the update carried the device's /etc change into slot B"
after_b=$(sed -n '/booted slot=B trial=1/,$p' "$work/phase1.log")
grep -aq 'ATOMUP-DEMO: etc site.conf=site=demo-device-0001 image=atomup-demo 2' <<<"$after_b" &&
    echo "ok: on slot B /etc/site.conf is there with its content, and the vendor's /etc/atomup-image is v2's" ||
    { echo "FAILED: /etc on slot B"; tail -n 60 "$work/phase1.log"; exit 1; }
grep -aqE 'ATOMUP-DEMO: config-diff: A +site.conf' <<<"$after_b" &&
    echo "ok: config-diff on slot B shows the device's change (A site.conf)" ||
    { echo "FAILED: config-diff on slot B"; tail -n 60 "$work/phase1.log"; exit 1; }
env_is 'ATOMUP_ORDER=B A;ATOMUP_TRIAL=;ATOMUP_LEFT=0'
bytes=$(awk '{s+=$2} END {print s}' "$work/nginx/access.log")
echo "bytes served for v1 -> v2: $bytes (release metadata + superblock + parts)"

say "phase 2: the vendor releases v3, which fails its health check on the device"
release 3 "$v3" "$((ts + 1))"
run_vm phase2
expect phase2 "installed version 3 .* into slot A" "v3 written into slot A"
expect phase2 'booted slot=A trial=1 version=3' "slot A booted on trial"
expect phase2 'health: slot A FAILED: required check 10-demo failed: exit status 1' "v3's health check failed"
expect phase2 'rolled back from version 3 \(required check 10-demo failed: exit status 1\)' "the rollback of v3 is recorded with its reason"
expect phase2 'booted slot=B trial=0 version=2' "the device fell back to slot B (v2) by itself"
expect phase2 'rolled back on this device before: not retrying' "v3 is never retried"
env_is 'ATOMUP_ORDER=B;ATOMUP_TRIAL=;ATOMUP_LEFT=0'


say "phase 3: the vendor releases v4, whose init never starts (kernel panic on every boot)"
release 4 "$v4" "$((ts + 2))"
run_vm phase3
expect phase3 "installed version 4 .* into slot A" "v4 written into slot A"
expect phase3 'ATOMUP-DEMO: v4 init exits: kernel panic' "slot A's v4 kernel panicked on its trial boot"
expect phase3 'rollback detected: slot A ran out of attempts' "the bootloader spent slot A's attempts and fell back to slot B"
expect phase3 'rolled back from version 4 \(ran out of boot attempts: no health run of it was recorded' "the rollback of v4 is recorded with its reason"
expect phase3 'booted slot=B trial=0 version=2' "the device is back on slot B (v2)"
expect phase3 'release 4 .* rolled back on this device before: not retrying' "v4 is never retried"
panics=$(grep -ac 'ATOMUP-DEMO: v4 init exits' "$work/phase3.log")
[ "$panics" = 3 ] && echo "ok: slot A was tried exactly 3 times" ||
    { echo "FAILED: slot A was tried $panics times, want 3"; exit 1; }
env_is 'ATOMUP_ORDER=B;ATOMUP_TRIAL=;ATOMUP_LEFT=0'

say "done in $(($(date +%s) - t0)) s on $loader_name: v1 -> v2 confirmed, bad v3 (health) and v4 (kernel) rolled back, all on real $loader_name + Linux"
