#!/usr/bin/env bash
# shellcheck shell=bash
# Sourced by tools/run and tools/test (not run on its own): the Debian 12 packages ringmq needs, installing the
# missing ones, configuring a meson build directory, and reading test counts out of test output.
# Callers have `set -euo pipefail` on and have already changed to the repository root.

# Everything needed to build, run and test ringmq on Debian 12.
RINGMQ_PACKAGES=(
    build-essential meson ninja-build pkg-config cmake
    liburing-dev libmimalloc-dev libsimdjson-dev
    libgtest-dev libgmock-dev libbenchmark-dev
    libssl-dev libfmt-dev libcli11-dev libtomlplusplus-dev node-llhttp
    mosquitto mosquitto-clients python3-paho-mqtt python3
    curl coreutils procps linux-perf valgrind
)

# Prints the packages among "$@" that dpkg does not report as installed, one per line.
ringmq_missing_packages() {
    local p status
    for p in "$@"; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        # "install ok installed" (or "hold ok installed"); "config-files", "half-installed" or nothing = missing.
        # A package installed for two architectures prints its status twice, still ending in " installed".
        [[ $status == *" installed" ]] || printf '%s\n' "$p"
    done
}

# Runs "$@" as root: directly when we are root, else through sudo.
ringmq_as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "tools: need root or sudo to run: $*" >&2
        return 1
    fi
}

