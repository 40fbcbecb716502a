#!/usr/bin/env bash
# Sets up, builds, writes a small synthetic diffusion_gemma checkpoint and converts it to the NeMo
# native layout and back, printing each step's summary. Output goes to ./demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
rm -rf demo && mkdir demo
set -x
build/shardshift synth demo/hf --model diffusion_gemma --layers 4 --scale 8 --max-shard-size 200MB
build/shardshift convert demo/hf demo/native
build/shardshift inspect demo/native | tail -n 4
build/shardshift convert demo/native demo/hf-again --stats
