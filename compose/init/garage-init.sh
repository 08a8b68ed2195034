#!/bin/sh
# One-shot setup of the compose Garage, through its admin API (v2): gives the node a layout,
# imports nargate's key pair and creates nargate's bucket, allowing the key on it. Idempotent:
# what is already there is left as it is, so `docker compose up` may run it every time.
#
# Environment: GARAGE_ADMIN (the admin API, e.g. http://garage:3903), GARAGE_ADMIN_TOKEN,
# GARAGE_CAPACITY (bytes the node offers, e.g. 10G), NARGATE_GARAGE_BUCKET, NARGATE_GARAGE_KEY_ID,
# NARGATE_GARAGE_SECRET (the key pair nargate's backend uses: GK + 24 hex digits, 64 hex digits).
set -eu

: "${GARAGE_ADMIN:?}" "${GARAGE_ADMIN_TOKEN:?}" "${GARAGE_CAPACITY:?}"
: "${NARGATE_GARAGE_BUCKET:?}" "${NARGATE_GARAGE_KEY_ID:?}" "${NARGATE_GARAGE_SECRET:?}"

# api METHOD ENDPOINT [JSON]: calls the admin API, prints the response body, fails on 4xx/5xx.
api() {
  if [ $# -ge 3 ]; then
    curl -fsS -X "$1" -H "Authorization: Bearer $GARAGE_ADMIN_TOKEN" \
      -H "Content-Type: application/json" --data "$3" "$GARAGE_ADMIN/v2/$2"
  else
    curl -fsS -X "$1" -H "Authorization: Bearer $GARAGE_ADMIN_TOKEN" "$GARAGE_ADMIN/v2/$2"
  fi
}

# The value of the first "NAME": "value" (a string) or "NAME": value (a number) in JSON on stdin.
field() {
  grep -o "\"$1\": *\"\{0,1\}[^\",} ]*" | head -n 1 | sed 's/^[^:]*: *"\{0,1\}//'
}

echo "garage-init: waiting for $GARAGE_ADMIN"
tries=0
until status=$(api GET GetClusterStatus 2>/dev/null); do
  tries=$((tries + 1))
  [ "$tries" -lt 60 ] || { echo "garage-init: Garage did not answer" >&2; exit 1; }
  sleep 1
done

node=$(printf '%s' "$status" | field id)
layout=$(printf '%s' "$status" | field layoutVersion)
echo "garage-init: node $node, layout version $layout"
if [ "$layout" = "0" ]; then
  capacity=$(printf '%s' "$GARAGE_CAPACITY" | sed 's/[Gg]$/000000000/; s/[Mm]$/000000/')
  api POST UpdateClusterLayout \
    "{\"roles\":[{\"id\":\"$node\",\"zone\":\"dc1\",\"capacity\":$capacity,\"tags\":[]}]}" >/dev/null
  api POST ApplyClusterLayout '{"version":1}' >/dev/null
  echo "garage-init: layout applied (zone dc1, capacity $capacity bytes)"
fi

if api GET "GetKeyInfo?id=$NARGATE_GARAGE_KEY_ID" >/dev/null 2>&1; then
  echo "garage-init: key $NARGATE_GARAGE_KEY_ID exists"
else
  api POST ImportKey \
    "{\"accessKeyId\":\"$NARGATE_GARAGE_KEY_ID\",\"secretAccessKey\":\"$NARGATE_GARAGE_SECRET\",\"name\":\"nargate\"}" \
    >/dev/null
  echo "garage-init: key $NARGATE_GARAGE_KEY_ID imported"
fi

# Buckets can be made once the new layout has reached every table: retry for a while.
tries=0
until bucket=$(api GET "GetBucketInfo?globalAlias=$NARGATE_GARAGE_BUCKET" 2>/dev/null \
  || api POST CreateBucket "{\"globalAlias\":\"$NARGATE_GARAGE_BUCKET\"}" 2>/dev/null); do
  tries=$((tries + 1))
  [ "$tries" -lt 60 ] || { echo "garage-init: cannot create bucket $NARGATE_GARAGE_BUCKET" >&2; exit 1; }
  sleep 1
done
id=$(printf '%s' "$bucket" | field id)
api POST AllowBucketKey \
  "{\"bucketId\":\"$id\",\"accessKeyId\":\"$NARGATE_GARAGE_KEY_ID\",\"permissions\":{\"read\":true,\"write\":true,\"owner\":true}}" \
  >/dev/null
echo "garage-init: bucket $NARGATE_GARAGE_BUCKET ($id) ready for key $NARGATE_GARAGE_KEY_ID"
