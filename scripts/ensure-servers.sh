#!/usr/bin/env bash
# Start the loopback servers the integration tests use, if they are not already up.
# Each is started with the command its Debian package documents for a container-less box.
set -u
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
start() {
  local port=$1 name=$2; shift 2
  if up "$port"; then return 0; fi
  echo "starting $name on 127.0.0.1:$port" >&2
  "$@" >/dev/null 2>&1 || true
  for _ in $(seq 1 100); do up "$port" && return 0; sleep 0.1; done
  echo "warning: $name did not come up on $port (its tests will fail)" >&2
}
start 5432 postgresql pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql 2>/dev/null | head -1)" main start
start 3306 mariadb start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
start 6379 redis redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
start 5672 rabbitmq rabbitmq-server -detached
start 1883 mosquitto mosquitto -d -c /etc/mosquitto/mosquitto.conf
start 4222 nats start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
exit 0
