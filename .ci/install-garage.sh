#!/bin/sh
# Installs Garage (https://garagehq.deuxfleurs.fr), the S3 server the test suite runs against,
# unless it is already installed: on the PATH, in ~/.cargo/bin, or at $GARAGE_BIN.
# Idempotent; says what it does. Usage: .ci/install-garage.sh
set -eu

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"

if [ -n "${GARAGE_BIN:-}" ] && [ -x "$GARAGE_BIN" ]; then
    echo "garage: found at \$GARAGE_BIN=$GARAGE_BIN ($("$GARAGE_BIN" --version 2>/dev/null | head -n 1))"
    exit 0
fi
if found=$(command -v garage 2>/dev/null); then
    echo "garage: found on the PATH at $found ($(garage --version 2>/dev/null | head -n 1))"
    exit 0
fi
if [ -x "$cargo_bin/garage" ]; then
    echo "garage: found at $cargo_bin/garage ($("$cargo_bin/garage" --version 2>/dev/null | head -n 1))"
    exit 0
fi

echo "garage: not found; installing it with 'cargo install --locked garage' (this builds it, a few minutes)"
cargo install --locked garage
echo "garage: installed at $cargo_bin/garage ($("$cargo_bin/garage" --version 2>/dev/null | head -n 1))"
