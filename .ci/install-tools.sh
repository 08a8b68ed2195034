#!/usr/bin/env bash
# Installs the command-line tools the tests need, each only when its command is missing.
# Idempotent: run it as often as you like; it installs nothing when everything is there.
# Debian/Ubuntu (apt-get); run as root, or with sudo available.
#
# To add a tool, add one `command:package` line to TOOLS: a command the tests run (a name looked up
# in PATH, or an absolute path when another program of that name may come first in PATH), and the
# Debian package that provides it (several commands may name one package; it is installed once).
set -euo pipefail

TOOLS=(
  "nix:nix-bin"         # tests/nix_accepts.rs: Nix 2.8 checks the signatures we make
  "nix-store:nix-bin"
  "/usr/bin/aws:awscli" # tests/serve_cli.rs: the aws cli v2 (a Python v1 may come first in PATH)
  "curl:curl"           # tests/serve_cli.rs: anonymous reads as a plain HTTP client makes them
  "rclone:rclone"       # the rclone end-to-end tests (issue 7: rclone 1.60, its s3 remote and mount)
  "fusermount3:fuse3"   # rclone mount
  "docker-compose:docker-compose" # tests/compose.rs: `docker-compose config` validates compose/ without an engine
)

# Whether a tool is there: an absolute path must be an executable file, a name must be in PATH.
have() {
  case "$1" in
    /*) [ -x "$1" ] ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

missing=()
for pair in "${TOOLS[@]}"; do
  cmd=${pair%%:*} package=${pair#*:}
  if have "$cmd"; then
    echo "install-tools: $cmd found, not installing $package"
  else
    echo "install-tools: $cmd not found, will install $package"
    [[ " ${missing[*]} " == *" $package "* ]] || missing+=("$package")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-tools: nothing to install"
  exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-tools: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi

# `env`: sudo would drop an exported DEBIAN_FRONTEND.
apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get)
echo "install-tools: apt-get update"
"${apt[@]}" update
echo "install-tools: apt-get install -y --no-install-recommends ${missing[*]}"
"${apt[@]}" install -y --no-install-recommends "${missing[@]}"

# Every command must be there now.
failed=0
for pair in "${TOOLS[@]}"; do
  cmd=${pair%%:*} package=${pair#*:}
  if ! have "$cmd"; then
    echo "install-tools: $cmd still missing after installing $package" >&2
    failed=1
  fi
done
[ "$failed" -eq 0 ] || exit 1
echo "install-tools: done"
