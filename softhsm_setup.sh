#!/usr/bin/env bash
# Set up everything the dev daemon and the tests need, on a fresh Debian/Ubuntu machine.
# Idempotent: run it as often as you like; it only does what is still missing.
#
#   ./softhsm_setup.sh               system packages, .venv, dev token, keys and certificates
#   ./softhsm_setup.sh --test-tools  the same, plus the tools the test suite calls
#                                    (zbarimg to decode QR codes, promtool to lint metrics/rules,
#                                    PostgreSQL's initdb/pg_ctl for the record-store tests,
#                                    p11-kit's server and remote client for `make test-p11kit`,
#                                    OpenSC's pkcs11-spy to count PKCS#11 calls, a C compiler and
#                                    p11-kit's PKCS#11 header to build a test module)
#
# PINs are generated into data/secrets/ (mode 600) and never printed or passed on a command line.
set -euo pipefail

cd "$(dirname "$0")"
ROOT="$(pwd)"
DATA="$ROOT/data"
PYTHON="${PYTHON:-python3}"
TEST_TOOLS=0
for arg in "$@"; do
  case "$arg" in
    --test-tools) TEST_TOOLS=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "softhsm_setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

say() { printf '[setup] %s\n' "$*"; }

apt_install() {
  local missing=("$@")
  [ "${#missing[@]}" -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  say "installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# 1. System packages: SoftHSM2 from the distribution, Python venv support, test tools.
need=()
command -v softhsm2-util >/dev/null || need+=(softhsm2)
command -v openssl >/dev/null || need+=(openssl)
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ "$TEST_TOOLS" -eq 1 ]; then
  command -v zbarimg >/dev/null || need+=(zbar-tools)
  command -v promtool >/dev/null || need+=(prometheus)
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
  command -v p11-kit >/dev/null || need+=(p11-kit)
  compgen -G '/usr/lib/*/pkcs11/p11-kit-client.so' >/dev/null || need+=(p11-kit-modules)
  compgen -G '/usr/lib/*/pkcs11/pkcs11-spy.so' >/dev/null || need+=(opensc-pkcs11)
  # A test builds a PKCS#11 module without C_CopyObject around SoftHSM.
  command -v cc >/dev/null || need+=(gcc libc6-dev)
  [ -f /usr/include/p11-kit-1/p11-kit/pkcs11.h ] || need+=(libp11-kit-dev)
fi
apt_install "${need[@]+"${need[@]}"}"
for service in prometheus postgresql; do
  if [ "$TEST_TOOLS" -eq 1 ] && systemctl is-enabled "$service" >/dev/null 2>&1; then
    # Only the tools are wanted from these packages; the tests start their own PostgreSQL.
    systemctl disable --now "$service" >/dev/null 2>&1 || true
  fi
done

"$PYTHON" - <<'PY' || { echo "Python >= 3.11 is required (set PYTHON=...)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

# 2. The virtual environment with the package and its test extras.
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "installing signer and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# 3. The dev token, its PINs and the dev keys and certificates.
umask 077
mkdir -p "$DATA/tokens" "$DATA/secrets"
if [ ! -f "$DATA/softhsm2.conf" ]; then
  sed "s#@TOKENDIR@#$DATA/tokens#" hsm_config/softhsm2.conf.in > "$DATA/softhsm2.conf"
fi
for pin in user so; do
  if [ ! -s "$DATA/secrets/$pin.pin" ]; then
    .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))' > "$DATA/secrets/$pin.pin"
  fi
done
chmod 600 "$DATA/secrets/"*.pin
.venv/bin/signer dev-setup --config hsm_config/dev.toml --so-pin-file "$DATA/secrets/so.pin"
say "ready: 'make serve' runs the daemon, 'make test' the tests"
