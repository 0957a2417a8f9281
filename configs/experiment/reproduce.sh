#!/usr/bin/env bash
# The SmolLM2 results of RESULTS.md from a fresh clone on one GPU: the FA teacher (two stages), the five SWAA
# fine-tunings, their adapters, the evaluations, the full layers chosen by swaa.select, their evaluation and six
# SWAA-FTs under chosen or periodic layers (cross-entropy and KL to the teacher under 7 layers; KL under 4, under the 7
# chosen at W = 512, under the 7 chosen without FA decode and under the periodic quarter), and one table of them all
# (results/smollm2/table.md).
# Resumable: each finished stage leaves runs/.done/<stage>; a stopped training resumes from its last checkpoint (every
# 50 steps), an evaluation from its result store.
#   bash configs/experiment/reproduce.sh [SECONDS]     # stop starting new stages after SECONDS (default: no limit)
#   M=/path/to/model.gguf bash configs/experiment/reproduce.sh   # another copy of the base model
# Stage times on one H200: teacher 7.3 min, its continuation 5.3 min, each SWAA-FT 4.5-6.5 min alone, its evaluation
# about 3 min, a grid configuration about 45 s with --decode static (1-2 min with --speed), the selection about 2 min
# and its 17 configurations of 10 cells about 20 min: 140-160 min in all.
# One stage at a time: an evaluation at batch 100 holds about 50 GB of GPU memory.
set -uo pipefail
cd "$(dirname "$0")/../.."
deadline=$(( $(date +%s) + ${1:-1000000} ))
MODEL_ARG=${M:+--model.model $M}
EVAL_MODEL=${M:+--model $M}
mkdir -p runs/.done

stage() {  # stage NAME COMMAND...: run once, within the time left; output in runs/NAME.log
  local name=$1 left
  shift
  [ -e "runs/.done/$name" ] && return 0
  left=$(( deadline - $(date +%s) ))
  if [ "$left" -lt 20 ]; then echo "== $name: skipped (time limit)"; return 0; fi
  echo "== $name ($(date +%T))"
  if timeout "$left" "$@" >> "runs/$name.log" 2>&1; then touch "runs/.done/$name"; else echo "== $name: stopped or failed, see runs/$name.log"; fi
}

stage teacher python train.py fit --config configs/experiment/teacher_fa.yaml $MODEL_ARG --ckpt_path last
TEACHER="--model.init_weights runs/teacher_fa/checkpoints/last.ckpt"  # this teacher, not the committed adapter
stage teacher_more python train.py fit --config configs/experiment/teacher_fa_more.yaml $MODEL_ARG $TEACHER \
  --ckpt_path last
TEACHER_MORE="--model.init_weights runs/teacher_fa_more/checkpoints/last.ckpt"  # every SWAA-FT starts from it
# name (= its config in configs/experiment/) and the grid configuration it is evaluated under
FT_RUNS="swaa_ft_fad_half:w512_sink_fad_half swaa_ft_fad_half_w1024:w1024_sink_fad_half swaa_ft_fast:w512_sink_quarter
         swaa_ft_sink_half:w512_sink_half swaa_ft_sink_half_w1024:w1024_sink_half"
FT_NAMES=$(for pair in $FT_RUNS; do echo "${pair%%:*}"; done)
SEL_FT=swaa_ft_fad_greedy_quarter_w1024  # under the committed choice (its config lists the layers), section 5
for run in $FT_NAMES $SEL_FT; do
  stage "$run" python train.py fit --config "configs/experiment/$run.yaml" $MODEL_ARG $TEACHER_MORE --ckpt_path last
done
SEL_FT_KL=${SEL_FT}_kl  # the same with KL to the teacher on answer tokens (section 5)
stage "$SEL_FT_KL" python train.py fit --config "configs/experiment/$SEL_FT.yaml" $MODEL_ARG $TEACHER_MORE \
  --model.distill_weight 1.0 --trainer.logger.init_args.name "$SEL_FT_KL" --ckpt_path last
kl_run() {  # kl_run NAME SWAA: the KL recipe under another committed layer choice (section 5)
  stage "$1" python train.py fit --config "configs/experiment/$SEL_FT.yaml" $MODEL_ARG $TEACHER_MORE \
    --model.distill_weight 1.0 --model.swaa "$2" --trainer.logger.init_args.name "$1" --ckpt_path last
}
kl_run swaa_ft_fad_greedy_4of30_w1024_kl '{window: 1024, sink: 64, fa_decode: true, full_layers: [14, 17, 18, 23]}'
kl_run swaa_ft_fad_greedy512_quarter_w512_kl \
  '{window: 512, sink: 64, fa_decode: true, full_layers: [5, 7, 8, 14, 17, 18, 23]}'  # the 7 chosen at W = 512
