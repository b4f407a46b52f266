#!/usr/bin/env bash
# Sends standard input, one record per line, to a starsink sink's Unix socket.
#
#   printf '{"id":1,"name":"a"}\n' | STARSINK_SOCKET_ORDERS=/var/run/starsink/orders.sock ./producer.sh
#   ./producer.sh /var/run/starsink/orders.sock < records.ndjson
#
# Needs socat (or an nc with -U). A missing socket is retried for a while.
#
# With ACKS=1 (for a sink with `acks: spooled` or `acks: committed`; needs socat) the
# script waits for the loader's answer, `ok N` / `err LINE REASON`, prints the err lines
# and exits 1 unless every line was acked.
set -euo pipefail

sock="${1:-${STARSINK_SOCKET_ORDERS:-}}"
if [[ -z "$sock" ]]; then
  echo "producer: no socket: set STARSINK_SOCKET_ORDERS or pass the path as the first argument" >&2
  exit 2
fi

attempts="${ATTEMPTS:-30}"
for ((i = 1; i <= attempts; i++)); do
  [[ -S "$sock" ]] && break
  echo "producer: $sock does not exist yet (attempt $i/$attempts); is the loader running (pod labelled starsink.io/inject and the sink Ready)?" >&2
  sleep 1
done
if [[ ! -S "$sock" ]]; then
  echo "producer: gave up waiting for $sock" >&2
  exit 1
fi

if [[ "${ACKS:-0}" == 1 ]]; then
  lines="$(mktemp)"
  trap 'rm -f "$lines"' EXIT
  cat >"$lines"
  sent=$(wc -l <"$lines")
  # After stdin ends, socat waits up to -t seconds for the loader to finish acking.
  acks="$(socat -t "${ACK_TIMEOUT:-60}" - "UNIX-CONNECT:$sock" <"$lines")"
  grep '^err ' <<<"$acks" >&2 || true
  acked=$(grep '^ok ' <<<"$acks" | tail -n 1 | cut -d' ' -f2)
  echo "producer: ${acked:-0} of $sent lines acked" >&2
  [[ "${acked:-0}" == "$sent" ]] && ! grep -q '^err ' <<<"$acks"
  exit
fi

if command -v socat >/dev/null; then
  exec socat -u STDIN "UNIX-CONNECT:$sock"
elif command -v nc >/dev/null; then
  exec nc -N -U "$sock"
else
  echo "producer: needs socat or nc (with -U); install one, e.g. apt-get install socat" >&2
  exit 2
fi
