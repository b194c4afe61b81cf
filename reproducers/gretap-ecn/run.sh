#!/bin/bash
# gretap-ecn: gretap decapsulation must not rewrite the inner Ethernet header.
#
# ns A sends Ether/IPv4(tos ECT(1))/GRE(key 0x49000000, TEB)/Ether(dst 18:be:92:a0:ee:26)/
# IPv4(not-ECT)/ICMP over a veth to ns B, where gretap gre1 decapsulates it; tcpdump on gre1
# shows the inner frame. Kernels with b723748750ec but without 227adfb2b1df apply RFC 6040 ECN
# propagation to the inner *Ethernet* header: the dst arrives as 18:bd:92:a0:ee:26.
# good: dst unchanged; bad: dst changed; skip: nothing captured or no gretap support.
set -u
cd "$(dirname "$0")"
. ./common.sh

need_tools ip tcpdump python3 timeout
load_modules veth ip_gre

A=kbge-a-$SFX
B=kbge-b-$SFX
new_netns "$A"
new_netns "$B"
# No IPv6 on the tunnel: gre1 would otherwise emit router solicitations. Not judged (the capture
# filter is IPv4 icmp and the oracle matches our own frame), so best effort.
ip netns exec "$B" sysctl -qw net.ipv6.conf.default.disable_ipv6=1 >/dev/null 2>&1

ip -n "$A" link add va type veth peer name vb netns "$B" || skip "cannot create a veth pair"
ip -n "$A" addr add 192.0.2.1/24 dev va
ip -n "$B" addr add 192.0.2.2/24 dev vb
ip -n "$A" link set va up
ip -n "$B" link set vb up
ip -n "$B" link add gre1 type gretap local 192.0.2.2 remote 192.0.2.1 key 0x49000000 \
    2>"$OUT/gretap.err" || skip "kernel has no gretap (ip_gre): $(head -c 80 "$OUT/gretap.err")"
# The decapsulating device is the bug's premise: read back that it is a gretap between the two
# veth addresses with key 0x49000000 (iproute2 prints GRE keys dotted, "ikey 73.0.0.0").
expect_readback "gretap gre1 remote 192.0.2.1 local 192.0.2.2" "gretap remote 192\.0\.2\.1 ?local 192\.0\.2\.2" \
    ip -d -n "$B" link show dev gre1
expect_readback "gretap gre1 key 0x49000000" "ikey 73\.0\.0\.0 " ip -d -n "$B" link show dev gre1
ip -n "$B" link set gre1 up
BMAC=$(mac_of "$B" vb)
[ -n "$BMAC" ] || skip "cannot read the MAC address of vb"

bg ip netns exec "$B" timeout 15 tcpdump -e -n -l -i gre1 -c 1 icmp >"$OUT/gre1.txt" 2>"$OUT/tcpdump.err"
wait_for_text "$OUT/tcpdump.err" "listening on" 5 || skip "tcpdump did not start: $(tail -n1 "$OUT/tcpdump.err")"

log "sending ECT(1)-outer / not-ECT-inner gretap frames to $BMAC"
ip netns exec "$A" python3 send.py va "$BMAC" 192.0.2.1 192.0.2.2 5 0.2 2>"$OUT/send.err" \
    || skip "sender failed: $(tail -n1 "$OUT/send.err")"
for _ in $(seq 1 30); do [ -s "$OUT/gre1.txt" ] && break; sleep 0.1; done
sleep 0.2
ip -n "$B" -s link show gre1 >"$OUT/gre1-stats.txt" 2>&1
save_dmesg

line=$(python3 oracle.py "$OUT/gre1.txt")
code=$?
finish "$code" "$line"
