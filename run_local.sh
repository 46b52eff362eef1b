#!/usr/bin/env bash
# Local end-to-end run: Pub/Sub + BigQuery emulators, the streaming pipeline on
# the DirectRunner and the event simulator; progress every ~10 s; a JSON run
# summary as the LAST line of output, whatever happens (normal end, error,
# Ctrl-C/TERM). Everything it starts is stopped by PID (process groups).
#
# Usage: ./run_local.sh [--duration SECONDS] [--config PATH] [--rate N]
#                       [--drift-after SECONDS] [--replay FILE [--bootstrap-rows N]]
#                       [--setup-only] [-- EXTRA PIPELINE ARGS...]
#
#   --duration SECONDS  publish for SECONDS, drain (until caught up; gives up after
#                       DRAIN_SECONDS, 120, without progress, or DRAIN_MAX_SECONDS, 900), stop.
#                       Default: run until Ctrl-C (with --replay: until the file ends).
#   --config PATH       dataset config (default configs/traffic.yaml)
#   --rate N            events per second (default 100; the accelerated local runner
#                       sustains 80-195 on a shared 2-core machine, more when quiet)
#   --drift-after S     the simulator's concept drift (road works) starts S seconds
#                       in (default: 40% of --duration; none without --duration)
#   --replay FILE       publish this JSONL/CSV file (described by --config), in file
#                       order, event times rebased to now, instead of the simulator.
#                       Needed for configs the traffic simulator cannot produce.
#   --bootstrap-rows N  with --replay: train the first model on the file's first N
#                       valid rows (trainer.bootstrap --from-file) and replay the rest;
#                       without it, a replay starts cold (no model until a retrain).
#   --setup-only        set up venv, emulators and resources, print the summary, stop.
#
# The loop: a first model is bootstrapped from simulated history into the
# registry (<state dir>/registry), the pipeline predicts with the current
# version and publishes retraining triggers, the launcher trains, gates and
# promotes new versions, which the pipeline picks up without a restart.
#
# Environment: PUBSUB_PORT (8085), BQ_REST_PORT (9050), BQ_GRPC_PORT (9060),
# PROJECT (local-project), TOPIC, SUBSCRIPTION, BQ_DATASET (derived from the
# config name), DRAIN_SECONDS (120), DRAIN_MAX_SECONDS (900), PROGRESS_SECONDS (10),
# RUN_LOCAL_STATE_DIR (.local/run), SIMULATOR_ARGS (extra simulator flags; not with --replay),
# DAY_ORIGIN (epoch second the simulated day starts; default: 05:00 at start-up).
# Logs: <state dir>/pipeline.log, simulator.log, *-emulator.log.

set -Eeuo pipefail
cd "$(dirname "$0")"

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }

DURATION=""
DRIFT_AFTER=""
CONFIG="configs/traffic.yaml"
RATE=100
SETUP_ONLY=0
REPLAY=""             # --replay FILE: the source instead of the simulator
BOOTSTRAP_ROWS=""     # --bootstrap-rows N: first model from the file's first N valid rows
PIPELINE_EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="${2:-}"; shift 2 ;;
    --duration=*) DURATION="${1#*=}"; shift ;;
    --drift-after) DRIFT_AFTER="${2:-}"; shift 2 ;;
    --drift-after=*) DRIFT_AFTER="${1#*=}"; shift ;;
    --config) CONFIG="${2:-}"; shift 2 ;;
    --config=*) CONFIG="${1#*=}"; shift ;;
    --rate) RATE="${2:-}"; shift 2 ;;
    --rate=*) RATE="${1#*=}"; shift ;;
    --replay) REPLAY="${2:-}"; shift 2 ;;
    --replay=*) REPLAY="${1#*=}"; shift ;;
    --bootstrap-rows) BOOTSTRAP_ROWS="${2:-}"; shift 2 ;;
    --bootstrap-rows=*) BOOTSTRAP_ROWS="${1#*=}"; shift ;;
    --setup-only) SETUP_ONLY=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; PIPELINE_EXTRA=("$@"); break ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -z "$DURATION" || "$DURATION" =~ ^[0-9]+$ ]] || { echo "--duration must be whole seconds" >&2; exit 2; }
