# shellcheck shell=bash
# Settings and helpers shared by templates/build.sh and templates/run.sh (source it).
#
# Every setting is an environment variable, and also a flag: --bucket X sets
# BUCKET=X, --job-name X sets JOB_NAME=X. --print-only prints the commands,
# one per line and shell-quoted, instead of running them. Commands run from
# the repository root.

set -Eeuo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PRINT_ONLY=0
MAPPINGS=()
EXTRA_PARAMS=()
ARGS=()

die() {
  echo "error: $*" >&2
  exit 2
}

# parse_flags "$@": --print-only, --mapping OLD=NEW (repeatable), --param K=V
# (repeatable), --name value / --name=value (sets NAME); the rest goes to ARGS.
parse_flags() {
  local flag value var
  while [ $# -gt 0 ]; do
    flag="$1"
    shift
    case "$flag" in
      --print-only) PRINT_ONLY=1 ;;
      --help | -h) usage; exit 0 ;;
      --*)
        if [[ "$flag" == *=* ]]; then
          value="${flag#*=}"
          flag="${flag%%=*}"
        else
          [ $# -gt 0 ] || die "$flag needs a value"
          value="$1"
          shift
        fi
        case "$flag" in
          --mapping) MAPPINGS+=("$value") ;;
          --param) EXTRA_PARAMS+=("$value") ;;
          *)
            var="$(echo "${flag#--}" | tr 'a-z-' 'A-Z_')"
            [[ "$var" =~ ^[A-Z][A-Z0-9_]*$ ]] || die "bad flag $flag"
            printf -v "$var" '%s' "$value"
            ;;
        esac
        ;;
      *) ARGS+=("$flag") ;;
    esac
  done
}

# Defaults, derived from PROJECT, REGION and BUCKET. Call after parse_flags.
settings() {
  : "${PROJECT:?set PROJECT or --project}"
  : "${BUCKET:?set BUCKET or --bucket (a bucket name, without gs://)}"
  BUCKET="${BUCKET#gs://}"
  REGION="${REGION:-us-central1}"
  DATASET_NAME="${DATASET_NAME:-traffic}"
  REPOSITORY="${REPOSITORY:-streaming-ct}"
  IMAGE_NAME="${IMAGE_NAME:-streaming-ct}"
  if [ -z "${TAG:-}" ]; then
    TAG="$(git -C "$REPO_ROOT" rev-parse --short=12 HEAD 2>/dev/null || date -u +%Y%m%d-%H%M%S)"
  fi
  IMAGE="${IMAGE:-$REGION-docker.pkg.dev/$PROJECT/$REPOSITORY/$IMAGE_NAME:$TAG}"
  TEMPLATE_PATH="${TEMPLATE_PATH:-gs://$BUCKET/templates/$IMAGE_NAME-$TAG.json}"
  DATASET_CONFIG="${DATASET_CONFIG:-gs://$BUCKET/configs/$DATASET_NAME.yaml}"
  BQ_DATASET="${BQ_DATASET:-$DATASET_NAME}"
  INPUT_SUBSCRIPTION="${INPUT_SUBSCRIPTION:-projects/$PROJECT/subscriptions/$DATASET_NAME-pipeline}"
  RETRAIN_TOPIC="${RETRAIN_TOPIC:-projects/$PROJECT/topics/$DATASET_NAME-retrain}"
  RETRAIN_SUBSCRIPTION="${RETRAIN_SUBSCRIPTION:-projects/$PROJECT/subscriptions/$DATASET_NAME-retrain-launcher}"
  MODEL_REGISTRY="${MODEL_REGISTRY:-gs://$BUCKET/registry/$DATASET_NAME}"
  JOB_NAME="${JOB_NAME:-streaming-ct-$DATASET_NAME}"
  WORKER_SA="${WORKER_SA:-ct-dataflow-worker@$PROJECT.iam.gserviceaccount.com}"
  LAUNCHER_SA="${LAUNCHER_SA:-ct-launcher@$PROJECT.iam.gserviceaccount.com}"
  TRAINER_SA="${TRAINER_SA:-ct-trainer@$PROJECT.iam.gserviceaccount.com}"
  LAUNCHER_JOB="${LAUNCHER_JOB:-ct-launcher-$DATASET_NAME}"
  MAX_WORKERS="${MAX_WORKERS:-4}"
  WORKER_MACHINE_TYPE="${WORKER_MACHINE_TYPE:-n2-standard-2}"
}

# quote ARGV...: the arguments as one shell line; single quotes only where needed.
quote() {
  local arg out=() q="'"
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,%+-]+$ ]]; then
      out+=("$arg")
    else
      out+=("$q${arg//$q/$q\\$q$q}$q")
    fi
  done
  echo "${out[*]}"
}

# cmd ARGV...: prints the command (--print-only), or prints it to stderr and runs it.
cmd() {
  if [ "$PRINT_ONLY" = 1 ]; then
    quote "$@"
  else
    echo "+ $(quote "$@")" >&2
    (cd "$REPO_ROOT" && "$@")
  fi
}
