#!/bin/bash
# Provisions the client: curl (from the archive only when the box does not have it), and
# `slb-demo-requests`, which asks the VIP every 200 ms (or INTERVAL seconds) and prints
# which real server answered (or FAILED), with the time.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! dpkg-query -W -f='${Status}' curl 2>/dev/null | grep -q "install ok installed"; then
    apt-get update -qq
    apt-get install -y -qq curl >/dev/null
fi
cat >/usr/local/bin/slb-demo-requests <<'REQUESTS'
#!/bin/sh
# Usage: slb-demo-requests [URL [INTERVAL [COUNT]]]   (default http://10.0.0.100/, 0.2 s,
# until Ctrl-C). One line per request: the time, then the server's answer or FAILED.
url=${1:-http://10.0.0.100/}
interval=${2:-0.2}
count=${3:-0}
n=0
while [ "$count" -eq 0 ] || [ "$n" -lt "$count" ]; do
    answer=$(curl -s -m 1 "$url" || echo FAILED)
    echo "$(date +%T.%N | cut -c1-12) $answer"
    n=$((n + 1))
    sleep "$interval"
done
REQUESTS
chmod 755 /usr/local/bin/slb-demo-requests
