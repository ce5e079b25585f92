# Shared by the bench scripts (sourced; needs WORK and die).
# Prints "wall_ms peak_rss_kib" of one command, from GNU time -v; the
# command's own output goes to $WORK/cmd.out.
measure() {
    local log=$WORK/time.log
    /usr/bin/time -v -o "$log" "$@" >"$WORK/cmd.out" 2>"$WORK/cmd.err" ||
        { cat "$WORK/cmd.err" >&2; die "command failed: $*"; }
    awk -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; wall = s * 1000 }
        /Maximum resident set size/ { rss = $2 }
        END { printf "%d %d\n", wall, rss }' "$log"
}
