#!/usr/bin/env bash
# benchmarks/mix_recipe.py on a machine that has torch but not this package or the pipeline's dependencies
# (the lent GPU): the data comes from here (mix_recipe.py --data-only) or is written there (GENERATE, below);
# training and eval run there.
#
#   benchmarks/gpu_mix.sh DATA OUT LIMIT_S [mix_recipe.py options...]
#
# Installs the carried wheels (.whl/*.whl: pydantic, deepspeed, ...) into $SITE, links training/ and common/
# as vlmforge.training and vlmforge.common under $PKG (the pipeline is not needed to train), then runs the
# chain from DATA (--reuse-data) into $RUN for at most LIMIT_S seconds. OUT gets mix.log, results.json and
# each stage's metrics-STAGE.jsonl, refreshed every 10 s, so a run cut short still leaves its figures.
# PYTHON (default python3), WHEELS (default REPO/.whl; empty: none), SITE, PKG and RUN (defaults under /tmp)
# can be set.
#
# GENERATE="mix_recipe.py data options" writes DATA there first (mix_recipe.py --data-only, e.g. --web 33000
# --n 20000 --web-chunks 14 --data-workers 14 --store-size 224 --store-fast), inside the same LIMIT_S, with
# pipeline/ linked as vlmforge.pipeline too. Its figures go to OUT/data.json. The generators draw text in the
# DejaVu fonts of /usr/share/fonts/truetype/dejavu; those missing there are copied from FONTS (default
# REPO/.gpu/fonts: carry it).
set -u
if [ $# -lt 3 ]; then
    echo "usage: $0 DATA OUT LIMIT_S [mix_recipe.py options...]" >&2
    exit 2
fi
DATA=$(realpath -m "$1") OUT=$2 LIMIT=$3
shift 3
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3} SITE=${SITE:-/tmp/site} PKG=${PKG:-/tmp/pkg} RUN=${RUN:-/tmp/mixrun}
mkdir -p "$OUT" "$PKG/vlmforge"
t0=$(date +%s)
WHEELS=${WHEELS-$REPO/.whl}
if [ -n "$WHEELS" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl || exit 1
fi
ln -sfn "$REPO/training" "$PKG/vlmforge/training"
ln -sfn "$REPO/common" "$PKG/vlmforge/common"
GENERATE=${GENERATE:-}
if [ -n "$GENERATE" ]; then
    ln -sfn "$REPO/pipeline" "$PKG/vlmforge/pipeline"
    FONTS=${FONTS:-$REPO/.gpu/fonts} DEJAVU=/usr/share/fonts/truetype/dejavu
    for font in "$FONTS"/*.ttf; do
        if [ -f "$font" ] && [ ! -f "$DEJAVU/$(basename "$font")" ]; then
            mkdir -p "$DEJAVU" && cp "$font" "$DEJAVU/" || {
                echo "cannot install $font into $DEJAVU" >&2
                exit 1
            }
        fi
    done
    [ -f "$DEJAVU/DejaVuSans.ttf" ] || { echo "no DejaVu fonts in $DEJAVU or $FONTS" >&2; exit 1; }
fi
export PYTHONPATH=$PKG:$SITE${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torchext}
echo "setup $(($(date +%s) - t0)) s"

copy() {
    cp -f "$RUN/results.json" "$OUT/" 2>/dev/null
    for stage in text_lm clip stage1 stage2; do
        if [ -f "$RUN/$stage/metrics.jsonl" ]; then cp -f "$RUN/$stage/metrics.jsonl" "$OUT/metrics-$stage.jsonl"; fi
    done
}
(while sleep 10; do copy; done) &
watch=$!
: >"$OUT/mix.log"
rc=0
if [ -n "$GENERATE" ]; then
    # word splitting of GENERATE is wanted: it holds several options
    # shellcheck disable=SC2086
    TQDM_DISABLE=1 timeout "$LIMIT" "$PYTHON" "$REPO/benchmarks/mix_recipe.py" --out "$DATA" --data-only \
        $GENERATE 2>&1 | tee -a "$OUT/mix.log"
    rc=${PIPESTATUS[0]}
    cp -f "$DATA/results.json" "$OUT/data.json" 2>/dev/null
    echo "data rc $rc after $(($(date +%s) - t0)) s"
fi
left=$((LIMIT - ($(date +%s) - t0)))
if [ "$rc" = 0 ] && [ "$left" -gt 0 ]; then
    timeout "$left" "$PYTHON" "$REPO/benchmarks/mix_recipe.py" --out "$RUN" --reuse-data "$DATA" "$@" 2>&1 \
        | tee -a "$OUT/mix.log"
    rc=${PIPESTATUS[0]}
fi
kill "$watch" 2>/dev/null
copy
echo "rc $rc after $(($(date +%s) - t0)) s"
[ -f "$OUT/results.json" ] && "$PYTHON" - "$OUT/results.json" <<'EOF'
import json, sys

results = json.load(open(sys.argv[1]))
for name, value in results.items():
    after = value.get("after", value)
    figures = {k: round(after[k], 4) for k in after if k.endswith(("image_gap", "box_iou50", "loss", "top1"))}
    print(name, f"{value['s']} s", json.dumps(figures))
EOF
exit "$rc"
