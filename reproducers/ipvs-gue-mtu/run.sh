#!/bin/bash
# ipvs-gue-mtu: IPVS GUE tunnelling must not drop large (GSO) packets.
#
# client ns C -- director ns D (IPVS, VIP 10.0.9.9:80, real server via GUE port 6080)
# -- real-server ns R (fou/gue port 6080, tunl0, VIP on lo), which answers C directly over a
# second veth (direct server return). C's TCP sends TSO super-packets
# that cross the veth intact, so D receives GSO skbs; IPVS encapsulates them and, with UDP
# tunnel segmentation off on D's egress, software GSO must segment them. Without d7fce52fdf96
# IPVS leaves inner_mac_header at the old Ethernet header, __skb_udp_tunnel_segment computes a
# tunnel header length of -2 and drops every super-packet (D's egress tx_dropped rises and the
# transfer crawls on single-segment retransmits).
# good: 1 MiB arrives promptly and D drops nothing; bad: D's egress drops while the transfer
# stalls or crawls; skip: setup impossible, or no super-packet reached D (path not exercised).
set -u
cd "$(dirname "$0")"
. ./common.sh

need_tools ip ipvsadm ethtool tcpdump python3 timeout
load_modules veth ip_vs ip_vs_rr ipip fou
SIZE=${IPVS_GUE_BYTES:-1048576}
DEADLINE=${IPVS_GUE_DEADLINE:-20}

C=kbiv-c-$SFX
D=kbiv-d-$SFX
R=kbiv-r-$SFX
new_netns "$C"; new_netns "$D"; new_netns "$R"
ip -n "$C" link add cd type veth peer name dc netns "$D" || skip "cannot create a veth pair"
ip -n "$D" link add dr type veth peer name rd netns "$R" || skip "cannot create a veth pair"
# Direct return path R -> C (direct server return, as in a real IPVS-TUN deployment): replies
# come from the VIP, which is a local address of D, so D would drop them as martians.
ip -n "$C" link add cr type veth peer name rc netns "$R" || skip "cannot create a veth pair"
ip -n "$C" addr add 10.0.1.1/24 dev cd
ip -n "$D" addr add 10.0.1.2/24 dev dc
ip -n "$D" addr add 10.0.2.1/24 dev dr
ip -n "$R" addr add 10.0.2.2/24 dev rd
ip -n "$C" addr add 10.0.3.1/24 dev cr
ip -n "$R" addr add 10.0.3.2/24 dev rc
# Every setting below is read back (README "Positive evidence"): the ones a verdict rests on
# would otherwise fail silently into a transfer that proves nothing. Settings needing only the
# veths come first, the fou/IPVS ones after.
set_mtu_checked "$D" dr 1600
set_mtu_checked "$R" rd 1600
for l in "$C cd" "$D dc" "$D dr" "$R rd" "$C cr" "$R rc"; do set -- $l; ip -n "$1" link set "$2" up; done
ip -n "$C" route add 10.0.9.9/32 via 10.0.1.2
ip -n "$R" route add 10.0.1.0/24 via 10.0.3.1
# C receives the VIP's replies on cr although it routes the VIP via cd.
for key in all default cd cr; do set_sysctl_checked "$C" "net.ipv4.conf.$key.rp_filter" 0; done
ip -n "$D" addr add 10.0.9.9/32 dev lo
set_sysctl_checked "$D" net.ipv4.ip_forward 1
# Software UDP-tunnel GSO on D's egress: if the egress could hand the encapsulated super-packet
# on whole, nothing would segment it on D and the bug could not show - a good would prove
# nothing. (On a veth without the feature, ethtool reads "off [fixed]", which is as good.)
set_offload_checked "$D" dr tx-udp_tnl-segmentation off tx-udp_tnl-segmentation
set_offload_checked "$D" dr tx-udp_tnl-csum-segmentation off tx-udp_tnl-csum-segmentation
for key in all default rd rc lo; do set_sysctl_checked "$R" "net.ipv4.conf.$key.rp_filter" 0; done

# Real server: GUE on 6080 decapsulates to IPIP (tunl0), VIP on lo, no reverse-path filtering.
ip netns exec "$R" ip fou add port 6080 gue 2>"$OUT/fou.err" || skip "ip fou add port 6080 gue failed: $(tail -n1 "$OUT/fou.err")"
expect_readback "fou port 6080 gue in $R" "port 6080 gue" ip netns exec "$R" ip fou show
ip -n "$R" link set tunl0 up 2>>"$OUT/fou.err" || skip "no tunl0 (ipip) in the real-server namespace"
expect_readback "tunl0 up in $R" "<([A-Z_]+,)*UP[,>]" ip -n "$R" link show dev tunl0
set_mtu_checked "$R" tunl0 1600
set_sysctl_checked "$R" net.ipv4.conf.tunl0.rp_filter 0
ip -n "$R" addr add 10.0.9.9/32 dev lo

# Director: IPVS tunnel to the real server with GUE.
ip netns exec "$D" ipvsadm -A -t 10.0.9.9:80 -s rr 2>"$OUT/ipvsadm.err" || skip "ipvsadm -A failed: $(tail -n1 "$OUT/ipvsadm.err")"
ip netns exec "$D" ipvsadm -a -t 10.0.9.9:80 -r 10.0.2.2:80 -i --tun-type gue --tun-port 6080 2>>"$OUT/ipvsadm.err" \
    || skip "ipvsadm GUE real server failed: $(tail -n1 "$OUT/ipvsadm.err")"
