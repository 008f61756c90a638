#!/bin/sh
# The script check of tests/tests/health_checks.rs: exits with the status written in
# "$1/$SLB_SERVER_ADDRESS", once it has checked that slbd named the service "$2" and gave
# the server's port; any surprise is exit 1 (down).
[ "$SLB_SERVICE" = "$2" ] && [ -n "$SLB_SERVER_PORT" ] || exit 1
code=$(cat "$1/$SLB_SERVER_ADDRESS") || exit 1
exit "$code"
