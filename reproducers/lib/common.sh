# Shared helpers for kbisect reproducers. Everything in reproducers/lib/ is uploaded into the
# guest's reproducer directory before the reproducer's own files (which win on a name clash),
# so a run.sh sources this as `. ./common.sh`.
#
# Protocol (the guest runs `cd /root/repro && timeout T bash run.sh`): exit 0 good, 1 bad,
# 125 skip, and the LAST line on stdout says what was seen. Progress goes to stderr; files in
# $OUT are fetched as artefacts.

OUT=${KBISECT_OUT:-$PWD/out}
mkdir -p "$OUT"
# Unique suffix so parallel runs (and a host test beside a developer's shell) never share names.
SFX=${KBISECT_SFX:-$$}
NETNS=()
PIDS=()

log() { echo "[$(date +%T)] $*" >&2; }

# Remove everything this run created. Must be quiet: the verdict line has to stay last.
cleanup() {
    local pid ns
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    if declare -F extra_cleanup >/dev/null; then extra_cleanup >/dev/null 2>&1; fi
    for ns in "${NETNS[@]}"; do ip netns del "$ns" >/dev/null 2>&1; done
    PIDS=(); NETNS=()
}
trap 'cleanup' EXIT
trap 'cleanup; echo "interrupted (skip)"; exit 125' INT TERM

# finish CODE MESSAGE: clean up, print the one verdict line, exit.
finish() {
    local code=$1; shift
    trap - EXIT INT TERM
    cleanup
    echo "$*"
    exit "$code"
}
skip() { finish 125 "skip: $*"; }

need_tools() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || skip "required tool $t is missing"
    done
}

# Load modules when the kernel has them as modules; a built-in feature has no module file,
# so the real check is whether the feature then works (done by each script).
load_modules() {
    local m
    for m in "$@"; do modprobe -q "$m" >/dev/null 2>&1 || log "modprobe $m failed (built in, or missing)"; done
}

# new_netns NAME: create a namespace that cleanup() removes, with lo up.
new_netns() {
    ip netns add "$1" || skip "cannot create network namespace $1"
    NETNS+=("$1")
    ip -n "$1" link set lo up
}

# bg CMD...: start a background helper that cleanup() kills.
bg() { "$@" & PIDS+=($!); }

# wait_for_file_text FILE TEXT SECONDS: poll until FILE contains TEXT.
wait_for_text() {
    local file=$1 text=$2 tries=$(( ${3:-5} * 10 ))
    while [ "$tries" -gt 0 ]; do
        grep -q -- "$text" "$file" 2>/dev/null && return 0
        sleep 0.1; tries=$((tries - 1))
    done
    return 1
}

mac_of() { ip -n "$1" link show "$2" | awk '/link\/ether/ {print $2; exit}'; }

save_dmesg() { dmesg 2>/dev/null | tail -n 200 > "$OUT/dmesg.txt" || true; }
