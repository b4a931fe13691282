#!/usr/bin/env bash
# README command 2 (and CI): set up, install what the browser tests drive, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! [ -x /usr/bin/chromium ]; then
    # The UI tests drive Debian's chromium through Playwright (Playwright's own browser download
    # cannot work offline). Needs root, as on CI and the lab's test VMs.
    echo "test: installing Debian's chromium for the browser tests ..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
        > /tmp/interp-assets-apt.log 2>&1 || echo "test: could not install chromium (see /tmp/interp-assets-apt.log); browser tests will skip" >&2
fi
exec .venv/bin/python -m pytest "$@"
