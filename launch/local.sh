#!/usr/bin/env bash
# Runs detcon_jax training on this machine: one process, or N local processes for multi-host logic.
set -euo pipefail

PROG="local.sh"

usage() {
    cat <<'EOF'
Usage: launch/local.sh --config=PATH --workdir=DIR [FLAGS] [-- --config.KEY=VALUE ...]

Runs `python -m detcon_jax.train` on this machine.

With --processes=1 (default) it runs one ordinary process on whatever devices JAX
finds. With --processes=N > 1 it starts N processes that form one JAX distributed
job over 127.0.0.1, which exercises the multi-host code paths (per-host input
shards, global arrays, checkpointing from several processes) on one CPU machine.
Each process gets:
  JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT   (read by jax.distributed.initialize)
  DETCON_NUM_PROCESSES=N                   (read by the train CLI)
  DETCON_PROCESS_ID=i                      (read by the train CLI)
  JAX_PLATFORMS=cpu                        (unless --platform says otherwise)
and the train command gets --distributed. See launch/README.md.

Flags (environment variable in brackets):
  --config=PATH              experiment config, e.g. experiments/smoke.py [DETCON_CONFIG]
  --workdir=DIR              checkpoints and logs [DETCON_WORKDIR]
  --processes=N              number of local processes (default 1)
  --devices_per_process=K    fake K CPU devices per process via
                             XLA_FLAGS=--xla_force_host_platform_device_count=K
                             (appended to any XLA_FLAGS already set)
  --port=P                   coordinator port (default: 61440 + this shell's pid % 4096)
  --platform=NAME            JAX_PLATFORMS for the processes (default: cpu when
                             --processes > 1 or --devices_per_process is given,
                             otherwise unset so JAX picks the accelerator)
  --python=PATH              Python interpreter [DETCON_PYTHON] (default python3)
  --dry-run                  print the commands, run nothing
  -h, --help                 this help

Everything after `--`, and any --config.KEY=VALUE flag, is passed to the
training command unchanged. With several processes, process 0 prints to the
terminal as is and the others prefix their lines with [pI]. When one process
fails, the others get SIGTERM; the script returns only when every process has
exited, with the first failure's status (0 if none failed). SIGINT or SIGTERM to
the script is passed on as SIGTERM (each process checkpoints and exits 0) and the
script waits for them. See launch/README.md.

Example (2 processes x 4 fake CPU devices = 8 devices):
  launch/local.sh --config=experiments/smoke.py --workdir=/tmp/detcon_smoke \
      --processes=2 --devices_per_process=4 -- --config.num_steps=3
EOF
}

die() {
    echo "$PROG: error: $*" >&2
    exit 2
}

# Quotes each argument for bash only where needed (readable, paste-able dry-run output).
shell_quote() {
    local out=() arg q="'"
    for arg in "$@"; do
        if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
            out+=("$arg")
        else
            out+=("$q${arg//$q/$q\\$q$q}$q")
        fi
    done
    printf '%s\n' "${out[*]}"
}

CONFIG="${DETCON_CONFIG:-}"
WORKDIR="${DETCON_WORKDIR:-}"
PYTHON="${DETCON_PYTHON:-python3}"
PROCESSES=1
DEVICES_PER_PROCESS=""
PORT=$((61440 + $$ % 4096))
PLATFORM=""
PLATFORM_SET=0
DRY_RUN=0
OVERRIDES=()

while (($#)); do
    arg="$1"
    shift
    case "$arg" in
        --) OVERRIDES+=("$@"); break ;;
        --config.*) OVERRIDES+=("$arg"); continue ;;
        -h | --help) usage; exit 0 ;;
        --dry-run | --dry_run) DRY_RUN=1; continue ;;
        --*=*) key="${arg%%=*}"; val="${arg#*=}" ;;
        --*)
            (($#)) || die "$arg needs a value"
            key="$arg"; val="$1"; shift ;;
        *) die "unknown argument '$arg' (see --help)" ;;
    esac
    case "$key" in
        --config) CONFIG="$val" ;;
        --workdir) WORKDIR="$val" ;;
        --processes) PROCESSES="$val" ;;
        --devices_per_process | --devices-per-process) DEVICES_PER_PROCESS="$val" ;;
        --port) PORT="$val" ;;
        --platform) PLATFORM="$val"; PLATFORM_SET=1 ;;
        --python) PYTHON="$val" ;;
        *) die "unknown flag '$key' (see --help)" ;;
    esac
done

