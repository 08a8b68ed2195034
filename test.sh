#!/usr/bin/env bash
# The project's one test command: installs what the tests need, each only when it is missing
# (Garage, built with `cargo install --locked garage`, ~8 minutes on 2 cores; Debian's nix-bin,
# awscli, curl, rclone, fuse3 and docker-compose, with apt-get as root; the boto3 venv in
# target/boto3-venv, from PyPI), then runs every test. Arguments go to
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"

bash .ci/install-garage.sh
bash .ci/install-tools.sh
bash .ci/install-boto3.sh
cargo test "$@"
