#!/usr/bin/env bash
# One study, many Slurm jobs: task 0 of the array creates the study and plans its rounds, every
# other task joins it. All tasks run the same command; the database makes creation race-free.
#
#   sbatch --array=0-7 examples/slurm-array.sh configs/quickstart.yaml
#
#SBATCH --job-name=hpsearch
#SBATCH --cpus-per-task=4
#SBATCH --time=02:00:00
#SBATCH --output=hpsearch-%A_%a.log
set -euo pipefail
spec=${1:?usage: sbatch --array=0-N slurm-array.sh SPEC}
# The password stays out of the command line (and so out of every log): libpq reads it from
# PGPASSWORD or ~/.pgpass.
storage=${HPSEARCH_STORAGE:-postgresql+psycopg://hpsearch@db.example.org:5432/studies}
study=${HPSEARCH_STUDY:-hpsearch-$SLURM_ARRAY_JOB_ID}

hpsearch run "$spec" --storage "$storage" --study "$study" \
  --workers "$SLURM_CPUS_PER_TASK" --runs-dir "runs/$SLURM_ARRAY_TASK_ID"
