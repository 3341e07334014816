#!/usr/bin/env bash
# `collapse-lab slurm` on a real Slurm: installs Debian's slurmctld, slurmd and munge if missing, configures
# a single-node cluster on localhost in a temporary directory (its own ports, state and munge socket; no
# system service is touched), submits the job array of a tiny config on the committed sample while one of
# its chains is locked by another process (as a dead node's lock can be), waits for it, and checks that the
# task of the locked chain requeued itself rather than end COMPLETED undone, that every task line names its
# device, that the metrics equal a single-process run of the same config bit for bit (wall times aside),
# and that no daemon is left running afterwards. Needs root (apt-get, and the daemons run as root). Prints
# PASS or FAIL; exits non-zero on failure.
#
#   bash scripts/slurm-test.sh                      (BIN=path/to/collapse-lab to test a binary already built)
#
# Exit status: 0 pass, 1 fail, 2 skipped because Slurm could not be installed here (said on one line).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge; } > /tmp/slurm-install.log 2>&1; then
    echo "SKIPPED: cannot install Debian's Slurm packages here (see /tmp/slurm-install.log)"
    exit 2
  fi
fi
if [ -z "${BIN:-}" ]; then
  cargo build --release -q
  BIN=$PWD/target/release/collapse-lab
fi
BIN=$(realpath "$BIN")
W=$(mktemp -d /tmp/collapse-slurm.XXXXXX)
chmod 755 "$W"
PIDS=()
# munged daemonizes: its PID is in its pid file, not $!.
stop_daemons() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$W/munge/munged.pid" ] && kill "$(cat "$W/munge/munged.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  for _ in $(seq 50); do
    pgrep -f "$W" >/dev/null || break
    sleep 0.1
  done
}
cleanup() {
  stop_daemons
  [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT

# munge: a key and a daemon of our own.
mkdir -p "$W/munge"
chmod 700 "$W/munge"
dd if=/dev/urandom of="$W/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$W/munge/munge.key"
munged --force --key-file="$W/munge/munge.key" --socket="$W/munge/munge.socket" \
  --pid-file="$W/munge/munged.pid" --log-file="$W/munge/munged.log" --seed-file="$W/munge/munged.seed"

HOST=$(hostname -s)
mkdir -p "$W/state" "$W/spool" "$W/log" "$W/run"
cat > "$W/slurm.conf" <<CONF
ClusterName=collapse-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$W/munge/munge.socket
CredType=cred/munge
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation=$W/state
SlurmdSpoolDir=$W/spool
SlurmctldPidFile=$W/run/slurmctld.pid
SlurmdPidFile=$W/run/slurmd.pid
SlurmctldLogFile=$W/log/slurmctld.log
SlurmdLogFile=$W/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=4000 State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$W/slurm.conf
slurmctld -D -f "$SLURM_CONF" > "$W/log/slurmctld.out" 2>&1 &
PIDS+=($!)
sleep 2
slurmd -D -f "$SLURM_CONF" > "$W/log/slurmd.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 60); do
  sinfo -h -o %t 2>/dev/null | grep -qE '^idle' && break
  sleep 1
done
sinfo

# A tiny config on the committed sample: 3 settings x 2 repetitions x 2 rounds = 6 chains.
cat > "$W/tiny.toml" <<TOML
[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 16

[training]
steps = 60
batch_size = 4
checkpoint_every = 20
log_every = 10

[data]
source = "$PWD/data/sample/movie_plots_sample.csv.zst"
tokenizer = "train:300"
heldout_docs = 6

[generation]
max_new_tokens = 24
min_docs = 4

[schedule]
n = 12
rounds = 2
settings = ["synthetic-only", "fixed-alpha", "decaying-alpha"]

[experiment]
repetitions = 2
seed = 3
TOML
export COLLAPSE_CACHE=$W/cache
"$BIN" run "$W/tiny.toml" --out "$W/single" 2> "$W/single.log"
SCRIPT=$("$BIN" slurm "$W/tiny.toml" --out "$W/array" --partition test --cpus-per-task 1 --time 00:10:00)
cat "$SCRIPT"
grep -q -- "--device 'cpu' --only" "$SCRIPT" || { echo "FAIL: the task line names no device"; exit 1; }
# Another process holds synthetic-only/0 for the first 40 s: its task must requeue itself until it is free.
mkdir -p "$W/array/synthetic-only/rep-0"
flock "$W/array/synthetic-only/rep-0/lock" sleep 40 &
PIDS+=($!)
export COLLAPSE_BUSY_WAIT=5
JOB=$(sbatch --parsable "$SCRIPT")
echo "submitted job array $JOB"
for _ in $(seq 600); do
  [ -z "$(squeue -h -j "$JOB" 2>/dev/null)" ] && break
  sleep 1
done
sacct -j "$JOB" 2>/dev/null || squeue -j "$JOB" || true
"$BIN" status "$W/array"
if ! grep -q "chain synthetic-only/0 is busy in another process; requeueing task" "$W"/array/slurm/logs/*; then
  echo "FAIL: the task of the locked chain did not requeue itself"; tail -20 "$W"/array/slurm/logs/* || true
  exit 1
fi
echo "the locked chain's task requeued itself: $(grep -h "requeueing task" "$W"/array/slurm/logs/* | head -1)"
strip() { python3 -c 'import json,sys; [print(json.dumps({k: v for k, v in json.loads(l).items() if not k.startswith("wall_")}, sort_keys=True)) for l in open(sys.argv[1])]' "$1"; }
if ! { diff <(strip "$W/single/metrics.jsonl") <(strip "$W/array/metrics.jsonl") > "$W/diff.txt" \
   && [ "$(wc -l < "$W/single/metrics.jsonl")" -eq 12 ]; }; then
  echo "FAIL: metrics differ from the single process's:"; cat "$W/diff.txt"; tail -20 "$W"/array/slurm/logs/* || true
  exit 1
fi
stop_daemons
if pgrep -af "$W"; then
  echo "FAIL: processes of the test cluster are still running (above)"
  exit 1
fi
echo "PASS: the Slurm job array's $(wc -l < "$W/array/metrics.jsonl") metrics rows equal the single process's, bit for bit; no process left"
echo "slurm: 1 passed, 0 failed"
