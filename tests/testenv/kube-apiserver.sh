#!/usr/bin/env bash
# A real Kubernetes API (etcd + kube-apiserver + kube-controller-manager 1.20.2) on loopback,
# without Docker, for the integration tests. See README.md next to this file.
#
#   kube-apiserver.sh build       build/fetch the binaries into the cache (once; ~4 min cold)
#   kube-apiserver.sh start DIR   start a fresh environment with all its state in DIR
#   kube-apiserver.sh stop DIR    stop the environment recorded in DIR (idempotent)
#
# The binaries come from Debian's own `kubernetes` source package (which carries the whole
# Kubernetes tree with vendor/) built with Debian's Go 1.19, and from Debian's etcd-server .deb.
# Nothing is installed on the system; everything lives under the cache directory:
#   ${NBD_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nbd-operator}/k8s-1.20.2/bin/
set -euo pipefail

readonly K8S_VERSION=1.20.2
readonly GO_SERIES=1.19
readonly PROG=kube-apiserver.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
readonly CACHE_ROOT=${NBD_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nbd-operator}
readonly CACHE=$CACHE_ROOT/k8s-$K8S_VERSION
readonly BIN=$CACHE/bin
readonly BUILD_LOG=$CACHE_ROOT/k8s-$K8S_VERSION-build.log
readonly DAEMONS=(etcd kube-apiserver kube-controller-manager)
readonly READY_TIMEOUT=${NBD_TESTENV_READY_TIMEOUT:-60} # seconds, for the whole start
readonly STOP_TIMEOUT=10                                # seconds of TERM before KILL

die() {
  echo "$PROG: $*" >&2
  exit 1
}

usage() {
  sed -n '5,7s/^#  */  /p' "${BASH_SOURCE[0]}" >&2
  exit 2
}

# ---------------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------------

have_binaries() {
  local d
  for d in "${DAEMONS[@]}"; do
    [ -x "$BIN/$d" ] || return 1
  done
}

# Prints one-line apt entries ("deb ..." and "deb-src ...") for every mirror URI and suite of this
# machine's own Debian release, read from its deb822 .sources files or one-line .list files.
machine_sources() {
  local codename f
  codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null | tr -d '"')
  [ -n "$codename" ] || die "cannot tell the Debian release from /etc/os-release"
  {
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -r "$f" ] || continue
      awk '
        function flush(   n, m, i, j, u, s, opt) {
          if (enabled && uris != "" && suites != "" && types ~ /(^| )deb( |$)/) {
            n = split(uris, u, " "); m = split(suites, s, " ")
            opt = (signed ~ /^\//) ? "[signed-by=" signed "] " : ""
            for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) {
              print "deb " opt u[i] " " s[j] " " comps
              print "deb-src " opt u[i] " " s[j] " " comps
            }
          }
          types = uris = suites = comps = signed = ""; enabled = 1
        }
        BEGIN { enabled = 1 }
        /^[ \t]*#/ { next }
        /^[ \t]*$/ { flush(); next }
        /^[ \t]/ { next }                      # continuation lines (an inline key block)
        {
          key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^[ \t]+/, ""); val = $0
          if (key == "types") types = val
          else if (key == "uris") uris = val
          else if (key == "suites") suites = val
          else if (key == "components") comps = val
          else if (key == "signed-by") signed = val
          else if (key == "enabled" && tolower(val) == "no") enabled = 0
        }
        END { flush() }
      ' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -r "$f" ] || continue
      awk '
        /^[ \t]*deb(-src)?[ \t]/ && !/cdrom:/ {
          line = $0; sub(/^[ \t]*deb(-src)?[ \t]+/, "", line)
          print "deb " line; print "deb-src " line
        }
      ' "$f"
    done
  } | awk -v codename="$codename" '
      # keep only the suites of this release (bookworm, bookworm-updates, bookworm-security, ...);
      # third-party repositories have other suite names and usually no deb-src.
      {
        n = split($0, w, " "); i = 2
        if (w[i] ~ /^\[/) { while (i <= n && w[i] !~ /\]$/) i++; i++ }
        suite = w[i + 1]
        if ((suite == codename || index(suite, codename "-") == 1) && !seen[$0]++) print
      }'
}

