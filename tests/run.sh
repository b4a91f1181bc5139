#!/usr/bin/env bash
# The project's whole test suite: unit tests, lints and the lab end-to-end tests.
# Installs what it needs (Debian packages), builds the lab base image on first use, and tears
# every lab host down afterwards, whether the tests pass or not. Run as root (the lab creates
# network links, mounts and containers).
set -euo pipefail
cd "$(dirname "$0")/.."

# etcd-server: the store's etcd backend is tested against a real etcd; vagrant: `vagrant validate`.
# (No protobuf-compiler: the crates that compile .proto files do it with protox, third_party/.)
# containerd, runc, busybox: images and pods run in a private containerd the tests start;
# busybox is also what the admin-box image is built from (the dynamic build: busybox-static's
# wget, nc and ping cannot resolve names).
need_pkgs=(openssl debootstrap systemd-container iproute2 openssh-client nftables etcd-server vagrant containerd runc busybox python3 python3-venv)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "==> installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Packages must not start services on this machine (etcd would take port 2379).
  policy=/usr/sbin/policy-rc.d
  created_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
  fi
  apt-get install -y -qq "${missing[@]}" >/dev/null
  if [ -n "$created_policy" ]; then rm -f "$policy"; fi
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "==> cargo build (kinit binary for the end-to-end tests)"
cargo build --quiet -p kinit

kinit_bin="${CARGO_TARGET_DIR:-$PWD/target}/debug/kinit"
cleanup() {
  if [ -x "$kinit_bin" ] && [ -e /run/kinit-lab ]; then
    "$kinit_bin" lab down --all >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# The official Python `kubernetes` client drives the cluster in the end-to-end suite; Debian's
# Python refuses a system-wide pip install, hence a venv under the target dir.
echo "==> python kubernetes client (for the Python client e2e suite)"
py_env="${CARGO_TARGET_DIR:-$PWD/target}/py-e2e"
[ -x "$py_env/bin/python" ] || python3 -m venv "$py_env"
"$py_env/bin/pip" install -q --disable-pip-version-check kubernetes
export KINIT_PYTHON="$py_env/bin/python"

echo "==> cargo test"
KINIT_E2E=1 KINIT_BIN="$kinit_bin" cargo test --workspace --no-fail-fast -- --test-threads=2
