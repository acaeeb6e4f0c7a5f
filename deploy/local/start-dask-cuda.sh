#!/usr/bin/env bash
# Start a Dask scheduler and one GPU worker per GPU on this node; stop them on Ctrl-C/SIGTERM.
#
#   deploy/local/start-dask-cuda.sh [options]
#
#   --host HOST             listen address of scheduler and workers (default 127.0.0.1;
#                           use the node's IP or 0.0.0.0 for clients on other machines, with TLS)
#   --port PORT             scheduler port (default 8786)
#   --dashboard-port PORT   dashboard port (default 8787)
#   --gpus LIST             GPUs to use, e.g. 0,1,2 (default: CUDA_VISIBLE_DEVICES, else all)
#   --memory-limit LIMIT    host memory per worker: auto (= RAM / workers), 48GiB, 0.2 …
#   --local-directory DIR   spill/scratch directory (default ${TMPDIR:-/tmp}/emunet-dask)
#   --cpu-workers N         no GPUs: N CPU workers that still declare GPU=1 (smoke tests)
#   --tls-ca-file F --tls-cert F --tls-key F    all three: tls:// with these PEM files
#   --python PY             interpreter with emunet installed (default: python3 on PATH)
#
# Every worker runs one task thread and declares --resources GPU=1, the resource block tasks
# ask for. With dask-cuda, `dask cuda worker` starts one worker per GPU with
# CUDA_VISIBLE_DEVICES pinned; without it, one `dask worker` per GPU is started by hand with
# CUDA_VISIBLE_DEVICES set to that GPU alone. Clients read the address from the scheduler
# file ($LOCAL_DIR/scheduler.json) or from what is printed. Needs bash ≥ 4.3 (wait -n).
set -euo pipefail

HOST=127.0.0.1
PORT=8786
DASHBOARD_PORT=8787
GPUS="${CUDA_VISIBLE_DEVICES:-}"
MEMORY_LIMIT=auto
LOCAL_DIR="${TMPDIR:-/tmp}/emunet-dask"
CPU_WORKERS=0
TLS_CA="" TLS_CERT="" TLS_KEY=""
PYTHON="${PYTHON:-python3}"

die() { echo "error: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --host) HOST="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --dashboard-port) DASHBOARD_PORT="$2"; shift 2 ;;
    --gpus) GPUS="$2"; shift 2 ;;
    --memory-limit) MEMORY_LIMIT="$2"; shift 2 ;;
    --local-directory) LOCAL_DIR="$2"; shift 2 ;;
    --cpu-workers) CPU_WORKERS="$2"; shift 2 ;;
    --tls-ca-file) TLS_CA="$2"; shift 2 ;;
    --tls-cert) TLS_CERT="$2"; shift 2 ;;
    --tls-key) TLS_KEY="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[[ "$CPU_WORKERS" =~ ^[0-9]+$ ]] || die "expected --cpu-workers N (an integer), got '$CPU_WORKERS'"
"$PYTHON" -c "import distributed" 2>/dev/null || die "expected distributed importable by $PYTHON (set --python)"

# TLS: all three files or none.
TLS_ARGS=()
PROTOCOL=tcp
if [[ -n "$TLS_CA$TLS_CERT$TLS_KEY" ]]; then
  [[ -r "$TLS_CA" && -r "$TLS_CERT" && -r "$TLS_KEY" ]] \
    || die "expected readable --tls-ca-file, --tls-cert and --tls-key together"
  TLS_ARGS=(--tls-ca-file "$TLS_CA" --tls-cert "$TLS_CERT" --tls-key "$TLS_KEY")
  PROTOCOL=tls
fi

# Which GPUs: --gpus, else CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi lists.
if [[ "$CPU_WORKERS" -eq 0 ]]; then
  if [[ -z "$GPUS" ]] && command -v nvidia-smi >/dev/null 2>&1; then
    GPUS="$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)"
  fi
  [[ -n "$GPUS" ]] || die "found no GPU (no --gpus, CUDA_VISIBLE_DEVICES or nvidia-smi); use --cpu-workers N"
