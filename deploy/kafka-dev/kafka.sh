#!/usr/bin/env bash
# The local development broker: Apache Kafka 4.x in KRaft mode (one combined
# broker+controller on 127.0.0.1), assembled from Maven Central jars, so that
# tests and the demo run against a real broker on machines without Docker.
#
#   kafka.sh up       fetch jars once, format storage (first time), start, wait until ready
#   kafka.sh down     stop the broker this script started (by its pid); data is kept
#   kafka.sh reset    stop it and delete its data
#   kafka.sh status   say whether it runs
#   kafka.sh logs     print the broker log
#
# Environment:
#   KAFKA_PORT        client port (default 9092); the controller uses port+1
#   KAFKA_DEV_HOME    state directory (default: .cache/kafka-dev in the repo)
#   KAFKA_HEAP_OPTS   JVM heap (default -Xms1g -Xmx1g, as kafka-server-start.sh)
#   KAFKA_JVM_PERFORMANCE_OPTS  GC flags (default those of kafka-run-class.sh: G1,
#                     20 ms pause target, marking from 35 % occupancy)
#   KAFKA_SASL_PORT   when set, an extra SASL_PLAINTEXT listener with SCRAM users
#                     (see KAFKA_SCRAM_USERS, "user:password user2:password2")
#   KAFKA_SSL_PORT    when set, an extra SSL listener; it needs
#                     KAFKA_SSL_KEYSTORE (a PKCS12 file with the broker's key and
#                     certificate chain) and KAFKA_SSL_KEYSTORE_PASSWORD
#                     (KAFKA_SSL_KEY_PASSWORD: the key's, default the same); with
#                     KAFKA_SSL_TRUSTSTORE (PKCS12) and KAFKA_SSL_TRUSTSTORE_PASSWORD
#                     the broker also asks clients for certificates
#                     (KAFKA_SSL_CLIENT_AUTH: none, requested or required; default
#                     requested when a truststore is given)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
port="${KAFKA_PORT:-9092}"
controller_port="$((port + 1))"
home="${KAFKA_DEV_HOME:-$repo/.cache/kafka-dev}"
libs="$home/libs"
state="$home/run-$port"
pidfile="$state/kafka.pid"
logfile="$state/kafka.log"

die() { echo "kafka.sh: $*" >&2; exit 1; }

need_tools() {
  command -v java >/dev/null 2>&1 || die "Java 17+ is required for the local broker; install a JDK (Debian: apt-get install openjdk-17-jre-headless) or use 'docker compose up'."
  command -v mvn >/dev/null 2>&1 || die "Maven is required to fetch the Kafka jars; install it (Debian: apt-get install maven) or use 'docker compose up'."
}

fetch_jars() {
  # The pom is the cache key: a changed version re-fetches.
  local stamp="$libs/.pom.sha256"
  local want
  want="$(sha256sum "$here/pom.xml" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return; fi
  echo "kafka.sh: fetching Kafka jars from Maven Central (once) ..."
  rm -rf "$libs"; mkdir -p "$libs"
  mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$libs" \
    || die "Maven could not fetch the Kafka jars (see the output above)."
  echo "$want" > "$stamp"
}

running() {
  [[ -f "$pidfile" ]] || return 1
  local pid; pid="$(cat "$pidfile")"
  kill -0 "$pid" 2>/dev/null || return 1
  # Guard against a recycled pid: it must be our java process.
  grep -q "kafka.Kafka" "/proc/$pid/cmdline" 2>/dev/null
}

write_config() {
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port"
  local protocol_map="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  local advertised="PLAINTEXT://127.0.0.1:$port"
  local sasl=""
  if [[ -n "${KAFKA_SASL_PORT:-}" ]]; then
    listeners="$listeners,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT"
    protocol_map="$protocol_map,SASL_PLAINTEXT:SASL_PLAINTEXT"
    advertised="$advertised,SASL_PLAINTEXT://127.0.0.1:$KAFKA_SASL_PORT"
    local plain_users=""
    for cred in ${KAFKA_SCRAM_USERS:-}; do
      plain_users="$plain_users user_${cred%%:*}=\"${cred#*:}\""
    done
    sasl="listener.name.sasl_plaintext.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required$plain_users;"
  fi
  local ssl=""
  if [[ -n "${KAFKA_SSL_PORT:-}" ]]; then
    [[ -f "${KAFKA_SSL_KEYSTORE:-}" ]] || die "KAFKA_SSL_PORT needs KAFKA_SSL_KEYSTORE, a PKCS12 keystore file (got '${KAFKA_SSL_KEYSTORE:-}')"
    [[ -n "${KAFKA_SSL_KEYSTORE_PASSWORD:-}" ]] || die "KAFKA_SSL_PORT needs KAFKA_SSL_KEYSTORE_PASSWORD"
    listeners="$listeners,SSL://127.0.0.1:$KAFKA_SSL_PORT"
    protocol_map="$protocol_map,SSL:SSL"
    advertised="$advertised,SSL://127.0.0.1:$KAFKA_SSL_PORT"
    ssl="listener.name.ssl.ssl.keystore.type=PKCS12
listener.name.ssl.ssl.keystore.location=$KAFKA_SSL_KEYSTORE
listener.name.ssl.ssl.keystore.password=$KAFKA_SSL_KEYSTORE_PASSWORD
listener.name.ssl.ssl.key.password=${KAFKA_SSL_KEY_PASSWORD:-$KAFKA_SSL_KEYSTORE_PASSWORD}"
    if [[ -n "${KAFKA_SSL_TRUSTSTORE:-}" ]]; then
      ssl="$ssl
listener.name.ssl.ssl.truststore.type=PKCS12
listener.name.ssl.ssl.truststore.location=$KAFKA_SSL_TRUSTSTORE
listener.name.ssl.ssl.truststore.password=${KAFKA_SSL_TRUSTSTORE_PASSWORD:-}
listener.name.ssl.ssl.client.auth=${KAFKA_SSL_CLIENT_AUTH:-requested}"
    fi
  fi
  cat > "$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
controller.listener.names=CONTROLLER
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$protocol_map
inter.broker.listener.name=PLAINTEXT
log.dirs=$state/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
group.initial.rebalance.delay.ms=0
# Abort timed-out transactions within a second, not ten (tests freeze a worker past
# its transaction_timeout_ms; production brokers keep the default).
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
auto.create.topics.enable=false
delete.topic.enable=true
log.retention.hours=24
# Delete a deleted topic's files a second later, not a minute later (the default, 60000):
# the tests and benchmarks delete each run's topics, and the broker unlinking a run's few
# hundred MB a minute later stalled whichever run was going then for about a quarter of
# a second (docs/benchmarks.md, thirteenth round). Not 0: the broker then re-runs its
# delete task at once, over and over, and its scheduler threads kept 0.06-0.08 of a core
# busy even idle (twenty-seventh round). Production brokers keep the default.
log.segment.delete.delay.ms=1000
# Kafka's default segment size: with 64 MiB ones, each benchmark run rolled every input
# and output partition at once, and the rolls (the old segments flushed) stalled the
# shared cores for 0.1-0.3 s (docs/benchmarks.md, thirteenth round).
log.segment.bytes=1073741824
message.max.bytes=4194304
$sasl
$ssl
PROPS
}

