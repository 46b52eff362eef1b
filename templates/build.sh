#!/usr/bin/env bash
# Build the one container image and the Dataflow flex template.
#
#   templates/build.sh [image|template|all] --project P --bucket B [--region R] [--tag T]
#                      [--builder cloudbuild|docker] [--print-only]
#
#   image     build templates/Dockerfile (context: the repo root) and push it to
#             Artifact Registry: Cloud Build (default) or local docker build + push
#   template  write the flex-template spec (image + templates/metadata.json) to
#             gs://B/templates/<image name>-<tag>.json
#   all       both (default)
#
# Settings (env vars or flags, see templates/common.sh): PROJECT, BUCKET, REGION
# (us-central1), REPOSITORY (streaming-ct), IMAGE_NAME (streaming-ct), TAG (git
# commit), IMAGE, TEMPLATE_PATH, BUILDER. --print-only prints the exact commands.
source "$(dirname "$0")/common.sh"

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

build_image() {
  case "${BUILDER:-cloudbuild}" in
    cloudbuild)
      cmd gcloud builds submit . --project "$PROJECT" --region "$REGION" \
        --config templates/cloudbuild.yaml --substitutions "_IMAGE=$IMAGE"
      ;;
    docker)
      cmd docker build -f templates/Dockerfile -t "$IMAGE" .
      cmd docker push "$IMAGE"
      ;;
    *) die "--builder must be cloudbuild or docker" ;;
  esac
}

build_template() {
  cmd gcloud dataflow flex-template build "$TEMPLATE_PATH" --project "$PROJECT" \
    --image "$IMAGE" --sdk-language PYTHON --metadata-file templates/metadata.json
}

parse_flags "$@"
settings
case "${ARGS[0]:-all}" in
  image) build_image ;;
  template) build_template ;;
  all) build_image && build_template ;;
  *) usage >&2; exit 2 ;;
esac
