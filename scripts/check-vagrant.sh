#!/bin/bash
# The Vagrant test bed's static checks, part of scripts/test.sh: the Vagrantfile is valid
# (provider blocks skipped) and shellcheck passes every provisioning and packaging shell
# script. The bed itself runs in scripts/vagrant-demo.sh (CI runs it after the suite); the
# balancers' configuration comes from scripts/slb-node-config, which the namespace lab runs too.
set -euo pipefail
cd "$(dirname "$0")/.."
shellcheck -x vagrant/provision/*.sh scripts/*.sh scripts/slb-node-config scripts/slb-dr-server scripts/slb-bird-config
(cd vagrant && vagrant validate --ignore-provider)
rm -rf vagrant/.vagrant
echo "check-vagrant: Vagrantfile valid, shell scripts clean"