ip netns exec "$D" ipvsadm -L -n --tun-info >"$OUT/ipvsadm.txt" 2>&1 || ip netns exec "$D" ipvsadm -L -n >"$OUT/ipvsadm.txt" 2>&1
# Read back in ipvsadm's save format (ipvsadm 1.31: "-a -t VIP -r RS -i -w 1 --tun-type gue
# --tun-port 6080 ..."). Kernels before 84c0d5e96f3a (v5.2) have no IPVS GUE and keep plain IPIP:
# only there may the real server read back without GUE.
expect_readback "IPVS service TCP 10.0.9.9:80 rr in $D" "^-A -t 10\.0\.9\.9:80 -s rr" ip netns exec "$D" ipvsadm -S -n
KVER=$(kernel_major_minor) || skip "cannot parse the kernel version '$(uname -r)'"
if [ "$KVER" -ge 5002 ]; then
    expect_readback "IPVS real server 10.0.2.2:80 -i --tun-type gue --tun-port 6080 in $D" \
        "^-a -t 10\.0\.9\.9:80 -r 10\.0\.2\.2:80 -i .*--tun-type gue --tun-port 6080" ip netns exec "$D" ipvsadm -S -n
else
    expect_readback "IPVS real server 10.0.2.2:80 -i (tunnel) in $D" \
        "^-a -t 10\.0\.9\.9:80 -r 10\.0\.2\.2:80 -i( |\$)" ip netns exec "$D" ipvsadm -S -n
fi

bg ip netns exec "$R" python3 tcpxfer.py serve 80
# Evidence captures: a super-packet (longer than the 1500-byte MTU) arriving at D, and what
# D sends to R (GUE on udp/6080, or plain IPIP on kernels without GUE support).
# (frames longer than 1600 bytes: a 1500-byte MTU frame is at most 1514, so anything longer is a
# GSO super-packet - two segments are enough, and that is all a buggy kernel's cwnd allows)
bg ip netns exec "$D" timeout $((DEADLINE + 10)) tcpdump -n -l -i dc -c 1 'tcp and greater 1600' >"$OUT/super.txt" 2>"$OUT/tcpdump-d.err"
bg ip netns exec "$R" timeout $((DEADLINE + 10)) tcpdump -n -l -i rd -c 1 'udp port 6080 or ip proto 4' >"$OUT/encap.txt" 2>"$OUT/tcpdump-r.err"
wait_for_text "$OUT/tcpdump-d.err" "listening on" 5 || skip "tcpdump did not start in D"
wait_for_text "$OUT/tcpdump-r.err" "listening on" 5 || skip "tcpdump did not start in R"
sleep 0.5

# D's egress tx_dropped is the bug's only evidence (the buggy kernel still completes the transfer,
# on retransmits): a count that cannot be read is a skip, never 0 drops.
drops() { link_stat "$D" dr TX dropped; }
read_counter before "tx_dropped of dr in $D (before)" drops
result=$(ip netns exec "$C" python3 tcpxfer.py send 10.0.9.9 80 "$SIZE" "$DEADLINE")
xfer_rc=$?
sleep 0.5
read_counter after "tx_dropped of dr in $D (after)" drops
dropped=$((after - before))
ip -n "$D" -s link show dr >"$OUT/dr-stats.txt" 2>&1
ip netns exec "$D" ipvsadm -L -n --stats >>"$OUT/ipvsadm.txt" 2>&1
save_dmesg
echo "$result" >"$OUT/transfer.txt"

[ -s "$OUT/encap.txt" ] || skip "no tunnelled packet reached the real server ($result, D tx_dropped +$dropped)"
if ! grep -q '\.6080: ' "$OUT/encap.txt"; then
    # Kernels before 84c0d5e96f3a (v5.2) ignore --tun-type and send plain IPIP: the GUE path
    # (and so this bug) does not exist there. On a newer kernel plain IPIP means GUE did not take.
    [ "$KVER" -ge 5002 ] && skip "director sent plain IPIP although the real server reads back as GUE ($result)"
    [ "$xfer_rc" -eq 0 ] && [ "$dropped" -eq 0 ] \
        && finish 0 "director sent plain IPIP, not GUE: kernel predates IPVS GUE (v5.2), no such bug; $result (good)"
    skip "director did not send GUE and the IPIP transfer failed too ($result)"
fi
# Drops on the director's egress are the bug's signature (the write-up's symptom), whatever
# else was seen. A good verdict additionally needs proof that the path was exercised.
if [ "$dropped" -gt 0 ]; then
    finish 1 "director egress dropped $dropped GSO packets, transfer: $result (bad)"
fi
if ! [ -s "$OUT/super.txt" ]; then
    skip "no GSO super-packet reached the director: the bug's path was not exercised ($result)"
fi
if [ "$xfer_rc" -eq 0 ]; then
    finish 0 "1 MiB through IPVS GUE: $result, director egress tx_dropped +0 (good)"
fi
skip "transfer failed without director drops ($result): not this bug's signature"