[[ "$RATE" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "--rate must be a number" >&2; exit 2; }
[ -f "$CONFIG" ] || { echo "config $CONFIG not found" >&2; exit 2; }
if [ -n "$REPLAY" ]; then
  [ -f "$REPLAY" ] || { echo "--replay: file $REPLAY not found" >&2; exit 2; }
  [[ "$REPLAY" =~ \.(jsonl|ndjson|json|csv)$ ]] ||
    { echo "--replay: $REPLAY must be JSON Lines (.jsonl/.ndjson/.json) or .csv" >&2; exit 2; }
  [ -z "$DRIFT_AFTER" ] || { echo "--drift-after is the simulator's; it does not apply to --replay" >&2; exit 2; }
fi
if [ -n "$BOOTSTRAP_ROWS" ]; then
  [ -n "$REPLAY" ] || { echo "--bootstrap-rows needs --replay FILE (the rows come from that file)" >&2; exit 2; }
  [[ "$BOOTSTRAP_ROWS" =~ ^[1-9][0-9]*$ ]] || { echo "--bootstrap-rows must be a positive whole number of rows" >&2; exit 2; }
fi

STATE_DIR="${RUN_LOCAL_STATE_DIR:-.local/run}"
PROJECT="${PROJECT:-local-project}"
PUBSUB_PORT="${PUBSUB_PORT:-8085}"
BQ_REST_PORT="${BQ_REST_PORT:-9050}"
BQ_GRPC_PORT="${BQ_GRPC_PORT:-9060}"
DRAIN_SECONDS="${DRAIN_SECONDS:-120}"
DRAIN_MAX_SECONDS="${DRAIN_MAX_SECONDS:-900}"
PROGRESS_SECONDS="${PROGRESS_SECONDS:-10}"
STATS_FILE="$STATE_DIR/publisher-stats.json"
IDS_FILE="$STATE_DIR/published-ids.txt"  # every published message id, for reconciliation
PIPELINE_LOG="$STATE_DIR/pipeline.log"
SIMULATOR_LOG="$STATE_DIR/simulator.log"
LAUNCHER_LOG="$STATE_DIR/launcher.log"

PY=""                 # venv python, once set up
PIPELINE_PID=""
SIMULATOR_PID=""
LAUNCHER_PID=""
HELPER_PID=""         # a long-running helper (drain wait), killed on exit
EMULATORS_STARTED=0
# completed | interrupted | setup_only | pipeline_died | simulator_failed | error; the
# summary turns "completed" into "incomplete" when published events never landed
# (`unaccounted`, `events_not_processed`) or the pipeline did not drain.
RUN_STATUS="error"
DRAINED="null"
FAILURE=""           # one-line reason when the run fails
PIPELINE_EXIT="null"
START_TS="$(date +%s)"

say() { echo "[run_local $(date +%H:%M:%S)] $*"; }

# Whether a process exists and is not a zombie.
running() { [ -n "${1:-}" ] && ps -o stat= -p "$1" 2>/dev/null | grep -qv '^Z'; }

# Stops the process group led by $1 (started with setsid): TERM, up to 15 s, KILL.
stop_group() {
  local pid="$1" name="$2" i
  [ -n "$pid" ] || return 0
  if running "$pid"; then
    say "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || true
    for i in $(seq 1 75); do
      running "$pid" || break
      sleep 0.2
    done
    running "$pid" && say "$name ignored SIGTERM; killing it"
  fi
  kill -KILL -- "-$pid" 2>/dev/null || true  # stragglers of the group
  wait "$pid" 2>/dev/null || true
}

show_log_tail() {
  say "last lines of $1:"
  tail -n "${2:-40}" "$1" 2>/dev/null | sed 's/^/    | /' || true
}

# summary_cmd SECONDS ARGS...: local.summary for this run, killed after SECONDS.
summary_cmd() {
  local limit="$1" stats=()
  shift
  [ -f "$STATS_FILE" ] && stats=(--stats-file "$STATS_FILE")
  [ -f "$IDS_FILE" ] && stats+=(--ids-file "$IDS_FILE")
  timeout "$limit" "$PY" -m local.summary --project "$PROJECT" --bq_dataset "$BQ_DATASET" \
    --config "$CONFIG" --started-at "$START_TS" ${stats[@]+"${stats[@]}"} "$@"
}

cleanup() {
  local rc=$? summary=""
  trap '' INT TERM
  trap - EXIT
  set +e
  [ "$RUN_STATUS" = "error" ] && [ "$rc" -eq 0 ] && RUN_STATUS="completed"
  if [ -n "$HELPER_PID" ]; then
    kill -TERM "$HELPER_PID" 2>/dev/null
    wait "$HELPER_PID" 2>/dev/null
  fi
  stop_group "$SIMULATOR_PID" simulator
  stop_group "$PIPELINE_PID" pipeline
  stop_group "$LAUNCHER_PID" launcher
  stop_group "${DASHBOARD_PID:-}" dashboard
  stop_group "${SERVING_PID:-}" "prediction service"
  stop_group "${FILE_TRIGGER_PID:-}" "file trigger"
  rm -f "$STATE_DIR/pipeline.pid" "$STATE_DIR/simulator.pid" "$STATE_DIR/launcher.pid"
  rm -f "$STATE_DIR/dashboard.pid" "$STATE_DIR/serving.pid" "$STATE_DIR/file-trigger.pid"
  local fields=(--field "run_status=$RUN_STATUS" --field "exit_code=$rc"
    --field "pipeline_exit_code=$PIPELINE_EXIT" --field "drained=$DRAINED"
    --field "state_dir=$STATE_DIR" --field "failure=${FAILURE:-null}")
  if [ -n "$PY" ] && [ -n "${BQ_DATASET:-}" ]; then
    if [ "$EMULATORS_STARTED" = 1 ]; then
      summary="$(summary_cmd 90 --json "${fields[@]}" 2>/dev/null | tail -n 1)"
    else
      summary="$(summary_cmd 60 --json --skip-bigquery "${fields[@]}" 2>/dev/null |
        tail -n 1)"
    fi
  fi
  if [ -n "$PY" ]; then
    timeout 60 "$PY" -m local.emulators stop --state-dir "$STATE_DIR" >/dev/null 2>&1 ||
      say "WARNING: stopping the emulators failed; see $STATE_DIR/*.pid"
  fi
  if [[ "$summary" != "{"* ]]; then
    summary="{\"run_status\":\"$RUN_STATUS\",\"exit_code\":$rc,\"errors\":[\"no summary: set-up did not get far enough (see messages above)\"]}"
  fi
  # The summary may have turned "completed" into "incomplete" (events never landed).
  local final_status
  final_status="$(sed -n 's/.*"run_status":"\([a-z_]*\)".*/\1/p' <<<"$summary")"
  say "done (${final_status:-$RUN_STATUS}); logs in $STATE_DIR"
  echo "$summary"
  exit "$rc"
}