# Installs whichever of RINGMQ_PACKAGES are missing. apt-get update runs once, and only when something is missing.
ringmq_ensure_packages() {
    local missing=()
    if ! command -v dpkg-query >/dev/null 2>&1; then
        echo "tools: dpkg-query not found; these scripts expect Debian 12. Install by hand: ${RINGMQ_PACKAGES[*]}" >&2
        return 1
    fi
    mapfile -t missing < <(ringmq_missing_packages "${RINGMQ_PACKAGES[@]}")
    ((${#missing[@]} == 0)) && return 0
    echo "tools: installing missing packages: ${missing[*]}" >&2
    # sudo may drop DEBIAN_FRONTEND from the environment, so it is passed through env. A fresh cloud machine may be
    # running its daily apt at boot: wait for its lock rather than fail at once.
    local lock=(-o DPkg::Lock::Timeout=600)
    ringmq_as_root env DEBIAN_FRONTEND=noninteractive apt-get "${lock[@]}" update
    ringmq_as_root env DEBIAN_FRONTEND=noninteractive apt-get "${lock[@]}" install -y --no-install-recommends \
        "${missing[@]}"
    # Debian's mosquitto package enables and starts its service on port 1883, where ringmq listens by default (and
    # refuses to start beside another listener). The tests start their own Mosquitto on ports of their own.
    if printf '%s\n' "${missing[@]}" | grep -qx mosquitto && [[ -d /run/systemd/system ]] &&
        systemctl is-enabled --quiet mosquitto.service 2>/dev/null; then
        echo "tools: stopping and disabling the mosquitto service the package started (it takes port 1883)" >&2
        ringmq_as_root systemctl disable --now mosquitto.service || true
    fi
}

# ringmq_configure DIR [meson options...]: `meson setup DIR options...` unless DIR is already configured
# (has build.ninja; ninja re-runs meson itself when a meson.build changes). A directory configured earlier with
# other values for the given options (`--name=value` or `-Dname=value`: a debug `build`, tests switched off) gets
# them with `meson configure`; only then, since `meson configure` rebuilds everything even when nothing changed. A
# directory left behind by a failed setup is wiped and set up again.
ringmq_configure() {
    local dir=$1
    shift
    if [[ -f $dir/build.ninja ]]; then
        local differ
        differ=$(/usr/bin/python3 - "$dir/meson-info/intro-buildoptions.json" "$@" <<'PY'
import json, sys
try:
    current = {o["name"]: o["value"] for o in json.load(open(sys.argv[1]))}
except (OSError, ValueError):
    current = {}
def text(v):
    return str(v).lower() if isinstance(v, bool) else str(v)
for arg in sys.argv[2:]:
    name, _, value = arg.lstrip("-").removeprefix("D").partition("=")
    name = name.replace("-", "_")  # --default-library is default_library
    if name not in current or text(current[name]) != value:
        print(f"{name}={value} (was {text(current[name]) if name in current else 'unset'})")
PY
)
        [[ -z $differ ]] && return 0
        echo "tools: $dir was configured with other options; setting: ${differ//$'\n'/ }" >&2
        meson configure "$dir" "$@"
        return
    fi
    if [[ -f $dir/meson-private/coredata.dat ]]; then
        meson setup --wipe "$dir" "$@"
    else
        meson setup "$dir" "$@"
    fi
}

# ringmq_gtest_counts FILE EXIT_STATUS: reads the output of one GoogleTest binary run with --gtest_brief=1 and
# prints "PASSED FAILED SKIPPED COUNTED".
#   passed   "[  PASSED  ] N tests."
#   skipped  "[  SKIPPED ] N tests." (brief) or "[  SKIPPED ] N tests, listed below:" (full output)
#   failed   "[  FAILED  ] N tests, listed below:" when printed. GoogleTest 1.12's brief mode prints no such line,
#            only one "[  FAILED  ] Suite.Name (N ms)" line per failed test, so it is then
#            "[==========] N tests from M test suites ran." minus passed minus skipped, and at least the number of
#            those per-test lines.
#   A nonzero exit (crash, sanitizer report, timeout) with no failure counted is 1 failure.
#   COUNTED is 0 only when the binary exited 0 yet printed no PASSED/FAILED count: a run with no result.
# GoogleTest writes "test" for 1 and "tests" otherwise; colour escapes and CRs are stripped first.
ringmq_gtest_counts() {
    awk -v rc="$2" '
        { gsub(/\r/, ""); gsub(/\033\[[0-9;]*m/, "") }
        /^\[==========\] [0-9]+ tests? from .* ran\./ { ran = $2 + 0; have_ran = 1; next }
        /^\[  PASSED  \] [0-9]+ tests?\./ { passed = $4 + 0; have_passed = 1; next }
        /^\[  SKIPPED \] [0-9]+ tests?[.,]/ { skipped = $4 + 0; next }
        /^\[  FAILED  \] [0-9]+ tests?, listed below/ { failed_line = $4 + 0; have_failed = 1; next }
        /^\[  FAILED  \] [^ ]/ { named++ }
        END {
            if (have_failed) {
                failed = failed_line
            } else {
                failed = (have_ran && have_passed) ? ran - passed - skipped : 0
                if (failed < 0) failed = 0
                if (named > failed) failed = named
            }
            if (rc != 0 && failed == 0) failed = 1
            counted = (have_passed || have_failed || rc != 0) ? 1 : 0
            printf "%d %d %d %d\n", passed, failed, skipped, counted
        }
    ' "$1"
}

# ringmq_integration_counts FILE: the last "integration: N passed, N failed[, N skipped]" line of FILE as
# "PASSED FAILED SKIPPED"; prints nothing when there is no such line.
ringmq_integration_counts() {
    local line
    line=$(grep -E '^integration: [0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?[[:space:]]*$' "$1" | tail -n 1 || true)
    [[ -n $line ]] || return 0
    [[ $line =~ ^integration:\ ([0-9]+)\ passed,\ ([0-9]+)\ failed(,\ ([0-9]+)\ skipped)? ]] || return 0
    printf '%d %d %d\n' "$((10#${BASH_REMATCH[1]}))" "$((10#${BASH_REMATCH[2]}))" "$((10#${BASH_REMATCH[4]:-0}))"
}

# "N passed, N failed" plus ", N skipped" when N > 0.
ringmq_count_line() {
    local line="$1 passed, $2 failed"
    (($3 > 0)) && line+=", $3 skipped"
    printf '%s\n' "$line"
}