cmd_up() {
  need_tools
  if running; then echo "kafka.sh: broker already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return; fi
  fetch_jars
  mkdir -p "$state"
  write_config
  local cp="$libs/*"
  local scram=()
  if [[ -n "${KAFKA_SASL_PORT:-}" ]]; then
    for cred in ${KAFKA_SCRAM_USERS:-}; do
      local user="${cred%%:*}" password="${cred#*:}"
      scram+=(--add-scram "SCRAM-SHA-256=[name=$user,password=$password]")
      scram+=(--add-scram "SCRAM-SHA-512=[name=$user,password=$password]")
    done
  fi
  # Format once: a restart (down, up) keeps the topics and offsets, as a real broker would.
  if [[ ! -f "$state/data/meta.properties" ]]; then
    java -cp "$cp" kafka.tools.StorageTool format \
        -t "$(java -cp "$cp" kafka.tools.StorageTool random-uuid)" \
        -c "$state/server.properties" "${scram[@]}" >"$state/format.log" 2>&1 \
      || { cat "$state/format.log" >&2; die "formatting KRaft storage failed"; }
  fi
  cat > "$state/log4j2.properties" <<'L4J'
rootLogger.level=WARN
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka
logger.kafka.level=INFO
logger.server.name=org.apache.kafka.server
logger.server.level=INFO
L4J
  # Kafka's own start scripts' JVM settings. With a heap of 256-768 MB and G1's default
  # 200 ms pause target, a benchmark sequence paused the broker 332 times for 2.4 s in
  # all (at most 94 ms); with these, 30 times for 0.4 s (at most 10 ms).
  local jvm_gc="-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35"
  jvm_gc+=" -XX:+ExplicitGCInvokesConcurrent"
  # setsid: the broker outlives the calling shell (make, pytest) until `down`.
  # shellcheck disable=SC2086
  setsid java ${KAFKA_HEAP_OPTS:--Xms1g -Xmx1g} ${KAFKA_JVM_PERFORMANCE_OPTS:-$jvm_gc} \
      -Dlog4j2.configurationFile="$state/log4j2.properties" \
      -cp "$cp" kafka.Kafka "$state/server.properties" >"$logfile" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  wait_ready
  echo "kafka.sh: broker ready on 127.0.0.1:$port (pid $(cat "$pidfile"))"
}

wait_ready() {
  # Ready means a client got metadata, not merely that the port is open.
  local deadline=$((SECONDS + 90))
  while (( SECONDS < deadline )); do
    # Just started, the process may not have exec'd java yet (its command line is still
    # the shell's, which `running` takes for another process): ask again a second later.
    running || { sleep 1; running; } \
      || { tail -40 "$logfile" >&2; die "the broker exited during start (log: $logfile)"; }
    if java -cp "$libs/*" -Dlog4j2.configurationFile="$state/log4j2.properties" \
         org.apache.kafka.tools.BrokerApiVersionsCommand \
         --bootstrap-server "127.0.0.1:$port" >/dev/null 2>&1; then
      return
    fi
    sleep 1
  done
  die "the broker did not become ready within 90 s (log: $logfile)"
}

cmd_down() {
  if ! running; then echo "kafka.sh: no broker of ours is running on port $port"; rm -f "$pidfile"; return; fi
  local pid; pid="$(cat "$pidfile")"
  kill -TERM "$pid"
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
  rm -f "$pidfile"
  echo "kafka.sh: broker stopped"
}

cmd_status() {
  if running; then echo "running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; else echo "not running"; return 3; fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  logs) cat "$logfile" ;;
  reset) cmd_down; rm -rf "$state"; echo "kafka.sh: data of the broker on port $port deleted" ;;
  *) echo "usage: $0 up|down|status|logs|reset" >&2; exit 2 ;;
esac