# The build proper. Runs in a subshell with its output in the build log; $1 = work directory
# (under the cache directory, removed afterwards); leaves the binaries in $1/out/bin.
build_steps() {
  local work=$1
  set -euxo pipefail
  cd "$work"

  # A private apt configuration: same mirrors and suites as the machine, our own lists and cache.
  mkdir -p apt/lists/partial apt/cache/archives/partial debs root
  machine_sources >apt/sources.list
  cat apt/sources.list
  [ -s apt/sources.list ] || { echo "no Debian sources found in /etc/apt" >&2; return 1; }
  local apt=(apt-get -q
    -o Dir::Etc::SourceList="$work/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists="$work/apt/lists" -o Dir::Cache="$work/apt/cache")
  # As root, apt downloads as the _apt user, who cannot write into a private cache under $HOME.
  [ "$(id -u)" -ne 0 ] || apt+=(-o APT::Sandbox::User=root)
  "${apt[@]}" update

  (cd debs && "${apt[@]}" source --download-only kubernetes)
  (cd debs && "${apt[@]}" download "golang-$GO_SERIES-go" "golang-$GO_SERIES-src" etcd-server)

  local dsc version
  dsc=$(echo debs/kubernetes_*.dsc)
  version=$(sed -n 's/^Version: //p' "$dsc")
  case "$version" in
    "$K8S_VERSION"-* | *"really$K8S_VERSION"-*) ;;
    *)
      echo "Debian's kubernetes source package is $version, not Kubernetes $K8S_VERSION" >&2
      return 1
      ;;
  esac

  # Go and etcd: unpacked, not installed.
  local deb
  for deb in debs/*.deb; do
    dpkg-deb -x "$deb" root
  done

  # GOPATH mode, as Kubernetes 1.20 and Debian build it: the tree must sit at
  # $GOPATH/src/k8s.io/kubernetes.
  local src=$work/gopath/src/k8s.io/kubernetes
  mkdir -p "$(dirname "$src")"
  dpkg-source -x "$dsc" "$src"

  export GOROOT=$work/root/usr/lib/go-$GO_SERIES
  export PATH=$GOROOT/bin:$PATH
  mkdir -p "$work/tmp"
  export GOPATH=$work/gopath GOCACHE=$work/gocache GOTMPDIR=$work/tmp GO111MODULE=off CGO_ENABLED=0
  export GOENV=off GOFLAGS="" GOPROXY=off GOTOOLCHAIN=local
  unset GOOS GOARCH GOBIN
  go version

  cd "$src"
  patch -p1 --forward --batch <"$HERE/patches/reflect2-go1.18-mapiterinit.patch"

  # The release tarball lacks the generated OpenAPI definitions the apiserver needs.
  go build -o _output/bin/openapi-gen ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
  make gen_openapi

  local ldflags="-s -w" pkg
  for pkg in component-base/version client-go/pkg/version; do
    pkg=k8s.io/kubernetes/vendor/k8s.io/$pkg
    ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*}"
    ldflags+=" -X $pkg.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X $pkg.gitTreeState=clean"
  done
  mkdir -p "$work/out/bin"
  go build -p 2 -trimpath -ldflags "$ldflags" -o "$work/out/bin/" \
    ./cmd/kube-apiserver ./cmd/kube-controller-manager
  cp "$work/root/usr/bin/etcd" "$work/out/bin/etcd"

  local v
  for v in kube-apiserver kube-controller-manager; do
    "$work/out/bin/$v" --version | grep -qx "Kubernetes v$K8S_VERSION"
  done
  {
    echo "kubernetes source package: $version"
    echo "go: $(go version)"
    echo "etcd: $("$work/out/bin/etcd" --version | head -n 1)"
  } >"$work/out/VERSIONS"
}

# True while a process of session SID is alive (zombies do not count).
session_alive() {
  # shellcheck disable=SC2009 # pgrep cannot leave zombies out
  ps -o stat= --sid "$1" 2>/dev/null | grep -qv '^Z'
}

# Stops a still-running build (on interruption) and removes its work directory.
# shellcheck disable=SC2317 # invoked indirectly (wait_for "$@" / trap)
build_cleanup() {
  local i
  if [ -n "${BUILD_PID:-}" ]; then
    kill -TERM -- "-$BUILD_PID" 2>/dev/null || kill -TERM "$BUILD_PID" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      session_alive "$BUILD_PID" || break
      sleep 0.1
    done
    kill -KILL -- "-$BUILD_PID" 2>/dev/null || true
    wait "$BUILD_PID" 2>/dev/null || true
    BUILD_PID=
  fi
  [ -z "${BUILD_WORK:-}" ] || rm -rf "$BUILD_WORK"
  BUILD_WORK=
}

cmd_build() {
  have_binaries && return 0
  local t0=$SECONDS work rc

  local tool missing=()
  for tool in apt-get dpkg-deb dpkg-source patch make flock setsid awk sed ps; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] ||
    die "missing ${missing[*]} (Debian packages: apt dpkg dpkg-dev patch make util-linux)"

  mkdir -p "$CACHE_ROOT"
  # One build at a time; whoever waited finds the binaries there.
  exec 9>"$CACHE_ROOT/.k8s-$K8S_VERSION.lock"
  flock 9
  if have_binaries; then
    exec 9>&-
    return 0
  fi
  # Leftovers of interrupted builds (none can be running: we hold the lock).
  rm -rf "$CACHE_ROOT/.k8s-$K8S_VERSION.build."* "$CACHE"
  work=$(mktemp -d "$CACHE_ROOT/.k8s-$K8S_VERSION.build.XXXXXX")
  BUILD_WORK=$work
  trap 'build_cleanup' EXIT
  trap 'exit 130' INT TERM

  # In a session (and process group) of its own, so an interrupted build can be stopped whole
  # (go build and its compilers included) without signalling whoever called us.
  setsid -w bash "${BASH_SOURCE[0]}" __build-steps "$work" >"$BUILD_LOG" 2>&1 </dev/null 9>&- &
  BUILD_PID=$!
  set +e
  wait "$BUILD_PID"
  rc=$?
  set -e
  BUILD_PID=
  if [ $rc -ne 0 ]; then
    echo "$PROG: building Kubernetes $K8S_VERSION failed; the end of $BUILD_LOG:" >&2
    tail -n 40 "$BUILD_LOG" >&2
    exit 1
  fi
  # Publish atomically: the cache directory appears complete or not at all.
  mv "$work/out" "$CACHE"
  build_cleanup
  trap - EXIT INT TERM
  exec 9>&-
  echo "$PROG: built Kubernetes v$K8S_VERSION (kube-apiserver, kube-controller-manager) and etcd" \
    "into $BIN in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------------------
# start / stop
# ---------------------------------------------------------------------------------------------

# Prints N distinct loopback TCP ports that were free a moment ago.
free_ports() {
  local n=$1
  if command -v python3 >/dev/null 2>&1; then
    python3 -c '
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
' "$n"
    return
  fi
  # Fallback: random ports below the usual ephemeral range that nobody answers on.
  local ports=() p
  while [ ${#ports[@]} -lt "$n" ]; do
    p=$((20000 + RANDOM % 12000))
    case " ${ports[*]} " in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      ports+=("$p")
    fi
  done
  echo "${ports[*]}"
}

# True if PID is alive (not a zombie) and runs the binary PATH.
is_ours() {
  local pid=$1 path=$2 exe stat comm
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  stat=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  case "$stat" in Z*) return 1 ;; esac
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  if [ -n "$exe" ]; then
    [ "${exe% (deleted)}" = "$path" ]
  else
    # No /proc: the command name, which the kernel truncates to 15 characters.
    comm=$(ps -o comm= -p "$pid" 2>/dev/null) || return 1
    [ -n "$comm" ] && case "${path##*/}" in "$comm"*) true ;; *) false ;; esac
  fi
}