on_signal() {
  RUN_STATUS="interrupted"
  say "received $1; stopping"
  exit "$2"
}

trap cleanup EXIT
trap 'on_signal SIGINT 130' INT
trap 'on_signal SIGTERM 143' TERM

# ----------------------------------------------------------------- set-up
mkdir -p "$STATE_DIR"
exec 9>"$STATE_DIR/run_local.lock"
if command -v flock >/dev/null && ! flock -n 9; then
  say "ERROR: another run_local.sh is using $STATE_DIR (set RUN_LOCAL_STATE_DIR to run a second one)"
  exit 1
fi

# shellcheck source=local/setup_env.sh
source local/setup_env.sh
setup_env
PY="$VENV_PY"

# The config's name, and whether the traffic simulator produces its records
# (then it is the default source and bootstraps the first model).
read -r CFG_NAME SIMULATED < <("$PY" -c 'import sys
from dataset.config import load_config
from simulator.messages import check_config_matches
from simulator.traffic import TrafficSimulator
config = load_config(sys.argv[1])
try:
    check_config_matches(config, TrafficSimulator(n_sensors=1).reading(0, 0.0), "")
    simulated = config.label.source == "inline"
except ValueError:
    simulated = False
print(config.name, "yes" if simulated else "no")' "$CONFIG") || true
[ -n "${CFG_NAME:-}" ] || { FAILURE="config $CONFIG does not load"; exit 2; }
if [ -z "$REPLAY" ] && [ "$SIMULATED" != yes ]; then
  FAILURE="config $CONFIG does not describe the traffic simulator's readings: give --replay FILE"
  say "ERROR: the traffic simulator cannot produce records for $CONFIG; replay your own data with" \
    "--replay FILE (e.g. ./run_local.sh --config $CONFIG --replay data/<your file>.jsonl)"
  exit 2
fi
TOPIC="${TOPIC:-${CFG_NAME}-events}"
SUBSCRIPTION="${SUBSCRIPTION:-${CFG_NAME}-pipeline}"
BQ_DATASET="${BQ_DATASET:-${CFG_NAME}_local}"
RETRAIN_TOPIC="${RETRAIN_TOPIC:-${CFG_NAME}-retrain}"
LAUNCHER_SUBSCRIPTION="${LAUNCHER_SUBSCRIPTION:-${CFG_NAME}-launcher}"
MODEL_REGISTRY="${MODEL_REGISTRY:-$STATE_DIR/registry}"
LAUNCHER_STATS_FILE="$STATE_DIR/launcher-stats.json"
export MODEL_REGISTRY LAUNCHER_STATS_FILE

if ! "$PY" -m local.emulators check --only pubsub >/dev/null; then
  FAILURE="Pub/Sub emulator not installed"
  exit 3  # the message above says how to install it
fi

# Leftovers of a run that was killed without its trap (SIGKILL, crash).
for name in pipeline simulator launcher; do
  old="$(cat "$STATE_DIR/$name.pid" 2>/dev/null || true)"
  if [ -n "$old" ] && running "$old" && tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null |
    grep -q -e pipelines.main -e local.pipeline -e simulator.publish -e trainer.launcher; then
    say "stopping leftover $name of an earlier run (pid $old)"
    kill -KILL -- "-$old" 2>/dev/null || true
  fi
  rm -f "$STATE_DIR/$name.pid"
done
"$PY" -m local.emulators stop --state-dir "$STATE_DIR" 2>/dev/null || true
rm -f "$STATS_FILE" "$IDS_FILE"

say "starting emulators (Pub/Sub :$PUBSUB_PORT, BigQuery :$BQ_REST_PORT/:$BQ_GRPC_PORT)"
EMULATORS_STARTED=1  # from here on, stop them on exit (stop is a no-op if none started)
if ! exports="$("$PY" -m local.emulators start --state-dir "$STATE_DIR" --project "$PROJECT" \
  --pubsub-port "$PUBSUB_PORT" --bq-rest-port "$BQ_REST_PORT" --bq-grpc-port "$BQ_GRPC_PORT")"; then
  EMULATORS_STARTED=0
  FAILURE="emulators did not start"
  say "ERROR: the emulators did not start (see above; ports are set with PUBSUB_PORT, BQ_REST_PORT, BQ_GRPC_PORT)"
  exit 1
fi
eval "$exports"
export PUBSUB_EMULATOR_HOST BIGQUERY_EMULATOR_HOST GOOGLE_APPLICATION_CREDENTIALS
say "PUBSUB_EMULATOR_HOST=$PUBSUB_EMULATOR_HOST BIGQUERY_EMULATOR_HOST=$BIGQUERY_EMULATOR_HOST"

timeout 120 "$PY" -m dataset.resources --project "$PROJECT" --config "$CONFIG" \
  --topic "$TOPIC" --subscription "$SUBSCRIPTION" --bq_dataset "$BQ_DATASET"
# Retraining requests: the pipeline publishes, the launcher subscribes.
timeout 120 "$PY" -m dataset.resources --project "$PROJECT" --config "$CONFIG" \
  --topic "$RETRAIN_TOPIC" --subscription "$LAUNCHER_SUBSCRIPTION" --bq_dataset "$BQ_DATASET"

# A fresh registry and launcher state per run (the emulators are in-memory too).
rm -rf "$MODEL_REGISTRY" "$STATE_DIR/launcher"
# The simulated day (600 s) starts so that it is 05:00 now: the live run begins
# around 06:00 after the bootstrap, the drift lands in daytime, when the road
# works change labels (at night nobody is congested either way), and a 300 s run
# ends near the evening rush. Bootstrap history and publisher share the origin.
DAY_ORIGIN="${DAY_ORIGIN:-$(( $(date +%s) - 125 ))}"
REPLAY_SOURCE="$REPLAY"  # what the publisher replays (the rest after a file bootstrap)
if [ -n "$REPLAY" ] && [ -n "$BOOTSTRAP_ROWS" ]; then
  REPLAY_SOURCE="$STATE_DIR/replay-rest.${REPLAY##*.}"
  say "bootstrapping the first model from the first $BOOTSTRAP_ROWS valid rows of $REPLAY"
  boot_rc=0
  timeout 600 "$PY" -m trainer.bootstrap --config "$CONFIG" --registry "$MODEL_REGISTRY" \
    --project "$PROJECT" --bq_dataset "$BQ_DATASET" \
    --from-file "$REPLAY" --rows "$BOOTSTRAP_ROWS" --rest-file "$REPLAY_SOURCE" \
    >"$STATE_DIR/bootstrap.log" 2>&1 || boot_rc=$?
  if [ "$boot_rc" -eq 1 ] && [ -f "$REPLAY_SOURCE" ]; then
    say "WARNING: the gates rejected the bootstrap model; starting cold (see $STATE_DIR/bootstrap.log)"
  elif [ "$boot_rc" -ne 0 ]; then
    show_log_tail "$STATE_DIR/bootstrap.log" 30
    FAILURE="bootstrap from $REPLAY failed"
    exit "$([ "$boot_rc" -eq 2 ] && echo 2 || echo 1)"
  fi
  tail -n 1 "$STATE_DIR/bootstrap.log"
elif [ -n "$REPLAY" ]; then
  say "replaying $REPLAY without --bootstrap-rows: the pipeline starts without a model (cold start)"
elif [ "$SIMULATED" = yes ]; then
  say "bootstrapping the first model from simulated history (registry: $MODEL_REGISTRY)"
  timeout 600 "$PY" -m trainer.bootstrap --config "$CONFIG" --registry "$MODEL_REGISTRY" \
    --project "$PROJECT" --bq_dataset "$BQ_DATASET" \
    --day-origin "$DAY_ORIGIN" \
    --events "${BOOTSTRAP_EVENTS:-20000}" --if-empty >"$STATE_DIR/bootstrap.log" 2>&1 ||
    { show_log_tail "$STATE_DIR/bootstrap.log" 30; FAILURE="bootstrap failed"; exit 1; }
  tail -n 1 "$STATE_DIR/bootstrap.log"
fi

if [ "$SETUP_ONLY" = 1 ]; then
  RUN_STATUS="setup_only"
  say "set-up only: emulators and resources are ready; stopping"
  exit 0
fi

# ----------------------------------------------------------------- run
say "starting the pipeline (log: $PIPELINE_LOG)"
setsid "$PY" -m local.pipeline --runner DirectRunner --streaming --project "$PROJECT" \
  --dataset_config "$CONFIG" \
  --input_subscription "projects/$PROJECT/subscriptions/$SUBSCRIPTION" \
  --bq_dataset "$BQ_DATASET" --model_registry "$MODEL_REGISTRY" --model_poll_seconds 1 \
  --retrain_topic "projects/$PROJECT/topics/$RETRAIN_TOPIC" \
  ${PIPELINE_EXTRA[@]+"${PIPELINE_EXTRA[@]}"} \
  >"$PIPELINE_LOG" 2>&1 </dev/null 9>&- &
PIPELINE_PID=$!
echo "$PIPELINE_PID" >"$STATE_DIR/pipeline.pid"

say "starting the training launcher (log: $LAUNCHER_LOG)"
setsid "$PY" -m trainer.launcher --project "$PROJECT" --config "$CONFIG" \
  --subscription "projects/$PROJECT/subscriptions/$LAUNCHER_SUBSCRIPTION" \
  --bq_dataset "$BQ_DATASET" --registry "$MODEL_REGISTRY" --backend local --warm-trainer \
  --state-dir "$STATE_DIR/launcher" --stats-file "$LAUNCHER_STATS_FILE" \
  >"$LAUNCHER_LOG" 2>&1 </dev/null 9>&- &
LAUNCHER_PID=$!
echo "$LAUNCHER_PID" >"$STATE_DIR/launcher.pid"

# ----------------------------------------------------------------- serve and operate
# The dashboard (retrain now, roll back, what the loop did), the online
# prediction service (serving/app.py, when this checkout has it) and the
# file-arrival trigger: a JSON Lines file dropped into $INCOMING_DIR is
# validated, loaded into the training table and starts one training run.
# Ports: DASHBOARD_PORT (8080), SERVING_PORT (8081). Logs: dashboard.log,
# serving.log, file-trigger.log in the state dir.
DASHBOARD_PORT="${DASHBOARD_PORT:-8080}"
SERVING_PORT="${SERVING_PORT:-8081}"
INCOMING_DIR="$STATE_DIR/incoming"
DASHBOARD_PID=""
SERVING_PID=""
FILE_TRIGGER_PID=""
for name in dashboard serving file-trigger; do  # leftovers of a killed run
  old="$(cat "$STATE_DIR/$name.pid" 2>/dev/null || true)"
  if [ -n "$old" ] && running "$old" && tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null |
    grep -q -e dashboard.app -e serving.app -e trainer.file_trigger; then
    say "stopping leftover $name of an earlier run (pid $old)"
    kill -KILL -- "-$old" 2>/dev/null || true
  fi
  rm -f "$STATE_DIR/$name.pid"
done
# wait_http URL SECONDS: until URL answers (any HTTP status), at most SECONDS.
wait_http() {
  timeout "$2" "$PY" -c 'import sys, time, urllib.error, urllib.request
while True:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2)
        break
    except urllib.error.HTTPError:
        break
    except OSError:
        time.sleep(0.25)' "$1" 2>/dev/null
}
say "starting the dashboard on :$DASHBOARD_PORT (log: $STATE_DIR/dashboard.log)"
setsid "$PY" -m dashboard.app --project "$PROJECT" --bq_dataset "$BQ_DATASET" \
  --config "$CONFIG" --registry "$MODEL_REGISTRY" \
  --retrain_topic "projects/$PROJECT/topics/$RETRAIN_TOPIC" --port "$DASHBOARD_PORT" \
  >"$STATE_DIR/dashboard.log" 2>&1 </dev/null 9>&- &
