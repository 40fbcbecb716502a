#!/usr/bin/env bash
# head_to_head.sh: runs perf/head_to_head.py under a Python that has PyTorch (the first of $PYTHON,
# python3 on PATH, /usr/bin/python3 that can import torch), passing every argument through, and
# draws the chart when --json-out is given and matplotlib is there.
#   perf/head_to_head.sh --layers 2 --scratch /var/tmp --json-out h2h.json [--png h2h.png]
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY=""
for cand in ${PYTHON:-} python3 /usr/bin/python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import torch' 2>/dev/null; then PY="$cand"; break; fi
done
[[ -n "$PY" ]] || { echo "head_to_head: no python3 with torch (apt-get install python3-torch)" >&2; exit 1; }
ARGS=() JSON="" PNG=""
while (($#)); do
  case "$1" in
    --png) PNG="$2"; shift 2 ;;
    --json-out) JSON="$2"; ARGS+=("$1" "$2"); shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
"$PY" "$HERE/head_to_head.py" "${ARGS[@]}"
rc=$?
if [[ -n "$JSON" && -n "$PNG" && -s "$JSON" ]]; then
  "$PY" "$HERE/plot_head_to_head.py" "$JSON" "$PNG" || echo "head_to_head: no chart (matplotlib?)" >&2
fi
exit $rc
