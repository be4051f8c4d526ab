# Sourced by the scripts that run PyTorch beside multigate: sets $py to a Python with
# torch and numpy: $PYTHON when given, else target/bench-venv (made with
# `pip install torch numpy` the first time).
torch_python() {
  py="${PYTHON:-}"
  if [ -z "$py" ]; then
    py=target/bench-venv/bin/python
    if ! "$py" -c "import torch, numpy" 2>/dev/null; then
      python3 -m venv target/bench-venv
      target/bench-venv/bin/pip install --quiet torch numpy
    fi
  fi
  "$py" -c "import torch, numpy" || { echo "$py has no torch and numpy" >&2; exit 2; }
}