DASHBOARD_PID=$!
echo "$DASHBOARD_PID" >"$STATE_DIR/dashboard.pid"
if [ -f serving/app.py ]; then
  say "starting the prediction service on :$SERVING_PORT (log: $STATE_DIR/serving.log)"
  # --project/--bq_dataset: with history_features, per-key history from the training table.
  setsid "$PY" -m serving.app --config "$CONFIG" --registry "$MODEL_REGISTRY" \
    --project "$PROJECT" --bq_dataset "$BQ_DATASET" \
    --port "$SERVING_PORT" >"$STATE_DIR/serving.log" 2>&1 </dev/null 9>&- &
  SERVING_PID=$!
  echo "$SERVING_PID" >"$STATE_DIR/serving.pid"
fi
mkdir -p "$INCOMING_DIR"
say "starting the file trigger on $INCOMING_DIR (log: $STATE_DIR/file-trigger.log)"
setsid "$PY" -m trainer.file_trigger --watch "$INCOMING_DIR" --config "$CONFIG" \
  --project "$PROJECT" --bq_dataset "$BQ_DATASET" \
  --retrain_topic "projects/$PROJECT/topics/$RETRAIN_TOPIC" \
  >"$STATE_DIR/file-trigger.log" 2>&1 </dev/null 9>&- &
