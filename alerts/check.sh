#!/usr/bin/env bash
# Runs every check of the alerting configuration:
#   promtool check rules   (all rule files, every lint, lint findings fatal)
#   promtool test rules    (alerts/tests/*.yml)
#   promtool check config  (both Prometheus configurations, with their rules)
#   amtool check-config    (Alertmanager configuration)
#   routes test            (provisioning/alertmanager/routes_test.sh)
#   inhibition test        (provisioning/alertmanager/inhibition_test.sh)
# Exits non-zero if any of them fails; the last line is a summary.
#
# Needs promtool (Debian package `prometheus`) and amtool + alertmanager
# (Debian package `prometheus-alertmanager`).
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1

missing=0
for tool in promtool amtool; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "check.sh: $tool not found on PATH (apt-get install prometheus prometheus-alertmanager)" >&2
    missing=1
  fi
done
[[ $missing -eq 0 ]] || exit 2

passed=0
failed=0
failures=()

run() {
  local name=$1
  shift
  echo "=== $name"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    failures+=("$name")
  fi
  echo
}

shopt -s nullglob
rule_files=(alerts/*.yml)
test_files=(alerts/tests/*.yml)

run "promtool check rules" promtool check rules --lint=all --lint-fatal "${rule_files[@]}"
run "promtool test rules" promtool test rules "${test_files[@]}"
run "promtool check config" promtool check config --lint=all --lint-fatal \
  provisioning/prometheus/prometheus.yml provisioning/prometheus/prometheus.local.yml
run "amtool check-config" amtool check-config provisioning/alertmanager/alertmanager.yml
run "alertmanager routes test" provisioning/alertmanager/routes_test.sh
run "alertmanager inhibition test" provisioning/alertmanager/inhibition_test.sh

if [[ $failed -gt 0 ]]; then
  printf 'check.sh: failed: %s\n' "${failures[*]}"
fi
echo "alerting: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
