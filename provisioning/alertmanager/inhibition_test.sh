#!/usr/bin/env bash
# Proves the inhibit_rules of alertmanager.yml against a real Alertmanager:
# starts one on a free loopback port with a throw-away storage directory,
# posts alerts with amtool and checks which end up suppressed. Exits
# non-zero on any mismatch. Finishes well within the 30s group_wait, so no
# notification is attempted.
#
# Usage: provisioning/alertmanager/inhibition_test.sh [alertmanager.yml]
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
config=${1:-$here/alertmanager.yml}

am=$(command -v alertmanager || command -v prometheus-alertmanager) || {
  echo "inhibition_test: alertmanager not found (Debian/Ubuntu: apt-get install prometheus-alertmanager)" >&2
  exit 2
}
command -v amtool >/dev/null 2>&1 || {
  echo "inhibition_test: amtool not found (Debian/Ubuntu: apt-get install prometheus-alertmanager)" >&2
  exit 2
}

tmp=$(mktemp -d)
pid=
cleanup() {
  if [[ -n $pid ]]; then
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# Start Alertmanager on a random high loopback port; retry on a clash.
url=
for _ in 1 2 3 4 5; do
  port=$((20000 + RANDOM % 20000))
  "$am" --config.file="$config" --storage.path="$tmp/data" \
    --web.listen-address="127.0.0.1:$port" --cluster.listen-address= \
    --log.level=warn >"$tmp/alertmanager.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 50); do
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    if amtool --alertmanager.url="http://127.0.0.1:$port" config show >/dev/null 2>&1; then
      url="http://127.0.0.1:$port"
      break 2
    fi
    sleep 0.2
  done
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  pid=
done
if [[ -z $url ]]; then
  echo "inhibition_test: could not start alertmanager:" >&2
  cat "$tmp/alertmanager.log" >&2
  exit 1
fi

add() { amtool --alertmanager.url="$url" alert add "$@" >/dev/null; }

# `case` identifies each alert for the queries below; it is in no `equal`
# list, so it does not change what inhibits what.
add case=crit_post alertname=FollowUpAPILatencyP95High severity=critical job=followup-api http_request_method=POST http_route=/api/followups
add case=warn_post alertname=FollowUpAPILatencyP95High severity=warning job=followup-api http_request_method=POST http_route=/api/followups
add case=warn_patch alertname=FollowUpAPILatencyP95High severity=warning job=followup-api http_request_method=PATCH 'http_route=/api/followups/{id}'
add case=warn_other_name alertname=FollowUpAPIErrorRatioHigh severity=warning job=followup-api http_request_method=POST http_route=/api/followups
add case=crit_burn alertname=FollowUpAPIErrorBudgetBurn severity=critical long_window=1h short_window=5m job=followup-api http_request_method=GET 'http_route=/api/followups/{id}/analytics'
add case=warn_burn alertname=FollowUpAPIErrorBudgetBurn severity=warning long_window=3d short_window=6h job=followup-api http_request_method=GET 'http_route=/api/followups/{id}/analytics'
add case=db_down alertname=OKRExporterDatabaseUnreachable severity=warning job=okr-exporter instance=a:9464
add case=collect_a alertname=OKRCollectionFailing severity=warning job=okr-exporter instance=a:9464 collector=drafts
add case=stale_a alertname=OKRDataStale severity=warning job=okr-exporter instance=a:9464 collector=drafts
add case=collect_b alertname=OKRCollectionFailing severity=warning job=okr-exporter instance=b:9464 collector=drafts
add case=info alertname=OKRTimeToNextActionAboveTarget severity=info job=okr-exporter window=7d

# state CASE: "suppressed", "active" or "" (unknown), as Alertmanager reports it.
state() {
  local json
  json=$(amtool --alertmanager.url="$url" alert query --active --inhibited -o json "case=$1" 2>/dev/null)
  case $json in
    *'"state":"suppressed"'*) echo suppressed ;;
    *'"state":"active"'*) echo active ;;
    *) echo "" ;;
  esac
}

passed=0
failed=0
# expect CASE STATE WHY: polls for up to 10 s (the inhibitor learns about
# new source alerts asynchronously).
expect() {
  local got=
  for _ in $(seq 1 50); do
    got=$(state "$1")
    [[ $got == "$2" ]] && break
    sleep 0.2
  done
  if [[ $got == "$2" ]]; then
    passed=$((passed + 1))
    printf 'ok    %-10s %-16s %s\n' "$2" "$1" "$3"
  else
    failed=$((failed + 1))
    printf 'FAIL  expected %s, got %s: %s (%s)\n' "$2" "${got:-<missing>}" "$1" "$3"
  fi
}

# Suppressions first: once these hold, the inhibitor has seen every source
# alert, so an "active" below cannot be an inhibition not yet applied.
expect warn_post suppressed "critical P95 mutes the warning P95 of the same endpoint"
expect warn_burn suppressed "fast burn mutes the slow burn of the same endpoint"
expect collect_a suppressed "database down mutes collection failures of that exporter"
expect stale_a suppressed "database down mutes stale data of that exporter"
expect crit_post active "critical alerts are never muted by warnings"
expect warn_patch active "another endpoint's warning stays"
expect warn_other_name active "another alert on the same endpoint stays"
expect crit_burn active "fast burn pages"
expect db_down active "the database alert itself"
expect collect_b active "another exporter's collection failure stays"
expect info active "info is never muted by unrelated alerts"

echo "inhibition_test: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
