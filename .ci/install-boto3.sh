#!/usr/bin/env bash
# Makes the Python venv that tests/boto3.rs runs its client script with: `target/boto3-venv` in
# the repository (a clean clone creates it here; `cargo clean` removes it with the rest of
# `target/`), holding the newest `boto3` and `requests` from PyPI. Only when it is missing: a venv
# whose python imports both is left as it is (delete the directory to upgrade). Needs `python3`
# with its `venv` module; on Debian without it, installs `python3-venv` with apt-get (root or sudo).
# Override the place with BOTO3_VENV (the tests read the same variable).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${BOTO3_VENV:-target/boto3-venv}

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import boto3, requests' 2>/dev/null; then
  echo "install-boto3: $venv found ($("$venv/bin/python" -c 'import boto3, botocore, requests; print("boto3", boto3.__version__, "botocore", botocore.__version__, "requests", requests.__version__)')), not installing"
  exit 0
fi

command -v python3 >/dev/null 2>&1 || { echo "install-boto3: python3 is missing" >&2; exit 1; }
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  echo "install-boto3: python3 has no venv/ensurepip module, will install python3-venv"
  sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-boto3: need root or sudo to install python3-venv" >&2; exit 1; }
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv
fi

echo "install-boto3: making $venv with the newest boto3 and requests from PyPI"
rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet --upgrade boto3 requests
"$venv/bin/python" -c 'import boto3, botocore, requests; print("install-boto3: done: boto3", boto3.__version__, "botocore", botocore.__version__, "requests", requests.__version__)'
