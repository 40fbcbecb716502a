#!/usr/bin/env bash
# Sets up, builds, writes a small synthetic diffusion_gemma checkpoint (the real key inventory,
# dimensions divided by 8) and converts it to the NeMo native layout and back, printing each
# step's summary. Everything goes to ./demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
rm -rf demo && mkdir demo
set -x
build/shardshift synth demo/hf --model diffusion_gemma --layers 4 --scale 8 --max-shard-size 20MB
build/shardshift plan demo/hf --max-shard-size 20MB --print-size
build/shardshift convert demo/hf demo/native --max-shard-size 20MB
build/shardshift inspect demo/native | grep -E 'tensors,|other files'
build/shardshift convert demo/native demo/hf-again --stats
