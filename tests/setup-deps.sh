#!/usr/bin/env bash
# Installs what the tests need beyond pip: nginx (origin, site server, HTTP cache),
# iproute2 (network namespaces for the fleet test), tmux
# (a real terminal for the progress display), Debian's chromium (the real TF.js
# client, headless), and @tensorflow/tfjs from the npm registry into a cache
# outside git. Idempotent; quiet when everything is there.
#
# Where TF.js lands (tests/e2e/browser.py reads the same rule):
#   $SHARDSYNC_TEST_CACHE, default ${XDG_CACHE_HOME:-$HOME/.cache}/shardsync-tests
#   tf.min.js = $SHARDSYNC_TEST_CACHE/npm/node_modules/@tensorflow/tfjs/dist/tf.min.js
set -euo pipefail

# The TF.js release the end-to-end tests load models with: the latest 4.x,
# pinned exactly so a new release cannot change what "loads in TF.js" means.
TFJS_VERSION=4.22.0

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need+=(chromium)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)      # tests/test_systemd.py
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)       # tests/test_control.py
command -v strace >/dev/null 2>&1 || need+=(strace)             # tests/test_store_paths.py
command -v tmux >/dev/null 2>&1 || need+=(tmux)                 # tests/test_progress_terminal.py
command -v ip >/dev/null 2>&1 || need+=(iproute2)            # tests/test_fleet.py (ip netns)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-deps: please install: ${need[*]} (apt-get install ${need[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cache="${SHARDSYNC_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/shardsync-tests}"
npm_dir="$cache/npm"
tfjs_pkg="$npm_dir/node_modules/@tensorflow/tfjs/package.json"
if ! grep -q "\"version\": \"$TFJS_VERSION\"" "$tfjs_pkg" 2>/dev/null \
   || [ ! -s "$npm_dir/node_modules/@tensorflow/tfjs/dist/tf.min.js" ]; then
  mkdir -p "$npm_dir"
  cat >"$npm_dir/package.json" <<EOF
{
  "name": "shardsync-tests-npm-cache",
  "private": true,
  "description": "Written by shardsync tests/setup-deps.sh; safe to delete.",
  "dependencies": {"@tensorflow/tfjs": "$TFJS_VERSION"}
}
EOF
  (cd "$npm_dir" && npm install --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null)
  if [ ! -s "$npm_dir/node_modules/@tensorflow/tfjs/dist/tf.min.js" ]; then
    echo "setup-deps: npm install of @tensorflow/tfjs@$TFJS_VERSION left no dist/tf.min.js in $npm_dir" >&2
    exit 1
  fi
fi