FILE_TRIGGER_PID=$!
echo "$FILE_TRIGGER_PID" >"$STATE_DIR/file-trigger.pid"
if wait_http "http://127.0.0.1:$DASHBOARD_PORT/healthz" 60; then
  say "dashboard:          http://127.0.0.1:$DASHBOARD_PORT/"
else
  say "WARNING: the dashboard is not answering on :$DASHBOARD_PORT"
  show_log_tail "$STATE_DIR/dashboard.log" 20
fi
if [ -n "$SERVING_PID" ]; then
  if wait_http "http://127.0.0.1:$SERVING_PORT/healthz" 90; then
    say "prediction service: http://127.0.0.1:$SERVING_PORT/v1/predict"
  else
    say "WARNING: the prediction service is not answering on :$SERVING_PORT"
    show_log_tail "$STATE_DIR/serving.log" 20
  fi
fi
say "file trigger:       drop JSON Lines files into $INCOMING_DIR"

PUBLISH_DEADLINE=""  # a replay is stopped (SIGTERM: flush, final stats, exit 0) at --duration
if [ -n "$REPLAY" ]; then
  [ -n "$DURATION" ] && PUBLISH_DEADLINE=$(($(date +%s) + DURATION))
  say "replaying $REPLAY_SOURCE: $RATE rows/s, event times rebased to now, for" \
    "${DURATION:+at most $DURATION s or }until the file ends (log: $SIMULATOR_LOG)"
  setsid "$PY" -m simulator.publish replay "$REPLAY_SOURCE" --config "$CONFIG" \
    --topic "projects/$PROJECT/topics/$TOPIC" --rate "$RATE" --rebase-time \
    --stats-file "$STATS_FILE" --ids-file "$IDS_FILE" \
    >"$SIMULATOR_LOG" 2>&1 </dev/null 9>&- &
