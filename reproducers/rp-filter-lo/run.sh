#!/bin/bash
# rp-filter-lo: strict rp_filter must accept local packets routed back in through lo.
#
# Mirrors the kernel selftest `fib_tests.sh -t rp_filter` (adb701d6cfa4): two namespaces each
# hold one end of a veth, both ends and lo carry 192.0.2.1/24 and the same MAC, and tc mirred
# loops lo egress -> veth egress and veth ingress -> lo ingress (ARP and IPv4) in both. A ping
# from ns2 to 192.0.2.1 then arrives in ns1 *on lo* from ns1's own address. Kernels without
# 66f8209547cc drop it under rp_filter=1 ("martian source 192.0.2.1 ... on dev lo").
# The selftest's fq_codel+basic classifier is replaced by clsact+u32 (same redirects), which
# more kernel configs carry.
# In-script control: the same ping must pass with rp_filter=0 first, else the setup itself
# does not work on this kernel and the run is a skip, not a bad.
# 192.0.2.1 is ns2's own address too: without the redirects the ping is answered inside ns2 and
# never meets rp_filter (issue 19). So the qdiscs and filters are read back, and every ping is
# judged with the packet counters of the mirred actions that put it into lo (`tc -s filter show`):
# good: ping passes with rp_filter=1 AND request and reply both crossed the loop (counters rose);
# bad: it fails (and passed with rp_filter=0) AND the rp_filter drop counter
# (TcpExtIPReversePathFilter in ns1) or the martian log rose. Anything else is a skip.
set -u
cd "$(dirname "$0")"
. ./common.sh

need_tools ip tc ping sysctl nstat timeout
load_modules veth sch_ingress cls_u32 act_mirred

N1=kbrp-1-$SFX
N2=kbrp-2-$SFX
new_netns "$N1"
new_netns "$N2"
MAC=52:54:00:6a:c7:5e

ip -n "$N1" link add veth1 type veth peer name veth2 netns "$N2" || skip "cannot create a veth pair"
ip -n "$N1" addr add 192.0.2.1/24 dev veth1
ip -n "$N2" addr add 192.0.2.1/24 dev veth2
ip -n "$N1" link set dev veth1 up
ip -n "$N2" link set dev veth2 up
for ns in "$N1" "$N2"; do
    ip -n "$ns" link set dev lo address $MAC 2>/dev/null || skip "cannot set lo's MAC address on this kernel"
done
ip -n "$N1" link set dev veth1 address $MAC
ip -n "$N2" link set dev veth2 address $MAC

# redirect IN ns OUT_DEV: lo egress -> OUT_DEV egress, OUT_DEV ingress -> lo ingress.
redirect() {
    local ns=$1 dev=$2 proto
    ip netns exec "$ns" tc qdisc add dev lo clsact || return 1
    ip netns exec "$ns" tc qdisc add dev "$dev" clsact || return 1
    for proto in arp ip; do
        ip netns exec "$ns" tc filter add dev lo egress protocol $proto u32 match u32 0 0 \
            action mirred egress redirect dev "$dev" || return 1
        ip netns exec "$ns" tc filter add dev "$dev" ingress protocol $proto u32 match u32 0 0 \
            action mirred ingress redirect dev lo || return 1
    done
}
redirect "$N1" veth1 2>"$OUT/tc.err" || skip "tc clsact/u32/mirred setup failed: $(tail -n1 "$OUT/tc.err")"
redirect "$N2" veth2 2>>"$OUT/tc.err" || skip "tc clsact/u32/mirred setup failed: $(tail -n1 "$OUT/tc.err")"

# redirect_readback NS DEV: tc's exit codes prove nothing (a tc that says yes and installs
# nothing leaves the ping local): the qdiscs and all four redirects must read back.
redirect_readback() {
    local ns=$1 dev=$2 proto
    expect_readback "clsact qdisc on lo in $ns" "^qdisc clsact " ip netns exec "$ns" tc qdisc show dev lo
    expect_readback "clsact qdisc on $dev in $ns" "^qdisc clsact " ip netns exec "$ns" tc qdisc show dev "$dev"
    for proto in arp ip; do
        expect_readback "mirred redirect lo egress -> $dev ($proto) in $ns" "mirred \(Egress Redirect to device $dev\)" \
            ip netns exec "$ns" tc filter show dev lo egress protocol $proto
        expect_readback "mirred redirect $dev ingress -> lo ($proto) in $ns" "mirred \(Ingress Redirect to device lo\)" \
            ip netns exec "$ns" tc filter show dev "$dev" ingress protocol $proto
    done
}
redirect_readback "$N1" veth1
redirect_readback "$N2" veth2

