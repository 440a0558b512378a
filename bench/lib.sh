# What the bench scripts share; sourced, not run.

# Waits until something listens on 127.0.0.1:$1 (at most 10 s).
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  return 1
}

# prepare: the release build; $out for results, $bench, and a work folder
# $work removed on exit, when the servers whose pids are in $pids are killed.
prepare() {
  out=target/bench
  mkdir -p "$out"
  cargo build --release --workspace --quiet
  bench=target/release/broker-bench
  work=$(mktemp -d)
  pids=()
  trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
}

# nchan_channels <script> <name> <first source> <broker-bench channels options…>:
# `broker-bench channels` against a fresh nginx + nchan (one worker), its
# log in $out/<script>-nginx.log, its result in $out/<script>-<name>.json.
nchan_channels() {
  local script=$1 name=$2 source=$3
  shift 3
  rm -rf "$work/nginx"; mkdir -p "$work/nginx/tmp"
  nginx -p "$work/nginx" -c "$PWD/bench/nchan/nginx.conf" 2>>"$out/$script-nginx.log" &
  local master=$!
  pids+=("$master")
  wait_port 18081
  local worker
  worker=$(pgrep -P "$master" | head -n 1)
  echo "== nginx + nchan $*"
  "$bench" channels --target nchan --addr 127.0.0.1:18081 --pid "$worker" \
    --first-source "$source" --json "$out/$script-$name.json" "$@" | grep -v '^{' || true
  kill "$master"; wait "$master" 2>/dev/null || true
}

# make_cert DIR: a CA (DIR/ca.pem) and an ECDSA P-256 certificate for
# localhost (DIR/cert.pem, DIR/key.pem), as a deployment has.
make_cert() {
  openssl ecparam -name prime256v1 -genkey -noout -out "$1/ca.key"
  openssl req -x509 -new -key "$1/ca.key" -subj /CN=bench-ca -days 7 -out "$1/ca.pem"
  openssl ecparam -name prime256v1 -genkey -noout -out "$1/key.pem"
  openssl req -new -key "$1/key.pem" -subj /CN=localhost -out "$1/cert.csr"
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$1/san"
  openssl x509 -req -in "$1/cert.csr" -CA "$1/ca.pem" -CAkey "$1/ca.key" \
    -CAcreateserial -days 7 -extfile "$1/san" -out "$1/cert.pem" 2>/dev/null
}
