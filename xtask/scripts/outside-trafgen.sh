#!/bin/bash
# An outside check of the same-node generator figures, written apart from
# the bench's Rust: its own namespaces (pnq-*), its own counting (sysfs
# rx_packets and nstat's UdpNoPorts), trafgen with one CPU, 0.5 s warm-up,
# 3 s windows, rounds interleaved. Traffic stays between these namespaces.
#
# As root, after `cargo xtask bench same-node` built the release binary:
#   ROUNDS=5 xtask/scripts/outside-trafgen.sh
# prints each round's kpps per path, counted at eth0 and in the UDP layer.
set -euo pipefail
POD_NET=${POD_NET:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/pod-net}
ROUNDS=${ROUNDS:-5}
PIN=/sys/fs/bpf/pnq-n1

cleanup() {
    nsenter --net=/run/netns/pnq-n1 -- "$POD_NET" --pin-dir $PIN unload >/dev/null 2>&1 || true
    rm -rf $PIN
    for ns in pnq-n1 pnq-a pnq-b pnq-c pnq-d; do ip netns del $ns 2>/dev/null || true; done
}
trap cleanup EXIT
cleanup

for ns in pnq-n1 pnq-a pnq-b pnq-c pnq-d; do
    ip netns add $ns
    ip -n $ns link set lo up
    # As the bench's rig: no IPv6, so no router or neighbour chatter.
    ip netns exec $ns sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
ip -n pnq-n1 link add cni0 type bridge
ip -n pnq-n1 addr add 10.244.1.1/24 dev cni0
ip -n pnq-n1 link set cni0 up
ip netns exec pnq-n1 sysctl -q -w net.ipv4.ip_forward=1
i=2
for pod in a b; do
    ip -n pnq-n1 link add veth-$pod type veth peer name eth0 netns pnq-$pod
    ip -n pnq-n1 link set veth-$pod master cni0 up
    ip -n pnq-$pod addr add 10.244.1.$i/24 dev eth0
    ip -n pnq-$pod link set eth0 up
    ip -n pnq-$pod route add default via 10.244.1.1
    i=$((i + 1))
done
ip -n pnq-c link add eth0 type veth peer name eth0 netns pnq-d
ip -n pnq-c addr add 10.99.0.1/24 dev eth0
ip -n pnq-d addr add 10.99.0.2/24 dev eth0
ip -n pnq-c link set eth0 up
ip -n pnq-d link set eth0 up

load() {
    nsenter --net=/run/netns/pnq-n1 -- "$POD_NET" --pin-dir $PIN load >/dev/null
    nsenter --net=/run/netns/pnq-n1 -- "$POD_NET" --pin-dir $PIN pod add --ip 10.244.1.2 --veth veth-a >/dev/null
    nsenter --net=/run/netns/pnq-n1 -- "$POD_NET" --pin-dir $PIN pod add --ip 10.244.1.3 --veth veth-b >/dev/null
}
unload() {
    nsenter --net=/run/netns/pnq-n1 -- "$POD_NET" --pin-dir $PIN unload >/dev/null
}

counts() { # ns -> "rx noports"
    ip netns exec "$1" sh -c 'cat /sys/class/net/eth0/statistics/rx_packets; nstat -az UdpNoPorts' |
        awk 'NR==1 {rx=$1} /UdpNoPorts/ {print rx, $2}'
}

# generator FROM TO_NS SADDR DADDR -> kpps at eth0, kpps in UDP
generator() {
    local from=$1 to=$2 saddr=$3 daddr=$4
    ip netns exec "$from" ping -c 1 -W 1 "$daddr" >/dev/null
    local mac
    mac=$(ip -n "$from" -j neigh show "$daddr" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["lladdr"])')
    echo "{ eth(da=$mac), ipv4(saddr=$saddr, daddr=$daddr, ttl=64), udp(sp=9, dp=9), fill(0, 18) }" >/tmp/pnq.trafgen
    # Its own process group: a script's background job ignores SIGINT, and
    # trafgen stops its workers by passing SIGINT on.
    setsid ip netns exec "$from" trafgen --dev eth0 --conf /tmp/pnq.trafgen --cpus 1 >/dev/null 2>&1 &
    local pid=$!
    sleep 0.5
    local t0 b a t1
    t0=$(date +%s.%N); b=$(counts "$to")
    sleep 3
    t1=$(date +%s.%N); a=$(counts "$to")
    kill -KILL -- -"$pid"; wait "$pid" 2>/dev/null || true
    python3 -c "
b=[int(x) for x in '$b'.split()]; a=[int(x) for x in '$a'.split()]; t=$t1-$t0
print(f'{(a[0]-b[0])/t/1e3:.0f} {(a[1]-b[1])/t/1e3:.0f}')"
}

for round in $(seq 1 "$ROUNDS"); do
    unload 2>/dev/null || true
    echo "round $round bridge: $(generator pnq-a pnq-b 10.244.1.2 10.244.1.3) kpps (eth0, UDP)"
    load
    echo "round $round pod-net: $(generator pnq-a pnq-b 10.244.1.2 10.244.1.3) kpps (eth0, UDP)"
    unload
    echo "round $round direct veth: $(generator pnq-c pnq-d 10.99.0.1 10.99.0.2) kpps (eth0, UDP)"
done
