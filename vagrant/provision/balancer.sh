#!/bin/bash
# Provisions balancer NODE (1 = lb1, PRIMARY; 2 = lb2, BACKUP): installs slb from the .deb
# the host built (scripts/package.sh -> target/debian/slb_*.deb, synced to /slb), turns on
# forwarding, installs the pair's secrets, writes slb_conf.json and amgr.json with
# slb-node-config (the script the namespace lab uses), and enables amgr, which runs slbd and
# takes the VIP on the ACTIVE node. A box that already has the package's dependencies
# (scripts/build-box.sh's) needs no package archive: apt is only asked for what is missing.
set -euo pipefail
# Environment (from the Vagrantfile): SLB_SERVERS, the real servers (ADDR:PORT,...);
# SLB_HEARTBEAT_MS and SLB_DEAD_INTERVALS, amgr's heartbeat timers.
node=${1:?usage: balancer.sh 1|2}
servers=${SLB_SERVERS:-172.16.0.2:80,172.16.0.3:80,172.16.0.4:80}
heartbeat_ms=${SLB_HEARTBEAT_MS:-100}
dead_intervals=${SLB_DEAD_INTERVALS:-3}
peer=$((3 - node))
src=/slb
secrets=$src/vagrant/.secrets
export DEBIAN_FRONTEND=noninteractive

deb=$(find "$src/target/debian" -maxdepth 1 -name 'slb_*.deb' 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$deb" ]; then
    echo "no slb_*.deb in $src/target/debian: build it on the host (scripts/package.sh)" >&2
    exit 1
fi
missing=()
for pkg in openssh-server nftables curl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Offline when the box has the package's dependencies; otherwise from the archive.
if ! apt-get install -y -qq --no-download "$deb" >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq "$deb" >/dev/null
fi
echo "installed $(slbd --version) from $deb"

# slbd forwards between the client and server networks.
echo net.ipv4.ip_forward=1 >/etc/sysctl.d/60-slb.conf
sysctl -q --system

install -m 0600 "$secrets/pair.key" /etc/slb/pair.key
install -m 0600 "$secrets/id_ed25519" /etc/slb/id_ed25519
install -d -m 0700 /root/.ssh
grep -qF "$(cat "$secrets/id_ed25519.pub")" /root/.ssh/authorized_keys 2>/dev/null ||
    cat "$secrets/id_ed25519.pub" >>/root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
install -m 0600 "$secrets/lb${node}_host_ed25519" /etc/ssh/ssh_host_ed25519_key
install -m 0644 "$secrets/lb${node}_host_ed25519.pub" /etc/ssh/ssh_host_ed25519_key.pub
systemctl restart ssh

# Addresses as the Vagrantfile gives them; devices found by address (names differ by provider).
client_ip=10.0.0.$((1 + node))
server_ip=172.16.0.$((251 + node))
peer_server_ip=172.16.0.$((251 + peer))
hb_ip=192.168.100.$((10 + node))
peer_hb_ip=192.168.100.$((10 + peer))
dev_of() { ip -o -4 addr show | awk -v a="$1" 'index($4, a "/") == 1 { print $2; exit }'; }
client_dev=$(dev_of "$client_ip")
server_dev=$(dev_of "$server_ip")
if [ -z "$client_dev" ] || [ -z "$server_dev" ]; then
    echo "cannot find the devices holding $client_ip and $server_ip"
    ip -4 addr
    exit 1
fi
echo "$peer_hb_ip $(cut -d' ' -f1,2 "$secrets/lb${peer}_host_ed25519.pub")" >/etc/slb/known_hosts
chmod 600 /etc/slb/known_hosts

slb-node-config --node "$node" \
    --vip 10.0.0.100 --vip-dev "$client_dev" \
    --gateway 172.16.0.1 --gateway-dev "$server_dev" --cluster-network 172.16.0.0/24 \
    --service "tcp:80=$servers" \
    --link "$server_ip=$peer_server_ip" --link "$hb_ip=$peer_hb_ip" --peer-ssh "$peer_hb_ip" \
    --heartbeat-interval "$heartbeat_ms" --dead-intervals "$dead_intervals" \
    --metrics 0.0.0.0:9405 --amgr-metrics 0.0.0.0:9406

systemctl enable --now amgr
sleep 2
amgr query || true
