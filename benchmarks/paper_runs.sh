#!/usr/bin/env bash
# Train the two paper-recipe zoo checkpoints -- CIFAR-10-LT rho=100, the official 200-epoch LDAM-DRW recipe with and
# without RSG -- on a CPU machine, in pieces: every call continues where the last one stopped (runs outlast a
# sitting; kill it at any time and call it again).
#
#   bash benchmarks/paper_runs.sh            # run or continue, in the foreground
#   setsid nohup bash benchmarks/paper_runs.sh > output/paper_runs/driver.log 2>&1 < /dev/null &
#
# Each run trains from its own git worktree at a fixed commit (RSG_COMMIT / FORK_COMMIT), so later changes to this
# checkout never touch a run in flight. The plan halves the cost and pairs the comparison:
#   1. the RSG run trains epochs 0-159 (the CESC phase: RSG reads only detached features, adds no samples);
#   2. its epoch-159 checkpoint is kept as fork_epoch159.pth.tar;
#   3. the RSG run continues to epoch 199 while the plain LDAM-DRW run is forked from that checkpoint
#      (train.py --fork: the backbone, its BN statistics, its momentum and the RNG state, without RSG) and trains
#      epochs 160-199. tests/test_fork.py shows that a fork equals a straight plain run bit for bit.
# The two continuations run side by side with one thread each (on 2 cores that beats two threads one after another).
# THREADS=1 gives the first leg one thread: use it while anything else runs on the machine (tests, builds), since
# two OpenMP threads that must wait for a busy core slow a run down many times over (measured: 25 steps in 15 min).
# To keep it ahead of other work, raise its scheduling group's priority (Linux autogroups: `nice` alone acts only
# inside the group), as root: echo -10 > /proc/<driver pid>/autogroup
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${PAPER_RUNS_DIR:-$REPO/output/paper_runs}
DATA=${DATA_DIR:-$REPO/../shared/data}
RSG_COMMIT=3561d8a   # the fixed schedule (LR drops from 0-based epochs 159 and 179)
FORK_COMMIT=b8cb236  # the same training code plus train.py --fork
RSG_RUN=$ROOT/runs/cifar10_lt_r100_ldam_drw_rsg
PLAIN_RUN=$ROOT/runs/cifar10_lt_r100_ldam_drw
FORK_POINT=$RSG_RUN/fork_epoch159.pth.tar

mkdir -p "$ROOT/runs"
DATA=$(cd "$DATA" && pwd)

worktree() {  # the path of a worktree at commit $1, created on first use
    local dir=$ROOT/wt-$1
    [ -d "$dir" ] || git -C "$REPO" worktree add --detach "$dir" "$1" >&2
    echo "$dir"
}

epoch_of() {  # the last finished epoch of checkpoint $1, or -1
    [ -f "$1" ] || { echo -1; return; }
    python -c "import sys, torch; print(torch.load(sys.argv[1], map_location='cpu', weights_only=False)['epoch'])" "$1"
}

train() {  # train <commit> <threads> <config> <run dir> <epochs> [flags...]: start, or resume from last.pth.tar
    local commit=$1 threads=$2 config=$3 run=$4 epochs=$5
    shift 5
    local start=()
    [ -f "$run/last.pth.tar" ] && start=(--resume "$run/last.pth.tar")
    [ ${#start[@]} -eq 0 ] && start=("$@")
    (cd "$(worktree "$commit")" && OMP_NUM_THREADS=$threads python train.py --config "configs/$config" \
        --data-dir "$DATA" --channels-last --no-progress --log-interval 25 --output "$ROOT/runs" \
        --experiment "$(basename "$run")" --epochs "$epochs" "${start[@]}")
}

if [ ! -f "$FORK_POINT" ]; then
    if [ "$(epoch_of "$RSG_RUN/last.pth.tar")" -lt 159 ]; then
        train "$RSG_COMMIT" "${THREADS:-2}" cifar10_lt_r100_ldam_drw_rsg.yaml "$RSG_RUN" 160
    fi
    [ "$(epoch_of "$RSG_RUN/last.pth.tar")" -eq 159 ] || { echo "expected epoch 159 in $RSG_RUN/last.pth.tar" >&2; exit 1; }
    cp "$RSG_RUN/last.pth.tar" "$FORK_POINT.tmp" && mv "$FORK_POINT.tmp" "$FORK_POINT"
fi

pids=()
if [ "$(epoch_of "$RSG_RUN/last.pth.tar")" -lt 199 ]; then
    train "$RSG_COMMIT" 1 cifar10_lt_r100_ldam_drw_rsg.yaml "$RSG_RUN" 200 > "$ROOT/rsg_continue.log" 2>&1 &
    pids+=($!)
fi
if [ "$(epoch_of "$PLAIN_RUN/last.pth.tar")" -lt 199 ]; then
    train "$FORK_COMMIT" 1 cifar10_lt_r100_ldam_drw.yaml "$PLAIN_RUN" 200 --fork "$FORK_POINT" \
        > "$ROOT/plain_fork.log" 2>&1 &
    pids+=($!)
fi
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "RSG run at epoch $(epoch_of "$RSG_RUN/last.pth.tar"), plain run at epoch $(epoch_of "$PLAIN_RUN/last.pth.tar")"
exit $status