# TERM, a bounded wait, then KILL.
stop_pid() {
  local name=$1 pid=$2 path=$3 i
  is_ours "$pid" "$path" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    is_ours "$pid" "$path" || return 0
    sleep 0.1
  done
  echo "$PROG: $name (pid $pid) ignored TERM for ${STOP_TIMEOUT} s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    is_ours "$pid" "$path" || return 0
    sleep 0.1
  done
  echo "$PROG: $name (pid $pid) survived KILL" >&2
  return 1
}

# Stops what DIR/pids records: controller-manager, then apiserver, then etcd.
stop_dir() {
  local dir=$1 name n pid path rc=0
  [ -f "$dir/pids" ] || return 0
  for name in kube-controller-manager kube-apiserver etcd; do
    while read -r n pid path; do
      [ "$n" = "$name" ] || continue
      stop_pid "$name" "$pid" "$path" || rc=1
    done <"$dir/pids"
  done
  [ $rc -ne 0 ] || rm -f "$dir/pids"
  return $rc
}

any_running() {
  local dir=$1 n pid path
  [ -f "$dir/pids" ] || return 1
  while read -r n pid path; do
    is_ours "$pid" "$path" && return 0
  done <"$dir/pids"
  return 1
}

# Starts a daemon in the background with its output in DIR/NAME.log; records its PID.
launch() {
  local dir=$1 name=$2
  shift 2
  # No inherited stdio (a caller reading our output would wait for them) and not the port lock.
  "$BIN/$name" "$@" </dev/null >"$dir/$name.log" 2>&1 8>&- 9>&- &
  echo "$name $! $BIN/$name" >>"$dir/pids"
  LAUNCHED_PID=$!
}