else
  # Without --duration the simulator runs until stopped (Ctrl-C ends the run).
  SIM_DURATION=()
  [ -n "$DURATION" ] && SIM_DURATION=(--duration "$DURATION")
  if [ -z "$DRIFT_AFTER" ] && [ -n "$DURATION" ]; then DRIFT_AFTER=$((DURATION * 2 / 5)); fi
  [ -n "$DRIFT_AFTER" ] && SIM_DURATION+=(--drift-after "$DRIFT_AFTER")
  say "starting the simulator: $RATE events/s for ${DURATION:-unlimited} s (log: $SIMULATOR_LOG)"
  # shellcheck disable=SC2086  # SIMULATOR_ARGS is split on purpose
  setsid "$PY" -m simulator.publish simulate --config "$CONFIG" \
    --topic "projects/$PROJECT/topics/$TOPIC" --rate "$RATE" ${SIM_DURATION[@]+"${SIM_DURATION[@]}"} \
    --malformed-fraction 0.02 --late-fraction 0.02 --duplicate-fraction 0.01 \
    --day-origin "$DAY_ORIGIN" \
    --stats-file "$STATS_FILE" --ids-file "$IDS_FILE" ${SIMULATOR_ARGS:-} \
    >"$SIMULATOR_LOG" 2>&1 </dev/null 9>&- &