fi
IFS=, read -r -a GPU_LIST <<<"$GPUS"
N_WORKERS=$(( CPU_WORKERS > 0 ? CPU_WORKERS : ${#GPU_LIST[@]} ))

# "auto" for workers started one by one would give each the whole RAM: use a fraction.
if [[ "$MEMORY_LIMIT" == auto ]]; then
  WORKER_MEMORY="$(awk -v n="$N_WORKERS" 'BEGIN { printf "%.3f", 0.95 / n }')"
else
  WORKER_MEMORY="$MEMORY_LIMIT"
fi

mkdir -p "$LOCAL_DIR"
SCHEDULER_FILE="$LOCAL_DIR/scheduler.json"
rm -f "$SCHEDULER_FILE"
PIDS=()  # scheduler first, then the workers
# shellcheck disable=SC2329  # called by the EXIT trap
cleanup() {  # workers first (they retire cleanly while the scheduler is up), then the scheduler
  trap - EXIT INT TERM
  local pids=(${PIDS[@]+"${PIDS[@]}"})
  for pid in ${pids[@]+"${pids[@]:1}"}; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in ${pids[@]+"${pids[@]:1}"}; do wait "$pid" 2>/dev/null || true; done
  [[ ${#pids[@]} -gt 0 ]] && { kill -TERM "${pids[0]}" 2>/dev/null || true; wait "${pids[0]}" 2>/dev/null || true; }
  return 0
}
trap cleanup EXIT
trap 'exit 0' INT TERM

"$PYTHON" -m distributed.cli.dask_scheduler \
  --host "$HOST" --port "$PORT" --protocol "$PROTOCOL" \
  --dashboard-address "$HOST:$DASHBOARD_PORT" \
  --scheduler-file "$SCHEDULER_FILE" ${TLS_ARGS[@]+"${TLS_ARGS[@]}"} &
PIDS+=($!)
for _ in $(seq 1 600); do
  [[ -s "$SCHEDULER_FILE" ]] && break
  kill -0 "${PIDS[0]}" 2>/dev/null || die "the scheduler exited; see its log above"
  sleep 0.1
done
[[ -s "$SCHEDULER_FILE" ]] || die "the scheduler wrote no $SCHEDULER_FILE within 60 s"

# No Dask sampling profiler on the workers unless asked: it slows the blocks (docs/admin.md, "Profile").
export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED="${DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED:-False}"
COMMON=(--scheduler-file "$SCHEDULER_FILE" --nthreads 1 --resources GPU=1
        --local-directory "$LOCAL_DIR" ${TLS_ARGS[@]+"${TLS_ARGS[@]}"})
# Workers listen where the scheduler does; on 0.0.0.0 they pick the node's own address.
[[ "$HOST" == 0.0.0.0 || "$HOST" == "::" ]] || COMMON+=(--host "$HOST")
if [[ "$CPU_WORKERS" -gt 0 ]]; then
  KIND="cpu"
  OMP_NUM_THREADS="$(( $(nproc) / CPU_WORKERS > 0 ? $(nproc) / CPU_WORKERS : 1 ))" \
    "$PYTHON" -m distributed.cli.dask_worker "${COMMON[@]}" --nworkers "$CPU_WORKERS" \
    --memory-limit "$WORKER_MEMORY" --name cpu &
  PIDS+=($!)
elif "$PYTHON" -c "import dask_cuda" 2>/dev/null; then
  KIND="dask-cuda"  # `python -m dask_cuda.cli` is `dask cuda worker`: one worker per visible GPU
  [[ "$MEMORY_LIMIT" == auto ]] && WORKER_MEMORY=auto  # dask-cuda's auto = RAM / GPUs
  CUDA_VISIBLE_DEVICES="$GPUS" "$PYTHON" -m dask_cuda.cli "${COMMON[@]}" \
    --memory-limit "$WORKER_MEMORY" --name "$(hostname -s)-gpu" &
  PIDS+=($!)
else
  KIND="dask worker per GPU"  # pin each worker to one GPU by hand
  for gpu in "${GPU_LIST[@]}"; do
    CUDA_VISIBLE_DEVICES="$gpu" "$PYTHON" -m distributed.cli.dask_worker "${COMMON[@]}" \
      --nworkers 1 --memory-limit "$WORKER_MEMORY" --name "$(hostname -s)-gpu$gpu" &
    PIDS+=($!)
  done
fi

ADDRESS="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["address"])' "$SCHEDULER_FILE")"
cat <<EOF
workers:   $N_WORKERS ($KIND), each with --resources GPU=1
scheduler: $ADDRESS   (scheduler file: $SCHEDULER_FILE)
dashboard: http://$([[ "$HOST" == 0.0.0.0 || "$HOST" == "::" ]] && hostname -f || echo "$HOST"):$DASHBOARD_PORT/status
run:       emunet segment IN.zarr OUT.zarr --model CKPT --scheduler $ADDRESS
Ctrl-C stops everything.
EOF

# Stop everything as soon as any process ends (a crashed scheduler or worker).
set +e
wait -n
echo "a scheduler/worker process ended (exit $?); stopping the rest" >&2
exit 1