# Prints the end of DIR/NAME.log for each NAME given.
log_tail() {
  local dir=$1 name
  shift
  for name in "$@"; do
    [ -s "$dir/$name.log" ] || continue
    echo "--- last lines of $dir/$name.log" >&2
    tail -n 25 "$dir/$name.log" >&2
  done
}

write_certs() {
  local certs=$1
  mkdir -p "$certs"
  cat >"$certs/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = nbd-testenv
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost, IP:10.0.0.1, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
authorityKeyIdentifier = keyid
EOF
  (
    cd "$certs"
    # Service-account token signing key pair.
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
    # A CA of our own and the apiserver's serving certificate, so clients verify TLS for real.
    openssl req -x509 -config openssl.cnf -extensions ca -newkey rsa:2048 -nodes \
      -keyout ca.key -out ca.crt -days 3650 -subj "/CN=nbd-testenv-ca"
    openssl req -new -config openssl.cnf -newkey rsa:2048 -nodes \
      -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver"
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -extfile openssl.cnf -extensions server -days 3650 -out apiserver.crt
    chmod 600 sa.key ca.key apiserver.key
  ) >"$certs/openssl.log" 2>&1 || {
    cat "$certs/openssl.log" >&2
    die "creating certificates and keys in $certs failed"
  }
}

write_kubeconfig() {
  local file=$1 server=$2 ca=$3 token=$4
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: nbd-testenv
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$ca")
users:
- name: admin
  user:
    token: $token
contexts:
- name: nbd-testenv
  context:
    cluster: nbd-testenv
    user: admin
    namespace: default
current-context: nbd-testenv
EOF
  chmod 600 "$file"
}

# Seconds left until the start deadline.
remaining() { echo $((DEADLINE - SECONDS)); }

# Waits until COMMAND succeeds, the daemon NAME/PID dies (returns 2) or the deadline passes (1).
wait_for() {
  local pid=$1 path=$2
  shift 2
  while :; do
    "$@" >/dev/null 2>&1 && return 0
    is_ours "$pid" "$path" || return 2
    [ "$(remaining)" -gt 0 ] || return 1
    sleep 0.2
  done
}

# Healthy, and really ours: the member behind the client URL has our (unique) peer URL, not
# that of another etcd that happens to hold the port.
# shellcheck disable=SC2317 # invoked indirectly (wait_for "$@" / trap)
etcd_healthy() {
  local url=$1 peer=$2
  curl -fsS --max-time 2 "$url/health" | grep -q '"health":"true"' &&
    curl -fsS --max-time 2 -X POST -d '{}' "$url/v3/cluster/member/list" | grep -qF "\"$peer\""
}

# Our apiserver (not whoever else answers on the port) has bound its secure port.
# shellcheck disable=SC2317 # invoked indirectly (wait_for "$@" / trap)
apiserver_listening() {
  grep -qF "Serving securely on 127.0.0.1:$2" "$1"
}

