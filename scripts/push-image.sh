#!/bin/sh
# Build the Dockerfile with buildah (no Docker daemon) and push it to $REGISTRY/$REPOSITORY under
# each of $TAGS. .woodpecker/image.yaml runs it against the real registry; tests/e2e/test_registry.py
# runs it against a local one (htpasswd auth, TLS from a throwaway CA).
#
#   REGISTRY, REPOSITORY, TAGS ("0.2.0" or "<sha> main"), REGISTRY_USERNAME, REGISTRY_PASSWORD
#   PLATFORMS    linux/amd64 (default) or a list: linux/amd64,linux/arm64 (needs emulation)
#   BUILD_ARGS   space-separated NAME=value, e.g. BASE_IMAGE=... NODE_IMAGE=...
#   CERT_DIR     a directory holding the registry's CA (ca.crt), when it is not a public one
set -eu
: "${REGISTRY:?set REGISTRY}" "${REPOSITORY:?set REPOSITORY}" "${TAGS:?set TAGS}"
: "${REGISTRY_USERNAME:?set REGISTRY_USERNAME}" "${REGISTRY_PASSWORD:?set REGISTRY_PASSWORD}"
image="$REGISTRY/$REPOSITORY"
first=${TAGS%% *}
tls=""
if [ -n "${CERT_DIR:-}" ]; then tls="--cert-dir=$CERT_DIR"; fi

set --
for arg in ${BUILD_ARGS:-}; do set -- "$@" --build-arg "$arg"; done

# The password on standard input, never on a command line.
printf '%s' "$REGISTRY_PASSWORD" | buildah login $tls --username "$REGISTRY_USERNAME" --password-stdin "$REGISTRY"
buildah manifest rm "$image:$first" >/dev/null 2>&1 || true
buildah build --layers --platform "${PLATFORMS:-linux/amd64}" --manifest "$image:$first" "$@" -f Dockerfile .
for tag in $TAGS; do
  buildah manifest push $tls --all "$image:$first" "docker://$image:$tag"
  echo "pushed $image:$tag"
done
