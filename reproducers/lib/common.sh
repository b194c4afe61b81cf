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

# ---------------------------------------------------------------- positive evidence
# A verdict may rest only on what was read back (README "Positive evidence"): every setting the
# verdict depends on is read back after it is written, every counter it judges by must read as a
# number. "Could not read" and "did not take" are skips naming the setting or counter - never a
# default value. Read-backs are logged to $OUT/readback.txt for the artefacts.

# is_count VALUE: true when VALUE is one non-negative decimal integer.
is_count() { [[ "$1" =~ ^[0-9]+$ ]]; }

# set_sysctl_checked NS KEY VALUE: write KEY=VALUE in namespace NS, read it back, skip naming the
# key unless the kernel now reports VALUE (a write that "succeeds" but does not apply is caught;
# a failed write whose key already holds VALUE is fine).
set_sysctl_checked() {
    local ns=$1 key=$2 value=$3 got
    ip netns exec "$ns" sysctl -qw "$key=$value" >/dev/null 2>>"$OUT/sysctl.err" \
        || log "sysctl -w $key=$value failed in $ns; the read-back decides"
    got=$(ip netns exec "$ns" sysctl -n "$key" 2>>"$OUT/sysctl.err")
    echo "sysctl $ns $key=$got (wanted $value)" >>"$OUT/readback.txt"
    [ "$got" = "$value" ] || skip "setting did not take: sysctl $key=$value in $ns (read back '${got:-nothing}')"
}

# _readback WHAT CMD...: run CMD; on failure skip "cannot read back WHAT". Sets READBACK.
_readback() {
    local what=$1; shift
    if ! READBACK=$("$@" 2>&1); then
        skip "cannot read back $what ($*: $(head -n1 <<<"$READBACK" | cut -c1-80))"
    fi
    printf '$ %s\n%s\n' "$*" "$READBACK" >>"$OUT/readback.txt"
}

# expect_readback WHAT ERE CMD...: CMD reads a setting back; skip "setting did not take: WHAT"
# unless its output matches the extended regular expression ERE.
expect_readback() {
    local what=$1 ere=$2; shift 2
    _readback "$what" "$@"
    grep -Eq -- "$ere" <<<"$READBACK" \
        || skip "setting did not take: $what (read back: $(grep -v '^$' <<<"$READBACK" | head -n1 | cut -c1-80))"
}

# refuse_readback WHAT ERE CMD...: as expect_readback, but the output must NOT match ERE.
refuse_readback() {
    local what=$1 ere=$2; shift 2
    _readback "$what" "$@"
    if grep -Eq -- "$ere" <<<"$READBACK"; then
        skip "setting did not take: $what (read back: $(grep -E -m1 -- "$ere" <<<"$READBACK" | cut -c1-80))"
    fi
}

# set_offload_checked NS DEV NAME VALUE LONGNAME: `ethtool -K DEV NAME VALUE` in NS, then require
# `ethtool -k` to show "LONGNAME: VALUE" (-K takes short names such as tx/gro, -k prints long
# ones such as tx-checksumming/generic-receive-offload). A failed -K is judged by the read-back.
set_offload_checked() {
    local ns=$1 dev=$2 name=$3 value=$4 long=$5
    ip netns exec "$ns" ethtool -K "$dev" "$name" "$value" >>"$OUT/ethtool.txt" 2>&1 \
        || log "ethtool -K $dev $name $value failed in $ns; the read-back decides"
    _readback "ethtool $long $value on $dev" ip netns exec "$ns" ethtool -k "$dev"
    grep -Eq -- "^$long: $value( |\$)" <<<"$READBACK" \
        || skip "setting did not take: ethtool $long $value on $dev (read back '$(grep -m1 "^$long:" <<<"$READBACK" || echo "no $long line")')"
}

# set_mtu_checked NS DEV MTU: set and read back a link's MTU.
set_mtu_checked() {
    ip -n "$1" link set dev "$2" mtu "$3" 2>>"$OUT/ip.err" || log "ip link set $2 mtu $3 failed in $1"
    expect_readback "mtu $3 on $2" " mtu $3 " ip -n "$1" link show dev "$2"
}

# read_counter VAR WHAT CMD...: run CMD, which prints one counter value; store it in VAR when it
# is a non-negative integer, else skip "cannot read counter WHAT". Call it directly (not inside
# $(...)), so the skip ends the script.
read_counter() {
    local __rc_var=$1 __rc_what=$2 __rc_val; shift 2
    __rc_val=$("$@" 2>/dev/null)
    echo "counter $__rc_what=$__rc_val" >>"$OUT/readback.txt"
    is_count "$__rc_val" \
        || skip "cannot read counter $__rc_what (got '$(head -c 60 <<<"$__rc_val" | tr '\n' ' ' | sed 's/ *$//')')"
    printf -v "$__rc_var" '%s' "$__rc_val"
}

# nstat_value NS NAME: the absolute value of SNMP/netstat counter NAME (nstat's names, such as
# TcpInCsumErrors, TcpExtIPReversePathFilter) in NS; prints nothing when the kernel lacks it.
# nstat -a: absolute values, -s: no history file, -z: zero counters too (iproute2's nstat(8)).
nstat_value() { ip netns exec "$1" nstat -asz "$2" 2>/dev/null | awk -v n="$2" '$1 == n { print $2 }'; }

# link_stat NS DEV RX|TX FIELD: one column (bytes, packets, errors, dropped, ...) of the RX: or TX:
# block of `ip -s link show`, found by its header name rather than its position.
link_stat() {
    ip -n "$1" -s link show dev "$2" 2>/dev/null | awk -v dir="$3:" -v f="$4" '
        $1 == dir { for (i = 2; i <= NF; i++) col[i - 1] = $i; getline
                    for (i = 1; i <= NF; i++) if (col[i] == f) print $i; exit }'
}

# kernel_major_minor: the running kernel as MAJOR*1000+MINOR (5.2 -> 5002), for features whose
# absence is a property of the kernel version rather than a setting that did not take.
kernel_major_minor() {
    local r; r=$(uname -r)
    [[ "$r" =~ ^([0-9]+)\.([0-9]+) ]] || return 1
    echo $(( BASH_REMATCH[1] * 1000 + BASH_REMATCH[2] ))
}