# mirred_pkts NS DEV: packets the IPv4 filter on DEV's ingress redirected into lo: the "Sent B
# bytes P pkt" line of its mirred action's statistics (tc -s filter show, iproute2's tc-actions(8)).
mirred_pkts() {
    ip netns exec "$1" tc -s filter show dev "$2" ingress protocol ip 2>/dev/null |
        awk '/mirred/ { m = 1 } m && $1 == "Sent" && $3 == "bytes" && $5 == "pkt" { print $4; exit }'
}

# loop_counters TAG: REQ_TAG = IPv4 packets redirected into ns1's lo (the requests, judged by
# ns1's rp_filter), REP_TAG = into ns2's lo (the replies).
loop_counters() {
    read_counter "REQ_$1" "mirred packets veth1 ingress -> lo in $N1 ($1)" mirred_pkts "$N1" veth1
    read_counter "REP_$1" "mirred packets veth2 ingress -> lo in $N2 ($1)" mirred_pkts "$N2" veth2
}

# set_rpf VALUE: rp_filter=VALUE on every interface of both namespaces (each namespace has only
# its own veth end), plus the loop's prerequisites, each read back: a write that does not take
# would make the rp_filter=1 ping prove nothing (issue 11: it used to be silenced, never read).
set_rpf() {
    local ns dev key
    for ns in "$N1" "$N2"; do
        dev=veth1; [ "$ns" = "$N2" ] && dev=veth2
        for key in all default lo "$dev"; do
            set_sysctl_checked "$ns" "net.ipv4.conf.$key.rp_filter" "$1"
        done
        # RPF_ACCEPT_LOCAL=0 is a test aid only: it breaks the loop even with rp_filter=0, which
        # must end in skip (in-script control failed), never in bad.
        set_sysctl_checked "$ns" net.ipv4.conf.all.accept_local "${RPF_ACCEPT_LOCAL:-1}"
        set_sysctl_checked "$ns" net.ipv4.conf.all.route_localnet 1
        # Not judged: log_martians only adds the "martian source" line to the report.
        ip netns exec "$ns" sysctl -qw net.ipv4.conf.all.log_martians=1 >/dev/null 2>&1
    done
}

# TcpExt IPReversePathFilter: the drops that prove a bad; unreadable is a skip.
rpf_drops() { nstat_value "$1" TcpExtIPReversePathFilter; }
# Martian lines for our address in the (global) kernel log: evidence only when their number rose.
martians() { dmesg 2>/dev/null | grep -c "martian source 192.0.2.1 from 192.0.2.1"; }

set_rpf 0
loop_counters rpf0a
if ! ip netns exec "$N2" ping -n -w 3 -c 1 192.0.2.1 >"$OUT/ping-rpf0.txt" 2>&1; then
    skip "the looped-back ping fails even with rp_filter=0: the mirred setup does not work here"
fi
loop_counters rpf0b
req0=$((REQ_rpf0b - REQ_rpf0a)); rep0=$((REP_rpf0b - REP_rpf0a))
if [ "$req0" -le 0 ] || [ "$rep0" -le 0 ]; then
    skip "the rp_filter=0 ping passed without crossing the mirred loop (into lo: request +$req0, reply +$rep0): answered locally, rp_filter would never see it"
fi

set_rpf 1
loop_counters rpf1a
read_counter before "TcpExtIPReversePathFilter in $N1 (before)" rpf_drops "$N1"
m_before=$(martians)
ip netns exec "$N2" ping -n -w 3 -c 1 192.0.2.1 >"$OUT/ping-rpf1.txt" 2>&1
rc=$?
loop_counters rpf1b
read_counter after "TcpExtIPReversePathFilter in $N1 (after)" rpf_drops "$N1"
m_after=$(martians)
drops=$((after - before)); req1=$((REQ_rpf1b - REQ_rpf1a)); rep1=$((REP_rpf1b - REP_rpf1a))
save_dmesg
martian=""
is_count "$m_before" && is_count "$m_after" && [ "$m_after" -gt "$m_before" ] && martian=", martian source logged"
seen="into lo: request +$req1, reply +$rep1; rp_filter drops +$drops$martian"

if [ "$rc" -eq 0 ]; then
    if [ "$req1" -le 0 ] || [ "$rep1" -le 0 ]; then
        skip "the rp_filter=1 ping passed without crossing the mirred loop ($seen): rp_filter never judged it"
    fi
    finish 0 "ping 192.0.2.1 via lo passes with rp_filter=1 ($seen) (good)"
fi
if [ "$drops" -le 0 ] && [ -z "$martian" ]; then
    skip "the rp_filter=1 ping failed but nothing says rp_filter dropped it ($seen)"
fi
finish 1 "ping 192.0.2.1 via lo fails with rp_filter=1 but passes with 0 ($seen) (bad)"