# shellcheck disable=SC2317 # invoked indirectly (wait_for "$@" / trap)
apiserver_ready() {
  local dir=$1 server=$2 token=$3
  [ "$(curl -sS --max-time 3 --cacert "$dir/certs/ca.crt" -H "Authorization: Bearer $token" \
    "$server/readyz")" = ok ]
}

# shellcheck disable=SC2317 # invoked indirectly (wait_for "$@" / trap)
controllers_started() {
  grep -q 'Started "garbagecollector"' "$1" && grep -q 'Started "namespace"' "$1"
}

cmd_start() {
  [ $# -eq 1 ] || usage
  local dir=$1
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local tool
  for tool in curl openssl base64 ps; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
  done
  (cmd_build)
  any_running "$dir" && die "an environment is already running in $dir; run: $0 stop $dir"

  local t0=$SECONDS
  # A fresh environment: drop the state of an earlier one (only what this script creates).
  rm -rf "$dir/etcd" "$dir/certs"
  rm -f "$dir/pids" "$dir/env" "$dir/kubeconfig" "$dir/tokens.csv" "$dir"/{etcd,kube-apiserver,kube-controller-manager}.log
  rm -f "$dir/audit.log" "$dir/audit-policy.yaml"
  START_DIR=$dir
  START_OK=0
  trap 'on_start_exit' EXIT
  trap 'exit 130' INT TERM

  write_certs "$dir/certs"
  local token
  token=$(openssl rand -hex 24)
  echo "$token,admin,admin,system:masters" >"$dir/tokens.csv"
  chmod 600 "$dir/tokens.csv"
  # Every request made with a ServiceAccount's credentials is audited (who, verb, resource, decision),
  # so tests can compare what an operator running with a chart's identity did with what RBAC grants it.
  cat >"$dir/audit-policy.yaml" <<'EOF_POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
EOF_POLICY

  # Ports are picked and bound under a lock shared by all starts using this cache, so concurrent
  # starts cannot pick the same free port; a collision with anything else (address already in
  # use) is retried with new ports.
  exec 8>>"$CACHE_ROOT/.ports.lock"
  flock -w "$READY_TIMEOUT" 8 || start_failed "$dir" "timed out waiting for $CACHE_ROOT/.ports.lock"
  DEADLINE=$((SECONDS + READY_TIMEOUT))
  local etcd_port peer_port api_port etcd_url server etcd_pid api_pid rc
  for _ in 1 2 3 4 5; do
    read -r etcd_port peer_port api_port < <(free_ports 3)
    etcd_url=http://127.0.0.1:$etcd_port
    server=https://127.0.0.1:$api_port

    rm -rf "$dir/etcd"
    launch "$dir" etcd --name test --data-dir "$dir/etcd" \
      --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
      --listen-peer-urls "http://127.0.0.1:$peer_port" \
      --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
      --initial-cluster "test=http://127.0.0.1:$peer_port" \
      --initial-cluster-state new --logger zap --log-level warn
    etcd_pid=$LAUNCHED_PID
    rc=0
    wait_for "$etcd_pid" "$BIN/etcd" etcd_healthy "$etcd_url" "http://127.0.0.1:$peer_port" || rc=$?
    if [ $rc -eq 2 ] && grep -q 'address already in use' "$dir/etcd.log"; then
      stop_dir "$dir"
      continue
    fi
    [ $rc -eq 0 ] || start_failed "$dir" "etcd did not become healthy on $etcd_url" etcd

    launch "$dir" kube-apiserver \
      --etcd-servers="$etcd_url" \
      --bind-address=127.0.0.1 --secure-port="$api_port" --insecure-port=0 \
      --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \
      --cert-dir="$dir/certs" \
      --tls-cert-file="$dir/certs/apiserver.crt" --tls-private-key-file="$dir/certs/apiserver.key" \
      --service-account-issuer=https://kubernetes.default.svc \
      --service-account-key-file="$dir/certs/sa.pub" \
      --service-account-signing-key-file="$dir/certs/sa.key" \
      --token-auth-file="$dir/tokens.csv" \
      --authorization-mode=RBAC \
      --service-cluster-ip-range=10.0.0.0/24 \
      --allow-privileged=true \
      --disable-admission-plugins=ServiceAccount \
      --audit-policy-file="$dir/audit-policy.yaml" \
      --audit-log-path="$dir/audit.log" --audit-log-format=json
    api_pid=$LAUNCHED_PID
    rc=0
    wait_for "$api_pid" "$BIN/kube-apiserver" \
      apiserver_listening "$dir/kube-apiserver.log" "$api_port" || rc=$?
    if [ $rc -eq 2 ] && grep -q 'address already in use' "$dir/kube-apiserver.log"; then
      stop_dir "$dir"
      continue
    fi
    [ $rc -eq 0 ] || start_failed "$dir" "kube-apiserver did not listen on $server" kube-apiserver etcd
    break
  done
  exec 8>&-
  if [ -z "${api_pid:-}" ] || ! is_ours "$api_pid" "$BIN/kube-apiserver"; then
    start_failed "$dir" "no free ports after 5 attempts" etcd kube-apiserver
  fi

  write_kubeconfig "$dir/kubeconfig" "$server" "$dir/certs/ca.crt" "$token"
  rc=0
  wait_for "$api_pid" "$BIN/kube-apiserver" apiserver_ready "$dir" "$server" "$token" || rc=$?
  [ $rc -eq 0 ] || start_failed "$dir" "kube-apiserver did not become ready ($server/readyz)" \
    kube-apiserver etcd

  launch "$dir" kube-controller-manager \
    --kubeconfig="$dir/kubeconfig" \
    --controllers=garbagecollector,namespace \
    --leader-elect=false --port=0 --secure-port=0
  local kcm_pid=$LAUNCHED_PID
  rc=0
  wait_for "$kcm_pid" "$BIN/kube-controller-manager" \
    controllers_started "$dir/kube-controller-manager.log" || rc=$?
  [ $rc -eq 0 ] || start_failed "$dir" "kube-controller-manager did not start its controllers" \
    kube-controller-manager kube-apiserver

  {
    printf 'export KUBECONFIG=%q\n' "$dir/kubeconfig"
    printf 'export NBD_TESTENV_DIR=%q\n' "$dir"
    printf 'export NBD_TESTENV_SERVER=%q\n' "$server"
    printf 'export NBD_TESTENV_TOKEN=%q\n' "$token"
    printf 'export NBD_TESTENV_CA_FILE=%q\n' "$dir/certs/ca.crt"
    printf 'export NBD_TESTENV_AUDIT_LOG=%q\n' "$dir/audit.log"
    printf 'export NBD_TESTENV_ETCD=%q\n' "$etcd_url"
    printf 'export NBD_TESTENV_ETCD_PID=%q\n' "$etcd_pid"
    printf 'export NBD_TESTENV_APISERVER_PID=%q\n' "$api_pid"
    printf 'export NBD_TESTENV_CONTROLLER_MANAGER_PID=%q\n' "$kcm_pid"
  } >"$dir/env"
  START_OK=1
  echo "$PROG: Kubernetes v$K8S_VERSION ready at $server in $((SECONDS - t0)) s;" \
    "export KUBECONFIG=$dir/kubeconfig"
}

start_failed() {
  local dir=$1 msg=$2
  shift 2
  echo "$PROG: start failed: $msg" >&2
  log_tail "$dir" "$@"
  exit 1
}

# On any failed or interrupted start: stop whatever was started.
# shellcheck disable=SC2317 # invoked indirectly (wait_for "$@" / trap)
on_start_exit() {
  local rc=$?
  if [ "${START_OK:-0}" != 1 ] && [ -n "${START_DIR:-}" ]; then
    stop_dir "$START_DIR" || true
    [ "$rc" -ne 0 ] || rc=1
  fi
  exit "$rc"
}

cmd_stop() {
  [ $# -eq 1 ] || usage
  local dir=$1
  [ -d "$dir" ] || return 0
  stop_dir "$dir" || die "could not stop everything recorded in $dir/pids"
}

main() {
  [ $# -ge 1 ] || usage
  local cmd=$1
  shift
  case "$cmd" in
    build) [ $# -eq 0 ] || usage; cmd_build ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    __build-steps) build_steps "$@" ;; # internal: see cmd_build
    -h | --help | help) usage ;;
    *) usage ;;
  esac
}

# On one line: bash has read all of it before running main, so editing this file while it
# runs cannot derail it.
main "$@"; exit
