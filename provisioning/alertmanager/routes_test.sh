#!/usr/bin/env bash
# Proves where each severity is routed by alertmanager.yml, with
# `amtool config routes test`. Exits non-zero on any mismatch.
#
# Usage: provisioning/alertmanager/routes_test.sh [alertmanager.yml]
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
config=${1:-$here/alertmanager.yml}

if ! command -v amtool >/dev/null 2>&1; then
  echo "routes_test: amtool not found (Debian/Ubuntu: apt-get install prometheus-alertmanager)" >&2
  exit 2
fi

passed=0
failed=0

# expect RECEIVERS LABEL=VALUE...: the alert with these labels must reach
# exactly RECEIVERS (comma-separated, in routing-tree order).
expect() {
  local want=$1
  shift
  local got
  got=$(amtool config routes test --config.file="$config" --verify.receivers="$want" "$@" 2>/dev/null)
  local rc=$?
  if [[ $rc -eq 0 && "$got" == "$want" ]]; then
    passed=$((passed + 1))
    printf 'ok    %-22s <- %s\n' "$want" "$*"
  else
    failed=$((failed + 1))
    printf 'FAIL  expected %s, got %s <- %s\n' "$want" "${got:-<nothing>}" "$*"
  fi
}

# critical: pages, and is also visible in the team channel.
expect pager,team-channel severity=critical alertname=FollowUpAPILatencyP95High job=followup-api http_request_method=POST http_route=/api/followups
expect pager,team-channel severity=critical alertname=FollowUpAPIErrorBudgetBurn long_window=1h short_window=5m 'http_route=/api/followups/{id}'
expect pager,team-channel severity=critical alertname=FollowUpAPILatencyBudgetBurn long_window=6h short_window=30m 'http_route=/api/followups/{id}/analytics'

# warning: team channel only, never the pager.
expect team-channel severity=warning alertname=FollowUpAPILatencyP95High job=followup-api http_request_method=PATCH 'http_route=/api/followups/{id}'
expect team-channel severity=warning alertname=FollowUpAPIErrorBudgetBurn long_window=3d short_window=6h http_route=/api/followups
expect team-channel severity=warning alertname=OKRDraftCompletionBelowFloor job=okr-exporter window=7d
expect team-channel severity=warning alertname=ScrapeTargetDown job=okr-exporter instance=okr-exporter:9464

# info: the low-priority feed, never the pager nor the team channel.
expect team-info severity=info alertname=OKRTimeToNextActionAboveTarget job=okr-exporter window=7d

# No or unknown severity: not lost, not paged.
expect team-channel alertname=SomethingWithoutSeverity
expect team-channel severity=page alertname=SomethingWithUnknownSeverity

echo "routes_test: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
