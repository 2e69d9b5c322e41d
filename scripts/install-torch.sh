#!/bin/sh
# Installs torch==$TORCH_VERSION with the pip of the Python in $1 (`make setup` runs it first, so that
# installing the project finds torch in place and pip never picks a build of its own).
#
# Which build: with a GPU that `nvidia-smi` sees, the default one from the package index (a CUDA build).
# Without one, on Linux, the CPU build: PyPI's default Linux build carries CUDA, several GB this machine
# could not use. The CPU build comes from PyTorch's CPU index ($TORCH_CPU_INDEX) when that answers, and
# otherwise from wherever pip is configured to look (find-links, a local index: the wheel file on a
# closed network); pinned as `+cpu`, so that no CUDA build can stand in for it. On macOS the default
# build is the CPU one. TORCH_BUILD=cpu or TORCH_BUILD=default overrides the choice.
set -eu

python=${1:?usage: install-torch.sh PYTHON}
version=${TORCH_VERSION:?TORCH_VERSION is not set}
cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
cpu_index=${cpu_index%/}
build=${TORCH_BUILD:-}

pip_install() { "$python" -m pip install --quiet "$@"; }

if [ -z "$build" ]; then
  if nvidia-smi -L >/dev/null 2>&1; then
    build=default
    echo "torch $version: nvidia-smi sees a GPU, taking the default (CUDA) build"
  elif [ "$(uname -s)" = Linux ]; then
    build=cpu
  else
    build=default
  fi
fi

case $build in
  default)
    pip_install "torch==$version"
    ;;
  cpu)
    # the index answers within seconds, or it is taken to be out of reach (a closed network)
    if "$python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=5)' \
      "$cpu_index" >/dev/null 2>&1; then
      echo "torch $version: the CPU build from $cpu_index"
      pip_install "torch==$version+cpu" --index-url "$cpu_index"
    else
      echo "torch $version: $cpu_index is out of reach; the CPU build from pip's own sources (pip config list)"
      pip_install "torch==$version+cpu" || {
        echo "no CPU build of torch $version found: put its wheel (torch-$version+cpu-*.whl) where pip looks" \
          "(PIP_FIND_LINKS), or take the default build with TORCH_BUILD=default" >&2
        exit 1
      }
    fi
    ;;
  *)
    echo "TORCH_BUILD is '$build': cpu, default or empty (chosen by the machine)" >&2
    exit 2
    ;;
esac
