#!/bin/bash
# vxlan-zero-mac: a vxlan device without learning must pass frames whose inner source MAC is
# all zeroes (as geneve does, and as Cilium's L3 tunnel mode relies on).
#
# ns A sends VXLAN (VNI 42) to ns B, where vx0 (nolearning) decapsulates; the inner frame is
# IPv4/UDP to a listener on vx0's address. First with a valid inner source MAC (in-script
# control: it must arrive, else the setup is broken and the run is a skip), then with
# 00:00:00:00:00:00. f58f45c1e5b9 ("vxlan: drop packets from invalid src-address") dropped
# the latter in vxlan_set_mac() unconditionally; 1cd4bc987abb moved the check into
# vxlan_snoop(), i.e. only when learning.
# good: the zero-source frame arrives; bad: only the control arrives.
set -u
cd "$(dirname "$0")"
. ./common.sh

need_tools ip python3 timeout
load_modules veth vxlan

A=kbvx-a-$SFX
B=kbvx-b-$SFX
new_netns "$A"
new_netns "$B"
ip -n "$A" link add va type veth peer name vb netns "$B" || skip "cannot create a veth pair"
ip -n "$A" addr add 192.0.2.1/24 dev va
ip -n "$B" addr add 192.0.2.2/24 dev vb
ip -n "$A" link set va up
ip -n "$B" link set vb up
# VXLAN_LEARNING=1 (test aid only): learning on, where even fixed kernels drop zero sources in
# vxlan_snoop() - a real kernel drop that exercises this script's bad branch.
LEARN=nolearning
[ "${VXLAN_LEARNING:-0}" = 1 ] && LEARN=learning
ip -n "$B" link add vx0 type vxlan id 42 dstport 4789 local 192.0.2.2 $LEARN \
    2>"$OUT/vxlan.err" || skip "cannot create a vxlan device: $(tail -n1 "$OUT/vxlan.err")"
# The device's mode is the verdict's premise: with learning on, fixed kernels drop zero sources
# too (a false bad), so read it back rather than trust that `ip link add` applied every option.
expect_readback "vxlan vx0 id 42 dstport 4789" "vxlan id 42 .*dstport 4789 " ip -d -n "$B" link show dev vx0
if [ "$LEARN" = nolearning ]; then
    expect_readback "vxlan vx0 nolearning" " nolearning " ip -d -n "$B" link show dev vx0
else
    refuse_readback "vxlan vx0 learning" " nolearning " ip -d -n "$B" link show dev vx0
fi
ip -n "$B" addr add 10.42.0.2/24 dev vx0
ip -n "$B" link set vx0 up
for key in all default vx0; do set_sysctl_checked "$B" "net.ipv4.conf.$key.rp_filter" 0; done
VXMAC=$(mac_of "$B" vx0)
[ -n "$VXMAC" ] || skip "cannot read vx0's MAC address"

bg ip netns exec "$B" python3 -u listen.py 10.42.0.2 7777 >"$OUT/received.txt" 2>"$OUT/listen.err"
sleep 0.5

send() {  # send SRC_MAC PAYLOAD, then wait up to 2 s for PAYLOAD at the listener
    ip netns exec "$A" python3 vxsend.py 192.0.2.2 42 "$VXMAC" "$1" 10.42.0.1 10.42.0.2 7777 "$2" \
        2>>"$OUT/send.err" || return 2
    wait_for_text "$OUT/received.txt" "$2" 2
}

send 02:00:00:00:00:01 control-valid-src || { send 02:00:00:00:00:01 control-valid-src-2 \
    || skip "even a valid-source vxlan frame did not arrive: setup does not work here"; }
send 00:00:00:00:00:00 zero-src
rc=$?
ip -n "$B" -s link show vx0 >"$OUT/vx0-stats.txt" 2>&1
save_dmesg
[ "$rc" -eq 2 ] && skip "sender failed: $(tail -n1 "$OUT/send.err")"
if [ "$rc" -eq 0 ]; then
    finish 0 "inner src 00:00:00:00:00:00 frame delivered through vx0 ($LEARN) (good)"
fi
finish 1 "inner src 00:00:00:00:00:00 frame dropped by vx0 ($LEARN); valid-source control delivered (bad)"
