# Sourced by the other scripts: where the torch venv lives and how cargo finds libtorch.
# KD_HARNESS_HOME (default ~/.cache/kd-harness) holds the venv at a fixed path, because the
# binary embeds a run path to the venv's torch/lib. A user with their own libtorch sets LIBTORCH.
export KD_HARNESS_HOME="${KD_HARNESS_HOME:-$HOME/.cache/kd-harness}"
if [ -z "${LIBTORCH:-}" ]; then
  export VIRTUAL_ENV="$KD_HARNESS_HOME/venv"
  export PATH="$VIRTUAL_ENV/bin:$PATH"
  export LIBTORCH_USE_PYTORCH=1
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
