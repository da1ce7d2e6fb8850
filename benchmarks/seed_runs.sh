#!/usr/bin/env bash
# The seed campaign of the paired CIFAR-10-LT rho=100 runs (the official 200-epoch LDAM-DRW recipe with and without
# RSG), one seed after another or side by side; every call continues where the last one stopped.
#
#   SEEDS="43 44" bash benchmarks/seed_runs.sh          # run or continue, in the foreground
#   DEADLINE=540 SEEDS="43 44" bash benchmarks/seed_runs.sh   # stop every run after 540 s (resumable)
#
# Per seed S, under $ROOT/runs (default output/seed_runs/runs):
#   s<S>-ldam_drw_rsg       the RSG run, epochs 0-199 (the trunk)
#   s<S>-fork_epoch159.pth.tar  its epoch-159 checkpoint, the end of the CESC phase (RSG adds no samples before it)
#   s<S>-ldam_drw           LDAM-DRW forked from it: epochs 160-199 without RSG (train.py --fork)
#   s<S>-ldam_drw_rsg_dp2   the RSG generation phase with the official two-GPU DataParallel semantics
#                           (train.py --dp-replicas 2), forked from the same checkpoint; ARMS="rsg plain" skips it
# The three continuations train side by side. Run the script from a checkout pinned at one commit (a git worktree)
# so that later changes never touch a run in flight; benchmarks/seed_report.py tabulates the finished runs.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${SEED_RUNS_DIR:-$REPO/output/seed_runs}
DATA=${DATA_DIR:-$REPO/../shared/data}
SEEDS=${SEEDS:-43 44}
ARMS=${ARMS:-rsg plain dp2}
THREADS=${THREADS:-1}
EPOCHS=${EPOCHS:-200}
FORK_EPOCH=${FORK_EPOCH:-160}  # the first epoch of the generation phase (the config's rsg_epoch_thresh + 1)
PYTHON=${PYTHON:-python}
EXTRA=${EXTRA:-}  # more train.py flags for every run (a smoke test: EXTRA="--dataset demo ...")
DEADLINE=${DEADLINE:-0}  # seconds from now after which every run is stopped (0: none); each resumes on the next call
START=$(date +%s)
CONFIGS=$REPO/configs

mkdir -p "$ROOT/runs" "$ROOT/logs"
DATA=$(cd "$DATA" && pwd)

epoch_of() {  # the last finished epoch of checkpoint $1, or -1
    [ -f "$1" ] || { echo -1; return; }
    "$PYTHON" -c "import sys, torch; print(torch.load(sys.argv[1], map_location='cpu', weights_only=False)['epoch'])" "$1"
}

switches() {  # the config's epoch switches as flags: given explicitly, a shorter --epochs (the trunk's first leg) keeps
    # them where the config puts them instead of scaling them to the run's length
    "$PYTHON" -c "import sys, yaml; c = yaml.safe_load(open(sys.argv[1]))
for k in ('decay_milestones', 'drw_epoch', 'drs_epoch', 'rsg_epoch_thresh'):
    if k in c: print('--' + k.replace('_', '-'), *(c[k] if isinstance(c[k], list) else [c[k]]))" "$CONFIGS/$1"
}

train() {  # train <config> <run dir> <epochs> [flags for a new run...]: start, or resume from last.pth.tar
    local config=$1 run=$2 epochs=$3
    shift 3
    local start=("$@") limit=()
    [ -f "$run/last.pth.tar" ] && start=(--resume "$run/last.pth.tar")
    if [ "$DEADLINE" -gt 0 ]; then
        local left=$((START + DEADLINE - $(date +%s)))
        [ "$left" -gt 10 ] || return 0
        limit=(timeout "$left")
    fi
    OMP_NUM_THREADS=$THREADS "${limit[@]}" "$PYTHON" "$REPO/train.py" --config "$CONFIGS/$config" \
        --data-dir "$DATA" --channels-last --no-progress --log-interval 0 --log-seconds 60 \
        --output "$ROOT/runs" --experiment "$(basename "$run")" --epochs "$epochs" $(switches "$config") $EXTRA \
        "${start[@]}" \
        >> "$ROOT/logs/$(basename "$run").log" 2>&1 || { local code=$?; echo "$(basename "$run") stopped (exit $code)" >&2; }
}

seed_campaign() {
    local seed=$1
    local trunk=$ROOT/runs/s$seed-ldam_drw_rsg plain=$ROOT/runs/s$seed-ldam_drw dp2=$ROOT/runs/s$seed-ldam_drw_rsg_dp2
    local fork_point=$ROOT/runs/s$seed-fork_epoch$((FORK_EPOCH - 1)).pth.tar
    if [ ! -f "$fork_point" ]; then  # the first leg stops before generation: its "never starts" warnings are expected
        train cifar10_lt_r100_ldam_drw_rsg.yaml "$trunk" "$FORK_EPOCH" --seed "$seed"
        [ "$(epoch_of "$trunk/last.pth.tar")" -eq $((FORK_EPOCH - 1)) ] \
            || { echo "seed $seed: trunk not at epoch $((FORK_EPOCH - 1)) yet" >&2; return; }
        cp "$trunk/last.pth.tar" "$fork_point.tmp" && mv "$fork_point.tmp" "$fork_point"
    fi
    local arm
    for arm in $ARMS; do
        case $arm in
            rsg) train cifar10_lt_r100_ldam_drw_rsg.yaml "$trunk" "$EPOCHS" & ;;
            plain) train cifar10_lt_r100_ldam_drw.yaml "$plain" "$EPOCHS" --fork "$fork_point" --seed "$seed" & ;;
            dp2) train cifar10_lt_r100_ldam_drw_rsg.yaml "$dp2" "$EPOCHS" --fork "$fork_point" --seed "$seed" \
                --dp-replicas 2 & ;;
        esac
    done
    wait
}

for seed in $SEEDS; do
    seed_campaign "$seed" &
done
wait
for run in "$ROOT"/runs/s*/; do
    echo "$(basename "$run"): last epoch $(epoch_of "$run/last.pth.tar")"
done
