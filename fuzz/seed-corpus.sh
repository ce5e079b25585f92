#!/usr/bin/env bash
# Regenerates the seed files of fuzz/corpus/ from deltas the real `ostree` CLI
# makes (superblocks in every shape, decompressed part payloads, metadata
# objects). Seeds are named `seed-*`; libFuzzer's own finds keep their hash
# names. Optional: PUBLISH=path/to/atomup-publish adds signed superblocks.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
R=$W/repo
ostree --repo="$R" init --mode=archive
mkdir -p "$W/t/usr/bin" "$W/t/etc" "$W/t/empty"
printf 'hello\n' >"$W/t/etc/hostname"
head -c 3000 /dev/zero | tr '\0' 'a' >"$W/t/usr/bin/tool"
chmod 4755 "$W/t/usr/bin/tool"
ln -s ../etc/hostname "$W/t/usr/link"
: >"$W/t/etc/empty"
commit() { ostree --repo="$R" commit -b fuzz --owner-uid=0 --owner-gid=0 --timestamp=2024-01-01T00:00:00Z -s "$1" "$W/t"; }
V1=$(commit v1)
printf 'hello v2\n' >"$W/t/etc/hostname"
sed -i 's/aaaa/abca/g' "$W/t/usr/bin/tool"
ln -sf /usr/bin/tool "$W/t/usr/abs"
V2=$(commit v2)

gen() { # name, generate options...
    local name=$1
    shift
    mkdir -p "$W/d/$name"
    ostree --repo="$R" static-delta generate "$@" --filename="$W/d/$name/superblock" 2>/dev/null >/dev/null
    cp "$W/d/$name/superblock" "$HERE/corpus/superblock/seed-$name"
    local part
    for part in "$W/d/$name"/[0-9]*; do
        [ -e "$part" ] || continue
        case $(head -c1 "$part" | od -An -tx1 | tr -d ' ') in
        78) tail -c +2 "$part" | xz -d >"$HERE/corpus/part_payload/seed-$name-$(basename "$part")" ;;
        00) tail -c +2 "$part" >"$HERE/corpus/part_payload/seed-$name-$(basename "$part")" ;;
        esac
    done
    if [ -n "${PUBLISH:-}" ]; then
        [ -e "$W/k" ] || "$PUBLISH" keygen --secret-out "$W/k" --public-out "$W/k.pub" >/dev/null
        "$PUBLISH" sign --key "$W/k" --delta "$W/d/$name" >/dev/null
        cp "$W/d/$name/superblock" "$HERE/corpus/superblock/seed-$name-signed"
    fi
}
gen separate --from="$V1" --to="$V2" --min-fallback-size=0
gen inline --from="$V1" --to="$V2" --min-fallback-size=0 --inline
gen big-endian --from="$V1" --to="$V2" --min-fallback-size=0 --set-endianness=B
gen no-bsdiff --from="$V1" --to="$V2" --min-fallback-size=0 --disable-bsdiff
gen scratch --empty --to="$V2" --min-fallback-size=0
head -c 1200000 /dev/zero >"$W/t/big"
V3=$(commit v3)
gen fallback --from="$V2" --to="$V3" --min-fallback-size=1

# Every metadata object and a few content headers for the object parsers.
find "$R/objects" -type f \( -name '*.commit' -o -name '*.dirtree' -o -name '*.dirmeta' \) | while read -r f; do
    cp "$f" "$HERE/corpus/gvariant/seed-$(basename "$(dirname "$f")")$(basename "$f")"
done
find "$R/objects" -type f -name '*.filez' | head -n 4 | while read -r f; do
    # .filez = u32 BE header length, 4 bytes padding, header GVariant, data.
    len=$((16#$(head -c4 "$f" | od -An -tx1 | tr -d ' \n')))
    tail -c +9 "$f" | head -c "$len" >"$HERE/corpus/gvariant/seed-header-$(basename "$f" .filez)"
done
echo "seeds: $(ls "$HERE"/corpus/*/seed-* | wc -l) files, $(du -sb "$HERE/corpus" | cut -f1) bytes"