fi
SIMULATOR_PID=$!
echo "$SIMULATOR_PID" >"$STATE_DIR/simulator.pid"

pipeline_died() {
  PIPELINE_EXIT=0
  wait "$PIPELINE_PID" 2>/dev/null || PIPELINE_EXIT=$?
  PIPELINE_PID=""
  RUN_STATUS="pipeline_died"
  FAILURE="pipeline exited early with code $PIPELINE_EXIT; see $PIPELINE_LOG"
  say "ERROR: the pipeline process exited early (exit code $PIPELINE_EXIT)"
  show_log_tail "$PIPELINE_LOG" 40
  exit 1
}

next_progress=$(($(date +%s) + PROGRESS_SECONDS))
while running "$SIMULATOR_PID"; do
  running "$PIPELINE_PID" || pipeline_died
  running "$LAUNCHER_PID" || { FAILURE="launcher exited early; see $LAUNCHER_LOG"; show_log_tail "$LAUNCHER_LOG" 30; exit 1; }
  if [ -n "$PUBLISH_DEADLINE" ] && [ "$(date +%s)" -ge "$PUBLISH_DEADLINE" ]; then
    say "--duration reached: stopping the replay"
    kill -TERM "$SIMULATOR_PID" 2>/dev/null || true
    PUBLISH_DEADLINE=""
  fi
  if [ "$(date +%s)" -ge "$next_progress" ]; then
    summary_cmd 30 --progress 2>/dev/null || say "(progress unavailable)"
    next_progress=$(($(date +%s) + PROGRESS_SECONDS))
  fi
  sleep 1
