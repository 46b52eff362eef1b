#!/usr/bin/env bash
# Launch, update, drain and cancel the streaming job; deploy the launcher on Cloud Run.
#
#   templates/run.sh COMMAND --project P --bucket B [--region R] [--tag T] [--print-only]
#
#   launch        gcloud dataflow flex-template run: a new streaming job JOB_NAME
#   update        the same with --update: replaces the running job JOB_NAME in place,
#                 keeping its state. Steps are matched by name (templates/step_names.json);
#                 a renamed step needs --mapping OLD=NEW (repeatable), a removed one
#                 --mapping OLD= ; a changed window, coder or state layout cannot update:
#                 drain and launch instead
#   drain         stop reading, finish in-flight windows, then stop (--job-id, or the
#                 active job named JOB_NAME)
#   cancel        stop now, dropping in-flight data (--job-id, or by JOB_NAME)
#   launcher      deploy the training launcher as a Cloud Run job (same image), let its
#                 account run it, run it hourly with Cloud Scheduler, and start it now
#   graph         build the Dataflow job offline (--dry_run) and print its step names
#   step-names    rewrite templates/step_names.json from the offline graph
#
# Settings (env vars or flags; see templates/common.sh for every default):
#   PROJECT, BUCKET, REGION, TAG/IMAGE, TEMPLATE_PATH, DATASET_NAME (traffic),
#   DATASET_CONFIG (gs://B/configs/traffic.yaml), BQ_DATASET, INPUT_SUBSCRIPTION,
#   RETRAIN_TOPIC, RETRAIN_SUBSCRIPTION, MODEL_REGISTRY, JOB_NAME, WORKER_SA,
#   LAUNCHER_SA, TRAINER_SA, MAX_WORKERS, WORKER_MACHINE_TYPE, JOB_ID.
#   --param K=V adds a template parameter (e.g. --param inference_max_batch_size=128).
source "$(dirname "$0")/common.sh"

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }

GRAPH_ARGS=(
  --runner DataflowRunner --dry_run=True --no_auth --project demo-project
  --region us-central1 --temp_location gs://demo-bucket/tmp
  --dataset_config configs/traffic.yaml
  --input_subscription projects/demo-project/subscriptions/traffic --bq_dataset traffic
  --model_registry gs://demo-bucket/registry
  --retrain_topic projects/demo-project/topics/traffic-retrain
)

# The Python for graph/step-names: $PYTHON, else the repo's .venv, else python3.
python_bin() {
  if [ -n "${PYTHON:-}" ]; then
    echo "$PYTHON"
  elif [ -x "$REPO_ROOT/.venv/bin/python" ]; then
    echo "$REPO_ROOT/.venv/bin/python"
  else
    echo python3
  fi
}

flex_run() {
  local extra=("$@") params=(
    "dataset_config=$DATASET_CONFIG"
    "input_subscription=$INPUT_SUBSCRIPTION"
    "bq_dataset=$BQ_DATASET"
    "model_registry=$MODEL_REGISTRY"
    "retrain_topic=$RETRAIN_TOPIC"
    "sdk_container_image=$IMAGE"
  ) argv=() p
  for p in "${params[@]}" "${EXTRA_PARAMS[@]}"; do argv+=(--parameters "$p"); done
  cmd gcloud dataflow flex-template run "$JOB_NAME" --project "$PROJECT" --region "$REGION" \
    --template-file-gcs-location "$TEMPLATE_PATH" \
    --service-account-email "$WORKER_SA" \
    --staging-location "gs://$BUCKET/staging" --temp-location "gs://$BUCKET/tmp" \
    --enable-streaming-engine --max-workers "$MAX_WORKERS" \
    --worker-machine-type "$WORKER_MACHINE_TYPE" \
    "${argv[@]}" "${extra[@]}"
}

update() {
  local extra=(--update) joined
  if [ "${#MAPPINGS[@]}" -gt 0 ]; then
    joined="$(IFS=,; echo "${MAPPINGS[*]}")"
    extra+=(--transform-name-mappings "$joined")
  fi
  flex_run "${extra[@]}"
}