kl_run swaa_ft_greedynofad_quarter_w1024_kl \
  '{window: 1024, sink: 64, fa_decode: false, full_layers: [0, 6, 7, 14, 17, 18, 23]}'  # the 7 chosen without FA decode
kl_run swaa_ft_fad_quarter_w1024_kl \
  '{window: 1024, sink: 64, fa_decode: true, full_layers: "every:4:from:3"}'  # periodic, as many full layers as the 7
# each run and the selection grid configuration it is evaluated under
KL_RUNS="swaa_ft_fad_greedy_4of30_w1024_kl:w1024_sink_fad_greedy_4of30
         swaa_ft_fad_greedy512_quarter_w512_kl:w512_sink_fad_greedy512_quarter
         swaa_ft_greedynofad_quarter_w1024_kl:w1024_sink_greedynofad_quarter
         swaa_ft_fad_quarter_w1024_kl:w1024_sink_fad_quarter"
KL_NAMES=$(for pair in $KL_RUNS; do echo "${pair%%:*}"; done)
for run in teacher_fa teacher_fa_more $FT_NAMES $SEL_FT $SEL_FT_KL $KL_NAMES; do
  stage "export_$run" python -m swaa.export --ckpt "runs/$run/checkpoints/last.ckpt" --out "runs/adapters/$run" \
    ${M:+--model $M} --overwrite
done
GRID="--swaa configs/swaa/grid_smollm2.yaml"
for pair in $FT_RUNS; do
  run=${pair%%:*}
  stage "eval_$run" python evaluate.py $EVAL_MODEL --adapter "runs/$run/checkpoints/last.ckpt" $GRID \
    --configs "fa,${pair#*:}" --decode static --out "results/$run"
done
stage eval_teacher_fa_more_grid python evaluate.py $EVAL_MODEL --adapter runs/teacher_fa_more/checkpoints/last.ckpt \
  $GRID --decode static --speed --out results/teacher_fa_more
# full layers chosen on this teacher (one greedy run for every budget), evaluated against periodic ones
stage select python -m swaa.select $EVAL_MODEL --adapter runs/teacher_fa_more/checkpoints/last.ckpt --window 1024 \
  --sink 64 --budget 1/4 5 4 1/8 --tasks niah_multikey niah_multivalue niah_similar --lengths 4096 7680 --n 16 \
  --batch-size 8 --out runs/selection/selected.yaml
stage eval_selection python evaluate.py $EVAL_MODEL --adapter runs/teacher_fa_more/checkpoints/last.ckpt \
  --swaa configs/swaa/grid_selection_smollm2.yaml --presets runs/selection/selected.yaml --decode static \
  --out results/selection
SEL_GRID="--swaa configs/swaa/grid_selection_smollm2.yaml --presets configs/swaa/selected_smollm2_w1024.yaml"
for pair in $SEL_FT:w1024_sink_fad_greedy_quarter $SEL_FT_KL:w1024_sink_fad_greedy_quarter $KL_RUNS; do
  run=${pair%%:*}
  stage "eval_$run" python evaluate.py $EVAL_MODEL --adapter "runs/$run/checkpoints/last.ckpt" $SEL_GRID \
    --configs "fa,${pair#*:}" --decode static --out "results/$run"
done
stage eval_swaa_ft_fad_half_w1024_selection python evaluate.py $EVAL_MODEL \
  --adapter runs/swaa_ft_fad_half_w1024/checkpoints/last.ckpt $SEL_GRID --configs w1024_sink_fad_half \
  --decode static --out results/swaa_ft_fad_half_w1024_selection  # its odd-layer counterpart on the same tasks
stage table python -m swaa.eval.report results/teacher_fa_more $(printf 'results/%s ' $FT_NAMES) results/selection \
  "results/$SEL_FT" "results/$SEL_FT_KL" $(printf 'results/%s ' $KL_NAMES) \
  results/swaa_ft_fad_half_w1024_selection \
  --out results/smollm2 --fa-run teacher_fa_more   # table.md, table.csv, accuracy.png, speed.png
