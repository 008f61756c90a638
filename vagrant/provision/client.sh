#!/bin/bash
# Provisions the client: curl, and `slb-demo-requests`, which asks the VIP every 200 ms and
# prints which real server answered (or FAILED), with the time.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq curl >/dev/null
cat >/usr/local/bin/slb-demo-requests <<'SCRIPT'
#!/bin/sh
# Usage: slb-demo-requests [URL]   (default http://10.0.0.100/; Ctrl-C to stop)
url=${1:-http://10.0.0.100/}
while :; do
    answer=$(curl -s -m 1 "$url" || echo FAILED)
    echo "$(date +%T.%N | cut -c1-12) $answer"
    sleep 0.2
done
SCRIPT
chmod 755 /usr/local/bin/slb-demo-requests