[[ -n "$CONFIG" ]] || die "missing --config (or set DETCON_CONFIG); see --help"
[[ -n "$WORKDIR" ]] || die "missing --workdir (or set DETCON_WORKDIR); see --help"
[[ "$PROCESSES" =~ ^[1-9][0-9]*$ ]] || die "--processes must be a positive integer, got '$PROCESSES'"
[[ -z "$DEVICES_PER_PROCESS" || "$DEVICES_PER_PROCESS" =~ ^[1-9][0-9]*$ ]] ||
    die "--devices_per_process must be a positive integer, got '$DEVICES_PER_PROCESS'"
if ! [[ "$PORT" =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65535)); then
    die "--port must be in 1..65535, got '$PORT'"
fi

if ((!PLATFORM_SET)) && { ((PROCESSES > 1)) || [[ -n "$DEVICES_PER_PROCESS" ]]; }; then
    PLATFORM="cpu"
fi

TRAIN=("$PYTHON" -m detcon_jax.train --config="$CONFIG" --workdir="$WORKDIR")
if ((PROCESSES > 1)); then TRAIN+=(--distributed); fi
TRAIN+=(${OVERRIDES[@]+"${OVERRIDES[@]}"})

# Environment shared by every process.
COMMON_ENV=()
if [[ -n "$PLATFORM" ]]; then COMMON_ENV+=("JAX_PLATFORMS=$PLATFORM"); fi
if [[ -n "$DEVICES_PER_PROCESS" ]]; then
    COMMON_ENV+=("XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS")
fi

# Sets PENV to the NAME=VALUE assignments of process $1.
set_process_env() {
    PENV=(${COMMON_ENV[@]+"${COMMON_ENV[@]}"})
    if ((PROCESSES > 1)); then
        PENV+=("JAX_COORDINATOR_ADDRESS=127.0.0.1:$PORT" "DETCON_NUM_PROCESSES=$PROCESSES"
            "DETCON_PROCESS_ID=$1")
    fi
}

if ((DRY_RUN)); then
    for ((i = 0; i < PROCESSES; i++)); do
        set_process_env "$i"
        if ((${#PENV[@]})); then
            line="$(shell_quote env "${PENV[@]}" "${TRAIN[@]}")"
        else
            line="$(shell_quote "${TRAIN[@]}")"
        fi
        ((PROCESSES > 1)) && line+=" &"
        printf '%s\n' "$line"
    done
    if ((PROCESSES > 1)); then echo "wait"; fi
    exit 0
fi

if ((PROCESSES == 1)); then
    set_process_env 0
    exec env ${PENV[@]+"${PENV[@]}"} "${TRAIN[@]}"
fi

prefix_lines() {
    local line
    while IFS= read -r line || [[ -n "$line" ]]; do
        printf '[p%s] %s\n' "$1" "$line"
    done
}

PIDS=()
# Sends signal $1 to every process still running.
signal_all() {
    local pid
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        kill "-$1" "$pid" 2>/dev/null || true
    done
}
# SIGINT/SIGTERM to this script: the processes get SIGTERM (a checkpoint, then exit 0) and
# the script waits for them as usual.
STOPPING=0
# shellcheck disable=SC2317,SC2329  # invoked by the trap below
forward_stop() {
    echo "$PROG: asking every process to checkpoint and stop" >&2
    STOPPING=1
    signal_all TERM
}
# Nothing outlives this script: should it end early, what still runs is killed.
# shellcheck disable=SC2317,SC2329  # invoked by the trap below
kill_rest() { signal_all KILL; }
trap forward_stop INT TERM
trap kill_rest EXIT

for ((i = 0; i < PROCESSES; i++)); do
    set_process_env "$i"
    if ((i == 0)); then
        env "${PENV[@]}" "${TRAIN[@]}" &
    else
        env "${PENV[@]}" "${TRAIN[@]}" > >(prefix_lines "$i") 2>&1 &
    fi
    PIDS+=("$!")
done

# Waits for every process; polls rather than `wait -n` (bash >= 4.3 only). The first
# failure stops the others with SIGTERM; those that ignore it (a JAX process blocked on
# its dead peer) end by themselves within the heartbeat timeout, and this script returns
# only when the last one has, so a rerun never meets a process of this run. The exit
# status is the first failure's (0 when all succeeded).
STATUS=0
while ((${#PIDS[@]})); do
    for idx in "${!PIDS[@]}"; do
        pid="${PIDS[$idx]}"
        kill -0 "$pid" 2>/dev/null && continue
        status=0
        wait "$pid" || status=$?
        unset "PIDS[$idx]"
        ((status == 0)) && continue
        ((STATUS == 0)) && STATUS=$status
        if ((STOPPING)); then
            echo "$PROG: process $idx exited with status $status" >&2
        else
            echo "$PROG: process $idx exited with status $status; stopping the others" >&2
            STOPPING=1
            signal_all TERM
        fi
    done
    if ((${#PIDS[@]})); then sleep 0.2; fi
done
trap - EXIT
exit "$STATUS"
