#!/bin/sh
# Runs on the host before `vagrant up`: makes the pair's secrets once, in DIR (mode 0700):
# the heartbeat key, the SSH key the config sync logs in with, and each balancer's SSH host
# key (so each balancer's known_hosts can name the other's key before either boots).
set -eu
dir=${1:?usage: secrets.sh DIR}
umask 077
mkdir -p "$dir"
[ -s "$dir/pair.key" ] || head -c 32 /dev/urandom >"$dir/pair.key"
[ -s "$dir/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C slb-sync -f "$dir/id_ed25519"
for lb in lb1 lb2; do
    [ -s "$dir/${lb}_host_ed25519" ] ||
        ssh-keygen -q -t ed25519 -N '' -C "$lb" -f "$dir/${lb}_host_ed25519"
done
