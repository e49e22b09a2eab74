#!/bin/sh
# Starts tritonserver with its model-repository, trace, logging and shared-memory APIs locked
# behind the admin key that compose mounts as a secret file, so the key is in no container's
# command or environment (`docker inspect` shows neither). The arguments are tritonserver's
# other flags. Limit: Triton takes the key only as a flag, so the running server's own argv
# (/proc/<pid>/cmdline, `ps` on the host) still shows it; keep the device's shell users trusted.
#
# The key rule is the orchestrator's (orchestrator/settings.py): the file's content without its
# line ends, one line of printable ASCII without spaces, what HTTP headers and gRPC metadata carry.
set -eu
export LC_ALL=C  # byte-wise character classes below

key_file="${ORCH_ADMIN_KEY_SECRET:-/run/secrets/admin_key}"  # where compose mounts it; the variable is for tests
apis="model-repository,trace,logging,shared-memory"  # orchestrator/triton/control.py: RESTRICTED_APIS

fail() {
  echo "triton-entrypoint: $1; refusing to start Triton without the admin key" >&2
  exit 78  # EX_CONFIG
}

[ -f "$key_file" ] || fail "no admin key file at $key_file (set ORCH_ADMIN_KEY_FILE_HOST in docker/.env)"
[ -r "$key_file" ] || fail "the admin key file $key_file is not readable by uid $(id -u)"
[ "$(wc -c < "$key_file")" -le 4096 ] || fail "the admin key file $key_file is larger than 4096 bytes"

key=$(cat "$key_file"; printf x)  # the x keeps trailing line ends from $(...), to strip exactly those
key=${key%x}
cr=$(printf '\r')
nl='
'
while :; do
  case "$key" in
    *"$nl" | *"$cr") key=${key%?} ;;
    *) break ;;
  esac
done
[ -n "$key" ] || fail "the admin key file $key_file is empty"
case "$key" in
  *[!!-~]*) fail "the admin key in $key_file is not one line of printable ASCII without spaces" ;;
esac

exec tritonserver "$@" "--http-restricted-api=$apis:admin-key=$key" "--grpc-restricted-protocol=$apis:admin-key=$key"
