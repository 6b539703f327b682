#!/usr/bin/env bash
# Checks a built wheel: lists it, refuses Rust sources in it, and imports all four
# packages from a clean virtualenv that has nothing but the wheel and its dependencies.
set -euo pipefail
dir=${1:?wheel directory}
shopt -s nullglob
wheels=("$dir"/*.whl)
[[ ${#wheels[@]} -eq 1 ]] || { echo "expected one wheel in $dir, found ${#wheels[@]}" >&2; exit 1; }
wheel=${wheels[0]}
echo "== $wheel"
python3 -m zipfile -l "$wheel"
listing=$(python3 -m zipfile -l "$wheel")
if grep -E '\.rs\b|Cargo\.(toml|lock)' <<<"$listing"; then
    echo "the wheel ships Rust sources or Cargo files" >&2
    exit 1
fi
for need in drift_core/_drift_core drift_core/_drift_core.pyi drift_core/py.typed \
            stream/__init__.py stream/broker/pom.xml alerts/__init__.py serving_hooks/__init__.py; do
    grep -q "$need" <<<"$listing" || { echo "the wheel lacks $need" >&2; exit 1; }
done
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q "$wheel"
(cd "$(mktemp -d)" && "$venv/bin/python" - <<'PY'
import importlib, pathlib
for name in ("drift_core", "stream", "alerts", "serving_hooks"):
    module = importlib.import_module(name)
    path = pathlib.Path(module.__file__)
    assert "site-packages" in path.parts, (name, path)
    print(f"imported {name} from {path.parent}")
import drift_core, numpy as np
ref = drift_core.NumericReference.build(np.arange(1000.0))
sk = drift_core.NumericSketch(ref)
sk.update(np.arange(500.0))
assert drift_core.compare(ref, sk)["n"] == 500
PY
)
rm -rf "$(dirname "$venv")"
