#!/bin/bash
# gro-inner-th: GRO of GRE-encapsulated TCP must set the inner transport header offset.
#
# ns A sends GRE/IPv4/TCP segments of one flow over veth AB/BA to ns B, which forwards the
# outer packets to ns C over a second veth. BA has an XDP_PASS program (veth's NAPI path, the
# only one with GRO before 5.13; `gro on` too for newer kernels) and A's egress batches
# packets (netem slot) so GRO merges them into encapsulated super-packets. Without
# d51c5907e980 tcp4_gro_complete leaves skb->inner_transport_header stale; forwarding then
# computes a wrong segment length in skb_gso_transport_seglen() and can oops.
# Oracle (deterministic, the write-up's own): bpftrace reads the header offsets of every
# encapsulated GSO skb at skb_gso_validate_network_len() (field offsets taken from the kernel's
# BTF, so no kernel headers are needed); bad when ith != inh + 20. A kernel
# oops during the run is bad too (the probe also scans the console).
# good: >= 1 super-packet, all offsets right; bad: a wrong offset or an oops; skip: GRO never
# merged, or the oracle cannot run (no bpftrace / kprobes / BTF).
set -u
cd "$(dirname "$0")"
. ./common.sh

need_tools ip tc ethtool tcpdump python3 timeout bpftrace
load_modules veth sch_netem
SEGMENTS=${GRO_SEGMENTS:-400}

[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null \
    || mount -t debugfs nodev /sys/kernel/debug 2>/dev/null || true
# Without BTF (a kernel built without CONFIG_DEBUG_INFO_BTF, as many of the bug's own era are)
# the offsets cannot be had and no verdict is given (shown on a real one: bug.yaml, history.note).
[ -e /sys/kernel/btf/vmlinux ] || skip "no BTF: /sys/kernel/btf/vmlinux is absent (kernel without CONFIG_DEBUG_INFO_BTF?), so sk_buff's header offsets cannot be read and the oracle cannot run"
python3 btf_offsets.py >"$OUT/offsets.env" || skip "$(tail -n1 "$OUT/offsets.env")"
sed_args=()
while IFS='=' read -r key value; do sed_args+=(-e "s/@$key@/$value/g"); done <"$OUT/offsets.env"
sed "${sed_args[@]}" offsets.bt.in >"$OUT/offsets.bt"
grep -q '@OFF_[A-Z_]*@' "$OUT/offsets.bt" && skip "unfilled offsets in the bpftrace program"
# An oops is evidence of bad: a kernel log that cannot be read would hide it, so it is a skip.
dmesg >"$OUT/dmesg-before.txt" 2>/dev/null || skip "cannot read the kernel log (dmesg): an oops would go unseen"
dmesg_before=$(wc -l <"$OUT/dmesg-before.txt")

A=kbgro-a-$SFX
B=kbgro-b-$SFX
C=kbgro-c-$SFX
new_netns "$A"; new_netns "$B"; new_netns "$C"
ip -n "$A" link add AB type veth peer name BA netns "$B" || skip "cannot create a veth pair"
ip -n "$B" link add BC type veth peer name CB netns "$C" || skip "cannot create a veth pair"
ip -n "$A" addr add 192.0.2.1/24 dev AB
ip -n "$B" addr add 192.0.2.2/24 dev BA
ip -n "$B" addr add 198.51.100.1/24 dev BC
ip -n "$C" addr add 198.51.100.2/24 dev CB
for l in "$A AB" "$B BA" "$B BC" "$C CB"; do set -- $l; ip -n "$1" link set "$2" up; done
ip -n "$A" route add 198.51.100.0/24 via 192.0.2.2
set_sysctl_checked "$B" net.ipv4.ip_forward 1
# C must not answer with ICMP (no GRE endpoint there); drop silently is fine for the oracle.

ip netns exec "$B" python3 xdp_pass.py BA >"$OUT/xdp.txt" 2>&1 || skip "$(tail -n1 "$OUT/xdp.txt")"
# Without the program veth has no NAPI/GRO path before 5.13; without GRO nothing merges. Either
# missing would leave the oracle unexercised, so both are read back.
expect_readback "XDP program attached to BA" "( xdp |prog/xdp )" ip -n "$B" link show dev BA
set_offload_checked "$B" BA gro on generic-receive-offload

# Batch A's egress so NAPI sees several segments per poll (the write-up's netem slot).
if ip netns exec "$A" tc qdisc add dev AB root netem delay 200us slot 5ms 10ms packets 2 bytes 64k 2>"$OUT/netem.err"; then
    batching="netem slot"
elif ip netns exec "$A" tc qdisc add dev AB root netem delay 1ms 2>>"$OUT/netem.err"; then
    batching="netem delay"
else
    skip "no netem to batch packets for GRO: $(tail -n1 "$OUT/netem.err")"
fi
expect_readback "netem qdisc ($batching) on AB" "qdisc netem .*delay" ip netns exec "$A" tc qdisc show dev AB
BAMAC=$(mac_of "$B" BA)

bg bpftrace -B none -I "$PWD/include" "$OUT/offsets.bt" >"$OUT/offsets.txt" 2>"$OUT/bpftrace.err"
for _ in $(seq 1 300); do
    grep -q "Attaching" "$OUT/offsets.txt" "$OUT/bpftrace.err" 2>/dev/null && break
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 0.1
done
sleep 1
kill -0 "${PIDS[-1]}" 2>/dev/null || skip "bpftrace oracle did not start: $(grep -m1 -i error "$OUT/bpftrace.err" || tail -n1 "$OUT/bpftrace.err")"
bg ip netns exec "$B" timeout 30 tcpdump -n -l -i BA -c 1 'ip proto 47 and greater 2000' >"$OUT/super.txt" 2>"$OUT/tcpdump.err"
sleep 0.5

log "sending $SEGMENTS GRE/TCP segments ($batching)"
ip netns exec "$A" python3 gresend.py AB "$BAMAC" 192.0.2.1 198.51.100.2 "$SEGMENTS" 1436 4 0.01 2>"$OUT/send.err" \
    || skip "sender failed: $(tail -n1 "$OUT/send.err")"
sleep 2
kill "${PIDS[0]}" 2>/dev/null; sleep 0.5
ip -s -n "$B" link show BC >"$OUT/bc-stats.txt" 2>&1
dmesg >"$OUT/dmesg-after.txt" 2>/dev/null || skip "cannot read the kernel log (dmesg) after the run: an oops would go unseen"
tail -n +"$((dmesg_before + 1))" "$OUT/dmesg-after.txt" >"$OUT/dmesg-run.txt"
save_dmesg

line=$(python3 oracle.py "$OUT/offsets.txt" "$OUT/dmesg-run.txt")
code=$?
finish "$code" "$line"
