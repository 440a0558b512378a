#!/usr/bin/env bash
# Builds the Debian package, checks what it contains, installs it, and checks
# that the installed binary, run as the package's user with the package's
# environment file, starts and answers /healthz; then purges it. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked
cargo deb -p broker
deb=$(ls -t target/debian/broker_*.deb | head -n 1)

contents=$(dpkg-deb -c "$deb")
for path in ./usr/bin/broker ./usr/lib/systemd/system/broker.service \
            ./etc/broker/broker.env ./usr/share/doc/broker/README.md; do
  grep -q " $path\$" <<<"$contents" || { echo "the package lacks $path" >&2; exit 1; }
done
dpkg-deb -f "$deb" Package | grep -qx broker

dpkg -i "$deb"
trap 'kill "${pid:-0}" 2>/dev/null || true; dpkg --purge broker >/dev/null' EXIT
getent passwd broker >/dev/null
test "$(stat -c %U /var/lib/broker)" = broker
test "$(stat -c %a /var/lib/broker)" = 700
test "$(stat -c %a /etc/broker/broker.env)" = 640
grep -q '^User=broker$' /usr/lib/systemd/system/broker.service

# Start the installed binary as the unit would, on a spare local port.
port=18765
mapfile -t settings < <(grep -E '^[A-Z_]+=' /etc/broker/broker.env)
runuser -u broker -- env "${settings[@]}" BROKER_HOST=127.0.0.1 BROKER_PORT=$port /usr/bin/broker \
  >target/debian/check.log 2>&1 &
pid=$!
for _ in $(seq 100); do
  if curl -fsS "http://127.0.0.1:$port/healthz" | grep -q '"ok"'; then
    test -s /var/lib/broker/secret
    # Readable by Broker only, and no warning about it.
    test "$(stat -c %a /var/lib/broker/secret /var/lib/broker/broker.sqlite3 | sort -u)" = 600
    ! grep -q "other users can read" target/debian/check.log
    echo "package check: installed broker answers /healthz"
    exit 0
  fi
  sleep 0.1
done
echo "the installed broker did not answer /healthz" >&2
exit 1
