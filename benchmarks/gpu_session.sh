#!/usr/bin/env bash
# One prepared GPU session for the checks the issues ask of a lent accelerator, run from the
# repository root with the image's python3 (jax, flax, optax, torch, torchvision, typer, rich):
#
#   OUT=/tmp/gpu_out DA_DATA_DIR=<dir with mnist/mnist.npz, usps/usps.npz> bash benchmarks/gpu_session.sh
#
# PARTS picks what runs (default "dgvmap runs": what no GPU session has measured yet):
#   throughput  issue 16: LeNet and DTN train steps at batch 128, JAX vs PyTorch eager (done 2026-12-04);
#   fed         issue 16: the 100-client FedAvg round, vmapped vs the sequential loop (done 2026-12-04);
#   resnet50    issue 18: an imported torchvision ResNet-50: parity, DANN bf16 step rate (done 2026-12-04);
#   dgvmap      issue 17: 8 DomainBed IRM samples (fixed batch 64) on ColoredMNIST as one program, vmapped
#               and unrolled, vs 8 separate runs (benchmarks/dg_vmap_trials.py --samples; never measured on a GPU);
#   runs        issues 15 and 17: the queue below, full-length training runs, SLOTS at a time on the one
#               GPU (a LeNet or MNIST_CNN run uses a small part of it), until BUDGET_S is spent.
# Everything lands in $OUT: session.log, the JSON files of the parts run, records.tar.gz (the runs'
# records; a run cut off by the budget leaves no record and its log in $OUT/logs says how far it got).
set -u
OUT=${OUT:-/tmp/gpu_out}
BUDGET_S=${BUDGET_S:-540}
PARTS=${PARTS:-dgvmap runs}
SLOTS=${SLOTS:-3}
RECORDS=/tmp/gpu_records
mkdir -p "$OUT/logs" "$RECORDS"
exec > >(tee "$OUT/session.log") 2>&1
start=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - start) )); }
has() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"

if has throughput; then
  echo "== step throughput (left $(left) s)"
  timeout 200 python3 benchmarks/step_throughput.py --models lenet,dtn --methods source_only,dann,dan,cdan \
    --dtypes float32 --batch 128 --rounds 5 --json "$OUT/step_lenet_dtn_b128.json"
fi
if has fed; then
  echo "== federated round (left $(left) s)"
  timeout 120 python3 benchmarks/fed_round_time.py --gpu-check --rounds 5 --out "$OUT/fed_round_time_gpu.json"
fi
if has resnet50; then
  echo "== imported ResNet-50 (left $(left) s)"
  timeout 200 python3 benchmarks/pretrained_gpu_check.py --batches 128 --steps 20 --rounds 3 \
    --out "$OUT/resnet50_imported_gpu.json"
fi
if has dgvmap; then
  echo "== DomainBed samples in one program (left $(left) s)"
  timeout 240 python3 benchmarks/dg_vmap_trials.py --family cmnist --algorithm IRM --samples 8 --seeds 0 --steps 500 \
    --eval-every 0 --out "$OUT/dg_samples_cmnist_irm8_gpu.json"
fi

# The queue, most wanted first: "<name>|<arguments of da>". The two tllib sweeps are tllib's full
# digits protocol (50,000 steps of batch 128; one run alone took 78-91 s on the H200, 2026-12-04),
# eight methods in the order of TLLIB_SWEEP_METHODS, each method's seeds 0-2 as one vmapped
# program; a sweep cut off by the budget keeps every finished method and resumes next time.
# cmnist_erm: DomainBed's ColoredMNIST protocol at full length (5,001 steps), ERM, sample 0, seed 0.
QUEUE=(
  "tllib_mu|bench digits_tllib_mnist_usps --vmap-seeds"
  "tllib_um|bench digits_tllib_usps_mnist --vmap-seeds"
  "cmnist_erm|bench cmnist_domainbed"
)
if has runs; then
  echo "== training runs, $SLOTS at a time (left $(left) s)"
  export XLA_PYTHON_CLIENT_MEM_FRACTION=$(python3 -c "print(round(0.9 / $SLOTS, 2))")
  export DA_DG_ALGORITHMS=ERM DA_DG_SAMPLES=1 DA_DG_SEEDS=0 DA_DG_LEAVE_ONE_OUT=0  # cmnist_erm: the 3 main runs
  pids=()
  for item in "${QUEUE[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$SLOTS" ]; do wait -n; done
    t=$(left)
    if [ "$t" -lt 60 ]; then echo "budget spent: not started: ${item%%|*} and the rest"; break; fi
    name=${item%%|*}
    echo "start $name (left $t s): da ${item#*|}"
    # shellcheck disable=SC2086
    (timeout $(( t - 15 )) python3 -c "from da_framework.cli import main; main()" ${item#*|} \
       --results-dir "$RECORDS" > "$OUT/logs/$name.log" 2>&1; echo "end $name rc $? at $(( $(date +%s) - start )) s") &
    pids+=($!)
  done
  wait "${pids[@]}"  # not a bare wait: it would also wait for the tee of the log, which never ends
fi
tar czf "$OUT/records.tar.gz" -C "$RECORDS" .
echo "== done after $(( $(date +%s) - start )) s"
