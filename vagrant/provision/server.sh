#!/bin/bash
# Provisions a real server NAME: nginx answering "NAME" on port 80, and the client network
# routed through the balancers' gateway (NAT mode: replies must go back through the ACTIVE
# balancer; the management interface keeps its own route). nginx comes from the archive
# only when the box does not have it (scripts/build-box.sh's does).
set -euo pipefail
name=${1:?usage: server.sh NAME}
export DEBIAN_FRONTEND=noninteractive
if ! dpkg-query -W -f='${Status}' nginx-light 2>/dev/null | grep -q "install ok installed"; then
    apt-get update -qq
    apt-get install -y -qq nginx-light >/dev/null
fi
echo "$name" >/var/www/html/index.html
systemctl enable --now nginx

cat >/etc/systemd/system/slb-demo-route.service <<'UNIT'
[Unit]
Description=Route the slb demo's client network through the balancers' gateway
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip route replace 10.0.0.0/24 via 172.16.0.1
ExecStop=/sbin/ip route del 10.0.0.0/24 via 172.16.0.1

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now slb-demo-route.service