# stop drain|cancel: the job by --job-id, else the active job named JOB_NAME.
stop() {
  local verb="$1" lookup
  lookup=(gcloud dataflow jobs list --project "$PROJECT" --region "$REGION" --status active
    --filter "name=$JOB_NAME" --format "value(JOB_ID)" --limit 1)
  if [ -z "${JOB_ID:-}" ]; then
    if [ "$PRINT_ONLY" = 1 ]; then
      echo "JOB_ID=\$($(quote "${lookup[@]}"))"
      echo "gcloud dataflow jobs $verb \"\$JOB_ID\" $(quote --project "$PROJECT" --region "$REGION")"
      return
    fi
    JOB_ID="$(cd "$REPO_ROOT" && "${lookup[@]}")"
    [ -n "$JOB_ID" ] || die "no active Dataflow job named $JOB_NAME in $REGION"
  fi
  cmd gcloud dataflow jobs "$verb" "$JOB_ID" --project "$PROJECT" --region "$REGION"
}

launcher() {
  local args joined
  # The launcher's own command line (trainer/launcher.py): trains on Vertex AI with the
  # same image, keeps its in-flight records on the bucket (a Cloud Storage volume), and
  # stops after 55 minutes; Cloud Scheduler starts the next execution every hour.
  args=(-m trainer.launcher --project "$PROJECT" --config "$DATASET_CONFIG"
    --subscription "$RETRAIN_SUBSCRIPTION" --bq_dataset "$BQ_DATASET"
    --registry "$MODEL_REGISTRY" --backend vertex --vertex-region "$REGION"
    --vertex-staging-bucket "gs://$BUCKET/vertex" --vertex-container-uri "$IMAGE"
    --vertex-service-account "$TRAINER_SA" --vertex-config-uri "$DATASET_CONFIG"
    --state-dir "/state/launcher/$DATASET_NAME" --duration 3300 --grace-seconds 60)
  joined="$(IFS=,; echo "${args[*]}")"
  cmd gcloud run jobs deploy "$LAUNCHER_JOB" --project "$PROJECT" --region "$REGION" \
    --image "$IMAGE" --service-account "$LAUNCHER_SA" --command python "--args=$joined" \
    --task-timeout 3600s --max-retries 1 --cpu 2 --memory 4Gi \
    --add-volume "name=state,type=cloud-storage,bucket=$BUCKET" \
    --add-volume-mount "volume=state,mount-path=/state"
  # Cloud Scheduler runs the job as the launcher's account: it needs run.jobs.run on it.
  cmd gcloud run jobs add-iam-policy-binding "$LAUNCHER_JOB" --project "$PROJECT" \
    --region "$REGION" --member "serviceAccount:$LAUNCHER_SA" --role roles/run.invoker
  cmd gcloud scheduler jobs create http "$LAUNCHER_JOB-hourly" --project "$PROJECT" \
    --location "$REGION" --schedule "0 * * * *" --http-method POST \
    --uri "https://run.googleapis.com/v2/projects/$PROJECT/locations/$REGION/jobs/$LAUNCHER_JOB:run" \
    --oauth-service-account-email "$LAUNCHER_SA"
  cmd gcloud run jobs execute "$LAUNCHER_JOB" --project "$PROJECT" --region "$REGION"
}

graph() {
  cmd "$(python_bin)" -m pipelines.main "${GRAPH_ARGS[@]}"
}

step_names() {
  local json
  if [ "$PRINT_ONLY" = 1 ]; then
    graph
    return
  fi
  json="$(cd "$REPO_ROOT" && PYTHONPATH="$REPO_ROOT" "$(python_bin)" -m pipelines.main \
    "${GRAPH_ARGS[@]}" 2>/dev/null | tail -n 1)"
  printf '%s' "$json" | "$(python_bin)" -c \
    'import json, sys; print(json.dumps(json.load(sys.stdin)["steps"], indent=2))' \
    >"$REPO_ROOT/templates/step_names.json"
  echo "wrote templates/step_names.json" >&2
}

parse_flags "$@"
COMMAND="${ARGS[0]:-}"
case "$COMMAND" in
  graph | step-names) ;;
  launch | update | drain | cancel | launcher) settings ;;
  *) usage >&2; exit 2 ;;
esac
case "$COMMAND" in
  launch) flex_run ;;
  update) update ;;
  drain) stop drain ;;
  cancel) stop cancel ;;
  launcher) launcher ;;
  graph) graph ;;
  step-names) step_names ;;
esac