done
sim_rc=0
wait "$SIMULATOR_PID" 2>/dev/null || sim_rc=$?
SIMULATOR_PID=""
if [ "$sim_rc" -ne 0 ]; then
  RUN_STATUS="simulator_failed"
  FAILURE="simulator exited with code $sim_rc; see $SIMULATOR_LOG"
  say "ERROR: the simulator exited with code $sim_rc"
  show_log_tail "$SIMULATOR_LOG" 30
  exit 1
fi
running "$PIPELINE_PID" || pipeline_died

say "simulator finished; draining (while rows keep landing, at most $DRAIN_MAX_SECONDS s; gives up after $DRAIN_SECONDS s without progress)"
summary_cmd $((DRAIN_MAX_SECONDS + 60)) --json --wait-drained "$DRAIN_SECONDS" --drain-max "$DRAIN_MAX_SECONDS" \
  --poll-seconds 5 >/dev/null 2>"$STATE_DIR/drain.log" &
HELPER_PID=$!
drain_rc=0
while running "$HELPER_PID"; do
  running "$PIPELINE_PID" || pipeline_died
  sleep 1
done
wait "$HELPER_PID" || drain_rc=$?
HELPER_PID=""
tail -n 1 "$STATE_DIR/drain.log" 2>/dev/null || true
if [ "$drain_rc" -eq 0 ]; then
  DRAINED=true
  say "drained: dead letters caught up, training rows stopped growing, online quality covers the last window (or that window expired: see the summary)"
else
  DRAINED=false
  say "WARNING: not drained (stalled for $DRAIN_SECONDS s or $DRAIN_MAX_SECONDS s in all; see $STATE_DIR/drain.log); stopping anyway"
fi
RUN_STATUS="completed"
exit 0
