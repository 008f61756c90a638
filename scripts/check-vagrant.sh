#!/bin/bash
# What CI can check of the Vagrant test bed without starting a VM: the Vagrantfile is valid
# (provider blocks skipped: neither libvirt nor VirtualBox runs here) and every provisioning and
# packaging shell script passes shellcheck. The balancers' configuration itself comes from
# scripts/slb-node-config, which the namespace lab runs in every test run.
set -euo pipefail
cd "$(dirname "$0")/.."
shellcheck -x vagrant/provision/*.sh scripts/*.sh scripts/slb-node-config
(cd vagrant && vagrant validate --ignore-provider)
rm -rf vagrant/.vagrant
echo "check-vagrant: Vagrantfile valid, shell scripts clean"
