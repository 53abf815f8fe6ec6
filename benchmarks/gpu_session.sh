#!/usr/bin/env bash
# One prepared GPU session for the checks the issues ask of a lent accelerator, run from the
# repository root with the image's python3 (jax, flax, optax, torch, torchvision, typer, rich):
#
#   OUT=/tmp/gpu_out DA_DATA_DIR=<dir with mnist/mnist.npz, usps/usps.npz> bash benchmarks/gpu_session.sh
#
# 1. issue 16: LeNet and DTN train steps at batch 128, JAX vs PyTorch eager, interleaved rounds;
# 2. issue 16: the 100-client FedAvg round, vmapped vs the sequential loop;
# 3. issue 18: an imported torchvision ResNet-50: forward parity on the GPU, DANN bf16 step rate;
# 4. issue 15: tllib's full digits protocol (50,000 steps of batch 128), DANN MNIST -> USPS, in
#    whatever time is left of BUDGET_S (its log shows each evaluation if it is cut short).
# Everything lands in $OUT: session.log, three JSON files and records.tar.gz (the run's records).
set -u
OUT=${OUT:-/tmp/gpu_out}
BUDGET_S=${BUDGET_S:-540}
mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
start=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - start) )); }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"

echo "== 1. step throughput (left $(left) s)"
timeout 200 python3 benchmarks/step_throughput.py --models lenet,dtn --methods source_only,dann,dan,cdan \
  --dtypes float32 --batch 128 --rounds 5 --json "$OUT/step_lenet_dtn_b128.json"

echo "== 2. federated round (left $(left) s)"
timeout 120 python3 benchmarks/fed_round_time.py --gpu-check --rounds 5 --out "$OUT/fed_round_time_gpu.json"

echo "== 3. imported ResNet-50 (left $(left) s)"
timeout 200 python3 benchmarks/pretrained_gpu_check.py --batches 128 --steps 20 --rounds 3 \
  --out "$OUT/resnet50_imported_gpu.json"

t=$(left)
echo "== 4. tllib digits protocol, DANN M->U, full length (left $t s)"
if [ "$t" -gt 60 ]; then
  timeout $(( t - 15 )) python3 -c "from da_framework.cli import main; main()" run mnist_usps_tllib -m dann \
    --seed 0 --results-dir /tmp/gpu_records
fi
[ -d /tmp/gpu_records ] && tar czf "$OUT/records.tar.gz" -C /tmp/gpu_records .
echo "== done after $(( $(date +%s) - start )) s"
